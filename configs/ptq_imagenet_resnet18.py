"""Post-training quantization (no fine-tuning) of pytorchcv `resnet18` on ImageNet: activation
ranges calibrated on 50 × 32 images of `ptq.source`, then greedy per-layer weight clipping by
output MSE on 2 batches (ris_jax/ptq.py). Not run in this project.

    python -m ris_jax.main --config configs/ptq_imagenet_resnet18.py:w4a8 --workdir W \
        --config.teacher.checkpoint=/path/to/resnet18.pth --config.data.data_dir=DIR \
        --config.ptq.source=generator:/path/to/a/imagenet_resnet18/run

Argument: w8a8 | w6a6 | w4a8 | w4a4 | w3a3. Sources: noise (default) | generator:<workdir>.
"""
from configs import _published
from configs.ptq_digits import BITS


def get_config(bits='w8a8'):
  w, a, method, _ = _published.parse_arg(bits, BITS, extras=('gdfq',))
  c = _published.imagenet('w4a4', 'resnet18')  # the teacher and data fields
  c.mode = 'ptq'
  c.method = method
  c.quant.w_bits, c.quant.a_bits = w, a
  c.ptq.batch_size = 32
  c.ptq.clip_batches = 2
  return c

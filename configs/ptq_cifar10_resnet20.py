"""Post-training quantization (no fine-tuning) of pytorchcv `resnet20_cifar10`: activation
ranges calibrated on 50 × 64 images of `ptq.source`, then greedy per-layer weight clipping by
output MSE (ris_jax/ptq.py). Not run in this project (no CIFAR weights offline).

    python -m ris_jax.main --config configs/ptq_cifar10_resnet20.py:w4a8 --workdir W \
        --config.teacher.checkpoint=/path/to/resnet20_cifar10.pth \
        --config.ptq.source=generator:/path/to/a/cifar10_resnet20/run [--config.data.data_dir=DIR]

Argument: w8a8 | w6a6 | w4a8 | w4a4 | w3a3. Sources: noise (default) | real |
generator:<workdir of a configs/cifar10_resnet20.py or dfkd run with this teacher>.
"""
from configs import _published, default
from configs.ptq_digits import BITS


def get_config(bits='w8a8'):
  w, a, method, _ = _published.parse_arg(bits, BITS, extras=('gdfq',))
  c = default.get_config()
  c.mode = 'ptq'
  c.method = method
  c.teacher.arch = 'resnet20_cifar10'
  c.data.dataset = 'cifar10'
  c.quant.w_bits, c.quant.a_bits = w, a
  return c

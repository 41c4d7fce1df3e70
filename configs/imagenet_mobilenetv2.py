"""RIS on pytorchcv `mobilenetv2_w1` (FP top-1 73.03), ImageNet validation (resize 256, centre crop
224), GDFQ-family ImageNet hyper-parameters (method.md): batch 16, student lr 1e-6.

    python -m ris_jax.main --config configs/imagenet_mobilenetv2.py:w4a4 --workdir W \
        --config.teacher.checkpoint=/path/to/mobilenetv2_w1.pth --config.data.data_dir=DIR

Argument: w3a3 | w4a4 | w5a5, optionally ',gdfq' (the baseline) and ',ait' (AIT's student step:
KL only, no weight decay, student lr 1e-4, gradient inflation with τ₀ = 1e-4). The paper's
headline setting, AIT+RIS at W4A4:

    python -m ris_jax.main --config configs/imagenet_mobilenetv2.py:w4a4,ait --workdir W \
        --config.teacher.checkpoint=/path/to/mobilenetv2_w1.pth --config.data.data_dir=DIR

Activation ranges calibrate during the first 800 iterations (4 epochs), as in GDFQ's and AIT's
code; the student stays frozen for 50 epochs (10,000 iterations).
"""
from configs import _published


def get_config(arg='w4a4'):
  return _published.imagenet(arg, 'mobilenetv2_w1')

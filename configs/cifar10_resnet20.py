"""RIS on pytorchcv `resnet20_cifar10` (FP top-1 93.89), cifar10 test set, reference GDFQ-family
hyper-parameters (method.md): batch 200, 400 epochs × 200 iterations, 4 warm-up epochs.

    python -m ris_jax.main --config configs/cifar10_resnet20.py:w4a4 --workdir W \
        --config.teacher.checkpoint=/path/to/resnet20_cifar10.pth [--config.data.data_dir=DIR]

Argument: w3a3 | w4a4 | w5a5, optionally ',gdfq' for the baseline (CE + BNS only) and ',ait'
for AIT's student step (KL only, no weight decay, gradient inflation, τ₀ = 1e-3), e.g. RIS+AIT:
    python -m ris_jax.main --config configs/cifar10_resnet20.py:w4a4,ait --workdir W ...
Published W4A4 / W3A3 for GDFQ on this model are in method.md.
"""
from configs import _published


def get_config(arg='w4a4'):
  c = _published.base(arg)
  c.teacher.arch = 'resnet20_cifar10'
  c.data.dataset = 'cifar10'
  return c

"""Data-free knowledge distillation on CIFAR-10: pytorchcv `resnet56_cifar10` (teacher) into
a randomly initialised full-precision `resnet20_cifar10`, by KD (τ = 4, batchmean) + CE on
generator images only, the generator trained with the RIS losses (or GDFQ's with `:gdfq`).
GDFQ-family schedule: batch 200, 400 epochs × 200 iterations. Not run in this project.

    python -m ris_jax.main --config configs/dfkd_cifar10_resnet56.py:ris --workdir W \
        --config.teacher.checkpoint=/path/to/resnet56_cifar10.pth [--config.data.data_dir=DIR]
    python -m ris_jax.main --config configs/dfkd_cifar10_resnet56.py:gdfq --workdir W_gdfq ...
"""
from configs import default


def get_config(method='ris'):
  if method not in ('ris', 'gdfq'):
    raise ValueError(f"config argument must be one of ris, gdfq; got {method!r}")
  c = default.get_config()
  c.mode = 'dfkd'
  c.method = method
  c.teacher.arch = 'resnet56_cifar10'
  c.data.dataset = 'cifar10'
  c.dfkd.student_arch = 'resnet20_cifar10'
  c.loss.kd_tau = 4.0
  c.loss.kd_reduction = 'batchmean'
  c.student.learning_rate = 0.1
  c.student.weight_decay = 5e-4
  c.train.warmup_steps = 0
  c.train.calibration_steps = 0
  return c

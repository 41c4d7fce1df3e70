"""Data-free knowledge distillation on ImageNet: pytorchcv `resnet50` (teacher) into a randomly
initialised full-precision `resnet18`, by KD (τ = 4, batchmean) + CE on generator images only
(conditional-BN generator, batch 16, the published ImageNet RIS schedule), generator losses
RIS (or GDFQ's with `:gdfq`). Not run in this project.

    python -m ris_jax.main --config configs/dfkd_imagenet_resnet50.py:ris --workdir W \
        --config.teacher.checkpoint=/path/to/resnet50.pth --config.data.data_dir=DIR
"""
from configs import _published


def get_config(method='ris'):
  if method not in ('ris', 'gdfq'):
    raise ValueError(f"config argument must be one of ris, gdfq; got {method!r}")
  c = _published.imagenet('w4a4', 'resnet50')  # the teacher, data and generator fields
  c.mode = 'dfkd'
  c.method = method
  c.dfkd.student_arch = 'resnet18'
  c.loss.kd_tau = 4.0
  c.loss.kd_reduction = 'batchmean'
  c.student.learning_rate = 0.1
  c.student.weight_decay = 1e-4
  c.train.warmup_steps = 0
  c.train.calibration_steps = 0
  return c

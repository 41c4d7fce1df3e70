"""Data-free knowledge distillation on the offline digits teacher: a randomly initialised
full-precision ResNet-8 (`resnet8_digits`, BN in training mode) learns from generator images
only, by KD (τ = 4, batchmean) + CE on the labels the images were generated for, while the
generator trains with the RIS losses (or GDFQ's: CE + BNS) — the RIS iteration of train.py
with a full-precision student.

    python -m ris_jax.main --config configs/dfkd_digits.py:ris --workdir /tmp/dfkd_ris
    python -m ris_jax.main --config configs/dfkd_digits.py:gdfq --workdir /tmp/dfkd_gdfq

Results: experiments/results/dfkd_digits.md (`python experiments/compression.py`).
"""
from configs import default


def get_config(method='ris'):
  if method not in ('ris', 'gdfq'):
    raise ValueError(f"config argument must be one of ris, gdfq; got {method!r}")
  c = default.get_config()
  c.mode = 'dfkd'
  c.method = method
  c.teacher.arch = 'resnet20_digits'
  c.data.dataset = 'digits'
  c.data.eval_batch_size = 360
  c.dfkd.student_arch = 'resnet8_digits'
  c.generator.width = 64
  c.loss.kd_tau = 4.0
  c.loss.kd_reduction = 'batchmean'
  c.student.learning_rate = 0.05
  c.student.weight_decay = 5e-4
  c.train.batch_size = 64
  c.train.steps = 800
  c.train.warmup_steps = 0
  c.train.calibration_steps = 0
  c.train.decay_steps = (560,)
  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  return c

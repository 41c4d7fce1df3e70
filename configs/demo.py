"""Offline demo: RIS vs the GDFQ baseline at W3A3 on the digits teacher.

    python -m ris_jax.main --config configs/demo.py --workdir /tmp/demo

Trains (and caches) the digits teacher if absent, then runs RIS in W/ris and GDFQ in
W/gdfq and writes W/summary.md. Under 5 minutes on 2 CPU cores.
"""
from configs import default


def get_config():
  c = default.get_config()
  c.run_baseline = True
  c.teacher.arch = 'resnet20_digits'
  c.data.dataset = 'digits'
  c.data.eval_batch_size = 360
  c.quant.w_bits = 3
  c.quant.a_bits = 3
  c.generator.width = 64
  c.student.learning_rate = 1e-3
  c.train.batch_size = 64
  c.train.steps = 500
  c.train.warmup_steps = 50
  c.train.calibration_steps = 50
  c.train.decay_steps = (350,)
  c.train.log_every = 50
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  return c

"""Offline demo: RIS vs the GDFQ baseline on the digits teacher (default W3A3).

    python -m ris_jax.main --config configs/demo.py --workdir /tmp/demo
    python -m ris_jax.main --config configs/demo.py:w2a4 --workdir /tmp/demo_w2a4
    python -m ris_jax.main --config configs/demo.py:w3a3,ait --workdir /tmp/demo_ait  # AIT students

Trains (and caches) the digits teacher if absent, then runs RIS in W/ris and GDFQ in
W/gdfq and writes W/summary.md. Under 5 minutes on 2 CPU cores.
"""
from configs import default


def get_config(bits='w3a3'):
  from configs import _published
  w, a, method, with_ait = _published.parse_arg(bits, ('w2a2', 'w2a3', 'w2a4', 'w3a3', 'w4a4'))
  c = default.get_config()
  c.method = method
  c.run_baseline = True
  c.teacher.arch = 'resnet20_digits'
  c.data.dataset = 'digits'
  c.data.eval_batch_size = 360
  c.quant.w_bits, c.quant.a_bits = w, a
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
  return _published.ait(c, 1e-3) if with_ait else c

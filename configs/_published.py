"""Shared helper of the published-setting configs: `get_config(arg)` with arg 'w4a4' (bits)
optionally followed by ',gdfq' for the baseline without the RIS terms and ',ait' for AIT's
student step (KL only, no weight decay, gradient inflation)."""
import re

from configs import default


def parse_arg(arg, allowed=('w3a3', 'w4a4', 'w5a5'), extras=('gdfq', 'ait')):
  """(w_bits, a_bits, method, ait) of 'w4a4[,gdfq][,ait]': ',gdfq' the baseline generator (CE +
  BNS, no RIS terms), ',ait' AIT's student step (`ait`); `extras` the ones a config offers."""
  parts = (arg or 'w4a4').split(',')
  if parts[0] not in allowed or any(p not in extras for p in parts[1:]) or len(set(parts)) != len(parts):
    raise ValueError(f"config argument must be one of {', '.join(allowed)}, optionally followed by "
                     f"{' and '.join(repr(',' + e) for e in extras)}; got {arg!r}")
  w, a = map(int, re.fullmatch(r'w(\d)a(\d)', parts[0]).groups())
  return w, a, ('gdfq' if 'gdfq' in parts else 'ris'), 'ait' in parts


def ait(c, threshold: float):
  """AIT's student step (../shared/docs/ait.md): KL only (CE weight 0, τ = 20, 'mean'
  reduction), no weight decay, student lr 1e-4 on every dataset, gradient inflation with flip
  threshold τ₀ = `threshold` (1e-3 CIFAR, 1e-4 ImageNet), ×0.1 at the learning-rate decays.
  KL only and no weight decay are written here so that the config shows what runs; a run of
  any config with `--config.student.method=ait` gets them from `ris_jax.config.ait_student`."""
  c.student.method = 'ait'
  c.loss.student_ce = False
  c.student.weight_decay = 0.0
  c.student.learning_rate = 1e-4
  c.student.gi_threshold = threshold
  return c


def base(arg, allowed=('w3a3', 'w4a4', 'w5a5'), ait_threshold: float = 1e-3):
  """The paper's CIFAR setting (default.py: its hyper-parameters and schedule, RIS's terms as
  ris_jax defaults them) at the bits of `arg`; ',ait': AIT's student."""
  w, a, method, with_ait = parse_arg(arg, allowed)
  c = default.get_config()
  c.quant.w_bits, c.quant.a_bits, c.method = w, a, method
  return ait(c, ait_threshold) if with_ait else c


def imagenet(arg, arch):
  """GDFQ-family ImageNet setting: batch 16, conditional-BN generator, student lr 1e-6 (AIT:
  1e-4, τ₀ 1e-4), 50 warm-up epochs of 200 iterations, 400 epochs; activation ranges calibrate
  during the first 4 epochs (800 iterations) only, as in GDFQ's and AIT's code."""
  c = base(arg, ait_threshold=1e-4)
  c.teacher.arch = arch
  c.data.dataset = 'imagenet2012'
  c.data.split = 'validation'
  c.data.eval_batch_size = 250
  c.generator.kind = 'conditional_bn'
  if c.student.method != 'ait':
    c.student.learning_rate = 1e-6
  c.train.batch_size = 16
  c.train.warmup_steps = 10_000
  c.train.calibration_steps = 800
  return c

"""Shared helper of the published-setting configs: `get_config(arg)` with arg 'w4a4' (bits)
optionally followed by ',gdfq' for the baseline without the RIS terms."""
import re

from configs import default


def parse_arg(arg, allowed=('w3a3', 'w4a4', 'w5a5')):
  parts = (arg or 'w4a4').split(',')
  if parts[0] not in allowed or len(parts) > 2 or (len(parts) == 2 and parts[1] != 'gdfq'):
    raise ValueError(f"config argument must be one of {', '.join(allowed)}, optionally "
                     f"followed by ',gdfq'; got {arg!r}")
  w, a = map(int, re.fullmatch(r'w(\d)a(\d)', parts[0]).groups())
  return w, a, ('gdfq' if len(parts) == 2 else 'ris')


def base(arg, allowed=('w3a3', 'w4a4', 'w5a5')):
  w, a, method = parse_arg(arg, allowed)
  c = default.get_config()
  c.quant.w_bits, c.quant.a_bits, c.method = w, a, method
  return c


def imagenet(arg, arch):
  """GDFQ-family ImageNet setting: batch 16, conditional-BN generator, student lr 1e-6,
  50 warm-up epochs of 200 iterations, 400 epochs."""
  c = base(arg)
  c.teacher.arch = arch
  c.data.dataset = 'imagenet2012'
  c.data.split = 'validation'
  c.data.eval_batch_size = 250
  c.generator.kind = 'conditional_bn'
  c.student.learning_rate = 1e-6
  c.train.batch_size = 16
  c.train.warmup_steps = 10_000
  c.train.calibration_steps = 10_000
  return c

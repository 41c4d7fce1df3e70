"""RIS / GDFQ on the pretrained akamaster CIFAR-10 ResNets (option-A shortcut, ImageNet input
statistics) and the real CIFAR-10 test set read from a NumPy archive.

    python -m ris_jax.main --config configs/cifar10_akamaster.py:resnet20,w4a4 --workdir W \
        --config.teacher.checkpoint=/path/to/resnet20-12fca82f.th \
        --config.data.dataset=npz:/path/to/cifar10_test.npz

Argument: `ARCH,BITS[,gdfq][,cpuN]`
  ARCH   resnet20 | resnet56 (the checkpoint of akamaster/pytorch_resnet_cifar10 as downloaded:
         `resnet20-12fca82f.th`, `resnet56-4bfd9763.th`; FP top-1 91.73 / 93.39 %);
  BITS   w4a4, w3a3, … or several joined by '+' (`w4a4+w3a3`): one generator, one student
         per bit-width, trained on the same images in one run;
  gdfq   the baseline (CE + BNS, one-hot labels) instead of RIS;
  cpuN   the shorter schedule used on a 2-core CPU: batch 64, N iterations, warm-up N/40
         (at least 50), both learning rates ×0.1 at N/4, N/2, 3N/4 (the paper's schedule scaled
         down); all other hyper-parameters stay the paper's.
Without `cpuN` every field is the paper's CIFAR setting (method.md): batch 200, 400 epochs × 200
iterations, student frozen for 4 warm-up epochs, decays at epochs 100/200/300, student SGD lr
1e-4, generator Adam 1e-3, β = 0.1, τ = 20.
Results and the commands that made them: experiments/results/cifar10.md.
"""
import re

from configs import default

ARCHS = {'resnet20': 'resnet20_akamaster', 'resnet56': 'resnet56_akamaster'}


def parse(arg):
  """(arch, bits, method, cpu_steps or None) of 'resnet20,w4a4+w3a3[,gdfq][,cpu1200]'."""
  parts = (arg or 'resnet20,w4a4').split(',')
  usage = ("config argument must be ARCH,BITS[,gdfq][,cpuN] with ARCH one of resnet20, resnet56 "
           "and BITS must be one of w2a2 … w8a8 or several joined by '+' (e.g. "
           f"resnet20,w4a4+w3a3,gdfq,cpu1200); got {arg!r}")
  if len(parts) < 2 or parts[0] not in ARCHS:
    raise ValueError(usage)
  bits = parts[1].split('+')
  if not all(re.fullmatch(r'w[2-8]a[2-8]', b) for b in bits):
    raise ValueError(usage)
  method, cpu_steps = 'ris', None
  for extra in parts[2:]:
    if extra == 'gdfq':
      method = 'gdfq'
    elif re.fullmatch(r'cpu\d+', extra) and int(extra[3:]) >= 4:
      cpu_steps = int(extra[3:])
    else:
      raise ValueError(usage)
  return ARCHS[parts[0]], bits, method, cpu_steps


def get_config(arg='resnet20,w4a4'):
  arch, bits, method, cpu_steps = parse(arg)
  c = default.get_config()
  c.method = method
  c.teacher.arch = arch
  c.data.dataset = 'npz:cifar10_test.npz'  # override with the archive's path
  c.data.split = 'all'
  c.data.eval_batch_size = 500
  w, a = map(int, re.fullmatch(r'w(\d)a(\d)', bits[0]).groups())
  c.quant.w_bits, c.quant.a_bits = w, a
  c.quant.bits = ','.join(bits) if len(bits) > 1 else ''
  if cpu_steps:
    n = cpu_steps
    c.train.batch_size = 64
    c.train.steps = n
    c.train.warmup_steps = c.train.calibration_steps = max(50, n // 40)
    c.train.decay_steps = (n // 4, n // 2, 3 * n // 4)
    c.train.log_every = max(1, n // 100)
    c.train.eval_every = max(1, n // 4)
    c.train.checkpoint_every = max(1, n // 20)
  return c

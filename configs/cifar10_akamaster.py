"""RIS / GDFQ on the pretrained akamaster CIFAR-10 ResNets (option-A shortcut, ImageNet input
statistics) and the real CIFAR-10 test set read from a NumPy archive.

    python -m ris_jax.main --config configs/cifar10_akamaster.py:resnet20,w4a4 --workdir W \
        --config.teacher.checkpoint=/path/to/resnet20-12fca82f.th \
        --config.data.dataset=npz:/path/to/cifar10_test.npz

Argument: `ARCH,BITS[,gdfq][,ait][,cpuN[,warmW]|,scaledN]`
  ARCH   resnet20 | resnet56 (the checkpoint of akamaster/pytorch_resnet_cifar10 as downloaded:
         `resnet20-12fca82f.th`, `resnet56-4bfd9763.th`; FP top-1 91.73 / 93.39 %);
  BITS   w4a4, w3a3, … or several joined by '+' (`w4a4+w3a3`): one generator, one student
         per bit-width, trained on the same images in one run;
  gdfq   the baseline (CE + BNS, one-hot labels) instead of RIS;
  ait    AIT's student step (KL only, no weight decay, gradient inflation with τ₀ = 1e-3;
         docs/method.md): `configs/cifar10_akamaster.py:resnet20,w4a4+w3a3,ait,cpu3000` is
         RIS+AIT on the CPU schedule;
  cpuN   the CPU schedule (a 2-core CPU does ~1–2 iterations/s): batch 64, N iterations; the
         student frozen and its activation ranges calibrating for the first W iterations
         (`warmW`, default 500: by then the generator's images are class-discriminative); both
         learning rates constant at the paper's values until 0.8·N, then ×0.1 once. Evaluation
         every N/6 iterations, checkpoints every N/12. Chosen on the validation half of the test
         set (experiments/results/cifar10_schedule.md), never on the report half;
  scaledN  the paper's schedule scaled down to N iterations at batch 64 (warm-up N/40, at least
         50; decays at N/4, N/2, 3N/4): the generator's rate falls ×0.1 before its images are
         class-discriminative (kept to reproduce experiments/results/cifar10.md, made with it
         under the name cpuN).
Without `cpuN` / `scaledN` every field is the paper's CIFAR setting (method.md): batch 200, 400
epochs × 200 iterations, student frozen for 4 warm-up epochs, decays at epochs 100/200/300,
student SGD lr 1e-4, generator Adam 1e-3, β = 0.1, τ = 20.
Evaluation: all 10,000 test images, and its two halves as subsets: `val` (images 0–4,999, the
only images any setting was chosen on) and `report` (5,000–9,999, the figures reported).
Results and the commands that made them: experiments/results/cifar10.md.
"""
import re

from configs import _published, default

ARCHS = {'resnet20': 'resnet20_akamaster', 'resnet56': 'resnet56_akamaster'}


CPU_WARMUP = 500  # cpuN's default warm-up (student frozen, ranges calibrating)
CPU_DECAY_AT = 0.8  # cpuN's one ×0.1 decay of both learning rates, as a fraction of N


def parse(arg):
  """{'arch', 'bits', 'method', 'ait', 'schedule': None | ('cpu', N, W) | ('scaled', N, None)}
  of 'resnet20,w4a4+w3a3[,gdfq][,ait][,cpu3000[,warm500]|,scaled800]'."""
  parts = (arg or 'resnet20,w4a4').split(',')
  usage = ("config argument must be ARCH,BITS[,gdfq][,ait][,cpuN[,warmW]|,scaledN] with ARCH one "
           "of resnet20, resnet56 and BITS must be one of w2a2 … w8a8 or several joined by '+' (e.g. "
           f"resnet20,w4a4+w3a3,gdfq,cpu3000); got {arg!r}")
  if len(parts) < 2 or parts[0] not in ARCHS:
    raise ValueError(usage)
  bits = parts[1].split('+')
  if not all(re.fullmatch(r'w[2-8]a[2-8]', b) for b in bits):
    raise ValueError(usage)
  out = {'arch': ARCHS[parts[0]], 'bits': bits, 'method': 'ris', 'ait': False, 'schedule': None}
  warmup = None
  for extra in parts[2:]:
    m = re.fullmatch(r'(cpu|scaled|warm)(\d+)', extra)
    if extra == 'gdfq' and out['method'] == 'ris':
      out['method'] = 'gdfq'
    elif extra == 'ait' and not out['ait']:
      out['ait'] = True
    elif m and m.group(1) in ('cpu', 'scaled') and int(m.group(2)) >= 4 and not out['schedule']:
      out['schedule'] = (m.group(1), int(m.group(2)), None)
    elif m and m.group(1) == 'warm' and warmup is None:
      warmup = int(m.group(2))
    else:
      raise ValueError(usage)
  if warmup is not None:
    if not out['schedule'] or out['schedule'][0] != 'cpu' or warmup >= out['schedule'][1]:
      raise ValueError(f'warmW goes with cpuN and W < N; got {arg!r}')
  if out['schedule'] and out['schedule'][0] == 'cpu':
    n = out['schedule'][1]
    out['schedule'] = ('cpu', n, min(CPU_WARMUP, n // 6) if warmup is None else warmup)
  return out


def get_config(arg='resnet20,w4a4'):
  p = parse(arg)
  c = default.get_config()
  c.method = p['method']
  c.teacher.arch = p['arch']
  c.data.dataset = 'npz:cifar10_test.npz'  # override with the archive's path
  c.data.split = 'all'
  c.data.subsets = 'val=0:5000,report=5000:10000'
  c.data.eval_batch_size = 500
  bits = p['bits']
  w, a = map(int, re.fullmatch(r'w(\d)a(\d)', bits[0]).groups())
  c.quant.w_bits, c.quant.a_bits = w, a
  c.quant.bits = ','.join(bits) if len(bits) > 1 else ''
  if p['ait']:
    _published.ait(c, 1e-3)
  if p['schedule']:
    kind, n, warmup = p['schedule']
    c.train.batch_size = 64
    c.train.steps = n
    if kind == 'scaled':
      c.train.warmup_steps = c.train.calibration_steps = max(50, n // 40)
      c.train.decay_steps = (n // 4, n // 2, 3 * n // 4)
      c.train.eval_every = max(1, n // 4)
      c.train.checkpoint_every = max(1, n // 20)
    else:
      c.train.warmup_steps = c.train.calibration_steps = warmup
      c.train.decay_steps = (int(CPU_DECAY_AT * n),)
      c.train.eval_every = max(1, n // 6)
      c.train.checkpoint_every = max(1, n // 12)
    c.train.log_every = max(1, n // 100)
  return c

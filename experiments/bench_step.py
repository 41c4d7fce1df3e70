"""Step-time benchmark of one full RIS iteration, JAX (ris_jax.train) vs PyTorch
(experiments/torch_reference.py), same process, same device, same random-weight teacher.

    python experiments/bench_step.py                       # ResNet-20 CIFAR-10, 32×32, batch 64
    python experiments/bench_step.py --arch resnet18       # ResNet-18 at 224, batch 16 (slow)

Times the fine-tuning phase (generator step + student step, activation ranges calibrated and
frozen: 79 200 of the 80 000 iterations of a CIFAR run), after compilation, as the median of
`--steps` iterations per framework, measured in interleaved rounds so that both see the same
machine load. Compile time is reported separately. Prints one JSON line:
  {"jax_ms", "torch_ms", "speedup" (= torch_ms / jax_ms), "compile_s", "gflops_per_step"
   (XLA cost analysis of the compiled JAX step), "achieved_gflops", "device", ...}
No downloads: the teacher has random weights (pytorchcv init, converted to Flax).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402

from configs import default  # noqa: E402
from experiments.torch_reference import TorchRIS  # noqa: E402
from ris_jax import convert, student, train  # noqa: E402
from ris_jax.models import get_arch  # noqa: E402

PRESETS = {'resnet20_cifar10': dict(batch_size=64, generator='gdfq'),
           'resnet18': dict(batch_size=16, generator='conditional_bn')}


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def device_string() -> str:
  d = jax.devices()[0]
  if d.platform == 'cpu':
    return f'cpu: {cpu_name()}, {os.cpu_count()} cores (torch {torch.get_num_threads()} threads)'
  return f'{d.platform}: {d.device_kind}'


def setup_jax(spec, torch_teacher, batch_size: int, generator_kind: str):
  """(compiled step, state, teacher variables, margins, compile seconds, GFLOP per step)."""
  config = default.get_config()
  config.train.batch_size = batch_size
  config.generator.kind = generator_kind
  t_module = spec.module()
  t_vars = convert.torch_to_flax(spec, torch_teacher.state_dict())
  mesh = train.make_mesh()
  models, state = train.build(config, spec, t_module, t_vars)
  t_vars, state = train.replicate(t_vars, mesh), train.replicate(state, mesh)
  # Calibrate the activation ranges on one generator batch (the fine-tuning phase has them).
  images = train.generate(models, state, jnp.arange(batch_size) % spec.num_classes,
                          jax.random.PRNGKey(1))
  variables = jax.jit(lambda v, x: student.calibrate_step(models.student, v, x)[1])(
      train.student_variables(state, t_vars), images)
  state = state.replace(quant_ranges=variables['quant_ranges'])
  margins = jnp.zeros(2)
  step = train.jit_ris_step(models, batch_size, mesh)
  start = time.perf_counter()
  lowered = step.lower(state, t_vars, margins, update_student=True, calibrate=False)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  gflops = float(cost.get('flops', 0.0)) / 1e9
  return compiled, state, t_vars, margins, compile_s, gflops


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--arch', default='resnet20_cifar10', choices=sorted(PRESETS))
  p.add_argument('--batch-size', type=int, default=None)
  p.add_argument('--steps', type=int, default=20, help='timed iterations per framework')
  p.add_argument('--rounds', type=int, default=4, help='interleaved JAX/torch rounds')
  p.add_argument('--warmup', type=int, default=2, help='untimed iterations per framework')
  p.add_argument('--torch-format', default='channels_last',
                 choices=('channels_last', 'nchw', 'both'),
                 help="'both' times both layouts and reports the faster as torch_ms")
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  preset = PRESETS[args.arch]
  batch_size = args.batch_size or preset['batch_size']
  spec = get_arch(args.arch)
  torch.manual_seed(args.seed)
  torch_teacher = spec.torch_model()

  compiled, state, t_vars, margins, compile_s, gflops = setup_jax(
      spec, torch_teacher, batch_size, preset['generator'])

  formats = ['nchw', 'channels_last'] if args.torch_format == 'both' else [args.torch_format]
  refs = {}
  for fmt in formats:
    ref = TorchRIS(torch_teacher, spec.num_classes, spec.image_size, batch_size,
                   generator_kind=preset['generator'], channels_last=fmt == 'channels_last')
    ref.calibrate(1)  # activation ranges from one warm-up iteration
    refs[fmt] = ref

  def jax_step():
    nonlocal state
    state, metrics = compiled(state, t_vars, margins)
    jax.block_until_ready((state, metrics))

  runners = {'jax': jax_step, **{f'torch_{f}': refs[f].step for f in formats}}
  for fn in runners.values():
    for _ in range(args.warmup):
      fn()
  times = {k: [] for k in runners}
  per_round = -(-args.steps // args.rounds)
  for _ in range(args.rounds):
    for name, fn in runners.items():
      for _ in range(per_round):
        start = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)

  ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
  torch_fmt = min(formats, key=lambda f: ms[f'torch_{f}'])
  jax_ms, torch_ms = ms['jax'], ms[f'torch_{torch_fmt}']
  result = {
      'jax_ms': round(jax_ms, 1), 'torch_ms': round(torch_ms, 1),
      'speedup': round(torch_ms / jax_ms, 3), 'compile_s': round(compile_s, 1),
      'gflops_per_step': round(gflops, 2), 'achieved_gflops': round(gflops / (jax_ms / 1000), 1),
      'device': device_string(), 'arch': args.arch, 'batch_size': batch_size,
      'steps': len(times['jax']), 'torch_format': torch_fmt,
      **{f'{k}_ms_all_median': round(v, 1) for k, v in ms.items() if k.startswith('torch_')},
      'jax_ms_min': round(1000 * min(times['jax']), 1),
      'torch_ms_min': round(1000 * min(times[f'torch_{torch_fmt}']), 1),
      'load_avg_1m_end': round(os.getloadavg()[0], 2),
      'versions': f'jax {jax.__version__}, torch {torch.__version__}',
  }
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  main()

"""Step-time benchmark of one full RIS iteration, JAX (ris_jax.train) vs PyTorch
(experiments/torch_reference.py), same process, same device, same random-weight teacher.

    python experiments/bench_step.py                       # ResNet-20 CIFAR-10, 32×32, batch 64
    python experiments/bench_step.py --pin-core 0          # both frameworks on one core
    python experiments/bench_step.py --arch resnet18       # ResNet-18 at 224, batch 16 (slow)
    python experiments/bench_step.py --also ''             # the main configuration only
    python experiments/bench_step.py --students w4a4,w3a3  # 2 students on 1 generator vs 2 runs

Times the fine-tuning phase (generator step + student step, activation ranges calibrated and
frozen: 79 200 of the 80 000 iterations of a CIFAR run), after compilation, as the median of
`--steps` iterations per framework, measured in interleaved rounds so that both see the same
machine load. Compile time is reported separately. Prints one JSON line:
  {"jax_ms", "torch_ms", "speedup" (= torch_ms / jax_ms), "compile_s", "gflops_per_step"
   (XLA cost analysis of the compiled JAX step), "achieved_gflops", "device", ...}
plus the process CPU time per iteration of each framework (`*_cpu_ms`: the work done, far less
sensitive than wall time to other processes on a shared machine), the load average and the
peak memory of the process (`peak_rss_mb`: both frameworks, getrusage maxrss). `--also` then
times further configurations the same way, each in its own process (its own peak memory) with
a few iterations only (`--also-steps`, default 3 per framework, one round): by default the
CIFAR-10 ResNet-20 batch-200 iteration and the ImageNet ResNet-18 one (224 px, batch 16); their
JSON lines are printed and summarized under `also` in the final line.
No downloads: the teacher has random weights (pytorchcv init, converted to Flax).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = {'resnet20_cifar10': dict(batch_size=64, generator='gdfq'),
           'resnet18': dict(batch_size=16, generator='conditional_bn')}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--arch', default='resnet20_cifar10', choices=sorted(PRESETS))
  p.add_argument('--batch-size', type=int, default=None)
  p.add_argument('--steps', type=int, default=20, help='timed iterations per framework')
  p.add_argument('--rounds', type=int, default=4, help='interleaved JAX/torch rounds')
  p.add_argument('--warmup', type=int, default=2, help='untimed iterations per framework')
  p.add_argument('--torch-format', default='channels_last',
                 choices=('channels_last', 'nchw', 'both'),
                 help="'both' times both layouts and reports the faster as torch_ms")
  p.add_argument('--pin-core', type=int, default=None,
                 help='run both frameworks on this one CPU core (torch 1 thread)')
  p.add_argument('--omp-wait-policy', default='PASSIVE', choices=('PASSIVE', 'ACTIVE', 'unset'),
                 help="torch's OpenMP wait policy unless OMP_WAIT_POLICY is set (see main)")
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--torch-device', default=None, choices=('cpu', 'cuda'),
                 help="the PyTorch reference's device (default: cuda when torch sees a GPU)")
  p.add_argument('--also', default='resnet20_cifar10:200,resnet18:16',
                 help="further ARCH:BATCH configurations, each timed in its own process "
                      "(comma-separated; '' for none)")
  p.add_argument('--also-steps', type=int, default=3,
                 help='timed iterations per framework of each --also configuration')
  p.add_argument('--students', default=None, metavar='BITS,BITS',
                 help='instead: time one run of these students (e.g. w4a4,w3a3) against the '
                      'same bit-widths as single runs (issue: one generator, several students)')
  p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                 help='override a config field of the JAX side, e.g. generator.upsample_conv=plain')
  return p.parse_args(argv)


def peak_memory() -> dict:
  """Peak resident memory of this process (both frameworks) and JAX's device statistics where
  the backend keeps them (XLA:CPU does not)."""
  import jax
  out = {'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
  stats = jax.devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    out['jax_peak_mb'] = round(stats['peak_bytes_in_use'] / 2**20, 1)
  return out


def bench_config(seed, batch_size, generator_kind):
  """The configs' RIS with every term on, κ = 3 soft labels included (off by default since the
  CIFAR-10 ablation, on in TorchRIS and in bench.md's figures): the iteration the benchmarks time."""
  from configs import default
  c = default.get_config()
  c.seed, c.train.batch_size, c.generator.kind = seed, batch_size, generator_kind
  c.loss.soft_labels = True
  return c


def apply_overrides(config, overrides):
  """`FIELD=VALUE` strings (dotted config paths) applied to an ml_collections config, the value
  parsed with the field's current type."""
  for item in overrides:
    path, value = item.split('=', 1)
    *parents, leaf = path.split('.')
    node = config
    for name in parents:
      node = node[name]
    old = node[leaf]
    node[leaf] = type(old)(value) if old is not None and not isinstance(old, bool) else (
        value.lower() in ('1', 'true') if isinstance(old, bool) else value)
  return config


class JaxStep:
  """The training loop's own jitted step (`train.jit_ris_step`) in the fine-tuning phase
  (activation ranges calibrated on one generator batch, then frozen), compiled; `run()` does
  one iteration on the current state and returns its metrics."""

  def __init__(self, config, spec, teacher_vars, batch_size):
    import jax
    import jax.numpy as jnp
    from ris_jax import student, train
    mesh = train.make_mesh()
    self.models, state = train.build(config, spec, spec.module(), teacher_vars)
    self.t_vars, state = train.replicate(teacher_vars, mesh), train.replicate(state, mesh)
    images = train.generate(self.models, state, jnp.arange(batch_size) % spec.num_classes,
                            jax.random.PRNGKey(1))
    ranges = {}
    for tag in self.models.tags:  # every student's ranges calibrated on the same batch
      module = self.models.student_module(tag)
      ranges[tag] = jax.jit(lambda v, x, m=module: student.calibrate_step(m, v, x)[1])(
          train.student_variables(state, self.t_vars, tag=tag), images)['quant_ranges']
    self.state = state.replace(quant_ranges=ranges)
    self.images = images
    self.margins = jnp.zeros(2)
    step = train.jit_ris_step(self.models, batch_size, mesh)
    start = time.perf_counter()
    self.compiled = step.lower(self.state, self.t_vars, self.margins, update_student=True,
                               calibrate=False).compile()
    self.compile_s = time.perf_counter() - start
    cost = self.compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
      cost = cost[0]
    self.gflops = float(cost.get('flops', 0.0)) / 1e9

  def run(self):
    import jax
    self.state, metrics = self.compiled(self.state, self.t_vars, self.margins)
    return jax.block_until_ready(metrics)


def bench_students(args) -> dict:
  """One run of several students (`--students w4a4,w3a3`: one generator step, one student step
  per bit-width) against the same bit-widths as single runs, and the extra student's own
  forward + backward pass, interleaved in rounds; wall ms per iteration (medians)."""
  import jax
  from ris_jax import convert, train
  from ris_jax.models import get_arch
  spec = get_arch(args.arch)
  batch_size = args.batch_size or PRESETS[args.arch]['batch_size']
  import torch
  torch.manual_seed(args.seed)
  t_vars = convert.torch_to_flax(spec, spec.torch_model().state_dict())
  tags = args.students.split(',')

  def config(bits):
    c = bench_config(args.seed, batch_size, PRESETS[args.arch]['generator'])
    c.quant.bits = bits
    return apply_overrides(c, args.set)

  runs = {'together': JaxStep(config(','.join(tags)), spec, t_vars, batch_size)}
  runs.update({tag: JaxStep(config(tag), spec, t_vars, batch_size) for tag in tags})
  # The last student's forward + backward alone (what a further student should cost).
  extra = runs[tags[-1]]
  copy = lambda tree: jax.tree.map(jax.numpy.array, tree)  # the jitted step donates its state
  args_ = (extra.models, extra.t_vars, copy(extra.state.quant_ranges[tags[-1]]), extra.images,
           jax.numpy.zeros(batch_size, jax.numpy.int32),
           extra.models.teacher.apply(extra.t_vars, extra.images), False, tags[-1])
  grad = jax.jit(jax.value_and_grad(train.student_loss, has_aux=True), static_argnums=(1, 7, 8))
  student_params = copy(extra.state.student[tags[-1]])
  timers = {name: r.run for name, r in runs.items()}
  timers['student_fwd_bwd'] = lambda: jax.block_until_ready(grad(student_params, *args_))
  for fn in timers.values():
    for _ in range(args.warmup):
      fn()
  times = {name: [] for name in timers}
  for _ in range(args.rounds):
    for name, fn in timers.items():
      for _ in range(max(1, args.steps // args.rounds)):
        start = time.perf_counter()
        fn()
        times[name].append(1e3 * (time.perf_counter() - start))
  ms = {name: float(np.median(t)) for name, t in times.items()}
  single_sum = sum(ms[tag] for tag in tags)
  return {'students': tags, 'arch': args.arch, 'batch_size': batch_size,
          'together_ms': round(ms['together'], 1),
          'single_ms': {tag: round(ms[tag], 1) for tag in tags},
          'singles_sum_ms': round(single_sum, 1),
          'together_vs_singles': round(ms['together'] / single_sum, 3),
          'extra_student_ms': round(ms['together'] - ms[tags[0]], 1),
          'student_fwd_bwd_ms': round(ms['student_fwd_bwd'], 1),
          'load_avg': os.getloadavg(), 'steps_per_config': len(times['together'])}


def run_also(args) -> dict:
  """Each `--also` configuration in its own process; returns {ARCH_bBATCH: its JSON result}."""
  results = {}
  passthrough = ['--omp-wait-policy', args.omp_wait_policy] + (
      ['--pin-core', str(args.pin_core)] if args.pin_core is not None else [])
  for item in filter(None, args.also.split(',')):
    arch, batch = item.split(':')
    cmd = [sys.executable, os.path.abspath(__file__), '--arch', arch, '--batch-size', batch,
           '--steps', str(args.also_steps), '--rounds', '1', '--warmup', '1', '--also', '',
           *passthrough, *sum((['--set', s] for s in args.set), [])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = out.strip().splitlines()[-1]
    print(line, flush=True)
    results[f'{arch}_b{batch}'] = json.loads(line)
  return results


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def main(argv=None):
  args = parse_args(argv)
  if args.pin_core is not None:  # before jax and torch size their thread pools
    os.sched_setaffinity(0, {args.pin_core})
  # PyTorch's OpenMP threads (libgomp) spin-wait after every parallel region. On a CPU shared
  # with other work each of its ~1000 ops per iteration then waits for descheduled threads
  # (unset policy: 4× slower torch iterations at load ~8 on 2 cores), and with ACTIVE they keep
  # spinning while the JAX step runs in the same process (JAX 960 → 1290 ms at load 1.5).
  # PASSIVE is the fair default here; it must be set before torch loads.
  if args.omp_wait_policy != 'unset':
    os.environ.setdefault('OMP_WAIT_POLICY', args.omp_wait_policy)
  sys.path.insert(0, ROOT)
  if args.students:
    print(json.dumps(bench_students(args)))
    return
  import jax
  import torch
  from experiments.torch_reference import TorchRIS
  from ris_jax import convert
  from ris_jax.models import get_arch
  if args.pin_core is not None:
    torch.set_num_threads(1)

  preset = PRESETS[args.arch]
  batch_size = args.batch_size or preset['batch_size']
  spec = get_arch(args.arch)
  torch.manual_seed(args.seed)
  torch_teacher = spec.torch_model()
  torch_device = args.torch_device or ('cuda' if torch.cuda.is_available() else 'cpu')

  # ---- JAX: the training loop's own jitted step (train.jit_ris_step), fine-tuning phase.
  config = apply_overrides(bench_config(args.seed, batch_size, preset['generator']), args.set)
  jax_run = JaxStep(config, spec, convert.torch_to_flax(spec, torch_teacher.state_dict()),
                    batch_size)
  compile_s, gflops = jax_run.compile_s, jax_run.gflops

  def jax_step():
    jax_run.run()

  # ---- PyTorch reference, same teacher weights.
  formats = ['nchw', 'channels_last'] if args.torch_format == 'both' else [args.torch_format]
  refs = {}
  if torch_device == 'cuda':  # every tensor the reference makes (draws, buffers) on the GPU
    torch.set_default_device('cuda')
    torch_teacher = torch_teacher.to('cuda')
  for fmt in formats:
    ref = TorchRIS(torch_teacher, spec.num_classes, spec.image_size, batch_size,
                   generator_kind=preset['generator'], channels_last=fmt == 'channels_last')
    ref.calibrate(1)  # activation ranges from one warm-up iteration
    refs[fmt] = ref

  def torch_step(ref):
    ref.step()
    if torch_device == 'cuda':  # wall time of the finished iteration, as JAX's block_until_ready
      torch.cuda.synchronize()
  runners = {'jax': jax_step, **{f'torch_{f}': (lambda r=refs[f]: torch_step(r)) for f in formats}}
  for fn in runners.values():
    for _ in range(args.warmup):
      fn()
  load_start = os.getloadavg()[0]
  times = {k: [] for k in runners}
  cpu_times = {k: [] for k in runners}
  per_round = -(-args.steps // args.rounds)
  for _ in range(args.rounds):
    for name, fn in runners.items():
      for _ in range(per_round):
        cpu, start = time.process_time(), time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - start)
        cpu_times[name].append(time.process_time() - cpu)

  ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
  cpu_ms = {k: 1000 * float(np.median(v)) for k, v in cpu_times.items()}
  torch_fmt = min(formats, key=lambda f: ms[f'torch_{f}'])
  tk = f'torch_{torch_fmt}'
  jax_ms, torch_ms = ms['jax'], ms[tk]
  d = jax.devices()[0]
  cores = len(os.sched_getaffinity(0))
  device = (f'cpu: {cpu_name()}, {cores} core{"s" if cores > 1 else ""} '
            f'(torch {torch.get_num_threads()} threads)' if d.platform == 'cpu'
            else f'{d.platform}: {d.device_kind}')
  result = {
      'jax_ms': round(jax_ms, 1), 'torch_ms': round(torch_ms, 1),
      'speedup': round(torch_ms / jax_ms, 3), 'compile_s': round(compile_s, 1),
      'gflops_per_step': round(gflops, 2), 'achieved_gflops': round(gflops / (jax_ms / 1000), 1),
      'device': device, 'arch': args.arch, 'batch_size': batch_size,
      'steps': len(times['jax']), 'torch_format': torch_fmt,
      'jax_ms_min': round(1000 * min(times['jax']), 1),
      'torch_ms_min': round(1000 * min(times[tk]), 1),
      'jax_cpu_ms': round(cpu_ms['jax'], 1), 'torch_cpu_ms': round(cpu_ms[tk], 1),
      **({f'{k}_ms': round(v, 1) for k, v in ms.items() if k.startswith('torch_')}
         if len(formats) > 1 else {}),
      'load_avg_1m': [round(load_start, 2), round(os.getloadavg()[0], 2)],  # start, end
      'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY', 'unset'),
      'versions': f'jax {jax.__version__}, torch {torch.__version__}',
      'torch_device': torch_device,
      **({'jax_config': args.set} if args.set else {}),
      **peak_memory(),
  }
  if args.also:
    print(json.dumps(result), flush=True)  # the main configuration's own line, then the others
    keys = ('jax_ms', 'torch_ms', 'speedup', 'jax_cpu_ms', 'torch_cpu_ms', 'steps', 'peak_rss_mb',
            'load_avg_1m')
    result['also'] = {k: {f: v.get(f) for f in keys} for k, v in run_also(args).items()}
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  main()

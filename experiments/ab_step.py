"""Interleaved A/B of JAX config values on the RIS iteration, in one process (issue 16).

    python experiments/ab_step.py --field generator.upsample_conv --values plain,parity
    python experiments/ab_step.py --field generator.upsample_conv --values plain,parity \
        --arch resnet18 --rounds 2 --reps 1

For each value builds the training loop's own jitted step exactly as `bench_step.py` does
(`bench_step.JaxStep`: same seed, so the same initial state for every value), then
  * numerics: step-0 metrics of every value from that identical state, and their relative
    difference to the first value's (`step0_rel_diff`: must be float rounding, ~1e-6);
  * timing, in interleaved rounds (value after value, `--reps` calls each): the generator forward
    (`gen_fwd`), its backward alone (`gen_bwd`: the VJP of the images w.r.t. the generator
    parameters, from saved residuals), the student's quantized forward + backward
    (`student_fwd_bwd`) and the whole iteration (`step`). Medians of wall and process-CPU ms.
Prints one JSON line. Timings on a shared CPU are upper bounds: the load average is reported.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--field', required=True, help='dotted config field, e.g. generator.upsample_conv')
  p.add_argument('--values', required=True, help='comma-separated values; the first is the base')
  p.add_argument('--arch', default='resnet20_cifar10')
  p.add_argument('--batch-size', type=int, default=None)
  p.add_argument('--rounds', type=int, default=4)
  p.add_argument('--reps', type=int, default=3, help='calls per value and component per round')
  p.add_argument('--components', default='gen_fwd,gen_bwd,student_fwd_bwd,step')
  p.add_argument('--pin-core', type=int, default=None)
  p.add_argument('--seed', type=int, default=0)
  return p.parse_args(argv)


def components(js, batch_size):
  """Jitted callables (no arguments) of one JaxStep's parts, on fixed inputs."""
  import jax
  import jax.numpy as jnp
  from ris_jax import train
  models = js.models
  state = jax.tree.map(jnp.array, js.state)  # a copy: js.run() donates js.state
  key = jax.random.PRNGKey(3)
  z = jax.random.normal(key, (batch_size, models.generator.latent_dim))
  labels, targets = train.sample_labels(models, key, batch_size)
  gen_vars = state.generator
  apply = lambda p: models.generator.apply({**gen_vars, 'params': p}, z, targets)
  fwd = jax.jit(apply)
  images, gen_vjp = jax.vjp(apply, gen_vars['params'])
  cot = jax.random.normal(key, images.shape)
  bwd = jax.jit(lambda f, g: f(g))
  fwd_bwd = jax.jit(lambda p, g: jax.vjp(apply, p)[1](g))
  logits = jax.random.normal(key, (batch_size, models.num_classes))
  tag = models.tags[0]  # the (first) student
  student_grad = jax.jit(jax.value_and_grad(
      lambda p: train.student_loss(p, models, js.t_vars, state.quant_ranges[tag], images, targets,
                                   logits, False, tag=tag)[0]))
  return {'gen_fwd': lambda: fwd(gen_vars['params']),
          'gen_bwd': lambda: bwd(gen_vjp, cot),
          'gen_fwd_bwd': lambda: fwd_bwd(gen_vars['params'], cot),
          'student_fwd_bwd': lambda: student_grad(state.student[tag]),
          'step': js.run}


def main(argv=None):
  args = parse_args(argv)
  if args.pin_core is not None:
    os.sched_setaffinity(0, {args.pin_core})
  import jax
  from bench_step import PRESETS, JaxStep, apply_overrides, bench_config
  from ris_jax import convert
  from ris_jax.models import get_arch
  import torch

  preset = PRESETS[args.arch]
  batch_size = args.batch_size or preset['batch_size']
  spec = get_arch(args.arch)
  torch.manual_seed(args.seed)
  t_vars = convert.torch_to_flax(spec, spec.torch_model().state_dict())
  values = args.values.split(',')
  names = args.components.split(',')
  runs, fns, step0, compile_s = {}, {}, {}, {}
  for v in values:
    config = bench_config(args.seed, batch_size, preset['generator'])
    apply_overrides(config, [f'{args.field}={v}'])
    js = JaxStep(config, spec, t_vars, batch_size)
    compile_s[v] = round(js.compile_s, 1)
    comps = components(js, batch_size)  # on the initial state, before any step
    step0[v] = {k: float(x) for k, x in js.run().items()}
    fns[v] = {k: comps[k] for k in names}
    for f in fns[v].values():  # compile / warm up
      jax.block_until_ready(f())
    runs[v] = js
  base = values[0]
  rel = {v: {k: abs(step0[v][k] - step0[base][k]) / max(abs(step0[base][k]), 1e-30)
             for k in step0[base]} for v in values[1:]}

  load_start = os.getloadavg()[0]
  wall = {(v, k): [] for v in values for k in names}
  cpu = {(v, k): [] for v in values for k in names}
  for _ in range(args.rounds):
    for k in names:
      for v in values:
        for _ in range(args.reps):
          c, t = time.process_time(), time.perf_counter()
          jax.block_until_ready(fns[v][k]())
          wall[v, k].append(1000 * (time.perf_counter() - t))
          cpu[v, k].append(1000 * (time.process_time() - c))
  result = {
      'field': args.field, 'arch': args.arch, 'batch_size': batch_size,
      'wall_ms': {v: {k: round(float(np.median(wall[v, k])), 1) for k in names} for v in values},
      'cpu_ms': {v: {k: round(float(np.median(cpu[v, k])), 1) for k in names} for v in values},
      'calls': args.rounds * args.reps, 'compile_s': compile_s,
      'step0': step0[base], 'step0_rel_diff': rel,
      'step0_max_rel_diff': {v: max(r.values()) for v, r in rel.items()},
      'load_avg_1m': [round(load_start, 2), round(os.getloadavg()[0], 2)],
      'cores': len(os.sched_getaffinity(0)),
  }
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  main()

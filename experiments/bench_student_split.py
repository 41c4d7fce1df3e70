"""Is the JAX student's forward + backward slow because of its quantizers or its convolutions?

    python experiments/bench_student_split.py            # pinned to core 0
    python experiments/bench_student_split.py --core 1

ResNet-20 CIFAR-10 (random pytorchcv weights), batch 64, loss KD (τ = 20) + CE on soft labels,
gradients w.r.t. every parameter (as the student step takes them); process CPU ms, medians of
`rounds × reps` calls, interleaved: `fp` the unquantized network, `w4a4` the student (ranges
calibrated on the batch), `w4a32` / `w32a4` only the weights / only the activations quantized.
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loss_and_grad(spec, ops, teacher_vars, images, teacher_logits, targets):
  """Jitted p ↦ (KD + CE, ∂/∂p) of `spec`'s network built with `ops`, its activation ranges
  (if any) calibrated once on `images`; and the parameters to call it with."""
  import jax
  from ris_jax import losses
  module = spec.module(ops)
  variables = {'params': teacher_vars['params'], 'batch_stats': teacher_vars['batch_stats']}
  init = module.init(jax.random.PRNGKey(0), images[:1])
  if 'quant_ranges' in init:
    variables['quant_ranges'] = init['quant_ranges']
    variables['quant_ranges'] = module.apply(variables, images, mutable=['quant_ranges'])[1][
        'quant_ranges']

  def loss(params):
    logits = module.apply({**variables, 'params': params}, images)
    return losses.kd_loss(logits, teacher_logits, 20.0, 'mean') + losses.cross_entropy(logits, targets)
  return jax.jit(jax.value_and_grad(loss))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--core', type=int, default=0)
  p.add_argument('--rounds', type=int, default=4)
  p.add_argument('--reps', type=int, default=3)
  args = p.parse_args(argv)
  os.sched_setaffinity(0, {args.core})
  import jax
  import torch
  from ris_jax import convert, layers, quant
  from ris_jax.models import get_arch
  torch.manual_seed(0)
  spec = get_arch('resnet20_cifar10')
  teacher_vars = convert.torch_to_flax(spec, spec.torch_model().state_dict())
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  images = jax.random.normal(keys[0], (64, 32, 32, 3))
  teacher_logits = jax.random.normal(keys[1], (64, 10))
  targets = jax.nn.softmax(jax.random.normal(keys[2], (64, 10)))
  q = quant.quantized_ops(4, 4)
  plain = layers.Ops()
  variants = {
      'fp': plain,
      'w4a4': q,
      'w4a32': layers.Ops(conv=q.conv, dense=q.dense, stem_conv=q.stem_conv, head=q.head),
      'w32a4': layers.Ops(act=q.act)}
  fns = {k: loss_and_grad(spec, ops, teacher_vars, images, teacher_logits, targets)
         for k, ops in variants.items()}
  params = teacher_vars['params']
  for f in fns.values():
    jax.block_until_ready(f(params))
  cpu = {k: [] for k in fns}
  for _ in range(args.rounds):
    for k, f in fns.items():
      for _ in range(args.reps):
        start = time.process_time()
        jax.block_until_ready(f(params))
        cpu[k].append(1000 * (time.process_time() - start))
  print(json.dumps({'cpu_ms': {k: round(float(np.median(v)), 1) for k, v in cpu.items()},
                    'core': args.core, 'load_avg_1m': round(os.getloadavg()[0], 2),
                    'versions': f'jax {jax.__version__}, torch {torch.__version__}'}))


if __name__ == '__main__':
  main()

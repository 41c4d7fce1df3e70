"""Where a RIS iteration spends its time, JAX vs PyTorch, component by component (issue 16).

    python experiments/bench_components.py --pin-core 0      # both frameworks on one core
    python experiments/bench_components.py                   # 2 cores (torch 2 threads)

Same process, same random-weight teacher, the step and reference of `bench_step.py` (ResNet-20
CIFAR-10, batch 64, W4A4, fine-tuning phase, torch channels_last). Times, interleaved in
rounds (medians of `rounds × reps` calls; process CPU ms and wall ms):
  generator  the generator's forward and backward (a fixed cotangent on its images);
  student    the quantized student's loss (KD + CE) and its parameter gradients;
  step       the whole iteration (generator step, student step);
  rest       step − generator − student: the clean and perturbed teacher passes with their
             input gradients, the losses, soft labels and both optimizer updates.
Prints one JSON line: {"cpu_ms" and "wall_ms": {"jax": {component: ms}, "torch": {...},
"speedup": {component: torch ms / jax ms, as bench_step's}}, ...}.
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
sys.path.insert(0, os.path.join(ROOT, 'experiments'))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--rounds', type=int, default=4)
  p.add_argument('--reps', type=int, default=3, help='calls per component and framework per round')
  p.add_argument('--pin-core', type=int, default=None,
                 help='run both frameworks on this one CPU core (torch 1 thread)')
  p.add_argument('--seed', type=int, default=0)
  return p.parse_args(argv)


def jax_components(js, batch_size):
  """{component: callable} of the JAX step `js` (bench_step.JaxStep) on fixed inputs."""
  from ab_step import components
  parts = components(js, batch_size)
  return {'generator': parts['gen_fwd_bwd'], 'student': parts['student_fwd_bwd'], 'step': js.run}


def torch_components(ref, batch_size):
  """{component: callable} of the PyTorch reference `ref` (TorchRIS) on fixed inputs."""
  import torch
  torch.manual_seed(3)
  z, labels, targets = ref.sample()
  with torch.no_grad():
    images = ref.generator(z, targets)
    t_logits, _ = ref.teacher(images)
  cot = torch.randn_like(images)

  def generator():
    ref.generator.zero_grad(set_to_none=True)
    (ref.generator(z, targets) * cot).sum().backward()

  def student():
    ref.student.zero_grad(set_to_none=True)
    loss, _ = ref.student_loss(images, targets, t_logits)
    loss.backward()
  return {'generator': generator, 'student': student, 'step': ref.step}


def main(argv=None):
  args = parse_args(argv)
  if args.pin_core is not None:
    os.sched_setaffinity(0, {args.pin_core})
  import jax
  import torch
  from bench_step import PRESETS, JaxStep, bench_config
  from ris_jax import convert
  from ris_jax.models import get_arch
  from torch_reference import TorchRIS
  if args.pin_core is not None:
    torch.set_num_threads(1)
  arch = 'resnet20_cifar10'
  preset = PRESETS[arch]
  batch_size = preset['batch_size']
  spec = get_arch(arch)
  torch.manual_seed(args.seed)
  torch_teacher = spec.torch_model()
  t_vars = convert.torch_to_flax(spec, torch_teacher.state_dict())
  config = bench_config(args.seed, batch_size, preset['generator'])
  js = JaxStep(config, spec, t_vars, batch_size)
  ref = TorchRIS(torch_teacher, spec.num_classes, spec.image_size, batch_size,
                 generator_kind=preset['generator'], channels_last=True)
  ref.calibrate(1)
  fns = {'jax': jax_components(js, batch_size), 'torch': torch_components(ref, batch_size)}
  block = {'jax': jax.block_until_ready, 'torch': lambda x: x}
  for fw, comps in fns.items():  # compile / warm up
    for f in comps.values():
      block[fw](f())
  load_start = os.getloadavg()[0]
  cpu = {(fw, k): [] for fw in fns for k in fns[fw]}
  wall = {(fw, k): [] for fw in fns for k in fns[fw]}
  for _ in range(args.rounds):
    for k in fns['jax']:
      for fw in fns:
        for _ in range(args.reps):
          c, t = time.process_time(), time.perf_counter()
          block[fw](fns[fw][k]())
          wall[fw, k].append(1000 * (time.perf_counter() - t))
          cpu[fw, k].append(1000 * (time.process_time() - c))
  result = {}
  for name, table in (('cpu_ms', cpu), ('wall_ms', wall)):
    med = {fw: {k: round(float(np.median(table[fw, k])), 1) for k in fns[fw]} for fw in fns}
    for fw in fns:
      med[fw]['rest'] = round(med[fw]['step'] - med[fw]['generator'] - med[fw]['student'], 1)
    result[name] = {**med, 'speedup': {k: round(med['torch'][k] / med['jax'][k], 3)
                                       for k in med['jax']}}
  result.update(arch=arch, batch_size=batch_size, pin_core=args.pin_core,
                calls=args.rounds * args.reps, load_avg_1m=[round(load_start, 2),
                                                             round(os.getloadavg()[0], 2)],
                versions=f'jax {jax.__version__}, torch {torch.__version__}')
  print(json.dumps(result))


if __name__ == '__main__':
  main()

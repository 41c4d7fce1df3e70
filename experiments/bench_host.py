"""Host-side work of the training loop per iteration (issue 25): what would make an accelerator
wait between the steps of `loop.train_and_evaluate`.

    python experiments/bench_host.py --data ../shared/data [--steps 40]

Runs the akamaster ResNet-20 `w4a4+w3a3` config at the paper's batch 200 (RIS, both students)
for 2 warm-up iterations and `--steps` fine-tuning iterations, with one log, one evaluation and
one checkpoint at the end, and records:
  * XLA compilations, by phase (`jax.monitoring` backend-compile events): the steady state
    must compile nothing;
  * implicit host-to-device transfers of the steps: every step call under
    `jax.transfer_guard('disallow')` (an implicit transfer raises; the loop's own transfers are
    explicit: the replicated state once, evaluation batches, metrics fetched at log steps);
  * per fine-tuning iteration: the time the jitted step call takes to return (host dispatch:
    flattening the state, enqueueing) against the wall time per iteration;
  * the loop's own Python time between the step calls (total − step calls − evaluation,
    checkpoint, logging, samples);
  * one evaluation (all 10,000 test images, both students, diagnostics, samples.png) and one
    checkpoint save, the host syncs of an evaluation (device → host fetches).
Prints one JSON line. Measured on this CPU the "device" is the same 2 cores, so the dispatch
and loop figures are what the host would add beside a GPU's step.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', default='../shared/data')
  parser.add_argument('--steps', type=int, default=40)
  args = parser.parse_args(argv)
  import jax
  import numpy as np
  from configs import cifar10_akamaster
  from ris_jax import distributed, evaluation, loop, train

  config = cifar10_akamaster.get_config('resnet20,w4a4+w3a3')  # the paper's batch 200
  config.loss.soft_labels = True  # bench.md's full RIS iteration (bench_step.bench_config)
  config.teacher.checkpoint = os.path.join(args.data, 'resnet20-12fca82f.th')
  config.data.dataset = 'npz:' + os.path.join(args.data, 'cifar10_test.npz')
  config.train.progress = False
  warmup = 2
  config.train.warmup_steps = config.train.calibration_steps = warmup
  config.train.steps = warmup + args.steps
  config.train.log_every = config.train.eval_every = config.train.checkpoint_every = config.train.steps

  compiles, phase = {}, ['start: teacher, warm-up steps, first evaluation']
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, secs, **kw: compiles.__setitem__(phase[0], compiles.get(phase[0], 0) + 1)
      if 'backend_compile' in name else None)
  timed = {'step_calls': [], 'step_wall': [], 'gaps': [], 'eval': [], 'save': [], 'fetches': 0}
  real_jit, real_save = train.jit_ris_step, loop.ocp.CheckpointManager.save
  real_split, real_to_host = evaluation.split_accuracies, distributed.to_host

  def jit_ris_step(*a, **kw):
    step = real_jit(*a, **kw)
    last = [None]

    def call(*sa, **skw):
      if skw['update_student']:  # the first fine-tuning call compiles its program
        phase[0] = ('first fine-tuning step' if len(timed['step_calls']) == warmup
                    else 'later fine-tuning steps')
      start = time.perf_counter()
      if skw['update_student'] and len(timed['step_calls']) == warmup + 1:
        timed['steady_start'] = start
      if last[0] is not None and skw['update_student']:
        timed['gaps'].append(start - last[0][1])  # the loop's Python since the last call returned
        timed['step_wall'].append(start - last[0][0])
      with jax.transfer_guard('disallow'):  # an implicit transfer of an argument would raise
        out = step(*sa, **skw)
      timed['step_calls'].append(time.perf_counter() - start)
      last[0] = (start, time.perf_counter())
      if len(timed['step_calls']) == warmup + args.steps:
        phase[0] = 'end of run: log, evaluation, samples, checkpoint'
      return out
    return call

  def timing(name, fn):
    def wrapped(*a, **kw):
      start = time.perf_counter()
      out = fn(*a, **kw)
      timed[name].append(time.perf_counter() - start)
      return out
    return wrapped

  def to_host(tree):
    timed['fetches'] += 1
    return real_to_host(tree)

  real_check = loop._first_non_finite

  def first_non_finite(pending):  # fetches the metrics of every step since the last log:
    out = real_check(pending)      # returns when the device has finished all of them
    timed['fetched_at'] = time.perf_counter()
    return out

  loop._first_non_finite = first_non_finite
  train.jit_ris_step = jit_ris_step
  loop.ocp.CheckpointManager.save = timing('save', real_save)
  evaluation.split_accuracies = timing('eval', real_split)
  distributed.to_host = to_host
  workdir = tempfile.mkdtemp(prefix='bench_host_')
  start = time.perf_counter()
  loop.train_and_evaluate(config, workdir)
  total = time.perf_counter() - start
  fine = timed['step_calls'][warmup:]
  wall = timed['step_wall'][1:]  # steady state (the first fine-tuning call compiled)
  result = {
      'config': 'cifar10_akamaster resnet20 w4a4+w3a3, RIS, batch 200',
      'device': f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
      'fine_tuning_steps': args.steps,
      'compilations_by_phase': compiles,
      'implicit_transfers_per_step': 0,  # transfer_guard('disallow') would have raised
      'dispatch_ms_per_step_median': round(1e3 * float(np.median(fine[1:])), 3),
      # host time between step calls: the loop runs ahead of the device (asynchronous
      # dispatch) until the metrics are fetched at the log step
      'call_to_call_ms_median': round(1e3 * float(np.median(wall)), 3) if wall else None,
      # device-bound time per fine-tuning iteration: from the second fine-tuning call (the
      # first compiled) to the fetch of their metrics at the log step
      'wall_ms_per_step': round(1e3 * (timed['fetched_at'] - timed['steady_start']) / (args.steps - 1), 1),
      'loop_python_ms_per_step_median': round(1e3 * float(np.median(timed['gaps'][1:])), 3),
      'evaluation_s': [round(t, 2) for t in timed['eval']],
      'save_s': [round(t, 2) for t in timed['save']],
      'device_to_host_fetches': timed['fetches'],
      'total_s': round(total, 1),
  }
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  main()

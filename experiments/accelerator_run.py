"""A prepared run for a machine with one NVIDIA GPU: the paper's CIFAR-10 schedule (akamaster
ResNet-20, W4A4 and W3A3 students on one generator, batch 200, 80,000 iterations) for GDFQ and
RIS, in chunks that each end with a checkpoint within a time budget, so that a machine lent for
minutes and commands limited to 10 minutes make progress that the next command resumes.

On the GPU machine (nothing downloadable there; JAX with CUDA, flax, optax, orbax-checkpoint,
torch, numpy, absl, tqdm, matplotlib, scikit-learn installed; ml_collections and pytorchcv
not): bring those two as wheels, made here where the package index is reachable,

    pip download --no-deps -d .whl ml_collections==1.1.0 pytorchcv==0.0.67

(`.whl/` is git-ignored: carry it), then one command there, rerun as often as time allows:

    pip install -q --no-deps .whl/*.whl && python experiments/accelerator_run.py \
        --data ../shared/data --workdir runs/accelerator --budget-s 540 --bench \
        --out experiments/results/accelerator_run.jsonl

Each invocation appends JSON lines to `--out` (the one file to copy back and commit) and prints
them: `environment` (device, versions, which optional packages import), with `--bench`
experiments/bench_step.py's line at batch 64 and 200 (JAX against the PyTorch reference on the
same device; once per `--out`), then one `chunk` line per chunk: method, iteration reached,
iterations/s of the chunk, top-1 of each student on the test set's report half (images
5,000–9,999) at the chunk's end, wall time; and a `finished` line with results.json of a method
whose schedule is done. Chunks alternate between the methods (`--methods`); each stops when the
next iterations, a checkpoint and an evaluation would pass min(its `--chunk-s`, the invocation's
`--budget-s`) (or after `--chunk-steps`); rerunning resumes every method from its checkpoint.
ris_jax needs tensorflow-datasets only for TFDS data, which this run does not read.
Not yet run on a GPU.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_step import apply_overrides  # noqa: E402
METHODS = ('gdfq', 'ris')
OPTIONAL = ('ml_collections', 'pytorchcv', 'tensorflow_datasets')


def emit(out: str, row: dict) -> None:
  line = json.dumps(row)
  print(line, flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'a') as f:
    f.write(line + '\n')


def environment() -> dict:
  import jax
  versions = {}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax.checkpoint', 'torch', 'numpy', *OPTIONAL):
    try:
      versions[name] = getattr(importlib.import_module(name), '__version__', 'present')
    except ImportError:
      versions[name] = None
  d = jax.devices()[0]
  return {'event': 'environment', 'time': time.strftime('%Y-%m-%d %H:%M:%S'),
          'platform': d.platform, 'device': d.device_kind, 'devices': jax.device_count(),
          'versions': versions}


def bench(batch: int, steps: int) -> dict:
  """experiments/bench_step.py's JSON line at `batch` (its own process)."""
  cmd = [sys.executable, os.path.join(REPO, 'experiments', 'bench_step.py'), '--batch-size',
         str(batch), '--steps', str(steps), '--rounds', '2', '--also', '']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  if proc.returncode:
    return {'event': 'bench', 'batch_size': batch, 'error': proc.stderr[-1500:]}
  return {'event': 'bench', **json.loads(proc.stdout.strip().splitlines()[-1])}


def config_of(args, method: str):
  from configs import cifar10_akamaster
  config = cifar10_akamaster.get_config(
      f"resnet20,w4a4+w3a3{',gdfq' if method == 'gdfq' else ''}{',' + args.schedule if args.schedule else ''}")
  config.teacher.checkpoint = os.path.join(args.data, 'resnet20-12fca82f.th')
  config.data.dataset = 'npz:' + os.path.join(args.data, 'cifar10_test.npz')
  config.train.progress = False
  return apply_overrides(config, args.set)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', default='../shared/data')
  parser.add_argument('--workdir', default='runs/accelerator')
  parser.add_argument('--out', default='experiments/results/accelerator_run.jsonl')
  parser.add_argument('--methods', default=','.join(METHODS))
  parser.add_argument('--budget-s', type=float, default=540.0,
                      help='wall seconds this invocation may use (one command: ≤ 10 min)')
  parser.add_argument('--chunk-s', type=float, default=240.0, help='wall seconds per chunk')
  parser.add_argument('--chunk-steps', type=int, default=None, help='iterations per chunk')
  parser.add_argument('--max-chunks', type=int, default=None,
                      help='chunks per method in this invocation (default: as time allows)')
  parser.add_argument('--schedule', default='',
                      help="a cifar10_akamaster schedule argument (e.g. cpu12,warm2); '' = the paper's")
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='override a config field (e.g. train.eval_every=4000)')
  parser.add_argument('--bench', action='store_true', help='bench_step at batch 64 and 200 first')
  parser.add_argument('--bench-steps', type=int, default=20)
  args = parser.parse_args(argv)
  start = time.time()
  end = start + args.budget_s
  emit(args.out, environment())
  if args.bench:
    done = set()
    if os.path.isfile(args.out):
      with open(args.out) as f:
        done = {row.get('batch_size') for row in map(json.loads, f) if row.get('event') == 'bench'
                and 'error' not in row}
    for batch in (64, 200):
      if batch not in done:
        emit(args.out, bench(batch, args.bench_steps))
  from ris_jax import config as config_lib, loop
  methods = args.methods.split(',')
  finished, chunks = set(), 0
  while (len(finished) < len(methods) and time.time() < end - 30
         and (args.max_chunks is None or chunks < args.max_chunks)):
    chunks += 1
    for method in methods:
      if method in finished or time.time() >= end - 30:
        continue
      config = config_of(args, method)
      config_lib.validate(config)
      config = config_lib.resolved(config)  # as main.run: the GDFQ baseline, AIT's student loss
      workdir = os.path.join(args.workdir, method)
      chunk_start = time.time()
      first = _step_of(workdir)
      out = loop.train_and_evaluate(config, workdir, deadline=min(end, chunk_start + args.chunk_s),
                                    max_iterations=args.chunk_steps)
      reached = out.get('stopped_at', out['steps'])
      seconds = time.time() - chunk_start
      emit(args.out, {'event': 'chunk', 'method': method, 'from': first, 'iteration': reached,
                      'steps': out['steps'], 'iterations_per_s': round((reached - first) / seconds, 3),
                      'chunk_s': round(seconds, 1),
                      'top1_report': {tag: round(t['report'], 2) for tag, t in _top1(out).items()}})
      if 'stopped_at' not in out:
        finished.add(method)
        emit(args.out, {'event': 'finished', 'method': method, 'results': out})


def _step_of(workdir: str) -> int:
  """The step a run would resume from (its latest complete checkpoint), 0 for a new run."""
  ckpt = os.path.join(workdir, 'checkpoints')
  steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
  return max(steps, default=0)


def _top1(out: dict) -> dict:
  """{tag: {'': top-1, 'report': …}} of a stopped chunk or a finished run's results."""
  if 'stopped_at' in out:
    return out['students']
  return {tag: {'': r['student_top1_final'], 'report': r.get('student_top1_final_report')}
          for tag, r in out['students'].items()}


if __name__ == '__main__':
  main()

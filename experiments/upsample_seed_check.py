"""The generator's upsample-conv formulations ('plain' vs 'parity', issue 16) trained end to end:
the same digits runs (the ablation's full RIS, or also its GDFQ; W3A3, 300 iterations) for each seed
with each setting, paired by seed, so that a change of the step is judged against the seed
spread of the results, not only against step-0 losses.

    python experiments/upsample_seed_check.py --seeds 0,1,2 --out /tmp/upsample_check
    python experiments/upsample_seed_check.py --methods 'GDFQ (CE+BNS),full RIS'

Finished runs are skipped (an interrupted check resumes). Writes
experiments/results/upsample_seed_check.md (per-seed values, mean ± std per setting, and the
paired difference parity − plain) and upsample_seed_check.raw.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ablation  # noqa: E402
import tables  # noqa: E402
from configs import demo  # noqa: E402

SETTINGS = ('plain', 'parity')
METHODS = ('GDFQ (CE+BNS)', 'full RIS')


def run_one(out: str, method: str, setting: str, seed: int, bits: str, steps: int) -> dict:
  from ris_jax import loop
  workdir = os.path.join(out, bits, method.split()[0].lower(), setting, f'seed{seed}')
  done = os.path.join(workdir, 'results.json')
  if os.path.isfile(done):
    with open(done) as f:
      return json.load(f)
  config = ablation.variant_config(demo.get_config(bits), seed, ablation.VARIANTS[method], steps)
  config.generator.upsample_conv = setting
  print(f'[{bits} seed {seed}] {method}, {setting} → {workdir}', flush=True)
  return loop.train_and_evaluate(config, workdir)


def write_table(runs: dict, methods, seeds, bits: str, steps: int, command: str) -> str:
  teacher = next(iter(runs.values()))['teacher_top1']
  lines = [f'# Upsample-conv formulations trained end to end ({bits.upper()}, {steps} iterations)', '',
           'Digits teacher, the ablation\'s runs (`experiments/ablation.py` variants), seeds '
           f'{", ".join(map(str, seeds))}; top-1 (%) on the 360 test digits (one image = 0.28 '
           'points). mean ± std (population) over seeds, then each seed\'s value in seed order. '
           f'FP teacher {teacher:.2f} % (the cached digits teacher of this machine). '
           f'Command: `{command}`.', '']
  for metric in ('student_top1_initial', 'student_top1_final', 'student_top1_best'):
    lines += [f'## {metric}', '', '| method | plain | parity | parity − plain (paired) |',
              '|---|---|---|---|']
    for method in methods:
      vals = {s: np.array([runs[f'{method}|{s}|{seed}'][metric] for seed in seeds]) for s in SETTINGS}
      diff = vals['parity'] - vals['plain']
      lines.append(f'| {method} | {tables.mean_std(vals["plain"])} | '
                   f'{tables.mean_std(vals["parity"])} | {tables.mean_std(diff)} |')
    lines.append('')
  text = '\n'.join(lines)
  with open(os.path.join(tables.RESULTS, 'upsample_seed_check.md'), 'w') as f:
    f.write(text)
  return text


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--seeds', default='0,1,2')
  p.add_argument('--bits', default='w3a3')
  p.add_argument('--methods', default='full RIS', help=f"comma-separated, of {', '.join(METHODS)}")
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--out', default='/tmp/upsample_check')
  p.add_argument('--compile-cache', default='~/.cache/ris_jax/xla',
                 help="persistent XLA compilation cache ('' = off): seeds share programs")
  args = p.parse_args()
  if args.compile_cache:
    import jax
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(args.compile_cache))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  seeds = [int(s) for s in args.seeds.split(',')]
  methods = [m.strip() for m in args.methods.split(',')]
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    p.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
  runs = {}
  for seed in seeds:
    for method in methods:
      for setting in SETTINGS:
        r = run_one(args.out, method, setting, seed, args.bits, args.steps)
        runs[f'{method}|{setting}|{seed}'] = {k: r[k] for k in (
            'teacher_top1', 'student_top1_initial', 'student_top1_final', 'student_top1_best',
            'wall_s')}
  command = tables.command('upsample_seed_check.py')
  tables.save_raw('upsample_seed_check', command, {'seeds': seeds, 'methods': methods, 'runs': runs})
  print(write_table(runs, methods, seeds, args.bits, args.steps, command))


if __name__ == '__main__':
  main()

"""Ablation of the RIS terms on Fashion-MNIST (ResNet-8 teacher, 10,000 test images).

    python experiments/ablation_fashion.py --bits w4a4 --seeds 0,1,2 --steps 300 \
        --out /tmp/ris_ablation_fashion

Per seed: PTQ calibrated on Gaussian noise, the six trained variants of
`experiments/ablation.py` (GDFQ, +input perturbation, +weight perturbation, +both,
+diversity, full RIS), each a `configs/fashion_resnet.py` run shortened to --steps, and the
real-data upper bound: the same student calibrated and fine-tuned on real training images
(`ris_jax.real_finetune`, same steps / batch / learning rates). Finished runs are skipped, so
an interrupted ablation resumes. Writes experiments/results/ablation_fashion.{md,png},
samples_fashion_gdfq_vs_ris.png and ablation_fashion.raw.json (every run's results;
`--tables-only` regenerates the table and plot from it). The table holds generated numbers
only; the reading of one generation is in ablation_fashion_reading.md (hand-written, not
regenerated).
No tuning on the test split: every hyper-parameter is method.md's or fashion_resnet.py's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import ablation  # noqa: E402  (VARIANTS: the same six trained variants as on digits)
import tables  # noqa: E402
from configs import fashion_resnet  # noqa: E402

RESULTS = os.path.join(HERE, 'results')
VARIANTS = ablation.VARIANTS
UPPER = 'real-data fine-tuning (upper bound)'
REAL_PTQ = 'PTQ on real images (no fine-tuning)'
NOISE_PTQ = 'PTQ on Gaussian noise'


def variant_config(bits: str, seed: int, overrides: dict, steps=None):
  # 10,000 test images per evaluation: evaluate twice only.
  return ablation.variant_config(fashion_resnet.get_config(bits), seed, overrides, steps,
                                 evaluations=2)


noise_ptq = ablation.noise_ptq


def _cached(path, fn):
  """results dict at `path` (json), computed by `fn` and written (atomically) when missing."""
  if not os.path.isfile(path):
    result = fn()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
      json.dump(result, f, indent=2)
    os.replace(path + '.tmp', path)
  with open(path) as f:
    return json.load(f)


def run_all(bits, seeds, out, steps):
  from ris_jax import loop, real_finetune
  rows = {}
  for seed in seeds:
    for name, overrides in VARIANTS.items():
      workdir = os.path.join(out, bits, name.split(' ')[0].strip('+').lower(), f'seed{seed}')
      print(f'[{bits} seed {seed}] {name} → {workdir}', flush=True)
      r = _cached(os.path.join(workdir, 'results.json'), lambda: loop.train_and_evaluate(
          variant_config(bits, seed, overrides, steps), workdir))
      rows.setdefault(name, []).append(r)
    base = variant_config(bits, seed, {}, steps)
    print(f'[{bits} seed {seed}] {UPPER}', flush=True)
    r = _cached(os.path.join(out, bits, 'real', f'seed{seed}', 'results.json'),
                lambda: real_finetune.finetune_on_real(base))
    rows.setdefault(UPPER, []).append(r)
    rows.setdefault(REAL_PTQ, []).append(
        {'student_top1_final': r['student_top1_initial'], 'student_top1_best': None})
    rows.setdefault('FP teacher', []).append(
        {'student_top1_final': r['teacher_top1'], 'student_top1_best': None})
    t = time.time()
    ptq = _cached(os.path.join(out, bits, 'noise_ptq', f'seed{seed}', 'results.json'),
                  lambda: {'student_top1_final': noise_ptq(base), 'student_top1_best': None,
                           'wall_s': round(time.time() - t, 1)})
    rows.setdefault(NOISE_PTQ, []).append(ptq)
  return rows


def write_table(rows, bits, seeds, steps, command):
  order = ['FP teacher', NOISE_PTQ, REAL_PTQ] + list(VARIANTS) + [UPPER]
  c = variant_config(bits, seeds[0], {}, steps)
  tc = c.train
  lines = [
      f'# Ablation on Fashion-MNIST, {bits.upper()}', '',
      f'Teacher `{c.teacher.arch}` (configs/teacher_fashion.py, '
      f'{c.teacher_training.epochs} epochs); evaluation on the 10,000 real test images (one '
      'image = 0.01 points). Mean ± std (population) over seeds '
      f'{", ".join(map(str, seeds))}, then each seed\'s value in seed order. Every trained run: '
      f'{tc.steps} iterations of batch '
      f'{tc.batch_size}, student frozen and activation ranges calibrating for the first '
      f'{tc.warmup_steps}, learning rates ×0.1 at {tc.decay_steps[0]}: **much shorter than '
      f'configs/fashion_resnet.py ({fashion_resnet.get_config().train.steps} iterations)**, '
      'to fit 21 runs into about an hour of a shared 2-core CPU. "best" = the best of the '
      f'evaluations at iterations {tc.eval_every} and {tc.steps}; "final" = iteration '
      f'{tc.steps}; "before fine-tuning" = the student calibrated on the run\'s own images at '
      f'iteration {tc.warmup_steps}. The upper bound is the same student and schedule on real '
      "training images ('train' split, KD + CE on the real labels); its calibrated student is "
      'the PTQ-on-real-images row. No hyper-parameter was tuned on the test split. Generated '
      'from `ablation_fashion.raw.json` by the script (the hand-written reading of one '
      'generation: `ablation_fashion_reading.md`).', '',
      f'Command: `{command}`', '',
      '| method | top-1 final | top-1 best | before fine-tuning | wall s / run |',
      '|---|---|---|---|---|']
  for name in order:
    rs = rows[name]
    walls = [r['wall_s'] for r in rs if r.get('wall_s')]
    wall = tables.mean_std(walls, 0) if walls else '–'
    lines.append(f"| {name} | {tables.mean_std(r['student_top1_final'] for r in rs)} | "
                 f"{tables.mean_std(r.get('student_top1_best') for r in rs)} | "
                 f"{tables.mean_std(r.get('student_top1_initial') for r in rs)} | {wall} |")
  tables.write('ablation_fashion.md', lines)
  return order


def plot(rows, bits, order):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  means = [np.mean([r['student_top1_final'] for r in rows[n]]) for n in order]
  stds = [np.std([r['student_top1_final'] for r in rows[n]]) for n in order]
  colors = ['gray', 'silver', 'silver'] + ['C0'] * 5 + ['C3', 'C2']
  ax.barh(range(len(order)), means, xerr=stds, color=colors)
  ax.set_yticks(range(len(order)), order, fontsize=8)
  ax.invert_yaxis()
  ax.set_xlim(max(0, min(means) - 5), 100)
  ax.set_xlabel('top-1 (%) on the Fashion-MNIST test set, final')
  ax.set_title(bits.upper())
  fig.tight_layout()
  fig.savefig(os.path.join(RESULTS, 'ablation_fashion.png'), dpi=90)


def samples_side_by_side(out, bits, seed):
  names = (('gdfq', 'GDFQ (CE+BNS)'), ('both', '+both (robustness)'), ('full', 'full RIS'))
  tables.sample_grids('samples_fashion_gdfq_vs_ris.png', [
      (os.path.join(out, bits, v, f'seed{seed}', 'samples.png'), f'{title}, {bits.upper()}, seed {seed}')
      for v, title in names], dpi=80)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--bits', default='w4a4', choices=('w4a4', 'w3a3'))
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--steps', type=int, default=300,
                      help='iterations per run (configs/fashion_resnet.py: 2000)')
  parser.add_argument('--out', default='/tmp/ris_ablation_fashion')
  parser.add_argument('--compile-cache', default='~/.cache/ris_jax/xla',
                      help="persistent XLA compilation cache ('' = off): seeds share programs")
  parser.add_argument('--tables-only', action='store_true',
                      help='regenerate the table and plot from results/ablation_fashion.raw.json')
  args = parser.parse_args()
  if args.tables_only:
    command, raw = tables.load_raw('ablation_fashion')
    rows = raw['runs']
    plot(rows, raw['bits'], write_table(rows, raw['bits'], raw['seeds'], raw['steps'], command))
    return
  if args.compile_cache:
    import jax
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(args.compile_cache))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  seeds = [int(s) for s in args.seeds.split(',')]
  os.makedirs(RESULTS, exist_ok=True)
  rows = run_all(args.bits, seeds, args.out, args.steps)
  command = tables.command('ablation_fashion.py')
  tables.save_raw('ablation_fashion', command, {'bits': args.bits, 'seeds': seeds,
                                                'steps': args.steps, 'runs': rows})
  order = write_table(rows, args.bits, seeds, args.steps, command)
  plot(rows, args.bits, order)
  samples_side_by_side(args.out, args.bits, seeds[0])


if __name__ == '__main__':
  main()

"""Other data-free compression with RIS images on the offline digits teacher (issue 8).

    python experiments/compression.py --seeds 0,1,2 --out /tmp/ris_compression

1. Data-free KD (`configs/dfkd_digits.py`): a random ResNet-8 distilled from the ResNet-20
   teacher on generator images only, generator losses GDFQ (CE + BNS) vs RIS; per seed. The
   upper bound: the same ResNet-8 trained on the real digits (the teacher's recipe, 20 epochs).
2. PTQ without fine-tuning (`configs/ptq_digits.py`): activation ranges calibrated on Gaussian
   noise, on the GDFQ generator and on the RIS generator of step 1 (same seed; a run's
   generator depends only on teacher, losses, seed and steps, not on its student), and on real
   training images as a reference; then greedy per-layer weight clipping by output MSE.

Finished runs are skipped, so an interrupted experiment resumes. Writes
experiments/results/dfkd_digits.md and ptq_digits.md, and beside each its `.raw.json` (every
run's results; `--tables-only` regenerates both tables from them without running anything).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tables  # noqa: E402
from configs import dfkd_digits, ptq_digits, teacher_digits  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
METHODS = {'gdfq': 'GDFQ generator (CE+BNS)', 'ris': 'RIS generator'}


def _cached(path, compute):
  if not os.path.isfile(path):
    compute()
  with open(path) as f:
    return json.load(f)


def dfkd_config(method, seed, steps):
  from ris_jax import config as config_lib
  c = dfkd_digits.get_config(method)
  c.seed = seed
  c.train.progress = False
  if steps:
    c.train.steps = steps
    c.train.decay_steps = (int(steps * 0.7),)
  if method == 'gdfq':
    c = config_lib.gdfq_baseline(c)
  else:  # the tables' RIS: κ = 3 soft labels, the configs' default when they were made
    c.loss.soft_labels = True
  return c


def run_dfkd(out, seeds, steps, methods=tuple(METHODS)):
  from ris_jax import loop
  rows = {}
  for seed in seeds:
    for method in methods:
      workdir = os.path.join(out, 'dfkd', method, f'seed{seed}')
      print(f'[dfkd {method} seed {seed}] → {workdir}', flush=True)
      r = _cached(os.path.join(workdir, 'results.json'),
                  lambda: loop.train_and_evaluate(dfkd_config(method, seed, steps), workdir))
      with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        logged = [row for row in map(json.loads, f) if 'teacher_acc_on_synthetic' in row]
      r['teacher_acc_on_synthetic'] = 100 * np.mean([row['teacher_acc_on_synthetic']
                                                     for row in logged[-4:]])
      rows.setdefault(method, []).append(r)
  return rows


def run_real_student(out, seeds):
  """The DFKD student (resnet8_digits) trained on the real training digits: the upper bound."""
  from ris_jax import teacher
  rows = []
  for seed in seeds:
    c = teacher_digits.get_config()
    c.teacher.arch = 'resnet8_digits'
    c.teacher_training.seed = seed
    workdir = os.path.join(out, 'real_student', f'seed{seed}')
    print(f'[real-data resnet8 seed {seed}] → {workdir}', flush=True)
    rows.append(_cached(os.path.join(workdir, 'teacher_results.json'),
                        lambda: teacher.train_teacher(c, workdir)))
  return rows


def run_ptq(out, seeds, bits_list, only_sources=None):
  from ris_jax import ptq
  rows = {}
  for bits in bits_list:
    for seed in seeds:
      sources = {'Gaussian noise': ('noise', 'noise'),
                 **{name: (f'gen_{m}', 'generator:' + os.path.join(out, 'dfkd', m, f'seed{seed}'))
                    for m, name in METHODS.items()},
                 'real digits (reference)': ('real', 'real')}
      for name, (key, source) in sources.items():
        if only_sources and key not in only_sources:
          continue
        c = ptq_digits.get_config(bits)
        c.seed = seed
        c.ptq.source = source
        workdir = os.path.join(out, 'ptq', bits, key, f'seed{seed}')
        print(f'[ptq {bits} {name} seed {seed}] → {workdir}', flush=True)
        r = _cached(os.path.join(workdir, 'results.json'), lambda: ptq.run(c, workdir))
        rows.setdefault((bits, name), []).append(r)
  return rows


_ms = tables.mean_std


def write_dfkd(rows, real, seeds, command):
  teacher = rows['ris'][0]['teacher_top1']
  r0 = rows['ris'][0]
  lines = ['# Data-free knowledge distillation on the offline digits teacher', '',
           f'Teacher: ResNet-20 layout (FP, {teacher:.2f} %). Student: `resnet8_digits` '
           '(ResNet-8, one unit per stage, full precision, random init), trained only on '
           f'generator images: {r0["steps"]} iterations, batch {r0["batch_size"]}, KD (τ = 4, '
           'batchmean) + CE on the labels the images were generated for; the generator trains '
           'alongside (one generator step, then one student step per iteration). Top-1 on the '
           '360 held-out test digits (one image = 0.28 points); mean ± std (population) over seeds '
           f'{", ".join(map(str, seeds))}, then each seed\'s value in seed order; final = last '
           'step, best = best of the evaluations every 100 steps (reported for comparison with '
           'the literature, not a result). Generated from `dfkd_digits.raw.json` by the script.',
           f'Command: `{command}`.', '',
           '| student trained on | top-1 final | top-1 best | teacher top-1 on the synthetic '
           'batches | wall time per run |',
           '|---|---|---|---|---|',
           f'| (teacher, ResNet-20) | {teacher:.2f} | – | – | – |',
           f'| real digits (upper bound; 20 epochs of the 1,437 training images) | '
           f'{_ms([r["test_top1"] for r in real])} | – | – | '
           f'{np.mean([r["wall_s"] for r in real]):.0f} s |']
  for method, name in METHODS.items():
    rs = rows[method]
    lines.append(f'| {name} images | {_ms([r["student_top1_final"] for r in rs])} | '
                 f'{_ms([r["student_top1_best"] for r in rs])} | '
                 f'{_ms([r["teacher_acc_on_synthetic"] for r in rs], 1)} | '
                 f'{np.mean([r["wall_s"] for r in rs]):.0f} s |')
  lines += ['',
      'Teacher top-1 on the synthetic batches: how often the teacher assigns a generated image '
      'the label it was generated for, mean of the last 4 logged training batches (steps '
      f'{r0["steps"] - 150}–{r0["steps"]}).',
      'Wall times were measured on the 2-core CPU shared with two to four other jobs (upper '
      'bounds).', '']
  tables.write('dfkd_digits.md', lines)


def write_ptq(rows, bits_list, seeds, command):
  names = ['Gaussian noise'] + list(METHODS.values()) + ['real digits (reference)']
  any_row = rows[(bits_list[0], names[0])][0]
  header = '| calibration images | ' + ' | '.join(b.upper() for b in bits_list) + ' |'
  rule = '|---|' + '---|' * len(bits_list)
  lines = ['# Post-training quantization (no fine-tuning) of the offline digits teacher', '',
           f'Teacher: ResNet-20 layout, FP {any_row["teacher_top1"]:.2f} % on the 360 held-out '
           'test digits (one image = 0.28 points). Every conv and dense kernel quantized per '
           'output channel, every ReLU output per tensor; activation ranges calibrated (EMA of '
           f'batch min/max) on {any_row["calibration_images"]} images of each source; the '
           'generators are those of the DFKD runs (`dfkd_digits.md`, same seed). Weight '
           'clipping: greedy per layer, α ∈ {1, 0.95, …, 0.5} of each channel\'s [min, max], '
           'chosen to minimize the MSE between the quantized and the FP logits on 256 of the '
           'calibration images. Mean ± std (population) over seeds ' + ', '.join(map(str, seeds)) +
           ', then each seed\'s value in seed order (noise and real: other draws; generators: '
           'other training seeds); logit MSEs: means. Generated from `ptq_digits.raw.json` by '
           'the script.',
           f'Command: `{command}`.', '', '## Top-1 after calibration only', '', header, rule]
  for name in names:
    lines.append(f'| {name} | ' + ' | '.join(
        _ms([r['top1_calibrated'] for r in rows[(b, name)]]) for b in bits_list) + ' |')
  lines += ['', '## Top-1 after calibration + MSE weight clipping', '', header, rule]
  for name in names:
    lines.append(f'| {name} | ' + ' | '.join(
        _ms([r['top1_clipped'] for r in rows[(b, name)]]) for b in bits_list) + ' |')
  lines += ['', '## Logit MSE vs the FP teacher on the calibration images (before → after '
            'clipping)', '', header, rule]
  for name in names:
    lines.append(f'| {name} | ' + ' | '.join(
        f"{np.mean([r['mse_before'] for r in rows[(b, name)]]):.3g} → "
        f"{np.mean([r['mse_after'] for r in rows[(b, name)]]):.3g}" for b in bits_list) + ' |')
  wall = [r['wall_s'] for rs in rows.values() for r in rs]
  lines += ['', f'Wall time per PTQ run (calibration, clipping search, two evaluations, '
            f'compilation included): {np.mean(wall):.0f} s mean, {np.max(wall):.0f} s max, on '
            'the shared 2-core CPU.', '']
  tables.write('ptq_digits.md', lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--bits', default='w8a8,w6a6,w4a8,w4a4,w3a3')
  parser.add_argument('--steps', type=int, default=None, help='override the DFKD length (800)')
  parser.add_argument('--only', choices=('dfkd', 'ptq'), default=None,
                      help='one part (ptq needs the dfkd runs of the same --out)')
  parser.add_argument('--methods', default='gdfq,ris', help='DFKD generators to train')
  parser.add_argument('--sources', default=None,
                      help='PTQ calibration sources to run, of noise,gen_gdfq,gen_ris,real '
                           '(default all; the tables need all)')
  parser.add_argument('--out', default='/tmp/ris_compression')
  parser.add_argument('--compile-cache', default='~/.cache/ris_jax/xla',
                      help="persistent XLA compilation cache ('' = off)")
  parser.add_argument('--tables-only', action='store_true',
                      help='regenerate both tables from results/{dfkd,ptq}_digits.raw.json')
  args = parser.parse_args()
  if args.tables_only:
    command, raw = tables.load_raw('dfkd_digits')
    write_dfkd(raw['runs'], raw['real'], raw['seeds'], command)
    command, raw = tables.load_raw('ptq_digits')
    write_ptq({tuple(k.split('|')): v for k, v in raw['runs'].items()}, raw['bits'], raw['seeds'],
              command)
    return
  if args.compile_cache:
    import jax
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(args.compile_cache))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  seeds = [int(s) for s in args.seeds.split(',')]
  command = tables.command('compression.py')
  start = time.time()
  methods = args.methods.split(',')
  partial = args.sources or methods != list(METHODS)
  if not args.sources or {'gen_gdfq', 'gen_ris'} & set(args.sources.split(',')):
    rows = run_dfkd(args.out, seeds, args.steps, methods)
    if args.only != 'ptq' and not partial:
      real = run_real_student(args.out, seeds)
      tables.save_raw('dfkd_digits', command, {'seeds': seeds, 'runs': rows, 'real': real})
      write_dfkd(rows, real, seeds, command)
  if args.only != 'dfkd':
    bits = args.bits.split(',')
    rows = run_ptq(args.out, seeds, bits, args.sources and args.sources.split(','))
    if not partial:
      tables.save_raw('ptq_digits', command, {'seeds': seeds, 'bits': bits,
                                              'runs': {'|'.join(k): v for k, v in rows.items()}})
      write_ptq(rows, bits, seeds, command)
  print(f'total {time.time() - start:.0f} s', flush=True)


if __name__ == '__main__':
  main()

"""Ablation of the RIS terms on the offline digits teacher (issue: evidence).

    python experiments/ablation.py --bits w3a3,w2a4 --seeds 0,1,2 --out /tmp/ablation

For each bit-width and seed: the FP teacher, PTQ calibrated on Gaussian noise, and six trained
variants (GDFQ, +input perturbation, +weight perturbation, +both, +diversity, full RIS), each
a `configs/demo.py` run. Finished runs are skipped, so an interrupted ablation resumes. Writes
experiments/results/ablation_digits.md, ablation_digits.png, samples_gdfq_vs_ris.png and
ablation_digits.raw.json (every run's results; `--tables-only` regenerates the table and plot
from it without running anything).
No tuning happened on the test split: every hyper-parameter is method.md's default or the
demo's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tables  # noqa: E402
from configs import demo  # noqa: E402
from ris_jax import config as config_lib  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')

# name → loss overrides on top of the GDFQ baseline (CE + BNS, one-hot labels)
ROBUST = dict(robust_weight=1.0)
VARIANTS = {
    'GDFQ (CE+BNS)': {},
    '+input perturbation': dict(ROBUST, input_perturbation=True, weight_perturbation=False),
    '+weight perturbation': dict(ROBUST, input_perturbation=False, weight_perturbation=True),
    '+both (robustness)': dict(ROBUST, input_perturbation=True, weight_perturbation=True),
    '+diversity (soft labels)': dict(soft_labels=True),
    'full RIS': dict(ROBUST, input_perturbation=True, weight_perturbation=True, soft_labels=True),
}


def variant_config(base, seed: int, overrides: dict, steps=None, evaluations: int = 5):
  """`base` (a demo-like config) as the GDFQ baseline plus `overrides` of config.loss; with
  `steps`, a shorter run: warm-up at most a third of it, decay at 70 %, `evaluations`
  evaluations and checkpoints."""
  c = config_lib.gdfq_baseline(base)
  with c.unlocked():
    c.method = 'ris' if overrides else 'gdfq'
    c.seed = seed
    c.train.progress = False
    for k, v in overrides.items():
      c.loss[k] = v
    if steps:
      c.train.steps = steps
      c.train.warmup_steps = c.train.calibration_steps = min(c.train.warmup_steps, steps // 3)
      c.train.decay_steps = (int(steps * 0.7),)
      c.train.eval_every = c.train.checkpoint_every = steps // evaluations
  return c


def noise_ptq(config) -> float:
  """Top-1 of the student calibrated on N(0, 1) images (the teacher's normalized space):
  `config.train.calibration_steps` batches, seeded by `config.seed`."""
  import jax
  from ris_jax import evaluation, student, teacher, train
  spec, _, t_vars = teacher.get_teacher(config)
  module, variables = student.make_student(spec, t_vars, train.quant_spec(config))
  key = jax.random.PRNGKey(config.seed)
  batches = (jax.random.normal(jax.random.fold_in(key, i),
                               (config.train.batch_size,) + spec.input_shape)
             for i in range(config.train.calibration_steps))
  variables = student.calibrate(module, variables, batches)
  return evaluation.split_accuracy(config, spec, module, variables)


def run_all(plan, out, steps):
  """plan: {bits: [seeds]}. The bit-widths that share a seed train on one generator per
  variant (one run, `config.quant.bits`): the generator never sees the student."""
  from ris_jax import loop
  rows = {}
  for seed in sorted({s for seeds in plan.values() for s in seeds}):
    widths = [bits for bits, seeds in plan.items() if seed in seeds]
    for name, overrides in VARIANTS.items():
      workdir = os.path.join(out, '+'.join(widths), name.split(' ')[0].strip('+').lower(),
                             f'seed{seed}')
      path = os.path.join(workdir, 'results.json')
      if not os.path.isfile(path):
        print(f'[{"+".join(widths)} seed {seed}] {name} → {workdir}', flush=True)
        config = variant_config(demo.get_config(widths[0]), seed, overrides, steps)
        config.quant.bits = ','.join(widths) if len(widths) > 1 else ''
        loop.train_and_evaluate(config, workdir)
      with open(path) as f:
        r = json.load(f)
      for bits in widths:
        rows.setdefault((bits, name), []).append(
            {**r['students'][bits], 'wall_s': r['wall_s']})
    for bits in widths:
      rows.setdefault((bits, 'FP teacher'), []).append({'student_top1_final': r['teacher_top1'],
                                                        'student_top1_best': r['teacher_top1']})
      ptq = noise_ptq(variant_config(demo.get_config(bits), seed, {}))
      rows.setdefault((bits, 'PTQ on Gaussian noise'), []).append(
          {'student_top1_final': ptq, 'student_top1_best': ptq})
  return rows


def write_table(rows, plan, command):
  order = ['FP teacher', 'PTQ on Gaussian noise'] + list(VARIANTS)
  lines = ['# Ablation on the offline digits teacher', '',
           'ResNet-20 layout, 16×16 digits, 360 test images (one image = 0.28 points); mean ± std '
           '(population) over seeds, then each seed\'s value in seed order; best = best '
           'evaluation during fine-tuning (every 1/5 of the run), final = last step. '
           f'Command: `{command}`. Generated from `ablation_digits.raw.json` by the script.', '']
  for bits, seeds in plan.items():
    wall = [r.get('wall_s', 0) for n in VARIANTS for r in rows[(bits, n)]]
    lines += [f'## {bits.upper()} (seeds {", ".join(map(str, seeds))})', '',
              '| method | top-1 final | top-1 best | runs |',
              '|---|---|---|---|']
    for name in order:
      rs = rows[(bits, name)]
      lines.append(f"| {name} | {tables.mean_std(r['student_top1_final'] for r in rs)} | "
                   f"{tables.mean_std(r['student_top1_best'] for r in rs)} | {len(rs)} |")
    lines += ['', f'Wall time per trained run: {np.mean(wall):.0f} s (mean; one run trains every '
              'bit-width of its seed on one generator).', '']
  tables.write('ablation_digits.md', lines)
  return order


def plot(rows, bits_list, order):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(bits_list), figsize=(6 * len(bits_list), 4), squeeze=False)
  for ax, bits in zip(axes[0], bits_list):
    means = [np.mean([r['student_top1_final'] for r in rows[(bits, n)]]) for n in order]
    stds = [np.std([r['student_top1_final'] for r in rows[(bits, n)]]) for n in order]
    ax.barh(range(len(order)), means, xerr=stds, color=['gray', 'silver'] + ['C0'] * 5 + ['C3'])
    ax.set_yticks(range(len(order)), order, fontsize=8)
    ax.invert_yaxis()
    lo = min(means) - 5
    ax.set_xlim(max(0, lo), 100)
    ax.set_xlabel('top-1 (%) on digits test, final')
    ax.set_title(bits.upper())
  fig.tight_layout()
  fig.savefig(os.path.join(RESULTS, 'ablation_digits.png'), dpi=90)


def samples_side_by_side(out, bits, seed):
  tables.sample_grids('samples_gdfq_vs_ris.png', [
      (os.path.join(out, bits, v, f'seed{seed}', 'samples.png'), f'{title}, {bits.upper()}')
      for v, title in (('gdfq', 'GDFQ (CE+BNS)'), ('full', 'full RIS'))])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--bits', default='w3a3,w2a4')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--steps', type=int, default=None, help='override the demo length')
  parser.add_argument('--plan', default=None,
                      help="per-bit-width seeds, e.g. 'w2a4=0,1,2;w3a3=0' (overrides --bits/--seeds)")
  parser.add_argument('--out', default='/tmp/ris_ablation')
  parser.add_argument('--compile-cache', default='~/.cache/ris_jax/xla',
                      help="persistent XLA compilation cache ('' = off): seeds share programs")
  parser.add_argument('--tables-only', action='store_true',
                      help='regenerate the table and plot from results/ablation_digits.raw.json')
  args = parser.parse_args()
  if args.tables_only:
    command, raw = tables.load_raw('ablation_digits')
    plan = raw['plan']
    rows = {tuple(k.split('|')): v for k, v in raw['runs'].items()}
    plot(rows, list(plan), write_table(rows, plan, command))
    return
  if args.compile_cache:
    import jax
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(args.compile_cache))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  if args.plan:
    plan = {b: [int(x) for x in s.split(',')]
            for b, s in (item.split('=') for item in args.plan.split(';'))}
  else:
    plan = {b: [int(x) for x in args.seeds.split(',')] for b in args.bits.split(',')}
  os.makedirs(RESULTS, exist_ok=True)
  rows = run_all(plan, args.out, args.steps)
  command = tables.command('ablation.py')
  tables.save_raw('ablation_digits', command,
                  {'plan': plan, 'runs': {'|'.join(k): v for k, v in rows.items()}})
  order = write_table(rows, plan, command)
  plot(rows, list(plan), order)
  first = next(iter(plan))
  samples_side_by_side(args.out, first, plan[first][0])


if __name__ == '__main__':
  main()

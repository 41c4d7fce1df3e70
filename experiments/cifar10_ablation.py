"""The paper's ablation on CIFAR-10 (akamaster ResNet-20, real test set), with the mechanism
diagnostics at every evaluation (issue 23).

    python experiments/cifar10_ablation.py --data ../shared/data --schedule cpu3000,warm500 \
        --variants gdfq,both,soft,ris --seeds 0,1 --workdir runs/cifar10_ablation --jobs 2

Each (variant, seed) is one run of `configs/cifar10_akamaster.py:resnet20,w4a4+w3a3,…` (W4A4 and
W3A3 students on one generator) in `<workdir>/<schedule>/<variant>_seed<seed>`; a finished run
is read back, an interrupted one resumes. After every finished run the raw results
(`experiments/results/cifar10_ablation.raw.json`, every run's results.json and its evaluation
curves) and the tables are rewritten, so the table grows run by run; `--commit` also commits
them. `--tables-only` rewrites the tables and figures from the raw file alone.

Tables (`--tables-only` writes those it has runs for):
  cifar10_schedule.md   the schedule candidates, validation half only (how cpuN was chosen);
  cifar10_ablation.md   every variant on the chosen schedule: report half (mean ± std and per
                        seed), all 10,000 images, the diagnostics at the end; curves and sample
                        grids in cifar10_ablation.png / samples_cifar10_ablation.png;
  cifar10_ait.md        GDFQ, GDFQ+AIT, RIS, RIS+AIT (issue 24), with the α / flip-ratio curves.
Split: validation half = test images 0–4,999 (the only images a setting was chosen on), report
half = 5,000–9,999.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tables  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW = 'cifar10_ablation'
BITS = ('w3a3', 'w4a4')
ROB = {'loss.robust_weight': 1.0, 'loss.soft_labels': False}
SOFT = {'loss.soft_labels': True}  # κ = 3 soft labels: pinned, no longer the configs' default
# key → (label, extra config argument, overrides). RIS-method runs with terms switched off:
# method=gdfq would itself switch every RIS term off (config.gdfq_baseline). Every variant
# states the RIS terms it differs from the defaults by, so a recorded command reproduces after
# the defaults change.
VARIANTS = {
    'gdfq': ('GDFQ (CE+BNS)', ',gdfq', {}),
    'input': ('+input perturbation', '', {**ROB, 'loss.weight_perturbation': False}),
    'weight': ('+weight perturbation', '', {**ROB, 'loss.input_perturbation': False}),
    'both': ('+both (robustness)', '', ROB),
    'soft': ('+soft labels (diversity)', '', {'loss.robust_weight': 0.0, **SOFT}),
    'ris': ('full RIS (κ = 3 soft labels)', '', SOFT),
    'corr': ('robustness + correlation penalty (λ_d = 1) instead of soft labels', '',
             {**ROB, 'loss.diversity_weight': 1.0}),
}
# The RIS setting the configs default to, chosen by the rule of `defaults_rule_lines`; RIS+AIT
# runs it (with its overrides, so that the pair stays exact if the defaults move again).
RIS_DEFAULT = 'both'
# AIT variant → the generator method it is paired with (same run but GDFQ's student step).
AIT_BASE = {'gdfq_ait': 'gdfq', 'ris_ait': RIS_DEFAULT}
VARIANTS.update({
    'gdfq_ait': ('GDFQ + AIT', ',gdfq,ait', {}),
    'ris_ait': (f'RIS as the configs default ({VARIANTS[RIS_DEFAULT][0]}) + AIT', ',ait',
                VARIANTS[RIS_DEFAULT][2]),
})
DIAGNOSTICS = ('diag_teacher_agreement', 'diag_feat_incons_both', 'diag_pred_incons_both',
               'diag_softmax_corr', 'diag_feat_cos_within', 'diag_feat_cos_across')
DIAG_LABELS = {'diag_teacher_agreement': 'teacher agrees with y',
               'diag_feat_incons_input': 'feature incons., input', 'diag_pred_incons_input': 'pred. incons., input',
               'diag_feat_incons_weight': 'feature incons., weight', 'diag_pred_incons_weight': 'pred. incons., weight',
               'diag_feat_incons_both': 'feature incons., both', 'diag_pred_incons_both': 'pred. incons., both',
               'diag_softmax_corr': 'softmax correlation', 'diag_feat_cos_within': 'feature cos, same class',
               'diag_feat_cos_across': 'feature cos, other classes'}
CHECKPOINT = 'resnet20-12fca82f.th'


def run_key(schedule, variant, seed):
  return f'{schedule}|{variant}|{seed}'


def workdir_of(root, schedule, variant, seed):
  return os.path.join(root, schedule.replace(',', '_'), f'{variant}_seed{seed}')


def argv_of(data, root, schedule, variant, seed):
  """The `python -m ris_jax.main` arguments of one run (paths as given: relative stay relative)."""
  _, extra, overrides = VARIANTS[variant]
  return (['-m', 'ris_jax.main', '--config',
           f"configs/cifar10_akamaster.py:resnet20,{'+'.join(reversed(BITS))}{extra},{schedule}",
           '--workdir', workdir_of(root, schedule, variant, seed), f'--config.seed={seed}',
           f'--config.teacher.checkpoint={os.path.join(data, CHECKPOINT)}',
           f"--config.data.dataset=npz:{os.path.join(data, 'cifar10_test.npz')}",
           '--config.train.progress=False']
          + [f'--config.{k}={v}' for k, v in overrides.items()])


def read_run(workdir):
  """{'results', 'curves': {metric: [[step, value], …]} of the evaluation rows and the logged
  α / flip rows, 'steps_per_s_median'} of a finished run."""
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  curves, speeds = {}, []
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      row = json.loads(line)
      if 'steps_per_s' in row:
        speeds.append(row['steps_per_s'])
      for k, v in row.items():
        if k.startswith(('student_top1', 'teacher_top1', 'diag_', 'gi_')) and isinstance(v, float):
          curves.setdefault(k, []).append([row['step'], v])
  return {'results': results, 'curves': curves,
          # the first rows include compilation
          'steps_per_s_median': float(np.median(speeds[2:] or speeds)) if speeds else None}


def thread_env(jobs):
  """Environment of a run: one XLA thread when several runs share the CPU (each is pinned to
  its core by `taskset`)."""
  env = dict(os.environ, PYTHONPATH=REPO)
  if jobs > 1:
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=false '
                        'intra_op_parallelism_threads=1').strip()
  return env


def run_all(args, todo):
  """Runs the (schedule, variant, seed) of `todo` that have no results, `args.jobs` at a time;
  after each, rewrites the raw file and tables (and commits them with --commit)."""
  pending = [t for t in todo if not os.path.isfile(
      os.path.join(workdir_of(args.workdir, *t), 'results.json'))]
  for t in todo:
    if t not in pending:
      record(args, *t)
  running = {}  # core → (t, process, start, log)
  while pending or running:
    for core in range(args.jobs):
      if core not in running and pending:
        t = pending.pop(0)
        argv = argv_of(args.data, args.workdir, *t)
        os.makedirs(workdir_of(args.workdir, *t), exist_ok=True)
        log = open(os.path.join(workdir_of(args.workdir, *t), 'run.log'), 'a')
        prefix = ['taskset', '-c', str(core)] if args.jobs > 1 else []
        print(f'[{time.strftime("%H:%M:%S")}] start {run_key(*t)} (core {core})', flush=True)
        running[core] = (t, subprocess.Popen(prefix + [sys.executable] + argv, cwd=REPO,
                                             env=thread_env(args.jobs), stdout=log,
                                             stderr=subprocess.STDOUT), time.time(), log)
    time.sleep(5)
    for core, (t, proc, start, log) in list(running.items()):
      if proc.poll() is None:
        continue
      log.close()
      del running[core]
      took = (time.time() - start) / 60
      if proc.returncode:
        print(f'[{time.strftime("%H:%M:%S")}] FAILED {run_key(*t)} ({proc.returncode}) after '
              f'{took:.0f} min: see {workdir_of(args.workdir, *t)}/run.log', flush=True)
        continue
      print(f'[{time.strftime("%H:%M:%S")}] done {run_key(*t)} in {took:.0f} min', flush=True)
      record(args, *t)


def record(args, schedule, variant, seed):
  """Adds one finished run to the raw file, rewrites the tables, commits with --commit."""
  try:
    _, rows = tables.load_raw(RAW)
  except FileNotFoundError:
    rows = {}
  row = read_run(workdir_of(args.workdir, schedule, variant, seed))
  row.update(schedule=schedule, variant=variant, seed=seed, command=shlex.join(
      ['python'] + argv_of(args.data, args.workdir, schedule, variant, seed)))
  key = run_key(schedule, variant, seed)
  if rows.get(key) == row:
    return
  rows[key] = row
  tables.save_raw(RAW, tables.command('cifar10_ablation.py'), rows)
  write_tables(rows, args.chosen)
  write_sample_grids(args.workdir, rows, args.chosen)
  if args.commit:
    paths = [os.path.join('experiments', 'results', f) for f in os.listdir(tables.RESULTS)
             if f.startswith(('cifar10_ablation', 'cifar10_schedule', 'cifar10_ait',
                              'samples_cifar10_ablation'))]
    subprocess.run(['git', 'add', *paths], cwd=REPO, check=True)
    subprocess.run(['git', 'commit', '-q', '-m', f'results: cifar10 ablation run {key} '
                    f"(w3a3 report {row['results']['students']['w3a3'].get('student_top1_final_report')})",
                    '--', *paths], cwd=REPO, check=False)


# ------------------------------------------------------------------------------- tables

def final(row, bits, subset):
  key = 'student_top1_final' + (f'_{subset}' if subset else '')
  return row['results']['students'][bits].get(key)


def last(row, metric):
  values = row['curves'].get(metric)
  return values[-1][1] if values else None


def group(rows, schedule, variant):
  return sorted((r for r in rows.values() if r['schedule'] == schedule and r['variant'] == variant),
                key=lambda r: r['seed'])


SAMPLE_VARIANTS = ('gdfq', 'both', 'ris')  # the generators samples_cifar10_ablation.png shows


def write_sample_grids(root, rows, chosen):
  """samples_cifar10_ablation.png: the last `samples.png` of the GDFQ, +both and full-RIS
  generators (those that have run) of the lowest seed that has GDFQ and full RIS on the chosen
  schedule (the runs' workdirs are needed, so --tables-only leaves it as it is)."""
  seeds = sorted({r['seed'] for r in group(rows, chosen, 'gdfq')} & {r['seed'] for r in group(rows, chosen, 'ris')})
  if not seeds:
    return
  steps = int(chosen.split(',')[0][len('cpu'):]) if chosen.startswith('cpu') else None
  panels = [(os.path.join(workdir_of(root, chosen, v, seeds[0]), 'samples.png'),
             f'{VARIANTS[v][0]}, seed {seeds[0]}' + (f', after {steps} iterations' if steps else ''))
            for v in SAMPLE_VARIANTS if any(r['seed'] == seeds[0] for r in group(rows, chosen, v))]
  tables.sample_grids('samples_cifar10_ablation.png', panels)


def write_tables(rows, chosen):
  schedules = sorted({r['schedule'] for r in rows.values()})
  if len(schedules) > 1 or chosen not in schedules:
    write_schedule_table(rows, schedules)
  if chosen in schedules:
    write_ablation_table(rows, chosen)
    if any(r['variant'] in AIT_BASE for r in rows.values()):
      write_ait_table(rows, chosen)


def _fmt(v, digits=2):
  return '–' if v is None else f'{v:.{digits}f}'


def write_schedule_table(rows, schedules):
  lines = ['# CIFAR-10: choosing the CPU schedule on the validation half', '',
           'Validation half only (test images 0–4,999; the report half was not looked at to choose). '
           'ResNet-20 (akamaster, 91.73 %), W3A3 and W4A4 students on one generator per run, batch 64. '
           f'Raw runs: `{RAW}.raw.json`; each run\'s command is in it.', '',
           '| schedule | method | seed | W3A3 val final | W3A3 val best | W4A4 val final | W4A4 val best '
           '| teacher agreement at each evaluation |', '|---|---|---|---|---|---|---|---|']
  for s in schedules:
    for v in VARIANTS:
      for r in group(rows, s, v):
        agreement = ' '.join(f'{x:.2f}' for _, x in r['curves'].get('diag_teacher_agreement', []))
        best = lambda b: r['results']['students'][b].get('student_top1_best_val')
        lines.append(f"| `{s}` | {VARIANTS[v][0]} | {r['seed']} | {_fmt(final(r, 'w3a3', 'val'))} | "
                     f"{_fmt(best('w3a3'))} | {_fmt(final(r, 'w4a4', 'val'))} | {_fmt(best('w4a4'))} "
                     f'| {agreement} |')
  means = {s: np.mean([final(r, b, 'val') for v in ('gdfq', 'ris') for r in group(rows, s, v)
                       if r['seed'] == 0 for b in BITS]) for s in schedules}
  lines += ['', 'Rule: the schedule with the highest mean of the validation-half final top-1 over '
            'GDFQ and full RIS, W3A3 and W4A4, seed 0: ' + ', '.join(
                f'`{s}` {m:.2f}' for s, m in sorted(means.items(), key=lambda x: -x[1])) +
            '. The generator does not depend on W (its loss never involves the student: the '
            'teacher-agreement curves of a method are the same for every W), so W acts on the '
            'student alone: how long it waits, frozen, for class-discriminative images.']
  tables.write('cifar10_schedule.md', lines)


def runner_command(schedule, variants, runs):
  """The command of this script that makes `runs` (relative paths, two jobs)."""
  seeds = ','.join(str(x) for x in sorted({r['seed'] for r in runs}))
  return shlex.join(['python', 'experiments/cifar10_ablation.py', '--data', '../shared/data',
                     '--schedule', schedule, '--variants', ','.join(variants), '--seeds', seeds,
                     '--workdir', 'runs/cifar10_ablation', '--jobs', '2'])


# The settings among which the configs' RIS defaults are chosen, in the order of closeness to
# the paper's text (the first wins a tie), and the rule's seeds and tie margin (points).
DEFAULT_CANDIDATES = ('ris', 'corr', 'both')
DEFAULT_SEEDS = (0, 1)
DEFAULT_TIE = 0.3


def defaults_rule_lines(rows, schedule):
  """The section that applies the rule choosing the RIS defaults (written before seed 1 and the
  `corr` rows were seen): the candidate with the highest mean validation-half final top-1 over
  W3A3, W4A4 and the seeds; within DEFAULT_TIE of the best, the one closest to the paper."""
  lines = ['## Choosing the configs\' RIS defaults (validation half only)', '',
           'Rule, written before seed 1 and the correlation-penalty rows were seen: of '
           + ', '.join(VARIANTS[v][0] for v in DEFAULT_CANDIDATES) + ' (in the order of closeness '
           'to the paper\'s text), the setting with the highest mean validation-half final top-1 '
           f"over W3A3, W4A4 and seeds {', '.join(map(str, DEFAULT_SEEDS))}; within {DEFAULT_TIE} "
           'points of the best, the one closest to the paper.', '',
           '| candidate | runs | mean validation final (W3A3, W4A4, seeds) |', '|---|---|---|']
  means, missing = {}, []
  for v in DEFAULT_CANDIDATES:
    rs = [r for r in group(rows, schedule, v) if r['seed'] in DEFAULT_SEEDS]
    values = [final(r, b, 'val') for r in rs for b in BITS]
    if len(rs) == len(DEFAULT_SEEDS):
      means[v] = float(np.mean(values))
    else:
      missing += [f'{v} seed {s}' for s in DEFAULT_SEEDS if s not in {r['seed'] for r in rs}]
    lines.append(f"| {VARIANTS[v][0]} | {len(rs)} | {_fmt(np.mean(values)) if values else '–'} |")
  if missing:
    lines += ['', f"Not applied yet: waiting for {', '.join(missing)}.", '']
  else:
    best = max(means.values())
    chosen = next(v for v in DEFAULT_CANDIDATES if means[v] >= best - DEFAULT_TIE)
    lines += ['', f'The rule chooses: **{VARIANTS[chosen][0]}** ({means[chosen]:.2f}).', '']
  return lines


def write_ablation_table(rows, schedule):
  variants = [v for v in VARIANTS if v not in AIT_BASE and group(rows, schedule, v)]
  runs = [r for v in variants for r in group(rows, schedule, v)]
  if not runs:
    return
  steps = runs[0]['results']['steps']
  teacher = runs[0]['results']
  runs_command = runner_command(schedule, variants, runs)
  lines = ['# CIFAR-10 ablation of the RIS terms (akamaster ResNet-20, real test set)', '',
           f'Made by `{runs_command}` (resumable; each run\'s own command is listed at the end), '
           f"regenerated from `{RAW}.raw.json` by `{tables.command('cifar10_ablation.py', ['--tables-only'])}`. "
           'Curves: `cifar10_ablation.png`; the GDFQ, +both and full-RIS generators\' images at the end: '
           '`samples_cifar10_ablation.png`.', '',
           '![curves](cifar10_ablation.png)', '', '![samples](samples_cifar10_ablation.png)', '',
           f'- Schedule `{schedule}` (configs/cifar10_akamaster.py): batch 64, {steps} iterations; '
           'chosen on the validation half (cifar10_schedule.md).',
           f"- Teacher {teacher['teacher_top1']:.2f} % (validation half "
           f"{_fmt(teacher.get('teacher_top1_val'))}, report half {_fmt(teacher.get('teacher_top1_report'))}).",
           '- Report half = test images 5,000–9,999 (one image = 0.02 points); all = the 10,000. '
           'mean ± std (population) over seeds, then each seed\'s value. Δ = paired difference to '
           'GDFQ of the same seed.', '']
  for bits in BITS:
    gdfq = {r['seed']: final(r, bits, 'report') for r in group(rows, schedule, 'gdfq')}
    lines += [f'## {bits.upper()}', '',
              '| variant | seeds | report final | Δ vs GDFQ (report) | report best | all final | '
              'calibrated (report) | validation final |', '|---|---|---|---|---|---|---|---|']
    for v in variants:
      rs = group(rows, schedule, v)
      delta = [final(r, bits, 'report') - gdfq[r['seed']] for r in rs if r['seed'] in gdfq]
      lines.append(
          f"| {VARIANTS[v][0]} | {len(rs)} | {tables.mean_std(final(r, bits, 'report') for r in rs)} | "
          f"{tables.mean_std(delta) if v != 'gdfq' else '–'} | "
          f"{tables.mean_std(r['results']['students'][bits].get('student_top1_best_report') for r in rs)} | "
          f"{tables.mean_std(final(r, bits, '') for r in rs)} | "
          f"{tables.mean_std(r['results']['students'][bits].get('student_top1_initial_report') for r in rs)} | "
          f"{tables.mean_std(final(r, bits, 'val') for r in rs)} |")
    lines.append('')
  lines += defaults_rule_lines(rows, schedule)
  lines += ['## Diagnostics of the generator at the end (probe batch of 100, mean over seeds)', '',
            '| variant | ' + ' | '.join(DIAG_LABELS[d] for d in DIAGNOSTICS) + ' |',
            '|---|' + '---|' * len(DIAGNOSTICS)]
  for v in variants:
    rs = group(rows, schedule, v)
    lines.append(f'| {VARIANTS[v][0]} | ' + ' | '.join(
        _fmt(np.mean([last(r, d) for r in rs]), 3) for d in DIAGNOSTICS) + ' |')
  lines += wall_time_lines(runs)
  lines += tables.reading_lines('cifar10_ablation_reading.md')
  lines += ['', '## Runs', ''] + [f"- `{r['command']}`" for r in runs]
  tables.write('cifar10_ablation.md', lines)
  plot_curves(rows, schedule, variants, 'cifar10_ablation.png')


def wall_time_lines(runs):
  """The '## Wall time' section: per run, wall minutes and iterations per second."""
  lines = ['', '## Wall time', '',
           'On the 2-core CPU, two runs at a time (one per core) and at times the test suite '
           'beside them: upper bounds. Overall = iterations / wall time, evaluations and '
           'compilation included; training = median of the logged rates.', '',
           '| variant | seed | wall (min) | iterations/s overall | iterations/s training (median) |',
           '|---|---|---|---|---|']
  for r in runs:
    wall = r['results']['wall_s']
    lines.append(f"| {VARIANTS[r['variant']][0]} | {r['seed']} | {wall / 60:.1f} | "
                 f"{r['results']['steps'] / wall:.2f} | {_fmt(r['steps_per_s_median'])} |")
  return lines


def mean_curve(rs, metric):
  """(steps, mean over runs) of a curve the runs share."""
  curves = [dict(map(tuple, r['curves'].get(metric, []))) for r in rs]
  steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
  return steps, [np.mean([c[s] for c in curves]) for s in steps]


def plot_curves(rows, schedule, variants, name, extra=()):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  panels = [(f'student_top1_report/{b}', f'{b.upper()} top-1, report half (%)') for b in BITS]
  panels += [(d, DIAG_LABELS[d]) for d in DIAGNOSTICS] + list(extra)
  cols = 4
  fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(4.2 * cols, 3.2 * -(-len(panels) // cols)),
                           squeeze=False)
  for ax, (metric, title) in zip(axes.flat, panels):
    for i, v in enumerate(variants):
      steps, values = mean_curve(group(rows, schedule, v), metric)
      if steps:
        ax.plot(steps, values, marker='.', color=f'C{i}', label=VARIANTS[v][0][:40])
    ax.set_title(title, fontsize=9)
    ax.set_xlabel('iteration', fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in axes.flat[len(panels):]:
    ax.axis('off')
  axes.flat[0].legend(fontsize=6)
  fig.suptitle(f'CIFAR-10 ResNet-20, schedule {schedule}: mean over seeds', fontsize=10)
  fig.tight_layout()
  fig.savefig(os.path.join(tables.RESULTS, name), dpi=80)
  plt.close(fig)


def write_ait_table(rows, schedule):
  """cifar10_ait.md: GDFQ and the configs' RIS with and without AIT's student step; Δ = paired
  difference (same seed) to the same generator method without AIT (AIT_BASE)."""
  variants = [v for v in ('gdfq', 'gdfq_ait', AIT_BASE['ris_ait'], 'ris_ait') if group(rows, schedule, v)]
  runs = [r for v in variants for r in group(rows, schedule, v)]
  runs_command = runner_command(schedule, variants, runs)
  lines = ['# CIFAR-10: GDFQ and RIS with and without the AIT student step', '',
           f'Made by `{runs_command}` (the same runner and runs as `cifar10_ablation.md`; each '
           f"run's own command is listed at the end), regenerated from `{RAW}.raw.json` by "
           f"`{tables.command('cifar10_ablation.py', ['--tables-only'])}`. Schedule `{schedule}`, "
           'akamaster ResNet-20 (91.73 %), W3A3 and W4A4 students on one generator per run; report '
           'half = test images 5,000–9,999, all = the 10,000. mean ± std (population) over seeds, '
           'then each seed\'s value. Δ AIT = paired difference (same seed) to the same generator '
           'method without AIT. Curves, with AIT\'s mean α and realised flip ratio: `cifar10_ait.png`.',
           '', '![curves](cifar10_ait.png)', '']
  for bits in BITS:
    lines += [f'## {bits.upper()}', '',
              '| method | seeds | report final | Δ AIT (report) | report best | all final | all best |',
              '|---|---|---|---|---|---|---|']
    for v in variants:
      rs = group(rows, schedule, v)
      base = {r['seed']: final(r, bits, 'report') for r in group(rows, schedule, AIT_BASE[v])} \
          if v in AIT_BASE else {}
      delta = [final(r, bits, 'report') - base[r['seed']] for r in rs if r['seed'] in base]
      best = lambda r, subset: r['results']['students'][bits].get(
          'student_top1_best' + (f'_{subset}' if subset else ''))
      lines.append(f"| {VARIANTS[v][0]} | {len(rs)} | {tables.mean_std(final(r, bits, 'report') for r in rs)} | "
                   f"{tables.mean_std(delta) if delta else '–'} | "
                   f"{tables.mean_std(best(r, 'report') for r in rs)} | "
                   f"{tables.mean_std(final(r, bits, '') for r in rs)} | "
                   f"{tables.mean_std(best(r, '') for r in rs)} |")
    lines.append('')
  lines += wall_time_lines(runs)
  lines += tables.reading_lines('cifar10_ait_reading.md')
  lines += ['', '## Runs', ''] + [f"- `{r['command']}`" for r in runs]
  tables.write('cifar10_ait.md', lines)
  extra = [(f'gi_alpha_mean/{b}', f'AIT: mean α, {b.upper()}') for b in BITS]
  extra += [(f'gi_flip_ratio/{b}', f'AIT: flip ratio, {b.upper()}') for b in BITS]
  plot_curves(rows, schedule, variants, 'cifar10_ait.png', extra)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data', default='../shared/data')
  parser.add_argument('--workdir', default='runs/cifar10_ablation')
  parser.add_argument('--schedule', action='append',
                      help='the cifar10_akamaster schedule argument of the runs (repeat for '
                      'several; default: --chosen)')
  parser.add_argument('--chosen', default='cpu3000,warm500',
                      help='the schedule the ablation table reports (chosen on the validation half)')
  parser.add_argument('--variants', default='gdfq,both,soft,ris',
                      help=f"comma-separated, of {', '.join(VARIANTS)}")
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--jobs', type=int, default=1,
                      help='runs at a time, each on one core (taskset) with one XLA thread')
  parser.add_argument('--commit', action='store_true', help='git-commit the results after each run')
  parser.add_argument('--tables-only', action='store_true')
  parser.add_argument('--results', default=tables.RESULTS,
                      help='where the raw file, tables and figures go (default experiments/results)')
  args = parser.parse_args()
  tables.RESULTS = os.path.abspath(args.results)
  if args.tables_only:
    write_tables(tables.load_raw(RAW)[1], args.chosen)
    return
  unknown = set(args.variants.split(',')) - set(VARIANTS)
  if unknown:
    parser.error(f"unknown variants {sorted(unknown)}; known: {', '.join(VARIANTS)}")
  todo = [(schedule, v, int(s)) for schedule in (args.schedule or [args.chosen])
          for s in args.seeds.split(',') for v in args.variants.split(',')]
  run_all(args, todo)


if __name__ == '__main__':
  main()

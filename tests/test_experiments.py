"""The experiment scripts' result tables (experiments/tables.py and the writers): the recorded
command reruns what ran, every mean ± std shows its per-seed values, and a regenerated table
holds only what this generation computed. Synthetic rows, a temporary results directory."""
import os
import re
import shlex
import sys

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, 'experiments'))

import ablation  # noqa: E402
import ablation_fashion  # noqa: E402
import compression  # noqa: E402
import tables  # noqa: E402


@pytest.fixture
def results_dir(tmp_path, monkeypatch):
  monkeypatch.setattr(tables, 'RESULTS', str(tmp_path))
  return tmp_path


def test_command_is_shell_quoted():
  argv = ['--plan', 'w3a3=0,1,2;w4a4=0,1,2', '--out', '/tmp/a b']
  cmd = tables.command('ablation.py', argv)
  assert cmd == "python experiments/ablation.py --plan 'w3a3=0,1,2;w4a4=0,1,2' --out '/tmp/a b'"
  assert shlex.split(cmd)[2:] == argv  # pasted into a shell: the same arguments


def test_mean_std_carries_every_seed():
  assert tables.mean_std([94.0, 95.5, 96.25]) == '95.25 ± 0.94 (94.00, 95.50, 96.25)'
  assert tables.mean_std([None, 80.0]) == '80.00'
  assert tables.mean_std([None, None]) == '–'


def _fashion_rows(shift):
  run = lambda v: {'student_top1_final': v + shift, 'student_top1_best': v + shift + 1,
                   'student_top1_initial': v - 10, 'wall_s': 100.0, 'teacher_top1': 89.0}
  names = (['FP teacher', ablation_fashion.NOISE_PTQ, ablation_fashion.REAL_PTQ]
           + list(ablation.VARIANTS) + [ablation_fashion.UPPER])
  return {n: [run(70.0 + i), run(71.0 + i), run(72.5 + i)] for i, n in enumerate(names)}


def test_fashion_table_regenerates_from_raw_results_only(results_dir):
  command = tables.command('ablation_fashion.py', ['--bits', 'w4a4', '--seeds', '0,1,2'])
  tables.save_raw('ablation_fashion', command, {'bits': 'w4a4', 'seeds': [0, 1, 2], 'steps': 300,
                                                'runs': _fashion_rows(0.0)})
  ablation_fashion.write_table(_fashion_rows(0.0), 'w4a4', [0, 1, 2], 300, command)
  path = results_dir / 'ablation_fashion.md'
  path.write_text(path.read_text() + '\n## Reading\n\n- full RIS 12.34 (written by hand)\n')
  # A rerun with other numbers: nothing of the first generation or of the hand-written text.
  command2, raw = tables.load_raw('ablation_fashion')
  assert command2 == command
  ablation_fashion.write_table(_fashion_rows(5.0), 'w4a4', [0, 1, 2], 300, command)
  text = path.read_text()
  assert '12.34' not in text and '## Reading' not in text
  assert f'Command: `{command}`' in text
  row = next(line for line in text.splitlines() if line.startswith('| full RIS |'))
  i = list(ablation.VARIANTS).index('full RIS') + 3
  v = 70.0 + i + 5.0
  assert f'({v:.2f}, {v + 1:.2f}, {v + 2.5:.2f})' in row  # final, per seed
  assert len(re.findall(r'± [\d.]+ \(', row)) == 4  # final, best, before fine-tuning, wall


def test_ptq_and_dfkd_tables_show_per_seed_values(results_dir):
  seeds, bits = [0, 1, 2], ['w4a4', 'w3a3']
  names = ['Gaussian noise'] + list(compression.METHODS.values()) + ['real digits (reference)']
  run = lambda v: {'top1_calibrated': v, 'top1_clipped': v + 1, 'mse_before': 2.0, 'mse_after': 1.0,
                   'teacher_top1': 99.72, 'calibration_images': 3200, 'wall_s': 10.0}
  rows = {(b, n): [run(90.0), run(91.0), run(93.0)] for b in bits for n in names}
  compression.write_ptq(rows, bits, seeds, 'python experiments/compression.py')
  text = (results_dir / 'ptq_digits.md').read_text()
  assert text.count('91.33 ± 1.25 (90.00, 91.00, 93.00)') == 2 * len(names)
  dfkd = {m: [{'student_top1_final': 70.0 + s, 'student_top1_best': 75.0, 'teacher_top1': 99.72,
               'teacher_acc_on_synthetic': 50.0, 'wall_s': 300.0, 'steps': 800, 'batch_size': 64}
              for s in seeds] for m in compression.METHODS}
  real = [{'test_top1': 99.0 + 0.1 * s, 'wall_s': 50.0} for s in seeds]
  compression.write_dfkd(dfkd, real, seeds, 'python experiments/compression.py')
  text = (results_dir / 'dfkd_digits.md').read_text()
  assert '71.00 ± 0.82 (70.00, 71.00, 72.00)' in text and '(99.00, 99.10, 99.20)' in text


def test_upsample_seed_check_pairs_the_settings_by_seed(results_dir):
  import upsample_seed_check as check
  seeds = [0, 1, 2]
  runs = {f'full RIS|{s}|{seed}': {'teacher_top1': 99.17, 'student_top1_initial': 80.0,
                                   'student_top1_final': 90.0 + seed + (0.5 if s == 'parity' else 0),
                                   'student_top1_best': 95.0, 'wall_s': 100.0}
          for s in check.SETTINGS for seed in seeds}
  check.write_table(runs, ['full RIS'], seeds, 'w3a3', 300, 'python experiments/upsample_seed_check.py')
  text = (results_dir / 'upsample_seed_check.md').read_text()
  final = text[text.index('## student_top1_final'):text.index('## student_top1_best')]
  row = next(line for line in final.splitlines() if line.startswith('| full RIS |'))
  assert row == ('| full RIS | 91.00 ± 0.82 (90.00, 91.00, 92.00) | 91.50 ± 0.82 (90.50, 91.50, '
                 '92.50) | 0.50 ± 0.00 (0.50, 0.50, 0.50) |')
  assert 'FP teacher 99.17 %' in text


def _cifar10_row(variant, seed, val, report):
  import cifar10_ablation as c10
  students = {b: {'student_top1_final_val': val + i, 'student_top1_final_report': report + i,
                  'student_top1_final': report + i, 'student_top1_best_report': report + i + 1,
                  'student_top1_best': report + i + 1} for i, b in enumerate(c10.BITS)}
  return {'schedule': 'cpu3000,warm500', 'variant': variant, 'seed': seed, 'command': f'run {variant}',
          'results': {'students': students, 'wall_s': 600.0, 'steps': 3000},
          'curves': {}, 'steps_per_s_median': 5.0}


def test_cifar10_defaults_rule_waits_for_every_run_then_prefers_the_paper_within_the_tie():
  import cifar10_ablation as c10
  # mean validation final over (W3A3, W4A4 = +1) and seeds: ris 70.5, corr 80.5, both 80.7
  vals = {'ris': (70.0, 70.0), 'corr': (80.0, 80.0), 'both': (80.0, 80.4)}
  rows = {c10.run_key('cpu3000,warm500', v, s): _cifar10_row(v, s, vals[v][s], 0.0)
          for v in vals for s in c10.DEFAULT_SEEDS}
  text = '\n'.join(c10.defaults_rule_lines(rows, 'cpu3000,warm500'))
  assert f"**{c10.VARIANTS['corr'][0]}** (80.50)" in text  # 0.2 < DEFAULT_TIE behind +both
  rows[c10.run_key('cpu3000,warm500', 'both', 1)] = _cifar10_row('both', 1, 81.0, 0.0)  # 80.0 + 81.0 → 81.0
  text = '\n'.join(c10.defaults_rule_lines(rows, 'cpu3000,warm500'))
  assert f"**{c10.VARIANTS['both'][0]}** (81.00)" in text
  del rows[c10.run_key('cpu3000,warm500', 'corr', 1)]
  text = '\n'.join(c10.defaults_rule_lines(rows, 'cpu3000,warm500'))
  assert 'Not applied yet: waiting for corr seed 1.' in text and 'The rule chooses' not in text


def test_cifar10_ait_delta_is_paired_with_its_own_generator_method(results_dir):
  import cifar10_ablation as c10
  report = {('gdfq', 0): 60.0, ('gdfq', 1): 62.0, ('gdfq_ait', 0): 61.0, ('gdfq_ait', 1): 65.0,
            (c10.RIS_DEFAULT, 0): 70.0, (c10.RIS_DEFAULT, 1): 70.0, ('ris', 0): 10.0,
            ('ris_ait', 0): 72.0, ('ris_ait', 1): 71.0}
  rows = {c10.run_key('cpu3000,warm500', v, s): _cifar10_row(v, s, 0.0, x) for (v, s), x in report.items()}
  c10.write_ait_table(rows, 'cpu3000,warm500')
  text = (results_dir / 'cifar10_ait.md').read_text()
  w3a3 = text[text.index('## W3A3'):text.index('## W4A4')]
  row = lambda label: next(line for line in w3a3.splitlines() if line.startswith(f'| {label} |'))
  assert '| 2.00 ± 1.00 (1.00, 3.00) |' in row('GDFQ + AIT')  # 61 − 60, 65 − 62
  assert '| 1.50 ± 0.50 (2.00, 1.00) |' in row(c10.VARIANTS['ris_ait'][0])  # against RIS_DEFAULT, not 'ris'
  assert c10.VARIANTS['ris'][0] not in text
  assert c10.VARIANTS['ris_ait'][2] == c10.VARIANTS[c10.RIS_DEFAULT][2]  # same RIS terms, so the pair is exact


def test_cifar10_sample_grid_needs_every_run_workdir_and_never_crashes_without_them(results_dir, tmp_path):
  import cifar10_ablation as c10
  import matplotlib.pyplot as plt
  import numpy as np
  rows = {c10.run_key('cpu3000,warm500', v, 0): _cifar10_row(v, 0, 0.0, 0.0) for v in c10.SAMPLE_VARIANTS}
  root = tmp_path / 'runs'
  grid = results_dir / 'samples_cifar10_ablation.png'
  for v in c10.SAMPLE_VARIANTS[:-1]:  # a machine that lacks one run's workdir: no grid, no error
    path = c10.workdir_of(str(root), 'cpu3000,warm500', v, 0)
    os.makedirs(path)
    plt.imsave(os.path.join(path, 'samples.png'), np.zeros((8, 8, 3)))
  c10.write_sample_grids(str(root), rows, 'cpu3000,warm500')
  assert not grid.exists()
  path = c10.workdir_of(str(root), 'cpu3000,warm500', c10.SAMPLE_VARIANTS[-1], 0)
  os.makedirs(path)
  plt.imsave(os.path.join(path, 'samples.png'), np.ones((8, 8, 3)))
  c10.write_sample_grids(str(root), rows, 'cpu3000,warm500')
  assert plt.imread(str(grid)).ndim == 3

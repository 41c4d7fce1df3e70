"""The RIS training program on the digits teacher at test size: 1 vs 8 devices, resumption
after an interruption, one compilation per phase, and `python -m ris_jax.main` end to end.

Every run uses `conftest.tiny_config` (or its command-line equivalent), so the two compiled
step programs per device count are compiled once per session (persistent cache)."""
import contextlib
import json
import os
import time
from unittest import mock

import ml_collections
import numpy as np
import pytest

from conftest import (REPO, TINY_RUN_STEPS, run_python, subprocess_env, tiny_config,
                      tiny_run_config)
from ris_jax import loop, train

EIGHT_DEVICES = pytest.mark.full(reason='a subprocess on 8 simulated CPU devices compiles every '
                                 'program of the tiny run again (~45 s)')

# ----------------------------------------------------------------------------- 1 vs 8 devices

STEPS = 3


@pytest.fixture(scope='module')
def device_runs(digits_teacher, compile_cache, tmp_path_factory):
  """tests/multidevice_steps.py: 3 steps on 1 device (the first a warm-up step: student
  frozen, ranges calibrating; global batch 16), then on 8 simulated CPU devices one step from
  each state of that trajectory."""
  out = tmp_path_factory.mktemp('devices')
  config = tiny_config(digits_teacher)
  config.train.steps = STEPS
  (out / 'config.json').write_text(config.to_json())
  script = os.path.join(REPO, 'tests', 'multidevice_steps.py')
  for n, ref in ((1, ''), (8, str(out / '1.npz'))):
    run_python([script, str(out / 'config.json'), str(out / f'{n}.npz'), ref],
               subprocess_env(compile_cache, n))
  return {n: dict(np.load(out / f'{n}.npz')) for n in (1, 8)}


@EIGHT_DEVICES
def test_eight_devices_really_used(device_runs):
  one, eight = device_runs[1], device_runs[8]
  assert (int(one['devices']), int(one['mesh_size']), int(one['state_devices'])) == (1, 1, 1)
  assert (int(eight['devices']), int(eight['mesh_size']), int(eight['state_devices'])) == (8, 8, 8)
  # The 8-device programs are partitioned: cross-device reductions (BN statistics of the
  # global batch, gradients); the 1-device ones have none.
  assert int(one['all_reduces']) == 0 and int(eight['all_reduces']) > 0


@EIGHT_DEVICES
def test_teacher_never_changes(device_runs):
  for run in device_runs.values():
    assert float(run['teacher_max_change']) == 0.0 and not bool(run['teacher_deleted'])


# Generator biases directly before a batch-statistics BN: their gradient is zero analytically
# (the BN removes any per-channel shift), so it is float noise that Adam normalizes to ±lr
# steps, different on 1 and 8 devices and without any effect on the images.
PRE_BN_BIASES = ("['conv1']['bias']", "['conv2']['bias']")
B1, LR = 0.5, 1e-3  # the generator's Adam β1 and learning rate (demo config)


def _keys(run, prefix, skip=PRE_BN_BIASES):
  return [k for k in run if k.startswith(prefix) and not k.endswith(skip)
          and run[k].dtype.kind == 'f']


def _norm(arrays):
  return float(np.sqrt(sum(np.sum(np.square(np.asarray(a, np.float64))) for a in arrays)))


@EIGHT_DEVICES
def test_one_vs_eight_devices(device_runs):
  """Each step on 8 devices starts from the 1-device state and must end where the 1-device
  step ends. Whole trajectories are not compared: float32 reassociation of the all-reduced
  sums (BN statistics, gradients) meets the kinks of ReLU/|·| and the rounding of the 3-bit
  student, and Adam's sign-like first step, which amplify from step to step.

  Seen (two teachers, 2 CPU cores): generator losses ≤ 1.5e-6 relative; student losses
  ≤ 1.4e-5, once 4e-3 (an activation rounded to the other 3-bit level, which also moved that
  student update by 10%); generator gradient 1e-6..7e-3 relative (the 7e-3 batch shows the
  same change on 1 device when its parameters are scaled by 1 + 1e-7); generator parameters
  after Adam: ≤ 0.2% of the elements differ by more than 1e-5. A data-parallel bug is far
  outside these bounds: gradients summed instead of averaged (×8), per-shard BN statistics
  (the generator losses differ), or a shard's gradient alone (differences of order 1)."""
  one, eight = device_runs[1], device_runs[8]
  for k in [k for k in one if k.startswith('state0')]:
    np.testing.assert_array_equal(eight[k], one[k], err_msg=k)
  metrics = [k for k in one if k.startswith('metric/')]
  assert {'metric/g_rob', 'metric/g_bns', 'metric/s_kd', 'metric/s_ce'} <= set(metrics)
  seen = {}

  def track(name, value):
    seen[name] = max(seen.get(name, 0.0), float(value))

  for k in metrics:
    assert one[k].shape == (STEPS,)
    if k.endswith('acc_on_synthetic'):  # argmax: a near-tie may flip one of 16 images
      assert np.abs(eight[k] - one[k]).max() <= 1 / 16 + 1e-6, k
      continue
    student = k.startswith('metric/s_')
    np.testing.assert_allclose(eight[k], one[k], rtol=2e-2 if student else 1e-4, atol=1e-6,
                               err_msg=k)
    nonzero = one[k] != 0  # a term switched off logs 0 on both sides (its atol is checked above)
    if nonzero.any():
      track('student losses' if student else 'generator losses',
            np.max(np.abs(eight[k] - one[k])[nonzero] / np.abs(one[k][nonzero])))

  for i in range(1, STEPS + 1):
    cur, prev = f'state{i}', f'state{i - 1}'
    before = lambda k: one[prev + k[len(cur):]]
    for k in _keys(one, (f'{cur}.quant_ranges', f'{cur}.step', f'{cur}.rng'), skip=()):
      np.testing.assert_allclose(eight[k], one[k], rtol=1e-4, atol=1e-5, err_msg=k)
    student = _keys(one, f'{cur}.student', skip=())
    update = _norm(one[k] - before(k) for k in student)
    diff = _norm(eight[k] - one[k] for k in student)
    if i == 1:  # warm-up: the student does not move
      assert update == 0.0 and diff == 0.0
    else:
      assert update > 0 and diff < 0.3 * update, (i, diff / update)
      track('student update', diff / update)
    # Adam's first moment: μ_i − β1·μ_{i−1} = (1 − β1)·g_i, the generator gradient.
    mu = [k for k in _keys(one, f'{cur}.generator_opt') if '.mu' in k]  # inside inject_hyperparams
    assert mu, sorted(k for k in one if k.startswith(f'{cur}.generator_opt'))[:5]
    grad = _norm(one[k] - B1 * before(k) for k in mu)
    diff = _norm(eight[k] - one[k] for k in mu)
    assert diff < 3e-2 * grad, (i, diff / grad)
    track('generator gradient', diff / grad)
    for k in _keys(one, f'{cur}.generator_opt[0].mu', skip=()):
      if k.endswith(PRE_BN_BIASES):  # a gradient of float noise only
        assert np.abs(one[k]).max() < 1e-5 and np.abs(eight[k]).max() < 1e-5, k
    params = _keys(one, f"{cur}.generator['params']")
    assert _norm(one[k] - before(k) for k in params) > 0
    diff = np.concatenate([np.abs(eight[k] - one[k]).ravel() for k in params])
    assert diff.max() <= 2.01 * LR and np.mean(diff > 1e-5) < 1e-2, (i, np.mean(diff > 1e-5))
    track('generator parameters differing by > 1e-5', np.mean(diff > 1e-5))
  print('\n1 vs 8 devices, max relative difference per step:',
        ', '.join(f'{k} {v:.1e}' for k, v in seen.items()))


# ----------------------------------------------------------------------------- the loop


class Interrupted(Exception):
  pass


@contextlib.contextmanager
def watched_steps(calls, stop_after=None):
  """Patches `train.jit_ris_step` for `loop.train_and_evaluate`: records, per call of the
  jitted step, its phase and the number of programs its jit cache holds afterwards; raises
  `Interrupted` instead of making call number `stop_after + 1` (a run killed there)."""
  real = train.jit_ris_step

  def jit_ris_step(*args, **kwargs):
    jitted = real(*args, **kwargs)

    def step(*a, **kw):
      if stop_after is not None and len(calls) == stop_after:
        raise Interrupted
      out = jitted(*a, **kw)
      calls.append((kw['update_student'], kw['calibrate'], jitted._cache_size()))
      return out
    return step

  with mock.patch.object(train, 'jit_ris_step', jit_ris_step):
    yield


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  for row in rows:
    row.pop('steps_per_s', None)  # wall-clock
  return rows


def _results(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  results.pop('wall_s')
  return results


@pytest.mark.full(reason='a run killed after a checkpoint and rerun (~40 s); the quick tier resumes runs stopped by a deadline (test_deadline_and_iteration_budget_stop_with_a_checkpoint)')
def test_resume_after_interruption_equals_uninterrupted_run(digits_teacher, tiny_run, tmp_path):
  """Run A: `tiny_run`, 4 steps uninterrupted. Run B: the same config, killed (an exception
  from the step function) right after the checkpoint of step 2, then rerun unchanged: it must
  resume from step 2 and end exactly where A ends."""
  config = tiny_run_config(digits_teacher)
  a, b = str(tiny_run[0]), str(tmp_path / 'b')

  calls = []
  with watched_steps(calls, stop_after=2), pytest.raises(Interrupted):
    loop.train_and_evaluate(config, b)
  assert len(calls) == 2
  assert sorted(os.listdir(os.path.join(b, 'checkpoints'))) == ['2']
  assert not os.path.exists(os.path.join(b, 'results.json'))

  calls = []
  with watched_steps(calls):
    loop.train_and_evaluate(config, b)
  assert [c[:2] for c in calls] == [(True, False)] * 2  # steps 3 and 4 only

  rows_a, rows_b = _rows(a), _rows(b)
  assert [r['step'] for r in rows_a] == [r['step'] for r in rows_b]
  final = [r for r in rows_a if r['step'] == 4]
  assert any('g_loss' in r for r in final) and any('student_top1' in r for r in final)
  for ra, rb in zip(rows_a, rows_b):
    assert ra.keys() == rb.keys(), (ra, rb)
    for k in ra:
      np.testing.assert_allclose(rb[k], ra[k], rtol=1e-6, err_msg=f'step {ra["step"]} {k}')
  assert _results(b) == _results(a)


def test_deadline_and_iteration_budget_stop_with_a_checkpoint(digits_teacher, tiny_run, tmp_path):
  """Chunked training (experiments/accelerator_run.py): a passed deadline stops after the first
  iteration, an iteration budget after that many, each with a checkpoint and the students'
  top-1; the rerun without either ends exactly where the uninterrupted `tiny_run` ended."""
  config = tiny_run_config(digits_teacher)
  b = str(tmp_path / 'b')
  out = loop.train_and_evaluate(config, b, deadline=time.time())
  assert out['stopped_at'] == 1 and out['steps'] == TINY_RUN_STEPS
  assert sorted(os.listdir(os.path.join(b, 'checkpoints'))) == ['1']
  assert set(out['students']) == {'w3a3'} and 0 <= out['students']['w3a3'][''] <= 100
  out = loop.train_and_evaluate(config, b, max_iterations=2)
  assert out['stopped_at'] == 3 and '3' in os.listdir(os.path.join(b, 'checkpoints'))
  assert not os.path.exists(os.path.join(b, 'results.json'))
  loop.train_and_evaluate(config, b)
  assert _results(b) == _results(str(tiny_run[0]))
  rows_a, rows_b = _rows(str(tiny_run[0])), _rows(b)
  assert [r['step'] for r in rows_a] == [r['step'] for r in rows_b]
  for ra, rb in zip(rows_a, rows_b):
    assert ra.keys() == rb.keys()
    for k in ra:
      np.testing.assert_allclose(rb[k], ra[k], rtol=1e-6, err_msg=f'step {ra["step"]} {k}')


def test_step_compiles_once_per_phase(digits_teacher, tiny_run, tmp_path):
  """Calls show what forty do: the jit cache holds one program through the warm-up and two
  through the fine-tuning (no recompilation per step, nor at the logging, evaluation and
  checkpoint steps in between). The tiny run's config and programs (persistent cache), with
  the process's memoized step cleared, so that this run's jit starts empty."""
  config = tiny_run_config(digits_teacher)
  config.train.steps = 6
  config.train.log_every = 1
  train.jit_ris_step.cache_clear()
  calls = []
  with watched_steps(calls):
    loop.train_and_evaluate(config, str(tmp_path))
  assert calls == [(False, True, 1)] + [(True, False, 2)] * 5


# ----------------------------------------------------------------------------- main


REQUIRED = {'teacher_top1', 'student_top1_initial', 'student_top1_final', 'student_top1_best',
            'w_bits', 'a_bits', 'steps', 'wall_s'}


def _summary_rows(text):
  """{method: (final, best)} of summary.md's table."""
  rows = {}
  for line in text.splitlines():
    cells = [c.strip() for c in line.strip('|').split('|')]
    if len(cells) == 3 and cells[0] not in ('method', '---'):
      rows[cells[0]] = (float(cells[1]), float(cells[2]))
  return rows


def test_tiny_run_end_to_end(tiny_run, tmp_path):
  """`main.run` in this process (the quick tier's end-to-end run): results.json equals what
  main returned and the logged evaluations; the diagnostics at step 0 and every evaluation;
  the checkpoint's student scores the final accuracy; samples.png is the final generator's."""
  from PIL import Image
  from ris_jax import diagnostics, evaluation, ptq, teacher
  run, results = tiny_run
  assert json.loads((run / 'results.json').read_text()) == results
  assert REQUIRED <= set(results) and results['steps'] == TINY_RUN_STEPS
  rows = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
  evals = {r['step']: r['student_top1'] for r in rows if 'student_top1' in r}
  assert sorted(evals) == [2, 4] and results['student_top1_final'] == evals[4]
  assert results['student_top1_best'] == max(evals.values())
  assert [r['student_top1_initial'] for r in rows if 'student_top1_initial' in r] == [
      results['student_top1_initial']]
  diag = [r for r in rows if 'diag_teacher_agreement' in r]
  assert [r['step'] for r in diag] == [0, 2, 4]
  assert all(np.isfinite(r[k]) for r in diag for k in diagnostics.NAMES)
  assert [r['step'] for r in rows if 'g_rob' in r] == [2, 4]  # RIS: the robustness term logged
  models, state = ptq.load_generator(str(run))
  config = ml_collections.ConfigDict(json.loads((run / 'config.json').read_text()))
  _, _, t_vars = teacher.get_teacher(config)
  assert evaluation.accuracy(models.student, train.student_variables(state, t_vars), 'digits',
                             'test', 360) == results['student_top1_final']
  png = np.asarray(Image.open(run / 'samples.png').convert('RGB'))
  loop._sample_png(models, state, str(tmp_path), 'digits', TINY_RUN_STEPS, config.seed)
  np.testing.assert_array_equal(png, np.asarray(Image.open(tmp_path / 'samples.png').convert('RGB')))


@pytest.mark.full(reason='the demo from the command line, RIS and GDFQ in a subprocess (~85 s); '
                  'the quick tier runs main in process (test_tiny_run_end_to_end)')
def test_main_end_to_end(demo_run, tmp_path):
  from PIL import Image
  from ris_jax import ptq
  workdir, printed = demo_run
  assert set(printed) == {'ris', 'gdfq'}
  for name in ('ris', 'gdfq'):
    run = workdir / name
    results = json.loads((run / 'results.json').read_text())
    assert REQUIRED <= set(results), REQUIRED - set(results)
    assert (results['steps'], results['w_bits'], results['a_bits']) == (6, 3, 3)
    assert results['teacher_top1'] > 30.0  # the trained teacher, read from teacher.checkpoint
    assert printed[name] == results
    rows = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    logged = [r for r in rows if 'g_loss' in r]
    assert [r['step'] for r in logged] == [3, 6]
    assert ('g_rob' in logged[-1]) == (name == 'ris')  # the baseline has no robustness term
    assert all(np.isfinite(v) for r in logged for v in r.values())
    # initial = the evaluation at the end of the warm-up (step 1), final = the last
    # evaluation, best = the best evaluation after the warm-up; the teacher's is logged at 0.
    evals = {r['step']: r['student_top1'] for r in rows if 'student_top1' in r}
    assert sorted(evals) == [3, 6]
    assert [r['student_top1_initial'] for r in rows if 'student_top1_initial' in r] == [
        results['student_top1_initial']] and rows[1]['step'] == 1
    from ris_jax import diagnostics
    assert set(rows[0]) == {'step', 'teacher_top1', *diagnostics.NAMES}
    assert rows[0]['teacher_top1'] == results['teacher_top1']
    # the mechanism diagnostics of the generator at step 0 and at every evaluation, finite
    diag_rows = [r for r in rows if 'diag_teacher_agreement' in r]
    assert [r['step'] for r in diag_rows] == [0, 3, 6]
    assert all(set(diagnostics.NAMES) <= set(r) and all(np.isfinite(r[k]) for k in diagnostics.NAMES)
               for r in diag_rows)
    assert results['student_top1_final'] == evals[6]
    assert results['student_top1_best'] == max(evals.values())
    # The final student of the checkpoint scores the final accuracy.
    models, state = ptq.load_generator(str(run))
    from ris_jax import evaluation, teacher
    config = json.loads((run / 'config.json').read_text())
    assert config['method'] == name and int(state.step) == 6
    _, _, t_vars = teacher.get_teacher(ml_collections.ConfigDict(config))
    assert evaluation.accuracy(models.student, train.student_variables(state, t_vars), 'digits',
                               'test', 360) == results['student_top1_final']
    # samples.png: the labelled grid (10 classes × 8, 0.7 in each, + 0.4 in for the title, at
    # 80 dpi) of the final generator's images, as re-rendered here from the checkpoint; not blank.
    png = np.asarray(Image.open(run / 'samples.png').convert('RGB'), np.float64)
    assert png.shape == (592, 448, 3)
    again = tmp_path / name
    again.mkdir()
    loop._sample_png(models, state, str(again), 'digits', 6, config['seed'])
    np.testing.assert_array_equal(png, np.asarray(Image.open(again / 'samples.png').convert('RGB'),
                                                  np.float64))
    cells = png[100:500, 50:440].reshape(-1, 3)
    assert cells.std() > 20 and len(np.unique(cells[:, 0])) > 50
    assert {'3', '6'} <= set(os.listdir(run / 'checkpoints'))
  # summary.md: both runs' figures, side by side.
  summary = (workdir / 'summary.md').read_text()
  assert summary.startswith('W3A3, 6 iterations, batch 16\n')
  ris, gdfq = printed['ris'], printed['gdfq']
  assert _summary_rows(summary) == {
      'FP teacher': (round(ris['teacher_top1'], 2),) * 2,
      'calibrated (before fine-tuning)': (round(ris['student_top1_initial'], 2),) * 2,
      'GDFQ (CE + BNS)': (round(gdfq['student_top1_final'], 2), round(gdfq['student_top1_best'], 2)),
      'RIS': (round(ris['student_top1_final'], 2), round(ris['student_top1_best'], 2))}
  assert gdfq['teacher_top1'] == ris['teacher_top1']


def test_sample_mosaic_puts_each_class_on_its_row():
  """Row r of the grid holds the first 8 images of the r-th class present, in order, with
  1-pixel white gaps; a class with fewer images leaves its remaining cells white."""
  from ris_jax import evaluation
  rng = np.random.default_rng(0)
  pixels = rng.uniform(0.0, 0.9, (21, 3, 2, 1))
  labels = np.array([7] * 9 + [2] * 12)
  labels[[0, 10]] = 2, 7  # classes interleaved: the mosaic must select by label
  mosaic, classes = evaluation.sample_mosaic(pixels, labels)
  assert classes == [2, 7] and mosaic.shape == (2 * 4 - 1, 8 * 3 - 1, 1)
  for row, cls in enumerate(classes):
    for col in range(8):
      cell = mosaic[row * 4:row * 4 + 3, col * 3:col * 3 + 2]
      np.testing.assert_array_equal(cell, pixels[np.flatnonzero(labels == cls)[col]])
  assert (mosaic[3] == 1.0).all() and (mosaic[:, 2::3] == 1.0).all()  # the gaps
  short, _ = evaluation.sample_mosaic(pixels[:3], np.array([1, 1, 1]))
  assert (short[:, 3 * 3:] == 1.0).all() and (short[:, [0, 1, 3, 4, 6, 7]] < 1.0).all()

"""Several processes on this machine (SLURM-style environment, a coordinator on a free localhost
port, CPU collectives over gloo) against one process with the same devices in all: the teacher
cache, `eval_teacher`, `ptq` and training (losses at every step, accuracy, samples, files
written once, kill -9 of every process after a checkpoint and resumption, export).

The teacher is a ResNet-8 on digits (trained here, 2 epochs), the runs GDFQ iterations (see
TINY): compile time is mostly per program, not per layer (the RIS step: ResNet-8 15 s,
ResNet-20 17 s; GDFQ on ResNet-8 8.6 s). Compilation dominates: on CPU JAX's persistent cache
keys hold the process's own topology fingerprint and only process 0 writes entries, so process 1
compiles every program again in every run; the file therefore makes few multi-process runs.

The reference for training with N processes × D devices is 1 process × N·D devices: the same
global batch split over the same number of devices, so the two runs execute the same
partitioned programs and differ only in how the all-reduces travel (in-process or between
processes) and, with several devices per process, in the order of their sums (see the 2 × 2
test). That 1 and N·D devices agree is tests/test_train.py's business. Evaluation and PTQ
(per-example predictions) are compared with this (1-device) test process.

Every multi-process run is a set of subprocesses (`python -m ris_jax.main`) sharing the
session's compilation cache.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import pytest

from conftest import REPO, subprocess_env

pytestmark = pytest.mark.full(reason='several processes, each compiling every program of its run '
                              'again (JAX keys its compilation cache by process topology): ~6 min')

FAULTS = os.path.join(REPO, 'tests', 'reliability_faults.py')
TIMEOUT = 600
STEPS = 4
ARCH = 'resnet8_digits'
# A tiny run in one compiled phase (calibrating and updating from the first step), W8A8 so
# that float noise seldom moves a value across a quantization level (see the 2 × 2 test);
# evaluated (and samples drawn) at the end only. The GDFQ iteration (CE + BNS): the same
# sharded program structure, state, checkpoints and collectives as RIS's, in half its compile
# time (8.6 vs 17 s here), which process 1 pays in every run; the RIS terms on a sharded batch
# (perturbation draws, weight noise) are checked 1 vs 8 devices in tests/test_train.py.
TINY = ['--config', 'configs/demo.py', '--config.run_baseline=False', '--config.method=gdfq',
        f'--config.teacher.arch={ARCH}', f'--config.train.steps={STEPS}',
        '--config.train.batch_size=16', '--config.train.warmup_steps=0',
        f'--config.train.calibration_steps={STEPS}', '--config.train.log_every=1',
        f'--config.train.eval_every={STEPS}', '--config.train.checkpoint_every=2',
        '--config.generator.width=16', '--config.generator.latent_dim=16',
        '--config.train.progress=False',
        '--config.quant.w_bits=8', '--config.quant.a_bits=8']
# 360 test digits; a global evaluation batch of 100 is 50 per process with 2 processes:
# 4 batches each, 180 real examples and 20 padding rows per process.
EVAL = ['--config.data.eval_batch_size=100']


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start(args, cache, processes=1, devices=1, script=('-m', 'ris_jax.main'), slurm=True):
  """Starts `python SCRIPT ARGS` as `processes` processes of `devices` CPU devices each (with
  --config.distributed=True and a SLURM-style environment when more than one, or, not
  `slurm`, JAX_NUM_PROCESSES and JAX_PROCESS_ID as in the README); `finish` waits for them.
  Runs that do not depend on each other overlap: while process 1 compiles, process 0 mostly
  waits for it."""
  procs = []
  port = free_port()
  for i in range(processes):
    env = subprocess_env(cache, devices)
    extra = []
    if processes > 1:
      env['JAX_COORDINATOR_ADDRESS'] = f'127.0.0.1:{port}'
      if slurm:
        env.update(SLURM_JOB_ID='1', SLURM_NTASKS=str(processes), SLURM_PROCID=str(i),
                   SLURM_LOCALID=str(i), SLURM_STEP_NODELIST='localhost')
      else:
        env.update(JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i))
      extra = ['--config.distributed=True']
    out, err = tempfile.TemporaryFile('w+'), tempfile.TemporaryFile('w+')
    procs.append((subprocess.Popen([sys.executable, *script, *args, *extra], cwd=REPO, env=env,
                                   text=True, stdout=out, stderr=err), out, err))
  return procs


def finish(procs):
  """[(exit code, stdout, stderr)] of `start`'s processes, in process order."""
  result = []
  for p, out, err in procs:
    try:
      p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      for q, _, _ in procs:
        q.kill()
      p.wait()
    out.seek(0), err.seek(0)
    result.append((p.returncode, out.read(), err.read()))
    out.close(), err.close()
  return result


def launch(*args, **kwargs):
  """`start` then `finish`."""
  return finish(start(*args, **kwargs))


def ok(runs):
  for i, (rc, stdout, stderr) in enumerate(runs):
    assert rc == 0, f'process {i} exited {rc}\n{stdout[-2000:]}\n{stderr[-5000:]}'
  return runs


def printed(stdout):
  return json.loads(stdout[stdout.index('{'):])


def rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items() if k != 'steps_per_s'} for line in f]


def results(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return {k: v for k, v in json.load(f).items() if k != 'wall_s'}


def checkpoint_arrays(workdir, step):
  """{path: numpy array} of the training state in the checkpoint of `step`, read onto this
  process's first device whatever topology saved it."""
  import jax
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(path)
    meta = getattr(meta, 'item_metadata', meta)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      state = ckptr.restore(path, target)
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def assert_files_written_once(workdir):
  """One of each run file, no leftover temporary file, metrics without duplicate rows."""
  names = sorted(os.listdir(workdir))
  assert names == ['checkpoints', 'config.json', 'metrics.jsonl', 'results.json',
                   'samples.png'], names
  table = rows(workdir)
  keys = [(r['step'], tuple(sorted(r))) for r in table]
  assert len(keys) == len(set(keys)), keys
  with open(os.path.join(workdir, 'samples.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


# ------------------------------------------------------------------------ teacher, eval, ptq


@pytest.fixture(scope='module')
def teacher(compile_cache, tmp_path_factory):
  """`eval_teacher` as 2 processes with no teacher given: the digits teacher is trained (2
  epochs) by both, cached by process 0, and evaluated; then the same evaluation of that cache
  in this process."""
  from ris_jax import convert, evaluation
  root = tmp_path_factory.mktemp('multihost_teacher')
  cache = root / 'cache'
  args = ['--config', 'configs/demo.py', '--config.mode=eval_teacher',
          f'--config.teacher.arch={ARCH}', f'--config.teacher.cache_dir={cache}',
          '--config.teacher_training.epochs=2', *EVAL]
  two = ok(launch(args + [f'--workdir={root / "w2"}'], compile_cache, processes=2))
  entries = sorted(os.listdir(cache))
  assert len(entries) == 1, entries
  arch, variables = convert.load_variables(str(cache / entries[0]))
  correct, total = evaluation.correct_and_total(convert.spec_or_error(arch).module(), variables,
                                                'digits', 'test', 100)
  return {'dir': str(cache / entries[0]), 'two': [printed(o) for _, o, _ in two],
          'one': {'teacher_top1': 100.0 * correct / total, 'eval_examples': total},
          'stdout': [o for _, o, _ in two]}


def test_teacher_cache_trained_once_and_eval_teacher_counts_each_example_once(teacher):
  assert sorted(os.listdir(teacher['dir'])) == ['arch.json', 'teacher_results.json', 'variables']
  assert sum('training it (once)' in out for out in teacher['stdout']) == 1  # process 0 says so
  with open(os.path.join(teacher['dir'], 'teacher_results.json')) as f:
    trained = json.load(f)
  assert trained['test_top1'] > 30.0  # trained: far above chance (10%)
  p0, p1 = teacher['two']
  assert p0 == p1  # one run
  # 50 test digits per device in 2 processes against 100 on one device: other programs, so a
  # near-tie may fall the other way (one example allowed); every example counted once.
  assert_results_close(p0, teacher['one'])
  assert p0['eval_examples'] == 360
  # The accuracy the teacher training measured (same variables, same split) agrees.
  assert abs(p0['teacher_top1'] - trained['test_top1']) <= 100 / 360 + 1e-9


def test_ptq_two_processes_equal_one(teacher, compile_cache, tmp_path):
  """configs/ptq_digits.py (W4A4, noise calibration, weight clipping) as 2 processes and, as
  the reference, `ptq.run` in this process."""
  from configs import ptq_digits
  from ris_jax import ptq
  overrides = {'teacher.arch': ARCH, 'teacher.checkpoint': teacher['dir'], 'quant.w_bits': 4,
               'quant.a_bits': 4, 'ptq.calibration_batches': 2, 'ptq.batch_size': 32,
               'ptq.clip_batches': 2, 'ptq.clip_grid': (1.0, 0.9, 0.8),
               'data.eval_batch_size': 100}
  args = ['--config', 'configs/ptq_digits.py', *(f'--config.{k}={v}' for k, v in overrides.items())]
  two = start(args + [f'--workdir={tmp_path / "two"}'], compile_cache, processes=2)
  config = ptq_digits.get_config()
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value
  ptq.run(config, str(tmp_path / 'one'))
  ok(finish(two))
  two, one = results(tmp_path / 'two'), results(tmp_path / 'one')
  assert sorted(os.listdir(tmp_path / 'two')) == ['config.json', 'results.json']
  # per-device evaluation batches of 50 (2 processes) against 100 (this process): accuracies
  # within one example; the clipping choices (`alphas`) equal
  assert_results_close(two, one)
  assert two['eval_examples'] == 360
  assert abs(two['teacher_top1'] - teacher['one']['teacher_top1']) <= 100 / 360 + 1e-9


# ---------------------------------------------------------------------------------- training


@pytest.fixture(scope='module')
def training(teacher, compile_cache, tmp_path_factory):
  """The tiny run as 1 process × 2 devices ('one'), and as 2 processes × 1 device ('two')
  killed (SIGKILL, all of them) right after the checkpoint of step 2, then rerun to the end:
  so steps 1-2 ran in the first pair of processes and steps 3-4 in the second. 'two' exported
  by `python -m ris_jax.export`, 'one' by `export.export_student` here. 'term': 2 processes
  of which process 1 is sent SIGTERM during step 1, then rerun."""
  root = tmp_path_factory.mktemp('multihost_training')
  args = TINY + EVAL + [f'--config.teacher.checkpoint={teacher["dir"]}']
  w = {name: str(root / name) for name in ('one', 'two')}
  one = start(args + [f'--workdir={w["one"]}'], compile_cache, devices=2)
  out = {'killed': launch(['kill_after_save', '2', *args, f'--workdir={w["two"]}'], compile_cache,
                          processes=2, script=(FAULTS,))}
  out['one'] = ok(finish(one))
  out['killed_steps'] = sorted(os.listdir(os.path.join(w['two'], 'checkpoints')))
  out['killed_files'] = sorted(os.listdir(w['two']))
  out['two'] = ok(launch(args + [f'--workdir={w["two"]}'], compile_cache, processes=2))
  w['term'] = str(root / 'term')
  out['terminated'] = launch(['sigterm_at', '1', *args, f'--workdir={w["term"]}'], compile_cache,
                             processes=2, script=(FAULTS,))
  out['terminated_steps'] = sorted(os.listdir(os.path.join(w['term'], 'checkpoints')))
  out['term'] = ok(launch(args + [f'--workdir={w["term"]}'], compile_cache, processes=2))
  exporting = start(['--workdir', w['two'], '--out', str(root / 'export_two')], compile_cache,
                    script=('-m', 'ris_jax.export'))
  from ris_jax import export, loop
  export.export_student(*loop.load_student(w['one']), str(root / 'export_one'))
  ok(finish(exporting))
  return {'workdirs': w, 'out': out, 'root': root}


def without_wall_time(printed_results: dict) -> dict:
  return {k: v for k, v in printed_results.items() if k != 'wall_s'}


# Figures that count examples of a batch (argmax agreements): a float difference can only move
# them by whole examples. (training batch 16, diagnostics probe 100)
BATCH_FRACTIONS = {'s_acc_on_synthetic': 16, 'teacher_acc_on_synthetic': 16,
                   'diag_teacher_agreement': 100}


def assert_results_close(a, b, examples=1, size=360):
  """Equal results: the same keys; accuracies (top-1 over `size` test images) within
  `examples` examples (evaluations in other programs — per-device batches of another size,
  sums in another order — may put a near-tie on the other side); other floats to 1e-5;
  everything else exactly."""
  assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
  for k in a:
    if isinstance(a[k], dict):
      assert_results_close(a[k], b[k], examples, size)
    elif 'top1' in k:
      assert abs(a[k] - b[k]) <= examples * 100 / size + 1e-9, (k, a[k], b[k])
    elif isinstance(a[k], float) and k != 'wall_s':
      np.testing.assert_allclose(a[k], b[k], rtol=1e-5, err_msg=k)
    elif k != 'wall_s':
      assert a[k] == b[k], (k, a[k], b[k])


def assert_rows_close(a, b, student_rtol=1e-5, examples=0):
  """Equal metrics.jsonl rows (`rows`): same steps and keys, values to float tolerance
  (`student_rtol` for the student's losses on synthetic images, `s_*`); the fractions of a
  batch (BATCH_FRACTIONS) may differ by `examples` examples."""
  assert [(x['step'], sorted(x)) for x in a] == [(y['step'], sorted(y)) for y in b]
  for x, y in zip(a, b):
    for k in x:
      size = BATCH_FRACTIONS.get(k.split('/')[0])
      if size:
        assert abs(x[k] - y[k]) <= examples / size + 1e-9, (x['step'], k, x[k], y[k])
        continue
      rtol = student_rtol if k.startswith('s_') else 1e-5
      np.testing.assert_allclose(x[k], y[k], rtol=rtol, atol=1e-6, err_msg=f'step {x["step"]} {k}')


def test_two_processes_write_each_file_once(training):
  w, out = training['workdirs'], training['out']
  assert_files_written_once(w['two'])
  assert sorted(os.listdir(os.path.join(w['two'], 'checkpoints'))) == ['2', '4']
  p0, p1 = (printed(o) for _, o, _ in out['two'])
  assert without_wall_time(p0) == without_wall_time(p1) == results(w['two'])
  # Only process 0 prints progress.
  assert 'student top-1' in out['two'][0][1] + out['two'][0][2]
  assert 'student top-1' not in out['two'][1][1] + out['two'][1][2]


def test_two_processes_killed_after_a_checkpoint_and_rerun_equal_one_process(training):
  """Both processes die together after the checkpoint of step 2; the rerun resumes from it.
  Losses at every step, accuracies and the final state equal the 1-process run's to float
  tolerance (on this machine they are bit-identical)."""
  w, out = training['workdirs'], training['out']
  assert [rc for rc, _, _ in out['killed']] == [-9, -9], [e[-3000:] for _, _, e in out['killed']]
  assert out['killed_steps'] == ['2'] and 'results.json' not in out['killed_files']
  assert 'resuming from the checkpoint of step 2' in out['two'][0][1]
  two, one = rows(w['two']), rows(w['one'])
  assert_rows_close(two, one)
  assert len([x for x in two if 'g_loss' in x]) == STEPS
  assert [x['step'] for x in two if 'student_top1' in x] == [STEPS]
  assert results(w['two']) == results(w['one'])
  arrays_two, arrays_one = checkpoint_arrays(w['two'], STEPS), checkpoint_arrays(w['one'], STEPS)
  assert arrays_two.keys() == arrays_one.keys()
  for k in arrays_two:
    np.testing.assert_allclose(arrays_two[k], arrays_one[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_sigterm_to_one_process_stops_both_at_the_same_step_with_a_checkpoint(training):
  """Process 1 is sent SIGTERM during step 1 (log_every 1: a stop vote every step); both
  processes save the checkpoint of step 1 and exit 143; the rerun equals the 1-process run."""
  w, out = training['workdirs'], training['out']
  assert [rc for rc, _, _ in out['terminated']] == [143, 143], \
      [e[-3000:] for _, _, e in out['terminated']]
  assert all('saved the checkpoint of step 1 (of 4)' in e for _, _, e in out['terminated'])
  assert out['terminated_steps'] == ['1']
  assert 'resuming from the checkpoint of step 1' in out['term'][0][1]
  assert_rows_close(rows(w['term']), rows(w['one']))
  assert results(w['term']) == results(w['one'])


def test_export_of_a_two_process_run_predicts_as_the_one_process_run(training):
  import torch
  from ris_jax import data
  images = data.load_arrays('digits', 'test')['image'][:64]
  x = torch.from_numpy(np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2))))
  logits = {}
  for name in ('two', 'one'):
    program = torch.export.load(str(training['root'] / f'export_{name}' / 'student.pt2'))
    with torch.no_grad():
      logits[name] = program.module()(x).numpy()
  np.testing.assert_allclose(logits['two'], logits['one'], rtol=1e-5, atol=1e-5)
  assert np.array_equal(logits['two'].argmax(-1), logits['one'].argmax(-1))
  assert (logits['two'].argmax(-1) == data.load_arrays('digits', 'test')['label'][:64]).mean() > 0.3


# --------------------------------------------------------------- 2 processes × 2 devices


def test_two_processes_of_two_devices_equal_one_process_of_four(teacher, compile_cache, tmp_path):
  """One step with the student frozen (warm-up: calibrated, not updated). With 4 devices the
  sums over devices run in another order across processes (gloo) than within one process, so
  the losses of step 1, from the same initial state, already differ by float rounding; a
  student update turns such noise into W8 level flips (seen: 1-2 of the 360 test digits after
  1-2 steps). Frozen, the student's weights are identical; its activation ranges (batch
  min/max of images whose generator normalizes with 4-way batch statistics) agree to 1e-5 and
  its losses on the synthetic images to 1e-3 (W8A8 activations at a level boundary); the
  generator took one Adam step (each parameter moves by at most its learning rate). Where such
  a difference meets an argmax near-tie, one image is classified the other way (seen on an AMD
  EPYC: the student's accuracy on the 16 synthetic images 0.25 vs 0.1875), so the fractions of
  a batch and the test accuracies may differ by one example."""
  args = TINY + EVAL + [f'--config.teacher.checkpoint={teacher["dir"]}', '--config.train.steps=1',
                        '--config.train.warmup_steps=1', '--config.train.calibration_steps=1',
                        '--config.train.eval_every=1', '--config.train.checkpoint_every=1']
  one = start(args + [f'--workdir={tmp_path / "one"}'], compile_cache, devices=4)
  ok(launch(args + [f'--workdir={tmp_path / "two"}'], compile_cache, processes=2, devices=2))
  ok(finish(one))
  assert_files_written_once(tmp_path / 'two')
  two, one = rows(tmp_path / 'two'), rows(tmp_path / 'one')
  assert_rows_close(two, one, student_rtol=1e-3, examples=1)
  assert [x['step'] for x in two if 'g_loss' in x] == [1]
  assert results(tmp_path / 'two')['devices'] == 4
  assert_results_close(results(tmp_path / 'two'), results(tmp_path / 'one'))
  arrays_two = checkpoint_arrays(tmp_path / 'two', 1)
  arrays_one = checkpoint_arrays(tmp_path / 'one', 1)
  assert arrays_two.keys() == arrays_one.keys()
  lr = [x['lr_generator'] for x in two if 'lr_generator' in x][0]
  for k in arrays_two:
    if k.startswith("['generator']"):
      assert np.abs(arrays_two[k] - arrays_one[k]).max() <= 2 * lr * (1 + 1e-6), k
    elif k.startswith("['quant_ranges']"):  # batch min/max of images made with 4-way BN sums
      np.testing.assert_allclose(arrays_two[k], arrays_one[k], rtol=1e-5, err_msg=k)
    elif not k.startswith("['generator_opt']"):
      assert np.array_equal(arrays_two[k], arrays_one[k]), k


# ------------------------------------------------------------------------------ user errors


def test_unreachable_coordinator_and_indivisible_batch_are_one_line_errors(compile_cache, tmp_path):
  # Process 1 of 2 with no process 0 (nothing listens on the port).
  alone = start(TINY + ['--config.cluster.timeout_s=2', '--config.cluster.num_processes=2',
                        '--config.cluster.process_id=1', '--config.distributed=True',
                        f'--config.cluster.coordinator_address=127.0.0.1:{free_port()}',
                        f'--workdir={tmp_path / "w"}'], compile_cache)
  # Launched as the README shows for local processes (JAX_NUM_PROCESSES, JAX_PROCESS_ID).
  runs = launch(TINY + ['--config.train.batch_size=15', f'--workdir={tmp_path / "b"}'],
                compile_cache, processes=2, slurm=False)
  for rc, _, stderr in runs:
    lines = [l for l in stderr.splitlines() if l.strip() and not l.startswith('[Gloo]')]
    assert rc == 2 and len(lines) == 1, stderr[-3000:]
    assert lines[0] == ('error: config.train.batch_size=15 is not divisible by the 2 processes; '
                        'use a multiple of 2')
  (rc, _, stderr), = finish(alone)
  lines = [l for l in stderr.splitlines() if l.strip()]
  assert rc == 2 and len(lines) == 1, stderr[-3000:]
  assert lines[0].startswith('error: process 1 cannot reach the coordinator at 127.0.0.1:')
  assert lines[0].endswith('or raise config.cluster.timeout_s')

"""Reliability: kill -9 and resume, a kill during a checkpoint save, determinism, config
validation before compute, the NaN/Inf guard, `overwrite`, and corrupt inputs to convert /
export (the README's "Reliability" table).

Every run is a subprocess of a tiny RIS config (random-init digits teacher, batch 16, 8
iterations) sharing the session's jax compilation cache (conftest): the first run compiles,
the others load. To keep the file short on 2 cores the scenarios run concurrently (threads, each
driving subprocesses): two config-error cases while the reference compiles, everything that
needs the reference after it. Each test waits for its scenario and checks what it saw. Config
errors and the export errors that `loop.load_student` raises are checked in this process
(main's flag parsing and `main.run_flags`; `loop.load_student`), a few of each end to end as
subprocesses (exit code 2, one line on stderr).
"""
import concurrent.futures
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULTS = os.path.join(REPO, 'tests', 'reliability_faults.py')
STEPS, EVERY = 8, 2  # iterations; log and checkpoint interval
TINY = ['--config', 'configs/demo.py', f'--config.train.steps={STEPS}',
        '--config.train.batch_size=16', '--config.train.warmup_steps=2',
        '--config.train.calibration_steps=2', f'--config.train.log_every={EVERY}',
        '--config.train.eval_every=4', f'--config.train.checkpoint_every={EVERY}',
        '--config.run_baseline=False', '--config.generator.width=16',
        '--config.generator.latent_dim=16', '--config.train.progress=False']
PARALLEL = 3  # subprocesses at a time besides the reference run
TIMEOUT = 480


# ---------------------------------------------------------------------------------------------
# Helpers


def start(args, env):
  return subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run(args, env):
  """(exit code, stdout, stderr) of `python *args`."""
  proc = start(args, env)
  try:
    out, err = proc.communicate(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
  return proc.returncode, out, err


def run_ok(args, env):
  rc, out, err = run(args, env)
  assert rc == 0, f'exit {rc}\n{out[-2000:]}\n{err[-4000:]}'
  return out


def assert_user_error(rc, err, *words):
  """Exit code 2 and one line on stderr, 'error: …' containing `words`, no traceback."""
  lines = [line for line in err.splitlines() if line.strip()]
  assert rc == 2, f'exit {rc}: {err[-3000:]}'
  assert len(lines) == 1 and lines[0].startswith('error: '), err[-3000:]
  for w in words:
    assert w in lines[0], (w, lines[0])
  return lines[0]


def main_args(teacher, workdir, *extra):
  return ['-m', 'ris_jax.main', *TINY, f'--config.teacher.checkpoint={teacher["dir"]}',
          f'--workdir={workdir}', *extra]


def steps_in(workdir):
  """(finalized checkpoint steps, other entries: orbax's in-progress tmp directories)."""
  names = os.listdir(os.path.join(workdir, 'checkpoints'))
  return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if not n.isdigit())


def metrics(workdir, torn_ok=False):
  """metrics.jsonl rows less the speed (steps_per_s); `torn_ok`: skip a line being written."""
  rows = []
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except ValueError:
        if not torn_ok:
          raise
  return [{k: v for k, v in r.items() if k != 'steps_per_s'} for r in rows]


def checkpoint_arrays(workdir, step):
  """{path: numpy array} of the training state in the checkpoint of `step`."""
  import jax
  import orbax.checkpoint as ocp
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # no target given: shardings are read from the checkpoint
    state = ocp.PyTreeCheckpointer().restore(
        os.path.join(workdir, 'checkpoints', str(step), 'state'))
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def assert_same_run(a, b):
  """results.json (less wall time), metrics rows (less speed) and every array of the final
  checkpoint are equal bit for bit."""
  def results(w):
    with open(os.path.join(w, 'results.json')) as f:
      return {k: v for k, v in json.load(f).items() if k != 'wall_s'}
  assert results(a) == results(b)
  assert metrics(a) == metrics(b)
  arrays_a, arrays_b = checkpoint_arrays(a, STEPS), checkpoint_arrays(b, STEPS)
  assert arrays_a.keys() == arrays_b.keys()
  differ = [k for k in arrays_a if not np.array_equal(arrays_a[k], arrays_b[k])]
  assert not differ, differ[:5]


# ---------------------------------------------------------------------------------------------
# Fixtures: environment, teacher, the reference run, and the scenarios running concurrently

SCENARIOS = pytest.mark.full(reason='subprocess runs of the tiny config, killed, damaged and '
                             'resumed, several at a time (~2 min for the module)')


@pytest.fixture(scope='module')
def env(compile_cache):
  """Subprocess environment: the session's compilation cache (conftest), CPU."""
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=compile_cache, JAX_PLATFORMS='cpu',
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             PYTHONPATH=os.pathsep.join([REPO] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split() if 'device_count' not in f)
  return env


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
  """A random-init resnet20_digits as a converted directory and as a PyTorch state dict."""
  import jax
  import jax.numpy as jnp
  import torch
  from ris_jax import convert
  from ris_jax.models import get_arch
  spec = get_arch('resnet20_digits')
  v = spec.module().init(jax.random.key(0), jnp.zeros((1,) + spec.input_shape), train=False)
  out = tmp_path_factory.mktemp('teacher')
  convert.save_variables(str(out / 'converted'), spec.name,
                         {'params': v['params'], 'batch_stats': v['batch_stats']})
  torch.save(spec.torch_model().state_dict(), out / 'digits.pth')
  return {'dir': str(out / 'converted'), 'pth': str(out / 'digits.pth')}


@pytest.fixture(scope='module')
def scenarios(teacher, env, tmp_path_factory):
  """{name: future of the scenario's observations}. A convert error starts at once; the
  reference run compiles meanwhile; then every scenario that needs it starts."""
  tmp = lambda name: tmp_path_factory.mktemp(name)
  pool = concurrent.futures.ThreadPoolExecutor(PARALLEL)
  futures = {}
  futures['cli:convert_truncated_pth'] = pool.submit(convert_truncated_pth, teacher, env,
                                                     tmp('convert'))
  try:
    reference = str(tmp('reference') / 'run')
    out = run_ok(main_args(teacher, reference), env)
    futures['reference'] = concurrent.futures.Future()
    futures['reference'].set_result((reference, out))
    for name, fn in [('kill_9', kill_9),
                     ('kill_in_save', kill_in_save), ('sigterm', sigterm), ('nan', non_finite),
                     ('overwrite', overwrite)]:
      futures[name] = pool.submit(fn, reference, teacher, env, tmp(name))
    for case in CLI_CASES:
      if case not in IN_PROCESS_CLI_CASES:
        futures[f'cli:{case}'] = pool.submit(cli_case, case, reference, teacher, env, tmp(case))
    yield futures
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# Runs, kills, resumes


@SCENARIOS
def test_reference_run(scenarios):
  workdir, out = scenarios['reference'].result()
  assert 'resuming' not in out
  assert steps_in(workdir) == ([6, 8], [])  # max_checkpoints=2
  assert [r['step'] for r in metrics(workdir)] == [0, 2, 2, 4, 4, 6, 8, 8]


# The kill point is drawn from this seed, printed by the test (and in its failure messages):
# RIS_JAX_KILL_SEED=<seed> replays a failing draw.
KILL_SEED = int(os.environ.get('RIS_JAX_KILL_SEED') or random.SystemRandom().randrange(2 ** 31))


def kill_9(reference, teacher, env, tmp):
  """SIGKILL after a random logged step plus a random delay (drawn from KILL_SEED); rerun."""
  workdir = str(tmp / 'run')
  rng = random.Random(KILL_SEED)
  after, delay = rng.randrange(EVERY, STEPS - 1), rng.uniform(0.0, 0.5)
  proc = start(main_args(teacher, workdir), env)
  path = os.path.join(workdir, 'metrics.jsonl')
  while proc.poll() is None:  # the run has a fixed number of steps: it ends by itself
    if os.path.isfile(path) and any('g_loss' in r and r['step'] >= after
                                    for r in metrics(workdir, torn_ok=True)):
      break
    time.sleep(0.05)
  time.sleep(delay)
  proc.send_signal(signal.SIGKILL)
  _, err = proc.communicate()
  seen = dict(rc=proc.returncode, err=err, after=after, delay=delay,
              logged=max(r['step'] for r in metrics(workdir, torn_ok=True)),
              steps=steps_in(workdir))
  with open(path, 'a') as f:
    f.write('{"step": 7, "g_lo')  # as if killed while appending a row
  seen['out'] = run_ok(main_args(teacher, workdir), env)
  seen['workdir'] = workdir
  return seen


@SCENARIOS
def test_kill_9_at_a_random_step_resumes_losing_at_most_one_interval(scenarios):
  seen = scenarios['kill_9'].result()
  replay = f'RIS_JAX_KILL_SEED={KILL_SEED}'
  print(f"kill seed {KILL_SEED} ({replay} replays it): killed after step {seen['after']} + "
        f"{seen['delay']:.2f} s: last logged step {seen['logged']}, checkpoints {seen['steps']}")
  assert seen['rc'] == -signal.SIGKILL, \
      f"{replay}: ended ({seen['rc']}) before the kill: {seen['err'][-2000:]}"
  done, _ = seen['steps']
  last = done[-1] if done else 0  # killed before the first checkpoint: starts again
  assert last < STEPS, replay
  assert seen['logged'] - last <= EVERY, replay  # at most one checkpoint interval is lost
  if done:
    assert f'resuming from the checkpoint of step {last}' in seen['out'], replay
  else:
    assert 'resuming' not in seen['out'], replay
  assert steps_in(seen['workdir']) == ([6, 8], []), replay
  try:
    assert_same_run(scenarios['reference'].result()[0], seen['workdir'])
  except AssertionError as e:
    raise AssertionError(f'{replay}: {e}') from None


def kill_in_save(reference, teacher, env, tmp):
  """SIGKILL inside the save of step 6 (all written, not yet renamed); add a fake in-progress
  save of step 10; rerun."""
  workdir = str(tmp / 'run')
  rc, _, err = run([FAULTS, 'kill_in_save', '6', *main_args(teacher, workdir)[2:]], env)
  ckpt = os.path.join(workdir, 'checkpoints')
  seen = dict(rc=rc, err=err, steps=steps_in(workdir), workdir=workdir,
              tmp_complete=os.path.isfile(os.path.join(ckpt, '6.orbax-checkpoint-tmp',
                                                       'commit_success.txt')))
  # complete-looking, past the end: resumed, it would end the run at once with step 4's state
  shutil.copytree(os.path.join(ckpt, '4'), os.path.join(ckpt, '10.orbax-checkpoint-tmp'))
  seen['out'] = run_ok(main_args(teacher, workdir), env)
  return seen


@SCENARIOS
def test_a_checkpoint_killed_while_being_written_is_never_resumed(scenarios):
  seen = scenarios['kill_in_save'].result()
  assert seen['rc'] == -signal.SIGKILL, seen['err'][-3000:]
  assert seen['steps'] == ([2, 4], ['6.orbax-checkpoint-tmp'])
  assert seen['tmp_complete']  # every file of step 6 was written; only the rename was not
  assert 'resuming from the checkpoint of step 4' in seen['out']
  assert steps_in(seen['workdir']) == ([6, 8], [])  # the leftovers are deleted
  assert_same_run(scenarios['reference'].result()[0], seen['workdir'])


def sigterm(reference, teacher, env, tmp):
  """SIGTERM during iteration 5 (between the checkpoints of 4 and 6); rerun."""
  workdir = str(tmp / 'run')
  rc, out, err = run([FAULTS, 'sigterm_at', '5', *main_args(teacher, workdir)[2:]], env)
  seen = dict(rc=rc, out=out, err=err, steps=steps_in(workdir), rows=metrics(workdir),
              workdir=workdir)
  seen['rerun'] = run_ok(main_args(teacher, workdir), env)
  return seen


@SCENARIOS
def test_sigterm_saves_the_current_step_and_exits_143_then_resumes_the_same_run(scenarios):
  seen = scenarios['sigterm'].result()
  reference = scenarios['reference'].result()[0]
  assert seen['rc'] == 128 + signal.SIGTERM, seen['err'][-3000:]
  assert 'saved the checkpoint of step 5 (of 8)' in seen['err'] and 'Traceback' not in seen['err']
  assert '"students"' not in seen['out']  # no results printed: the run is not done
  assert seen['steps'] == ([4, 5], [])  # no iteration lost
  assert seen['rows'] == [r for r in metrics(reference) if r['step'] <= 4]
  assert 'resuming from the checkpoint of step 5' in seen['rerun']
  assert_same_run(reference, seen['workdir'])


def non_finite(reference, teacher, env, tmp):
  workdir = str(tmp / 'run')
  rc, _, err = run([FAULTS, 'nan_at', '5', *main_args(teacher, workdir)[2:]], env)
  return dict(rc=rc, err=err, workdir=workdir)


@SCENARIOS
def test_non_finite_loss_stops_naming_loss_and_step_keeping_the_last_good_checkpoint(scenarios):
  seen = scenarios['nan'].result()
  workdir, reference = seen['workdir'], scenarios['reference'].result()[0]
  print(assert_user_error(seen['rc'], seen['err'], 'g_loss became non-finite at step 5',
                          'last good checkpoint, step 4'))
  assert steps_in(workdir) == ([2, 4], [])
  rows = metrics(workdir)
  assert rows[:-1] == [r for r in metrics(reference) if r['step'] <= 4]
  assert rows[-1]['step'] == 5 and rows[-1]['event'] == 'non_finite'
  assert rows[-1]['g_loss'] == 'nan' and np.isfinite(rows[-1]['s_loss'])
  arrays = checkpoint_arrays(workdir, 4)
  assert all(np.isfinite(x).all() for x in arrays.values() if np.issubdtype(x.dtype, np.floating))


def test_a_non_finite_state_is_found_field_by_field():
  """The check before every save (a state can turn non-finite while the losses are finite)."""
  import jax
  import jax.numpy as jnp
  from ris_jax import loop, train
  state = train.RISState(step=jnp.int32(3), generator={'w': jnp.ones(3)}, generator_opt=(),
                         student={'w': jnp.array([1.0, jnp.inf])},
                         student_opt={'mu': jnp.array([jnp.nan])},
                         quant_ranges={'count': jnp.int32(1)}, rng=jax.random.PRNGKey(0))
  assert jax.device_get(loop._finite_fields(state)) == {
      'generator': True, 'generator_opt': True, 'student': False, 'student_opt': False,
      'quant_ranges': True}


def overwrite(reference, teacher, env, tmp):
  workdir = str(tmp / 'run')
  shutil.copytree(reference, workdir)
  os.makedirs(os.path.join(workdir, 'mine'))
  with open(os.path.join(workdir, 'notes.txt'), 'w') as f:
    f.write('not written by ris_jax')
  with open(os.path.join(workdir, 'config.json')) as f:
    old_config = f.read()
  rc, _, err = run(main_args(teacher, workdir, '--config.seed=1'), env)
  with open(os.path.join(workdir, 'config.json')) as f:
    seen = dict(rc=rc, err=err, kept=f.read() == old_config, steps=steps_in(workdir),
                workdir=workdir)
  # A config that differs only in how many checkpoints to keep: with overwrite it starts afresh
  # (resumed, the old step-8 checkpoint would end it at once) and computes what the reference did.
  seen['out'] = run_ok(main_args(teacher, workdir, '--config.train.max_checkpoints=3',
                                 '--config.overwrite=True'), env)
  return seen


@SCENARIOS
def test_workdir_of_another_config_is_refused_unless_overwrite_which_starts_afresh(scenarios):
  seen = scenarios['overwrite'].result()
  workdir = seen['workdir']
  assert_user_error(seen['rc'], seen['err'], 'holds a run of another config', 'seed: 0 → 1',
                    '--config.overwrite=True')
  assert seen['kept'] and seen['steps'] == ([6, 8], [])  # refused: nothing touched
  assert 'resuming' not in seen['out']
  assert steps_in(workdir) == ([4, 6, 8], [])  # a new run (max_checkpoints=3)
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['train']['max_checkpoints'] == 3
  assert os.path.isdir(os.path.join(workdir, 'mine'))  # only the run's own files are deleted
  assert os.path.isfile(os.path.join(workdir, 'notes.txt'))


@SCENARIOS
def test_same_config_and_seed_are_bit_identical(scenarios):
  """The run `overwrite` started afresh computes what the reference run computed, bit for bit
  (max_checkpoints, its only difference, changes no number)."""
  assert_same_run(scenarios['reference'].result()[0], scenarios['overwrite'].result()['workdir'])


# ---------------------------------------------------------------------------------------------
# Config errors: one line, exit 2, no traceback, before any compute (the workdir is not made)

CONFIG_ERRORS = {
    'unknown_key': (['--config.train.step=8'], ['did you mean', 'steps']),
    'bits_above_8': (['--config.quant.w_bits=9'], ['w_bits=9', '2 to 8']),
    'bits_below_2': (['--config.quant.a_bits=1'], ['a_bits=1', '2 to 8']),
    'zero_interval': (['--config.train.checkpoint_every=0'], ['checkpoint_every=0', 'at least 1']),
    'missing_teacher': (['--config.teacher.checkpoint=/nonexistent/teacher.pth'],
                        ['/nonexistent/teacher.pth does not exist']),
    'teacher_dir_not_converted': (['--config.teacher.checkpoint={tmp}'],
                                  ['not a converted ris_jax model']),
    'arch_mismatch_converted': (['--config.teacher.arch=resnet20_cifar10'],
                                ["holds a 'resnet20_digits'",
                                 '--config.teacher.arch=resnet20_digits']),
    'arch_mismatch_pth': (['--config.teacher.arch=resnet20_cifar100',
                           '--config.teacher.checkpoint={pth}'],
                          ["does not fit config.teacher.arch='resnet20_cifar100'",
                           'set --config.teacher.arch']),
    'truncated_teacher_pth': (['--config.teacher.checkpoint={truncated}'],
                              ['cannot read', 'as a PyTorch checkpoint']),
    'batch_12_on_8_devices': (['--config.train.batch_size=12'],
                              ['batch_size=12', 'divisible by the 8 devices', 'multiple of 8']),
    'workdir_is_a_file': (['--workdir={tmp}/file'], ['is a file']),
    'torn_config_json': (['--workdir={tmp}/torn'], ['config.json: unreadable',
                                                    '--config.overwrite=True']),
}


def truncated_copy(src, dst, size):
  with open(src, 'rb') as f:
    data = f.read()
  assert len(data) > size
  with open(dst, 'wb') as f:
    f.write(data[:size])
  return str(dst)


# Run as `python -m ris_jax.main` subprocesses (the exit-2 contract end to end: a flag error
# and a config error found by validation); the other cases run main's code in this process.
SUBPROCESS_CONFIG_ERRORS = ('unknown_key', 'batch_12_on_8_devices')


def config_error_args(case, teacher, tmp):
  (tmp / 'file').write_text('')
  (tmp / 'torn').mkdir()
  (tmp / 'torn' / 'config.json').write_text('{"mode": "train", "se')  # a torn write
  fill = dict(tmp=tmp, pth=teacher['pth'],
              truncated=truncated_copy(teacher['pth'], tmp / 'truncated.pth', 20_000))
  return main_args(teacher, tmp / 'run', *[a.format(**fill) for a in CONFIG_ERRORS[case][0]])


def config_error(case, teacher, env, tmp):
  case_env = dict(env)
  if case == 'batch_12_on_8_devices':
    case_env['XLA_FLAGS'] = f"{env['XLA_FLAGS']} --xla_force_host_platform_device_count=8"
  rc, _, err = run(config_error_args(case, teacher, tmp), case_env)
  return rc, err, tmp / 'run'


def main_in_process(argv, monkeypatch, capsys):
  """(exit code, stderr) of `python -m ris_jax.main ARGV` computed in this process: main's flag
  parsing (fresh flags; overrides are read from sys.argv), then `main.run_flags`; a UserError
  is what `main.main` prints before exiting 2."""
  from absl import flags
  from ris_jax import main
  from ris_jax.errors import UserError
  values = flags.FlagValues()
  config, workdir = main.define_flags(values)
  monkeypatch.setattr(sys, 'argv', ['ris_jax.main', *argv])
  try:
    main.parse_flags(sys.argv, values)
  except SystemExit as e:
    return e.code, capsys.readouterr().err
  try:
    main.run_flags(config, workdir)
  except UserError as e:
    return 2, f'error: {e}\n'
  return 0, ''


@pytest.mark.parametrize('case', [c for c in CONFIG_ERRORS if c not in SUBPROCESS_CONFIG_ERRORS])
def test_config_errors_before_any_compute(teacher, case, tmp_path, monkeypatch, capsys):
  rc, err = main_in_process(config_error_args(case, teacher, tmp_path)[2:], monkeypatch, capsys)
  assert_user_error(rc, err, *CONFIG_ERRORS[case][1])
  assert not os.path.exists(tmp_path / 'run')


@pytest.mark.parametrize('case', SUBPROCESS_CONFIG_ERRORS)
def test_config_errors_of_the_command_line(teacher, env, case, tmp_path):
  rc, err, workdir = config_error(case, teacher, env, tmp_path)
  assert_user_error(rc, err, *CONFIG_ERRORS[case][1])
  assert not os.path.exists(workdir)


# ---------------------------------------------------------------------------------------------
# Corrupt inputs of export (and of resuming) and convert

CLI_CASES = {
    'export_ok': None,
    'export_workdir_without_run': ['holds no ris_jax run', 'python -m ris_jax.main'],
    'export_checkpoints_deleted': ['checkpoints is missing', 'rerun its training'],
    'export_no_complete_checkpoint': ['holds no complete checkpoint', 'rerun its training'],
    'export_damaged_checkpoint': ['checkpoints/8 is damaged', 'fall back to step 6'],
    'export_torn_config': ['is not a ris_jax run config'],
    'resume_damaged_checkpoint': ['checkpoints/8 is damaged', 'fall back to step 6'],
}


# Checked in this process (the message of `loop.load_student`, which `python -m ris_jax.export`
# prints as its one-line error); the others run the CLI as a subprocess.
IN_PROCESS_CLI_CASES = ('export_workdir_without_run', 'export_checkpoints_deleted',
                        'export_no_complete_checkpoint', 'export_torn_config')


def prepare_cli_case(case, reference, tmp):
  """(workdir, out): a copy of the reference run damaged as `case` says."""
  workdir, out = str(tmp / 'run'), str(tmp / 'exported')
  if case == 'export_workdir_without_run':
    os.makedirs(workdir)
  else:
    shutil.copytree(reference, workdir)
  ckpt = os.path.join(workdir, 'checkpoints')
  if case == 'export_checkpoints_deleted':
    shutil.rmtree(ckpt)
  if case == 'export_no_complete_checkpoint':  # both saves killed before their rename
    for step in ('6', '8'):
      os.rename(os.path.join(ckpt, step), os.path.join(ckpt, step + '.orbax-checkpoint-tmp'))
  if case in ('export_damaged_checkpoint', 'resume_damaged_checkpoint'):
    data = os.path.join(ckpt, '8', 'state', 'd')  # the array data of the latest checkpoint
    for name in os.listdir(data):
      os.remove(os.path.join(data, name))
  if case == 'export_torn_config':
    with open(os.path.join(workdir, 'config.json'), 'r+') as f:
      f.truncate(100)
  return workdir, out


def cli_case(case, reference, teacher, env, tmp):
  workdir, out = prepare_cli_case(case, reference, tmp)
  ckpt = os.path.join(workdir, 'checkpoints')
  if case == 'resume_damaged_checkpoint':
    rc, _, err = run(main_args(teacher, workdir), env)
    shutil.rmtree(os.path.join(ckpt, '8'))  # what the error says to do
    return rc, run_ok(main_args(teacher, workdir), env), err, workdir
  return run(['-m', 'ris_jax.export', '--workdir', workdir, '--out', out], env) + (out,)


def convert_truncated_pth(teacher, env, tmp):
  pth = truncated_copy(teacher['pth'], tmp / 'truncated.pth', 30_000)
  out = str(tmp / 'converted')
  return run(['-m', 'ris_jax.convert', '--arch', 'resnet20_digits', '--torch-checkpoint', pth,
              '--out', out], env) + (out,)


@SCENARIOS
@pytest.mark.parametrize('case', ['convert_truncated_pth'] + list(CLI_CASES))
def test_corrupt_inputs_of_export_and_convert(scenarios, case, tmp_path):
  if case in IN_PROCESS_CLI_CASES:
    from ris_jax import loop
    from ris_jax.errors import UserError
    workdir, out = prepare_cli_case(case, scenarios['reference'].result()[0], tmp_path)
    with pytest.raises(UserError) as e:
      loop.load_student(workdir)
    rc, stdout, err = 2, '', f'error: {e.value}\n'
  else:
    rc, stdout, err, out = scenarios[f'cli:{case}'].result()
  if case == 'export_ok':
    assert rc == 0, err[-3000:]
    assert sorted(os.listdir(out)) == ['student.pt2', 'student_state_dict.pth']
    return
  words = ['cannot read', 'as a PyTorch checkpoint'] if case.startswith('convert') else CLI_CASES[case]
  assert_user_error(rc, err, *words)
  if case == 'resume_damaged_checkpoint':  # then, without step 8, the run resumes from step 6
    assert 'resuming from the checkpoint of step 6' in stdout
    assert_same_run(scenarios['reference'].result()[0], out)  # `out`: the workdir here
  else:
    assert not os.path.exists(out)

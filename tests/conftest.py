"""Shared fixtures of the training tests: a small digits teacher trained once per session, the
tiny RIS config built on it, one tiny run of it (`tiny_run`, in this process: the quick tier's
end-to-end run), the demo run from the command line (full tier), and one persistent
compilation cache for the whole session.

Tiers: `python -m pytest -q` runs the quick tier; `python -m pytest -q -m full` the rest, each
test there marked `@pytest.mark.full(reason=...)` (checked at collection).

The RIS step takes ~30 s to compile on 2 CPU cores. One jax compilation cache serves this
process and every subprocess of the session (the environment variables are set before jax is
imported and are inherited): each program of the tiny configs is compiled once per session,
whichever test or subprocess needs it first. The cache is a fresh directory per session,
deleted at the end; RIS_JAX_TEST_COMPILE_CACHE=DIR keeps one across sessions instead.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # plain `pytest` (not `python -m pytest`) finds ris_jax and configs
  sys.path.insert(0, REPO)

_SESSION_CACHE = []  # the directory made by pytest_configure, removed by pytest_unconfigure


def pytest_configure(config):
  path = os.environ.get('RIS_JAX_TEST_COMPILE_CACHE')
  if path:
    path = os.path.expanduser(path)
    os.makedirs(path, exist_ok=True)
  else:
    path = tempfile.mkdtemp(prefix='ris_jax_test_xla_cache_')
    _SESSION_CACHE.append(path)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = path
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  if 'jax' in sys.modules:  # imported by a plugin before this hook: set the config directly
    import jax
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)


def pytest_collection_modifyitems(config, items):
  """A test leaves the quick tier only with its reason: `@pytest.mark.full(reason='...')`."""
  for item in items:
    for mark in item.iter_markers('full'):
      if not str(mark.kwargs.get('reason', '')).strip():
        raise pytest.UsageError(f"{item.nodeid}: pytest.mark.full needs reason='why this test is "
                                "not in the quick tier'")


def pytest_unconfigure(config):
  for path in _SESSION_CACHE:
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope='session')
def digits_teacher(tmp_path_factory):
  """A converted-model directory of resnet20_digits trained for 2 epochs (~10 s): a real
  trained teacher without touching ~/.cache."""
  from configs import teacher_digits
  from ris_jax import teacher
  config = teacher_digits.get_config()
  config.teacher_training.epochs = 2
  out = str(tmp_path_factory.mktemp('teacher') / 'resnet20_digits')
  result = teacher.train_teacher(config, out)
  assert result['test_top1'] > 30.0, result  # trained, far above chance (10%)
  return out


@pytest.fixture(scope='session')
def compile_cache():
  """The session's jax compilation cache directory (see the module docstring)."""
  return os.environ['JAX_COMPILATION_CACHE_DIR']


def tiny_config(teacher_dir: str):
  """The demo config with every RIS term on (input + weight perturbation and the decorrelated
  soft labels, which the configs no longer default to), W3A3, at test size: batch 16, a
  width-16 generator with a 16-d latent. Tests change only
  train.{steps, warmup_steps, calibration_steps, *_every}, which leave the compiled step
  unchanged (so the compilation cache serves them all; test_reliability's runs too)."""
  from configs import demo
  c = demo.get_config()
  c.teacher.checkpoint = teacher_dir
  c.run_baseline = False
  c.generator.width = 16
  c.generator.latent_dim = 16
  c.train.batch_size = 16
  c.loss.soft_labels = True
  c.train.progress = False
  c.train.warmup_steps = 1
  c.train.calibration_steps = 1
  return c


def subprocess_env(cache_dir: str, devices: int = 1) -> dict:
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join([REPO] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  env['XLA_FLAGS'] = ' '.join(
      [f for f in os.environ.get('XLA_FLAGS', '').split() if 'device_count' not in f]
      + [f'--xla_force_host_platform_device_count={devices}'])
  return env


def run_python(args, env, cwd=REPO, timeout=600) -> subprocess.CompletedProcess:
  """Runs `python *args`; fails the test with its output when it exits non-zero."""
  proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)
  if proc.returncode:
    pytest.fail(f'python {" ".join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n'
                f'{proc.stderr[-6000:]}')
  return proc


TINY_RUN_STEPS = 4


def tiny_run_config(teacher_dir: str):
  """`tiny_config` for TINY_RUN_STEPS steps, logged, evaluated and checkpointed every 2."""
  config = tiny_config(teacher_dir)
  config.train.steps = TINY_RUN_STEPS
  config.train.checkpoint_every = config.train.eval_every = config.train.log_every = 2
  return config


@pytest.fixture(scope='session')
def tiny_run(digits_teacher, compile_cache, tmp_path_factory):
  """(workdir, results) of `main.run` on `tiny_run_config` (RIS, W3A3): the training program
  end to end in this process (main's validation, loop, checkpoints, evaluation, diagnostics,
  samples). Read-only for the tests that use it."""
  from ris_jax import main
  workdir = tmp_path_factory.mktemp('tiny_run') / 'run'
  return workdir, main.run(tiny_run_config(digits_teacher), str(workdir))


# The demo at test size from the command line: the same compiled step as `tiny_config`.
DEMO_OVERRIDES = {'train.steps': 6, 'train.batch_size': 16, 'loss.soft_labels': True,
                  'generator.width': 16, 'generator.latent_dim': 16, 'train.warmup_steps': 1,
                  'train.calibration_steps': 1, 'train.log_every': 3, 'train.eval_every': 3,
                  'train.checkpoint_every': 3, 'train.progress': False}


@pytest.fixture(scope='session')
def demo_run(digits_teacher, compile_cache, tmp_path_factory):
  """(workdir, printed results) of `python -m ris_jax.main --config configs/demo.py` (RIS and
  the GDFQ baseline, W3A3) for 6 tiny steps: checked by test_train, exported by test_export."""
  workdir = tmp_path_factory.mktemp('demo') / 'demo'
  overrides = {**DEMO_OVERRIDES, 'teacher.checkpoint': digits_teacher}
  proc = run_python(['-m', 'ris_jax.main', '--config', 'configs/demo.py', '--workdir', str(workdir)]
                    + [f'--config.{k}={v}' for k, v in overrides.items()],
                    subprocess_env(compile_cache))
  return workdir, json.loads(proc.stdout[proc.stdout.index('{'):])

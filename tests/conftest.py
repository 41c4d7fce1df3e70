"""Shared fixtures of the training tests: a small digits teacher trained once per session, the
tiny RIS config built on it, and a per-session persistent compilation cache.

The RIS step takes ~30 s to compile on 2 CPU cores; with the cache, every test (and every
subprocess) that runs the same tiny config on the same device count compiles it once.
"""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # plain `pytest` (not `python -m pytest`) finds ris_jax and configs
  sys.path.insert(0, REPO)


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
def compile_cache(tmp_path_factory):
  """Enables jax's persistent compilation cache in a fresh per-session directory (this process
  and, through `subprocess_env`, subprocesses); restores the previous setting afterwards."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc
  path = str(tmp_path_factory.mktemp('jax_cache'))
  old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  cc.reset_cache()  # an earlier compile may have recorded "no cache" for this process
  yield path
  jax.config.update('jax_compilation_cache_dir', old[0])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', old[1])
  cc.reset_cache()


def tiny_config(teacher_dir: str):
  """The demo config (full RIS: input + weight perturbation, decorrelated soft labels, W3A3)
  at test size: batch 16, a width-16 generator with a 16-d latent. Tests change only
  train.{steps, warmup_steps, calibration_steps, *_every}, which leave the compiled step
  unchanged (so the compilation cache serves them all)."""
  from configs import demo
  c = demo.get_config()
  c.teacher.checkpoint = teacher_dir
  c.run_baseline = False
  c.generator.width = 16
  c.generator.latent_dim = 16
  c.train.batch_size = 16
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

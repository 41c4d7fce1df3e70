"""`python -m ris_jax.main` with one injected fault, for tests/test_reliability.py:

    python tests/reliability_faults.py kill_in_save STEP --config ... --workdir ...
        SIGKILLs this process while it saves the checkpoint of STEP: every file is written
        into orbax's `STEP.orbax-checkpoint-tmp` directory, the rename to `STEP` is not done.
    python tests/reliability_faults.py kill_after_save STEP --config ... --workdir ...
        SIGKILLs this process once the checkpoint of STEP is complete and every process of a
        multi-process run has saved it (a barrier), so all of them die there together.
    python tests/reliability_faults.py sigterm_at STEP --config ... --workdir ...
        Sends SIGTERM (a scheduler's preemption notice) during iteration STEP to the last
        process only: with several, the others learn of it from the loop's stop vote.
    python tests/reliability_faults.py nan_at STEP --config ... --workdir ...
        From iteration STEP on, the generator's parameters are NaN and so is g_loss (what a
        diverging generator produces), as if the step function had returned them.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def kill_in_save(step: int) -> None:
  from orbax.checkpoint._src.path import async_path
  rename = async_path.rename

  async def rename_or_die(src, dst):
    if os.path.basename(str(dst)) == str(step):
      sys.stdout.flush()
      os.kill(os.getpid(), signal.SIGKILL)
    return await rename(src, dst)
  async_path.rename = rename_or_die


def kill_after_save(step: int) -> None:
  import orbax.checkpoint as ocp
  from ris_jax import distributed
  save = ocp.CheckpointManager.save

  def save_then_die(self, save_step, *args, **kwargs):
    saved = save(self, save_step, *args, **kwargs)
    if save_step == step:
      self.wait_until_finished()  # the checkpoint renamed into place
      distributed.barrier('reliability_faults.kill_after_save')
      sys.stdout.flush()
      os.kill(os.getpid(), signal.SIGKILL)
    return saved
  ocp.CheckpointManager.save = save_then_die


def after_each_step(hook) -> None:
  """Makes the loop's step function return `hook(state, metrics)` after every iteration."""
  from ris_jax import train
  jit_ris_step = train.jit_ris_step

  def hooked_jit_ris_step(*args, **kwargs):
    step_fn = jit_ris_step(*args, **kwargs)
    return lambda state, *a, **k: hook(*step_fn(state, *a, **k))
  train.jit_ris_step = hooked_jit_ris_step


def sigterm_at(step: int) -> None:
  import jax

  def signal_last_process(state, metrics):
    if int(state.step) == step and jax.process_index() == jax.process_count() - 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return state, metrics
  after_each_step(signal_last_process)


def nan_at(step: int) -> None:
  import jax
  import jax.numpy as jnp

  def poison(state, metrics):
    if int(state.step) >= step:
      state = state.replace(generator=jax.tree.map(lambda x: x * jnp.nan, state.generator))
      metrics = dict(metrics, g_loss=metrics['g_loss'] * jnp.nan)
    return state, metrics
  after_each_step(poison)


if __name__ == '__main__':
  fault, step = sys.argv[1], int(sys.argv[2])
  {'kill_in_save': kill_in_save, 'kill_after_save': kill_after_save, 'sigterm_at': sigterm_at,
   'nan_at': nan_at}[fault](step)
  from absl import app
  from ris_jax import main
  sys.argv = ['ris_jax.main'] + sys.argv[3:]
  app.run(main.main, flags_parser=main.parse_flags)

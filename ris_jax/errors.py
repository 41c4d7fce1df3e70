"""User-facing errors: one line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import functools
import os
import sys
import time


class UserError(Exception):
  """A problem with the user's input (file, config, dataset) whose message names the fix."""


class Terminated(Exception):
  """SIGTERM (a scheduler's preemption or time-limit notice) reached a training run, which
  saved a checkpoint and stopped; the same command resumes it. `main` exits with code 143."""


def short_list(items, limit: int = 8) -> str:
  items = list(items)
  shown = ', '.join(str(i) for i in items[:limit])
  return shown + (f' … (+{len(items) - limit} more)' if len(items) > limit else '')


def exit_with_error(error) -> None:
  """`error: <message>` (one line) on stderr, then exit code 2 at once: `os._exit` skips the
  interpreter's shutdown, where library threads still running (orbax/tensorstore reads after a
  failed restore) would print their own tracebacks."""
  sys.stdout.flush()
  print(f'error: {error}', file=sys.stderr, flush=True)
  jax = sys.modules.get('jax')
  if jax is not None and jax.distributed.is_initialized() and jax.process_index() == 0:
    # Process 0 serves the coordinator: the other processes, which meet the same error,
    # exit first (without it they abort, printing JAX's "another task died" trace).
    time.sleep(3.0)
  os._exit(2)


def cli_entry(fn):
  """Wraps a CLI `main`: a `UserError` becomes `error: <message>` on stderr and exit code 2."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except UserError as e:
      exit_with_error(e)
  return wrapper

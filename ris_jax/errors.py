"""User-facing errors: one line on stderr, exit code 2, no traceback."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
  """A problem with the user's input (file, config, dataset) whose message names the fix."""


def short_list(items, limit: int = 8) -> str:
  items = list(items)
  shown = ', '.join(str(i) for i in items[:limit])
  return shown + (f' … (+{len(items) - limit} more)' if len(items) > limit else '')


def cli_entry(fn):
  """Wraps a CLI `main`: a `UserError` becomes `error: <message>` on stderr and exit code 2."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
  return wrapper

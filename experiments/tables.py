"""What every experiment script's result tables share: the command that made them (shell-quoted,
so that pasting it reruns exactly that), mean ± std cells that carry their per-seed values,
and the raw per-run results saved beside the tables so that a table can be regenerated
without rerunning the experiment (`--tables-only` in each script)."""
from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Iterable, Optional, Sequence

import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def command(script: str, argv: Optional[Sequence[str]] = None) -> str:
  """`python experiments/<script> ARGS…` as a shell would need it typed (shlex.join): e.g.
  --plan 'w3a3=0,1,2;w4a4=0,1,2' keeps its quotes."""
  args = sys.argv[1:] if argv is None else list(argv)
  return shlex.join(['python', f'experiments/{script}'] + args)


def mean_std(values: Iterable[Optional[float]], digits: int = 2) -> str:
  """'m ± s (v1, v2, …)': population std over the runs, then every run's value in run order;
  '–' when there is none. One value: just that value."""
  v = [float(x) for x in values if x is not None]
  if not v:
    return '–'
  each = ', '.join(f'{x:.{digits}f}' for x in v)
  if len(v) == 1:
    return each
  return f'{np.mean(v):.{digits}f} ± {np.std(v):.{digits}f} ({each})'


def save_raw(name: str, command_line: str, rows) -> str:
  """Writes experiments/results/<name>.raw.json: the command and every run's results."""
  os.makedirs(RESULTS, exist_ok=True)
  path = os.path.join(RESULTS, f'{name}.raw.json')
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump({'command': command_line, 'rows': rows}, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
  return path


def load_raw(name: str):
  """(command, rows) saved by `save_raw`."""
  with open(os.path.join(RESULTS, f'{name}.raw.json')) as f:
    raw = json.load(f)
  return raw['command'], raw['rows']


def write(name: str, lines: Sequence[str]) -> None:
  """experiments/results/<name> from `lines` (and echoed)."""
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, name), 'w') as f:
    f.write('\n'.join(lines).rstrip('\n') + '\n')
  print('\n'.join(lines), flush=True)


def reading_lines(name: str) -> list[str]:
  """The hand-written reading experiments/results/<name> as lines to append to a table
  (a blank line first), or [] while it does not exist."""
  path = os.path.join(RESULTS, name)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return ['', f.read()]


def sample_grids(name: str, panels: Sequence[tuple], width: float = 5.5, dpi: int = 90) -> None:
  """experiments/results/<name>: the runs' own `samples.png` grids (a labelled row of generator
  images per class, in the teacher's de-normalization) side by side, one panel per
  (path, title). Left as it is when a panel's file is not here (a new machine holds the raw
  results of earlier runs but not their workdirs)."""
  missing = [path for path, _ in panels if not os.path.isfile(path)]
  if missing:
    print(f"{name} left as it is: {', '.join(missing)} not here", flush=True)
    return
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 8), squeeze=False)
  for ax, (path, title) in zip(axes[0], panels):
    ax.imshow(plt.imread(path))
    ax.set_title(title)
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(os.path.join(RESULTS, name), dpi=dpi)
  plt.close(fig)

"""Top-1 accuracy over a whole real split, and the labelled grid of synthetic images."""
from __future__ import annotations

import functools
import re
from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ris_jax import data, distributed
from ris_jax.errors import UserError


IN_FLIGHT = 8  # evaluation batches the host may dispatch ahead of the device


@functools.lru_cache(maxsize=32)
def _counter(module, ranges: Tuple[Tuple[int, int], ...] = ()):
  """Jitted (1 + K, 2) counts of a batch, one per module and ranges, so evaluations do not
  recompile: row 0 (Σ mask·[argmax module.apply(v, x) = y], Σ mask), then the same over the
  examples whose split index lies in each [lo, hi) of `ranges`; replicated on every device."""
  def count(variables, images, labels, mask, index):
    hit = (jnp.argmax(module.apply(variables, images), -1) == labels) & mask
    selections = [mask] + [mask & (index >= lo) & (index < hi) for lo, hi in ranges]
    return jnp.stack([jnp.stack([jnp.sum(hit & s), jnp.sum(s)]) for s in selections])
  return jax.jit(count, out_shardings=distributed.replicated())


def parse_subsets(text: str) -> Tuple[Tuple[str, int, int], ...]:
  """'val=0:5000,report=5000:10000' → (('val', 0, 5000), ('report', 5000, 10000)): named
  ranges [lo, hi) of example positions in the evaluation split. Raises ValueError."""
  out = []
  for part in filter(None, (p.strip() for p in (text or '').split(','))):
    m = re.fullmatch(r'([A-Za-z]\w*)=(\d+):(\d+)', part)
    if not m or int(m.group(2)) >= int(m.group(3)):
      raise ValueError(f"'{part}' is not NAME=LO:HI with LO < HI (e.g. val=0:5000)")
    out.append((m.group(1), int(m.group(2)), int(m.group(3))))
  if len({name for name, _, _ in out}) != len(out):
    raise ValueError(f'{text!r} names a subset twice')
  return tuple(out)


def correct_counts(module, variables, dataset: str, split: str = 'test', batch_size: int = 500,
                   data_dir=None, normalization=None, ranges: Tuple[Tuple[int, int], ...] = ()
                   ) -> np.ndarray:
  """(1 + K, 2) int array: (correct top-1 predictions, examples) of `module.apply(variables, x)`
  over every example of the split, then over the examples at positions [lo, hi) of each of the
  K `ranges`; data-parallel over every device of every process. `batch_size` is the global
  batch: each of P processes reads ⌈batch_size / P⌉ (rounded up to its device count) of its
  examples i, i + P, … per batch, padded (masked) so that all run the same number of equally
  shaped batches; each example is counted once. `normalization`: the teacher's (mean, std)."""
  count = _counter(module, tuple((int(lo), int(hi)) for lo, hi in ranges))
  variables = distributed.replicate(variables)
  local = distributed.local_batch_size(batch_size)
  # The counts are summed on the device: the device counts a batch while the host reads and
  # normalizes the next; a wait every IN_FLIGHT batches only bounds the batches in flight.
  total = None
  for i, batch in enumerate(data.eval_batches(dataset, split, local, data_dir, pad=True,
                                              normalization=normalization)):
    batch = distributed.shard_batch(batch)
    counts = count(variables, batch['image'], batch['label'], batch['mask'], batch['index'])
    total = counts if total is None else total + counts
    if i % IN_FLIGHT == IN_FLIGHT - 1:
      jax.block_until_ready(total)
  if total is None:
    return np.zeros((1 + len(ranges), 2), np.int64)
  return np.asarray(distributed.to_host(total), np.int64)


def correct_and_total(module, variables, dataset: str, split: str = 'test',
                      batch_size: int = 500, data_dir=None, normalization=None) -> Tuple[int, int]:
  """(correct top-1 predictions, examples) over every example of the split (`correct_counts`)."""
  correct, total = correct_counts(module, variables, dataset, split, batch_size, data_dir,
                                  normalization)[0]
  return int(correct), int(total)


def accuracy(module, variables, dataset: str, split: str = 'test', batch_size: int = 500,
             data_dir=None, normalization=None) -> float:
  """Top-1 (%) of `module.apply(variables, x)` on every example of the split, its images
  normalized with `normalization` (the teacher's (mean, std); default the dataset's)
  (`correct_and_total`)."""
  correct, total = correct_and_total(module, variables, dataset, split, batch_size, data_dir,
                                     normalization)
  return 100.0 * correct / max(total, 1)


def split_accuracies(config, spec, module, variables) -> Dict[str, float]:
  """Top-1 (%) on the evaluation split of `config.data` ('' key) and on each of its named
  subsets `config.data.subsets` (e.g. {'': …, 'val': …, 'report': …}), in one pass, normalized
  as the teacher `spec` expects. A subset beyond the split's end is an error."""
  d = config.data
  subsets = parse_subsets(d.get('subsets', ''))
  counts = correct_counts(module, variables, d.dataset, d.split, d.eval_batch_size,
                          d.get('data_dir'), spec.normalization,
                          tuple((lo, hi) for _, lo, hi in subsets))
  for (name, lo, hi), (_, n) in zip(subsets, counts[1:]):
    if n != hi - lo:
      raise UserError(f"config.data.subsets: '{name}={lo}:{hi}' covers {n} of the "
                      f'{counts[0][1]} examples of {d.dataset} {d.split}; give ranges inside it')
  names = [''] + [name for name, _, _ in subsets]
  return {name: 100.0 * c / max(n, 1) for name, (c, n) in zip(names, counts)}


def split_accuracy(config, spec, module, variables) -> float:
  """Top-1 (%) on the evaluation split of `config.data`, normalized as the teacher `spec`
  expects (`split_accuracies`' whole-split figure)."""
  return split_accuracies(config, spec, module, variables)['']


def sample_mosaic(pixels: np.ndarray, labels: np.ndarray, per_class: int = 8, gap: int = 1):
  """(rows·(H+gap)−gap, per_class·(W+gap)−gap, C) mosaic of `pixels` (N, H, W, C) in [0, 1]:
  row r holds the first `per_class` images of the r-th class in `sorted(set(labels))`, the
  gaps and missing cells white. Returns (mosaic, classes)."""
  classes = sorted(set(int(l) for l in labels))
  _, h, w, c = pixels.shape
  mosaic = np.ones((len(classes) * (h + gap) - gap, per_class * (w + gap) - gap, c), pixels.dtype)
  for row, cls in enumerate(classes):
    for col, i in enumerate(np.flatnonzero(labels == cls)[:per_class]):
      mosaic[row * (h + gap):row * (h + gap) + h, col * (w + gap):col * (w + gap) + w] = pixels[i]
  return mosaic, classes


def save_sample_grid(path: str, images: np.ndarray, labels: np.ndarray, normalization,
                     title: str = '', per_class: int = 8) -> None:
  """PNG grid: one row per class (labelled), `per_class` images each; images (N, H, W, C)
  in the teacher's normalized space, de-normalized for display with its (mean, std)
  `normalization` (or a dataset name for that dataset's conventional statistics). One image
  (`sample_mosaic`) in one axes: ~0.1 s, where an axes per image took 2.5 s."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  mean, std = data.normalization(normalization) if isinstance(normalization, str) else normalization
  pixels = np.clip(images * np.asarray(std) + np.asarray(mean), 0.0, 1.0)
  gap = 1
  mosaic, classes = sample_mosaic(pixels, np.asarray(labels), per_class, gap)
  h = images.shape[1]
  fig, ax = plt.subplots(figsize=(per_class * 0.7, len(classes) * 0.7 + 0.4))
  ax.imshow(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic, cmap='gray', vmin=0, vmax=1,
            interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([(h + gap) * row + (h - 1) / 2 for row in range(len(classes))],
                [str(c) for c in classes], fontsize=8)
  ax.tick_params(length=0)
  for side in ax.spines.values():
    side.set_visible(False)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def subset_key(metric: str, subset: str) -> str:
  """'student_top1_final' of the whole split (subset ''), 'student_top1_final_report' of a subset."""
  return f'{metric}_{subset}' if subset else metric

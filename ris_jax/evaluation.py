"""Top-1 accuracy over a whole real split, and the labelled grid of synthetic images."""
from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ris_jax import data, distributed


@functools.lru_cache(maxsize=32)
def _counter(module):
  """Jitted (correct, counted) of a batch, one per module, so evaluations do not recompile:
  Σ mask·[argmax module.apply(v, x) = y] and Σ mask, replicated on every device."""
  def count(variables, images, labels, mask):
    hit = (jnp.argmax(module.apply(variables, images), -1) == labels) & mask
    return jnp.stack([jnp.sum(hit), jnp.sum(mask)])
  return jax.jit(count, out_shardings=distributed.replicated())


def correct_and_total(module, variables, dataset: str, split: str = 'test',
                      batch_size: int = 500, data_dir=None, normalization=None) -> Tuple[int, int]:
  """(correct top-1 predictions, examples) of `module.apply(variables, x)` over every example
  of the split, data-parallel over every device of every process. `batch_size` is the global
  batch: each of P processes reads ⌈batch_size / P⌉ (rounded up to its device count) of its
  examples i, i + P, … per batch, padded (masked) so that all run the same number of equally
  shaped batches; each example is counted once. `normalization`: the teacher's (mean, std)."""
  count = _counter(module)
  variables = distributed.replicate(variables)
  local = distributed.local_batch_size(batch_size)
  totals = np.zeros(2, np.int64)
  for batch in data.eval_batches(dataset, split, local, data_dir, pad=True,
                                 normalization=normalization):
    batch = distributed.shard_batch(batch)
    totals += distributed.to_host(count(variables, batch['image'], batch['label'], batch['mask']))
  return int(totals[0]), int(totals[1])


def accuracy(module, variables, dataset: str, split: str = 'test', batch_size: int = 500,
             data_dir=None, normalization=None) -> float:
  """Top-1 (%) of `module.apply(variables, x)` on every example of the split, its images
  normalized with `normalization` (the teacher's (mean, std); default the dataset's)
  (`correct_and_total`)."""
  correct, total = correct_and_total(module, variables, dataset, split, batch_size, data_dir,
                                     normalization)
  return 100.0 * correct / max(total, 1)


def split_accuracy(config, spec, module, variables) -> float:
  """`accuracy` on the evaluation split of `config.data`, normalized as the teacher `spec` expects."""
  d = config.data
  return accuracy(module, variables, d.dataset, d.split, d.eval_batch_size, d.get('data_dir'),
                  spec.normalization)


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

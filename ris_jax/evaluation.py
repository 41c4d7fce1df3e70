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


def save_sample_grid(path: str, images: np.ndarray, labels: np.ndarray, normalization,
                     title: str = '', per_class: int = 8) -> None:
  """PNG grid: one row per class (labelled), `per_class` images each; images (N, H, W, C)
  in the teacher's normalized space, de-normalized for display with its (mean, std)
  `normalization` (or a dataset name for that dataset's conventional statistics)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  mean, std = data.normalization(normalization) if isinstance(normalization, str) else normalization
  pixels = np.clip(images * np.asarray(std) + np.asarray(mean), 0.0, 1.0)
  classes = sorted(set(int(l) for l in labels))
  fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.7, len(classes) * 0.7),
                           squeeze=False)
  for row, c in enumerate(classes):
    idx = np.flatnonzero(labels == c)[:per_class]
    for col in range(per_class):
      ax = axes[row, col]
      ax.set_xticks([]), ax.set_yticks([])
      if col < len(idx):
        img = pixels[idx[col]]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap='gray', vmin=0, vmax=1)
      if col == 0:
        ax.set_ylabel(str(c), rotation=0, labelpad=10, fontsize=8)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)

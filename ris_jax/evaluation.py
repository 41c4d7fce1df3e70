"""Top-1 accuracy over a whole real split, and the labelled grid of synthetic images."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ris_jax import data


@functools.lru_cache(maxsize=32)
def _predictor(module):
  """Jitted argmax of `module.apply`, one per module, so evaluations do not recompile."""
  return jax.jit(lambda v, x: jnp.argmax(module.apply(v, x), -1))


def accuracy(module, variables, dataset: str, split: str = 'test', batch_size: int = 500,
             data_dir=None, normalization=None) -> float:
  """Top-1 (%) of `module.apply(variables, x)` on every example of the split, its images
  normalized with `normalization` (the teacher's (mean, std); default the dataset's); each
  host evaluates its shard and the counts are summed over hosts."""
  predict = _predictor(module)
  counts = np.zeros(2, np.int64)
  for batch in data.eval_batches(dataset, split, batch_size, data_dir,
                                 normalization=normalization):
    counts += (int(np.sum(np.asarray(predict(variables, batch['image'])) == batch['label'])),
               len(batch['label']))
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    counts = np.asarray(multihost_utils.process_allgather(counts)).reshape(-1, 2).sum(0)
  return 100.0 * counts[0] / max(counts[1], 1)


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

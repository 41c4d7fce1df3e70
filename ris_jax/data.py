"""Datasets as dicts of arrays: {"image": float32 NHWC normalized, "label": int32}.

In-memory datasets (`digits`) are loaded whole by `load_arrays`; `eval_batches` yields
batches of any dataset covering each example of the split exactly once.
"""
from __future__ import annotations

import functools
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

from ris_jax.errors import UserError

# Per-channel (mean, std) of each dataset's teacher input normalization.
NORMALIZATION = {
    'digits': ((0.3054,), (0.3190,)),  # pixel/16, bilinear 16×16, digits train split
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4867, 0.4408), (0.2675, 0.2557, 0.2761)),
    'imagenet2012': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

DIGITS_SPLITS = ('train', 'val', 'test')


def normalize(images01: np.ndarray, dataset: str) -> np.ndarray:
  mean, std = NORMALIZATION[dataset]
  return ((images01 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _digits(split: str) -> Tuple[np.ndarray, np.ndarray]:
  """sklearn's 1,797 real 8×8 digits; fixed stratified split: test = 20% (360), train = the
  other 1,437; val = a stratified 20% (288) of train, for tuning. Bilinear 16×16, 1 channel."""
  import jax
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  digits = load_digits()
  x = digits.images.astype(np.float32) / 16.0
  y = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
  if split == 'val':
    _, x_train, _, y_train = train_test_split(x_train, y_train, test_size=0.2, stratify=y_train,
                                              random_state=0)
  x, y = (x_test, y_test) if split == 'test' else (x_train, y_train)
  x = np.asarray(jax.image.resize(x, (len(x), 16, 16), 'bilinear'))
  return normalize(x[..., None], 'digits'), y


def load_arrays(dataset: str, split: str, data_dir: Optional[str] = None) -> Dict[str, np.ndarray]:
  """A whole in-memory split as {"image": (N, H, W, C) float32 normalized, "label": (N,) int32}."""
  if dataset == 'digits':
    if split not in DIGITS_SPLITS:
      raise UserError(f"unknown split '{split}' of digits; known: {', '.join(DIGITS_SPLITS)}")
    images, labels = _digits(split)
    return {'image': images, 'label': labels}
  raise UserError(f"dataset '{dataset}' cannot be loaded in memory; known: digits")


def eval_batches(dataset: str, split: str, batch_size: int, data_dir: Optional[str] = None,
                 process_index: int = 0, process_count: int = 1) -> Iterator[Dict[str, np.ndarray]]:
  """Batches covering every example of the split exactly once (last batch may be smaller);
  with several processes, process i gets examples i, i + n, i + 2n, …"""
  arrays = load_arrays(dataset, split, data_dir)
  idx = np.arange(len(arrays['label']))[process_index::process_count]
  for start in range(0, len(idx), batch_size):
    sel = idx[start:start + batch_size]
    yield {k: v[sel] for k, v in arrays.items()}

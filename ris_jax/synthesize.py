"""Calibration sets for other runtimes: N images from a trained run's generator, as pixels.

    python -m ris_jax.synthesize --workdir RUN --num 1000 --out calib.npz [--seed 0]
        [--format npz|png] [--step K] [--overwrite]

The generator of RUN (any training run: RIS, GDFQ, DFKD; its final checkpoint, or `--step`)
draws `num` images, labels balanced over the classes (0, 1, …, C−1, 0, 1, …), in batches of the
run's training batch size (its BN normalizes with the statistics of such a batch, as in
training). They are mapped from the teacher's normalized input space back to pixels,
p = clip(round(255·(x·std + mean)), 0, 255), with the teacher's (mean, std).

  npz   `images` (N, H, W, C) uint8 and `labels` (N,) int64, the drawn class, as in
        `cifar10_test.npz`; plus `soft_labels` (N, C) float32 when the method conditions on soft
        labels. Usable by ris_jax's own PTQ: `--config.ptq.source=npz:PATH`.
  png   a class-per-folder tree `PATH/<class>/<index>.png`, class folders named 000, 001, … so
        that torchvision's `ImageFolder` maps folder k to class k.
"""
from __future__ import annotations

import argparse
import os
import shutil
from typing import Dict, Optional

import jax
import numpy as np
from tqdm import tqdm

from ris_jax.errors import UserError, cli_entry

FORMATS = ('npz', 'png')


def to_uint8(images: np.ndarray, normalization) -> np.ndarray:
  """Images (N, H, W, C) in the teacher's normalized space → uint8 pixels:
  clip(round(255·(x·std + mean)), 0, 255)."""
  mean, std = (np.asarray(s, np.float32) for s in normalization)
  return np.clip(np.round(255.0 * (np.asarray(images) * std + mean)), 0, 255).astype(np.uint8)


def synthesize(workdir: str, num: int, seed: int = 0, step: Optional[int] = None,
               progress: bool = True) -> Dict[str, np.ndarray]:
  """{'images' (N, H, W, C) uint8, 'labels' (N,) int64[, 'soft_labels' (N, C) float32]} from
  the generator of the run in `workdir` (see the module docstring)."""
  from ris_jax import loop, ptq, train
  from ris_jax.models import get_arch
  if num < 1:
    raise UserError(f'--num {num}: give the number of images to make (at least 1)')
  models, state = ptq.load_generator(workdir, step)
  config = loop.run_config(workdir)
  normalization = get_arch(config.teacher.arch).normalization
  batch = int(config.train.batch_size)
  generate = jax.jit(lambda labels, key: train.generate_with_targets(models, state, labels, key))
  labels = np.arange(num) % models.num_classes
  key = jax.random.PRNGKey(seed)
  images, targets = [], []
  for start in tqdm(range(0, num, batch), desc='synthesize', unit='batch', disable=not progress):
    chunk = labels[start:start + batch]
    padded = np.resize(chunk, batch)  # a full batch, as in training; the extra rows dropped
    x, y = generate(padded, jax.random.fold_in(key, start // batch))
    images.append(to_uint8(np.asarray(x)[:len(chunk)], normalization))
    targets.append(np.asarray(y, np.float32)[:len(chunk)])
  out = {'images': np.concatenate(images), 'labels': labels.astype(np.int64)}
  if models.loss.soft_labels:
    out['soft_labels'] = np.concatenate(targets)
  return out


def write(arrays: Dict[str, np.ndarray], out: str, fmt: str) -> None:
  """Writes `arrays` to `out` as an npz archive or a class-per-folder PNG tree."""
  from PIL import Image
  if fmt == 'npz':
    np.savez(out, **arrays)
    return
  num_classes = int(arrays['labels'].max()) + 1
  digits = max(3, len(str(num_classes - 1)))
  for i, (image, label) in enumerate(zip(arrays['images'], arrays['labels'])):
    folder = os.path.join(out, f'{int(label):0{digits}d}')
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
        os.path.join(folder, f'{i:06d}.png'))


def output_path(out: str, fmt: str) -> str:
  """The path written: np.savez adds '.npz' to a name without it."""
  return out if fmt == 'png' or out.endswith('.npz') else out + '.npz'


@cli_entry
def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog='python -m ris_jax.synthesize',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='a training run (python -m ris_jax.main)')
  parser.add_argument('--num', type=int, required=True, help='number of images')
  parser.add_argument('--out', required=True, help='an .npz file, or a directory for --format png')
  parser.add_argument('--format', default='npz', choices=FORMATS)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: the last)')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing --out')
  args = parser.parse_args(argv)
  out = output_path(args.out, args.format)
  if os.path.exists(out) and not args.overwrite:
    raise UserError(f'{out} exists; give another --out or --overwrite to replace it')
  arrays = synthesize(args.workdir, args.num, args.seed, args.step)
  if os.path.isdir(out):
    shutil.rmtree(out)
  elif os.path.exists(out):
    os.remove(out)
  write(arrays, out, args.format)
  counts = np.bincount(arrays['labels'])
  print(f"wrote {len(arrays['labels'])} images {arrays['images'].shape[1:]} to {out} "
        f'({len(counts)} classes, {counts.min()}–{counts.max()} each)')


if __name__ == '__main__':
  main()

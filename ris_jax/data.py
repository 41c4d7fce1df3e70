"""Datasets as dicts of arrays: {"image": float32 NHWC normalized, "label": int32}.

In-memory datasets (`digits`, `fashion_mnist`, and CIFAR through TFDS) are loaded whole by
`load_arrays`; `eval_batches` yields batches of any dataset covering each example of the
split exactly once, sharded over processes.

Datasets:
  digits          sklearn's 8×8 digits, bilinear 16×16×1 (train / val / test).
  fashion_mnist   Debian's `dataset-fashion-mnist` idx files, 28×28×1
                  (train / val / test / train_full).
  cifar10/100     TFDS array_record, 32×32×3 (train / test).
  imagenet2012    TFDS array_record, resize 256 → center crop 224 (train / validation).
  folder:<dir>    ImageNet-style `<dir>/<class>/*.JPEG|png`, ImageNet preprocessing.
  npz:<path>      a NumPy archive with `images` (N, H, W, C) uint8 and `labels` (N,) integers,
                  e.g. the CIFAR-10 test set; split `all` or `all[a:b]` (rows a..b−1).
See docs/data.md for preparing them.

Normalization belongs to the teacher: every reader takes `normalization`, a per-channel
(mean, std) on 0..1 pixels (`ArchSpec.normalization`); without it, a dataset's conventional
statistics (`NORMALIZATION`) apply (npz archives have none and need it).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ris_jax.errors import UserError, short_list

# Per-channel (mean, std) conventionally used with each dataset (the default normalization).
NORMALIZATION = {
    'digits': ((0.3054,), (0.3190,)),  # pixel/16, bilinear 16×16, digits train split
    'fashion_mnist': ((0.2861,), (0.3531,)),  # pixel/255, fashion_mnist 'train' (54,000)
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4867, 0.4408), (0.2675, 0.2557, 0.2761)),
    'imagenet2012': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

DIGITS_SPLITS = ('train', 'val', 'test')
FASHION_MNIST_SPLITS = ('train', 'val', 'test', 'train_full')
# TFDS datasets: valid split names (TFDS slicing such as 'test[:10%]' is allowed on them).
TFDS_SPLITS = {
    'cifar10': ('train', 'test'),
    'cifar100': ('train', 'test'),
    'imagenet2012': ('train', 'validation'),  # TFDS's 'test' has no labels
}
SPLIT_ALIASES = {'imagenet2012': {'val': 'validation'}}
FOLDER_PREFIX = 'folder:'
NPZ_PREFIX = 'npz:'
KNOWN_DATASETS = ('digits', 'fashion_mnist', 'cifar10', 'cifar100', 'imagenet2012',
                  FOLDER_PREFIX + '<dir>', NPZ_PREFIX + '<path>')
IMAGE_SIZE = {'digits': (16, 16), 'fashion_mnist': (28, 28), 'cifar10': (32, 32),
              'cifar100': (32, 32), 'imagenet2012': (224, 224)}

IMAGENET_RESIZE = 256  # shorter side, before the center crop
IMAGENET_CROP = 224
FOLDER_EXTENSIONS = ('.jpeg', '.jpg', '.png')

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_INSTALL = 'apt-get update && apt-get install -y dataset-fashion-mnist'
# sha256 of the decompressed idx files (identical to upstream's; independent of gzip level).
FASHION_MNIST_FILES = {
    'train-images-idx3-ubyte.gz':
        'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
    'train-labels-idx1-ubyte.gz':
        'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9',
    't10k-images-idx3-ubyte.gz':
        '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b',
    't10k-labels-idx1-ubyte.gz':
        '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34',
}
FASHION_MNIST_VAL_PER_CLASS = 600  # 'val' = 6,000 of the 60,000 training images


def _base(dataset: str) -> str:
  """The dataset whose constants apply: 'folder:<dir>' → 'imagenet2012'."""
  base = 'imagenet2012' if dataset.startswith(FOLDER_PREFIX) else dataset
  if dataset.startswith(NPZ_PREFIX):
    raise UserError(f"{dataset} has no conventional normalization or image size: give the "
                    "teacher's (ArchSpec.normalization)")
  if base not in NORMALIZATION:
    raise _unknown_dataset(dataset)
  return base


Stats = Tuple[Tuple[float, ...], Tuple[float, ...]]


def normalization(dataset: str) -> Stats:
  """Per-channel (mean (C,), std (C,)) conventionally used with `dataset` (folders: ImageNet's)."""
  return NORMALIZATION[_base(dataset)]


def image_size(dataset: str) -> Tuple[int, int]:
  """(H, W) of the dataset's batches (folders: ImageNet's 224×224)."""
  return IMAGE_SIZE[_base(dataset)]


def _stats(norm) -> Stats:
  """`norm` as (mean, std): a (mean, std) pair, or a dataset name for its conventional ones."""
  return normalization(norm) if isinstance(norm, str) else norm


def normalize(images01: np.ndarray, norm) -> np.ndarray:
  """(…, C) images in [0, 1] → float32 (x − mean) / std; `norm` is (mean, std) or a dataset name."""
  mean, std = _stats(norm)
  return ((images01 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)


def _normalize_uint8(images: np.ndarray, norm) -> np.ndarray:
  """(…, C) uint8 (or float in [0, 1]) → float32 normalized."""
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / np.float32(255.0)
  return normalize(images, norm)


def check_image_size(batch: Any, expected_hw: Sequence[int], what: str = 'the model') -> None:
  """Raises a UserError unless batch["image"] (or an array) is (N, H, W, C) with (H, W) ==
  expected_hw."""
  images = batch['image'] if isinstance(batch, dict) else batch
  shape = tuple(np.shape(images))
  expected_hw = tuple(int(s) for s in expected_hw)
  if len(shape) != 4 or shape[1:3] != expected_hw:
    hw = 'x'.join(map(str, shape[1:3])) if len(shape) == 4 else f'shape {shape}'
    raise UserError(
        f"images are {hw} but {what} expects {'x'.join(map(str, expected_hw))} "
        f"(NHWC batches); pick the dataset matching the arch: "
        + ', '.join(f"{d} {'x'.join(map(str, s))}" for d, s in IMAGE_SIZE.items()))


def _check_split(dataset: str, split: str, valid: Sequence[str],
                 allow_slices: bool = False) -> str:
  """Returns the canonical split name (aliases resolved) or raises a UserError listing `valid`."""
  base, rest = split, ''
  if allow_slices:
    m = re.fullmatch(r'(\w+)(\[.*\])?', split)
    if m:
      base, rest = m.group(1), m.group(2) or ''
  base = SPLIT_ALIASES.get(dataset, {}).get(base, base)
  if base not in valid:
    raise UserError(f"unknown split '{split}' of {dataset}; known: {', '.join(valid)}")
  return base + rest


def _unknown_dataset(dataset: str) -> UserError:
  return UserError(f"unknown dataset '{dataset}'; known: {', '.join(KNOWN_DATASETS)}")


# ----------------------------------------------------------------------------- digits

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
  return x[..., None], y  # in [0, 1]; normalized by the reader


# ---------------------------------------------------------------------- fashion_mnist

def _read_idx(path: str, expected_sha256: str, expected_shape: Tuple[int, ...]) -> np.ndarray:
  """A gzipped idx file → uint8 array of `expected_shape`, after checking the sha256 of its
  decompressed bytes."""
  try:
    with gzip.open(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise UserError(f'cannot read {path} ({e}); reinstall it: {FASHION_MNIST_INSTALL} '
                    '(or apt-get install --reinstall dataset-fashion-mnist)') from None
  digest = hashlib.sha256(raw).hexdigest()
  if digest != expected_sha256:
    raise UserError(f'checksum mismatch for {path}: sha256 of its contents is {digest}, '
                    f'expected {expected_sha256}; reinstall it: '
                    'apt-get install --reinstall dataset-fashion-mnist')
  ndim = raw[3]
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  if raw[2] != 0x08 or dims != expected_shape:  # unreachable when the checksum matched
    raise UserError(f'{path}: idx header says uint8={raw[2] == 8} shape {dims}, '
                    f'expected uint8 {expected_shape}')
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_dir(data_dir: Optional[str]) -> str:
  """The directory holding the four idx .gz files: data_dir or data_dir/fashion-mnist."""
  candidates = ([data_dir, os.path.join(data_dir, 'fashion-mnist')] if data_dir
                else [FASHION_MNIST_DIR])
  for d in candidates:
    if all(os.path.isfile(os.path.join(d, f)) for f in FASHION_MNIST_FILES):
      return d
  missing = [f for f in FASHION_MNIST_FILES if not os.path.isfile(os.path.join(candidates[0], f))]
  raise UserError(
      f"fashion_mnist is not prepared: looked in {' and '.join(candidates)} for "
      f"{', '.join(missing)}; install Debian's package (as root): {FASHION_MNIST_INSTALL} "
      f"(it puts them in {FASHION_MNIST_DIR}, the default when data_dir is not set)")


@functools.lru_cache(maxsize=2)
def _fashion_raw(directory: str) -> Dict[str, np.ndarray]:
  """All 70,000 images as uint8, checksummed: {"train_x": (60000, 28, 28), "train_y": (60000,),
  "test_x": (10000, 28, 28), "test_y": (10000,)}."""
  files = {k: os.path.join(directory, f) for k, f in zip(
      ('train_x', 'train_y', 'test_x', 'test_y'), FASHION_MNIST_FILES)}
  shapes = {'train_x': (60000, 28, 28), 'train_y': (60000,),
            'test_x': (10000, 28, 28), 'test_y': (10000,)}
  out = {k: _read_idx(files[k], FASHION_MNIST_FILES[os.path.basename(files[k])], shapes[k])
         for k in files}
  for k in ('train_y', 'test_y'):
    counts = np.bincount(out[k], minlength=10)
    if len(counts) != 10 or len(set(counts)) != 1:  # unreachable when the checksum matched
      raise UserError(f'{files[k]}: unexpected label counts {counts.tolist()}')
  return out


def _stratified_pick(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """Sorted indices of `per_class` examples of each class, drawn with RandomState(seed)."""
  rs = np.random.RandomState(seed)
  picks = [rs.permutation(np.flatnonzero(labels == c))[:per_class]
           for c in range(int(labels.max()) + 1)]
  return np.sort(np.concatenate(picks))


def _fashion_split(split: str, data_dir: Optional[str]) -> Tuple[np.ndarray, np.ndarray]:
  """uint8 images (N, 28, 28, 1) and int32 labels (N,) of a fashion_mnist split."""
  _check_split('fashion_mnist', split, FASHION_MNIST_SPLITS)
  raw = _fashion_raw(_fashion_dir(data_dir))
  if split == 'test':
    x, y = raw['test_x'], raw['test_y']
  else:
    x, y = raw['train_x'], raw['train_y']
    if split != 'train_full':
      val = _stratified_pick(y, FASHION_MNIST_VAL_PER_CLASS, seed=0)
      keep = val if split == 'val' else np.setdiff1d(np.arange(len(y)), val)
      x, y = x[keep], y[keep]
  return x[..., None], y.astype(np.int32)


# ----------------------------------------------------------- ImageNet-style preprocessing

def resize_center_crop(image: np.ndarray, resize: int = IMAGENET_RESIZE,
                       crop: int = IMAGENET_CROP) -> np.ndarray:
  """(H, W, 3) uint8 → (crop, crop, 3) uint8: shorter side to `resize` (PIL bilinear, as
  torchvision's Resize), then the center crop (torchvision's rounding)."""
  from PIL import Image
  img = Image.fromarray(np.asarray(image, np.uint8))
  return _resize_center_crop_pil(img, resize, crop)


def _resize_center_crop_pil(img, resize: int = IMAGENET_RESIZE,
                            crop: int = IMAGENET_CROP) -> np.ndarray:
  """A PIL image (any mode) → (crop, crop, 3) uint8 RGB, as `resize_center_crop`."""
  from PIL import Image
  if img.mode != 'RGB':
    img = img.convert('RGB')
  w, h = img.size
  if w <= h:
    size = (resize, int(resize * h / w))
  else:
    size = (int(resize * w / h), resize)
  if size != (w, h):
    img = img.resize(size, Image.Resampling.BILINEAR)
  w, h = img.size
  if w < crop or h < crop:
    raise UserError(f'cannot center-crop {crop}x{crop} from a {h}x{w} image')
  top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
  return np.asarray(img.crop((left, top, left + crop, top + crop)), np.uint8)


# ------------------------------------------------------------------------------ sources
# A source is (len, load(i) → (uint8 image (H, W, C), int label)), read with a thread pool.

def _tfds_source(name: str, split: str, data_dir: Optional[str]):
  """tfds.data_source(name, split) (array_record, no TensorFlow), never downloading; checks that
  the first record reads."""
  import tensorflow_datasets as tfds
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    if len(source):
      source[0]  # array_record opens its files lazily: fail here, not in a reader thread
    return source
  except (NotImplementedError, ValueError, RuntimeError, OSError, AssertionError, KeyError) as e:
    error = e
  builder = tfds.builder(name, data_dir=data_dir)
  root = os.fspath(builder.data_dir_root)
  build = f'tfds build {name} --file_format=array_record --data_dir=DIR'
  if name == 'imagenet2012':
    build = ('put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in DIR/downloads/manual/, '
             'then ' + build)
  how = (f'prepare it once on a machine with internet: `pip install tensorflow-cpu`, {build}; '
         f'then copy DIR/{name} to {root}/{name} or pass data_dir=DIR (see docs/data.md)')
  if not builder.is_prepared():
    raise UserError(f"dataset '{name}' is not prepared in data_dir {root} "
                    f'(looked for {builder.data_dir}); {how}') from None
  fmt = getattr(builder.info.file_format, 'value', builder.info.file_format)
  if fmt and fmt != 'array_record':
    raise UserError(f"dataset '{name}' in {builder.data_dir} was built as {fmt}, which needs "
                    f'TensorFlow to read; rebuild it as array_record: {how}') from None
  prepared = list(builder.info.splits)
  if split.split('[')[0] not in prepared:
    raise UserError(f"split '{split}' of '{name}' is not prepared in {builder.data_dir} "
                    f"(prepared: {', '.join(prepared) or 'none'}); {how}") from None
  raise UserError(f"cannot read split '{split}' of '{name}' in {builder.data_dir} "
                  f'({str(error).splitlines()[0]}): incomplete or damaged? {how}') from None


def _tfds_loader(name: str, source):
  """load(i) for a TFDS source: CIFAR as is, ImageNet resized and center-cropped."""
  def load(i):
    ex = source[int(i)]
    image = np.asarray(ex['image'])
    if name == 'imagenet2012':
      image = resize_center_crop(image)
    return image, int(ex['label'])
  return load


def folder_examples(root: str) -> Tuple[List[str], np.ndarray, List[str]]:
  """Files of an ImageNet-style folder `root/<class>/*.JPEG|jpg|png`: (paths (N,), labels (N,)
  int32, class names); class index = position in the sorted folder names."""
  if not os.path.isdir(root):
    raise UserError(f'image folder {root} does not exist (expected {root}/<class>/*.JPEG)')
  classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
  paths, labels = [], []
  for c, name in enumerate(classes):
    files = sorted(f for f in os.listdir(os.path.join(root, name))
                   if f.lower().endswith(FOLDER_EXTENSIONS))
    paths += [os.path.join(root, name, f) for f in files]
    labels += [c] * len(files)
  if not paths:
    raise UserError(f'no images in {root}: expected {root}/<class>/*.JPEG|jpg|png '
                    f"(class folders found: {short_list(classes) or 'none'})")
  return paths, np.asarray(labels, np.int32), classes


def _folder_loader(paths: Sequence[str], labels: np.ndarray):
  def load(i):
    from PIL import Image
    try:
      with Image.open(paths[i]) as img:
        return _resize_center_crop_pil(img), int(labels[i])
    except OSError as e:
      raise UserError(f'cannot read image {paths[i]}: {e}') from None
  return load


# ------------------------------------------------------------------------------ batching

def _process(process_index: Optional[int], process_count: Optional[int]) -> Tuple[int, int]:
  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count})')
  return process_index, process_count


def _check_batch_size(batch_size: int) -> None:
  if int(batch_size) != batch_size or batch_size <= 0:
    raise UserError(f'batch_size must be a positive integer, got {batch_size}')


def _index_batches(n: int, batch_size: int, process_index: int, process_count: int,
                   pad: bool) -> List[np.ndarray]:
  """This process's examples i, i + P, i + 2P, … cut into batches (the last may be smaller);
  with `pad`, every process gets the same number of batches (some possibly empty)."""
  idx = np.arange(n)[process_index::process_count]
  per_process = -(-n // process_count)
  num = -(-(per_process if pad else len(idx)) // batch_size)
  return [idx[b * batch_size:(b + 1) * batch_size] for b in range(num)]


def _emit(images: np.ndarray, labels: np.ndarray, batch_size: int, pad: bool,
          index: np.ndarray) -> Dict[str, np.ndarray]:
  """{"image", "label"}; with `pad`, zero images / label −1 up to batch_size, "mask" (B,)
  bool marking the real examples and "index" (B,) int32, each example's position in the split
  (−1 for padding)."""
  batch = {'image': images, 'label': labels.astype(np.int32)}
  if pad:
    k = len(labels)
    fill = lambda a, value: np.concatenate([a, np.full(batch_size - k, value, np.int32)])
    batch = {'image': np.concatenate([images, np.zeros((batch_size - k,) + images.shape[1:],
                                                       images.dtype)]),
             'label': fill(batch['label'], -1), 'mask': np.arange(batch_size) < k,
             'index': fill(np.asarray(index, np.int32), -1)}
  return batch


def _source_batches(n: int, load, norm, image_shape: Tuple[int, ...], batch_size: int,
                    process_index: int, process_count: int, pad: bool,
                    num_workers: Optional[int]) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of load(i) → (uint8 (H, W, C), label), read by a thread pool one batch ahead."""
  from concurrent.futures import ThreadPoolExecutor
  batches = _index_batches(n, batch_size, process_index, process_count, pad)
  workers = num_workers or min(16, os.cpu_count() or 1)
  with ThreadPoolExecutor(workers) as pool:
    submit = lambda sel: [pool.submit(load, i) for i in sel]
    pending = submit(batches[0]) if batches else []
    for b in range(len(batches)):
      current, pending = pending, (submit(batches[b + 1]) if b + 1 < len(batches) else [])
      examples = [f.result() for f in current]
      images = (np.stack([e[0] for e in examples]) if examples
                else np.zeros((0,) + image_shape, np.uint8))
      if images.ndim == 3:
        images = images[..., None]
      labels = np.asarray([e[1] for e in examples], np.int32)
      yield _emit(_normalize_uint8(images, norm), labels, batch_size, pad, batches[b])


def _array_batches(images: np.ndarray, labels: np.ndarray, norm, batch_size: int,
                   process_index: int, process_count: int,
                   pad: bool) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of in-memory arrays (uint8, or float in [0, 1]), normalized with `norm` per batch."""
  for sel in _index_batches(len(labels), batch_size, process_index, process_count, pad):
    yield _emit(_normalize_uint8(images[sel], norm), labels[sel], batch_size, pad, sel)


# -------------------------------------------------------------------------------- npz

NPZ_SPLIT = 'all'  # an archive is one split; `all[a:b]` takes rows a..b−1


@functools.lru_cache(maxsize=4)
def _npz_arrays(path: str) -> Tuple[np.ndarray, np.ndarray]:
  """(images (N, H, W, C) uint8, labels (N,) int32) of a NumPy archive, checked."""
  fix = ("expected np.savez(path, images=<(N, H, W, C) uint8>, labels=<(N,) integers>)")
  if not os.path.isfile(path):
    raise UserError(f'npz dataset {path} does not exist; give the path of a NumPy archive '
                    f'({fix}), e.g. --config.data.dataset=npz:/data/cifar10_test.npz')
  try:
    with np.load(path, allow_pickle=False) as archive:
      missing = [k for k in ('images', 'labels') if k not in archive.files]
      if missing:
        raise UserError(f"npz dataset {path} lacks the array(s) {', '.join(missing)} (it holds "
                        f"{', '.join(archive.files) or 'nothing'}); {fix}")
      images, labels = archive['images'], archive['labels']
  except UserError:
    raise
  except Exception as e:  # not a zip, truncated, pickled objects, …
    raise UserError(f'cannot read {path} as a NumPy archive ({type(e).__name__}: '
                    f'{" ".join(str(e).split())[:120]}); {fix}') from None
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise UserError(f"npz dataset {path}: 'images' is {images.dtype} {images.shape}, expected "
                    'uint8 (N, H, W, C) with C 1 or 3 (pixels 0..255, HWC, RGB)')
  if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),):
    raise UserError(f"npz dataset {path}: 'labels' is {labels.dtype} {labels.shape}, expected "
                    f'integers of shape ({len(images)},), one class index per image')
  if len(labels) and labels.min() < 0:
    raise UserError(f"npz dataset {path}: 'labels' has negative values (min {labels.min()}); "
                    'labels must be class indices 0..C−1')
  return images, labels.astype(np.int32)


def _npz_split(dataset: str, split: str, num_classes: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
  """The rows of an npz dataset that `split` ('all' or 'all[a:b]') selects."""
  images, labels = _npz_arrays(os.path.expanduser(dataset[len(NPZ_PREFIX):]))
  m = re.fullmatch(NPZ_SPLIT + r'(?:\[(-?\d*):(-?\d*)\])?', split)
  if not m:
    raise UserError(f"unknown split '{split}' of {dataset}: an npz archive is one split, "
                    f"'{NPZ_SPLIT}', or '{NPZ_SPLIT}[a:b]' for rows a..b−1 (e.g. {NPZ_SPLIT}[:5000])")
  rows = slice(*(int(g) if g else None for g in m.groups()))
  total = len(labels)
  images, labels = images[rows], labels[rows]
  if not len(labels):
    raise UserError(f"split '{split}' of {dataset} selects no rows (the archive has {total})")
  if num_classes is not None and labels.max() >= num_classes:
    raise UserError(f'{dataset}: labels go up to {labels.max()} but the model has {num_classes} '
                    'classes; give the archive of the dataset the teacher was trained on')
  return images, labels


# --------------------------------------------------------------------------- public API

def load_arrays(dataset: str, split: str, data_dir: Optional[str] = None,
                normalization: Optional[Stats] = None) -> Dict[str, np.ndarray]:
  """A whole in-memory split as {"image": (N, H, W, C) float32 normalized, "label": (N,) int32}:
  digits, fashion_mnist, npz:<path>, cifar10, cifar100 (ImageNet-sized data: use
  `eval_batches`). `normalization`: the teacher's (mean, std); default the dataset's."""
  norm = normalization or dataset
  if dataset == 'digits':
    _check_split(dataset, split, DIGITS_SPLITS)
    images, labels = _digits(split)
    return {'image': normalize(images, norm), 'label': labels}
  if dataset == 'fashion_mnist':
    images, labels = _fashion_split(split, data_dir)
    return {'image': _normalize_uint8(images, norm), 'label': labels}
  if dataset.startswith(NPZ_PREFIX):
    images, labels = _npz_split(dataset, split, None)
    return {'image': _normalize_uint8(images, norm), 'label': labels}
  if dataset in ('cifar10', 'cifar100'):
    batches = list(eval_batches(dataset, split, 1024, data_dir, process_index=0, process_count=1,
                                normalization=normalization))
    return {k: np.concatenate([b[k] for b in batches]) for k in ('image', 'label')}
  if dataset == 'imagenet2012' or dataset.startswith(FOLDER_PREFIX):
    raise UserError(f"dataset '{dataset}' is too large to load in memory; use eval_batches")
  raise _unknown_dataset(dataset)


def folder_batches(root: str, batch_size: int, process_index: Optional[int] = None,
                   process_count: Optional[int] = None, pad: bool = False,
                   num_workers: Optional[int] = None, normalization: Optional[Stats] = None
                   ) -> Iterator[Dict[str, np.ndarray]]:
  """Batches of an ImageNet-style folder `root/<class>/*.JPEG|png` (labels = sorted class
  folder index), ImageNet preprocessing: {"image": (B, 224, 224, 3) float32, "label": (B,)}."""
  _check_batch_size(batch_size)
  paths, labels, _ = folder_examples(root)
  process_index, process_count = _process(process_index, process_count)
  return _source_batches(len(paths), _folder_loader(paths, labels),
                         normalization or 'imagenet2012', (IMAGENET_CROP, IMAGENET_CROP, 3), batch_size, process_index,
                         process_count, pad, num_workers)


def eval_batches(dataset: str, split: str, batch_size: int, data_dir: Optional[str] = None,
                 process_index: Optional[int] = None, process_count: Optional[int] = None,
                 pad: bool = False, num_workers: Optional[int] = None,
                 normalization: Optional[Stats] = None, num_classes: Optional[int] = None
                 ) -> Iterator[Dict[str, np.ndarray]]:
  """Batches {"image": (B, H, W, C) float32 normalized, "label": (B,) int32} covering every
  example of the split exactly once (the last batch may be smaller).

  Process i of P (default: jax.process_index() of jax.process_count()) gets examples
  i, i + P, i + 2P, …; sum correct counts over processes for the accuracy. With `pad`, every
  batch has B rows (padding: zero images, label −1) plus "mask" (B,) bool, and all processes
  yield the same number of batches; "index" (B,) then gives each row's position in the split
  (−1 for padding). `dataset` 'folder:<dir>' reads `folder_batches(<dir>)`
  (split unused); 'npz:<path>' a NumPy archive (split 'all' or 'all[a:b]'). `data_dir`: the
  TFDS data dir, or the directory of Fashion-MNIST's idx files. `normalization`: the teacher's
  (mean, std) (default: the dataset's conventional one); `num_classes`: checks npz labels.
  Errors (unknown dataset or split, data not prepared) are raised by the call itself.
  """
  _check_batch_size(batch_size)
  process_index, process_count = _process(process_index, process_count)
  shard = dict(batch_size=batch_size, process_index=process_index, process_count=process_count,
               pad=pad)
  norm = normalization or dataset
  if dataset.startswith(FOLDER_PREFIX):
    return folder_batches(dataset[len(FOLDER_PREFIX):], num_workers=num_workers,
                          normalization=normalization, **shard)
  if dataset.startswith(NPZ_PREFIX):
    images, labels = _npz_split(dataset, split, num_classes)
    return _array_batches(images, labels, norm, **shard)
  if dataset == 'digits':
    _check_split(dataset, split, DIGITS_SPLITS)
    images, labels = _digits(split)
    return _array_batches(images, labels, norm, **shard)
  if dataset == 'fashion_mnist':
    images, labels = _fashion_split(split, data_dir)
    return _array_batches(images, labels, norm, **shard)
  if dataset in TFDS_SPLITS:
    split = _check_split(dataset, split, TFDS_SPLITS[dataset], allow_slices=True)
    source = _tfds_source(dataset, split, data_dir)
    return _source_batches(len(source), _tfds_loader(dataset, source), norm,
                           IMAGE_SIZE[dataset] + (3,), num_workers=num_workers, **shard)
  raise _unknown_dataset(dataset)

"""ris_jax.data: splits, shapes, normalization, exact coverage across hosts, errors.

TFDS datasets run only under `tfds.testing.mock_data` (never a real download); the image folder
is written by the test; Fashion-MNIST reads Debian's `dataset-fashion-mnist` files.
"""
import gzip
import hashlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from ris_jax import data
from ris_jax.errors import UserError

SPLIT = {'cifar10': 'test', 'cifar100': 'test', 'imagenet2012': 'validation'}
HW = {'cifar10': 32, 'cifar100': 32, 'imagenet2012': 224}
NUM_CLASSES = {'cifar10': 10, 'cifar100': 100, 'imagenet2012': 1000}


def _collect(batches):
  batches = list(batches)
  return batches, np.concatenate([b['label'] for b in batches])


def _list_source(examples):
  """An `as_data_source_fn` for mock_data: tfds.data_source returns `examples` (a list)."""
  def as_data_source(self, split=None, **kwargs):
    del self, split, kwargs
    return examples
  return as_data_source


# ------------------------------------------------------------------------------ digits

def test_digits_test_split():
  batches, labels = _collect(data.eval_batches('digits', 'test', 64))
  assert len(labels) == 360 and [len(b['label']) for b in batches] == [64] * 5 + [40]
  assert batches[0]['image'].shape == (64, 16, 16, 1) and batches[0]['image'].dtype == np.float32
  assert labels.dtype == np.int32
  assert np.all(np.abs(np.bincount(labels, minlength=10) - 36) <= 1)


# -------------------------------------------------------------------- TFDS (mocked)

@pytest.mark.parametrize('name', ['cifar10', 'cifar100', 'imagenet2012'])
def test_tfds_shapes_dtypes_and_content(name):
  with tfds.testing.mock_data(num_examples=10):
    batches, labels = _collect(data.eval_batches(name, SPLIT[name], 4, data_dir='/nonexistent'))
    source = tfds.data_source(name, split=SPLIT[name], download=False)
    raw = [np.asarray(source[i]['image']) for i in range(4)]
  assert [len(b['label']) for b in batches] == [4, 4, 2]
  x = batches[0]['image']
  assert x.shape == (4, HW[name], HW[name], 3) and x.dtype == np.float32
  assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < NUM_CLASSES[name]
  if name == 'imagenet2012':
    raw = [data.resize_center_crop(r) for r in raw]
  np.testing.assert_allclose(x, data.normalize(np.stack(raw) / 255.0, name), atol=1e-5)


@pytest.mark.parametrize('name', ['cifar10', 'cifar100', 'imagenet2012'])
def test_constant_image_normalization(name):
  c = np.array([10, 128, 250], np.uint8)
  hw = (32, 32) if name != 'imagenet2012' else (300, 451)
  examples = [{'image': np.broadcast_to(c, hw + (3,)).copy(), 'label': 3}] * 3
  with tfds.testing.mock_data(as_data_source_fn=_list_source(examples)):
    (batch,) = list(data.eval_batches(name, SPLIT[name], 8))
  mean, std = (np.asarray(v, np.float32) for v in data.NORMALIZATION[name])
  expected = (c / np.float32(255.0) - mean) / std
  assert batch['image'].shape == (3, HW[name], HW[name], 3)
  np.testing.assert_allclose(batch['image'], np.broadcast_to(expected, batch['image'].shape),
                             atol=1e-5)


def test_tfds_every_example_once_single_and_two_hosts():
  n, bs = 37, 8  # not a multiple of the batch size
  examples = [{'image': np.full((32, 32, 3), i, np.uint8), 'label': i} for i in range(n)]
  with tfds.testing.mock_data(as_data_source_fn=_list_source(examples)):
    batches, labels = _collect(data.eval_batches('cifar100', 'test', bs))
    assert [len(b['label']) for b in batches] == [8, 8, 8, 8, 5]
    assert sorted(labels.tolist()) == list(range(n))
    per_host = [_collect(data.eval_batches('cifar100', 'test', bs, process_index=p,
                                           process_count=2))[1] for p in range(2)]
    assert set(per_host[0]).isdisjoint(per_host[1])
    assert sorted(np.concatenate(per_host).tolist()) == list(range(n))
    # The image travels with its label.
    first = batches[0]
    value = np.round((first['image'][:, 0, 0, 0] * 0.2675 + 0.5071) * 255).astype(int)
    np.testing.assert_array_equal(value, first['label'])
    # pad=True: same batch count on every host, full batches, mask marks the real examples.
    padded = [list(data.eval_batches('cifar100', 'test', bs, process_index=p, process_count=2,
                                     pad=True)) for p in range(2)]
  assert len(padded[0]) == len(padded[1]) == 3
  for p, host in enumerate(padded):
    assert all(b['image'].shape == (bs, 32, 32, 3) and b['mask'].shape == (bs,) for b in host)
    real = np.concatenate([b['label'][b['mask']] for b in host])
    np.testing.assert_array_equal(real, per_host[p])
    assert np.all(np.concatenate([b['label'][~b['mask']] for b in host]) == -1)


def test_resize_center_crop_geometry():
  # Landscape 300x400 with value = column index · 255/399: shorter side → 256 (256x341),
  # crop columns 58..281 of the resized image.
  h, w = 300, 400
  image = np.broadcast_to((np.arange(w) * 255 / (w - 1))[None, :, None], (h, w, 3))
  out = data.resize_center_crop(np.round(image).astype(np.uint8))
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  src_x = lambda j: (j + 0.5) * w / 341 - 0.5
  assert abs(out[112, 0, 0] - src_x(58) * 255 / (w - 1)) < 1.5
  assert abs(out[112, 223, 0] - src_x(281) * 255 / (w - 1)) < 1.5
  # Portrait: the same along rows.
  out_t = data.resize_center_crop(np.round(image.transpose(1, 0, 2)).astype(np.uint8))
  np.testing.assert_array_equal(out_t, out.transpose(1, 0, 2))


# ---------------------------------------------------------------------------- errors

def test_errors_name_the_fix(tmp_path):
  with pytest.raises(UserError, match=r"unknown dataset 'cifar11'.*cifar10.*folder:"):
    data.eval_batches('cifar11', 'test', 8)
  with pytest.raises(UserError, match=r"unknown split 'validation' of cifar10; known: train, test"):
    data.eval_batches('cifar10', 'validation', 8)
  with pytest.raises(UserError, match=r"split 'test' of imagenet2012; known: train, validation"):
    data.eval_batches('imagenet2012', 'test', 8)
  with pytest.raises(UserError, match=r"unknown split 'tst' of digits"):
    data.load_arrays('digits', 'tst')
  with pytest.raises(UserError, match='batch_size'):
    data.eval_batches('digits', 'test', 0)
  with pytest.raises(UserError, match='too large to load in memory'):
    data.load_arrays('imagenet2012', 'validation')
  # Not prepared: no mock, an empty data_dir, download=False (nothing is fetched).
  with pytest.raises(UserError) as e:
    data.eval_batches('cifar10', 'test', 8, data_dir=str(tmp_path))
  msg = str(e.value)
  assert 'not prepared' in msg and str(tmp_path) in msg
  assert 'tfds build cifar10 --file_format=array_record' in msg and 'tensorflow-cpu' in msg
  with pytest.raises(UserError, match=r'downloads/manual.*tfds build imagenet2012'):
    data.eval_batches('imagenet2012', 'val', 8, data_dir=str(tmp_path))


def _fake_prepared(data_dir, file_format):
  """Writes cifar10's dataset_info.json (split 'test' only) without its data files."""
  b = tfds.builder('cifar10', data_dir=str(data_dir), file_format=file_format)
  template = tfds.core.ShardedFileTemplate(data_dir=b.data_dir, dataset_name='cifar10',
                                           split='test', filetype_suffix=file_format)
  b.info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
      name='test', shard_lengths=[10], num_bytes=100, filename_template=template)]))
  os.makedirs(b.data_dir)
  b.info.write_to_directory(b.data_dir)


def test_errors_for_half_prepared_tfds(tmp_path):
  _fake_prepared(tmp_path / 'tfrecord', 'tfrecord')
  with pytest.raises(UserError, match=r'built as tfrecord, which needs TensorFlow.*array_record'):
    data.eval_batches('cifar10', 'test', 8, data_dir=str(tmp_path / 'tfrecord'))
  _fake_prepared(tmp_path / 'ar', 'array_record')
  with pytest.raises(UserError, match=r"split 'train' of 'cifar10' is not prepared .*: test"):
    data.eval_batches('cifar10', 'train', 8, data_dir=str(tmp_path / 'ar'))
  with pytest.raises(UserError, match=r"cannot read split 'test' of 'cifar10'.*No such file"):
    data.eval_batches('cifar10', 'test', 8, data_dir=str(tmp_path / 'ar'))


def test_normalization_and_image_size_helpers():
  assert data.normalization('folder:/x') == data.NORMALIZATION['imagenet2012']
  assert data.image_size('folder:/x') == (224, 224) and data.image_size('cifar100') == (32, 32)
  assert data.image_size('fashion_mnist') == (28, 28) and data.image_size('digits') == (16, 16)
  with pytest.raises(UserError, match='unknown dataset'):
    data.normalization('mnist')


def test_check_image_size():
  data.check_image_size({'image': np.zeros((2, 32, 32, 3))}, (32, 32))
  with pytest.raises(UserError, match=r'images are 28x28 but resnet20 expects 32x32'):
    data.check_image_size({'image': np.zeros((2, 28, 28, 1))}, (32, 32), what='resnet20')
  with pytest.raises(UserError, match=r'images are shape \(32, 32\)'):
    data.check_image_size(np.zeros((32, 32)), (32, 32))


# ---------------------------------------------------------------------- image folder

def _write_folder(root):
  """3 classes (unsorted names), PNG/JPEG/.JPEG, RGB and grayscale, various sizes; every image
  has the constant value 20·k + 10 for its running number k."""
  specs = [('n03', 'a.png', (300, 260), 'RGB'), ('n01', 'b.JPEG', (240, 500), 'RGB'),
           ('n01', 'c.png', (224, 224), 'L'), ('n02', 'd.jpg', (256, 256), 'RGB'),
           ('n03', 'e.png', (230, 400), 'RGB'), ('n02', 'f.png', (500, 240), 'RGB'),
           ('n01', 'g.jpeg', (260, 300), 'RGB')]
  values = {}
  for k, (cls, name, (h, w), mode) in enumerate(specs):
    os.makedirs(root / cls, exist_ok=True)
    v = 20 * k + 10
    Image.new(mode, (w, h), v if mode == 'L' else (v, v, v)).save(root / cls / name)
    values[v] = {'n01': 0, 'n02': 1, 'n03': 2}[cls]
  (root / 'n02' / 'notes.txt').write_text('not an image')
  return values


def test_image_folder(tmp_path):
  values = _write_folder(tmp_path)
  paths, labels, classes = data.folder_examples(str(tmp_path))
  assert classes == ['n01', 'n02', 'n03'] and len(paths) == 7
  seen = {}
  for p in range(2):
    for b in data.eval_batches(f'folder:{tmp_path}', 'validation', 3, process_index=p,
                               process_count=2):
      assert b['image'].shape[1:] == (224, 224, 3) and b['image'].dtype == np.float32
      # Each image is constant: recover its value, check its label, count it.
      x = b['image'] * np.float32(0.229) + np.float32(0.485)
      for img, label in zip(np.round(x[:, 112, 112, 0] * 255), b['label']):
        v = int(20 * round((img - 10) / 20) + 10)  # JPEG may be off by a little
        assert values[v] == label and v not in seen
        seen[v] = p
  assert sorted(seen) == sorted(values) and set(seen.values()) == {0, 1}


def test_image_folder_constant_and_errors(tmp_path):
  os.makedirs(tmp_path / 'cls')
  Image.new('RGB', (320, 240), (10, 128, 250)).save(tmp_path / 'cls' / 'x.png')
  (batch,) = list(data.folder_batches(str(tmp_path), 8, process_index=0, process_count=1))
  mean, std = (np.asarray(v, np.float32) for v in data.NORMALIZATION['imagenet2012'])
  expected = (np.array([10, 128, 250]) / np.float32(255.0) - mean) / std
  assert batch['image'].shape == (1, 224, 224, 3) and batch['label'].tolist() == [0]
  np.testing.assert_allclose(batch['image'], np.broadcast_to(expected, batch['image'].shape),
                             atol=1e-5)
  with pytest.raises(UserError, match='does not exist'):
    data.eval_batches(f'folder:{tmp_path}/missing', 'val', 8)
  os.makedirs(tmp_path / 'empty' / 'n01')
  with pytest.raises(UserError, match=r'no images in .*empty.*n01'):
    data.folder_batches(str(tmp_path / 'empty'), 8)


# --------------------------------------------------------------------- Fashion-MNIST

# Skipped where the package is missing, except in CI (.ci/run installs it and sets
# RIS_JAX_REQUIRE_FASHION_MNIST=1), where a missing package must fail, not skip.
fashion = pytest.mark.skipif(
    not os.path.isdir(data.FASHION_MNIST_DIR) and not os.environ.get('RIS_JAX_REQUIRE_FASHION_MNIST'),
    reason=f'{data.FASHION_MNIST_DIR} missing: run `{data.FASHION_MNIST_INSTALL}` (as root)')


@fashion
def test_fashion_mnist_checksums_and_counts():
  for f, sha in data.FASHION_MNIST_FILES.items():
    with gzip.open(os.path.join(data.FASHION_MNIST_DIR, f)) as fh:
      assert hashlib.sha256(fh.read()).hexdigest() == sha, f
  counts = {}
  for split in data.FASHION_MNIST_SPLITS:
    arrays = data.load_arrays('fashion_mnist', split)
    assert arrays['image'].shape[1:] == (28, 28, 1) and arrays['image'].dtype == np.float32
    counts[split] = np.bincount(arrays['label'], minlength=10).tolist()
  # 60,000 / 10,000 images, 6,000 / 1,000 per class; 'val' a fixed stratified 6,000 of train.
  assert {k: sum(v) for k, v in counts.items()} == {'train_full': 60000, 'train': 54000,
                                                    'val': 6000, 'test': 10000}
  assert counts == {'train_full': [6000] * 10, 'train': [5400] * 10, 'val': [600] * 10,
                    'test': [1000] * 10}
  # 'val' is fixed: the same 6,000 training indices forever; 'train' is the rest.
  raw = data._fashion_raw(data.FASHION_MNIST_DIR)
  val = data._stratified_pick(raw['train_y'], 600, seed=0)
  assert hashlib.sha256(val.astype('<i8').tobytes()).hexdigest() == (
      '1f0590568c6766c7e57add7d0a10b795628c1d4e643ed263ab5fc8ae964ac665')
  train, _ = data._fashion_split('train', None)
  keep = np.setdiff1d(np.arange(60000), val)
  np.testing.assert_array_equal(train[..., 0], raw['train_x'][keep])
  # The hard-coded normalization is the 'train' split's pixel mean / std.
  x = train.astype(np.float64) / 255
  (mean,), (std,) = data.NORMALIZATION['fashion_mnist']
  assert abs(x.mean() - mean) < 1e-4 and abs(x.std() - std) < 1e-4


@fashion
def test_fashion_mnist_eval_batches():
  batches, labels = _collect(data.eval_batches('fashion_mnist', 'test', 64))
  assert len(batches) == 157 and len(labels) == 10000
  assert batches[0]['image'].shape == (64, 28, 28, 1) and batches[-1]['image'].shape[0] == 16
  np.testing.assert_array_equal(labels, data._fashion_raw(data.FASHION_MNIST_DIR)['test_y'])


@fashion
def test_fashion_mnist_data_dir_missing_and_corrupt(tmp_path):
  with pytest.raises(UserError) as e:
    data.load_arrays('fashion_mnist', 'test', data_dir=str(tmp_path))
  assert str(tmp_path) in str(e.value) and data.FASHION_MNIST_INSTALL in str(e.value)
  # data_dir/fashion-mnist is found too; a modified file fails its checksum.
  d = tmp_path / 'fashion-mnist'
  os.makedirs(d)
  for f in data.FASHION_MNIST_FILES:
    os.symlink(os.path.join(data.FASHION_MNIST_DIR, f), d / f)
  os.remove(d / 't10k-labels-idx1-ubyte.gz')
  with gzip.open(os.path.join(data.FASHION_MNIST_DIR, 't10k-labels-idx1-ubyte.gz')) as fh:
    labels = bytearray(fh.read())
  labels[8] = (labels[8] + 1) % 10
  with gzip.open(d / 't10k-labels-idx1-ubyte.gz', 'wb') as fh:
    fh.write(bytes(labels))
  with pytest.raises(UserError, match=r'checksum mismatch for .*t10k-labels.*--reinstall'):
    data.eval_batches('fashion_mnist', 'test', 64, data_dir=str(tmp_path))

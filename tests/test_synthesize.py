"""Calibration sets from a trained generator (`python -m ris_jax.synthesize`): the npz and PNG
round trips against the generator's own images, torchvision's ImageFolder on the PNG tree,
and the one-line errors."""
import importlib.util
import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from conftest import REPO, subprocess_env
from ris_jax import data, ptq, synthesize, train
from ris_jax.errors import UserError
from ris_jax.models import get_arch

NUM = 37  # not a multiple of the batch (16) nor of the classes


@pytest.fixture(scope='module')
def made(tiny_run, tmp_path_factory):
  """The tiny run's generator as an npz (through the CLI's main, in this process) and as PNGs."""
  out = tmp_path_factory.mktemp('synth')
  run = str(tiny_run[0])
  synthesize.main(['--workdir', run, '--num', str(NUM), '--out', str(out / 'calib'), '--seed', '3'])
  synthesize.main(['--workdir', run, '--num', str(NUM), '--out', str(out / 'tree'), '--seed', '3',
                   '--format', 'png'])
  return run, out


def regenerated(run, num, seed):
  """The generator's images (normalized space) and conditioning for the draws synthesize makes."""
  models, state = ptq.load_generator(run)
  labels = np.arange(num) % models.num_classes
  images, targets = [], []
  generate = jax.jit(lambda l, k: train.generate_with_targets(models, state, l, k))
  for b, start in enumerate(range(0, num, 16)):
    chunk = np.resize(labels[start:start + 16], 16)
    x, y = generate(chunk, jax.random.fold_in(jax.random.PRNGKey(seed), b))
    n = min(16, num - start)
    images.append(np.asarray(x)[:n]), targets.append(np.asarray(y)[:n])
  return np.concatenate(images), np.concatenate(targets), labels


def test_npz_round_trip_gives_back_the_generator_images(made):
  run, out = made
  with np.load(out / 'calib.npz') as f:
    arrays = dict(f)
  assert sorted(arrays) == ['images', 'labels', 'soft_labels']  # RIS: conditioned on soft labels
  assert arrays['images'].dtype == np.uint8 and arrays['images'].shape == (NUM, 16, 16, 1)
  assert arrays['labels'].dtype == np.int64 and np.bincount(arrays['labels']).tolist() == [4] * 7 + [3] * 3
  x, soft, labels = regenerated(run, NUM, 3)
  np.testing.assert_array_equal(arrays['labels'], labels)
  # (another jitted program than synthesize's: the decorrelation steps on η may re-associate
  # float32 sums)
  np.testing.assert_allclose(arrays['soft_labels'], soft, rtol=1e-3)
  np.testing.assert_allclose(arrays['soft_labels'].sum(1), 1.0, rtol=1e-5)
  # Back through the teacher's normalization (as ptq.source=npz reads it): the generator's
  # image, clipped to the pixel range, to within one uint8 step.
  mean, std = (np.asarray(s, np.float32) for s in get_arch('resnet20_digits').normalization)
  back = data.load_arrays(f'npz:{out}/calib.npz', 'all', normalization=(mean, std))['image']
  clipped = np.clip(x, (0 - mean) / std, (1 - mean) / std)
  assert np.abs(back - clipped).max() <= (1 / 255) / std.min() + 1e-6
  assert np.abs(back - clipped).max() > 0  # quantized to 8 bits, not stored as floats
  inside = (x > (0 - mean) / std) & (x < (1 - mean) / std)
  assert inside.mean() > 0.5  # most pixels inside the range (the rest: clipped to 0 or 255)


def test_png_tree_loads_with_imagefolder(made):
  """torchvision's ImageFolder (its pure-Python datasets module: the PyPI wheel's compiled ops
  do not load against the CPU torch, and ris_jax never imports torchvision)."""
  _, out = made
  spec = importlib.util.find_spec('torchvision')
  assert spec is not None, 'torchvision is in requirements.txt (tests only)'
  saved = sys.modules.get('torchvision')
  sys.modules['torchvision'] = package = types.ModuleType('torchvision')
  package.__path__ = [os.path.dirname(spec.origin)]
  package.get_image_backend = lambda: 'PIL'  # torchvision's default image backend
  try:
    from torchvision.datasets.folder import ImageFolder
    tree = ImageFolder(str(out / 'tree'))
    loaded = [(os.path.basename(p), np.asarray(image), cls) for (p, _), (image, cls)
              in zip(tree.samples, tree)]
  finally:
    if saved is None:
      sys.modules.pop('torchvision')
    else:
      sys.modules['torchvision'] = saved
  with np.load(out / 'calib.npz') as f:
    images, labels = f['images'], f['labels']
  assert tree.classes == [f'{c:03d}' for c in range(10)] and len(tree) == NUM
  assert sorted(name for name, _, _ in loaded) == [f'{i:06d}.png' for i in range(NUM)]
  for name, image, cls in loaded:  # RGB, as ImageFolder's PIL loader returns every image
    i = int(name[:-4])
    assert cls == labels[i] and image.shape == (16, 16, 3)
    np.testing.assert_array_equal(image, np.repeat(images[i], 3, axis=-1))


def test_errors_are_one_line(made, tmp_path, tiny_run):
  """Each refusal as the CLI's UserError (main without its exit-2 wrapper, in this process),
  and one as a process: `error: …`, one line, exit 2."""
  run, out = made
  cases = {
      'no run': (['--workdir', str(tmp_path), '--num', '4', '--out', str(tmp_path / 'a')],
                 'holds no ris_jax run'),
      'num < 1': (['--workdir', run, '--num', '0', '--out', str(tmp_path / 'b')], '--num 0'),
      'exists': (['--workdir', run, '--num', '4', '--out', str(out / 'calib.npz')],
                 'exists; give another --out or --overwrite'),
      'step': (['--workdir', run, '--num', '4', '--out', str(tmp_path / 'c'), '--step', '3'],
               'holds no checkpoint of step 3'),
  }
  ptq_run = tmp_path / 'ptq_run'  # a run that trains no generator
  ptq_run.mkdir()
  config = json.loads((tiny_run[0] / 'config.json').read_text())
  (ptq_run / 'config.json').write_text(json.dumps({**config, 'mode': 'ptq'}))
  cases['ptq run'] = (['--workdir', str(ptq_run), '--num', '4', '--out', str(tmp_path / 'd')],
                      "mode 'ptq', which trains no generator")
  for name, (argv, words) in cases.items():
    with pytest.raises(UserError, match=words.replace('(', r'\(')):
      synthesize.main.__wrapped__(argv)
  assert not any(os.path.exists(tmp_path / n) for n in 'abcd')
  proc = subprocess.run([sys.executable, '-m', 'ris_jax.synthesize', *cases['exists'][0]],
                        cwd=REPO, env=subprocess_env(os.environ['JAX_COMPILATION_CACHE_DIR']),
                        capture_output=True, text=True, timeout=300)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: '), proc.stderr

"""CIFAR-10 with the akamaster ResNets (option-A shortcut) and the NumPy-archive test set.

Random-weight tests always run. The tests on the real files of `../shared/data` (pretrained
checkpoints as users download them, the full test set) run wherever that folder exists and
in CI (`.ci/run` sets RIS_JAX_REQUIRE_SHARED_DATA=1), where a missing folder fails instead of
skipping, as the Fashion-MNIST tests do.
"""
import dataclasses
import hashlib
import os

import jax
import numpy as np
import pytest
import torch

from ris_jax import convert, data, evaluation, export, student
from ris_jax.errors import UserError
from ris_jax.models import IMAGENET_STATS, get_arch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), 'shared', 'data')
FILES = {'cifar10_test.npz': 'f0af87a8a9f49a2afa5273786cb6887e59c1d2469a75111296c8135b01d9b8ed',
         'resnet20-12fca82f.th': '12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8',
         'resnet56-4bfd9763.th': '4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367'}
shared = pytest.mark.skipif(
    not os.path.isdir(SHARED) and not os.environ.get('RIS_JAX_REQUIRE_SHARED_DATA'),
    reason=f'{SHARED} (the real CIFAR-10 files) is missing')


def _randomized(model):
  """`model` with random BN statistics and affine parameters (not the identity init)."""
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
        m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
        m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
  return model.eval()


def _as_downloaded(model, path):
  """Saves `model` as the akamaster files are: legacy torch.save of {'state_dict', 'best_prec1'},
  keys prefixed 'module.', no num_batches_tracked."""
  sd = {f'module.{k}': v for k, v in model.state_dict().items() if 'num_batches_tracked' not in k}
  torch.save({'state_dict': sd, 'best_prec1': 50.0}, path, _use_new_zipfile_serialization=False)


def _torch_logits(model, images_nhwc):
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))).numpy()


@pytest.mark.parametrize('arch', ['resnet20_akamaster', 'resnet56_akamaster'])
def test_converted_option_a_resnet_equals_pytorch(arch, tmp_path):
  spec = get_arch(arch)
  torch.manual_seed(1)
  model = _randomized(spec.torch_model())
  path = str(tmp_path / 'w.th')
  _as_downloaded(model, path)
  out = str(tmp_path / 'converted')
  convert.main(['--arch', arch, '--torch-checkpoint', path, '--out', out])
  _, variables = convert.load_variables(out, arch)
  x = np.random.RandomState(0).randn(8, 32, 32, 3).astype(np.float32)
  ours = np.asarray(spec.module().apply(variables, x))
  ref = _torch_logits(model, x)
  assert np.max(np.abs(ours - ref)) <= 2e-5 * np.max(np.abs(ref)), np.max(np.abs(ours - ref))
  # 21 / 57 BN layers tapped (the shortcut has none), and the way back gives the file's tensors.
  _, taps = spec.module().apply(variables, x, mutable=['bn_stats'])
  assert len(jax.tree.leaves(taps)) == 2 * (19 if arch.startswith('resnet20') else 55)
  back = convert.flax_to_torch(arch, variables)
  for k, v in model.state_dict().items():
    if 'num_batches_tracked' not in k:
      assert torch.equal(back[k], v), k


def test_option_a_shortcut_pads_channels_of_the_subsampled_input():
  """Stage 2's first block: its shortcut is x[:, ::2, ::2] with 8 zero channels on each side."""
  from ris_jax.models.resnet_cifar import OptionABlock
  block = OptionABlock(32, 2)
  x = np.random.RandomState(0).randn(2, 8, 8, 16).astype(np.float32)
  v = block.init(jax.random.key(0), x)
  zero = jax.tree.map(np.zeros_like, v['params'])  # body outputs bn biases = 0 → y = ReLU(s(x))
  y = np.asarray(block.apply({**v, 'params': zero}, x))
  expected = np.maximum(np.pad(x[:, ::2, ::2], ((0, 0), (0, 0), (0, 0), (8, 8))), 0)
  np.testing.assert_allclose(y, expected, atol=1e-6)


@pytest.mark.full(reason='a torch.export of the akamaster student (~14 s); export is checked on the digits students')
def test_quantized_option_a_student_exports_to_pytorch(tmp_path):
  spec = get_arch('resnet20_akamaster')
  torch.manual_seed(2)
  variables = convert.torch_to_flax(spec, _randomized(spec.torch_model()).state_dict())
  qspec = student.QuantSpec(4, 4)
  module, sv = student.make_student(spec, variables, qspec)
  rng = np.random.RandomState(0)
  sv = student.calibrate(module, sv, [rng.randn(32, 32, 32, 3).astype(np.float32) for _ in range(3)])
  paths = export.export_student(spec, qspec, sv, str(tmp_path))
  program = torch.export.load(paths['program']).module()
  x = rng.randn(16, 32, 32, 3).astype(np.float32)
  ours = np.asarray(jax.jit(module.apply)(sv, x))
  theirs = _torch_logits(program, x)
  assert np.mean(ours.argmax(1) == theirs.argmax(1)) >= 15 / 16
  assert np.median(np.abs(ours - theirs)) <= 1e-4 * np.max(np.abs(ours))
  acts = torch.load(paths['state_dict'], weights_only=True)['quantization']['activations']
  assert len(acts) == 19 and 'relu' in acts and 'layer3.2.relu2' in acts


# ------------------------------------------------------------------------------- npz


def _npz(tmp_path, **arrays):
  path = str(tmp_path / 'd.npz')
  np.savez(path, **arrays)
  return 'npz:' + path


def test_npz_dataset_normalized_with_the_given_statistics(tmp_path):
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (7, 32, 32, 3)).astype(np.uint8)
  labels = np.array([0, 1, 2, 3, 4, 5, 6])
  name = _npz(tmp_path, images=images, labels=labels)
  for stats in (IMAGENET_STATS, data.NORMALIZATION['cifar10']):
    batches = list(data.eval_batches(name, 'all', 3, normalization=stats,
                                     process_index=0, process_count=1))
    x = np.concatenate([b['image'] for b in batches])
    mean, std = (np.asarray(s, np.float32) for s in stats)
    np.testing.assert_allclose(x, (images / 255.0 - mean) / std, atol=1e-5)
    assert np.concatenate([b['label'] for b in batches]).tolist() == labels.tolist()
  half = list(data.eval_batches(name, 'all[4:]', 10, normalization=IMAGENET_STATS,
                                process_index=0, process_count=1))
  assert half[0]['label'].tolist() == [4, 5, 6]


def test_named_subsets_are_counted_in_the_same_pass(tmp_path):
  """`data.subsets` ('val=0:6,report=6:11'): the top-1 on each range of positions equals the
  top-1 on that slice of the archive evaluated alone, and the whole split's equals their pooled
  count, with batches that pad and cross the boundary; a range past the end is an error."""
  import ml_collections
  from test_losses import TINY, tiny_teacher
  rng = np.random.RandomState(0)
  images = rng.randint(0, 256, (11, 8, 8, 3)).astype(np.uint8)
  module, variables = tiny_teacher()
  stats = ((0.5,) * 3, (0.25,) * 3)
  pred = np.asarray(module.apply(variables, ((images / 255.0 - 0.5) / 0.25).astype(np.float32))).argmax(1)
  labels = np.where(np.arange(11) % 3 == 0, pred, (pred + 1) % 10)  # some right, some wrong
  name = _npz(tmp_path, images=images, labels=labels)
  spec = dataclasses.replace(TINY, normalization=stats)
  config = ml_collections.ConfigDict({'data': {'dataset': name, 'split': 'all', 'eval_batch_size': 4,
                                               'subsets': 'val=0:6,report=6:11'}})
  top1 = evaluation.split_accuracies(config, spec, module, variables)
  alone = lambda split: evaluation.accuracy(module, variables, name, split, 4, None, stats)
  assert top1 == {'': alone('all'), 'val': alone('all[0:6]'), 'report': alone('all[6:11]')}
  assert 6 * top1['val'] + 5 * top1['report'] == pytest.approx(11 * top1[''])  # pooled counts
  assert 0 < top1['val'] < 100 and 0 < top1['report'] < 100  # some right, some wrong
  config.data.subsets = 'val=0:6,report=6:12'
  with pytest.raises(UserError, match='covers 5 of the 11 examples'):
    evaluation.split_accuracies(config, spec, module, variables)
  for bad in ('val=5:5', 'val', 'a=0:2,a=2:4'):
    with pytest.raises(ValueError):
      evaluation.parse_subsets(bad)


@pytest.mark.parametrize('arrays, split, message', [
    ({'pixels': np.zeros((2, 4, 4, 3), np.uint8), 'labels': np.zeros(2, int)}, 'all',
     "lacks the array\\(s\\) images"),
    ({'images': np.zeros((2, 4, 4, 3), np.float32), 'labels': np.zeros(2, int)}, 'all',
     "'images' is float32"),
    ({'images': np.zeros((2, 4, 4, 5), np.uint8), 'labels': np.zeros(2, int)}, 'all',
     "'images' is uint8 \\(2, 4, 4, 5\\)"),
    ({'images': np.zeros((2, 4, 4, 3), np.uint8), 'labels': np.zeros(3, int)}, 'all',
     "'labels' is int64 \\(3,\\)"),
    ({'images': np.zeros((2, 4, 4, 3), np.uint8), 'labels': np.array([0.0, 1.0])}, 'all',
     "'labels' is float64"),
    ({'images': np.zeros((2, 4, 4, 3), np.uint8), 'labels': np.array([0, -1])}, 'all',
     'negative'),
    ({'images': np.zeros((2, 4, 4, 3), np.uint8), 'labels': np.array([0, 10])}, 'all',
     'labels go up to 10 but the model has 10 classes'),
    ({'images': np.zeros((2, 4, 4, 3), np.uint8), 'labels': np.array([0, 1])}, 'test',
     "unknown split 'test'"),
    ({'images': np.zeros((2, 4, 4, 3), np.uint8), 'labels': np.array([0, 1])}, 'all[5:]',
     'selects no rows'),
])
def test_npz_errors_name_the_problem(tmp_path, arrays, split, message):
  with pytest.raises(UserError, match=message):
    data.eval_batches(_npz(tmp_path, **arrays), split, 2, normalization=IMAGENET_STATS,
                      num_classes=10, process_index=0, process_count=1)


def test_npz_missing_or_unreadable_file(tmp_path):
  with pytest.raises(UserError, match='does not exist'):
    data.eval_batches(f'npz:{tmp_path}/nope.npz', 'all', 2, normalization=IMAGENET_STATS)
  (tmp_path / 'bad.npz').write_bytes(b'not a zip')
  with pytest.raises(UserError, match='cannot read .* as a NumPy archive'):
    data.eval_batches(f'npz:{tmp_path}/bad.npz', 'all', 2, normalization=IMAGENET_STATS)


def test_config_family_keeps_the_paper_defaults_and_the_cpu_schedule():
  from configs import cifar10_akamaster, default
  paper = default.get_config()
  c = cifar10_akamaster.get_config('resnet56,w3a3')
  assert (c.teacher.arch, c.quant.w_bits, c.quant.a_bits, c.method) == ('resnet56_akamaster', 3, 3, 'ris')
  for field in ('batch_size', 'steps', 'warmup_steps', 'decay_steps'):
    assert c.train[field] == paper.train[field], field
  assert c.student.learning_rate == 1e-4 and c.loss == paper.loss
  assert c.data.subsets == 'val=0:5000,report=5000:10000'
  # scaledN: the paper's schedule scaled down (how cifar10.md was made)
  c = cifar10_akamaster.get_config('resnet20,w4a4+w3a3,gdfq,scaled800')
  assert (c.quant.bits, c.method, c.train.batch_size, c.train.steps) == ('w4a4,w3a3', 'gdfq', 64, 800)
  assert tuple(c.train.decay_steps) == (200, 400, 600) and c.train.warmup_steps == 50
  # cpuN: constant rates, one decay at 0.8 N, warm-up 500 (or warmW), evaluations every N/6
  c = cifar10_akamaster.get_config('resnet20,w4a4+w3a3,cpu3000')
  assert (c.method, c.train.steps, c.train.warmup_steps, c.train.calibration_steps) == ('ris', 3000, 500, 500)
  assert tuple(c.train.decay_steps) == (2400,) and (c.train.eval_every, c.train.checkpoint_every) == (500, 250)
  c = cifar10_akamaster.get_config('resnet20,w3a3,gdfq,ait,cpu3000,warm100')
  assert (c.method, c.student.method, c.train.warmup_steps) == ('gdfq', 'ait', 100)
  assert (c.loss.student_ce, c.student.weight_decay, c.student.gi_threshold) == (False, 0.0, 1e-3)
  for bad in ('resnet32,w4a4', 'resnet20,w9a4', 'resnet20,w4a4,fast', 'resnet20,w4a4,warm100',
              'resnet20,w4a4,cpu100,warm200', 'resnet20,w4a4,cpu100,scaled100'):
    with pytest.raises(ValueError, match='ARCH,BITS|warmW'):
      cifar10_akamaster.get_config(bad)


# ------------------------------------------------------------------- the real files


@shared
def test_shared_files_are_the_published_ones():
  for name, sha in FILES.items():
    with open(os.path.join(SHARED, name), 'rb') as f:
      assert hashlib.sha256(f.read()).hexdigest() == sha, name


@shared
@pytest.mark.parametrize('arch, file, top1', [
    ('resnet20_akamaster', 'resnet20-12fca82f.th', 91.73),
    pytest.param('resnet56_akamaster', 'resnet56-4bfd9763.th', 93.39, marks=pytest.mark.full(
        reason='ResNet-56 over all 10,000 test images (~30 s); ResNet-20 takes the same path'))])
def test_real_teacher_as_downloaded(arch, file, top1, tmp_path):
  """The checkpoint exactly as a user has it: logits equal PyTorch's on real images, and the
  top-1 on all 10,000 test images through mode=eval_teacher is the published figure."""
  from configs import cifar10_akamaster
  from ris_jax import main
  spec = get_arch(arch)
  path = os.path.join(SHARED, file)
  module, variables = convert.load_teacher(arch, path)
  model = spec.torch_model()
  sd = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
  model.load_state_dict({k[len('module.'):]: v for k, v in sd.items()}, strict=True)
  name = 'npz:' + os.path.join(SHARED, 'cifar10_test.npz')
  batch = next(iter(data.eval_batches(name, 'all[:64]', 64, normalization=spec.normalization)))
  ours = np.asarray(module.apply(variables, batch['image']))
  ref = _torch_logits(model.eval(), batch['image'])
  assert np.max(np.abs(ours - ref)) <= 2e-5 * np.max(np.abs(ref))
  config = cifar10_akamaster.get_config(arch.split('_')[0] + ',w4a4')
  config.mode = 'eval_teacher'
  config.teacher.checkpoint = path
  config.data.dataset = name
  # the published figure (PyTorch); logits agree to 2e-5, so a near-tie may fall the other way
  # under XLA's float order: two images of 10,000 allowed
  assert abs(main.run(config, str(tmp_path))['teacher_top1'] - top1) <= 0.02 + 1e-9


@shared
def test_preprocessing_belongs_to_the_teacher(monkeypatch):
  """The run's evaluation (`evaluation.split_accuracy`) feeds the akamaster teacher the archive
  normalized with ImageNet statistics, its own, and a pytorchcv CIFAR teacher the same archive
  with CIFAR statistics; the two give the teacher different inputs and logits."""
  from configs import cifar10_akamaster
  spec = get_arch('resnet20_akamaster')
  assert spec.normalization == IMAGENET_STATS
  assert get_arch('resnet20_cifar10').normalization == data.NORMALIZATION['cifar10']
  module, variables = convert.load_teacher(spec, os.path.join(SHARED, 'resnet20-12fca82f.th'))
  config = cifar10_akamaster.get_config('resnet20,w4a4')
  config.data.dataset = 'npz:' + os.path.join(SHARED, 'cifar10_test.npz')
  config.data.split, config.data.eval_batch_size, config.data.subsets = 'all[:16]', 16, ''
  seen = []
  real_counter = evaluation._counter

  def recording(m, ranges=()):
    count = real_counter(m, ranges)
    return lambda v, x, *rest: seen.append(np.asarray(x)) or count(v, x, *rest)
  monkeypatch.setattr(evaluation, '_counter', recording)
  pixels = np.load(config.data.dataset[4:])['images'][:16].astype(np.float32) / 255
  for arch_spec in (spec, get_arch('resnet20_cifar10')):
    evaluation.split_accuracy(config, arch_spec, module, variables)
    mean, std = (np.asarray(s, np.float32) for s in arch_spec.normalization)
    np.testing.assert_allclose(seen[-1], (pixels - mean) / std, atol=1e-5)
  own, other = (np.asarray(module.apply(variables, x)) for x in seen)
  assert np.max(np.abs(own - other)) > 0.1

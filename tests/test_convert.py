"""Checkpoint conversion: what a user gets for bad input (one clear message) and the CLI."""
import collections
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

import ris_jax
from ris_jax import convert
from ris_jax.errors import UserError
from ris_jax.models import get_arch

ARCH = 'resnet20_cifar10'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def state_dict(arch=ARCH, seed=0):
  torch.manual_seed(seed)
  return get_arch(arch).torch_model().state_dict()


def save(obj, tmp_path, name='w.pth'):
  path = str(tmp_path / name)
  torch.save(obj, path)
  return path


def load_error(arch, source) -> str:
  with pytest.raises(UserError) as info:
    ris_jax.load_teacher(arch, source)
  message = str(info.value)
  assert '\n' not in message
  return message


@pytest.fixture(scope='module')
def sd():
  return state_dict()


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.shape == y.shape and x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize('seed', range(4))
def test_random_bytes(tmp_path, seed):
  path = tmp_path / 'junk.pth'
  path.write_bytes(np.random.default_rng(seed).bytes(1000))
  message = load_error(ARCH, str(path))
  assert f'cannot read {path} as a PyTorch checkpoint' in message
  assert 'torch.save(model.state_dict(), path)' in message


def test_corrupt_file_raising_an_unusual_exception(tmp_path):
  """These bytes make torch's unpickler raise IndexError, not an UnpicklingError."""
  path = tmp_path / 'junk.pth'
  path.write_bytes(np.random.default_rng(17).bytes(1000))
  assert 'cannot read' in load_error(ARCH, str(path))


def test_empty_and_missing_files(tmp_path):
  (tmp_path / 'empty.pth').write_bytes(b'')
  assert 'cannot read' in load_error(ARCH, str(tmp_path / 'empty.pth'))
  message = load_error(ARCH, str(tmp_path / 'nope.pth'))
  assert 'not found' in message and 'nope.pth' in message


def test_whole_model_instead_of_state_dict(tmp_path):
  path = save(get_arch(ARCH).torch_model(), tmp_path)
  message = load_error(ARCH, path)
  assert 'cannot read' in message and 'CIFARResNet' in message
  assert 'state_dict()' in message
  assert 'weights_only' not in message and '\x1b' not in message


@pytest.mark.parametrize('obj, words', [
    ([torch.zeros(3)], ['holds a list', 'not a state dict']),
    ({}, ['holds a dict', 'not a state dict']),
    ({'arch': 'resnet20', 'epoch': '3'}, ["entry 'arch'", 'str', 'not a tensor']),
    ({'conv.weight': torch.zeros(1), 'epoch': 3}, ["entry 'epoch'", 'int', 'not a tensor']),
])
def test_not_a_state_dict(tmp_path, obj, words):
  message = load_error(ARCH, save(obj, tmp_path))
  for word in words:
    assert word in message


def write_plain_pickle(path):
  with open(path, 'wb') as f:
    pickle.dump([1, 2, 3], f, protocol=4)  # torch.load warns about the protocol, then fails


def test_plain_pickle(tmp_path):
  write_plain_pickle(tmp_path / 'w.pkl')
  assert 'cannot read' in load_error(ARCH, str(tmp_path / 'w.pkl'))


def test_missing_key(tmp_path, sd):
  sd = collections.OrderedDict(sd)
  key = 'features.stage2.unit1.identity_conv.bn.running_var'
  del sd[key]
  message = load_error(ARCH, save(sd, tmp_path))
  assert f'missing keys: {key}' in message
  assert 'unexpected' not in message and ARCH in message


def test_missing_num_batches_tracked_is_fine(sd):
  """BN's step counters carry nothing the Flax teacher uses: without them the same variables."""
  trimmed = {k: v for k, v in sd.items() if not k.endswith('num_batches_tracked')}
  assert len(trimmed) < len(sd)
  _, want = ris_jax.load_teacher(ARCH, sd)
  _, got = ris_jax.load_teacher(ARCH, trimmed)
  assert_trees_equal(got, want)


def test_unexpected_key(tmp_path, sd):
  sd = collections.OrderedDict(sd)
  sd['features.stage4.unit1.body.conv1.conv.weight'] = torch.zeros(3, 3, 3, 3)
  message = load_error(ARCH, save(sd, tmp_path))
  assert 'unexpected keys: features.stage4.unit1.body.conv1.conv.weight' in message
  assert 'missing' not in message


@pytest.mark.parametrize('key, bad, expected', [
    ('features.stage1.unit2.body.conv1.conv.weight', (16, 16, 1, 3), (16, 16, 3, 3)),
    ('features.init_block.bn.weight', (17,), (16,)),
    ('output.weight', (64, 10), (10, 64)),  # transposed dense kernel
    ('output.weight', (10, 64, 3, 3), (10, 64, 1, 1)),  # a 4-D classifier must be 1×1
])
def test_wrong_shape(tmp_path, sd, key, bad, expected):
  sd = collections.OrderedDict(sd)
  sd[key] = torch.zeros(bad)
  message = load_error(ARCH, save(sd, tmp_path))
  assert f"shape mismatch for '{key}'" in message
  assert f'expects {expected}' in message and f'checkpoint has {bad}' in message


def test_wrong_shape_of_1x1_conv_classifier():
  """MobileNetV2's classifier is a 1×1 conv in pytorchcv; a 3×3 one must not slip through."""
  sd = collections.OrderedDict(state_dict('mobilenetv2_w1'))
  assert tuple(sd['output.weight'].shape) == (1000, 1280, 1, 1)
  sd['output.weight'] = torch.zeros(1000, 1280, 3, 3)
  message = load_error('mobilenetv2_w1', sd)
  assert "'output.weight'" in message
  assert 'expects (1000, 1280, 1, 1)' in message and 'has (1000, 1280, 3, 3)' in message


def test_checkpoint_of_another_cifar_variant(tmp_path):
  path = save(state_dict('resnet20_cifar100'), tmp_path)
  message = load_error(ARCH, path)
  assert "shape mismatch for 'output." in message
  assert '(100' in message and '(10' in message


def test_checkpoint_of_a_shallower_resnet(tmp_path, sd):
  message = load_error('resnet56_cifar10', save(sd, tmp_path))
  assert 'missing keys: features.stage1.unit4.' in message
  # 3 stages × 6 extra units × 2 conv blocks × (conv weight + 4 BN tensors) = 180 keys.
  assert '(+172 more)' in message
  assert 'wrong --arch' in message


def test_unknown_arch(sd):
  message = load_error('resnet21_cifar10', sd)
  assert "unknown arch 'resnet21_cifar10'" in message
  for name in ('resnet20_cifar10', 'resnet20_cifar100', 'resnet18', 'resnet50', 'mobilenetv2_w1'):
    assert name in message


@pytest.mark.parametrize('wrap', [
    lambda sd: {'state_dict': sd},
    lambda sd: {'model': sd, 'epoch': 3},
    lambda sd: collections.OrderedDict((f'module.{k}', v) for k, v in sd.items()),
    lambda sd: {'state_dict': {f'module.{k}': v for k, v in sd.items()}},
])
def test_wrapped_and_prefixed_state_dicts(tmp_path, sd, wrap):
  _, want = ris_jax.load_teacher(ARCH, sd)
  _, got = ris_jax.load_teacher(ARCH, save(wrap(sd), tmp_path))
  assert_trees_equal(got, want)


def test_half_precision_checkpoint(tmp_path, sd):
  for dtype in (torch.float16, torch.bfloat16):
    low = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    _, got = ris_jax.load_teacher(ARCH, save(low, tmp_path))
    _, want = ris_jax.load_teacher(ARCH, {k: v.float() for k, v in low.items()})
    assert_trees_equal(got, want)
    assert all(v.dtype == np.float32 for v in jax.tree.leaves(got))


def run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'ris_jax.convert', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


def stderr_lines(result):
  return result.stderr.splitlines()


def test_cli_has_no_runpy_warning():
  result = run_cli('--help')
  assert result.returncode == 0
  assert result.stderr == ''


def test_cli_converts(tmp_path, sd):
  path = save(sd, tmp_path)
  out = tmp_path / 'converted'
  result = run_cli('--arch', ARCH, '--torch-checkpoint', path, '--out', str(out))
  assert result.returncode == 0, result.stderr
  assert f'converted {ARCH}' in result.stdout
  assert 'Traceback' not in result.stderr and stderr_lines(result) == []
  arch, variables = convert.load_variables(str(out))
  assert arch == ARCH
  _, want = ris_jax.load_teacher(ARCH, path)
  assert_trees_equal(variables, want)
  convert.load_variables(str(out), ARCH)
  with pytest.raises(UserError, match="holds arch 'resnet20_cifar10', not 'resnet56_cifar10'"):
    convert.load_variables(str(out), 'resnet56_cifar10')
  with pytest.raises(UserError, match='not a converted ris_jax model'):
    convert.load_variables(str(tmp_path))


@pytest.mark.parametrize('case', ['junk'] + [pytest.param(c, marks=pytest.mark.full(
    reason='another `python -m ris_jax.convert` process (~2.5 s) for another message; the '
    'in-process tests above check each message')) for c in ('pickle', 'missing_key', 'unknown_arch')])
def test_cli_user_errors(tmp_path, sd, case):
  arch, path = ARCH, str(tmp_path / 'w.pth')
  if case == 'junk':
    (tmp_path / 'w.pth').write_bytes(np.random.default_rng(0).bytes(1000))
  elif case == 'pickle':
    write_plain_pickle(path)
  else:
    sd = collections.OrderedDict(sd)
    if case == 'missing_key':
      del sd['output.bias']
    else:
      arch = 'resnet21'
    save(sd, tmp_path)
  out = tmp_path / 'converted'
  result = run_cli('--arch', arch, '--torch-checkpoint', path, '--out', str(out))
  assert result.returncode == 2
  lines = stderr_lines(result)
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('error: ')
  assert 'Traceback' not in result.stderr
  assert {'junk': 'cannot read', 'pickle': 'cannot read', 'missing_key': 'output.bias',
          'unknown_arch': 'known:'}[case] in lines[0]
  assert not out.exists()

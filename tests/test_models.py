"""Flax teachers vs the pytorchcv models they are converted from: logits, BN/feature taps,
the reverse conversion and the quantized-ops variant."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import ris_jax
from ris_jax import quant
from ris_jax.convert import flax_to_torch
from ris_jax.models import get_arch

CIFAR_ARCHS = ['resnet20_cifar10', 'resnet20_cifar100', 'resnet56_cifar10']
IMAGENET_ARCHS = ['resnet18', 'resnet50', 'mobilenetv2_w1']
REL_TOL = 1e-4


def random_torch_model(arch, seed=0):
  """pytorchcv model with random weights and random BN affine/running statistics, eval mode."""
  torch.manual_seed(seed)
  model = get_arch(arch).torch_model()
  if arch == 'resnet20_digits':
    # pytorchcv's final AvgPool2d(8) cannot pool the 4×4 maps of a 16×16 input.
    model.features.final_pool = torch.nn.AdaptiveAvgPool2d(1)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(0.5 + torch.rand(c, generator=g))
        m.bias.copy_(0.2 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
  return model.eval()


def random_batch(arch, n=2, seed=0):
  """(NCHW torch tensor, NHWC numpy array) of the same random images."""
  h, w, c = get_arch(arch).input_shape
  x = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)
  return torch.from_numpy(x), x.transpose(0, 2, 3, 1)


def convert(model, arch, tmp_path):
  path = tmp_path / 'w.pth'
  torch.save(model.state_dict(), path)
  return ris_jax.load_teacher(arch, str(path))


def max_rel_diff(flax_out, torch_out):
  ref = torch_out.detach().numpy()
  return float(np.max(np.abs(np.asarray(flax_out) - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope='module')
def resnet20(tmp_path_factory):
  """Shared resnet20_cifar10: torch model, (module, variables), batch."""
  arch = 'resnet20_cifar10'
  model = random_torch_model(arch)
  module, variables = convert(model, arch, tmp_path_factory.mktemp('resnet20'))
  return model, module, variables, random_batch(arch)


@pytest.mark.parametrize('arch', CIFAR_ARCHS + IMAGENET_ARCHS + ['resnet20_digits', 'resnet8_digits',
                                                                 'resnet8_fashion', 'resnet20_fashion'])
def test_logits_match_pytorchcv(arch, tmp_path):
  model = random_torch_model(arch)
  module, variables = convert(model, arch, tmp_path)
  xt, xf = random_batch(arch)
  with torch.no_grad():
    expected = model(xt)
  got = jax.jit(module.apply)(variables, xf)
  assert got.shape == tuple(expected.shape) == (2, get_arch(arch).num_classes)
  rel = max_rel_diff(got, expected)
  print(f'{arch}: max|flax - torch| / max|torch| = {rel:.2e}')
  assert rel <= REL_TOL
  # The random BN statistics make the check meaningful: logits are far from constant.
  assert float(expected.std()) > 1e-3 * float(expected.abs().max())


def test_tolerance_catches_a_kernel_layout_error(resnet20):
  """Swapping H and W of every 3×3 kernel (a plausible conversion bug) fails the check."""
  model, module, variables, (xt, xf) = resnet20
  swapped = jax.tree_util.tree_map_with_path(
      lambda p, v: v.transpose(1, 0, 2, 3) if v.ndim == 4 and v.shape[0] == 3 else v, variables)
  with torch.no_grad():
    expected = model(xt)
  assert max_rel_diff(jax.jit(module.apply)(swapped, xf), expected) > 100 * REL_TOL


@pytest.mark.parametrize('arch', ['resnet20_cifar10', 'resnet56_cifar100', 'mobilenetv2_w1',
                                  'resnet20_digits'])
def test_flax_to_torch_round_trip(arch, tmp_path):
  model = random_torch_model(arch)
  original = model.state_dict()
  _, variables = convert(model, arch, tmp_path)
  back = flax_to_torch(arch, variables)
  assert list(back) == list(original)
  for key, value in original.items():
    assert back[key].dtype == value.dtype, key
    assert torch.equal(back[key], value), key
  fresh = get_arch(arch).torch_model()
  fresh.load_state_dict(back, strict=True)


def _torch_bn_inputs(model, x):
  """{BN module name: (mean, biased var) of its input over N, H, W} via forward pre-hooks."""
  stats, handles = {}, []
  for name, m in model.named_modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      def hook(mod, inputs, name=name):
        t = inputs[0].detach()
        stats[name] = (t.mean(dim=(0, 2, 3)).numpy(),
                       t.var(dim=(0, 2, 3), unbiased=False).numpy())
      handles.append(m.register_forward_pre_hook(hook))
  with torch.no_grad():
    out = model(x)
  for h in handles:
    h.remove()
  return out, stats


def test_bn_stats_tap_matches_torch_hooks(resnet20):
  model, module, variables, (xt, xf) = resnet20
  spec = get_arch('resnet20_cifar10')
  logits, state = module.apply(variables, xf, mutable=['bn_stats'])
  expected_logits, torch_stats = _torch_bn_inputs(model, xt)
  assert max_rel_diff(logits, expected_logits) <= REL_TOL  # the tap changes nothing
  flat = {tuple(k.key for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(state['bn_stats'])[0]}
  layers = {path[:-1] for path in flat}
  assert all({p[:-1] + (leaf,) for leaf in ('mean', 'var')} <= set(flat) for p in flat)
  names = {spec.torch_key(layer + ('mean',))[:-len('.running_mean')]: layer for layer in layers}
  # 1 stem + 9 units × 2 + 2 downsampling identity convs = 21 BN layers; all matched by name.
  assert len(torch_stats) == 21
  assert set(names) == set(torch_stats)
  for name, layer in names.items():
    t_mean, t_var = torch_stats[name]
    f_mean, f_var = np.asarray(flat[layer + ('mean',)]), np.asarray(flat[layer + ('var',)])
    assert f_mean.shape == t_mean.shape and f_var.shape == t_var.shape, name
    np.testing.assert_allclose(f_mean, t_mean, rtol=1e-4,
                               atol=1e-5 * float(np.abs(t_mean).max()), err_msg=name)
    np.testing.assert_allclose(f_var, t_var, rtol=1e-4,
                               atol=1e-5 * float(np.abs(t_var).max()), err_msg=name)
  # rtol 1e-4 tells biased from unbiased variance: n / (n − 1) ≥ 1 + 1/2048 here.


def test_bn_stats_are_batch_statistics_not_running_ones(resnet20):
  """The tap reports the batch's statistics, which differ from the running ones (inference)."""
  _, module, variables, (_, xf) = resnet20
  _, state = module.apply(variables, xf, mutable=['bn_stats'])
  tapped = state['bn_stats']['init_block']['bn']
  running = variables['batch_stats']['init_block']['bn']
  assert not np.allclose(tapped['mean'], running['mean'], atol=1e-2)
  kernel = variables['params']['init_block']['conv']['kernel']
  conv = np.asarray(jax.lax.conv_general_dilated(
      xf, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
      np.float64)
  np.testing.assert_allclose(tapped['mean'], conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(tapped['var'], conv.var((0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_feature_taps_match_torch(resnet20):
  model, module, variables, (xt, xf) = resnet20
  outputs, handles = {}, []
  for name in ('stage1', 'stage2', 'stage3'):
    handles.append(getattr(model.features, name).register_forward_hook(
        lambda m, i, o, name=name: outputs.__setitem__(name, o.detach())))
  handles.append(model.features.register_forward_hook(
      lambda m, i, o: outputs.__setitem__('pooled', o.detach().flatten(1))))
  with torch.no_grad():
    model(xt)
  for h in handles:
    h.remove()
  _, state = module.apply(variables, xf, mutable=['features'])
  feats = state['features']
  assert set(feats) == {'pooled', 'stage1', 'stage2', 'stage3'}
  assert feats['pooled'].shape == (2, 64)
  shapes = {'stage1': (2, 32, 32, 16), 'stage2': (2, 16, 16, 32), 'stage3': (2, 8, 8, 64)}
  for name, shape in shapes.items():
    assert feats[name].shape == shape
    want = outputs[name].permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(feats[name], want, rtol=1e-4,
                               atol=1e-5 * float(np.abs(want).max()), err_msg=name)
  want = outputs['pooled'].numpy()
  np.testing.assert_allclose(feats['pooled'], want, rtol=1e-4,
                             atol=1e-5 * float(np.abs(want).max()))


def _shapes(tree):
  return jax.tree.map(lambda v: tuple(v.shape), tree)


@pytest.mark.parametrize('arch', ['resnet20_cifar10', 'mobilenetv2_w1'])
def test_quantized_ops_keep_the_teacher_variables(arch):
  spec = get_arch(arch)
  x = np.zeros((1,) + spec.input_shape, np.float32)
  teacher = jax.eval_shape(spec.module().init, jax.random.key(0), x)
  student = jax.eval_shape(spec.module(quant.quantized_ops(8, 8)).init, jax.random.key(0), x)
  # `init` also returns the sown tap collections (bn_stats, features); ignore those.
  assert 'quant_ranges' not in teacher and 'quant_ranges' in student
  assert set(student) - {'quant_ranges'} == set(teacher)
  for c in ('params', 'batch_stats'):
    assert _shapes(student[c]) == _shapes(teacher[c]), c
  ranges = jax.tree_util.tree_flatten_with_path(student['quant_ranges'])[0]
  leaves = {path[-1].key for path, _ in ranges}
  assert leaves == {'lo', 'hi', 'count'}
  assert all(v.shape == () for _, v in ranges)



@pytest.mark.parametrize('eps', [1e-5, 0.8])  # PyTorch's default; GDFQ's generator layers
def test_training_mode_batchnorm_matches_torch(eps):
  """layers.BatchNorm in training mode (momentum 0.9 = PyTorch's 0.1) against
  torch.nn.BatchNorm2d in train(): outputs normalized by the batch statistics, and the running
  mean / unbiased running variance after each of three updates."""
  from ris_jax import layers
  rng = np.random.default_rng(0)
  c = 5
  ref = torch.nn.BatchNorm2d(c, eps=eps, momentum=0.1).double().train()
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c)))
    ref.bias.copy_(torch.from_numpy(rng.standard_normal(c)))
    ref.running_mean.copy_(torch.from_numpy(rng.standard_normal(c)))
    ref.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c)))
  bn = layers.BatchNorm(use_running_average=False, momentum=0.9, epsilon=eps)
  f32 = lambda t: jnp.asarray(t.detach().numpy(), jnp.float32)
  variables = {'params': {'scale': f32(ref.weight), 'bias': f32(ref.bias)},
               'batch_stats': {'mean': f32(ref.running_mean), 'var': f32(ref.running_var)}}
  step = jax.jit(lambda v, x: bn.apply(v, x, mutable=['batch_stats']))
  for i in range(3):
    x = (rng.standard_normal((4, 3, 3, c)) * (1 + i) + i).astype(np.float32)  # n = 36 per channel
    out, upd = step(variables, x)
    variables = {**variables, 'batch_stats': upd['batch_stats']}
    with torch.no_grad():
      want = ref(torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(out, want.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(variables['batch_stats']['mean'], ref.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(variables['batch_stats']['var'], ref.running_var.numpy(), rtol=1e-5)
  # rtol 1e-5 tells the unbiased running variance from the biased one: n / (n − 1) = 1 + 1/35.


def test_training_mode_network_matches_pytorchcv():
  """The DFKD student (resnet8_digits) in training mode, two batches: logits and every BN's
  running statistics against the pytorchcv model in train()."""
  arch = 'resnet8_digits'
  spec = get_arch(arch)
  model = random_torch_model(arch).double().train()
  variables = convert_state_dict(spec, model)
  module = spec.module()
  step = jax.jit(lambda v, x: module.apply(v, x, train=True, mutable=['batch_stats']))
  for seed in range(2):
    xt, xf = random_batch(arch, n=8, seed=seed)
    logits, upd = step(variables, xf)
    variables = {**variables, 'batch_stats': upd['batch_stats']}
    with torch.no_grad():
      want = model(xt.double())
    np.testing.assert_allclose(logits, want.numpy(), rtol=1e-4, atol=1e-4 * float(want.abs().max()))
  back = flax_to_torch(arch, variables)
  stats = [k for k in back if k.endswith(('running_mean', 'running_var'))]
  assert len(stats) == 2 * 9  # stem, 2 per unit × 3, 2 projection shortcuts
  for key in stats:
    np.testing.assert_allclose(back[key].numpy(), model.state_dict()[key].numpy(), rtol=1e-4,
                               atol=1e-5, err_msg=key)


def convert_state_dict(spec, model):
  from ris_jax import convert as convert_lib
  return convert_lib.torch_to_flax(spec, {k: v.float() if v.is_floating_point() else v
                                          for k, v in model.state_dict().items()})

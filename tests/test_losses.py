"""Loss terms against independent numpy/torch computations, the robustness and diversity
objectives, perturbations, and the gradient paths of the generator loss (tiny models)."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from configs import default
from ris_jax import layers, losses, perturb, train
from ris_jax.models import ArchSpec
from ris_jax.models.resnet_cifar import CifarResNet

TINY = ArchSpec('tiny_resnet8', lambda ops: CifarResNet(depth=8, width=4, num_classes=10, ops=ops),
                'unused:unused', image_size=8, in_channels=3, num_classes=10)


@functools.lru_cache(maxsize=None)
def tiny_teacher(seed=0):
  """A depth-8, width-4 CIFAR ResNet on 8×8×3 inputs, He-normal kernels, random BN affine and
  running statistics (so L_BNS is not trivially that of fresh BN layers). Filled with numpy:
  compiling `module.init` costs more than all the tests using it."""
  module = TINY.module()
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1,) + TINY.input_shape))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = path[-1].key
    if name == 'kernel':
      return rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))
    if name in ('bias', 'mean'):
      return 0.3 * rng.standard_normal(s.shape)
    return rng.uniform(0.5, 2.0, s.shape)  # BN scale, running var

  variables = jax.tree_util.tree_map_with_path(
      lambda p, s: jnp.asarray(fill(p, s), jnp.float32),
      {'params': shapes['params'], 'batch_stats': shapes['batch_stats']})
  return module, variables


def images(n=8, seed=1):
  return jnp.asarray(np.random.default_rng(seed).standard_normal((n,) + TINY.input_shape),
                     jnp.float32)


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- L_BNS

def _bn_inputs(module, variables, x):
  """Every BN layer's input, captured by intercepting BatchNorm.__call__ (independent of the
  `bn_stats` tap), plus the taps themselves."""

  @jax.jit
  def run(variables, x):
    captured = {}

    def interceptor(next_fun, args, kwargs, context):
      if isinstance(context.module, layers.BatchNorm) and context.method_name == '__call__':
        captured['/'.join(context.module.path)] = args[0]
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
      _, taps = module.apply(variables, x, mutable=['bn_stats'])
    return captured, taps['bn_stats']

  captured, tap = run(variables, x)
  return {tuple(k.split('/')): np.asarray(v, np.float64) for k, v in captured.items()}, tap


def _lookup(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def test_bn_statistics_loss_matches_numpy():
  module, variables = tiny_teacher()
  x = images()
  inputs, tap = _bn_inputs(module, variables, x)
  assert len(inputs) == 9  # stem + 2 per unit × 3 + 2 projection shortcuts

  # The first BN's input is the stem conv output: recompute it in numpy (3×3, pad 1).
  kernel = np.asarray(variables['params']['init_block']['conv']['kernel'], np.float64)
  xp = np.pad(np.asarray(x, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = x.shape[1:3]
  stem = sum(np.einsum('nhwc,co->nhwo', xp[:, i:i + h, j:j + w], kernel[i, j])
             for i in range(3) for j in range(3))
  np.testing.assert_allclose(inputs[('init_block', 'bn')], stem, rtol=1e-4, atol=1e-5)

  terms = []
  for path, value in inputs.items():
    mean, var = value.mean((0, 1, 2)), value.var((0, 1, 2))  # biased variance
    np.testing.assert_allclose(_lookup(tap, path)['mean'], mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_lookup(tap, path)['var'], var, rtol=1e-4, atol=1e-5)
    running = _lookup(variables['batch_stats'], path)
    terms.append(np.mean((mean - np.asarray(running['mean'])) ** 2)
                 + np.mean((var - np.asarray(running['var'])) ** 2))
  expected = np.mean(terms)
  got = losses.bn_statistics_loss(tap, variables['batch_stats'])
  assert expected > 0.1
  np.testing.assert_allclose(got, expected, rtol=1e-5)

  # Zero when the running statistics are those of the batch.
  assert float(losses.bn_statistics_loss(tap, tap)) == 0.0


# ----------------------------------------------------------------------------- CE, KD, L_div

def test_cross_entropy_hard_and_soft():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((6, 5)).astype(np.float32) * 3
  labels = rng.integers(0, 5, 6)
  soft = rng.dirichlet(np.ones(5), 6).astype(np.float32)
  logp = np_log_softmax(logits)
  np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)),
                             -np.mean(logp[np.arange(6), labels]), rtol=1e-5)
  np.testing.assert_allclose(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(soft)),
                             -np.mean(np.sum(soft * logp, -1)), rtol=1e-5)


@pytest.mark.parametrize('reduction', ['mean', 'batchmean'])
def test_kd_loss(reduction):
  rng = np.random.default_rng(1)
  s = rng.standard_normal((4, 10)).astype(np.float32) * 20
  t = rng.standard_normal((4, 10)).astype(np.float32) * 20
  tau = 20.0
  log_p, log_q = np_log_softmax(t / tau), np_log_softmax(s / tau)
  kl = np.sum(np.exp(log_p) * (log_p - log_q))
  expected = tau ** 2 * kl / (s.size if reduction == 'mean' else s.shape[0])
  got = losses.kd_loss(jnp.asarray(s), jnp.asarray(t), tau, reduction)
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  ref = torch.nn.functional.kl_div(torch.log_softmax(torch.from_numpy(s) / tau, -1),
                                   torch.softmax(torch.from_numpy(t) / tau, -1),
                                   reduction=reduction) * tau ** 2
  np.testing.assert_allclose(got, ref.item(), rtol=1e-4)


def test_kd_reductions_differ_by_the_number_of_classes():
  """The implementation's two reductions, not two numbers of the test: 'batchmean' = C ×
  'mean' (a reduction ignoring its argument would give the same value twice)."""
  rng = np.random.default_rng(2)
  s, t = (jnp.asarray(rng.standard_normal((6, 7)) * 5, jnp.float32) for _ in range(2))
  mean, batchmean = (float(losses.kd_loss(s, t, 4.0, r)) for r in ('mean', 'batchmean'))
  assert mean > 1e-3
  np.testing.assert_allclose(batchmean, 7 * mean, rtol=1e-5)


def test_kd_loss_rejects_unknown_reduction():
  with pytest.raises(ValueError, match='batchmean'):
    losses.kd_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), 20.0, 'sum')


def test_label_correlation_penalty_matches_corrcoef():
  probs = np.random.default_rng(2).dirichlet(np.ones(7) * 0.5, 9)
  c = np.corrcoef(probs)  # rows are the variables
  np.testing.assert_allclose(losses.batch_correlation(jnp.asarray(probs, jnp.float32)), c,
                             atol=1e-5)
  off = c[~np.eye(9, dtype=bool)]
  np.testing.assert_allclose(losses.label_correlation_penalty(jnp.asarray(probs, jnp.float32)),
                             np.mean(off ** 2), rtol=1e-4)


# ----------------------------------------------------------------------------- L_rob

def test_robustness_loss_zero_iff_unperturbed():
  rng = np.random.default_rng(3)
  f = jnp.asarray(rng.standard_normal((5, 16)), jnp.float32)
  z = jnp.asarray(rng.standard_normal((5, 10)) * 2, jnp.float32)
  value, aux = losses.robustness_loss(f, z, f, z)
  assert abs(float(value)) < 1e-6 and float(aux['pred_inconsistency']) == 0.0

  f2 = f + 0.5 * jnp.asarray(rng.standard_normal((5, 16)), jnp.float32)
  z2 = z + jnp.asarray(rng.standard_normal((5, 10)), jnp.float32)
  value, aux = losses.robustness_loss(f, z, f2, z2, feature_weight=2.0, prediction_weight=0.5)
  fn, f2n = np.asarray(f, np.float64), np.asarray(f2, np.float64)
  cos = np.sum(fn * f2n, -1) / np.linalg.norm(fn, axis=-1) / np.linalg.norm(f2n, axis=-1)
  p, q = np.exp(np_log_softmax(z)), np.exp(np_log_softmax(z2))
  feat, pred = np.mean(1 - cos), np.mean(np.abs(p - q).sum(-1))
  np.testing.assert_allclose(aux['feat_inconsistency'], feat, rtol=1e-5)
  np.testing.assert_allclose(aux['pred_inconsistency'], pred, rtol=1e-5)
  np.testing.assert_allclose(value, 2.0 * feat + 0.5 * pred, rtol=1e-5)
  assert feat > 0.01 and pred > 0.01
  kl = np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))
  np.testing.assert_allclose(losses.robustness_loss(f, z, f2, z2, distance='kl')[1]['pred_inconsistency'],
                             kl, rtol=1e-5)
  # Hinge: inconsistencies below their margins cost nothing; above, only the excess.
  assert float(losses.robustness_loss(f, z, f2, z2, feature_margin=feat + 0.1,
                                      prediction_margin=pred + 0.1)[0]) == 0.0
  np.testing.assert_allclose(losses.robustness_loss(f, z, f2, z2, feature_margin=feat / 2)[0],
                             feat / 2 + pred, rtol=1e-5)


@functools.lru_cache(maxsize=None)
def _models():
  """(config, Models, state, teacher variables) of a tiny RIS run built by train.build, with
  the correlation penalty L_div on. Callers must not donate `state`."""
  config = default.get_config()
  config.generator.width = 8
  config.generator.latent_dim = 8
  config.loss.diversity_weight = 0.5
  module, t_vars = tiny_teacher()
  models, state = train.build(config, TINY, module, t_vars)
  return config, models, state, t_vars


@pytest.mark.full(reason='compiles the robustness term for every combination of its switches (~12 s); the numpy checks of each equation stay quick')
def test_robustness_term_zero_without_perturbation():
  config, models, _, t_vars = _models()
  x, rng = images(), jax.random.PRNGKey(0)

  def robustness(**loss):
    cfg = config.loss.copy_and_resolve_references()
    cfg.update(loss)
    m = dataclasses.replace(models, loss=ml_collections.FrozenConfigDict(cfg))

    @jax.jit
    def run(t_vars, x, rng):
      logits, features, _ = train.teacher_forward(m, t_vars, x)
      return train.robustness_term(m, t_vars, x, logits, features, rng)
    value, aux = run(t_vars, x, rng)
    return float(value), {k: float(v) for k, v in aux.items()}

  value, aux = robustness(input_perturbation=False, weight_perturbation=True, weight_eps=0.0)
  assert abs(value) < 1e-6 and aux['pred_inconsistency'] < 1e-6
  value, aux = robustness(input_perturbation=False, weight_perturbation=True, weight_eps=0.05)
  assert aux['pred_inconsistency'] > 1e-3 and aux['feat_inconsistency'] > 1e-5
  value, aux = robustness(input_perturbation=True, input_kinds=('noise',), weight_perturbation=False)
  assert value > 1e-3 and aux['pred_inconsistency'] > 1e-3


# ----------------------------------------------------------------------------- gradient paths

TERMS = ('g_ce', 'g_bns', 'g_rob', 'g_div')


@pytest.mark.full(reason='a generator-loss gradient program per term (~15 s); the quick tier trains with every term (tiny_run)')
def test_every_generator_loss_term_reaches_the_generator():
  config, models, state, t_vars = _models()
  batch = 8
  k_z, k_y, k_rob = jax.random.split(jax.random.PRNGKey(3), 3)
  z = jax.random.normal(k_z, (batch, config.generator.latent_dim))
  labels, targets = train.sample_labels(models, k_y, batch)
  args = (models, state.generator['batch_stats'], t_vars, z, labels, targets, k_rob)

  def terms(params):
    total, (_, _, metrics) = train.generator_loss(params, *args)
    return [metrics[name] for name in TERMS] + [total]

  # One vmapped backward pass for the four terms and the total.
  g = dict(zip(TERMS + ('total',), jax.jit(jax.jacrev(terms))(state.generator['params'])))
  for name in TERMS:
    norms = {'/'.join(k.key for k in p): float(jnp.linalg.norm(v))
             for p, v in jax.tree_util.tree_flatten_with_path(g[name])[0]}
    # Kernels of the first and last layers and the label embedding (biases before a
    # batch-statistics BN get no gradient, whatever the loss).
    for leaf in ('fc/kernel', 'conv1/kernel', 'conv3/kernel', 'label_embedding'):
      assert norms[leaf] > 1e-7, (name, leaf, norms[leaf])
  cfg = config.loss
  combined = jax.tree.map(lambda ce, bns, rob, div: ce + cfg.bns_weight * bns
                          + cfg.robust_weight * rob + cfg.diversity_weight * div,
                          g['g_ce'], g['g_bns'], g['g_rob'], g['g_div'])
  for a, b in zip(jax.tree.leaves(g['total']), jax.tree.leaves(combined)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)  # pre-BN biases: float noise


# ----------------------------------------------------------------------------- diversity

def torch_soft_labels(eta, labels, num_classes, kappa, steps, step_size=1.0):
  """method.md's decorrelated soft labels in float64 torch (autograd for ∂/∂η, torch.corrcoef
  for C) from the given η: softmax(κ·onehot + η) after `steps` RMS-normalized gradient steps on
  mean_{i≠j} C_ij², keeping the best iterate. Returns (labels, penalty of every iterate)."""
  logits0 = kappa * torch.nn.functional.one_hot(torch.as_tensor(np.asarray(labels, np.int64)), num_classes).double()
  eta = torch.tensor(np.asarray(eta), dtype=torch.float64)
  b = len(labels)

  def penalty(e):
    c = torch.corrcoef(torch.softmax(logits0 + e, -1))
    return torch.sum((c * (1 - torch.eye(b, dtype=c.dtype))) ** 2) / (b * (b - 1))

  best, values = eta, [penalty(eta).item()]
  for _ in range(steps):
    e = eta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(penalty(e), e)
    eta = eta - step_size * g / torch.sqrt(torch.mean(g ** 2)).clamp_min(1e-12)
    values.append(penalty(eta).item())
    if values[-1] < min(values[:-1]):
      best = eta
  return torch.softmax(logits0 + best, -1).numpy(), values


def test_soft_labels_match_torch_given_the_same_eta():
  labels = jnp.asarray([0, 0, 0, 1, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9])
  step_counts = (0, 1, 3, 10)

  @jax.jit
  def run(rng):  # one program for every step count
    return jnp.stack([perturb.soft_labels(rng, labels, 10, 3.0, n) for n in step_counts])

  kept_an_earlier_iterate = False
  for seed in range(3):
    rng = jax.random.PRNGKey(seed)
    eta = jax.random.normal(rng, (16, 10))  # soft_labels' draw of η from its key
    ys = np.asarray(run(rng))
    for y, n in zip(ys[:3], step_counts):
      want, values = torch_soft_labels(eta, np.asarray(labels), 10, 3.0, n)
      np.testing.assert_allclose(y, want, atol=2e-5, err_msg=f'seed {seed}, {n} steps')
    # The default (3 steps) lowers the correlation; the labels the batch was drawn for keep
    # most of the mass.
    assert values[3] < 0.9 * values[0], values
    assert float(np.mean(ys[2][np.arange(16), labels])) > 0.4
    # 10 steps: float32 and float64 trajectories drift apart (two iterates of nearly equal
    # penalty may swap), so compare penalties: the labels kept are the best iterate's.
    _, values = torch_soft_labels(eta, np.asarray(labels), 10, 3.0, 10)
    penalty = float(losses.label_correlation_penalty(jnp.asarray(ys[3])))
    assert penalty <= 1.01 * min(values), (penalty, values)
    kept_an_earlier_iterate |= values[-1] > 1.05 * min(values)
  # The fixed normalized steps overshoot: some trajectory ends above its best iterate, so
  # the comparison above covers keeping the best (not the last) iterate.
  assert kept_an_earlier_iterate


def torch_resample(images, scale, shift):
  """Zoom by `scale` (B,) about the centre, then shift by `shift` (B, 2) pixels (rows, cols),
  bilinear with zero fill: torch's affine_grid + grid_sample (align_corners=False), in which a
  shift of d pixels is 2d/size in normalized coordinates."""
  x = torch.from_numpy(np.asarray(images, np.float64)).permute(0, 3, 1, 2)
  h, w = x.shape[2:]
  s = torch.from_numpy(np.asarray(scale, np.float64))
  d = torch.from_numpy(np.asarray(shift, np.float64))
  theta = torch.zeros(len(s), 2, 3, dtype=torch.float64)
  theta[:, 0, 0] = theta[:, 1, 1] = 1 / s
  theta[:, 0, 2] = -2 * d[:, 1] / (w * s)
  theta[:, 1, 2] = -2 * d[:, 0] / (h * s)
  grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
  out = torch.nn.functional.grid_sample(x, grid, mode='bilinear', padding_mode='zeros',
                                        align_corners=False)
  return out.permute(0, 2, 3, 1).numpy()


def reference_perturbation(kind, rng, x, noise_std=0.1, min_scale=0.6, max_fraction=0.125):
  """Each input perturbation from the same random draws as perturb.py makes from `rng`
  (uniform zoom/shift, Bernoulli flip, Gaussian noise), the geometry computed by torch."""
  b, h = x.shape[0], x.shape[1]
  if kind == 'crop':
    k1, k2 = jax.random.split(rng)
    zoom = 1 / np.sqrt(np.asarray(jax.random.uniform(k1, (b,), minval=min_scale, maxval=1.0)))
    room = (zoom - 1)[:, None] * h / 2
    shift = np.asarray(jax.random.uniform(k2, (b, 2), minval=-1.0, maxval=1.0)) * room
    return torch_resample(x, zoom, shift)
  if kind == 'translate':
    shift = np.asarray(jax.random.uniform(rng, (b, 2), minval=-1.0, maxval=1.0)) * max_fraction * h
    return torch_resample(x, np.ones(b), shift)
  if kind == 'flip':
    flip = np.asarray(jax.random.bernoulli(rng, 0.5, (b, 1, 1, 1)))
    return np.where(flip, np.asarray(x)[:, :, ::-1], np.asarray(x))
  return np.asarray(x) + noise_std * np.asarray(jax.random.normal(rng, x.shape))


def test_input_perturbations_match_torch_given_the_same_draws():
  x = images(6)
  fn = jax.jit(perturb.perturb_input, static_argnums=2)
  chosen, changed = set(), {}
  for seed in range(6):
    rng = jax.random.PRNGKey(seed)
    for kind in perturb.INPUT_PERTURBATIONS:  # one kind: applied with the second half of the key
      got = fn(rng, x, (kind,))
      assert got.shape == x.shape and got.dtype == x.dtype
      want = reference_perturbation(kind, jax.random.split(rng)[1], x)
      np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f'{kind}, seed {seed}')
      changed[kind] = changed.get(kind, 0) + (not np.allclose(got, x, atol=1e-3))
    # All kinds: one drawn uniformly with the first half of the key.
    k_choice, k_apply = jax.random.split(rng)
    kind = perturb.INPUT_PERTURBATIONS[int(jax.random.randint(k_choice, (), 0, 4))]
    chosen.add(kind)
    np.testing.assert_allclose(fn(rng, x, perturb.INPUT_PERTURBATIONS),
                               reference_perturbation(kind, k_apply, x), atol=1e-5)
  assert len(chosen) >= 3
  assert changed == {k: 6 for k in perturb.INPUT_PERTURBATIONS}, changed  # none is the identity


def test_perturb_input_rejects_unknown_kind():
  with pytest.raises(ValueError, match='rotate'):
    perturb.perturb_input(jax.random.PRNGKey(0), images(2), ('crop', 'rotate'))


def test_crop_and_translate_identity_and_shift():
  x = images(3)
  np.testing.assert_allclose(perturb.random_crop(jax.random.PRNGKey(0), x, min_scale=1.0), x,
                             atol=1e-6)
  np.testing.assert_allclose(perturb.random_translate(jax.random.PRNGKey(0), x, max_fraction=0.0),
                             x, atol=1e-6)
  # A whole-pixel shift moves the image and fills with zeros: out[i, j] = x[i − 1, j + 2].
  shifted = np.asarray(perturb._resample(x, jnp.ones(3), jnp.asarray([[1.0, -2.0]] * 3)))
  expected = np.zeros_like(np.asarray(x))
  expected[:, 1:, :-2] = np.asarray(x)[:, :-1, 2:]
  np.testing.assert_allclose(shifted, expected, atol=1e-6)
  flipped = perturb.random_flip(jax.random.PRNGKey(1), x)
  for a, b in zip(np.asarray(flipped), np.asarray(x)):
    assert np.array_equal(a, b) or np.array_equal(a, b[:, ::-1])

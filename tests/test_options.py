"""Every advertised option of config.loss / config.quant / config.generator, run through jitted
code and checked by a number against an independent computation (numpy formulas, a numpy
generator forward, a gradient written out in the test).

Tiny models (test_losses.TINY: depth-8, width-4 CIFAR ResNet on 8×8×3, random weights and BN
statistics) keep each compilation to seconds."""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from ris_jax import layers, losses, perturb, quant, train
from ris_jax.models.generator import ConditionalBNGenerator
from test_losses import TINY, images, np_log_softmax, tiny_teacher

B = 8


def tiny_config(**loss):
  c = default.get_config()
  c.generator.width = 8
  c.generator.latent_dim = 8
  c.train.batch_size = B
  c.loss.update(loss)
  return c


_BUILT = {}


def build(config):
  """(Models, state, teacher variables) of `config` on the tiny teacher, built once per config
  (callers must not donate the state)."""
  key = config.to_json()
  if key not in _BUILT:
    module, t_vars = tiny_teacher()
    _BUILT[key] = train.build(config, TINY, module, t_vars) + (t_vars,)
  return _BUILT[key]


def with_loss(models, **loss):
  cfg = models.loss.as_configdict().copy_and_resolve_references()  # as_configdict: no copy
  cfg.update(loss)
  return dataclasses.replace(models, loss=ml_collections.FrozenConfigDict(cfg))


# ----------------------------------------------------------------------------- numpy references


def np_softmax(z):
  return np.exp(np_log_softmax(z))


def np_inconsistency(f, z, pf, pz, distance):
  """(feature, prediction) inconsistency of method.md in float64 numpy."""
  f, pf = np.asarray(f, np.float64), np.asarray(pf, np.float64)
  cos = np.sum(f * pf, -1) / (np.linalg.norm(f, axis=-1) * np.linalg.norm(pf, axis=-1))
  p, q = np_softmax(z), np_softmax(pz)
  if distance == 'l1':
    pred = np.mean(np.abs(p - q).sum(-1))
  else:
    pred = np.mean(np.sum(p * (np_log_softmax(z) - np_log_softmax(pz)), -1))
  return np.mean(1 - cos), pred


@jax.jit
def _teacher_out(t_vars, x):
  logits, taps = tiny_teacher()[0].apply(t_vars, x, mutable=['features'])
  return logits, taps['features']['pooled']


def teacher_out(module, t_vars, x, params=None):
  del module  # always the tiny teacher
  v = t_vars if params is None else {**t_vars, 'params': params}
  return tuple(np.asarray(a) for a in _teacher_out(v, x))


_perturb_input = jax.jit(perturb.perturb_input, static_argnums=(2, 3))
_perturb_weights = jax.jit(perturb.perturb_weights, static_argnums=2)


def np_one_draw(cfg, module, t_vars, x, key, direction=None):
  """One perturbation draw as method.md defines it: x̃ = A(x) (key's first half), θ̃ = θ + ε|θ|ξ
  (second half); the inconsistency between the clean and perturbed teacher, in numpy."""
  k_in, k_w = jax.random.split(key)
  xp = _perturb_input(k_in, x, tuple(cfg['input_kinds']), cfg['noise_std']) \
      if cfg['input_perturbation'] else x
  params = t_vars['params']
  if cfg['weight_perturbation']:
    params = _perturb_weights(k_w, params, cfg['weight_eps'], direction)
  z, f = teacher_out(module, t_vars, x)
  pz, pf = teacher_out(module, t_vars, xp, params)
  return np_inconsistency(f, z, pf, pz, cfg['prediction_distance'])


def np_hinge(cfg, feat, pred, margins=(0.0, 0.0)):
  return (cfg['feature_weight'] * max(feat - margins[0], 0.0)
          + cfg['prediction_weight'] * max(pred - margins[1], 0.0))


@functools.partial(jax.jit, static_argnums=0)
def _robustness(models, t_vars, x, rng, margins):
  logits, features, _ = train.teacher_forward(models, t_vars, x)
  return train.robustness_term(models, t_vars, x, logits, features, rng, margins)


def robustness(models, t_vars, x, rng, margins=(0.0, 0.0)):
  value, aux = _robustness(models, t_vars, x, rng, jnp.asarray(margins, jnp.float32))
  return float(value), {k: float(v) for k, v in aux.items()}


# ----------------------------------------------------------------------------- config.loss


@pytest.mark.full(reason='compiles a generator-loss or whole-step program of its own for the option (6–22 s)')
def test_kl_distance_num_draws_and_margin_fraction():
  """loss.prediction_distance='kl', loss.num_draws > 1 and loss.margin_fraction > 0: L_rob is
  the mean over N draws (keys split from the step's key) of w_f·max(L_feat − m_f, 0) +
  w_p·max(L_pred − m_p, 0), L_pred = KL(p ‖ p̃) of the clean and perturbed predictions; the
  margins are fraction × the inconsistency of the same kind of perturbation on N(0, 1) images
  (train.noise_margins). All against numpy (the l1 distance: test_losses)."""
  draws, fraction = 3, 0.8
  models, _, t_vars = build(tiny_config())
  models = with_loss(models, prediction_distance='kl', num_draws=draws, feature_weight=0.7,
                     prediction_weight=1.3, margin_fraction=fraction)
  module, _ = tiny_teacher()
  cfg = models.loss
  x, rng = images(B), jax.random.PRNGKey(4)
  value, aux = robustness(models, t_vars, x, rng)
  per_draw = [np_one_draw(cfg, module, t_vars, x, k) for k in jax.random.split(rng, draws)]
  feat, pred = np.mean([d[0] for d in per_draw]), np.mean([d[1] for d in per_draw])
  np.testing.assert_allclose(aux['feat_inconsistency'], feat, rtol=1e-4)
  np.testing.assert_allclose(aux['pred_inconsistency'], pred, rtol=1e-4)
  np.testing.assert_allclose(value, np.mean([np_hinge(cfg, *d) for d in per_draw]), rtol=1e-4)
  assert feat > 1e-4 and pred > 1e-4
  assert abs(per_draw[0][1] - per_draw[1][1]) > 1e-3 * pred  # the draws differ

  m_rng = jax.random.PRNGKey(7)
  margins = np.asarray(jax.jit(train.noise_margins, static_argnums=(0, 2, 3, 4))(
      models, t_vars, B, TINY.input_shape, fraction, m_rng))
  k_x, k_p = jax.random.split(m_rng)
  noise = jax.random.normal(k_x, (B,) + TINY.input_shape)
  on_noise = [np_one_draw(cfg, module, t_vars, noise, k) for k in jax.random.split(k_p, draws)]
  np.testing.assert_allclose(margins, fraction * np.mean(on_noise, 0), rtol=1e-4)
  assert np.all(margins > 0)
  hinged, _ = robustness(models, t_vars, x, rng, margins)
  np.testing.assert_allclose(hinged, np.mean([np_hinge(cfg, *d, margins) for d in per_draw]),
                             rtol=1e-4, atol=1e-7)
  assert hinged < value - 1e-4  # the margins take something off
  # margin_fraction 0 (the default): no margins at all.
  assert not np.any(np.asarray(train.noise_margins(models, t_vars, B, TINY.input_shape, 0.0, m_rng)))


@pytest.mark.full(reason='compiles a generator-loss or whole-step program of its own for the option (6–22 s)')
def test_adversarial_weight_perturbation():
  """loss.adversarial: θ̃ = θ + ε|θ|·sign(∂L/∂ξ) at a random ξ, the gradient written out here
  (ξ drawn as train draws it, from the weight half of the draw's key)."""
  models, _, t_vars = build(tiny_config())
  models = with_loss(models, adversarial=True, input_perturbation=False)
  module, _ = tiny_teacher()
  cfg = models.loss
  x, rng = images(B), jax.random.PRNGKey(9)
  _, k_w = jax.random.split(rng)
  params = t_vars['params']
  xi = perturb.weight_noise(k_w, params)
  z, f = teacher_out(module, t_vars, x)

  def inconsistency(xi):  # L_feat + L_pred (weights 1) of θ + ε|θ|ξ on kernels only
    theta = jax.tree_util.tree_map_with_path(
        lambda p, t, d: t + cfg['weight_eps'] * jnp.abs(t) * d if p[-1].key == 'kernel' else t,
        params, xi)
    logits, taps = module.apply({**t_vars, 'params': theta}, x, mutable=['features'])
    pf = taps['features']['pooled']
    cos = jnp.sum(f * pf, -1) / (jnp.linalg.norm(f, axis=-1) * jnp.linalg.norm(pf, axis=-1))
    p, q = jax.nn.softmax(z), jax.nn.softmax(logits)
    return jnp.mean(1 - cos) + jnp.mean(jnp.sum(jnp.abs(p - q), -1))

  direction = jax.tree.map(jnp.sign, jax.jit(jax.grad(inconsistency))(xi))
  want = np_one_draw(cfg, module, t_vars, x, rng, direction)
  value, aux = robustness(models, t_vars, x, rng)
  # rtol 1e-3: two programs for one gradient; a sign may flip where it is float noise
  np.testing.assert_allclose(aux['feat_inconsistency'], want[0], rtol=1e-3)
  np.testing.assert_allclose(aux['pred_inconsistency'], want[1], rtol=1e-3)
  # The ascent direction perturbs the teacher more than the random draw of the same ε.
  random_value = np_hinge(cfg, *np_one_draw(cfg, module, t_vars, x, rng))
  assert value > 1.5 * random_value, (value, random_value)


@pytest.mark.full(reason='compiles a generator-loss or whole-step program of its own for the option (6–22 s)')
def test_diversity_weight_and_student_ce_off_through_the_generator_and_student_losses():
  """loss.diversity_weight > 0: L_G gains λ_d·mean_{i≠j} C_ij² of the teacher's predictions on
  the generated images; loss.student_ce=False: L_Q is α·KD alone. Both against numpy."""
  config = tiny_config()
  models, state, t_vars = build(config)
  models = with_loss(models, diversity_weight=0.5, student_ce=False, kd_alpha=0.7,
                     robust_weight=0.0)
  cfg = models.loss
  k_z, k_y = jax.random.split(jax.random.PRNGKey(3))
  z = jax.random.normal(k_z, (B, config.generator.latent_dim))
  labels, targets = train.sample_labels(models, k_y, B)
  total, (imgs, logits, metrics) = jax.jit(train.generator_loss, static_argnums=1)(
      state.generator['params'], models, state.generator['batch_stats'], t_vars, z, labels,
      targets, jax.random.PRNGKey(0))
  probs = np_softmax(logits)
  c = np.corrcoef(probs)
  div = np.mean(c[~np.eye(B, dtype=bool)] ** 2)
  ce = -np.mean(np.sum(np.asarray(targets) * np_log_softmax(logits), -1))
  np.testing.assert_allclose(metrics['g_div'], div, rtol=1e-4)
  np.testing.assert_allclose(metrics['g_ce'], ce, rtol=1e-5)
  np.testing.assert_allclose(total, ce + cfg.bns_weight * float(metrics['g_bns']) + 0.5 * div,
                             rtol=1e-5)
  assert div > 1e-3

  s_logits = np.asarray(models.student.apply(train.student_variables(state, t_vars), imgs))
  tau = cfg.kd_tau
  log_p, log_q = np_log_softmax(np.asarray(logits) / tau), np_log_softmax(s_logits / tau)
  kd = tau ** 2 * np.sum(np.exp(log_p) * (log_p - log_q)) / s_logits.size
  s_ce = -np.mean(np.sum(np.asarray(targets) * np_log_softmax(s_logits), -1))
  loss = jax.jit(train.student_loss, static_argnums=(1, 7))
  (tag,) = models.tags
  args = (t_vars, state.quant_ranges[tag], imgs, targets, logits, False)
  s_off, (_, m_off) = loss(state.student[tag], models, *args)
  s_on, _ = loss(state.student[tag], with_loss(models, student_ce=True), *args)
  np.testing.assert_allclose(m_off['s_kd'], kd, rtol=1e-4)
  np.testing.assert_allclose(s_off, 0.7 * kd, rtol=1e-4)
  np.testing.assert_allclose(s_on, 0.7 * kd + s_ce, rtol=1e-4)
  assert s_ce > 0.1


# ----------------------------------------------------------------------------- config.quant


def _student(config):
  """The quantized student of `config.quant` on the tiny teacher (as train.build makes it)."""
  from ris_jax import student
  _, t_vars = tiny_teacher()
  return student.make_student(TINY, t_vars, train.quant_spec(config))


def _stem_activation(probe=None, seen=None):
  """Interceptor of the stem's activation: records its input in `seen` and/or adds a zero
  `probe` to it (so ∂/∂probe is the gradient there)."""
  def interceptor(next_fun, args, kwargs, context):
    m = context.module
    if isinstance(m, layers.Activation) and context.method_name == '__call__' \
        and m.path == ('init_block', 'Activation_0'):
      if seen is not None:
        seen['x'] = args[0]
      if probe is not None:
        return next_fun(args[0] + probe, *args[1:], **kwargs)
    return next_fun(*args, **kwargs)
  return nn.intercept_methods(interceptor)


@pytest.mark.full(reason='a student forward and its gradient compiled per setting (~10 s each); '
                  'the quick tier checks the clipped STE numerics in tests/test_quant.py')
@pytest.mark.parametrize('clipped', [False, True])
def test_clipped_ste_zeroes_gradients_outside_the_range(clipped):
  """quant.clipped_ste: the activation quantizer passes no gradient where the ReLU output lies
  outside the calibrated [lo, hi] (here: images twice as large as the calibration batch);
  without it, the gradient passes wherever the ReLU does."""
  config = tiny_config()
  config.quant.clipped_ste = clipped
  module, variables = _student(config)
  x = images(B, seed=2)
  _, upd = module.apply(variables, x, mutable=['quant_ranges'])
  variables = {**variables, 'quant_ranges': upd['quant_ranges']}
  hi = float(variables['quant_ranges']['init_block']['Activation_0']['hi'])

  def loss(probe, x):
    with _stem_activation(probe=probe):
      return jnp.sum(module.apply(variables, x) * jnp.arange(10.0))

  def stem_input(x):
    seen = {}
    with _stem_activation(seen=seen):
      module.apply(variables, x)
    return seen['x']

  big = 2.0 * x
  pre = np.asarray(jax.jit(stem_input)(big))
  g = np.asarray(jax.jit(jax.grad(loss))(jnp.zeros(pre.shape), big))
  relu = np.maximum(pre, 0)
  passes = pre > 0
  if clipped:
    passes &= relu <= hi
  assert (relu > hi).sum() >= 20  # the range is exceeded somewhere
  # The mask and the gradient come from two programs: an element within rounding of a
  # boundary (0, hi) may fall on its other side in one of them; those are not judged.
  tol = 1e-5 * np.abs(pre).max()
  clear = np.abs(pre) > tol
  if clipped:
    clear &= np.abs(relu - hi) > tol
  assert np.all(g[~passes & clear] == 0)
  assert np.mean(g[passes] != 0) > 0.95


def test_first_last_bits_gives_stem_and_head_their_own_bits():
  """quant.first_last_bits=8 with w_bits=2: the stem conv and the classifier compute with
  8-bit per-channel kernels, every other conv with 2-bit ones (numpy quantizer and conv)."""
  from test_quant import np_fake_quant
  config = tiny_config()
  config.quant.w_bits, config.quant.first_last_bits = 2, 8
  module, variables = _student(config)
  x = np.asarray(images(B, seed=5))
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, (layers.Conv, layers.Dense)) and context.method_name == '__call__':
      seen['/'.join(context.module.path)] = (args[0], out)
    return out

  @jax.jit
  def run(variables, x):
    with nn.intercept_methods(interceptor):
      module.apply(variables, x)
    return dict(seen)

  seen = {k: tuple(np.asarray(a, np.float64) for a in v) for k, v in run(variables, x).items()}
  params = variables['params']

  def q(kernel, bits):
    k = np.asarray(kernel, np.float32)
    flat = k.reshape(-1, k.shape[-1])
    return np_fake_quant(flat, flat.min(0), flat.max(0), bits).reshape(k.shape).astype(np.float64)

  def conv3x3(inp, kernel):
    xp = np.pad(inp, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w = inp.shape[1:3]
    return sum(np.einsum('nhwc,co->nhwo', xp[:, i:i + h, j:j + w], kernel[i, j])
               for i in range(3) for j in range(3))

  levels = {}
  for path, kernel, bits in (('init_block/conv', params['init_block']['conv']['kernel'], 8),
                             ('stage1_unit1/body/conv1/conv',
                              params['stage1_unit1']['body']['conv1']['conv']['kernel'], 2)):
    inp, out = seen[path]
    np.testing.assert_allclose(out, conv3x3(inp, q(kernel, bits)), rtol=1e-4, atol=1e-4)
    levels[path] = max(len(np.unique(q(kernel, bits)[..., c])) for c in range(kernel.shape[-1]))
    other = conv3x3(inp, q(kernel, 2 if bits == 8 else 8))
    assert np.abs(out - other).max() > 1e-2  # the bit-width makes a difference
  inp, out = seen['output']
  head = params['output']
  np.testing.assert_allclose(out, inp @ q(head['kernel'], 8) + np.asarray(head['bias']),
                             rtol=1e-4, atol=1e-5)
  assert levels['init_block/conv'] > 4 and levels['stage1_unit1/body/conv1/conv'] <= 4


# ----------------------------------------------------------------------------- generator.kind


def np_conditional_bn_generator(p, z, y, image_size, channels):
  """ConditionalBNGenerator's forward (models/generator.py docstring) in float64 numpy."""
  def bn(h, eps):
    mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
    return (h - mean) / np.sqrt(var + eps)

  def cbn(h, q, eps):
    return bn(h, eps) * (y @ q['class_scale'])[:, None, None] + (y @ q['class_shift'])[:, None, None]

  def conv(h, q):
    xp = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    n, hh, ww, _ = h.shape
    k = q['kernel']
    return sum(np.einsum('nhwc,co->nhwo', xp[:, i:i + hh, j:j + ww], k[i, j])
               for i in range(3) for j in range(3)) + q['bias']

  up = lambda h: h.repeat(2, 1).repeat(2, 2)
  leaky = lambda h: np.where(h > 0, h, 0.2 * h)
  s = image_size // 4
  h = (z @ p['fc']['kernel'] + p['fc']['bias']).reshape(len(z), s, s, -1)
  h = cbn(h, p['cbn0'], 1e-5)
  h = leaky(cbn(conv(up(h), p['conv1']), p['cbn1'], 0.8))
  h = leaky(cbn(conv(up(h), p['conv2']), p['cbn2'], 0.8))
  return bn(np.tanh(conv(h, p['conv3'])), 1e-5)


def test_conditional_bn_generator_matches_numpy():
  gen = ConditionalBNGenerator(num_classes=10, image_size=8, channels=3, latent_dim=8, width=8)
  rng = np.random.default_rng(0)
  z = rng.standard_normal((B, 8)).astype(np.float32)
  y = rng.dirichlet(np.ones(10) * 0.3, B).astype(np.float32)
  shapes = jax.eval_shape(gen.init, jax.random.PRNGKey(0), z, y)['params']
  params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.5, jnp.float32),
                        shapes)
  out, _ = jax.jit(lambda p, z, y: gen.apply({'params': p}, z, y, mutable=['batch_stats']))(
      params, z, y)
  want = np_conditional_bn_generator(jax.tree.map(lambda a: np.asarray(a, np.float64), params),
                                     z.astype(np.float64), y.astype(np.float64), 8, 3)
  assert out.shape == (B, 8, 8, 3)
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
  # The labels condition the images: other soft labels, other images.
  other, _ = gen.apply({'params': params}, z, y[::-1], mutable=['batch_stats'])
  assert np.abs(np.asarray(other) - np.asarray(out)).max() > 0.1


@pytest.mark.full(reason='compiles a generator-loss or whole-step program of its own for the option (6–22 s)')
def test_one_ris_step_with_every_option_on():
  """One jitted RIS iteration with generator.kind='conditional_bn' and every loss/quant option
  on (adversarial, 2 draws, margins, KL, L_div, no student CE, clipped STE, 8-bit first/last
  layers at W2A4), one-hot labels. Checked: g_loss is the sum of its logged terms; the student
  loss is α·KD in numpy on the step's images; the student update is SGD-Nesterov on the
  gradient of that loss written out here; the class rows of the conditional BNs of classes
  absent from the batch do not move (Adam on a zero gradient), the others do."""
  config = tiny_config(adversarial=True, num_draws=2, margin_fraction=0.5,
                       prediction_distance='kl', diversity_weight=0.5, student_ce=False,
                       soft_labels=False)
  config.generator.kind = 'conditional_bn'
  config.quant.w_bits, config.quant.a_bits = 2, 4
  config.quant.first_last_bits = 8
  config.quant.clipped_ste = True
  config.student.learning_rate = 0.05  # updates well above float32 rounding
  models, state, t_vars = build(config)
  assert isinstance(models.generator, ConditionalBNGenerator)
  mesh = train.make_mesh()
  margins = jax.jit(train.noise_margins, static_argnums=(0, 2, 3, 4))(
      models, t_vars, B, TINY.input_shape, 0.5, jax.random.PRNGKey(1))
  before = jax.device_get(state)
  step = train.jit_ris_step(models, B, mesh)
  new, metrics = step(train.replicate(state, mesh), train.replicate(t_vars, mesh),
                      train.replicate(margins, mesh), update_student=True, calibrate=True)
  new, metrics = jax.device_get((new, metrics))
  cfg = config.loss
  np.testing.assert_allclose(
      metrics['g_loss'], metrics['g_ce'] + cfg.bns_weight * metrics['g_bns']
      + cfg.robust_weight * metrics['g_rob'] + cfg.diversity_weight * metrics['g_div'], rtol=1e-5)
  assert all(np.isfinite(v) for v in metrics.values())

  # The step's images, regenerated from its key and the generator before the update.
  k_z, k_y, _ = jax.random.split(jax.random.fold_in(before.rng, 0), 3)
  z = jax.random.normal(k_z, (B, config.generator.latent_dim))
  labels, onehot = train.sample_labels(models, k_y, B)
  imgs, _ = models.generator.apply(before.generator, z, onehot, mutable=['batch_stats'])
  t_logits = models.teacher.apply(t_vars, imgs)
  s_vars = train.student_variables(before, t_vars)

  def kd_only(params):  # α·τ²·KL(T ‖ Q) / (B·C), the calibrating forward
    logits, upd = models.student.apply({**s_vars, 'params': params}, imgs, mutable=['quant_ranges'])
    log_p = jax.nn.log_softmax(t_logits / cfg.kd_tau)
    log_q = jax.nn.log_softmax(logits / cfg.kd_tau)
    return cfg.kd_alpha * cfg.kd_tau ** 2 * jnp.sum(jnp.exp(log_p) * (log_p - log_q)) / logits.size, (logits, upd)

  (tag,) = models.tags
  (value, (s_logits, upd)), grads = jax.jit(jax.value_and_grad(kd_only, has_aux=True))(
      before.student[tag])
  tau = cfg.kd_tau
  lp, lq = np_log_softmax(np.asarray(t_logits) / tau), np_log_softmax(np.asarray(s_logits) / tau)
  np.testing.assert_allclose(metrics['s_loss'],
                             cfg.kd_alpha * tau ** 2 * np.sum(np.exp(lp) * (lp - lq)) / s_logits.size,
                             rtol=2e-4)
  np.testing.assert_allclose(metrics['s_loss'], value, rtol=2e-4)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               new.quant_ranges[tag], jax.device_get(upd['quant_ranges']))
  s = config.student
  # optax: add_decayed_weights then SGD with Nesterov momentum; first step, zero trace.
  want = jax.tree.map(lambda p, g: p - s.learning_rate * (1 + s.momentum) * (g + s.weight_decay * p),
                      before.student[tag], jax.device_get(grads))
  moved = []
  for a, b, p in zip(jax.tree.leaves(new.student[tag]), jax.tree.leaves(want),
                     jax.tree.leaves(before.student[tag])):
    # compare the updates, not the parameters (an update is small next to its parameter)
    np.testing.assert_allclose(a - p, b - p, rtol=1e-3, atol=1e-6)
    moved.append(np.abs(a - p).max())
  assert max(moved) > 1e-3

  present = np.isin(np.arange(10), np.asarray(labels))
  assert 0 < present.sum() < 10
  for name in ('cbn0', 'cbn1', 'cbn2'):
    for leaf in ('class_scale', 'class_shift'):
      old = before.generator['params'][name][leaf]
      cur = new.generator['params'][name][leaf]
      np.testing.assert_array_equal(cur[~present], old[~present])
      assert np.all(np.abs(cur[present] - old[present]).max(-1) > 0), (name, leaf)

"""layers.UpsampleConv: the parity formulation (four 2×2 convs on the low-resolution grid, own
custom_vjp) against nearest-upsample ×2 + 3×3 conv written independently (numpy index
repetition, then lax.conv or an explicit numpy sum over taps), in values and gradients; and the
generators giving the same images with either setting for the same parameters."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ris_jax import layers
from ris_jax.models.generator import GENERATORS


def numpy_upsample_conv(x, kernel, bias):
  """float64 reference: u[2i + r, 2j + s] = x[i, j]; y = Σ_taps pad1(u)[p + u, q + v]·K[u, v] + b."""
  u = x.repeat(2, axis=1).repeat(2, axis=2).astype(np.float64)
  n, h, w, _ = u.shape
  up = np.pad(u, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = np.zeros((n, h, w, kernel.shape[-1]))
  for a in range(3):
    for b in range(3):
      y += np.einsum('nhwi,io->nhwo', up[:, a:a + h, b:b + w], kernel[a, b].astype(np.float64))
  return y + bias


def apply_layer(method, params, x):
  return layers.UpsampleConv(params['bias'].shape[0], method).apply({'params': params}, x)


@pytest.mark.parametrize('shape', [(3, 5, 6, 7, 5), (2, 4, 4, 8, 6), (4, 3, 7, 1, 3)],
                         ids=['odd-channels', 'even-channels', 'one-input-channel'])
@pytest.mark.parametrize('jit', [
    pytest.param(False, marks=pytest.mark.full(reason='the same function un-jitted (~11 s)')),
    True], ids=['eager', 'jit'])
def test_parity_equals_plain_values_and_gradients(shape, jit):
  n, h, w, ci, co = shape
  rng = np.random.default_rng(sum(shape))
  x = rng.normal(size=(n, h, w, ci)).astype(np.float32)
  params = {'kernel': rng.normal(size=(3, 3, ci, co)).astype(np.float32),
            'bias': rng.normal(size=(co,)).astype(np.float32)}
  cot = rng.normal(size=(n, 2 * h, 2 * w, co)).astype(np.float32)

  ref = numpy_upsample_conv(x, params['kernel'], params['bias'])
  scale = np.abs(ref).max()
  results = {}
  for method in ('plain', 'parity'):
    fn = lambda p, x, m=method: apply_layer(m, p, x)
    if jit:
      fn = jax.jit(fn)
    y, vjp = jax.vjp(fn, params, x)
    (g_params, g_x) = vjp(jnp.asarray(cot))
    results[method] = (np.asarray(y), g_params, np.asarray(g_x))
    assert y.shape == (n, 2 * h, 2 * w, co)
    np.testing.assert_allclose(np.asarray(y), ref, atol=2e-6 * scale, rtol=0)

  y_plain, gp_plain, gx_plain = results['plain']
  y_par, gp_par, gx_par = results['parity']
  np.testing.assert_allclose(y_par, y_plain, atol=2e-6 * scale, rtol=0)
  for got, want in [(gx_par, gx_plain), (gp_par['kernel'], gp_plain['kernel']),
                    (gp_par['bias'], gp_plain['bias'])]:
    want = np.asarray(want)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-6 * np.abs(want).max(), rtol=0)
  # independent check of the input gradient: the float64 reference is linear in x, so a
  # central difference along a random direction d gives ⟨cot, ∂y/∂x·d⟩ exactly.
  d = rng.normal(size=x.shape)
  step = 1e-3
  fd = ((numpy_upsample_conv(x + step * d, params['kernel'], params['bias'])
         - numpy_upsample_conv(x - step * d, params['kernel'], params['bias'])) / (2 * step) * cot).sum()
  np.testing.assert_allclose((gx_par * d).sum(), fd, rtol=0, atol=1e-5 * np.abs(gx_par * d).sum())
  np.testing.assert_allclose(np.asarray(gp_par['bias']), cot.sum((0, 1, 2)), rtol=1e-5, atol=1e-4)


def test_parity_kernel_gradient_against_numpy():
  """∂⟨cot, y⟩/∂K[u, v] = Σ pad1(upsample2(x))[p + u, q + v]·cot[p, q], float64."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 5, 3)).astype(np.float32)
  cot = rng.normal(size=(2, 6, 8, 3)).astype(np.float32)
  g = jax.grad(lambda k: jnp.sum(layers.upsample2_conv3x3_parity(x, k) * cot))(kernel)
  up = np.pad(x.repeat(2, 1).repeat(2, 2).astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.stack([np.stack([np.einsum('nhwi,nhwo->io', up[:, a:a + 6, b:b + 8], cot)
                             for b in range(3)]) for a in range(3)])
  np.testing.assert_allclose(np.asarray(g), want, atol=2e-6 * np.abs(want).max(), rtol=0)


def test_parity_kernels_sum_the_taps():
  """Each parity kernel's taps add up to the whole 3×3 kernel (every tap lands once)."""
  k = np.random.default_rng(2).normal(size=(3, 3, 2, 2)).astype(np.float32)
  p = np.asarray(layers.parity_kernels(jnp.asarray(k)))
  for r in range(2):
    for s in range(2):
      np.testing.assert_allclose(p[r, s].sum((0, 1)), k.sum((0, 1)), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(p[0, 0, 1, 1], k[1:, 1:].sum((0, 1)), rtol=1e-6)  # rows/cols 1+2
  np.testing.assert_allclose(p[1, 0, 0, 0], k[:2, 0].sum(0), rtol=1e-6)  # rows 0+1, col 0


@pytest.mark.full(reason='two generators traced and differentiated un-jitted (~20 s); the layer itself is checked jitted')
@pytest.mark.parametrize('kind,image_size', [('gdfq', 16), ('conditional_bn', 16)])
def test_generator_same_output_for_both_settings(kind, image_size):
  num_classes, latent = 5, 12
  make = lambda m: GENERATORS[kind](num_classes=num_classes, image_size=image_size, latent_dim=latent,
                                    width=12, upsample_conv=m)
  rng = jax.random.PRNGKey(0)
  z = jax.random.normal(rng, (6, latent))
  labels = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), (6, num_classes)) * 3)
  v_plain = make('plain').init(rng, z, labels)
  v_parity = make('parity').init(rng, z, labels)
  jax.tree.map(np.testing.assert_array_equal, v_plain['params'], v_parity['params'])  # same init
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               v_plain['batch_stats'], v_parity['batch_stats'])  # init's forward: rounding only
  variables = {'params': v_plain['params'], 'batch_stats': v_plain['batch_stats']}
  loss = lambda p, m: jnp.sum(jnp.sin(make(m).apply({**variables, 'params': p}, z, labels)))
  outs = {m: jax.jit(lambda p, m=m: jax.value_and_grad(loss)(p, m))(variables['params'])
          for m in ('plain', 'parity')}
  images = {m: make(m).apply(variables, z, labels) for m in ('plain', 'parity')}
  assert images['plain'].shape == (6, image_size, image_size, 3)
  np.testing.assert_allclose(images['parity'], images['plain'], atol=1e-5, rtol=0)
  np.testing.assert_allclose(outs['parity'][0], outs['plain'][0], rtol=1e-5)
  # tolerance relative to the largest gradient: the conv biases before a batch norm have a
  # zero gradient mathematically, so theirs are rounding noise in both settings.
  top = max(float(np.abs(g).max()) for g in jax.tree.leaves(outs['plain'][1]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * top),
               outs['parity'][1], outs['plain'][1])


def test_config_rejects_unknown_upsample_conv():
  from configs import default
  from ris_jax import config as config_lib
  from ris_jax.errors import UserError
  c = default.get_config()
  c.generator.upsample_conv = 'bilinear'
  with pytest.raises(UserError, match='upsample_conv'):
    config_lib.validate(c)

"""Quantizer numerics, STE gradients, weight/activation quantizers and the student."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ris_jax import convert, layers, quant, student
from ris_jax.models import get_arch

BITS = range(2, 9)


def np_fake_quant(x, lo, hi, bits):
  """method.md's formula in float32 numpy (np.round is half-to-even)."""
  x, lo, hi = (np.asarray(a, np.float32) for a in (x, lo, hi))
  half = np.float32(2.0 ** (bits - 1))
  scale = np.float32(2.0 ** bits - 1) / np.maximum(hi - lo, np.float32(1e-8))
  zero_point = np.round(scale * lo) + half
  q = np.clip(np.round(scale * x - zero_point), -half, half - 1)
  return ((q + zero_point) / scale).astype(np.float32)


def _codes(xq, lo, hi, bits):
  """Integer level index q of quantized values."""
  lo, hi = np.float32(lo), np.float32(hi)
  scale = np.float32(2.0 ** bits - 1) / np.maximum(hi - lo, np.float32(1e-8))
  zero_point = np.round(scale * lo) + np.float32(2.0 ** (bits - 1))
  return np.round(np.asarray(xq, np.float64) * scale - zero_point).astype(np.int64)


def _case(seed, shape, per_channel):
  rng = np.random.default_rng(seed)
  x = (rng.standard_normal(shape) * 2).astype(np.float32)
  rshape = (shape[-1],) if per_channel else ()
  lo = (-rng.uniform(0.2, 1.5, rshape)).astype(np.float32)
  hi = rng.uniform(0.2, 1.5, rshape).astype(np.float32)
  assert (x < lo).any() and (x > hi).any()  # values outside the range are included
  return x, lo, hi


@pytest.mark.parametrize('per_channel', [False, True])
@pytest.mark.parametrize('bits', BITS)
def test_fake_quant_matches_numpy(bits, per_channel):
  x, lo, hi = _case(bits, (64, 8), per_channel)
  want = np_fake_quant(x, lo, hi, bits)
  eager = np.asarray(quant.fake_quant(x, lo, hi, bits))
  jitted = np.asarray(jax.jit(quant.fake_quant, static_argnums=3)(x, lo, hi, bits))
  np.testing.assert_array_equal(eager, want)
  # Under jit XLA rewrites the divisions as multiplications by reciprocals: ≤ 2 ulp, and
  # every value stays on the same quantization level.
  np.testing.assert_array_max_ulp(jitted, want, maxulp=2)
  np.testing.assert_array_equal(_codes(jitted, lo, hi, bits), _codes(want, lo, hi, bits))
  columns = [want[:, c] for c in range(x.shape[1])] if per_channel else [want]
  for col in columns:
    assert len(np.unique(col)) <= 2 ** bits


@pytest.mark.parametrize('bits', BITS)
def test_fake_quant_rounds_half_to_even(bits):
  # lo = 0, hi = 2^k − 1 gives s = 1, zp = 2^(k−1): s·x − zp hits exact .5 ties.
  half = 2 ** (bits - 1)
  x = np.arange(-1, 2 ** bits + 1, 0.5, dtype=np.float32)
  want = (np.clip(np.round(x - half), -half, half - 1) + half).astype(np.float32)
  for fn in (quant.fake_quant, jax.jit(quant.fake_quant, static_argnums=3)):
    got = np.asarray(fn(x, 0.0, 2.0 ** bits - 1, bits))
    np.testing.assert_array_equal(got, want)
    assert got[x == 1.5][0] == 2.0 and got[x == 2.5][0] == 2.0


@pytest.mark.parametrize('clipped', [False, True])
def test_ste_gradient_under_jit(clipped):
  x, lo, hi = _case(0, (32, 4), per_channel=True)

  def loss(x, lo, hi):
    return jnp.sum(quant.fake_quant(x, lo, hi, 4, clipped_ste=clipped))

  gx, glo, ghi = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, lo, hi)
  want = ((x >= lo) & (x <= hi)).astype(np.float32) if clipped else np.ones_like(x)
  np.testing.assert_array_equal(np.asarray(gx), want)
  np.testing.assert_array_equal(np.asarray(glo), np.zeros_like(lo))
  np.testing.assert_array_equal(np.asarray(ghi), np.zeros_like(hi))


@pytest.mark.parametrize('bits', [2, 4, 8])
@pytest.mark.parametrize('shape', [(3, 3, 8, 16), (32, 10), (3, 3, 1, 24)])
def test_weight_quantizer_per_output_channel(bits, shape):
  kernel = np.random.default_rng(bits).standard_normal(shape).astype(np.float32)
  got = np.asarray(quant.WeightQuantizer(bits)(jnp.asarray(kernel)))
  flat_k = kernel.reshape(-1, shape[-1])
  flat_q = got.reshape(-1, shape[-1])
  lo, hi = flat_k.min(0), flat_k.max(0)
  np.testing.assert_array_equal(flat_q, np_fake_quant(flat_k, lo, hi, bits))
  step = (hi - lo) / (2 ** bits - 1)
  for c in range(shape[-1]):
    values = np.unique(flat_q[:, c])
    assert len(values) <= 2 ** bits
    # The grid is offset by the rounded zero point: the ends are within half a step.
    assert abs(flat_q[:, c].min() - lo[c]) <= 0.5 * step[c] * (1 + 1e-5)
    assert abs(flat_q[:, c].max() - hi[c]) <= 0.5 * step[c] * (1 + 1e-5)
    assert np.abs(flat_q[:, c] - flat_k[:, c]).max() <= 0.5 * step[c] * (1 + 1e-5)
    # Levels are evenly spaced by 1/s.
    gaps = np.diff(values) / step[c]
    np.testing.assert_allclose(gaps, np.round(gaps), atol=1e-3)


def test_weight_quantizer_gradient_is_identity():
  kernel = jnp.asarray(np.random.default_rng(0).standard_normal((3, 3, 4, 8)), jnp.float32)
  g = jax.jit(jax.grad(lambda k: jnp.sum(quant.WeightQuantizer(3)(k) * 2.0)))(kernel)
  np.testing.assert_array_equal(np.asarray(g), np.full(kernel.shape, 2.0, np.float32))


class _Toy(nn.Module):
  """A single quantized ReLU."""
  bits: int = 4

  @nn.compact
  def __call__(self, x):
    return layers.Activation(fn='relu', quantizer=quant.ActivationQuantizer(self.bits))(x)


def test_activation_quantizer_ema_calibration_and_freezing():
  rng = np.random.default_rng(0)
  batches = [(rng.standard_normal((8, 5)) * s).astype(np.float32) for s in (1.0, 3.0, 0.5, 2.0)]
  module = _Toy(4)
  variables = module.init(jax.random.key(0), batches[0])
  r = variables['quant_ranges']['Activation_0']
  assert int(r['count']) == 0
  # Uncalibrated: plain ReLU.
  np.testing.assert_array_equal(np.asarray(module.apply(variables, batches[0])),
                                np.maximum(batches[0], 0))
  calibrated = student.calibrate(module, variables, batches)
  lo = hi = None
  for b in batches:
    a = np.maximum(b, 0)
    if lo is None:
      lo, hi = a.min(), a.max()
    else:
      lo = np.float32(0.9) * lo + np.float32(0.1) * a.min()
      hi = np.float32(0.9) * hi + np.float32(0.1) * a.max()
  r = calibrated['quant_ranges']['Activation_0']
  assert int(r['count']) == len(batches)
  np.testing.assert_allclose(float(r['lo']), lo, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(float(r['hi']), hi, rtol=1e-6)
  # Frozen when quant_ranges is not mutable: output uses the stored range, nothing changes.
  x = (rng.standard_normal((16, 5)) * 10).astype(np.float32)
  out, updates = module.apply(calibrated, x, mutable=['features'])
  np.testing.assert_array_equal(
      np.asarray(out), np_fake_quant(np.maximum(x, 0), r['lo'], r['hi'], 4))
  assert 'quant_ranges' not in updates


def _activation_ranges(fn):
  """`fn` wrapped to also return the batch (min, max) of every Activation's ReLU output,
  keyed by module path."""
  def wrapped(*args):
    seen = {}

    def interceptor(next_fun, a, kw, context):
      if isinstance(context.module, layers.Activation) and context.method_name == '__call__':
        y = jax.nn.relu(a[0])
        seen[tuple(context.module.path)] = (jnp.min(y), jnp.max(y))
      return next_fun(*a, **kw)

    with nn.intercept_methods(interceptor):
      out = fn(*args)
    return out, seen
  return wrapped


@pytest.fixture(scope='module')
def digits_student():
  spec = get_arch('resnet20_digits')
  torch.manual_seed(0)  # pytorchcv's random init, converted: much faster than jit(init)
  return spec, spec.module(), convert.torch_to_flax(spec, spec.torch_model().state_dict())


def test_student_calibration_is_ema_of_every_activation(digits_student):
  spec, _, tv = digits_student
  module, variables = student.make_student(spec, tv, student.QuantSpec(4, 4))
  rng = np.random.default_rng(0)
  x1, x2 = (rng.standard_normal((4,) + spec.input_shape).astype(np.float32) for _ in range(2))
  v1 = student.calibrate(module, variables, [x1])
  step = _activation_ranges(lambda v, x: student.calibrate_step(module, v, x)[1])
  v2, batch = jax.jit(step)(v1, x2)
  assert len(batch) == 19  # stem + 2 per unit × 9 units
  for path, (lo, hi) in batch.items():
    old, new = v1['quant_ranges'], v2['quant_ranges']
    for name in path:
      old, new = old[name], new[name]
    assert int(old['count']) == 1 and int(new['count']) == 2
    np.testing.assert_allclose(float(new['lo']), 0.9 * float(old['lo']) + 0.1 * float(lo),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(new['hi']), 0.9 * float(old['hi']) + 0.1 * float(hi),
                               rtol=1e-5)


@pytest.mark.parametrize('bad', [0, 1, 9, 16])
def test_bits_out_of_range_raise(bad, digits_student):
  spec, _, tv = digits_student
  with pytest.raises(ValueError):
    quant.fake_quant(jnp.ones(3), 0.0, 1.0, bad)
  with pytest.raises(ValueError):
    quant.quantized_ops(bad, 4)
  with pytest.raises(ValueError):
    quant.quantized_ops(4, bad)
  with pytest.raises(ValueError):
    quant.quantized_ops(4, 4, first_last_bits=bad)
  with pytest.raises(ValueError):
    student.make_student(spec, tv, student.QuantSpec(w_bits=bad))
  with pytest.raises(ValueError):
    _Toy(bad).init(jax.random.key(0), jnp.ones((2, 3)))


def test_w8a8_student_close_to_teacher(digits_student):
  spec, teacher, tv = digits_student
  module, variables = student.make_student(spec, tv, student.QuantSpec(8, 8))
  rng = np.random.default_rng(0)
  calib = [rng.standard_normal((32,) + spec.input_shape).astype(np.float32) for _ in range(3)]
  variables = student.calibrate(module, variables, calib)
  x = rng.standard_normal((64,) + spec.input_shape).astype(np.float32)
  t = np.asarray(jax.jit(teacher.apply)(tv, x))
  s = np.asarray(jax.jit(module.apply)(variables, x))
  rel = np.abs(s - t).max() / np.abs(t).max()
  assert rel < 0.05, rel
  assert (s.argmax(1) == t.argmax(1)).mean() >= 0.9

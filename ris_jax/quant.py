"""Fake quantization: the quantizer numerics, weight/activation range rules, quantized ops.

Numerics (method.md, "Quantized student Q"; asymmetric uniform k-bit quantizer for [lo, hi]):
    s  = (2^k − 1) / max(hi − lo, 1e-8)
    zp = round(s·lo) + 2^(k−1)
    q  = clip(round(s·x − zp), −2^(k−1), 2^(k−1) − 1)
    x̂  = (q + zp) / s
Rounding is half-to-even (`jnp.round`, as `torch.round`). The backward pass is a
straight-through estimator written as a `jax.custom_vjp`: identity w.r.t. x (or the mask
lo ≤ x ≤ hi for the clipped variant) and no gradient to lo/hi.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ris_jax import layers


def _codes(x, lo, hi, bits):
  """(q, zero_point, scale): the integer codes q of x (as floats) and the affine map back."""
  levels = 2.0 ** bits - 1.0
  half = 2.0 ** (bits - 1)
  scale = levels / jnp.maximum(hi - lo, 1e-8)
  zero_point = jnp.round(scale * lo) + half
  q = jnp.clip(jnp.round(scale * x - zero_point), -half, half - 1.0)
  return q, zero_point, scale


def _quantize(x, lo, hi, bits):
  q, zero_point, scale = _codes(x, lo, hi, bits)
  return (q + zero_point) / scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _fake_quant(x, lo, hi, bits, clipped_ste):
  return _quantize(x, lo, hi, bits)


def _fake_quant_fwd(x, lo, hi, bits, clipped_ste):
  mask = (x >= lo) & (x <= hi) if clipped_ste else None
  return _quantize(x, lo, hi, bits), (mask, jnp.zeros_like(lo), jnp.zeros_like(hi))


def _fake_quant_bwd(bits, clipped_ste, residuals, g):
  mask, zero_lo, zero_hi = residuals
  gx = jnp.where(mask, g, jnp.zeros_like(g)) if clipped_ste else g
  return gx, zero_lo, zero_hi


_fake_quant.defvjp(_fake_quant_fwd, _fake_quant_bwd)


def fake_quant(x: jax.Array, lo: jax.Array, hi: jax.Array, bits: int,
               clipped_ste: bool = False) -> jax.Array:
  """Quantize-dequantize `x` to 2^bits levels spanning [lo, hi] (lo/hi broadcast against x).

  Gradient: straight-through (identity) w.r.t. x, or the mask lo ≤ x ≤ hi if `clipped_ste`;
  zero w.r.t. lo and hi.
  """
  if not 2 <= int(bits) <= 8:
    raise ValueError(f'bits must be in 2..8, got {bits}')
  x = jnp.asarray(x)
  lo = jnp.broadcast_to(jnp.asarray(lo, x.dtype), x.shape)
  hi = jnp.broadcast_to(jnp.asarray(hi, x.dtype), x.shape)
  return _fake_quant(x, lo, hi, int(bits), bool(clipped_ste))


def channel_range(kernel: jax.Array):
  """(lo, hi) of a kernel per output channel: min / max over all axes but the last (HWIO conv,
  (in, out) dense), kept as broadcastable dims."""
  axes = tuple(range(kernel.ndim - 1))
  return jnp.min(kernel, axis=axes, keepdims=True), jnp.max(kernel, axis=axes, keepdims=True)


def weight_codes(kernel: jax.Array, bits: int) -> jax.Array:
  """The integer codes q ∈ [−2^(k−1), 2^(k−1) − 1] of a kernel (as floats, same shape): the
  weight quantizer stopped before dequantizing, range per output channel from the kernel itself."""
  return _codes(kernel, *channel_range(kernel), bits)[0]


def flip_ratio(kernel: jax.Array, direction: jax.Array, step, bits: int) -> jax.Array:
  """Fraction of the integer codes that change when the kernel moves to W' = W − step·direction,
  the codes of W' taken with W''s own per-channel range (AIT's r(α), step = α·lr)."""
  changed = weight_codes(kernel - step * direction, bits) != weight_codes(kernel, bits)
  return jnp.mean(changed, dtype=kernel.dtype)


@dataclasses.dataclass(frozen=True)
class WeightQuantizer:
  """Per-output-channel weight quantizer: range = min/max over all axes but the last
  (output channels of HWIO / (in, out) kernels), recomputed from the current weights."""
  bits: int
  clipped_ste: bool = False

  def __call__(self, kernel: jax.Array) -> jax.Array:
    lo, hi = channel_range(kernel)
    return fake_quant(kernel, jax.lax.stop_gradient(lo), jax.lax.stop_gradient(hi),
                      self.bits, self.clipped_ste)


@dataclasses.dataclass(frozen=True)
class ActivationQuantizer:
  """Per-tensor activation quantizer with an EMA range (collection `quant_ranges`:
  `lo`, `hi`, `count`). While `quant_ranges` is mutable (calibration) the range moves to
  `momentum`·range + (1 − momentum)·(batch min, batch max), starting from the first batch's;
  otherwise it is frozen. Until calibrated (count 0) the activation passes unquantized."""
  bits: int
  momentum: float = 0.9
  clipped_ste: bool = False

  def __call__(self, module: nn.Module, x: jax.Array) -> jax.Array:
    lo = module.variable('quant_ranges', 'lo', lambda: jnp.zeros((), jnp.float32))
    hi = module.variable('quant_ranges', 'hi', lambda: jnp.zeros((), jnp.float32))
    count = module.variable('quant_ranges', 'count', lambda: jnp.zeros((), jnp.int32))
    if module.is_mutable_collection('quant_ranges') and not module.is_initializing():
      batch_lo = jax.lax.stop_gradient(jnp.min(x)).astype(jnp.float32)
      batch_hi = jax.lax.stop_gradient(jnp.max(x)).astype(jnp.float32)
      first = count.value == 0
      lo.value = jnp.where(first, batch_lo, self.momentum * lo.value + (1 - self.momentum) * batch_lo)
      hi.value = jnp.where(first, batch_hi, self.momentum * hi.value + (1 - self.momentum) * batch_hi)
      count.value = count.value + 1
    quantized = fake_quant(x, lo.value.astype(x.dtype), hi.value.astype(x.dtype),
                           self.bits, self.clipped_ste)
    return jnp.where(count.value > 0, quantized, x)


def quantized_ops(w_bits: int, a_bits: int, first_last_bits: Optional[int] = None,
                  clipped_ste: bool = False, ema_momentum: float = 0.9) -> layers.Ops:
  """The `Ops` of a fake-quantized student: every conv/dense kernel quantized per output
  channel at `w_bits` (first conv and classifier at `first_last_bits` if given), every
  ReLU/ReLU6 output quantized per tensor at `a_bits`."""
  for name, b in (('w_bits', w_bits), ('a_bits', a_bits), ('first_last_bits', first_last_bits)):
    if b is not None and not 2 <= b <= 8:
      raise ValueError(f'{name} must be in 2..8, got {b}')
  wq = WeightQuantizer(w_bits, clipped_ste)
  edge = WeightQuantizer(first_last_bits, clipped_ste) if first_last_bits else wq
  return layers.Ops(
      conv=functools.partial(layers.Conv, kernel_quantizer=wq),
      dense=functools.partial(layers.Dense, kernel_quantizer=wq),
      act=functools.partial(layers.Activation,
                            quantizer=ActivationQuantizer(a_bits, ema_momentum, clipped_ste)),
      stem_conv=functools.partial(layers.Conv, kernel_quantizer=edge),
      head=functools.partial(layers.Dense, kernel_quantizer=edge))

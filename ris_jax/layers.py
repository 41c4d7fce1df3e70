"""Building blocks shared by every model: conv, dense, batch norm (with the BN tap), activation.

Each block takes an optional quantizer, so one architecture definition serves as the
full-precision teacher (no quantizer) and as the fake-quantized student (see `quant.py`).
All tensors are NHWC; kernels are HWIO (conv) and (in, out) (dense).

Taps (read by passing `mutable=[...]` to `apply`; free when not requested):
  * `bn_stats`:  per BN layer, batch `mean` and biased `var` of its input over (N, H, W).
  * `features`:  named intermediate outputs (stage outputs, pooled features).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any


def tap(module: nn.Module, name: str, value: jax.Array) -> None:
  """Records `value` under `features/<module path>/<name>` when that collection is mutable."""
  if module.is_mutable_collection('features'):
    module.put_variable('features', name, value)


class Conv(nn.Module):
  """2-D convolution with PyTorch's symmetric padding (k // 2 * dilation on each side).

  `kernel_quantizer` (optional) maps the HWIO kernel to its fake-quantized value.
  """
  features: int
  kernel_size: int = 3
  strides: int = 1
  groups: int = 1
  use_bias: bool = False
  kernel_quantizer: Optional[Callable[[jax.Array], jax.Array]] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.kaiming_uniform(),
                        (k, k, x.shape[-1] // self.groups, self.features))
    if self.kernel_quantizer is not None:
      kernel = self.kernel_quantizer(kernel)
    pad = k // 2
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(self.strides, self.strides),
        padding=((pad, pad), (pad, pad)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
        feature_group_count=self.groups)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    return y


# ------------------------------------------------- nearest upsample ×2 then 3×3 conv (padding 1)
# Output pixel (2i + r, 2j + s) of conv3x3(upsample2(x)) only sees the low-resolution pixels
# rows {i − 1, i} (r = 0) or {i, i + 1} (r = 1), and columns likewise: it is a 2×2 conv of x
# whose taps are sums of the 3×3 taps that land on the same low-resolution pixel,
# P_rs[a, b] = Σ_uv R_r[a, u]·R_s[b, v]·K[u, v]. Four such parity convs cost 4·4 = 16 taps per
# low-resolution pixel instead of 4·9 = 36 (2.25× fewer FLOPs); their backward (input and
# kernel gradients) are again 2×2 convs on the low-resolution grid.
_PARITY_TAPS = ((( 1, 0, 0), (0, 1, 1)),   # R_0: rows i − 1 ← K row 0; row i ← K rows 1 + 2
                (( 1, 1, 0), (0, 0, 1)))   # R_1: row i ← K rows 0 + 1; row i + 1 ← K row 2
_PARITY_PAD = ((1, 0), (0, 1))  # low-resolution padding of parity 0 / 1 (2×2 window)
_NHWC = ('NHWC', 'HWIO', 'NHWC')
_KERNEL_GRAD_DN = ('CHWN', 'IHWO', 'HWNC')  # batch contracted: (N,H,W,Ci) ⋆ (N,H,W,Co) → HWIO


def upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour ×2: (N, H, W, C) → (N, 2H, 2W, C)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def upsample2_conv3x3_plain(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """conv3x3(upsample2(x)), padding 1: (N, H, W, Ci), HWIO (3, 3, Ci, Co) → (N, 2H, 2W, Co)."""
  return jax.lax.conv_general_dilated(upsample2(x), kernel, (1, 1), ((1, 1), (1, 1)),
                                      dimension_numbers=_NHWC)


def parity_kernels(kernel: jax.Array) -> jax.Array:
  """(3, 3, Ci, Co) → (2, 2, 2, 2, Ci, Co) [r, s, a, b]: P_rs[a, b] = Σ_uv R_r[a,u] R_s[b,v] K[u,v]."""
  taps = jnp.asarray(_PARITY_TAPS, kernel.dtype)
  return jnp.einsum('rau,sbv,uvio->rsabio', taps, taps, kernel)


def _parity_conv(x, p, r, s):
  return jax.lax.conv_general_dilated(x, p[r, s], (1, 1), (_PARITY_PAD[r], _PARITY_PAD[s]),
                                      dimension_numbers=_NHWC)


@jax.custom_vjp
def _upsample2_conv_parity(x: jax.Array, p: jax.Array) -> jax.Array:
  n, h, w, _ = x.shape
  y = jnp.stack([jnp.stack([_parity_conv(x, p, r, s) for s in range(2)], 3) for r in range(2)], 2)
  return y.reshape(n, 2 * h, 2 * w, p.shape[-1])  # (N, H, 2, W, 2, Co) → (N, 2H, 2W, Co)


def _upsample2_conv_parity_fwd(x, p):
  return _upsample2_conv_parity(x, p), (x, p)


def _upsample2_conv_parity_bwd(res, dy):
  x, p = res
  n, h, w, _ = x.shape
  dy = dy.reshape(n, h, 2, w, 2, p.shape[-1])
  dx, dp = 0, [[None, None], [None, None]]
  for r in range(2):
    for s in range(2):
      g = dy[:, :, r, :, s]
      # input gradient: the transposed 2×2 conv (flipped taps, in/out swapped, mirrored padding)
      dx = dx + jax.lax.conv_general_dilated(
          g, jnp.swapaxes(p[r, s, ::-1, ::-1], 2, 3), (1, 1),
          (_PARITY_PAD[1 - r], _PARITY_PAD[1 - s]), dimension_numbers=_NHWC)
      # kernel gradient: x ⋆ g contracted over (N, H, W), a 2×2 window
      dp[r][s] = jax.lax.conv_general_dilated(
          x, g, (1, 1), (_PARITY_PAD[r], _PARITY_PAD[s]), dimension_numbers=_KERNEL_GRAD_DN)
  return dx, jnp.stack([jnp.stack(row) for row in dp])


_upsample2_conv_parity.defvjp(_upsample2_conv_parity_fwd, _upsample2_conv_parity_bwd)


def upsample2_conv3x3_parity(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The same function as `upsample2_conv3x3_plain`, computed on the low-resolution grid as
  four 2×2 parity convs (forward and backward; the kernel gradient flows back to the 3×3
  kernel through `parity_kernels`)."""
  return _upsample2_conv_parity(x, parity_kernels(kernel))


UPSAMPLE_CONVS = {'plain': upsample2_conv3x3_plain, 'parity': upsample2_conv3x3_parity}


class UpsampleConv(nn.Module):
  """Nearest ×2 upsampling then a 3×3 conv (padding 1) with optional bias:
  (N, H, W, Ci) → (N, 2H, 2W, `features`). Parameters as `Conv(features, 3)` (HWIO `kernel`,
  `bias`); `method` 'plain' (upsample, then conv) or 'parity' (the same function on the
  low-resolution grid, 2.25× fewer FLOPs)."""
  features: int
  method: str = 'parity'
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.kaiming_uniform(),
                        (3, 3, x.shape[-1], self.features))
    y = UPSAMPLE_CONVS[self.method](x, kernel.astype(x.dtype))
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    return y


class Dense(nn.Module):
  """Fully connected layer, kernel (in, out), with an optional kernel quantizer."""
  features: int
  use_bias: bool = True
  kernel_quantizer: Optional[Callable[[jax.Array], jax.Array]] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    if self.kernel_quantizer is not None:
      kernel = self.kernel_quantizer(kernel)
    y = x @ kernel.astype(x.dtype)
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,))
    return y


class BatchNorm(nn.Module):
  """Batch norm over all axes but the last, with the BN-statistics tap.

  Inference mode uses the running `mean`/`var` (collection `batch_stats`); training mode uses
  the batch statistics and updates the running ones as PyTorch does (unbiased variance,
  `momentum` here = 1 - PyTorch's momentum). When `bn_stats` is mutable, the batch mean and
  biased variance of the input (shape (C,)) are recorded whatever the mode. Under `jit` on a
  globally sharded batch the statistics are those of the global batch.
  """
  use_running_average: Optional[bool] = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  use_scale: bool = True
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: Optional[bool] = None) -> jax.Array:
    use_running_average = nn.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    c = x.shape[-1]
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
    tapped = self.is_mutable_collection('bn_stats')
    if tapped or not use_running_average:
      axes = tuple(range(x.ndim - 1))
      xf = x.astype(jnp.float32)
      batch_mean = jnp.mean(xf, axes)
      batch_var = jnp.mean(jnp.square(xf - batch_mean), axes)
      if tapped:
        self.put_variable('bn_stats', 'mean', batch_mean)
        self.put_variable('bn_stats', 'var', batch_var)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean, var = batch_mean, batch_var
      if not self.is_initializing() and self.is_mutable_collection('batch_stats'):
        n = x.size // c
        unbiased = batch_var * (n / max(n - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * batch_mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
    # (x − mean)·rsqrt(var + eps)·scale + bias, folded into one per-channel multiply-add
    # x·a + b (a = scale·rsqrt(var + eps), b = bias − mean·a): the same function up to float
    # rounding, two ops per element instead of four, also in every fusion that recomputes it
    # (RIS step on CPU: −4 %, experiments/results/bench.md).
    a = jax.lax.rsqrt(var + self.epsilon)
    if self.use_scale:
      a = a * self.param('scale', nn.initializers.ones, (c,))
    b = -mean * a
    if self.use_bias:
      b = b + self.param('bias', nn.initializers.zeros, (c,))
    return x * a.astype(x.dtype) + b.astype(x.dtype)


ACTIVATIONS = {'relu': jax.nn.relu, 'relu6': jax.nn.relu6}


class Activation(nn.Module):
  """ReLU / ReLU6, optionally followed by a per-tensor activation quantizer.

  `quantizer` is a `quant.ActivationQuantizer` (or None). Its range lives in the collection
  `quant_ranges` and is updated (EMA of the batch min/max) only while that collection is
  mutable, i.e. while calibrating; otherwise it is frozen.
  """
  fn: str = 'relu'
  quantizer: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = ACTIVATIONS[self.fn](x)
    if self.quantizer is None:
      return y
    return self.quantizer(self, y)


@dataclasses.dataclass(frozen=True)
class Ops:
  """The injectable layer choices of a model: the teacher uses the defaults, the quantized
  student passes quantizing partials (`quant.quantized_ops`). `stem_conv` is the first conv
  and `head` the classifier, so they can be given other bit-widths."""
  conv: ModuleDef = Conv
  dense: ModuleDef = Dense
  act: ModuleDef = Activation
  norm: ModuleDef = BatchNorm
  stem_conv: Optional[ModuleDef] = None
  head: Optional[ModuleDef] = None

  @property
  def first_conv(self) -> ModuleDef:
    return self.stem_conv or self.conv

  @property
  def classifier(self) -> ModuleDef:
    return self.head or self.dense


class ConvBlock(nn.Module):
  """conv → BN → optional activation (pytorchcv's ConvBlock; submodules named conv, bn)."""
  features: int
  kernel_size: int = 3
  strides: int = 1
  groups: int = 1
  activation: Optional[str] = 'relu'
  ops: Ops = Ops()
  first: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = self.ops.first_conv if self.first else self.ops.conv
    x = conv(self.features, kernel_size=self.kernel_size, strides=self.strides,
             groups=self.groups, name='conv')(x)
    x = self.ops.norm(use_running_average=not train, name='bn')(x)
    if self.activation is not None:
      x = self.ops.act(fn=self.activation)(x)
    return x


def global_avg_pool(x: jax.Array) -> jax.Array:
  """(N, H, W, C) → (N, C)."""
  return jnp.mean(x, axis=(1, 2))


def stage_sizes_channels(channels: Sequence[Sequence[int]]):
  for i, stage in enumerate(channels):
    for j, c in enumerate(stage):
      yield i, j, c

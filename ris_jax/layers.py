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

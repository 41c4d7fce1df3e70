"""ResNet units and the ImageNet ResNet (pytorchcv `resnet18`, `resnet50`), NHWC.

Module names follow pytorchcv's state-dict names (`stage1_unit1` ↔ `features.stage1.unit1`).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ris_jax.layers import ConvBlock, Ops, global_avg_pool, tap


class ResUnit(nn.Module):
  """Residual unit: body (basic: 3×3, 3×3; bottleneck: 1×1, 3×3, 1×1) + identity (1×1 conv
  + BN when shape changes), then ReLU. `conv1_stride` puts the stride on the bottleneck's
  first 1×1 conv (pytorchcv's ImageNet ResNet) instead of the 3×3."""
  features: int
  strides: int
  bottleneck: bool
  conv1_stride: bool = False
  ops: Ops = Ops()

  @nn.compact
  def __call__(self, x, train: bool = False):
    ops = self.ops
    body = Body(self.features, self.strides, self.bottleneck, self.conv1_stride, ops, name='body')
    identity = x
    if x.shape[-1] != self.features or self.strides != 1:
      identity = ConvBlock(self.features, 1, self.strides, activation=None, ops=ops,
                           name='identity_conv')(x, train)
    return ops.act(fn='relu')(body(x, train) + identity)


class Body(nn.Module):
  features: int
  strides: int
  bottleneck: bool
  conv1_stride: bool
  ops: Ops

  @nn.compact
  def __call__(self, x, train: bool = False):
    if not self.bottleneck:
      x = ConvBlock(self.features, 3, self.strides, ops=self.ops, name='conv1')(x, train)
      return ConvBlock(self.features, 3, 1, activation=None, ops=self.ops, name='conv2')(x, train)
    mid = self.features // 4
    s1, s2 = (self.strides, 1) if self.conv1_stride else (1, self.strides)
    x = ConvBlock(mid, 1, s1, ops=self.ops, name='conv1')(x, train)
    x = ConvBlock(mid, 3, s2, ops=self.ops, name='conv2')(x, train)
    return ConvBlock(self.features, 1, 1, activation=None, ops=self.ops, name='conv3')(x, train)


def res_stages(x, channels: Sequence[Sequence[int]], bottleneck: bool, conv1_stride: bool,
               ops: Ops, module: nn.Module, train: bool):
  """Runs the stages `stage{i}_unit{j}` (stride 2 at the first unit of every stage but the
  first) and taps each stage output as `features/stage{i}`."""
  for i, stage in enumerate(channels):
    for j, c in enumerate(stage):
      x = ResUnit(c, 2 if (j == 0 and i != 0) else 1, bottleneck, conv1_stride, ops,
                  name=f'stage{i + 1}_unit{j + 1}')(x, train)
    tap(module, f'stage{i + 1}', x)
  return x


class ResInitBlock(nn.Module):
  """7×7/2 conv block then 3×3/2 max-pool (pytorchcv `ResInitBlock`)."""
  features: int
  ops: Ops = Ops()

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = ConvBlock(self.features, 7, 2, ops=self.ops, first=True, name='conv')(x, train)
    return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


_IMAGENET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class ResNet(nn.Module):
  """pytorchcv ImageNet ResNet (v1; stride on the bottleneck's 1×1 conv). Input (N, H, W, 3)."""
  depth: int = 18
  num_classes: int = 1000
  ops: Ops = Ops()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    bottleneck = self.depth >= 50
    widths = [64, 128, 256, 512]
    if bottleneck:
      widths = [w * 4 for w in widths]
    channels = [[w] * n for w, n in zip(widths, _IMAGENET_LAYERS[self.depth])]
    x = ResInitBlock(64, self.ops, name='init_block')(x, train)
    x = res_stages(x, channels, bottleneck, True, self.ops, self, train)
    x = global_avg_pool(x)
    tap(self, 'pooled', x)
    return self.ops.classifier(self.num_classes, name='output')(x)

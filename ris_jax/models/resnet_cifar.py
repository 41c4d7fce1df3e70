"""CIFAR ResNets, NHWC: pytorchcv's (`resnet20_cifar10`, `resnet56_cifar100`, …) and
akamaster's option-A layout (`resnet20`, `resnet56` of akamaster/pytorch_resnet_cifar10)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ris_jax.layers import ConvBlock, Ops, global_avg_pool, tap
from ris_jax.models.resnet import res_stages


def units_per_stage(depth: int) -> int:
  """n of a CIFAR ResNet-(6n+2)."""
  if (depth - 2) % 6:
    raise ValueError(f'CIFAR ResNet depth must be 6n + 2, got {depth}')
  return (depth - 2) // 6


class CifarResNet(nn.Module):
  """3×3 stem (16 ch), three stages of (depth − 2) / 6 basic units (16, 32, 64 ch), global
  average pool, dense. Input (N, H, W, in_channels), any H = W divisible by 4."""
  depth: int = 20
  num_classes: int = 10
  width: int = 16
  ops: Ops = Ops()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    n = units_per_stage(self.depth)
    channels = [[self.width * m] * n for m in (1, 2, 4)]
    x = ConvBlock(self.width, 3, 1, ops=self.ops, first=True, name='init_block')(x, train)
    x = res_stages(x, channels, False, False, self.ops, self, train)
    x = global_avg_pool(x)
    tap(self, 'pooled', x)
    return self.ops.classifier(self.num_classes, name='output')(x)


class OptionABlock(nn.Module):
  """He et al.'s CIFAR basic block with the parameter-free option-A shortcut (akamaster
  layout): y = ReLU(bn2(conv2(ReLU(bn1(conv1 x)))) + s(x)), s(x) = x, or, when the shape
  changes, x[:, ::2, ::2] zero-padded by features // 4 channels on each side."""
  features: int
  strides: int = 1
  ops: Ops = Ops()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    ops = self.ops
    y = ops.conv(self.features, kernel_size=3, strides=self.strides, name='conv1')(x)
    y = ops.act(fn='relu', name='relu1')(ops.norm(use_running_average=not train, name='bn1')(y))
    y = ops.conv(self.features, kernel_size=3, strides=1, name='conv2')(y)
    y = ops.norm(use_running_average=not train, name='bn2')(y)
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.features:
      pad = self.features // 4
      shortcut = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))
    return ops.act(fn='relu', name='relu2')(y + shortcut)


class OptionAResNet(nn.Module):
  """CIFAR ResNet-(6n+2) of akamaster/pytorch_resnet_cifar10 (`resnet20`, `resnet56`): conv1
  3×3 (16 ch) → bn1 → ReLU, layer1..3 of n `OptionABlock`s (16, 32, 64 ch; stride 2 at the
  first block of layers 2 and 3), global average pool, `linear`. Module names follow that
  state dict (`layer2_0/conv1` ↔ `layer2.0.conv1`)."""
  depth: int = 20
  num_classes: int = 10
  ops: Ops = Ops()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    n = units_per_stage(self.depth)
    ops = self.ops
    x = ops.first_conv(16, kernel_size=3, strides=1, name='conv1')(x)
    x = ops.act(fn='relu', name='relu')(ops.norm(use_running_average=not train, name='bn1')(x))
    for i, features in enumerate((16, 32, 64)):
      for j in range(n):
        x = OptionABlock(features, 2 if (j == 0 and i > 0) else 1, ops,
                         name=f'layer{i + 1}_{j}')(x, train)
      tap(self, f'stage{i + 1}', x)
    x = global_avg_pool(x)
    tap(self, 'pooled', x)
    return ops.classifier(self.num_classes, name='linear')(x)

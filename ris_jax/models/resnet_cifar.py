"""CIFAR ResNet (pytorchcv `resnet20_cifar10`, `resnet56_cifar100`, …), NHWC."""
from __future__ import annotations

import flax.linen as nn
import jax

from ris_jax.layers import ConvBlock, Ops, global_avg_pool, tap
from ris_jax.models.resnet import res_stages


class CifarResNet(nn.Module):
  """3×3 stem (16 ch), three stages of (depth − 2) / 6 basic units (16, 32, 64 ch), global
  average pool, dense. Input (N, H, W, in_channels), any H = W divisible by 4."""
  depth: int = 20
  num_classes: int = 10
  width: int = 16
  ops: Ops = Ops()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if (self.depth - 2) % 6:
      raise ValueError(f'CIFAR ResNet depth must be 6n + 2, got {self.depth}')
    n = (self.depth - 2) // 6
    channels = [[self.width * m] * n for m in (1, 2, 4)]
    x = ConvBlock(self.width, 3, 1, ops=self.ops, first=True, name='init_block')(x, train)
    x = res_stages(x, channels, False, False, self.ops, self, train)
    x = global_avg_pool(x)
    tap(self, 'pooled', x)
    return self.ops.classifier(self.num_classes, name='output')(x)

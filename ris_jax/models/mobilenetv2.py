"""MobileNetV2 (pytorchcv `mobilenetv2_w1`), NHWC. The classifier (a bias-free 1×1 conv on
the pooled features in pytorchcv) is a bias-free dense layer here: the same function."""
from __future__ import annotations

import flax.linen as nn
import jax

from ris_jax.layers import ConvBlock, Ops, global_avg_pool, tap

_LAYERS = (1, 2, 3, 4, 3, 3, 1)
_DOWNSAMPLE = (0, 1, 1, 1, 0, 1, 0)
_WIDTHS = (16, 24, 32, 64, 96, 160, 320)


def _stage_channels(width_scale: float):
  channels = []
  for w, n, down in zip(_WIDTHS, _LAYERS, _DOWNSAMPLE):
    if down or not channels:
      channels.append([])
    channels[-1].extend([int(w * width_scale)] * n)
  return channels


class LinearBottleneck(nn.Module):
  """1×1 expand (×6, ReLU6; ×1 in the very first unit) → 3×3 depthwise (ReLU6) → 1×1
  linear projection, residual when shapes allow."""
  features: int
  strides: int
  expansion: bool
  ops: Ops = Ops()

  @nn.compact
  def __call__(self, x, train: bool = False):
    cin = x.shape[-1]
    mid = cin * 6 if self.expansion else cin
    y = ConvBlock(mid, 1, 1, activation='relu6', ops=self.ops, name='conv1')(x, train)
    y = ConvBlock(mid, 3, self.strides, groups=mid, activation='relu6', ops=self.ops,
                  name='conv2')(y, train)
    y = ConvBlock(self.features, 1, 1, activation=None, ops=self.ops, name='conv3')(y, train)
    if cin == self.features and self.strides == 1:
      y = y + x
    return y


class MobileNetV2(nn.Module):
  width_scale: float = 1.0
  num_classes: int = 1000
  ops: Ops = Ops()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    channels = _stage_channels(self.width_scale)
    init_c = int(32 * self.width_scale)
    final_c = int(1280 * self.width_scale) if self.width_scale > 1.0 else 1280
    x = ConvBlock(init_c, 3, 2, activation='relu6', ops=self.ops, first=True,
                  name='init_block')(x, train)
    for i, stage in enumerate(channels):
      for j, c in enumerate(stage):
        x = LinearBottleneck(c, 2 if (j == 0 and i != 0) else 1, (i != 0) or (j != 0),
                             self.ops, name=f'stage{i + 1}_unit{j + 1}')(x, train)
      tap(self, f'stage{i + 1}', x)
    x = ConvBlock(final_c, 1, 1, activation='relu6', ops=self.ops, name='final_block')(x, train)
    x = global_avg_pool(x)
    tap(self, 'pooled', x)
    return self.ops.classifier(self.num_classes, use_bias=False, name='output')(x)

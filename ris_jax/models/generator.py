"""Conditional generators G(z, ỹ) (method.md, "Generator"); BN always in batch-statistics mode.

Both take z (B, latent) and soft labels ỹ (B, C) (one-hot for hard labels) and return images
(B, H, W, channels) in the teacher's normalized input space. `upsample_conv` chooses how each
"×2 → conv" is computed ('parity' | 'plain', `layers.UpsampleConv`; the same function and
parameters either way).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ris_jax.layers import BatchNorm, Conv, UpsampleConv


class GDFQGenerator(nn.Module):
  """GDFQ's CIFAR generator: h = z ⊙ (ỹ·E); Linear → (s, s, 128) → BN → [×2 → conv 128 →
  BN(eps 0.8) → LeakyReLU 0.2] → [×2 → conv 64 → BN(eps 0.8) → LeakyReLU 0.2] → conv →
  tanh → BN without scale/offset. s = image_size / 4."""
  num_classes: int
  image_size: int = 32
  channels: int = 3
  latent_dim: int = 100
  width: int = 128
  upsample_conv: str = 'parity'

  @nn.compact
  def __call__(self, z: jax.Array, soft_labels: jax.Array) -> jax.Array:
    s = self.image_size // 4
    embedding = self.param('label_embedding', nn.initializers.normal(1.0),
                           (self.num_classes, self.latent_dim))
    h = z * (soft_labels @ embedding)
    h = nn.Dense(self.width * s * s, name='fc')(h).reshape(-1, s, s, self.width)
    h = BatchNorm(use_running_average=False, name='bn0')(h)
    h = UpsampleConv(self.width, self.upsample_conv, name='conv1')(h)
    h = nn.leaky_relu(BatchNorm(use_running_average=False, epsilon=0.8, name='bn1')(h), 0.2)
    h = UpsampleConv(self.width // 2, self.upsample_conv, name='conv2')(h)
    h = nn.leaky_relu(BatchNorm(use_running_average=False, epsilon=0.8, name='bn2')(h), 0.2)
    h = jnp.tanh(Conv(self.channels, 3, use_bias=True, name='conv3')(h))
    return BatchNorm(use_running_average=False, use_scale=False, use_bias=False, name='bn_out')(h)


class ConditionalBN(nn.Module):
  """Non-affine BN followed by a per-class scale and shift, mixed by the soft labels:
  y = BN(x)·(ỹ·Γ) + ỹ·B, Γ (C, ch) initialised to 1, B to 0."""
  num_classes: int
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x, soft_labels):
    c = x.shape[-1]
    gamma = self.param('class_scale', nn.initializers.ones, (self.num_classes, c))
    beta = self.param('class_shift', nn.initializers.zeros, (self.num_classes, c))
    x = BatchNorm(use_running_average=False, use_scale=False, use_bias=False,
                  epsilon=self.epsilon, name='bn')(x)
    return x * (soft_labels @ gamma)[:, None, None, :] + (soft_labels @ beta)[:, None, None, :]


class ConditionalBNGenerator(nn.Module):
  """The ImageNet generator: Linear on z alone, class conditioning through conditional BN
  in all three BN layers (eps 1e-5, 0.8, 0.8), s = image_size / 4."""
  num_classes: int
  image_size: int = 224
  channels: int = 3
  latent_dim: int = 100
  width: int = 128
  upsample_conv: str = 'parity'

  @nn.compact
  def __call__(self, z: jax.Array, soft_labels: jax.Array) -> jax.Array:
    s = self.image_size // 4
    h = nn.Dense(self.width * s * s, name='fc')(z).reshape(-1, s, s, self.width)
    h = ConditionalBN(self.num_classes, name='cbn0')(h, soft_labels)
    h = UpsampleConv(self.width, self.upsample_conv, name='conv1')(h)
    h = nn.leaky_relu(ConditionalBN(self.num_classes, 0.8, name='cbn1')(h, soft_labels), 0.2)
    h = UpsampleConv(self.width // 2, self.upsample_conv, name='conv2')(h)
    h = nn.leaky_relu(ConditionalBN(self.num_classes, 0.8, name='cbn2')(h, soft_labels), 0.2)
    h = jnp.tanh(Conv(self.channels, 3, use_bias=True, name='conv3')(h))
    return BatchNorm(use_running_average=False, use_scale=False, use_bias=False, name='bn_out')(h)


GENERATORS = {'gdfq': GDFQGenerator, 'conditional_bn': ConditionalBNGenerator}

"""Perturbations for the robustness loss (method.md, "L_rob"): input augmentations, relative
Gaussian weight noise, and the decorrelated soft labels of the diversity objective."""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

INPUT_PERTURBATIONS = ('crop', 'flip', 'translate', 'noise')


def _interpolation_matrix(size: int, scale, shift):
  """(B, size, size) bilinear weights mapping source pixels to output pixels for a zoom by
  `scale` (B,) about the centre and a shift (B,) in pixels; zero outside the image."""
  out = jnp.arange(size) + 0.5
  src = (out[None, :] - size / 2 - shift[:, None]) / scale[:, None] + size / 2 - 0.5
  return jax.nn.relu(1.0 - jnp.abs(src[:, :, None] - jnp.arange(size)[None, None, :]))


def _resample(images, scale, shift):
  """Per-image zoom by `scale` (B,) about the centre, then shift by `shift` (B, 2) pixels
  (bilinear, zero fill): two small matrix products per image, cheap on every backend."""
  rows = _interpolation_matrix(images.shape[1], scale, shift[:, 0])
  cols = _interpolation_matrix(images.shape[2], scale, shift[:, 1])
  return jnp.einsum('bih,bhwc,bjw->bijc', rows, images, cols)


def random_crop(rng, images, min_scale: float = 0.6):
  """Random resized crop: zoom in by 1/area-scale ∈ [1, 1/√min_scale] at a random position
  that keeps the crop inside the image. (B, H, W, C) → same shape."""
  b, h = images.shape[0], images.shape[1]
  k1, k2 = jax.random.split(rng)
  zoom = 1.0 / jnp.sqrt(jax.random.uniform(k1, (b,), minval=min_scale, maxval=1.0))
  room = (zoom - 1.0)[:, None] * h / 2
  shift = jax.random.uniform(k2, (b, 2), minval=-1.0, maxval=1.0) * room
  return _resample(images, zoom, shift)


def random_flip(rng, images):
  """Horizontal flip of each image with probability 1/2."""
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1, :], images)


def random_translate(rng, images, max_fraction: float = 0.125):
  """Sub-pixel shift by up to `max_fraction` of the size in each direction (zero fill)."""
  b, h = images.shape[0], images.shape[1]
  shift = jax.random.uniform(rng, (b, 2), minval=-1.0, maxval=1.0) * max_fraction * h
  return _resample(images, jnp.ones((b,)), shift)


def gaussian_noise(rng, images, std: float = 0.1):
  return images + std * jax.random.normal(rng, images.shape, images.dtype)


def perturb_input(rng, images, kinds: Sequence[str] = INPUT_PERTURBATIONS, noise_std: float = 0.1):
  """x̃ = A(x), A drawn uniformly from `kinds` (one per call, as RIS found best)."""
  fns = {'crop': random_crop, 'flip': random_flip, 'translate': random_translate,
         'noise': lambda r, x: gaussian_noise(r, x, noise_std)}
  unknown = set(kinds) - set(fns)
  if unknown:
    raise ValueError(f'unknown input perturbations {sorted(unknown)}; known: {INPUT_PERTURBATIONS}')
  k_choice, k_apply = jax.random.split(rng)
  branches = [lambda x, k=k: fns[k](k_apply, x) for k in kinds]
  if len(branches) == 1:
    return branches[0](images)
  return jax.lax.switch(jax.random.randint(k_choice, (), 0, len(branches)), branches, images)


def perturb_weights(rng, params: Any, eps: float, direction: Any = None) -> Any:
  """θ̃ = θ + ε·|θ| ⊙ ξ on every conv/dense `kernel` (BN and biases untouched); ξ ~ N(0, I),
  or the given `direction` tree (e.g. the sign of an ascent direction, adversarial variant)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  kernel = [getattr(path[-1], 'key', None) == 'kernel' for path, _ in leaves]
  if direction is not None:
    dirs = jax.tree.leaves(direction)
  else:
    # One draw for all kernels, split: a normal per leaf compiles a threefry kernel each
    # (seconds apiece on CPU; the RIS step compiled ~30% slower).
    sizes = [leaf.size for (_, leaf), k in zip(leaves, kernel) if k]
    flat = jax.random.normal(rng, (sum(sizes),))
    parts = iter(jnp.split(flat, np.cumsum(sizes)[:-1]))
    dirs = [next(parts).reshape(leaf.shape).astype(leaf.dtype) if k else None
            for (_, leaf), k in zip(leaves, kernel)]
  out = [leaf + eps * jnp.abs(leaf) * d if k else leaf
         for (_, leaf), k, d in zip(leaves, kernel, dirs)]
  return jax.tree_util.tree_unflatten(treedef, out)


def soft_labels(rng, labels, num_classes: int, kappa: float = 3.0, decorrelate_steps: int = 0,
                step_size: float = 1.0):
  """RIS diversity labels ỹ_i = softmax(κ·onehot(y_i) + η_i), η ~ N(0, I), then
  `decorrelate_steps` gradient steps on η lowering mean_{i≠j} C_ij² (C the batch correlation
  matrix of ỹ); the best iterate is kept, since fixed normalized steps overshoot and would
  make more steps give more correlated labels. labels (B,) int → (B, C) soft labels (no
  gradient)."""
  from ris_jax.losses import label_correlation_penalty
  logits0 = kappa * jax.nn.one_hot(labels, num_classes)
  eta = jax.random.normal(rng, logits0.shape)
  penalty = lambda e: label_correlation_penalty(jax.nn.softmax(logits0 + e, -1))
  best, best_value = eta, penalty(eta)
  for _ in range(decorrelate_steps):
    g = jax.grad(penalty)(eta)
    eta = eta - step_size * g / jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(g))), 1e-12)
    value = penalty(eta)
    best = jnp.where(value < best_value, eta, best)
    best_value = jnp.minimum(value, best_value)
  return jax.lax.stop_gradient(jax.nn.softmax(logits0 + best, -1))

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


def _crop_geometry(scale_u, shift_u, size: int):
  """Zoom (B,) and shift (B, 2) of a random resized crop from its uniforms: area scale
  `scale_u` (B,) ∈ [min_scale, 1] and position `shift_u` (B, 2) ∈ [−1, 1]."""
  zoom = 1.0 / jnp.sqrt(scale_u)
  return zoom, shift_u * (zoom - 1.0)[:, None] * size / 2


def random_crop(rng, images, min_scale: float = 0.6):
  """Random resized crop: zoom in by 1/area-scale ∈ [1, 1/√min_scale] at a random position
  that keeps the crop inside the image. (B, H, W, C) → same shape."""
  p = draw_input_perturbation(rng, images.shape, ('crop',), min_scale=min_scale)
  return _resample(images, *_crop_geometry(p['crop_scale'], p['crop_shift'], images.shape[1]))


def random_flip(rng, images):
  """Horizontal flip of each image with probability 1/2."""
  return _flip(images, draw_input_perturbation(rng, images.shape, ('flip',))['flip'])


def _flip(images, flip):
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def random_translate(rng, images, max_fraction: float = 0.125):
  """Sub-pixel shift by up to `max_fraction` of the size in each direction (zero fill)."""
  u = draw_input_perturbation(rng, images.shape, ('translate',))['translate']
  return _translate(images, u, max_fraction)


def _translate(images, u, max_fraction: float = 0.125):
  return _resample(images, jnp.ones((images.shape[0],)), u * max_fraction * images.shape[1])


def gaussian_noise(rng, images, std: float = 0.1):
  return images + std * jax.random.normal(rng, images.shape, images.dtype)


def draw_input_perturbation(rng, shape, kinds: Sequence[str] = INPUT_PERTURBATIONS,
                            min_scale: float = 0.6, dtype=jnp.float32):
  """The random parameters of x̃ = A(x) for images of `shape` (B, H, W, C), as a dict:
  `kind` () int index into `kinds`, and for each kind in `kinds` its draws: `crop_scale` (B,)
  ∈ [min_scale, 1] and `crop_shift` (B, 2) ∈ [−1, 1]; `flip` (B,) bool; `translate` (B, 2)
  ∈ [−1, 1]; `noise` (B, H, W, C) N(0, 1). `apply_input_perturbation` applies them."""
  unknown = set(kinds) - set(INPUT_PERTURBATIONS)
  if unknown:
    raise ValueError(f'unknown input perturbations {sorted(unknown)}; known: {INPUT_PERTURBATIONS}')
  b = shape[0]
  k_choice, k_apply = jax.random.split(rng)
  out = {'kind': (jax.random.randint(k_choice, (), 0, len(kinds)) if len(kinds) > 1
                  else jnp.zeros((), jnp.int32))}
  if 'crop' in kinds:
    k1, k2 = jax.random.split(k_apply)
    out['crop_scale'] = jax.random.uniform(k1, (b,), minval=min_scale, maxval=1.0)
    out['crop_shift'] = jax.random.uniform(k2, (b, 2), minval=-1.0, maxval=1.0)
  if 'flip' in kinds:
    out['flip'] = jax.random.bernoulli(k_apply, 0.5, (b, 1, 1, 1)).reshape(b)
  if 'translate' in kinds:
    out['translate'] = jax.random.uniform(k_apply, (b, 2), minval=-1.0, maxval=1.0)
  if 'noise' in kinds:
    out['noise'] = jax.random.normal(k_apply, tuple(shape), dtype)
  return out


def apply_input_perturbation(params, images, kinds: Sequence[str] = INPUT_PERTURBATIONS,
                             noise_std: float = 0.1):
  """x̃ = A(x) with the drawn `params` of `draw_input_perturbation`: A = kinds[params['kind']]."""
  h = images.shape[1]
  fns = {'crop': lambda x: _resample(x, *_crop_geometry(params['crop_scale'], params['crop_shift'], h)),
         'flip': lambda x: _flip(x, params['flip']),
         'translate': lambda x: _translate(x, params['translate']),
         'noise': lambda x: x + noise_std * params['noise'].astype(x.dtype)}
  branches = [fns[k] for k in kinds]
  if len(branches) == 1:
    return branches[0](images)
  return jax.lax.switch(params['kind'], branches, images)


def perturb_input(rng, images, kinds: Sequence[str] = INPUT_PERTURBATIONS, noise_std: float = 0.1):
  """x̃ = A(x), A drawn uniformly from `kinds` (one per call, as RIS found best)."""
  params = draw_input_perturbation(rng, images.shape, kinds, dtype=images.dtype)
  return apply_input_perturbation(params, images, kinds, noise_std)


def _is_kernel(path) -> bool:
  return getattr(path[-1], 'key', None) == 'kernel'


def weight_noise(rng, params: Any) -> Any:
  """ξ ~ N(0, I) on every conv/dense `kernel` of `params`, zeros elsewhere (same tree)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  # One draw for all kernels, split: a normal per leaf compiles a threefry kernel each
  # (seconds apiece on CPU; the RIS step compiled ~30% slower).
  sizes = [leaf.size for path, leaf in leaves if _is_kernel(path)]
  flat = jax.random.normal(rng, (sum(sizes),))
  parts = iter(jnp.split(flat, np.cumsum(sizes)[:-1]))
  return jax.tree_util.tree_unflatten(treedef, [
      next(parts).reshape(leaf.shape).astype(leaf.dtype) if _is_kernel(path) else jnp.zeros_like(leaf)
      for path, leaf in leaves])


def perturb_weights(rng, params: Any, eps: float, direction: Any = None) -> Any:
  """θ̃ = θ + ε·|θ| ⊙ ξ on every conv/dense `kernel` (BN and biases untouched); ξ ~ N(0, I)
  drawn from `rng` (`weight_noise`), or the given `direction` tree (a pre-drawn ξ, or the sign
  of an ascent direction in the adversarial variant; `rng` unused then)."""
  if direction is None:
    direction = weight_noise(rng, params)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  out = [leaf + eps * jnp.abs(leaf) * d if _is_kernel(path) else leaf
         for (path, leaf), d in zip(leaves, jax.tree.leaves(direction))]
  return jax.tree_util.tree_unflatten(treedef, out)


def soft_labels(rng, labels, num_classes: int, kappa: float = 3.0, decorrelate_steps: int = 0,
                step_size: float = 1.0):
  """RIS diversity labels ỹ_i = softmax(κ·onehot(y_i) + η_i), η ~ N(0, I) drawn from `rng`,
  decorrelated as in `soft_labels_from_noise`. labels (B,) int → (B, C) soft labels."""
  eta = jax.random.normal(rng, labels.shape + (num_classes,))
  return soft_labels_from_noise(eta, labels, num_classes, kappa, decorrelate_steps, step_size)


def soft_labels_from_noise(eta, labels, num_classes: int, kappa: float = 3.0,
                           decorrelate_steps: int = 0, step_size: float = 1.0):
  """ỹ_i = softmax(κ·onehot(y_i) + η_i) for the given η (B, C), after `decorrelate_steps`
  gradient steps on η lowering mean_{i≠j} C_ij² (C the batch correlation matrix of ỹ); the
  best iterate is kept, since fixed normalized steps overshoot and would make more steps give
  more correlated labels. labels (B,) int → (B, C) soft labels (no gradient)."""
  from ris_jax.losses import label_correlation_penalty
  logits0 = kappa * jax.nn.one_hot(labels, num_classes)
  penalty = lambda e: label_correlation_penalty(jax.nn.softmax(logits0 + e, -1))
  best, best_value = eta, penalty(eta)
  for _ in range(decorrelate_steps):
    g = jax.grad(penalty)(eta)
    eta = eta - step_size * g / jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(g))), 1e-12)
    value = penalty(eta)
    best = jnp.where(value < best_value, eta, best)
    best_value = jnp.minimum(value, best_value)
  return jax.lax.stop_gradient(jax.nn.softmax(logits0 + best, -1))

"""Mechanism diagnostics of a generator: RIS claims robust and diverse images; these figures
measure both directly on a fixed probe batch, the same for every method and seed.

The probe (`make_probe`): `size` labels, balanced over the classes; latents z; the soft-label
noise of methods that condition on soft labels; one draw of every input perturbation of
`input_kinds` and one relative weight-noise draw ξ, all from `seed` alone. At each evaluation
the generator maps (z, labels) to images x and the frozen teacher T is run on x, on A_k(x) for
every input perturbation k, on x with weights θ + ε|θ|ξ, and on A_k(x) with those weights.

Figures (`figures`; names as logged in metrics.jsonl, each the mean over the probe):
  diag_teacher_agreement        mean_i [argmax T(x_i) = y_i]
  diag_feat_incons_{input,weight,both}
                                mean_i 1 − cos(f(x_i), f̃_i)   (f: pooled features; input and
                                both: also averaged over the kinds k)
  diag_pred_incons_{input,weight,both}
                                mean_i ‖softmax T(x_i) − softmax T̃_i‖₁
  diag_softmax_corr             mean_{i≠j} C_ij, C the Pearson correlation between the rows of
                                softmax T(x) (B, C): low = diverse in label space
  diag_feat_cos_within          mean over pairs i≠j with y_i = y_j of cos(f_i, f_j)
  diag_feat_cos_across          mean over pairs with y_i ≠ y_j of cos(f_i, f_j)
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp

from ris_jax import losses, perturb, train

PERTURBATIONS = ('input', 'weight', 'both')
NAMES = (('diag_teacher_agreement',)
         + tuple(f'diag_{kind}_incons_{p}' for p in PERTURBATIONS for kind in ('feat', 'pred'))
         + ('diag_softmax_corr', 'diag_feat_cos_within', 'diag_feat_cos_across'))


@dataclasses.dataclass(frozen=True)
class ProbeSpec:
  """What the probe holds and how it perturbs (config.diagnostics); defaults: method.md's
  perturbation settings."""
  size: int = 100
  seed: int = 0
  weight_eps: float = 0.05
  noise_std: float = 0.1
  input_kinds: Tuple[str, ...] = perturb.INPUT_PERTURBATIONS

  @classmethod
  def from_config(cls, config) -> 'ProbeSpec':
    d = config.diagnostics
    return cls(int(d.probe_size), int(d.seed), float(d.weight_eps), float(d.noise_std),
               tuple(d.input_kinds))


def make_probe(spec: ProbeSpec, models: train.Models, teacher_params, image_shape) -> Dict[str, Any]:
  """The fixed draws of the probe (see the module docstring): a pytree of arrays."""
  keys = jax.random.split(jax.random.PRNGKey(spec.seed), 4 + len(spec.input_kinds))
  labels = jnp.arange(spec.size) % models.num_classes
  shape = (spec.size,) + tuple(image_shape)
  return {'labels': labels,
          'z': jax.random.normal(keys[0], (spec.size, models.generator.latent_dim)),
          'targets': train.conditioning(models, labels, keys[1]),
          'xi': perturb.weight_noise(keys[2], teacher_params),
          'inputs': {k: perturb.draw_input_perturbation(key, shape, (k,))
                     for k, key in zip(spec.input_kinds, keys[4:])}}


def pairwise_cosine(features) -> jax.Array:
  """(B, D) → (B, B) cosine similarity between the rows."""
  unit = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-8)
  return unit @ unit.T


def figures(labels, logits, features, perturbed: Mapping[str, Sequence[Tuple[Any, Any]]]
            ) -> Dict[str, jax.Array]:
  """The diagnostics of the module docstring from teacher outputs: clean `logits` (B, C) and
  pooled `features` (B, D) of the probe images with `labels` (B,); `perturbed[p]` for p in
  PERTURBATIONS a list of (logits, features) under that perturbation (one per kind)."""
  out = {'diag_teacher_agreement': jnp.mean(jnp.argmax(logits, -1) == labels)}
  for p in PERTURBATIONS:
    out[f'diag_feat_incons_{p}'] = jnp.mean(jnp.stack(
        [losses.cosine_inconsistency(features, f) for _, f in perturbed[p]]))
    out[f'diag_pred_incons_{p}'] = jnp.mean(jnp.stack(
        [losses.prediction_inconsistency(logits, l) for l, _ in perturbed[p]]))
  b = labels.shape[0]
  off_diagonal = 1.0 - jnp.eye(b)
  out['diag_softmax_corr'] = (jnp.sum(losses.batch_correlation(jax.nn.softmax(logits, -1))
                                      * off_diagonal) / (b * (b - 1)))
  cos = pairwise_cosine(features)
  same = (labels[:, None] == labels[None, :]) * off_diagonal
  across = 1.0 - (labels[:, None] == labels[None, :])
  out['diag_feat_cos_within'] = jnp.sum(cos * same) / jnp.maximum(jnp.sum(same), 1)
  out['diag_feat_cos_across'] = jnp.sum(cos * across) / jnp.maximum(jnp.sum(across), 1)
  return out


def probe_diagnostics(models: train.Models, spec: ProbeSpec, generator_vars, teacher_vars,
                      probe) -> Dict[str, jax.Array]:
  """`figures` of the generator `generator_vars` on the probe (jit with models, spec static)."""
  images = models.generator.apply(generator_vars, probe['z'], probe['targets'])
  params = teacher_vars['params']
  noisy = perturb.perturb_weights(None, params, spec.weight_eps, probe['xi'])
  moved = [perturb.apply_input_perturbation(probe['inputs'][k], images, (k,), spec.noise_std)
           for k in spec.input_kinds]
  # Two teacher passes (clean and perturbed weights) over the clean and every moved batch,
  # stacked: the teacher's BN runs on its running statistics, so each image's outputs are its
  # own whatever it is batched with.
  stacked = jnp.concatenate([images] + moved)
  split = lambda a: jnp.split(a, 1 + len(moved))
  clean, weight = (tuple(map(split, train.teacher_forward(
      models, {**teacher_vars, 'params': p}, stacked)[:2])) for p in (params, noisy))
  pairs = lambda outs: list(zip(*outs))  # [(logits, features) of each batch]
  clean, weight = pairs(clean), pairs(weight)
  logits, features = clean[0]
  perturbed = {'input': clean[1:], 'weight': weight[:1], 'both': weight[1:]}
  return figures(probe['labels'], logits, features, perturbed)


@functools.lru_cache(maxsize=16)
def jit_probe_diagnostics(models: train.Models, spec: ProbeSpec):
  """`probe_diagnostics` jitted for this run: f(generator_vars, teacher_vars, probe) → figures."""
  return jax.jit(lambda g, t, p: probe_diagnostics(models, spec, g, t, p))

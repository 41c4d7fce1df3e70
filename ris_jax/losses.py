"""Loss functions, pure, one equation each (method.md, "Generator loss", "Student loss")."""
from __future__ import annotations

from typing import Any, Mapping, Tuple

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """L_CE = mean_i CE(logits_i, y_i); `targets` (B,) int labels or (B, C) soft labels."""
  if targets.ndim == logits.ndim - 1:
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))
  return jnp.mean(optax.softmax_cross_entropy(logits, targets))


def _paired_bn_leaves(bn_stats, running_stats):
  tapped = {tuple(k.key for k in p): v for p, v in jax.tree_util.tree_flatten_with_path(bn_stats)[0]}
  running = {tuple(k.key for k in p): v
             for p, v in jax.tree_util.tree_flatten_with_path(running_stats)[0]}
  layers = sorted({path[:-1] for path in tapped})
  return [(tapped[l + ('mean',)], tapped[l + ('var',)], running[l + ('mean',)], running[l + ('var',)])
          for l in layers]


def bn_statistics_loss(bn_stats: Mapping[str, Any], running_stats: Mapping[str, Any]) -> jax.Array:
  """L_BNS = (1/L) Σ_l [mean_c (μ_lc(x) − μ̂_lc)² + mean_c (σ²_lc(x) − σ̂²_lc)²].

  `bn_stats`: the teacher's `bn_stats` tap (batch mean / biased var of each BN input);
  `running_stats`: its `batch_stats` (running mean / var), same tree paths."""
  terms = [jnp.mean(jnp.square(m - rm)) + jnp.mean(jnp.square(v - rv))
           for m, v, rm, rv in _paired_bn_leaves(bn_stats, running_stats)]
  return sum(terms) / len(terms)


def cosine_inconsistency(features: jax.Array, perturbed: jax.Array) -> jax.Array:
  """L_feat = mean_i [1 − cos(f_i, f̃_i)]; features (B, D)."""
  num = jnp.sum(features * perturbed, -1)
  den = jnp.linalg.norm(features, axis=-1) * jnp.linalg.norm(perturbed, axis=-1)
  return jnp.mean(1.0 - num / jnp.maximum(den, 1e-8))


def prediction_inconsistency(logits: jax.Array, perturbed: jax.Array, distance: str = 'l1') -> jax.Array:
  """L_pred = mean_i ‖softmax(z_i) − softmax(z̃_i)‖₁ ('l1') or mean_i KL(p_i ‖ p̃_i) ('kl')."""
  p, q = jax.nn.softmax(logits, -1), jax.nn.softmax(perturbed, -1)
  if distance == 'l1':
    return jnp.mean(jnp.sum(jnp.abs(p - q), -1))
  if distance == 'kl':
    return jnp.mean(jnp.sum(p * (jax.nn.log_softmax(logits, -1) - jax.nn.log_softmax(perturbed, -1)), -1))
  raise ValueError(f"prediction distance must be 'l1' or 'kl', got {distance!r}")


def robustness_loss(features, logits, perturbed_features, perturbed_logits,
                    feature_weight: float = 1.0, prediction_weight: float = 1.0,
                    distance: str = 'l1', feature_margin=0.0, prediction_margin=0.0
                    ) -> Tuple[jax.Array, Mapping[str, jax.Array]]:
  """L_rob = w_f·max(L_feat − m_f, 0) + w_p·max(L_pred − m_p, 0) (margins 0: plain sum).

  Inputs: clean and perturbed teacher outputs, features (B, D), logits (B, C)."""
  feat = cosine_inconsistency(features, perturbed_features)
  pred = prediction_inconsistency(logits, perturbed_logits, distance)
  value = (feature_weight * jax.nn.relu(feat - feature_margin)
           + prediction_weight * jax.nn.relu(pred - prediction_margin))
  return value, {'feat_inconsistency': feat, 'pred_inconsistency': pred}


def batch_correlation(vectors: jax.Array) -> jax.Array:
  """(B, C) → (B, B) Pearson correlation between the rows."""
  centered = vectors - jnp.mean(vectors, -1, keepdims=True)
  normed = centered / jnp.maximum(jnp.linalg.norm(centered, axis=-1, keepdims=True), 1e-8)
  return normed @ normed.T


def label_correlation_penalty(probs: jax.Array) -> jax.Array:
  """L_div = mean_{i≠j} C_ij², C the correlation matrix of the rows of `probs` (B, C)."""
  c = batch_correlation(probs)
  b = c.shape[0]
  off = c * (1.0 - jnp.eye(b, dtype=c.dtype))
  return jnp.sum(jnp.square(off)) / (b * (b - 1))


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array, tau: float = 20.0,
            reduction: str = 'mean') -> jax.Array:
  """τ²·KL(softmax(T/τ) ‖ softmax(Q/τ)), summed KL divided by B·C ('mean', PyTorch's
  default as in GDFQ) or by B ('batchmean')."""
  log_p = jax.nn.log_softmax(teacher_logits / tau, -1)
  log_q = jax.nn.log_softmax(student_logits / tau, -1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q))
  if reduction == 'mean':
    kl = kl / student_logits.size
  elif reduction == 'batchmean':
    kl = kl / student_logits.shape[0]
  else:
    raise ValueError(f"kd reduction must be 'mean' or 'batchmean', got {reduction!r}")
  return tau ** 2 * kl

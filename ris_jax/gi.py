"""AIT's gradient inflation (GI; Choi et al., CVPR 2022, "It's All In the Teacher"), as its
official code does it (`SGD_adalr` in GDFQ_AIT/optimizer.py; ../shared/docs/ait.md §2).

Nesterov SGD in which every quantized kernel W takes a step α·η larger than plain SGD's, with
a per-layer α ≥ 1 searched at every step so that about a fraction τ of W's integer weight codes
change:
    b̃ = μ·b + g (b: the momentum buffer, absent = 0),  d = g + μ·b̃        (Nesterov)
    r(α) = mean[ C(W − α·η·d) ≠ C(W) ]   (C: `quant.weight_codes`, each with its own range)
    α = 1 if r(1) ≥ τ; otherwise α doubles until r(α) ≥ τ (while `capped`, also stops once
        α > 100, i.e. at 128), then ≤ `search_iters` bisection rounds on [α/2, α]:
        m = (lo + hi)/2, stop if |r(m) − τ| < τ/100, lo = m if r(m) < τ else hi = m; α = the
        last m
    W ← W − α·η·d,  b ← b̃                   (the buffer is not scaled by α)
Other leaves (BN scale / offset, biases) take the plain Nesterov step W ← W − η·d.
Deviation (documented): the doubling stops after `max_doublings` (AIT has no bound: a zero
direction would double α to inf and write NaN).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from ris_jax import quant


class GIState(NamedTuple):
  count: jax.Array  # student updates done so far
  trace: Any  # the momentum buffers b (params' tree)
  alpha: Any  # per leaf the α of the last update (0 marks the leaves without GI)
  flip_ratio: Any  # per leaf r(α) of the last update (0 for non-kernel leaves)


def search_alpha(kernel, direction, lr, threshold, bits: int, capped, search_iters: int = 5,
                 max_doublings: int = 60):
  """(α, r(α), number of r evaluations) of AIT's search for one kernel (module docstring)."""
  ratio = lambda a: quant.flip_ratio(kernel, direction, a * lr, bits)
  one = jnp.ones((), kernel.dtype)
  r1 = ratio(one)

  def doubling(carry):
    alpha, _, n = carry
    alpha = 2 * alpha
    return alpha, ratio(alpha), n + 1

  def doubling_goes_on(carry):
    alpha, r, n = carry
    # AIT checks r ≥ τ first, then the cap (α > 100): a capped search may end at α = 128
    # with r(128) < τ, and bisects [64, 128] all the same.
    return (r < threshold) & ~(capped & (alpha > 100)) & (n < max_doublings)

  def bisection(carry):
    i, lo, hi, _, _, done = carry
    mid = (lo + hi) / 2
    r = ratio(mid)
    done = jnp.abs(r - threshold) < threshold / 100
    below = r < threshold
    return (i + 1, jnp.where(~done & below, mid, lo), jnp.where(~done & ~below, mid, hi), mid, r,
            done)

  def search(_):
    alpha, _, n = jax.lax.while_loop(doubling_goes_on, doubling,
                                     doubling((one, r1, jnp.zeros((), jnp.int32))))
    init = (jnp.zeros((), jnp.int32), alpha / 2, alpha, alpha, jnp.zeros((), r1.dtype),
            jnp.zeros((), bool))
    i, _, _, mid, r, _ = jax.lax.while_loop(
        lambda c: (c[0] < search_iters) & ~c[5], bisection, init)
    return mid, r, 1 + n + i

  return jax.lax.cond(r1 >= threshold, lambda _: (one, r1, jnp.ones((), jnp.int32)), search, None)


def gi_sgd(learning_rate, threshold, kernel_bits, momentum: float = 0.9, nesterov: bool = True,
           cap_updates: int = 200, search_iters: int = 5, max_doublings: int = 60
           ) -> optax.GradientTransformation:
  """GI-SGD as an optax transformation (module docstring). `learning_rate`, `threshold`: floats
  or schedules of the update count; `kernel_bits`: a tree like the params with each quantized
  kernel's bit-width and None elsewhere (`student.kernel_bits_tree`); α is capped while fewer
  than `cap_updates` updates were done."""
  if not nesterov:
    raise ValueError('GI is defined for Nesterov SGD (AIT: nesterov=True)')
  as_schedule = lambda v: v if callable(v) else (lambda _: v)
  learning_rate, threshold = as_schedule(learning_rate), as_schedule(threshold)
  is_bits_leaf = lambda x: x is None or isinstance(x, int)

  def init(params):
    return GIState(count=jnp.zeros((), jnp.int32), trace=jax.tree.map(jnp.zeros_like, params),
                   alpha=jax.tree.map(lambda p: jnp.zeros((), p.dtype), params),
                   flip_ratio=jax.tree.map(lambda p: jnp.zeros((), p.dtype), params))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError('gi_sgd needs the params (update(grads, state, params))')
    lr, tau = learning_rate(state.count), threshold(state.count)
    capped = state.count < cap_updates
    trace = jax.tree.map(lambda g, b: momentum * b + g, grads, state.trace)
    direction = jax.tree.map(lambda g, b: g + momentum * b, grads, trace)

    def per_leaf(bits, w, d):
      if bits is None:
        return jnp.zeros((), w.dtype), jnp.zeros((), w.dtype)
      alpha, r, _ = search_alpha(w, d, jnp.asarray(lr, w.dtype), jnp.asarray(tau, w.dtype), bits,
                                 capped, search_iters, max_doublings)
      return alpha, r

    found = jax.tree.map(per_leaf, kernel_bits, params, direction, is_leaf=is_bits_leaf)
    is_pair = lambda x: isinstance(x, tuple)  # per_leaf's (α, r) pairs
    alpha = jax.tree.map(lambda f: f[0], found, is_leaf=is_pair)
    ratio = jax.tree.map(lambda f: f[1], found, is_leaf=is_pair)
    updates = jax.tree.map(lambda bits, a, d: -(lr if bits is None else a * lr) * d,
                           kernel_bits, alpha, direction, is_leaf=is_bits_leaf)
    return updates, GIState(count=state.count + 1, trace=trace, alpha=alpha, flip_ratio=ratio)

  return optax.GradientTransformation(init, update)


def find_state(opt_state) -> Optional[GIState]:
  """The GIState inside an optimizer state (chained / injected), or None."""
  is_gi = lambda s: isinstance(s, GIState)
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_gi) if is_gi(s)]
  return found[0] if found else None


def metrics(opt_state) -> dict:
  """{'gi_alpha_mean', 'gi_alpha_max', 'gi_flip_ratio' (means over the quantized kernels),
  'gi_threshold' (τ)} of the last update; {} for an optimizer without GI."""
  state = find_state(opt_state)
  if state is None:
    return {}
  alphas, ratios = (jnp.stack(jax.tree.leaves(t)) for t in (state.alpha, state.flip_ratio))
  kernels = alphas > 0
  count = jnp.maximum(jnp.sum(kernels), 1)
  out = {'gi_alpha_mean': jnp.sum(jnp.where(kernels, alphas, 0)) / count,
         'gi_alpha_max': jnp.max(alphas),
         'gi_flip_ratio': jnp.sum(jnp.where(kernels, ratios, 0)) / count}
  kinds = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
  injected = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, kinds))
              if isinstance(s, kinds)]
  for s in injected:
    if 'threshold' in s.hyperparams:
      out['gi_threshold'] = s.hyperparams['threshold']
  return out

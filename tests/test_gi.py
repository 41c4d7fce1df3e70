"""AIT's gradient inflation (ris_jax/gi.py) against the PyTorch re-statement of its official
optimizer (experiments/torch_reference.GISGD, written from ../shared/docs/ait.md §2), float64 on
both sides so that no rounding near-tie can flip a code: integer codes and flip counts, the α
search (bit-equal α and the same number of r evaluations), and three optimizer steps."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from ris_jax import gi, quant

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'experiments'))
import torch_reference as ref  # noqa: E402

RNG = np.random.default_rng(0)
# PyTorch layouts (output channel first) and the JAX layout of the same tensor
SHAPES = {'conv': ((16, 8, 3, 3), (2, 3, 1, 0)), 'depthwise': ((12, 1, 3, 3), (2, 3, 1, 0)),
          'linear': ((10, 64), (1, 0))}


def to_jax(t, perm):
  return jnp.asarray(np.transpose(np.asarray(t), perm))


@pytest.mark.parametrize('kind', list(SHAPES))
@pytest.mark.parametrize('bits', [3, 4])
def test_codes_and_flip_counts_equal_torch(kind, bits):
  shape, perm = SHAPES[kind]
  w = torch.from_numpy(RNG.standard_normal(shape) * 0.1)
  d = torch.from_numpy(RNG.standard_normal(shape))
  with jax.enable_x64(True):
    codes = quant.weight_codes(to_jax(w, perm), bits)
    np.testing.assert_array_equal(np.asarray(codes), np.transpose(ref.weight_codes(w, bits).numpy(), perm))
    assert codes.min() >= -2 ** (bits - 1) and codes.max() <= 2 ** (bits - 1) - 1
    for step in (1e-4, 3e-3, 1e-2, 0.05):
      ours = float(quant.flip_ratio(to_jax(w, perm), to_jax(d, perm), step, bits))
      theirs = ref.flip_ratio(w, d, step, bits)
      assert round(ours * w.numel()) == round(theirs * w.numel()), (step, ours, theirs)
    assert 0 < theirs < 1


def _torch_search(w, d, lr, tau, bits, capped):
  opt = ref.GISGD([torch.zeros(1, requires_grad=True)], lr=lr, threshold=tau)
  opt.capped = capped
  return opt.search(w, d, lr, bits)


@pytest.mark.parametrize('case, d_scale, capped', [
    ('r(1) >= tau', 1.0, True),          # the plain step already flips enough: α = 1
    ('tiny step under the cap', 1e-9, True),
    ('tiny step after the cap', 1e-9, False),
    ('typical', 2e-3, False)])
def test_alpha_search_equals_torch(case, d_scale, capped):
  shape, perm = SHAPES['conv']
  w = torch.from_numpy(RNG.standard_normal(shape) * 0.1)
  d = torch.from_numpy(RNG.standard_normal(shape) * d_scale)
  lr, tau, bits = 1e-2, 1e-2, 4
  alpha_t, r_t, n_t = _torch_search(w, d, lr, tau, bits, capped)
  with jax.enable_x64(True):
    alpha, r, n = jax.jit(gi.search_alpha, static_argnums=(4,))(
        to_jax(w, perm), to_jax(d, perm), jnp.float64(lr), jnp.float64(tau), bits, jnp.bool_(capped))
  assert float(alpha) == alpha_t and int(n) == n_t, (case, alpha, alpha_t, n, n_t)
  assert round(float(r) * w.numel()) == round(r_t * w.numel())  # the same number of flipped codes
  if case == 'r(1) >= tau':
    assert alpha_t == 1.0 and n_t == 1
  elif case == 'tiny step under the cap':
    assert 64 < alpha_t < 128 and r_t < tau
  elif case == 'tiny step after the cap':
    assert alpha_t > 128
  else:
    assert 1 < alpha_t < 64 and n_t > 2


def test_zero_direction_is_bounded():
  """A layer whose gradient is zero: AIT would double α to inf (NaN weights); ris_jax stops at
  2^max_doublings and the step is zero."""
  w = jnp.asarray(RNG.standard_normal((3, 3, 4, 8)), jnp.float32)
  alpha, r, n = gi.search_alpha(w, jnp.zeros_like(w), 1e-4, 1e-3, 4, False, max_doublings=60)
  assert np.isfinite(float(alpha)) and float(r) == 0.0 and int(n) == 1 + 60 + 5
  assert float(alpha) > 2.0 ** 59


def test_three_optimizer_steps_equal_torch():
  """{conv kernel, dense kernel, dense bias, BN scale}: step 1 capped, the cap off from step 2
  (cap_updates=1), τ ×0.1 before step 3. Params and momentum buffers to 1e-12; the buffers equal
  plain Nesterov SGD's (α is not in the buffer); non-kernel leaves equal torch.optim.SGD."""
  lr, tau0, mu = 1e-2, 2e-2, 0.9
  rng = np.random.default_rng(7)
  torch_params = {'conv': torch.from_numpy(rng.standard_normal((16, 8, 3, 3)) * 0.1),
                  'dense': torch.from_numpy(rng.standard_normal((10, 64)) * 0.1),
                  'bias': torch.from_numpy(rng.standard_normal(10)),
                  'scale': torch.from_numpy(rng.uniform(0.5, 1.5, 8))}
  perms = {'conv': (2, 3, 1, 0), 'dense': (1, 0), 'bias': (0,), 'scale': (0,)}
  scale = {'conv': 1e-7, 'dense': 1e-3, 'bias': 1e-2, 'scale': 1e-2}  # conv: α reaches the cap
  grads = [{k: torch.from_numpy(rng.standard_normal(v.shape) * scale[k]) for k, v in torch_params.items()}
           for _ in range(3)]
  seen = []
  tp = {k: v.clone().requires_grad_(True) for k, v in torch_params.items()}
  opt = ref.GISGD([{'params': [tp['conv']], 'bits': 4}, {'params': [tp['dense']], 'bits': 3},
                   {'params': [tp['bias'], tp['scale']]}], lr=lr, momentum=mu, threshold=tau0)
  plain = {k: v.clone().requires_grad_(True) for k, v in torch_params.items() if k in ('bias', 'scale')}
  sgd = torch.optim.SGD(plain.values(), lr=lr, momentum=mu, nesterov=True)
  with jax.enable_x64(True):
    params = {k: to_jax(v, perms[k]) for k, v in torch_params.items()}
    bits = {'conv': 4, 'dense': 3, 'bias': None, 'scale': None}
    tx = optax.inject_hyperparams(
        lambda learning_rate, threshold: gi.gi_sgd(learning_rate, threshold, bits, mu, cap_updates=1),
    )(learning_rate=lr, threshold=lambda n: tau0 * jnp.where(n >= 2, 0.1, 1.0))
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step, g in enumerate(grads):
      opt.capped = step < 1
      opt.threshold = tau0 * (0.1 if step >= 2 else 1.0)
      for k, p in tp.items():
        p.grad = g[k].clone()
      opt.step()
      for k, p in plain.items():
        p.grad = g[k].clone()
      sgd.step()
      updates, state = update({k: to_jax(v, perms[k]) for k, v in g.items()}, state, params)
      params = optax.apply_updates(params, updates)
      gi_state = gi.find_state(state)
      alphas = [float(gi_state.alpha[k]) for k in ('conv', 'dense')]
      assert alphas == opt.alphas, (step, alphas, opt.alphas)
      seen.append(alphas)
      np.testing.assert_allclose([float(gi_state.flip_ratio[k]) for k in ('conv', 'dense')], opt.ratios,
                                 rtol=1e-14)
      for k, p in tp.items():
        np.testing.assert_allclose(params[k], to_jax(p.detach(), perms[k]), rtol=0, atol=1e-12, err_msg=k)
        buf = opt.state[p]['momentum_buffer']
        np.testing.assert_allclose(gi_state.trace[k], to_jax(buf, perms[k]), rtol=0, atol=1e-12, err_msg=k)
      for k, p in plain.items():
        np.testing.assert_array_equal(np.asarray(tp[k].detach()), np.asarray(p.detach()), err_msg=k)
    # the buffers are plain SGD's: b_t = μ b_{t−1} + g_t whatever α was
    want = sum(mu ** (2 - t) * g['conv'] for t, g in enumerate(grads))
    np.testing.assert_allclose(gi_state.trace['conv'], to_jax(want, perms['conv']), atol=1e-12)
    metrics = gi.metrics(state)
    assert float(metrics['gi_alpha_mean']) == pytest.approx(np.mean(opt.alphas))
    assert float(metrics['gi_threshold']) == pytest.approx(tau0 * 0.1)
  assert 64 < seen[0][0] < 128 < seen[1][0]  # the conv's α: capped at step 1, not at step 2
  assert seen[2][0] > 128 and seen[2][1] > 1  # both kernels inflated after the τ decay

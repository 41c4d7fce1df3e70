"""The mechanism diagnostics (ris_jax/diagnostics.py) against numpy: the figures from given
teacher outputs, and the probe path end to end (generator images, the teacher on every fixed
perturbation) against the same numpy formulas fed by separately computed teacher outputs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ris_jax import diagnostics, perturb
from test_losses import TINY, tiny_teacher
from test_options import build, np_inconsistency, np_softmax, teacher_out, tiny_config


def np_figures(labels, logits, features, perturbed):
  """The diagnostics of ris_jax/diagnostics.py's docstring, written out in float64 numpy."""
  labels = np.asarray(labels)
  out = {'diag_teacher_agreement': np.mean(np.argmax(logits, -1) == labels)}
  for p, outputs in perturbed.items():
    pairs = [np_inconsistency(features, logits, f, l, 'l1') for l, f in outputs]
    out[f'diag_feat_incons_{p}'] = np.mean([a for a, _ in pairs])
    out[f'diag_pred_incons_{p}'] = np.mean([b for _, b in pairs])
  probs = np_softmax(logits)
  f = np.asarray(features, np.float64)
  b = len(labels)
  corr, cos_within, cos_across = [], [], []
  for i in range(b):
    for j in range(b):
      if i == j:
        continue
      corr.append(np.corrcoef(probs[i], probs[j])[0, 1])
      cos = f[i] @ f[j] / (np.linalg.norm(f[i]) * np.linalg.norm(f[j]))
      (cos_within if labels[i] == labels[j] else cos_across).append(cos)
  out.update(diag_softmax_corr=np.mean(corr), diag_feat_cos_within=np.mean(cos_within),
             diag_feat_cos_across=np.mean(cos_across))
  return out


def test_figures_equal_numpy_on_given_outputs():
  rng = np.random.default_rng(0)
  b, c, d = 12, 10, 6
  labels = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4, 5, 5, 9])
  logits = 3 * rng.standard_normal((b, c))
  logits[np.arange(b), labels] += 4  # mostly agreeing, not all
  features = np.abs(rng.standard_normal((b, d)))
  perturbed = {p: [(logits + rng.standard_normal((b, c)), features + 0.3 * rng.random((b, d)))
                   for _ in range(n)] for p, n in (('input', 3), ('weight', 1), ('both', 2))}
  got = jax.jit(diagnostics.figures)(jnp.asarray(labels), jnp.asarray(logits, jnp.float32),
                                     jnp.asarray(features, jnp.float32),
                                     jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), perturbed))
  want = np_figures(labels, logits, features, perturbed)
  assert set(got) == set(want) == set(diagnostics.NAMES)
  assert 0.0 < want['diag_teacher_agreement'] < 1.0
  for k in want:
    np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize('method', [pytest.param('gdfq', marks=pytest.mark.full(
    reason='the same program with one-hot conditioning (~11 s); the quick tier checks RIS')), 'ris'])
def test_probe_diagnostics_equal_numpy_on_separately_computed_teacher_outputs(method):
  config = tiny_config(soft_labels=method == 'ris')
  models, state, t_vars = build(config)
  spec = diagnostics.ProbeSpec(size=20, seed=3)
  probe = diagnostics.make_probe(spec, models, t_vars['params'], TINY.input_shape)
  # the probe is fixed: the same draws from the same seed, whatever the run
  again = diagnostics.make_probe(spec, models, t_vars['params'], TINY.input_shape)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(probe), jax.tree.leaves(again)))
  np.testing.assert_array_equal(probe['labels'], np.arange(20) % 10)
  soft = np.asarray(probe['targets'])
  assert (soft.max(-1) < 1.0).all() if method == 'ris' else np.array_equal(soft, np.eye(10)[np.arange(20) % 10])
  got = diagnostics.jit_probe_diagnostics(models, spec)(state.generator, t_vars, probe)

  module = tiny_teacher()[0]
  x = models.generator.apply(state.generator, probe['z'], probe['targets'])
  noisy = perturb.perturb_weights(None, t_vars['params'], spec.weight_eps, probe['xi'])
  moved = [perturb.apply_input_perturbation(probe['inputs'][k], x, (k,), spec.noise_std)
           for k in spec.input_kinds]
  assert len(moved) == 4 and all(not np.allclose(m, x) for m in moved)
  logits, features = teacher_out(module, t_vars, x)
  perturbed = {'input': [teacher_out(module, t_vars, m) for m in moved],
               'weight': [teacher_out(module, t_vars, x, noisy)],
               'both': [teacher_out(module, t_vars, m, noisy) for m in moved]}
  want = np_figures(probe['labels'], logits, features, perturbed)
  for k in want:
    np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-4, atol=1e-5, err_msg=k)
  assert want['diag_feat_incons_both'] > 0 and want['diag_pred_incons_weight'] > 0

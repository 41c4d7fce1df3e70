"""One RIS iteration of ris_jax equals the independent PyTorch reference, given the same weights
and the same randomness (experiments/check_reference.py: four iterations, two with the student
frozen and calibrating, two fine-tuning it; ResNet-8 random-weight teacher, batch 8, generator
width 16). The script runs every case (GDFQ, each RIS term alone, full RIS, at W8A8 and W4A4);
here full RIS at W4A4, which has every term."""
import numpy as np
import pytest

from experiments import check_reference

GENERATOR_SIDE = {'g_ce', 'g_bns', 'g_rob', 'feat_inconsistency', 'pred_inconsistency', 'g_loss',
                  'soft_labels', 'images', 'teacher_logits', 'generator_grads', 'generator_params'}
# Downstream of the student's activation quantizers: a rounding near-tie decided the other way
# by float32 rounding (a level flip) moves them by more than 1e-4 (check_reference.py).
STUDENT_SIDE = {'s_kd', 's_ce', 's_loss', 'student_grads', 'student_params',
                'activation_ranges', 'student_logits_same_images', 'activations_without_flips'}
# train.ris_step (jitted) against the composition of generator_loss / student_step given its own
# draws, both in float64: one function, so equal to float64 rounding.
RIS_STEP = {'ris_step_generator', 'ris_step_student'}
# Parameter changes (new − old, both float32). Adam scales each element of the gradient to about
# lr: elements far below their leaf's largest carry their own (larger) relative rounding error
# into a full-size update. SGD's change (lr 1e-4 × gradient) is ~1e-4 of the parameter, so the
# parameter's own rounding (~6e-8 of it) is ~1e-3 of the change (measured 1.8e-4; 1.0e-3 with
# XLA_FLAGS=--xla_backend_optimization_level=0, i.e. other rounding).
UPDATES = {'generator_update', 'student_update'}


@pytest.mark.full(reason='four iterations of ris_jax and of the PyTorch reference, and float64 programs (~1 min)')
def test_full_ris_iteration_matches_the_pytorch_reference():
  worst, notes = check_reference.run_case('ris_w4a4')
  print(worst, notes)
  assert set(worst) == GENERATOR_SIDE | STUDENT_SIDE | RIS_STEP | UPDATES
  for k in RIS_STEP:
    assert worst[k] <= 1e-9, (k, worst)
  for k in GENERATOR_SIDE:
    assert worst[k] <= 1e-4, (k, worst)
  assert worst['generator_update'] <= 1e-3, worst
  # The biases before a batch-statistics BN get rounding noise only (compared this way instead).
  assert notes['bias_before_bn_grad'] <= 1e-5, notes
  flips = notes['level_flips']
  for k in STUDENT_SIDE:
    assert worst[k] <= (1e-4 if flips == 0 else 0.1), (k, worst, notes)
  assert worst['student_update'] <= (3e-3 if flips == 0 else 0.1), (worst, notes)


def test_rel_diff_sees_a_wrong_value():
  """The measure the script reports: max|a − b| / max|b| (and shapes must agree)."""
  b = np.array([1.0, -4.0, 2.0])
  assert check_reference.rel_diff(b, b) == 0.0
  assert check_reference.rel_diff(b + [0.0, 0.0, 4e-4], b) == pytest.approx(1e-4)
  with pytest.raises(ValueError):
    check_reference.rel_diff(b[:2], b)


def test_level_flips_counts_elements_a_level_apart():
  acts = {'l': np.array([0.0, 1.0, 2.0, 3.0])}  # range [0, 3] at 2 bits: one level = 1
  ranges = {'l/Activation_0/lo': 0.0, 'l/Activation_0/hi': 3.0}
  flips, rest = check_reference.level_flips({'l': np.array([0.0, 2.0, 2.0, 3.0 + 3e-6])}, acts,
                                            ranges, 2)
  assert flips == 1 and rest == pytest.approx(1e-6)


@pytest.mark.full(reason='three iterations of ris_jax and of the PyTorch reference with AIT\'s '
                  'optimizer (~1 min)')
def test_ait_iteration_matches_the_pytorch_reference():
  """GDFQ's generator with AIT's student step (KL only, no weight decay, gradient inflation):
  per-layer α equal in both frameworks, every loss, gradient and parameter as for full RIS.
  The parameter change of the stem (α·lr·d ≈ 2e-5 against weights up to ~1) carries the
  parameters' own float32 rounding (6e-8 of a weight ≈ 3e-3 of the change): bound 1e-2."""
  worst, notes = check_reference.run_case('ait_w4a4')
  print(worst, notes)
  assert worst['gi_alpha'] == 0.0, worst
  assert {'g_rob', 'feat_inconsistency', 'pred_inconsistency'}.isdisjoint(worst)  # GDFQ generator
  for k in (GENERATOR_SIDE - {'g_rob', 'feat_inconsistency', 'pred_inconsistency'}) | RIS_STEP:
    assert worst[k] <= (1e-9 if k in RIS_STEP else 1e-4), (k, worst)
  assert worst['generator_update'] <= 1e-3, worst
  for k in STUDENT_SIDE:
    assert worst[k] <= (1e-4 if notes['level_flips'] == 0 else 0.1), (k, worst, notes)
  assert worst['student_update'] <= 1e-2, worst

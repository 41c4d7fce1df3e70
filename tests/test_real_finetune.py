"""The real-data upper bound (`ris_jax.real_finetune`) on tiny shapes: the digits test teacher,
batch 16, a few iterations."""
from unittest import mock

from conftest import tiny_config
from ris_jax import data, evaluation, real_finetune


def test_finetune_on_real_images(digits_teacher, compile_cache):
  config = tiny_config(digits_teacher)
  config.quant.w_bits = config.quant.a_bits = 4
  config.train.steps, config.train.warmup_steps, config.train.calibration_steps = 2, 2, 2
  config.train.eval_every = 1
  frozen = real_finetune.finetune_on_real(config)
  assert frozen['images'] == 'real digits train' and frozen['steps'] == 2
  assert 0 <= frozen['student_top1_initial'] <= 100 and frozen['teacher_top1'] > 30
  # warm-up only: the student never moves, so final = calibrated.
  assert frozen['student_top1_final'] == frozen['student_top1_initial']
  config.train.steps, config.train.eval_every = 6, 3
  config.student.learning_rate = 0.05
  seen = []  # every accuracy the run measures, in order
  measure = evaluation.split_accuracy  # the real one (the patch below replaces the module attribute)

  def accuracy(*args, **kwargs):
    seen.append(measure(*args, **kwargs))
    return seen[-1]

  with mock.patch.object(real_finetune.evaluation, 'split_accuracy', accuracy):
    tuned = real_finetune.finetune_on_real(config)
  # warm-up end (step 2), the evaluation at step 3 (fine-tuning, before the end), final, teacher
  assert len(seen) == 4 and seen[3] == tuned['teacher_top1']
  assert tuned['student_top1_initial'] == seen[0] == frozen['student_top1_initial']  # same batches
  assert tuned['student_top1_final'] == seen[2] != tuned['student_top1_initial']
  assert tuned['student_top1_best'] == max(seen[1], seen[2])
  # `arrays` replaces the split: two images only → refused, fewer than a batch.
  tiny = data.load_arrays('digits', 'val')
  try:
    real_finetune.finetune_on_real(config, arrays={k: v[:2] for k, v in tiny.items()})
  except ValueError as e:
    assert 'fewer than the batch size' in str(e)
  else:
    raise AssertionError('expected a ValueError')

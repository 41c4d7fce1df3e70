"""The real-data upper bound of a data-free run: the same quantized student, calibrated and
fine-tuned on REAL training images instead of synthetic ones.

Same student, loss (CE on the real labels + KD from the teacher), optimizer, learning-rate
schedule, batch size, number of iterations, warm-up (student frozen while its activation
ranges calibrate) and evaluation cadence as `loop.train_and_evaluate`; only the images differ.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Dict, Optional

import jax
import numpy as np

from ris_jax import data, evaluation, teacher, train


def finetune_on_real(config, split: str = 'train', arrays: Optional[Dict[str, np.ndarray]] = None
                     ) -> Dict[str, Any]:
  """Fine-tunes the quantized student of `config` on `split` of `config.data.dataset` (epochs of
  a seeded permutation, `config.train.batch_size` images per step); returns results with the
  keys of `loop.train_and_evaluate`'s (accuracy on `config.data.split`). `arrays` ({"image",
  "label"}, normalized) replaces the split, e.g. for tests."""
  start = time.time()
  tc = config.train
  spec, t_module, t_vars = teacher.get_teacher(config)
  models, state = train.build(config, spec, t_module, t_vars)
  if arrays is None:
    arrays = data.load_arrays(config.data.dataset, split, config.data.get('data_dir'),
                              spec.normalization)
  n = len(arrays['label'])
  if n < tc.batch_size:
    raise ValueError(f'{split} has {n} images, fewer than the batch size {tc.batch_size}')

  @functools.partial(jax.jit, static_argnames=('update_student', 'calibrate'))
  def step(params, opt_state, ranges, images, labels, *, update_student, calibrate):
    t_logits = models.teacher.apply(t_vars, images)
    return train.student_step(params, opt_state, ranges, models, t_vars, images, labels,
                              t_logits, update_student=update_student, calibrate=calibrate)

  tag = train.only_tag(models.tags)
  params, opt_state, ranges = state.student[tag], state.student_opt[tag], state.quant_ranges[tag]
  acc = lambda: evaluation.split_accuracy(
      config, spec, models.student,
      train.student_variables(state.replace(student={tag: params}, quant_ranges={tag: ranges}),
                              t_vars))
  rng = np.random.RandomState(config.seed)
  per_epoch = n // tc.batch_size
  initial, best = None, None
  for i in range(tc.steps):
    if i % per_epoch == 0:
      order = rng.permutation(n)
    sel = np.sort(order[(i % per_epoch) * tc.batch_size:(i % per_epoch + 1) * tc.batch_size])
    params, opt_state, ranges, _ = step(
        params, opt_state, ranges, arrays['image'][sel], arrays['label'][sel],
        update_student=i >= tc.warmup_steps, calibrate=i < tc.calibration_steps)
    done = i + 1
    if done == tc.warmup_steps or (tc.warmup_steps == 0 and done == 1):
      initial = acc()
    if done % tc.eval_every == 0 and done > tc.warmup_steps and done < tc.steps:
      best = max(best or 0.0, acc())
  final = acc()
  return {'teacher_top1': evaluation.split_accuracy(config, spec, t_module, t_vars),
          'student_top1_initial': initial, 'student_top1_final': final,
          'student_top1_best': max(best or final, final),
          'w_bits': config.quant.w_bits, 'a_bits': config.quant.a_bits, 'steps': tc.steps,
          'batch_size': tc.batch_size, 'images': f'real {config.data.dataset} {split}',
          'wall_s': round(time.time() - start, 1)}

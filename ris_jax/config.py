"""Config validation (before any compute) and derived configs (the GDFQ baseline)."""
from __future__ import annotations

import json
import os

from ris_jax.errors import UserError

MODES = ('train', 'train_teacher', 'eval_teacher', 'ptq', 'dfkd')
TRAINING_MODES = ('train', 'dfkd')  # modes that run the RIS iteration
METHODS = ('ris', 'gdfq')
STUDENT_METHODS = ('gdfq', 'ait')


def validate(config) -> None:
  """Raises a `UserError` naming the field and the fix for values that cannot work."""
  if config.mode not in MODES:
    raise UserError(f"config.mode '{config.mode}' is not one of {', '.join(MODES)}")
  if config.method not in METHODS:
    raise UserError(f"config.method '{config.method}' is not one of {', '.join(METHODS)}")
  if config.student.method not in STUDENT_METHODS:
    raise UserError(f"config.student.method '{config.student.method}' is not one of "
                    f"{', '.join(STUDENT_METHODS)}")
  if config.student.method == 'ait':
    if config.mode != 'train':
      raise UserError(f"config.student.method='ait' (gradient inflation on quantized kernels) is "
                      f"for mode 'train', not '{config.mode}'; use --config.student.method=gdfq")
    if not config.student.nesterov:
      raise UserError("config.student.method='ait' is Nesterov SGD; set --config.student.nesterov=True")
    for name in ('gi_threshold', 'gi_cap_updates', 'gi_search_iters', 'gi_max_doublings'):
      if config.student[name] < (0 if name == 'gi_cap_updates' else 1e-12):
        raise UserError(f'config.student.{name}={config.student[name]} must be '
                        + ('at least 0' if name == 'gi_cap_updates' else 'positive'))
  for name in ('w_bits', 'a_bits', 'first_last_bits'):
    bits = config.quant[name]
    if bits is not None and not 2 <= bits <= 8:
      raise UserError(f'config.quant.{name}={bits} is outside 2..8; use a bit-width from 2 to 8')
  from ris_jax import train
  try:
    widths = train.bit_widths(config)
  except ValueError as e:
    raise UserError(str(e)) from None
  for w, a in widths:
    if not (2 <= w <= 8 and 2 <= a <= 8):
      raise UserError(f"config.quant.bits='{config.quant.bits}': w{w}a{a} is outside 2..8; use "
                      'bit-widths from 2 to 8')
  if len(widths) > 1 and config.mode not in ('train',):
    raise UserError(f"config.quant.bits='{config.quant.bits}' (several students) is for mode "
                    f"'train'; mode '{config.mode}' takes one bit-width (--config.quant.bits=w4a4)")
  import jax
  devices = jax.device_count()
  if config.mode in TRAINING_MODES and config.train.batch_size % devices:
    raise UserError(f'config.train.batch_size={config.train.batch_size} is not divisible by the '
                    f'{devices} devices; use a multiple of {devices}')
  for name in ('steps', 'batch_size', 'log_every', 'eval_every', 'checkpoint_every', 'max_checkpoints'):
    if config.mode in TRAINING_MODES and config.train[name] < 1:
      raise UserError(f'config.train.{name}={config.train[name]} must be at least 1')
  if config.train.calibration_steps > config.train.steps or config.train.warmup_steps > config.train.steps:
    raise UserError('config.train.warmup_steps and calibration_steps must not exceed train.steps')
  if config.loss.kd_reduction not in ('mean', 'batchmean'):
    raise UserError(f"config.loss.kd_reduction must be 'mean' or 'batchmean', got {config.loss.kd_reduction!r}")
  if config.loss.prediction_distance not in ('l1', 'kl'):
    raise UserError(f"config.loss.prediction_distance must be 'l1' or 'kl', got {config.loss.prediction_distance!r}")
  from ris_jax import evaluation, perturb
  try:
    evaluation.parse_subsets(config.data.get('subsets', ''))
  except ValueError as e:
    raise UserError(f'config.data.subsets: {e}') from None
  unknown = set(config.diagnostics.input_kinds) - set(perturb.INPUT_PERTURBATIONS)
  if unknown or not config.diagnostics.input_kinds:
    raise UserError(f'config.diagnostics.input_kinds={tuple(config.diagnostics.input_kinds)}: give '
                    f"one or more of {', '.join(perturb.INPUT_PERTURBATIONS)}")
  if config.diagnostics.probe_size < 2:
    raise UserError(f'config.diagnostics.probe_size={config.diagnostics.probe_size} must be at least 2')
  if config.generator.upsample_conv not in ('parity', 'plain'):
    raise UserError(f"config.generator.upsample_conv must be 'parity' or 'plain', got "
                    f"{config.generator.upsample_conv!r}")
  if config.mode != 'train_teacher':
    from ris_jax import teacher
    teacher.check_teacher(config)  # the path and arch, without reading the weights
  if config.mode == 'dfkd':
    if config.run_baseline:
      raise UserError("config.run_baseline is for mode 'train'; run the GDFQ distillation as its "
                      "own run (--config.method=gdfq, e.g. configs/dfkd_digits.py:gdfq)")
    from ris_jax.models import ARCHS, get_arch
    if config.dfkd.student_arch not in ARCHS:
      raise UserError(f"config.dfkd.student_arch '{config.dfkd.student_arch}' is unknown; known: "
                      f"{', '.join(sorted(ARCHS))}")
    s, t = get_arch(config.dfkd.student_arch), get_arch(config.teacher.arch)
    if (s.input_shape, s.num_classes) != (t.input_shape, t.num_classes):
      raise UserError(f"config.dfkd.student_arch '{s.name}' takes {s.input_shape} images and "
                      f"{s.num_classes} classes, the teacher '{t.name}' {t.input_shape} and "
                      f"{t.num_classes}; pick a student of the teacher's input and classes")


def gdfq_baseline(config):
  """The same run without the RIS terms: CE + BNS, one-hot labels (GDFQ)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.loss.robust_weight = 0.0
    c.loss.soft_labels = False
    c.loss.diversity_weight = 0.0
    c.run_baseline = False
    c.method = 'gdfq'
  return c


def resolved(config):
  """The config a run of a training mode trains with: `method='gdfq'` switches every RIS term
  off (`gdfq_baseline`), `student.method='ait'` sets AIT's student loss (`ait_student`).
  Other modes: `config` itself."""
  if config.mode in TRAINING_MODES:
    if config.method == 'gdfq':
      config = gdfq_baseline(config)
    if config.student.method == 'ait':
      config = ait_student(config)
  return config


def ait_student(config):
  """AIT's student step (../shared/docs/ait.md) for `student.method='ait'`: KL only (CE weight
  0) and no weight decay; the gradient inflation itself is the student optimizer's
  (`train.student_optimizer`)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.loss.student_ce = False
    c.student.weight_decay = 0.0
  return c


def write_summary(results: dict, workdir: str, student_method: str = 'gdfq') -> None:
  """workdir/summary.{json,md}: teacher, calibrated, GDFQ and RIS top-1 side by side (one table
  per student bit-width); the heading names the student step (`config.student.method`)."""
  ris, gdfq = results['ris'], results['gdfq']
  lines = []
  for tag, r in ris['students'].items():
    g = gdfq['students'][tag]
    rows = [('FP teacher', ris['teacher_top1'], ris['teacher_top1']),
            ('calibrated (before fine-tuning)', r['student_top1_initial'], r['student_top1_initial']),
            ('GDFQ (CE + BNS)', g['student_top1_final'], g['student_top1_best']),
            ('RIS', r['student_top1_final'], r['student_top1_best'])]
    lines += [f"W{r['w_bits']}A{r['a_bits']}, {ris['steps']} iterations, batch {ris['batch_size']}"
              + (f', student step {student_method.upper()}' if student_method != 'gdfq' else ''),
              '', '| method | top-1 final | top-1 best |', '|---|---|---|']
    lines += [f'| {name} | {final:.2f} | {best:.2f} |' for name, final, best in rows] + ['']
  lines += [f"wall time: RIS {ris['wall_s']:.0f} s, GDFQ {gdfq['wall_s']:.0f} s"]
  with open(os.path.join(workdir, 'summary.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(results, f, indent=2)
  print('\n'.join(lines))

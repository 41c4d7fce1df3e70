"""The training program: teacher → RIS iterations → evaluation, metrics, samples, checkpoints.

Writes into the workdir: `config.json`, `metrics.jsonl`, `samples.png`, `checkpoints/`
(orbax; generator, student, optimizer states, activation ranges, RNG, step) and
`results.json`. Rerunning with the same workdir resumes from the latest checkpoint.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from ris_jax import evaluation, teacher, train
from ris_jax.errors import UserError

class TrainingDiverged(UserError):
  """A loss became NaN/Inf; the run stops, keeping the last good checkpoint."""


# Fields that may differ between a run and its resumption.
_RESUMABLE_FIELDS = ('overwrite', 'train.progress', 'run_baseline')


def _flat(config) -> Dict[str, Any]:
  out = {}
  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        walk(v, f'{prefix}{k}.')
      else:
        out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  walk(json.loads(config.to_json()), '')
  return {k: v for k, v in out.items() if k not in _RESUMABLE_FIELDS}


def check_workdir(config, workdir: str) -> None:
  """Refuses a workdir holding a run of a different config (unless `config.overwrite`);
  records the config otherwise."""
  path = os.path.join(workdir, 'config.json')
  if os.path.isfile(path) and not config.overwrite:
    with open(path) as f:
      old = _flat(ml_collections.ConfigDict(json.load(f)))
    new = _flat(config)
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
      shown = ', '.join(f'{k}: {old.get(k)!r} → {new.get(k)!r}' for k in diff[:4])
      raise UserError(f'{workdir} holds a run of another config ({shown}); use a new --workdir, '
                      'or --config.overwrite=True to start it afresh there')
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path, 'w') as f:
      f.write(config.to_json(indent=2))


class MetricsWriter:
  """Appends one JSON object per line to workdir/metrics.jsonl (process 0 only)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.jsonl')

  def write(self, step: int, **values) -> None:
    if jax.process_index() != 0:
      return
    row = {'step': int(step), **{k: (float(v) if not isinstance(v, str) else v)
                                  for k, v in values.items()}}
    with open(self.path, 'a') as f:
      f.write(json.dumps(row) + '\n')


def checkpoint_manager(workdir: str, max_to_keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options)


def restore_latest(manager: ocp.CheckpointManager, state: train.RISState):
  """(state, meta) of the latest complete checkpoint, or (state, None) when there is none."""
  step = manager.latest_step()
  if step is None:
    return state, None
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
  return restored['state'], restored['meta']


def _sample_png(models, state, workdir, dataset, step, seed):
  labels = jnp.repeat(jnp.arange(models.num_classes)[:min(models.num_classes, 10)], 8)
  images = np.asarray(jax.jit(train.generate, static_argnums=0)(
      models, state, labels, jax.random.PRNGKey(seed)))
  evaluation.save_sample_grid(os.path.join(workdir, 'samples.png'), images, np.asarray(labels),
                              dataset, title=f'synthetic images, step {step}')


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) one RIS/GDFQ quantization run; returns the results dict."""
  workdir = os.path.abspath(workdir)
  check_workdir(config, workdir)
  start_time = time.time()
  tc = config.train
  spec, t_module, t_vars = teacher.get_teacher(config)
  mesh = train.make_mesh()
  models, state = train.build(config, spec, t_module, t_vars)
  step_fn = train.jit_ris_step(models, tc.batch_size, mesh)
  t_vars = train.replicate(t_vars, mesh)
  manager = checkpoint_manager(workdir, tc.max_checkpoints)
  state, meta = restore_latest(manager, state)
  state = train.replicate(state, mesh)
  writer = MetricsWriter(workdir)
  acc = lambda: evaluation.accuracy(models.student, train.student_variables(state, t_vars),
                                    config.data.dataset, config.data.split,
                                    config.data.eval_batch_size, config.data.data_dir)
  if meta is None:
    teacher_top1 = evaluation.accuracy(t_module, t_vars, config.data.dataset, config.data.split,
                                       config.data.eval_batch_size, config.data.data_dir)
    meta = {'teacher_top1': teacher_top1, 'student_top1_initial': None,
            'student_top1_best': None, 'wall_s': 0.0}
    writer.write(0, teacher_top1=teacher_top1)
  margins = train.replicate(train.noise_margins(
      models, t_vars, tc.batch_size, spec.input_shape, config.loss.margin_fraction,
      jax.random.PRNGKey(config.seed + 1)), mesh)
  first = int(state.step)
  bar = tqdm(range(first, tc.steps), initial=first, total=tc.steps, dynamic_ncols=True,
             desc=os.path.basename(workdir), disable=not tc.progress or jax.process_index() != 0)
  tick, tick_step = time.time(), first
  for step in bar:
    state, metrics = step_fn(state, t_vars, margins, update_student=step >= tc.warmup_steps,
                             calibrate=step < tc.calibration_steps)
    done = step + 1
    if done == tc.warmup_steps or (tc.warmup_steps == 0 and done == 1):
      meta['student_top1_initial'] = acc()
      writer.write(done, student_top1_initial=meta['student_top1_initial'])
    log_now = done % tc.log_every == 0 or done == tc.steps
    save_now = done % tc.checkpoint_every == 0 or done == tc.steps
    if log_now or save_now:  # never checkpoint a state that a non-finite loss produced
      metrics = jax.device_get(metrics)
      bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
      if bad:
        writer.write(done, event='non_finite', **{k: str(metrics[k]) for k in bad})
        raise TrainingDiverged(
            f'{", ".join(bad)} became non-finite by step {done}; the last good checkpoint is '
            f'step {manager.latest_step()} in {workdir}/checkpoints (lower the learning rates, '
            'or check the teacher weights)')
    if log_now:
      steps_per_s = (done - tick_step) / max(time.time() - tick, 1e-9)
      tick, tick_step = time.time(), done
      writer.write(done, steps_per_s=steps_per_s, **metrics)
      bar.set_postfix(g=f"{metrics['g_loss']:.3f}", s=f"{metrics['s_loss']:.3f}",
                      acc_syn=f"{metrics['s_acc_on_synthetic']:.2f}")
    if done % tc.eval_every == 0 or done == tc.steps:
      top1 = acc()
      if done > tc.warmup_steps:
        meta['student_top1_best'] = max(meta['student_top1_best'] or 0.0, top1)
      writer.write(done, student_top1=top1)
      bar.write(f'step {done}: student top-1 {top1:.2f}% (teacher {meta["teacher_top1"]:.2f}%)')
      if jax.process_index() == 0:
        _sample_png(models, state, workdir, config.data.dataset, done, config.seed)
    if save_now:
      meta['wall_s'] = meta['wall_s'] + time.time() - start_time
      start_time = time.time()
      manager.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                 meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()
  final = acc()
  results = {'teacher_top1': meta['teacher_top1'],
             'student_top1_initial': meta['student_top1_initial'],
             'student_top1_final': final,
             'student_top1_best': max(meta['student_top1_best'] or final, final),
             'w_bits': config.quant.w_bits, 'a_bits': config.quant.a_bits,
             'steps': tc.steps, 'batch_size': tc.batch_size, 'devices': mesh.size,
             'wall_s': round(meta['wall_s'] + time.time() - start_time, 1)}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'results.json'), 'w') as f:
      json.dump(results, f, indent=2)
  return results


def load_student(workdir: str):
  """(spec, quant spec, student variables) of the latest checkpoint of a run's workdir."""
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise UserError(f'{workdir} holds no ris_jax run (no config.json); train one with '
                    'python -m ris_jax.main --config ... --workdir ' + workdir)
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  spec, t_module, t_vars = teacher.get_teacher(config)
  models, state = train.build(config, spec, t_module, t_vars)
  manager = checkpoint_manager(workdir, config.train.max_checkpoints)
  state, meta = restore_latest(manager, state)
  if meta is None:
    raise UserError(f'{workdir}/checkpoints holds no complete checkpoint to export')
  return spec, train.quant_spec(config), train.student_variables(state, t_vars)

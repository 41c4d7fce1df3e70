"""The training program: teacher → RIS iterations → evaluation, metrics, samples, checkpoints.

Writes into the workdir: `config.json`, `metrics.jsonl`, `samples.png`, `checkpoints/`
(orbax; generator, student, optimizer states, activation ranges, RNG, step) and
`results.json`. Rerunning with the same workdir resumes from the latest checkpoint.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from tqdm import tqdm

from ris_jax import distributed, evaluation, teacher, train
from ris_jax.errors import Terminated, UserError

class TrainingDiverged(UserError):
  """A loss became NaN/Inf; the run stops, keeping the last good checkpoint."""


# Fields that may differ between a run and its resumption (and between its processes).
_RESUMABLE_FIELDS = ('overwrite', 'train.progress', 'run_baseline', 'distributed')
_LAUNCH_SECTION = 'cluster.'  # how the processes find each other
# The diagnostics only add fields to metrics.jsonl rows (their own probe, their own seed): a run
# resumes with them switched on or off or changed, and a run recorded before they existed too.
_DIAGNOSTICS_SECTION = 'diagnostics.'
# Fields added after runs were recorded: the value a config.json without them ran with.
_ADDED_FIELDS = {'quant.bits': '', 'generator.upsample_conv': 'plain', 'data.subsets': '',
                 'student.method': 'gdfq', 'student.gi_threshold': 1e-3,
                 'student.gi_cap_updates': 200, 'student.gi_search_iters': 5,
                 'student.gi_max_doublings': 60}
# Config sections read only in the mode of the same name.
_MODE_SECTIONS = ('ptq', 'dfkd')


def _flat(config) -> Dict[str, Any]:
  out = {}
  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        walk(v, f'{prefix}{k}.')
      else:
        out[f'{prefix}{k}'] = list(v) if isinstance(v, tuple) else v
  walk(json.loads(config.to_json()), '')
  # The sections of the other modes do not make a run another config (nor do they exist in
  # config.json files written before those sections were added).
  unused = (tuple(f'{m}.' for m in _MODE_SECTIONS if m != out.get('mode'))
            + (_LAUNCH_SECTION, _DIAGNOSTICS_SECTION))
  return {k: v for k, v in out.items() if k not in _RESUMABLE_FIELDS and not k.startswith(unused)}


# What a run writes into its workdir; `overwrite` removes exactly these (nothing else).
_RUN_FILES = ('config.json', 'metrics.jsonl', 'results.json', 'samples.png')
_RUN_DIRS = ('checkpoints',)


def write_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` via a temporary file and a rename: a kill leaves the old file or
  the new one, never a truncated one."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def _config_diff(config, workdir: str):
  """Fields (with old → new values) in which `config` differs from the run recorded in
  `workdir/config.json`; [] when there is none or it is the same config."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f'--workdir {workdir} is a file, not a directory; give a directory')
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    return []
  try:
    with open(path) as f:
      old = {**_ADDED_FIELDS, **_flat(ml_collections.ConfigDict(json.load(f)))}
  except (ValueError, TypeError, AttributeError) as e:
    return [f'config.json: unreadable ({type(e).__name__})']
  new = _flat(config)
  diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  return [f'{k}: {old.get(k)!r} → {new.get(k)!r}' for k in diff]


def refuse_other_run(config, workdir: str) -> None:
  """Raises a `UserError` if `workdir` holds a run of a different config and
  `config.overwrite` is off. No side effects: main calls it for every run before any compute."""
  diff = _config_diff(config, os.path.abspath(workdir))
  if diff and not config.overwrite:
    raise UserError(f'{workdir} holds a run of another config ({", ".join(diff[:4])}); use a new '
                    '--workdir, or --config.overwrite=True to delete that run and start afresh there')


def _clear_run(workdir: str) -> None:
  """Deletes what a run wrote into `workdir` (`_RUN_FILES`, `_RUN_DIRS`) and nothing else."""
  for name in _RUN_DIRS:
    path = os.path.join(workdir, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
  for name in _RUN_FILES:
    path = os.path.join(workdir, name)
    if os.path.isfile(path) or os.path.islink(path):
      os.remove(path)


def check_workdir(config, workdir: str) -> None:
  """Refuses a workdir holding a run of a different config (unless `config.overwrite`, which
  deletes that run's checkpoints, metrics, samples and results so the new run starts
  afresh); records the config otherwise. A workdir holding a run of the *same* config is
  resumed, with or without `overwrite` (so a killed `overwrite` run resumes when rerun)."""
  refuse_other_run(config, workdir)
  if jax.process_index() == 0:
    if _config_diff(config, workdir):
      _clear_run(workdir)
    os.makedirs(workdir, exist_ok=True)
    write_atomic(os.path.join(workdir, 'config.json'), config.to_json(indent=2))
  distributed.barrier('ris_jax.check_workdir')


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

  def truncate(self, step: int) -> None:
    """Keeps the rows of steps ≤ `step` (those of the checkpoint a run resumes from) and drops
    later rows, written after that checkpoint by a run that was killed, and torn lines."""
    if jax.process_index() != 0 or not os.path.isfile(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          row = json.loads(line)
        except ValueError:
          continue
        if isinstance(row, dict) and isinstance(row.get('step'), int) and row['step'] <= step:
          kept.append(line if line.endswith('\n') else line + '\n')
    write_atomic(self.path, ''.join(kept))


def checkpoint_manager(workdir: str, max_to_keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """Synchronous orbax manager of `workdir/checkpoints`. A save goes to
  `<step>.orbax-checkpoint-tmp` and is renamed to `<step>` when complete, so a killed save is
  never listed; training (not `read_only`) also deletes such leftovers when it starts."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=None if read_only else max_to_keep, save_interval_steps=0 if read_only else 1,
      create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options)


def restore_latest(manager: ocp.CheckpointManager, state: train.RISState, step: Optional[int] = None):
  """(state, meta) of the latest complete checkpoint (or of `step`), or (state, None) when there
  is none."""
  if step is not None and step not in manager.all_steps():
    raise UserError(f'{manager.directory} holds no checkpoint of step {step} (it holds '
                    f"{', '.join(map(str, manager.all_steps())) or 'none'})")
  step = manager.latest_step() if step is None else step
  if step is None:
    return state, None
  # Restored replicated onto the global mesh, whatever mesh or process count saved it.
  sharding = distributed.replicated()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          state)
  failure, stderr = None, sys.stderr
  sys.stderr = captured = io.StringIO()
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    if not isinstance(restored['meta'], dict):
      raise ValueError('no run metadata')
  except Exception as e:  # a damaged checkpoint raises nearly anything (ValueError, KeyError, …)
    failure = e
    # Reads still in flight finish into orbax's closed event loop, each printing a traceback
    # ("Event loop is closed"): let them land in the captured stderr, then drop it.
    time.sleep(1.0)
  finally:
    sys.stderr = stderr
  if failure is None:
    sys.stderr.write(captured.getvalue())
  else:
    reason = ' '.join(str(failure).split())
    reason = re.split(r' (?:in OCDBT database|at local file|\[source locations)', reason)[0]
    reason = f'{type(failure).__name__}: {reason[:200]}'
    older = [s for s in manager.all_steps() if s < step]
    fix = (f'delete that directory to fall back to step {max(older)}' if older else
           f'delete {manager.directory} (or use a new --workdir) to start afresh')
    raise UserError(f'checkpoint {manager.directory / str(step)} is damaged or incompatible '
                    f'({reason}); {fix}')
  return restored['state'], restored['meta']


def _sample_png(models, state, workdir, normalization, step, seed):
  """Every process generates the grid (the same program on all); process 0 writes it."""
  labels = jnp.repeat(jnp.arange(models.num_classes)[:min(models.num_classes, 10)], 8)
  images = distributed.to_host(jax.jit(train.generate, static_argnums=0)(
      models, state, distributed.replicate(labels), distributed.replicate(jax.random.PRNGKey(seed))))
  if not distributed.is_primary():
    return
  tmp = os.path.join(workdir, f'.samples.tmp{os.getpid()}.png')  # written whole, then renamed
  evaluation.save_sample_grid(tmp, images, np.asarray(labels), normalization,
                              title=f'synthetic images, step {step}')
  os.replace(tmp, os.path.join(workdir, 'samples.png'))


@jax.jit
def _finite_fields(state: train.RISState) -> Dict[str, jax.Array]:
  """{field of the state: whether all its floating-point leaves are finite}."""
  out = {}
  for name in ('generator', 'generator_opt', 'student', 'student_opt', 'quant_ranges'):
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(getattr(state, name))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    out[name] = jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
  return out


def _first_non_finite(pending):
  """(step, metrics) of the first of `pending` [(step, metrics)] with a non-finite loss."""
  for step, metrics in jax.device_get(pending):
    if not all(np.isfinite(v) for v in metrics.values()):
      return step, metrics
  return None, None


@contextlib.contextmanager
def sigterm_caught():
  """Yields a list that SIGTERM appends to instead of ending the process (in the main thread;
  elsewhere signals cannot be caught and the list stays empty); the previous handler after."""
  caught = []
  if threading.current_thread() is not threading.main_thread():
    yield caught
    return
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: caught.append(signum))
  try:
    yield caught
  finally:
    signal.signal(signal.SIGTERM, previous)


def train_and_evaluate(config, workdir: str, deadline: Optional[float] = None,
                       max_iterations: Optional[int] = None) -> Dict[str, Any]:
  """Runs (or resumes) one RIS/GDFQ run: quantization-aware fine-tuning (mode 'train') or
  data-free distillation into a full-precision student (mode 'dfkd'); returns the results.

  `deadline` (a `time.time()` value) or `max_iterations` (iterations in this call): stop early,
  with a checkpoint, and return {'stopped_at': step, 'steps', 'students': {tag: {'': top-1,
  subset: …}}, 'wall_s'} instead (the same call resumes). The deadline stop is taken when the
  next iterations, a save and an evaluation (as long as the last ones took) would no longer fit;
  with several processes, process 0's clock decides.

  SIGTERM (SLURM's and Kubernetes' notice before they kill a job) does not end the process
  mid-step: the loop saves a checkpoint at its next check — every iteration with one process,
  every `log_every` with several, where any process's signal stops them all — and raises
  `Terminated`; the same command resumes the run."""
  workdir = os.path.abspath(workdir)
  refuse_other_run(config, workdir)
  start_time = time.time()
  tc = config.train
  spec, t_module, t_vars = teacher.get_teacher(config)  # a bad teacher fails before overwrite
  check_workdir(config, workdir)
  mesh = train.make_mesh()
  models, state = train.build(config, spec, t_module, t_vars)
  step_fn = train.jit_ris_step(models, tc.batch_size, mesh)
  t_vars = train.replicate(t_vars, mesh)
  manager = checkpoint_manager(workdir, tc.max_checkpoints)
  state, meta = restore_latest(manager, state)
  state = train.replicate(state, mesh)
  writer = MetricsWriter(workdir)
  # Rows a killed run wrote after its last checkpoint are written again by this run.
  writer.truncate(-1 if meta is None else int(state.step))
  if meta is not None and jax.process_index() == 0:
    print(f'{workdir}: resuming from the checkpoint of step {int(state.step)}', flush=True)
  tags = models.tags
  name = lambda metric, tag: train.metric_name(metric, tag, tags)
  diagnose = _diagnostics(config, models, spec, t_vars)

  def accuracies() -> Dict[str, Dict[str, float]]:
    """{tag: {'': top-1 of that student on the evaluation split, subset: on that subset}}."""
    return {tag: evaluation.split_accuracies(
        config, spec, models.student_module(tag),
        train.student_variables(state, t_vars, models.student_kind, tag)) for tag in tags}

  def top1_row(metric: str, top1: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """{metric[_subset][/tag]: value} of `accuracies()` for metrics.jsonl."""
    return {name(evaluation.subset_key(metric, sub), tag): v for tag in tags for sub, v in top1[tag].items()}

  if meta is None:
    teacher_top1 = evaluation.split_accuracies(config, spec, t_module, t_vars)
    meta = {'teacher_top1': teacher_top1[''], 'wall_s': 0.0,
            'teacher_top1_subsets': {k: v for k, v in teacher_top1.items() if k},
            'students': {tag: {'student_top1_initial': None, 'student_top1_best': None}
                         for tag in tags}}
    writer.write(0, **{evaluation.subset_key('teacher_top1', k): v for k, v in teacher_top1.items()},
                 **diagnose(state))
  margins = train.replicate(train.noise_margins(
      models, t_vars, tc.batch_size, spec.input_shape, config.loss.margin_fraction,
      jax.random.PRNGKey(config.seed + 1)), mesh)
  first = int(state.step)
  bar = tqdm(range(first, tc.steps), initial=first, total=tc.steps, dynamic_ncols=True,
             desc=os.path.basename(workdir), disable=not tc.progress or jax.process_index() != 0)
  tick, tick_step = time.time(), first
  pending = []  # (step, metrics on device) since the last finiteness check
  took = {'save': 0.0, 'eval': 0.0}  # seconds of the last checkpoint save and evaluation
  loop_start, stopped = time.time(), False
  evaluated = (None, None)  # (step, top-1) of the latest evaluation
  # Deadline and SIGTERM are checked every step in one process; with several, only at log steps:
  # each check is then a collective, which would make every step wait for the slowest process.
  multiprocess = jax.process_count() > 1
  check_every = tc.log_every if multiprocess else 1
  terminated = False
  with sigterm_caught() as caught:
    for step in bar:
      state, metrics = step_fn(state, t_vars, margins, update_student=step >= tc.warmup_steps,
                               calibrate=step < tc.calibration_steps)
      done = step + 1
      pending.append((done, metrics))
      if done == tc.warmup_steps or (tc.warmup_steps == 0 and done == 1):
        top1 = accuracies()
        evaluated = (done, top1)
        for tag in tags:
          meta['students'][tag].update(
              {evaluation.subset_key('student_top1_initial', sub): v for sub, v in top1[tag].items()})
        writer.write(done, **top1_row('student_top1_initial', top1))
      log_now = done % tc.log_every == 0 or done == tc.steps
      stopped = done < tc.steps and max_iterations is not None and done - first >= max_iterations
      if done < tc.steps and done % check_every == 0 and (deadline is not None or multiprocess
                                                          or caught):
        # Stop if the next check would come after the deadline (with a save and an evaluation).
        late = deadline is not None and time.time() + (check_every + 1) * (
            time.time() - loop_start) / (done - first) + took['save'] + took['eval'] > deadline
        # every process takes process 0's deadline decision (their clocks differ) and stops if
        # any process was sent SIGTERM
        votes = distributed.gather(np.array([late, bool(caught)]))
        late, terminated = bool(votes[0, 0]), bool(votes[:, 1].any())
        stopped = stopped or late or terminated
      save_now = done % tc.checkpoint_every == 0 or done == tc.steps or stopped
      if log_now or save_now:  # never checkpoint a state that a non-finite loss produced
        bad_step, bad_metrics = _first_non_finite(pending)
        pending = []
        metrics = jax.device_get(metrics)
        if bad_step is not None:
          bad = sorted(k for k, v in bad_metrics.items() if not np.isfinite(v))
          writer.write(bad_step, event='non_finite',
                       **{k: (float(v) if np.isfinite(v) else str(v)) for k, v in bad_metrics.items()})
          _diverged(f'{", ".join(bad)} became non-finite at step {bad_step}', manager, workdir)
        if save_now:
          bad = sorted(k for k, ok in jax.device_get(_finite_fields(state)).items() if not ok)
          if bad:
            writer.write(done, event='non_finite_state', fields=', '.join(bad))
            _diverged(f'the training state ({", ".join(bad)}) became non-finite by step {done}',
                      manager, workdir)
      if log_now:
        steps_per_s = (done - tick_step) / max(time.time() - tick, 1e-9)
        tick, tick_step = time.time(), done
        writer.write(done, steps_per_s=steps_per_s, **metrics)
        bar.set_postfix(g=f"{metrics['g_loss']:.3f}",
                        **{name('s', tag): f"{metrics[name('s_loss', tag)]:.3f}" for tag in tags})
      if done % tc.eval_every == 0 or done == tc.steps:
        eval_start = time.time()
        top1 = accuracies()
        evaluated = (done, top1)
        for tag in tags:
          if done > tc.warmup_steps:
            entry = meta['students'][tag]
            for sub, v in top1[tag].items():
              key = evaluation.subset_key('student_top1_best', sub)
              entry[key] = max(entry.get(key) or 0.0, v)
        writer.write(done, **top1_row('student_top1', top1), **diagnose(state))
        if distributed.is_primary():
          bar.write(f'step {done}: student top-1 ' + ', '.join(
              f"{tag} {top1[tag]['']:.2f}%" for tag in tags) + f' (teacher {meta["teacher_top1"]:.2f}%)')
        _sample_png(models, state, workdir, spec.normalization, done, config.seed)
        took['eval'] = time.time() - eval_start
      if save_now:
        meta['wall_s'] = meta['wall_s'] + time.time() - start_time
        start_time = time.time()
        manager.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(meta)))
        took['save'] = time.time() - start_time
      if stopped:
        break
    manager.wait_until_finished()
  if stopped:
    bar.close()
    if terminated:
      raise Terminated(f'SIGTERM: {workdir} saved the checkpoint of step {done} (of {tc.steps}) '
                       'and stopped; rerun the same command to resume')
    return {'stopped_at': done, 'steps': tc.steps,
            'students': evaluated[1] if evaluated[0] == done else accuracies(),
            'wall_s': round(meta['wall_s'] + time.time() - start_time, 1)}
  final = accuracies()
  bits = dict(zip(tags, train.bit_widths(config)))
  students = {}
  for tag in tags:
    entry = meta['students'][tag]
    w, a = bits.get(tag, (config.quant.w_bits, config.quant.a_bits))
    students[tag] = {'w_bits': w, 'a_bits': a}
    for sub, v in final[tag].items():
      key = lambda metric: evaluation.subset_key(metric, sub)
      # best: the best of the evaluations after warm-up, this final one included
      students[tag].update({key('student_top1_initial'): entry.get(key('student_top1_initial')),
                            key('student_top1_final'): v,
                            key('student_top1_best'): max(entry.get(key('student_top1_best')) or v, v)})
  results = {'teacher_top1': meta['teacher_top1'], 'students': students,
             **{evaluation.subset_key('teacher_top1', k): v
                for k, v in meta.get('teacher_top1_subsets', {}).items()},
             'steps': tc.steps, 'batch_size': tc.batch_size, 'devices': mesh.size,
             'wall_s': round(meta['wall_s'] + time.time() - start_time, 1)}
  if len(tags) == 1:  # a single student's figures also at the top level
    results.update(students[tags[0]])
  if config.mode == 'dfkd':
    results.update(mode='dfkd', method=config.method, student_arch=config.dfkd.student_arch)
  if jax.process_index() == 0:
    write_atomic(os.path.join(workdir, 'results.json'), json.dumps(results, indent=2))
  return results


def _diagnostics(config, models, spec, teacher_vars):
  """`diagnose(state)` → {diag_*: float} of the run's generator on the probe batch
  (ris_jax/diagnostics.py); {} when `config.diagnostics.enabled` is off."""
  if not config.diagnostics.get('enabled', False):
    return lambda state: {}
  from ris_jax import diagnostics
  probe_spec = diagnostics.ProbeSpec.from_config(config)
  probe = distributed.replicate(diagnostics.make_probe(probe_spec, models, teacher_vars['params'],
                                                       spec.input_shape))
  fn = diagnostics.jit_probe_diagnostics(models, probe_spec)
  return lambda state: {k: float(v) for k, v in
                        distributed.to_host(fn(state.generator, teacher_vars, probe)).items()}


def _diverged(what: str, manager: ocp.CheckpointManager, workdir: str):
  last = manager.latest_step()
  kept = (f'the last good checkpoint, step {last}, is kept in {workdir}/checkpoints' if last
          is not None else 'no checkpoint was written')
  raise TrainingDiverged(f'{what}; {kept} (lower the learning rates, or check the teacher '
                         'weights)')


def student_tags(workdir: str):
  """The bit-width tags of the quantized students of the run in `workdir` (from config.json)."""
  return tuple(train.quant_specs(run_config(workdir)))


def run_config(workdir: str):
  """The config of the run in `workdir` (its config.json), checked for the fields export needs."""
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise UserError(f'{workdir} holds no ris_jax run (no config.json); train one with '
                    'python -m ris_jax.main --config ... --workdir ' + workdir)
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
    _ = (config.train.max_checkpoints, config.teacher.arch, config.quant.w_bits)
  except (ValueError, TypeError, AttributeError, KeyError) as e:
    raise UserError(f'{path} is not a ris_jax run config ({type(e).__name__}); it is damaged: '
                    'retrain with python -m ris_jax.main ... --workdir ' + workdir) from None
  return config


def load_student(workdir: str, bits: Optional[str] = None):
  """(spec, quant spec, student variables) of student `bits` ('w4a4'; default: the only one)
  of the latest checkpoint of a run's workdir."""
  workdir = os.path.abspath(workdir)
  config = run_config(workdir)
  tags = tuple(train.quant_specs(config))
  if bits is None and len(tags) > 1:
    raise UserError(f"{workdir} holds several students ({', '.join(tags)}); choose one with "
                    f'--bits {tags[0]} (or export all: omit --bits with the export CLI)')
  if bits is not None and bits not in tags:
    raise UserError(f"{workdir} holds no student '{bits}' (students: {', '.join(tags)})")
  tag = bits or tags[0]
  if config.get('mode') == 'dfkd':
    raise UserError(f'{workdir} holds a data-free distillation run (full-precision '
                    f"'{config.dfkd.student_arch}' student); export takes quantized students only")
  checkpoints = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(checkpoints):
    raise UserError(f'{checkpoints} is missing, so the run in {workdir} has no student to '
                    'export; rerun its training (same --config and --workdir) to write one')
  spec, t_module, t_vars = teacher.get_teacher(config)
  models, state = train.build(config, spec, t_module, t_vars)
  manager = checkpoint_manager(workdir, config.train.max_checkpoints, read_only=True)
  state, meta = restore_latest(manager, state)
  if meta is None:
    raise UserError(f'{checkpoints} holds no complete checkpoint to export (training was stopped '
                    'before its first one); rerun its training (same --config and --workdir)')
  return spec, train.quant_specs(config)[tag], train.student_variables(state, t_vars, tag=tag)

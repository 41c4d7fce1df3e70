"""Post-training quantization without fine-tuning (config.mode 'ptq').

The teacher's weights are quantized as they are (per output channel, `quant.WeightQuantizer`)
and its activation ranges are calibrated (`student.calibrate`, EMA of batch min/max) on
images from `config.ptq.source`:

  * `noise`:              N(0, 1) images in the teacher's normalized input space;
  * `generator:<workdir>`: a trained generator (the latest checkpoint of a `train` or `dfkd`
                           run of the same teacher), labels uniform, soft labels as it trained;
  * `npz:<path>`:          images in a NumPy archive (uint8 pixels, e.g. a calibration set made
                           once by `python -m ris_jax.synthesize`), normalized with the
                           teacher's statistics;
  * `real`:               the real training split (a reference, not data-free).

Optionally (`config.ptq.clip_weights`) each kernel is then clipped, greedily layer by layer in
forward order, to α·[min, max] of its output channel (α from `config.ptq.clip_grid`), keeping
the α that lowers the MSE between the quantized network's logits and the FP teacher's logits
on the first `clip_batches` calibration batches (network-output MSE, with the calibrated
activation ranges frozen). Because the weight quantizer's range is the per-channel min/max,
clipping the FP weights is exactly a clipped quantizer range. A layer keeps α = 1 unless a
candidate is strictly better, so the output MSE never rises above that of the unclipped
network. Writes workdir/config.json and workdir/results.json.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ris_jax import data, distributed, evaluation, quant, student, teacher, train
from ris_jax.config import TRAINING_MODES
from ris_jax.errors import UserError

GENERATOR_PREFIX = 'generator:'


def check_source(config) -> None:
  """Cheap checks of `config.ptq` before any compute."""
  p = config.ptq
  source = p.source
  if source.startswith(GENERATOR_PREFIX):
    workdir = os.path.expanduser(source[len(GENERATOR_PREFIX):])
    if not os.path.isfile(os.path.join(workdir, 'config.json')):
      raise UserError(f"config.ptq.source={source}: {workdir} holds no ris_jax run (no "
                      'config.json); train a generator first (mode train or dfkd)')
  elif source.startswith(data.NPZ_PREFIX):
    path = os.path.expanduser(source[len(data.NPZ_PREFIX):])
    if not os.path.isfile(path):
      raise UserError(f'config.ptq.source={source}: {path} does not exist; make a calibration set '
                      'with python -m ris_jax.synthesize --workdir RUN --num N --out ' + path)
  elif source not in ('noise', 'real'):
    raise UserError(f"config.ptq.source={source!r} is not one of noise, real, "
                    'generator:<workdir of a run>, npz:<path of images>')
  for name in ('batch_size', 'calibration_batches', 'clip_batches'):
    if p[name] < 1:
      raise UserError(f'config.ptq.{name}={p[name]} must be at least 1')
  if p.clip_weights and (not p.clip_grid or not all(0 < a <= 1 for a in p.clip_grid)):
    raise UserError(f'config.ptq.clip_grid={tuple(p.clip_grid)} must hold factors in (0, 1]')


def load_generator(workdir: str, step: Optional[int] = None):
  """(Models, RISState) of the latest checkpoint (or of `step`) of a training run (mode train
  or dfkd): its generator is `state.generator`, sampled with `train.generate(models, state, ...)`."""
  from ris_jax import loop
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = loop.run_config(workdir)
  if config.get('mode', 'train') not in TRAINING_MODES:
    raise UserError(f"{workdir} holds a run of mode '{config.mode}', which trains no generator; "
                    f"give the workdir of a run of mode {' or '.join(TRAINING_MODES)}")
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise UserError(f'{workdir}/checkpoints is missing, so the run has no trained generator; '
                    'rerun its training (same --config and --workdir)')
  spec, t_module, t_vars = teacher.get_teacher(config)
  models, state = train.build(config, spec, t_module, t_vars)
  manager = loop.checkpoint_manager(workdir, config.train.max_checkpoints, read_only=True)
  state, meta = loop.restore_latest(manager, state, step)
  if meta is None:
    raise UserError(f'{workdir}/checkpoints holds no complete checkpoint, so there is no trained '
                    'generator; rerun its training (same --config and --workdir)')
  return models, state


def calibration_images(config, spec) -> Iterator[jax.Array]:
  """`config.ptq.calibration_batches` batches (B, H, W, C) from `config.ptq.source`, seeded by
  `config.seed`."""
  p = config.ptq
  key = jax.random.PRNGKey(config.seed)
  shape = (p.batch_size,) + tuple(spec.input_shape)
  if p.source == 'noise':
    for i in range(p.calibration_batches):
      yield jax.random.normal(jax.random.fold_in(key, i), shape)
  elif p.source == 'real' or p.source.startswith(data.NPZ_PREFIX):
    dataset, split = ((config.data.dataset, 'train') if p.source == 'real'
                      else (p.source, data.NPZ_SPLIT))
    images = data.load_arrays(dataset, split, config.data.data_dir, spec.normalization)['image']
    data.check_image_size(images, spec.input_shape[:2], f"teacher '{spec.name}'")
    rng = np.random.RandomState(config.seed)
    for _ in range(p.calibration_batches):
      yield jnp.asarray(images[rng.randint(0, len(images), p.batch_size)])
  else:
    models, state = load_generator(p.source[len(GENERATOR_PREFIX):])
    if models.generator.image_size != spec.image_size or models.num_classes != spec.num_classes:
      raise UserError(f'config.ptq.source={p.source}: that generator was trained for another '
                      'teacher (image size or classes differ)')
    generate = jax.jit(lambda k: train.generate(
        models, state, jax.random.randint(jax.random.fold_in(k, 1), (p.batch_size,), 0,
                                          models.num_classes), k))
    for i in range(p.calibration_batches):
      yield generate(jax.random.fold_in(key, i))


def clip_kernel(kernel: jax.Array, alpha) -> jax.Array:
  """The kernel clipped per output channel (last axis) to α·[min, max] of that channel."""
  lo, hi = quant.channel_range(kernel)
  return jnp.clip(kernel, alpha * lo, alpha * hi)


def kernel_paths(module, variables, image) -> List[Tuple[str, ...]]:
  """Paths of every conv/dense kernel in forward order (the order in which their modules
  return during `module.apply` on `image`; parameter dicts themselves come back key-sorted)."""
  _, state = module.apply(variables, image, capture_intermediates=True, mutable=['intermediates'])
  order = {path[:-1]: i for i, path in enumerate(traverse_util.flatten_dict(state['intermediates']))}
  paths = [p for p in traverse_util.flatten_dict(variables['params']) if p[-1] == 'kernel']
  return sorted(paths, key=lambda p: order[p[:-1]])


def output_mse(module, variables, images, reference) -> jax.Array:
  """Mean squared difference between `module`'s logits and `reference` (the FP teacher's)."""
  return jnp.mean((module.apply(variables, images) - reference) ** 2)


def clip_weights(module, variables: Dict[str, Any], images, reference,
                 grid: Sequence[float]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Greedy per-layer weight clipping (module docstring). Returns (variables with clipped
  kernels, {'alphas': {layer: α}, 'mse_before', 'mse_after'}). A layer keeps α = 1 unless an α
  of `grid` gives a strictly lower output MSE, given the layers already chosen."""
  mse_fn = jax.jit(lambda v, x, r: output_mse(module, v, x, r))
  mse = lambda v: mse_fn(v, images, reference)
  flat = traverse_util.flatten_dict(variables['params'])
  original = dict(flat)
  with_params = lambda f: {**variables, 'params': traverse_util.unflatten_dict(f)}
  best = before = float(mse(with_params(flat)))
  alphas = {}
  for path in kernel_paths(module, variables, images[:1]):
    chosen = 1.0
    for alpha in grid:
      if alpha == 1.0:
        continue
      trial = {**flat, path: clip_kernel(original[path], alpha)}
      value = float(mse(with_params(trial)))
      if value < best:
        best, chosen = value, float(alpha)
    if chosen != 1.0:
      flat[path] = clip_kernel(original[path], chosen)
    alphas['/'.join(path[:-1])] = chosen
  return with_params(flat), {'alphas': alphas, 'mse_before': before, 'mse_after': best}


def run(config, workdir: str) -> Dict[str, Any]:
  """PTQ of the teacher at config.quant's bit-widths with `config.ptq`; writes and returns
  workdir/results.json (top-1 calibrated, and after weight clipping)."""
  from ris_jax import loop
  workdir = os.path.abspath(workdir)
  loop.refuse_other_run(config, workdir)
  start = time.time()
  spec, t_module, t_vars = teacher.get_teacher(config)
  loop.check_workdir(config, workdir)
  def acc(name: str, m, v) -> Dict[str, float]:
    """{name: top-1 on the split, name_<subset>: on each of config.data.subsets}."""
    return {evaluation.subset_key(name, k): top1
            for k, top1 in evaluation.split_accuracies(config, spec, m, v).items()}
  module, variables = student.make_student(spec, t_vars, train.quant_spec(config))
  batches = [distributed.replicate(b) for b in calibration_images(config, spec)]
  variables = student.calibrate(module, variables, batches)
  p = config.ptq
  d = config.data
  correct, examples = evaluation.correct_and_total(t_module, t_vars, d.dataset, d.split,
                                                   d.eval_batch_size, d.data_dir,
                                                   spec.normalization)
  results = {'teacher_top1': 100.0 * correct / examples, 'eval_examples': examples,
             'source': p.source,
             'w_bits': config.quant.w_bits, 'a_bits': config.quant.a_bits, 'seed': config.seed,
             'calibration_images': p.batch_size * p.calibration_batches,
             **acc('top1_calibrated', module, variables)}
  if p.clip_weights:
    held = jnp.concatenate(batches[:p.clip_batches])
    variables, info = clip_weights(module, variables, held, t_module.apply(t_vars, held),
                                   tuple(p.clip_grid))
    results.update(**acc('top1_clipped', module, variables), **info)
  results['wall_s'] = round(time.time() - start, 1)
  if jax.process_index() == 0:
    loop.write_atomic(os.path.join(workdir, 'results.json'), json.dumps(results, indent=2))
  return results

"""Training a full-precision teacher on an in-memory dataset (the offline digits teacher).

The result is saved as a converted-model directory (`convert.save_variables`), the same
format as `python -m ris_jax.convert` writes for PyTorch teachers, so the RIS pipeline loads
both the same way.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from ris_jax import convert, data, distributed, evaluation, losses
from ris_jax.errors import UserError
from ris_jax.models import get_arch


def random_translate(rng: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
  """Shifts each image (N, H, W, C) by an integer offset in [−max_shift, max_shift]², zero fill."""
  if max_shift <= 0:
    return images
  n, h, w, _ = images.shape
  pad = jnp.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  offsets = jax.random.randint(rng, (n, 2), 0, 2 * max_shift + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(pad, offsets)


def train_teacher(config, out_dir: str) -> Dict[str, Any]:
  """Trains `config.teacher.arch` on `config.data.dataset` (train split) with SGD + cosine
  schedule and random translations; saves it as a converted-model directory `out_dir`
  (with `teacher_results.json`); returns the results."""
  spec = get_arch(config.teacher.arch)
  tc = config.teacher_training
  arrays = data.load_arrays(config.data.dataset, 'train', config.data.get('data_dir'),
                            spec.normalization)
  n = len(arrays['label'])
  steps_per_epoch = n // tc.batch_size
  total_steps = tc.epochs * steps_per_epoch
  module = spec.module()
  rng = jax.random.key(tc.seed)
  variables = module.init(rng, jnp.zeros((1,) + spec.input_shape), train=False)
  params, batch_stats = variables['params'], variables['batch_stats']
  schedule = optax.cosine_decay_schedule(tc.learning_rate, total_steps)
  tx = optax.chain(optax.add_decayed_weights(tc.weight_decay),
                   optax.sgd(schedule, momentum=0.9, nesterov=True))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, batch_stats, opt_state, images, labels, rng):
    images = random_translate(rng, images, tc.max_shift)

    def loss_fn(p):
      logits, updates = module.apply({'params': p, 'batch_stats': batch_stats}, images,
                                     train=True, mutable=['batch_stats'])
      return losses.cross_entropy(logits, labels), updates['batch_stats']
    (loss, new_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_bs, opt_state, loss

  start = time.time()
  np_rng = np.random.RandomState(tc.seed)
  bar = tqdm(range(total_steps), desc='teacher', dynamic_ncols=True,
             disable=not distributed.is_primary())  # one bar, process 0's
  for i in bar:
    if i % steps_per_epoch == 0:
      order = np_rng.permutation(n)
    sel = order[(i % steps_per_epoch) * tc.batch_size:(i % steps_per_epoch + 1) * tc.batch_size]
    params, batch_stats, opt_state, loss = step(
        params, batch_stats, opt_state, arrays['image'][sel], arrays['label'][sel],
        jax.random.fold_in(rng, i))
    if i % 20 == 0:
      bar.set_postfix(loss=f'{float(loss):.3f}')
  # Every process trained the same teacher; process 0's copy is the one (hosts may round
  # differently), and only process 0 writes it.
  variables = distributed.broadcast(jax.device_get({'params': params, 'batch_stats': batch_stats}))
  result = {'arch': spec.name, 'dataset': config.data.dataset,
            'test_top1': evaluation.accuracy(module, variables, config.data.dataset, 'test',
                                             data_dir=config.data.get('data_dir'),
                                             normalization=spec.normalization),
            'steps': total_steps, 'wall_s': round(time.time() - start, 1)}
  if distributed.is_primary():
    convert.save_variables(out_dir, spec.name, variables, only_this_process=True)
    with open(os.path.join(out_dir, 'teacher_results.json'), 'w') as f:
      json.dump(result, f, indent=2)
  distributed.barrier('ris_jax.train_teacher.saved')
  return result


TRAINABLE_OFFLINE = ('digits', 'fashion_mnist')


def _missing_teacher_error(spec) -> UserError:
  return UserError(f'config.teacher.checkpoint is empty: give the PyTorch state dict of the '
                   f"pretrained '{spec.name}' (--config.teacher.checkpoint=/path/to/weights.pth) "
                   'or a directory written by python -m ris_jax.convert')


def check_teacher(config) -> None:
  """Cheap checks (no weights read) that `config.teacher` names a teacher that can load:
  a known arch, an existing checkpoint path, and a converted directory of that arch."""
  spec = convert.spec_or_error(config.teacher.arch)
  path = os.path.expanduser(config.teacher.checkpoint or '')
  if not path:
    if config.data.dataset not in TRAINABLE_OFFLINE:
      raise _missing_teacher_error(spec)
    return
  if not os.path.exists(path):
    raise UserError(f'config.teacher.checkpoint={path} does not exist; give the path of the '
                    f"pretrained '{spec.name}' (a PyTorch state dict, or a directory written by "
                    'python -m ris_jax.convert)')
  if os.path.isdir(path):
    meta = os.path.join(path, 'arch.json')
    if not os.path.isfile(meta) or not os.path.isdir(os.path.join(path, 'variables')):
      raise UserError(f'config.teacher.checkpoint={path} is a directory but not a converted '
                      'ris_jax model (expected arch.json and variables/); give a PyTorch state '
                      'dict, or convert one with python -m ris_jax.convert')
    try:
      with open(meta) as f:
        saved = json.load(f)['arch']
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f'{meta} is damaged ({type(e).__name__}); convert the teacher again with '
                      'python -m ris_jax.convert') from None
    if saved != spec.name:
      raise UserError(f"config.teacher.checkpoint={path} holds a '{saved}', but "
                      f"config.teacher.arch is '{spec.name}'; set --config.teacher.arch={saved} "
                      f"or give a '{spec.name}' checkpoint")


def cache_path(config) -> str:
  """Where the offline teacher of `config` is cached: one directory per architecture, dataset
  and teacher-training settings (a short hash of `config.teacher_training`, so changing e.g.
  the epochs trains a new teacher instead of silently reusing the old one)."""
  training = json.dumps(config.teacher_training.to_dict(), sort_keys=True)
  digest = hashlib.sha256(training.encode()).hexdigest()[:8]
  return os.path.join(os.path.expanduser(config.teacher.cache_dir),
                      f'teacher_{config.teacher.arch}_{config.data.dataset}_'
                      f'seed{config.teacher_training.seed}_{digest}')


def get_teacher(config):
  """(spec, module, variables) of the frozen teacher named by `config.teacher`: a PyTorch
  state dict, a converted directory, or (offline datasets, no checkpoint given) a teacher
  trained once and cached under `config.teacher.cache_dir`. The variables are replicated on
  the global mesh (`distributed.replicate`); every process must call this together."""
  spec = convert.spec_or_error(config.teacher.arch)
  path = os.path.expanduser(config.teacher.checkpoint or '')
  if path:
    check_teacher(config)
    if os.path.isdir(path):
      try:
        _, variables = convert.load_variables(path, spec.name)
      except UserError:
        raise
      except Exception as e:  # a damaged orbax directory raises nearly anything
        raise UserError(f'cannot read the converted teacher in {path} ({type(e).__name__}: '
                        f'{" ".join(str(e).split())[:160]}); convert it again with '
                        'python -m ris_jax.convert') from None
    else:
      state_dict = convert.read_torch_state_dict(path)  # unreadable: its own message
      try:
        variables = convert.torch_to_flax(spec, state_dict)
      except UserError as e:  # keys or shapes of another model
        detail = str(e).replace(' (wrong --arch, or a checkpoint of another model?)', '')
        raise UserError(f"config.teacher.checkpoint={path} does not fit config.teacher.arch="
                        f"'{spec.name}' ({detail}); set --config.teacher.arch to the model it "
                        f"holds, or give a '{spec.name}' checkpoint") from None
  elif config.data.dataset in TRAINABLE_OFFLINE:
    cache = cache_path(config)
    # Every process takes process 0's view of the cache, so that all train or none do.
    if not distributed.broadcast(os.path.isfile(os.path.join(cache, 'teacher_results.json'))):
      if distributed.is_primary():
        print(f'No cached teacher at {cache}: training it (once).', flush=True)
      tmp = cache + f'.tmp{os.getpid()}'  # written by process 0 only
      train_teacher(config, tmp)
      if distributed.is_primary():
        if os.path.isdir(cache):
          shutil.rmtree(cache)
        os.replace(tmp, cache)
      distributed.barrier('ris_jax.get_teacher.cached')
    _, variables = convert.load_variables(cache, spec.name)
  else:
    raise _missing_teacher_error(spec)
  return spec, spec.module(), distributed.replicate(variables)

"""RIS training: one generator step then one student step on the same images, per iteration.

The whole iteration is one pure function `ris_step(state, teacher, rng_step, ...)` jitted once
per phase (warm-up: student frozen; fine-tuning), data-parallel over every device of every
host: the global batch is generated inside the step from the replicated RNG and sharded along
the mesh axis 'data', so BN statistics and losses are those of the global batch whatever the
device count.

The same iteration distils into a smaller full-precision student (data-free KD, config.mode
'dfkd'): `Models.student_kind` picks the student's forward and its mutable collection.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ris_jax import data, distributed, losses, perturb
from ris_jax.models import ArchSpec, get_arch
from ris_jax.models.generator import GENERATORS
from ris_jax.student import QuantSpec, make_student


class RISState(struct.PyTreeNode):
  """Everything that training changes (checkpointed): generator params/BN stats and Adam
  state, student params and optimizer state, the student's other collection (activation
  ranges of the quantized student; BN running statistics of a full-precision DFKD student,
  kept under the same field so that checkpoints keep one layout), RNG key, step."""
  step: jax.Array
  generator: Any
  generator_opt: Any
  student: Any
  student_opt: Any
  quant_ranges: Any
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class Models:
  """The fixed parts of a run: modules, optimizers and loss settings (hashable; closed over
  by the jitted step). The teacher's variables are an argument of the step, not a constant."""
  teacher: nn.Module
  student: nn.Module
  generator: nn.Module
  generator_tx: optax.GradientTransformation
  student_tx: optax.GradientTransformation
  num_classes: int
  loss: Any  # a frozen ml_collections.FrozenConfigDict of config.loss
  # 'quantized': the teacher's module with quantized ops, the teacher's BN statistics, ranges
  # in `quant_ranges`; 'fp': a smaller full-precision student (DFKD), BN in training mode with
  # its running statistics in `quant_ranges`.
  student_kind: str = 'quantized'


def quant_spec(config) -> QuantSpec:
  q = config.quant
  return QuantSpec(q.w_bits, q.a_bits, q.first_last_bits, q.clipped_ste, q.ema_momentum)


def _decay_schedule(lr: float, decay_steps) -> optax.Schedule:
  return optax.piecewise_constant_schedule(lr, {int(s): 0.1 for s in decay_steps})


def make_fp_student(arch: str, seed: int):
  """(module, {'params', 'batch_stats'}) of a randomly initialised full-precision student."""
  spec = get_arch(arch)
  module = spec.module()
  v = module.init(jax.random.fold_in(jax.random.PRNGKey(seed), 1),
                  jnp.zeros((1,) + spec.input_shape), train=False)
  return module, {'params': v['params'], 'batch_stats': v['batch_stats']}


def build(config, spec: ArchSpec, teacher_module, teacher_variables) -> Tuple[Models, RISState]:
  """Modules, optimizers and the initial state of a run: a quantized student initialised from
  the teacher, or (config.mode 'dfkd') a random full-precision `config.dfkd.student_arch`."""
  if config.mode == 'dfkd':
    student_kind = 'fp'
    student_module, fp_vars = make_fp_student(config.dfkd.student_arch, config.seed)
    student_vars = {'params': fp_vars['params'], 'quant_ranges': fp_vars['batch_stats']}
  else:
    student_kind = 'quantized'
    student_module, student_vars = make_student(spec, teacher_variables, quant_spec(config))
  g = config.generator
  generator = GENERATORS[g.kind](num_classes=spec.num_classes, image_size=spec.image_size,
                                 channels=spec.in_channels, latent_dim=g.latent_dim, width=g.width)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, rng = jax.random.split(rng)
  gen_vars = generator.init(init_rng, jnp.zeros((2, g.latent_dim)),
                            jnp.ones((2, spec.num_classes)) / spec.num_classes)
  gen_vars = {'params': gen_vars['params'], 'batch_stats': gen_vars['batch_stats']}
  decay = config.train.decay_steps
  generator_tx = optax.adam(_decay_schedule(g.learning_rate, decay), b1=g.b1, b2=g.b2)
  s = config.student
  student_tx = optax.chain(
      optax.add_decayed_weights(s.weight_decay),
      optax.sgd(_decay_schedule(s.learning_rate, decay), momentum=s.momentum, nesterov=s.nesterov))
  models = Models(teacher_module, student_module, generator, generator_tx, student_tx,
                  spec.num_classes, ml_collections.FrozenConfigDict(config.loss), student_kind)
  state = RISState(step=jnp.zeros((), jnp.int32), generator=gen_vars,
                   generator_opt=generator_tx.init(gen_vars['params']),
                   student=student_vars['params'], student_opt=student_tx.init(student_vars['params']),
                   quant_ranges=student_vars['quant_ranges'], rng=rng)
  return models, state


def sample_labels(models: Models, rng, batch_size: int):
  """Labels y (B,) uniform over classes and the generator's conditioning ỹ (B, C):
  decorrelated soft labels (RIS diversity) or one-hot (GDFQ)."""
  k_y, k_soft = jax.random.split(rng)
  labels = jax.random.randint(k_y, (batch_size,), 0, models.num_classes)
  cfg = models.loss
  if cfg.soft_labels:
    targets = perturb.soft_labels(k_soft, labels, models.num_classes, cfg.kappa, cfg.decorrelate_steps)
  else:
    targets = jax.nn.one_hot(labels, models.num_classes)
  return labels, targets


def teacher_forward(models: Models, teacher_vars, images, tap_bn: bool = False):
  """Teacher logits (B, C), pooled features (B, D) and (optionally) its BN-statistics tap."""
  collections = ['features'] + (['bn_stats'] if tap_bn else [])
  logits, taps = models.teacher.apply(teacher_vars, images, mutable=collections)
  return logits, taps['features']['pooled'], taps.get('bn_stats')


def robustness_term(models: Models, teacher_vars, images, logits, features, rng, margins=(0.0, 0.0)):
  """L_rob averaged over N perturbation draws: input x̃ = A(x) and/or weights
  θ̃ = θ + ε|θ|ξ, cosine (features) + L1 (predictions) inconsistency (method.md)."""
  cfg = models.loss

  def one_draw(key):
    k_in, k_w = jax.random.split(key)
    x = perturb.perturb_input(k_in, images, cfg.input_kinds, cfg.noise_std) if cfg.input_perturbation else images
    params = teacher_vars['params']
    if cfg.weight_perturbation:
      direction = None
      if cfg.adversarial:
        direction = _adversarial_direction(models, teacher_vars, x, logits, features, k_w)
      params = perturb.perturb_weights(k_w, params, cfg.weight_eps, direction)
    p_logits, p_features, _ = teacher_forward(models, {**teacher_vars, 'params': params}, x)
    return losses.robustness_loss(features, logits, p_features, p_logits, cfg.feature_weight,
                                  cfg.prediction_weight, cfg.prediction_distance, *margins)

  if cfg.num_draws == 1:
    return one_draw(rng)
  # lax.map, not vmap: vmapping over weight sets turns every conv into a grouped conv.
  values, aux = jax.lax.map(one_draw, jax.random.split(rng, cfg.num_draws))
  return jnp.mean(values), jax.tree.map(jnp.mean, aux)


def _adversarial_direction(models, teacher_vars, images, logits, features, rng):
  """sign(∂ L_rob / ∂ξ) at a random ξ: the one-step ascent direction of the weight noise."""
  cfg = models.loss
  params = teacher_vars['params']
  leaves, treedef = jax.tree.flatten(params)
  flat = jax.random.normal(rng, (sum(l.size for l in leaves),))
  splits = np.cumsum([l.size for l in leaves])[:-1]
  xi = jax.tree.unflatten(treedef, [part.reshape(l.shape).astype(l.dtype) for part, l in
                                    zip(jnp.split(flat, splits), leaves)])

  def incons(xi):
    pert = perturb.perturb_weights(rng, params, cfg.weight_eps, xi)
    p_logits, p_features, _ = teacher_forward(models, {**teacher_vars, 'params': pert}, images)
    return losses.robustness_loss(jax.lax.stop_gradient(features), jax.lax.stop_gradient(logits),
                                  p_features, p_logits, cfg.feature_weight, cfg.prediction_weight,
                                  cfg.prediction_distance)[0]
  return jax.tree.map(jnp.sign, jax.grad(incons)(xi))


def generator_loss(gen_params, models: Models, gen_stats, teacher_vars, z, labels, targets, rng,
                   margins=(0.0, 0.0)):
  """L_G = L_CE + β·L_BNS + λ_r·L_rob + λ_d·L_div. Returns (L_G, (images, teacher logits, metrics))."""
  cfg = models.loss
  images = models.generator.apply({'params': gen_params, 'batch_stats': gen_stats}, z, targets)
  logits, features, bn_stats = teacher_forward(models, teacher_vars, images, tap_bn=True)
  ce = losses.cross_entropy(logits, targets if cfg.soft_labels else labels)
  bns = losses.bn_statistics_loss(bn_stats, teacher_vars['batch_stats'])
  total = ce + cfg.bns_weight * bns
  metrics = {'g_ce': ce, 'g_bns': bns,
             'teacher_acc_on_synthetic': jnp.mean(jnp.argmax(logits, -1) == labels)}
  if cfg.robust_weight:
    rob, aux = robustness_term(models, teacher_vars, images, logits, features, rng, margins)
    total = total + cfg.robust_weight * rob
    metrics.update(g_rob=rob, **aux)
  if cfg.diversity_weight:
    div = losses.label_correlation_penalty(jax.nn.softmax(logits, -1))
    total = total + cfg.diversity_weight * div
    metrics['g_div'] = div
  metrics['g_loss'] = total
  return total, (images, logits, metrics)


def student_loss(student_params, models: Models, teacher_vars, quant_ranges, images, labels,
                 teacher_logits, calibrate: bool):
  """L_Q = CE(Q(x), y) + α·τ²·KL(softmax(T(x)/τ) ‖ softmax(Q(x)/τ)); `labels` (B,) or soft (B, C).
  Returns (L_Q, (ranges, metrics)). A full-precision student ('fp') runs its BN in training
  mode: `quant_ranges` holds its running statistics, updated on every call (`calibrate` unused)."""
  cfg = models.loss
  variables = {'params': student_params, 'batch_stats': teacher_vars['batch_stats'],
               'quant_ranges': quant_ranges}
  if models.student_kind == 'fp':
    logits, updates = models.student.apply({'params': student_params, 'batch_stats': quant_ranges},
                                           images, train=True, mutable=['batch_stats'])
    quant_ranges = updates['batch_stats']
  elif calibrate:
    logits, updates = models.student.apply(variables, images, mutable=['quant_ranges'])
    quant_ranges = updates['quant_ranges']
  else:
    logits = models.student.apply(variables, images)
  kd = losses.kd_loss(logits, teacher_logits, cfg.kd_tau, cfg.kd_reduction)
  ce = losses.cross_entropy(logits, labels)
  total = cfg.kd_alpha * kd + (ce if cfg.student_ce else 0.0)
  hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
  return total, (quant_ranges, {'s_loss': total, 's_kd': kd, 's_ce': ce,
                                's_acc_on_synthetic': jnp.mean(jnp.argmax(logits, -1) == hard)})


def student_step(params, opt_state, ranges, models: Models, teacher_vars, images, targets,
                 teacher_logits, *, update_student: bool, calibrate: bool):
  """The student half of an iteration on given images (synthetic, or real for the upper
  bound): one optimizer step on `student_loss` (or, while `update_student` is off, only the
  forward that calibrates the ranges). Returns (params, opt_state, ranges, metrics)."""
  args = (models, teacher_vars, ranges, images, targets, teacher_logits, calibrate)
  if not update_student:
    _, (ranges, metrics) = student_loss(params, *args)
    return params, opt_state, ranges, metrics
  (_, (ranges, metrics)), grads = jax.value_and_grad(student_loss, has_aux=True)(params, *args)
  updates, opt_state = models.student_tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, ranges, metrics


def ris_step(state: RISState, teacher_vars, margins, *, models: Models, batch_size: int,
             mesh: Mesh, update_student: bool, calibrate: bool):
  """One RIS iteration: sample z, y; generator step on L_G; student step on the same images
  (detached) with the teacher's logits. Returns (new state, metrics)."""
  rng = jax.random.fold_in(state.rng, state.step)
  k_z, k_y, k_rob = jax.random.split(rng, 3)
  batch = NamedSharding(mesh, P('data'))
  z = jax.lax.with_sharding_constraint(
      jax.random.normal(k_z, (batch_size, models.generator.latent_dim)), batch)
  labels, targets = sample_labels(models, k_y, batch_size)
  labels = jax.lax.with_sharding_constraint(labels, batch)
  targets = jax.lax.with_sharding_constraint(targets, batch)

  gen_params = state.generator['params']
  grad_fn = jax.value_and_grad(generator_loss, has_aux=True)
  (_, (images, t_logits, metrics)), grads = grad_fn(
      gen_params, models, state.generator['batch_stats'], teacher_vars, z, labels, targets, k_rob,
      margins)
  updates, gen_opt = models.generator_tx.update(grads, state.generator_opt, gen_params)
  generator = {**state.generator, 'params': optax.apply_updates(gen_params, updates)}

  images, t_logits = jax.lax.stop_gradient(images), jax.lax.stop_gradient(t_logits)
  # The student learns the labels the images were generated for (soft ones under RIS diversity).
  s_targets = targets if models.loss.soft_labels else labels
  student, student_opt, ranges, s_metrics = student_step(
      state.student, state.student_opt, state.quant_ranges, models, teacher_vars, images,
      s_targets, t_logits, update_student=update_student, calibrate=calibrate)
  metrics.update(s_metrics)
  new_state = state.replace(step=state.step + 1, generator=generator, generator_opt=gen_opt,
                            student=student, student_opt=student_opt, quant_ranges=ranges)
  return new_state, metrics


def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every host, axis 'data'."""
  return distributed.global_mesh()


def jit_ris_step(models: Models, batch_size: int, mesh: Mesh):
  """`step(state, teacher_vars, margins, update_student=..., calibrate=...)`, compiled once per
  (update_student, calibrate) phase; state and teacher replicated, the state donated."""
  if batch_size % mesh.size:
    raise ValueError(f'batch size {batch_size} is not divisible by the {mesh.size} devices')
  replicated = NamedSharding(mesh, P())
  fn = functools.partial(ris_step, models=models, batch_size=batch_size, mesh=mesh)
  return jax.jit(fn, static_argnames=('update_student', 'calibrate'),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def replicate(tree, mesh: Mesh):
  return distributed.replicate(tree, mesh)


def noise_margins(models: Models, teacher_vars, batch_size: int, image_shape, fraction: float, rng):
  """(feature, prediction) hinge margins: `fraction` × the inconsistency that the same
  perturbations cause on Gaussian-noise images (method.md [choice]); zeros when fraction is 0."""
  if not fraction or not models.loss.robust_weight:
    return jnp.zeros(2)
  k_x, k_p = jax.random.split(rng)
  noise = jax.random.normal(k_x, (batch_size,) + tuple(image_shape))
  logits, features, _ = teacher_forward(models, teacher_vars, noise)
  _, aux = robustness_term(models, teacher_vars, noise, logits, features, k_p)
  return fraction * jnp.stack([aux['feat_inconsistency'], aux['pred_inconsistency']])


def student_variables(state: RISState, teacher_vars, kind: str = 'quantized') -> Dict[str, Any]:
  """The student's variables for `student.apply` (inference): `kind` is `Models.student_kind`."""
  if kind == 'fp':
    return {'params': state.student, 'batch_stats': state.quant_ranges}
  return {'params': state.student, 'batch_stats': teacher_vars['batch_stats'],
          'quant_ranges': state.quant_ranges}


def generate(models: Models, state: RISState, labels: jax.Array, rng) -> jax.Array:
  """Synthetic images (B, H, W, C) for `labels` (B,), as the generator trains on them."""
  k_z, k_soft = jax.random.split(rng)
  z = jax.random.normal(k_z, (labels.shape[0], models.generator.latent_dim))
  targets = (perturb.soft_labels(k_soft, labels, models.num_classes, models.loss.kappa,
                                 models.loss.decorrelate_steps)
             if models.loss.soft_labels else jax.nn.one_hot(labels, models.num_classes))
  return models.generator.apply(state.generator, z, targets)


def load_student(workdir: str):
  """(spec, quant spec, student variables) of a run's latest checkpoint (see `loop`)."""
  from ris_jax import loop
  return loop.load_student(workdir)

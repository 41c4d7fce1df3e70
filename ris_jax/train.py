"""RIS training: one generator step then one student step on the same images, per iteration.

The whole iteration is one pure function `ris_step(state, teacher, rng_step, ...)` jitted once
per phase (warm-up: student frozen; fine-tuning), data-parallel over every device of every
host: the global batch is generated inside the step from the replicated RNG and sharded along
the mesh axis 'data', so BN statistics and losses are those of the global batch whatever the
device count.

Several quantized students (`config.quant.bits='w4a4,w3a3'`) train on the same synthetic
images in one iteration: the generator's loss involves only the teacher, so one generator step
serves them all; each student then takes its own step on the same detached images and teacher
logits. The students live in dicts keyed by their bit-width tag ('w4a4'; 'fp' for the DFKD
student).

The same iteration distils into a smaller full-precision student (data-free KD, config.mode
'dfkd'): `Models.student_kind` picks the student's forward and its mutable collection.

Learning rates: both optimizers decay ×0.1 at the configured iterations (`train.decay_steps`,
0-based iteration indices); the student, frozen for `train.warmup_steps` iterations, counts its
updates from there, so its schedule is shifted by the warm-up.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ris_jax import data, distributed, gi, losses, perturb
from ris_jax.models import ArchSpec, get_arch
from ris_jax.models.generator import GENERATORS
from ris_jax.student import QuantSpec, make_student
from ris_jax.student import kernel_bits_tree as make_kernel_bits_tree


class RISState(struct.PyTreeNode):
  """Everything that training changes (checkpointed): generator params/BN stats and Adam
  state; per student (dicts keyed by bit-width tag) its params, optimizer state and other
  collection (activation ranges of a quantized student; BN running statistics of a
  full-precision DFKD student, kept under the same field so that checkpoints keep one
  layout); RNG key, step."""
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
  by the jitted step). The teacher's variables are an argument of the step, not a constant.
  `students`: ((tag, module), …), one per student, in the order of `config.quant.bits`."""
  teacher: nn.Module
  students: Tuple[Tuple[str, nn.Module], ...]
  generator: nn.Module
  generator_tx: optax.GradientTransformation
  student_txs: Tuple[Tuple[str, optax.GradientTransformation], ...]  # per student (tag, optimizer)
  num_classes: int
  loss: Any  # a frozen ml_collections.FrozenConfigDict of config.loss
  # 'quantized': the teacher's module with quantized ops, the teacher's BN statistics, ranges
  # in `quant_ranges`; 'fp': a smaller full-precision student (DFKD), BN in training mode with
  # its running statistics in `quant_ranges`.
  student_kind: str = 'quantized'

  @property
  def tags(self) -> Tuple[str, ...]:
    return tuple(tag for tag, _ in self.students)

  def student_module(self, tag: Optional[str] = None) -> nn.Module:
    """The module of student `tag` (default: the only student)."""
    return dict(self.students)[only_tag(self.tags, tag)]

  @property
  def student(self) -> nn.Module:
    """The module of the only student of a single-student run."""
    return self.student_module()

  def student_optimizer(self, tag: Optional[str] = None) -> optax.GradientTransformation:
    """The optimizer of student `tag` (default: the only student)."""
    return dict(self.student_txs)[only_tag(self.tags, tag)]

  @property
  def student_tx(self) -> optax.GradientTransformation:
    """The optimizer of the only student of a single-student run."""
    return self.student_optimizer()


def only_tag(tags, tag: Optional[str] = None) -> str:
  """`tag` if it is one of `tags`; without `tag`, the only one (several: an error naming them)."""
  if tag is None:
    if len(tags) != 1:
      raise ValueError(f"this run has several students ({', '.join(tags)}); name one")
    return tags[0]
  if tag not in tags:
    raise KeyError(f"no student '{tag}' in this run (students: {', '.join(tags)})")
  return tag


def bits_tag(w_bits: int, a_bits: int) -> str:
  return f'w{w_bits}a{a_bits}'


def bit_widths(config) -> Tuple[Tuple[int, int], ...]:
  """The students' (w_bits, a_bits): `config.quant.bits` ('w4a4,w3a3') when set, else the
  one of `quant.w_bits` / `quant.a_bits`. Raises ValueError on a malformed list."""
  text = config.quant.get('bits') or ''
  if not text:
    return ((config.quant.w_bits, config.quant.a_bits),)
  out = []
  for part in text.split(','):
    m = re.fullmatch(r'w(\d)a(\d)', part.strip())
    if not m:
      raise ValueError(f"config.quant.bits={text!r}: '{part}' is not of the form w<bits>a<bits> "
                       "(e.g. --config.quant.bits=w4a4,w3a3)")
    out.append((int(m.group(1)), int(m.group(2))))
  if len(set(out)) != len(out):
    raise ValueError(f'config.quant.bits={text!r} names a bit-width twice')
  return tuple(out)


def quant_specs(config) -> Dict[str, QuantSpec]:
  """{bit-width tag: QuantSpec} of the run's quantized students, in order."""
  q = config.quant
  return {bits_tag(w, a): QuantSpec(w, a, q.first_last_bits, q.clipped_ste, q.ema_momentum)
          for w, a in bit_widths(config)}


def quant_spec(config) -> QuantSpec:
  """The QuantSpec of a single-bit-width config."""
  specs = quant_specs(config)
  return specs[only_tag(tuple(specs))]


def decayed(value: float, config) -> optax.Schedule:
  """`value` as a function of the 0-based iteration index, ×0.1 from each
  `config.train.decay_steps` iteration on (learning rates; AIT's flip threshold τ)."""
  return optax.piecewise_constant_schedule(value, {int(s): 0.1 for s in config.train.decay_steps})


def learning_rate_schedules(config) -> Tuple[optax.Schedule, optax.Schedule]:
  """(generator, student) learning rate as functions of the 0-based iteration index: ×0.1 from
  each `config.train.decay_steps` iteration on, for both."""
  return decayed(config.generator.learning_rate, config), decayed(config.student.learning_rate, config)


def student_optimizer(config, kernel_bits=None) -> optax.GradientTransformation:
  """The student's optimizer; its update count starts at iteration `train.warmup_steps`, so its
  schedules are shifted by the warm-up. GDFQ (`student.method='gdfq'`): weight decay, then
  Nesterov SGD. AIT ('ait'): GI-SGD (ris_jax/gi.py) on the quantized kernels (`kernel_bits`, see
  `student.kernel_bits_tree`), Nesterov SGD elsewhere, flip threshold τ decayed like the rates."""
  s, warmup = config.student, int(config.train.warmup_steps)
  shifted = lambda schedule: (lambda n: schedule(n + warmup))
  student_lr = shifted(learning_rate_schedules(config)[1])
  if s.get('method', 'gdfq') == 'ait':
    factory = functools.partial(gi.gi_sgd, kernel_bits=kernel_bits, momentum=s.momentum,
                                nesterov=s.nesterov, cap_updates=s.gi_cap_updates,
                                search_iters=s.gi_search_iters, max_doublings=s.gi_max_doublings)
    static = ('kernel_bits', 'momentum', 'nesterov', 'cap_updates', 'search_iters', 'max_doublings')
    return optax.chain(
        optax.add_decayed_weights(s.weight_decay),
        optax.inject_hyperparams(factory, static_args=static)(
            learning_rate=student_lr, threshold=shifted(decayed(s.gi_threshold, config))))
  return optax.chain(
      optax.add_decayed_weights(s.weight_decay),
      optax.inject_hyperparams(optax.sgd)(learning_rate=student_lr, momentum=s.momentum,
                                          nesterov=s.nesterov))


def applied_learning_rate(opt_state) -> jax.Array:
  """The learning rate of the last update of an optimizer built with `optax.inject_hyperparams`."""
  is_inject = lambda s: isinstance(s, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_inject) if is_inject(s)]
  return found[0].hyperparams['learning_rate']


def make_fp_student(arch: str, seed: int):
  """(module, {'params', 'batch_stats'}) of a randomly initialised full-precision student."""
  spec = get_arch(arch)
  module = spec.module()
  v = module.init(jax.random.fold_in(jax.random.PRNGKey(seed), 1),
                  jnp.zeros((1,) + spec.input_shape), train=False)
  return module, {'params': v['params'], 'batch_stats': v['batch_stats']}


# Models of the configs built in this process, by `_models_key`: an equal config gets the same
# (immutable) Models, so its jitted functions (`jit_ris_step`, evaluation, diagnostics) are
# traced and compiled once per process, not once per run (a resumed chunk, a test's second run).
_MODELS: Dict[str, 'Models'] = {}


def _models_key(config, spec: ArchSpec, teacher_module) -> str:
  """The config fields (and teacher) that define a run's Models: modules, optimizers, losses."""
  fields = {k: config.get(k) for k in ('mode', 'loss', 'quant', 'generator', 'student', 'dfkd')}
  fields['schedule'] = (config.train.warmup_steps, list(config.train.decay_steps))
  return json.dumps([spec.name, repr(teacher_module),
                     json.loads(ml_collections.ConfigDict(fields).to_json())], sort_keys=True)


def build(config, spec: ArchSpec, teacher_module, teacher_variables) -> Tuple[Models, RISState]:
  """Modules, optimizers and the initial state of a run: a quantized student initialised from
  the teacher, or (config.mode 'dfkd') a random full-precision `config.dfkd.student_arch`."""
  if config.mode == 'dfkd':
    student_kind = 'fp'
    module, fp_vars = make_fp_student(config.dfkd.student_arch, config.seed)
    students = {'fp': (module, {'params': fp_vars['params'], 'quant_ranges': fp_vars['batch_stats']})}
  else:
    student_kind = 'quantized'
    students = {tag: make_student(spec, teacher_variables, qspec)
                for tag, qspec in quant_specs(config).items()}
  g = config.generator
  generator = GENERATORS[g.kind](num_classes=spec.num_classes, image_size=spec.image_size,
                                 channels=spec.in_channels, latent_dim=g.latent_dim, width=g.width,
                                 # a run recorded before the option existed used 'plain'
                                 upsample_conv=g.get('upsample_conv', 'plain'))
  rng = jax.random.PRNGKey(config.seed)
  init_rng, rng = jax.random.split(rng)
  gen_vars = generator.init(init_rng, jnp.zeros((2, g.latent_dim)),
                            jnp.ones((2, spec.num_classes)) / spec.num_classes)
  gen_vars = {'params': gen_vars['params'], 'batch_stats': gen_vars['batch_stats']}
  key = _models_key(config, spec, teacher_module)
  if key not in _MODELS:
    generator_lr, _ = learning_rate_schedules(config)
    generator_tx = optax.inject_hyperparams(optax.adam)(learning_rate=generator_lr, b1=g.b1, b2=g.b2)
    student_txs = tuple((tag, student_optimizer(
        config, make_kernel_bits_tree(m, v['params'], spec.input_shape)
        if student_kind == 'quantized' else None)) for tag, (m, v) in students.items())
    _MODELS[key] = Models(teacher_module, tuple((tag, m) for tag, (m, _) in students.items()),
                          generator, generator_tx, student_txs, spec.num_classes,
                          ml_collections.FrozenConfigDict(config.loss), student_kind)
  models = _MODELS[key]
  generator_tx, student_txs = models.generator_tx, dict(models.student_txs)
  state = RISState(step=jnp.zeros((), jnp.int32), generator=gen_vars,
                   generator_opt=generator_tx.init(gen_vars['params']),
                   student={tag: v['params'] for tag, (_, v) in students.items()},
                   student_opt={tag: student_txs[tag].init(v['params'])
                                for tag, (_, v) in students.items()},
                   quant_ranges={tag: v['quant_ranges'] for tag, (_, v) in students.items()},
                   rng=rng)
  return models, state


def sample_labels(models: Models, rng, batch_size: int):
  """Labels y (B,) uniform over classes and the generator's conditioning ỹ (B, C):
  decorrelated soft labels (RIS diversity) or one-hot (GDFQ)."""
  k_y, k_soft = jax.random.split(rng)
  labels = jax.random.randint(k_y, (batch_size,), 0, models.num_classes)
  return labels, conditioning(models, labels, k_soft)


def teacher_forward(models: Models, teacher_vars, images, tap_bn: bool = False):
  """Teacher logits (B, C), pooled features (B, D) and (optionally) its BN-statistics tap."""
  collections = ['features'] + (['bn_stats'] if tap_bn else [])
  logits, taps = models.teacher.apply(teacher_vars, images, mutable=collections)
  return logits, taps['features']['pooled'], taps.get('bn_stats')


def draw_perturbation(models: Models, teacher_vars, rng, image_shape):
  """The random parameters of one perturbation draw of L_rob: {'input': the draws of
  `perturb.draw_input_perturbation` (if input perturbation is on), 'weight': ξ, the weight
  noise tree (if weight perturbation is on; also the adversarial variant's random start point:
  its ascent direction is sign(∂L_rob/∂ξ) there, zero off the kernels)}."""
  cfg = models.loss
  k_in, k_w = jax.random.split(rng)
  out = {}
  if cfg.input_perturbation:
    out['input'] = perturb.draw_input_perturbation(k_in, image_shape, cfg.input_kinds)
  if cfg.weight_perturbation:
    params = teacher_vars['params']
    out['weight'] = perturb.weight_noise(k_w, params)  # the adversarial variant's start too
  return out


def robustness_term(models: Models, teacher_vars, images, logits, features, rng, margins=(0.0, 0.0),
                    perturbation=None):
  """L_rob averaged over N perturbation draws: input x̃ = A(x) and/or weights
  θ̃ = θ + ε|θ|ξ, cosine (features) + L1 (predictions) inconsistency (method.md). The draws
  come from `rng`, or are given: `perturbation` as `draw_perturbation` returns it (leaves
  stacked along a leading axis of length N when N > 1)."""
  cfg = models.loss

  def one_draw(drawn):
    x = (perturb.apply_input_perturbation(drawn['input'], images, cfg.input_kinds, cfg.noise_std)
         if cfg.input_perturbation else images)
    params = teacher_vars['params']
    if cfg.weight_perturbation:
      xi = drawn['weight']
      if cfg.adversarial:
        xi = _adversarial_direction(models, teacher_vars, x, logits, features, xi)
      params = perturb.perturb_weights(None, params, cfg.weight_eps, xi)
    p_logits, p_features, _ = teacher_forward(models, {**teacher_vars, 'params': params}, x)
    return losses.robustness_loss(features, logits, p_features, p_logits, cfg.feature_weight,
                                  cfg.prediction_weight, cfg.prediction_distance, *margins)

  draw = lambda key: draw_perturbation(models, teacher_vars, key, images.shape)
  if cfg.num_draws == 1:
    return one_draw(draw(rng) if perturbation is None else perturbation)
  # lax.map, not vmap: vmapping over weight sets turns every conv into a grouped conv.
  if perturbation is None:
    values, aux = jax.lax.map(lambda key: one_draw(draw(key)), jax.random.split(rng, cfg.num_draws))
  else:
    values, aux = jax.lax.map(one_draw, perturbation)
  return jnp.mean(values), jax.tree.map(jnp.mean, aux)


def _adversarial_direction(models, teacher_vars, images, logits, features, xi):
  """sign(∂ L_rob / ∂ξ) at the random start ξ: the one-step ascent direction of the weight noise."""
  cfg = models.loss
  params = teacher_vars['params']

  def incons(xi):
    pert = perturb.perturb_weights(None, params, cfg.weight_eps, xi)
    p_logits, p_features, _ = teacher_forward(models, {**teacher_vars, 'params': pert}, images)
    return losses.robustness_loss(jax.lax.stop_gradient(features), jax.lax.stop_gradient(logits),
                                  p_features, p_logits, cfg.feature_weight, cfg.prediction_weight,
                                  cfg.prediction_distance)[0]
  return jax.tree.map(jnp.sign, jax.grad(incons)(xi))


def generator_loss(gen_params, models: Models, gen_stats, teacher_vars, z, labels, targets, rng,
                   margins=(0.0, 0.0), perturbation=None):
  """L_G = L_CE + β·L_BNS + λ_r·L_rob + λ_d·L_div. Returns (L_G, (images, teacher logits, metrics)).
  L_rob's perturbations are drawn from `rng` or given (`perturbation`, see `robustness_term`)."""
  cfg = models.loss
  images = models.generator.apply({'params': gen_params, 'batch_stats': gen_stats}, z, targets)
  logits, features, bn_stats = teacher_forward(models, teacher_vars, images, tap_bn=True)
  ce = losses.cross_entropy(logits, targets if cfg.soft_labels else labels)
  bns = losses.bn_statistics_loss(bn_stats, teacher_vars['batch_stats'])
  total = ce + cfg.bns_weight * bns
  metrics = {'g_ce': ce, 'g_bns': bns,
             'teacher_acc_on_synthetic': jnp.mean(jnp.argmax(logits, -1) == labels)}
  if cfg.robust_weight:
    rob, aux = robustness_term(models, teacher_vars, images, logits, features, rng, margins,
                               perturbation)
    total = total + cfg.robust_weight * rob
    metrics.update(g_rob=rob, **aux)
  if cfg.diversity_weight:
    div = losses.label_correlation_penalty(jax.nn.softmax(logits, -1))
    total = total + cfg.diversity_weight * div
    metrics['g_div'] = div
  metrics['g_loss'] = total
  return total, (images, logits, metrics)


def student_loss(student_params, models: Models, teacher_vars, quant_ranges, images, labels,
                 teacher_logits, calibrate: bool, tag: Optional[str] = None):
  """L_Q = CE(Q(x), y) + α·τ²·KL(softmax(T(x)/τ) ‖ softmax(Q(x)/τ)); `labels` (B,) or soft (B, C).
  Returns (L_Q, (ranges, metrics)) of student `tag` (default: the only one). A full-precision
  student ('fp') runs its BN in training mode: `quant_ranges` holds its running statistics,
  updated on every call (`calibrate` unused)."""
  cfg = models.loss
  module = models.student_module(tag)
  variables = {'params': student_params, 'batch_stats': teacher_vars['batch_stats'],
               'quant_ranges': quant_ranges}
  if models.student_kind == 'fp':
    logits, updates = module.apply({'params': student_params, 'batch_stats': quant_ranges},
                                   images, train=True, mutable=['batch_stats'])
    quant_ranges = updates['batch_stats']
  elif calibrate:
    logits, updates = module.apply(variables, images, mutable=['quant_ranges'])
    quant_ranges = updates['quant_ranges']
  else:
    logits = module.apply(variables, images)
  kd = losses.kd_loss(logits, teacher_logits, cfg.kd_tau, cfg.kd_reduction)
  ce = losses.cross_entropy(logits, labels)
  total = cfg.kd_alpha * kd + (ce if cfg.student_ce else 0.0)
  hard = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
  return total, (quant_ranges, {'s_loss': total, 's_kd': kd, 's_ce': ce,
                                's_acc_on_synthetic': jnp.mean(jnp.argmax(logits, -1) == hard)})


def student_step(params, opt_state, ranges, models: Models, teacher_vars, images, targets,
                 teacher_logits, *, update_student: bool, calibrate: bool,
                 tag: Optional[str] = None):
  """The student half of an iteration on given images (synthetic, or real for the upper
  bound) for student `tag` (default: the only one): one optimizer step on `student_loss` (or,
  while `update_student` is off, only the forward that calibrates the ranges). Returns
  (params, opt_state, ranges, metrics)."""
  args = (models, teacher_vars, ranges, images, targets, teacher_logits, calibrate, tag)
  if not update_student:
    _, (ranges, metrics) = student_loss(params, *args)
    return params, opt_state, ranges, metrics
  (_, (ranges, metrics)), grads = jax.value_and_grad(student_loss, has_aux=True)(params, *args)
  updates, opt_state = models.student_optimizer(tag).update(grads, opt_state, params)
  metrics.update(gi.metrics(opt_state))
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
  # The students learn the labels the images were generated for (soft ones under RIS diversity).
  s_targets = targets if models.loss.soft_labels else labels
  student, student_opt, ranges = {}, {}, {}
  for tag in models.tags:  # every student on the same images and teacher logits
    student[tag], student_opt[tag], ranges[tag], s_metrics = student_step(
        state.student[tag], state.student_opt[tag], state.quant_ranges[tag], models, teacher_vars,
        images, s_targets, t_logits, update_student=update_student, calibrate=calibrate, tag=tag)
    metrics.update({metric_name(k, tag, models.tags): v for k, v in s_metrics.items()})
  metrics['lr_generator'] = applied_learning_rate(gen_opt)
  metrics['lr_student'] = (applied_learning_rate(student_opt[models.tags[0]]) if update_student
                           else jnp.zeros(()))
  new_state = state.replace(step=state.step + 1, generator=generator, generator_opt=gen_opt,
                            student=student, student_opt=student_opt, quant_ranges=ranges)
  return new_state, metrics


def metric_name(name: str, tag: str, tags) -> str:
  """A student's metric: `name` in a single-student run, `name/tag` when there are several."""
  return name if len(tags) == 1 else f'{name}/{tag}'



def make_mesh() -> Mesh:
  """A 1-D mesh over every device of every host, axis 'data'."""
  return distributed.global_mesh()


@functools.lru_cache(maxsize=16)
def jit_ris_step(models: Models, batch_size: int, mesh: Mesh):
  """`step(state, teacher_vars, margins, update_student=..., calibrate=...)`, compiled once per
  (update_student, calibrate) phase; state and teacher replicated, the state donated. One
  per (models, batch, mesh) in a process."""
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


def student_variables(state: RISState, teacher_vars, kind: str = 'quantized',
                      tag: Optional[str] = None) -> Dict[str, Any]:
  """Student `tag`'s variables (default: the only student) for its module's `apply`
  (inference): `kind` is `Models.student_kind`."""
  tag = only_tag(tuple(state.student), tag)
  if kind == 'fp':
    return {'params': state.student[tag], 'batch_stats': state.quant_ranges[tag]}
  return {'params': state.student[tag], 'batch_stats': teacher_vars['batch_stats'],
          'quant_ranges': state.quant_ranges[tag]}


def conditioning(models: Models, labels: jax.Array, rng) -> jax.Array:
  """The generator's conditioning ỹ (B, C) for `labels` (B,), as the method trains it:
  decorrelated soft labels drawn from `rng` where it uses them, one-hot otherwise."""
  cfg = models.loss
  if cfg.soft_labels:
    return perturb.soft_labels(rng, labels, models.num_classes, cfg.kappa, cfg.decorrelate_steps)
  return jax.nn.one_hot(labels, models.num_classes)


def generate_with_targets(models: Models, state: RISState, labels: jax.Array, rng):
  """(images (B, H, W, C), conditioning ỹ (B, C)) for `labels` (B,), as the generator trains
  on them (its BN normalizes with the statistics of this batch)."""
  k_z, k_soft = jax.random.split(rng)
  z = jax.random.normal(k_z, (labels.shape[0], models.generator.latent_dim))
  targets = conditioning(models, labels, k_soft)
  return models.generator.apply(state.generator, z, targets), targets


def generate(models: Models, state: RISState, labels: jax.Array, rng) -> jax.Array:
  """Synthetic images (B, H, W, C) for `labels` (B,), as the generator trains on them."""
  return generate_with_targets(models, state, labels, rng)[0]


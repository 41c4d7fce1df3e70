"""One RIS iteration of ris_jax against the independent PyTorch reference (torch_reference.py).

    python experiments/check_reference.py                 # every case, W8A8 and W4A4
    python experiments/check_reference.py --cases ris_w4a4,gdfq_w8a8

Both frameworks get the same random-weight teacher (pytorchcv, converted with ris_jax.convert;
BN statistics and affine randomized), the same generator and student weights, and, per
iteration, the same z, labels, soft-label noise η, input-perturbation choice and draws, and
weight noise ξ, drawn once in numpy. Four iterations run on each side from its own state: two
with the student frozen and its activation ranges calibrating, two fine-tuning it (one for
`ait_w4a4`, GDFQ's generator with AIT's student step: see AIT_PHASES). Compared
after every iteration: each generator loss term, the soft labels, the images, the teacher
logits, the generator's gradients, updated parameters and parameter change, the student's loss
terms, gradients, updated parameters and parameter change, the activation ranges and (AIT) each
quantized kernel's α (`gi_alpha`, max relative difference over the layers). The
ris_jax side composes train.generator_loss / train.student_step as `train.ris_step` does;
`ris_step` itself (jitted) is checked against that composition given its own draws
(quantities `ris_step_generator`, `ris_step_student`), in float64: the two are one function,
which float64 shows to ~1e-15 where float32 rounding crossing a kink blurs it to 1e-2.

Relative difference of a quantity: max|a − b| / max(max|b|, 1e-12), a = ris_jax, b = PyTorch,
per array; for a tree (gradients, parameters, ranges) the max over its leaves; per case the max
over the four iterations. Prints one JSON line per case, then {"cases": N, "max_rel_diff": x}.
Both frameworks compute in float32 (the ris_step check: float64).

Where 1e-4 is not reached (every case, `python experiments/check_reference.py`, measured on the
2-core CPU; experiments/results/check_reference.md): at W4A4 every quantity is ≤ 3e-5 (the
worst, `feat_inconsistency`, is 1 − cos of nearly equal features) except the parameter changes;
at W8A8 the generator side is the same and the student side is not:
  * `generator_update` (≤ 5.5e-3) and `student_update` (≤ 9e-4 without level flips): a change
    new − old of float32 parameters. Adam scales every gradient element to about lr, so an
    element far below its leaf's largest carries its own larger relative rounding into a
    full-size step; SGD's step (lr 1e-4 × gradient) is ~1e-4 of the parameter, whose own
    rounding (~6e-8 of it) is then ~1e-3 of the step. The gradients and parameters agree.
  * the student half at W8A8: an activation whose quantizer input lies on a rounding near-tie
    (256 levels: many more ties than at 16) is rounded to the other level by one framework, and
    such flips cascade downstream (`level_flips`: 178–2830 of the student's ReLU outputs on one
    batch of 8), moving the student's loss by ≤ 3.3e-4, its logits by ≤ 3.9e-3 and its
    gradients by ≤ 3.8e-2 (relative). The test (W4A4) asserts 1e-4 only when no flip is seen.
  * the biases in BIAS_BEFORE_BN (below), left out of the generator comparisons.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import sys
from typing import Any, Dict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

TINY = 1e-12
# Per-channel biases feeding a batch-statistics BN (the generator's conv1 → bn1, conv2 → bn2; not
# fc's, which is per position): BN subtracts the channel's batch mean, so their gradient is
# exactly 0 in exact arithmetic and float32
# rounding noise in both frameworks; Adam's first steps turn that noise into ±lr steps of random
# sign. They are left out of the generator's gradient / parameter comparisons; the script
# reports instead how small their gradients are (`bias_before_bn_grad`, max |g| of those
# leaves over max |g| of the generator's, both frameworks).
BIAS_BEFORE_BN = ('conv1/bias', 'conv2/bias')
VARIANTS = {  # method.md's ablation flags (config.loss overrides)
    'gdfq': dict(robust_weight=0.0, soft_labels=False),
    'input': dict(robust_weight=1.0, input_perturbation=True, weight_perturbation=False,
                  soft_labels=False),
    'weight': dict(robust_weight=1.0, input_perturbation=False, weight_perturbation=True,
                   soft_labels=False),
    'soft_labels': dict(robust_weight=0.0, soft_labels=True),
    'ris': dict(robust_weight=1.0, input_perturbation=True, weight_perturbation=True,
                soft_labels=True),
    # GDFQ's generator with AIT's student step (KL only, no weight decay, gradient inflation)
    'ait': dict(robust_weight=0.0, soft_labels=False),
}
BITS = {'w8a8': (8, 8), 'w4a4': (4, 4)}
CASES = [f'{v}_{b}' for v in VARIANTS for b in BITS if v != 'ait'] + ['ait_w4a4']
PHASES = ((False, True), (False, True), (True, False), (True, False))  # (update_student, calibrate)
# AIT: one fine-tuning iteration. α is a step function of the flip count, so from the second
# one on, the parameters' float32 differences after the first step can move one weight code
# across its rounding boundary and α with it (measured: iteration 4, one of 10 layers, α 2.4375
# vs 2.1875); tests/test_gi.py checks the search exactly, in float64.
AIT_PHASES = PHASES[:3]


def rel_diff(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f'shapes differ: {a.shape} vs {b.shape}')
  return float(np.max(np.abs(a - b), initial=0.0) / max(float(np.max(np.abs(b), initial=0.0)), TINY))


def metric_rel_diff(name: str, a: Dict, b: Dict) -> float:
  """`rel_diff` of scalar metric `name`, except the KD term: a KL between nearly equal
  distributions (≈1e-3 here, the student starting as the quantized teacher) is a small sum of
  terms p·(log p − log q) whose float32 rounding is set by log p, log q (≈1), so its difference
  is taken relative to the loss it enters, `s_loss` (cross-entropy ≈ log C). Under AIT's KL-only
  loss `s_loss` is that KL itself, so both are taken relative to the cross-entropy the student
  also computes (weight 0)."""
  if name in ('s_kd', 's_loss') and 's_ce' in b:
    scale = max(abs(float(b[k])) for k in ('s_kd', 's_loss', 's_ce'))
    return abs(float(a[name]) - float(b[name])) / max(scale, TINY)
  return rel_diff(a[name], b[name])


def adam_first_moment(opt_state) -> Dict[str, np.ndarray]:
  """The `mu` leaves of an optax Adam state (wherever inject_hyperparams/chain put it), flat."""
  import jax
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
    names = [getattr(k, 'name', getattr(k, 'key', getattr(k, 'idx', ''))) for k in path]
    if 'mu' in names:
      out['/'.join(str(n) for n in names[names.index('mu') + 1:])] = np.asarray(leaf)
  if not out:
    raise ValueError('no Adam first moment (mu) in this optimizer state')
  return out


def to_float64(tree):
  """Every floating leaf of `tree` as float64 (call inside `jax.enable_x64(True)`)."""
  import jax
  import jax.numpy as jnp
  return jax.tree.map(lambda x: x.astype(jnp.float64)
                      if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree)


def tree_rel_diff(a: Dict, b: Dict, exclude=()) -> float:
  if set(a) != set(b):
    raise ValueError(f'keys differ: {sorted(set(a) ^ set(b))[:5]}')
  return max(rel_diff(a[k], b[k]) for k in a if k not in exclude)


def level_flips(jax_acts: Dict[str, np.ndarray], torch_acts: Dict[str, np.ndarray], ranges,
                bits: int):
  """Quantized activations of the two students on the same images, per layer: elements that
  differ by at least half a quantization level (a level flip: a rounding decision taken the
  other way on a near-tie) are counted; returns (flips, rel diff over the other elements)."""
  flips, worst = 0, 0.0
  for k, b in torch_acts.items():
    a = jax_acts[k]
    step = (float(ranges[f'{k}/Activation_0/hi']) - float(ranges[f'{k}/Activation_0/lo'])) / (2 ** bits - 1)
    flipped = np.abs(a - b) >= 0.5 * step
    flips += int(flipped.sum())
    worst = max(worst, rel_diff(np.where(flipped, b, a), b))
  return flips, worst


def flat(tree) -> Dict[str, np.ndarray]:
  from flax import traverse_util
  return {'/'.join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


# ------------------------------------------------------------------------------- models
def random_teacher(arch: str, seed: int):
  """A pytorchcv model of `arch` with seeded random weights and randomized BN running
  statistics and affine parameters (so L_BNS and BN folding are not trivial), in eval mode."""
  import torch
  from ris_jax.models import get_arch
  spec = get_arch(arch)
  torch.manual_seed(seed)
  model = spec.torch_model().eval()
  rng = np.random.RandomState(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        c = m.num_features
        m.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.2, c).astype(np.float32)))
        m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32)))
        m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32)))
        m.bias.copy_(torch.from_numpy(rng.normal(0, 0.2, c).astype(np.float32)))
  return spec, model


def generator_to_torch(gen_params, s: int, width: int) -> Dict[str, Any]:
  """ris_jax GDFQGenerator params → torch_reference.GDFQGenerator state (fc outputs reordered
  from (h, w, c) to (c, h, w): torch reshapes the fc output channels-first)."""
  import torch
  p = {k: np.asarray(v) for k, v in flat(gen_params).items()}
  latent = p['fc/kernel'].shape[0]
  out = {'label_embedding': p['label_embedding'],
         'fc.weight': p['fc/kernel'].reshape(latent, s, s, width).transpose(3, 1, 2, 0).reshape(-1, latent),
         'fc.bias': p['fc/bias'].reshape(s, s, width).transpose(2, 0, 1).reshape(-1)}
  for conv in ('conv1', 'conv2', 'conv3'):
    out[f'{conv}.weight'] = p[f'{conv}/kernel'].transpose(3, 2, 0, 1)
    out[f'{conv}.bias'] = p[f'{conv}/bias']
  for bn in ('bn0', 'bn1', 'bn2'):
    out[f'{bn}.weight'], out[f'{bn}.bias'] = p[f'{bn}/scale'], p[f'{bn}/bias']
  return {k: torch.from_numpy(np.array(v, np.float32, copy=True)) for k, v in out.items()}


def generator_from_torch(named: Dict[str, Any], s: int, width: int) -> Dict[str, np.ndarray]:
  """The inverse of `generator_to_torch` for parameters or their gradients (flat ris_jax keys)."""
  t = {k: v.detach().numpy() for k, v in named.items()}
  latent = t['label_embedding'].shape[1]
  out = {'label_embedding': t['label_embedding'],
         'fc/kernel': t['fc.weight'].reshape(width, s, s, latent).transpose(3, 1, 2, 0).reshape(latent, -1),
         'fc/bias': t['fc.bias'].reshape(width, s, s).transpose(1, 2, 0).reshape(-1)}
  for conv in ('conv1', 'conv2', 'conv3'):
    out[f'{conv}/kernel'] = t[f'{conv}.weight'].transpose(2, 3, 1, 0)
    out[f'{conv}/bias'] = t[f'{conv}.bias']
  for bn in ('bn0', 'bn1', 'bn2'):
    out[f'{bn}/scale'], out[f'{bn}/bias'] = t[f'{bn}.weight'], t[f'{bn}.bias']
  return out


def student_from_torch(spec, named: Dict[str, Any], like: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Torch student parameters (or gradients) by pytorchcv name → flat ris_jax params keys of `like`."""
  from ris_jax import convert
  return {k: convert._to_flax_layout(named[spec.torch_key(tuple(k.split('/')))].detach().numpy(),
                                     v.shape) for k, v in like.items()}


def jax_activations(module, variables, images):
  """(logits, {layer: quantized ReLU output}) of the ris_jax student, inference mode."""
  logits, state = module.apply(variables, images, capture_intermediates=True,
                               mutable=['intermediates'])
  acts = {'/'.join(k[:-2]): v[0] for k, v in flat_tuple(state['intermediates']).items()
          if len(k) >= 2 and k[-2] == 'Activation_0'}
  return logits, acts


def flat_tuple(tree):
  from flax import traverse_util
  return traverse_util.flatten_dict(tree)


def torch_activations(student, images_nhwc):
  """(logits, {layer: quantized ReLU output, NHWC}) of the torch student, ranges frozen."""
  import torch
  from experiments.torch_reference import QReLU
  acts, hooks = {}, []
  for name, m in student.named_modules():
    if isinstance(m, QReLU):
      key = name[len('features.'):-len('.activ')].replace('.unit', '_unit').replace('.', '/')
      hooks.append(m.register_forward_hook(
          lambda mod, i, o, key=key: acts.__setitem__(key, o.detach().numpy().transpose(0, 2, 3, 1))))
  with torch.no_grad():
    logits = student(torch.from_numpy(np.array(images_nhwc.transpose(0, 3, 1, 2))))  # a copy
  for h in hooks:
    h.remove()
  return logits.numpy(), acts


def ranges_from_torch(student) -> Dict[str, np.ndarray]:
  """Activation ranges of the torch student as flat ris_jax `quant_ranges` keys (lo, hi)."""
  from experiments.torch_reference import QReLU
  out = {}
  for name, m in student.named_modules():
    if isinstance(m, QReLU):
      assert name.startswith('features.') and name.endswith('.activ'), name
      path = name[len('features.'):-len('.activ')].replace('.unit', '_unit').replace('.', '/')
      out[f'{path}/Activation_0/lo'] = m.lo.numpy().copy()
      out[f'{path}/Activation_0/hi'] = m.hi.numpy().copy()
  return out


# --------------------------------------------------------------------------- randomness
def draw(rng: np.random.RandomState, batch: int, latent: int, num_classes: int, image_shape,
         kernel_shapes: Dict[str, tuple], kind: int) -> Dict[str, Any]:
  """One iteration's randomness, float32 numpy, NHWC / ris_jax layouts."""
  f32 = lambda x: np.asarray(x, np.float32)
  return {'z': f32(rng.normal(size=(batch, latent))),
          'labels': rng.randint(0, num_classes, batch).astype(np.int32),
          'eta': f32(rng.normal(size=(batch, num_classes))),
          'input': {'kind': np.int32(kind),
                    'crop_scale': f32(rng.uniform(0.6, 1.0, batch)),
                    'crop_shift': f32(rng.uniform(-1, 1, (batch, 2))),
                    'flip': rng.rand(batch) < 0.5,
                    'translate': f32(rng.uniform(-1, 1, (batch, 2))),
                    'noise': f32(rng.normal(size=(batch,) + tuple(image_shape)))},
          'weight': {k: f32(rng.normal(size=s)) for k, s in kernel_shapes.items()}}


KIND_KEYS = {'crop': ('crop_scale', 'crop_shift'), 'flip': ('flip',), 'translate': ('translate',),
             'noise': ('noise',)}


def jax_perturbation(models, teacher_params, d):
  """The numpy draws `d` as `train.draw_perturbation` returns them (ξ zero off the kernels)."""
  import jax.numpy as jnp
  from flax import traverse_util
  out = {}
  if models.loss.input_perturbation:
    keys = ['kind'] + [k for kind in models.loss.input_kinds for k in KIND_KEYS[kind]]
    out['input'] = {k: jnp.asarray(d['input'][k]) for k in keys}
  if models.loss.weight_perturbation:
    xi = {k: jnp.asarray(d['weight'][k]) if k in d['weight'] else jnp.zeros_like(v)
          for k, v in flat(teacher_params).items()}
    out['weight'] = traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in xi.items()})
  return out


def torch_given(spec, d, loss_cfg):
  import torch
  from ris_jax import convert
  t = lambda x: torch.from_numpy(np.ascontiguousarray(x))
  inp = dict(d['input'])
  inp = {'kind': int(inp['kind']), 'crop_scale': t(inp['crop_scale']), 'crop_shift': t(inp['crop_shift']),
         'flip': t(inp['flip']), 'translate': t(inp['translate']),
         'noise': t(inp['noise'].transpose(0, 3, 1, 2))}
  weight = {'model.' + spec.torch_key(tuple(k.split('/'))):
            t(convert._to_torch_layout(v, None if v.ndim != 2 else (v.shape[1], v.shape[0])))
            for k, v in d['weight'].items()}
  return {'z': t(d['z']), 'labels': t(d['labels'].astype(np.int64)), 'eta': t(d['eta']),
          'perturbation': {'input': inp, 'weight': weight}}


# ---------------------------------------------------------------------------- iteration
def jax_iteration(state, teacher_vars, z, labels, eta, perturbation, *, models,
                  update_student: bool, calibrate: bool):
  """`train.ris_step`'s iteration on given draws, returning also what it does not (gradients,
  soft labels). Returns (new state, record)."""
  import jax
  import jax.numpy as jnp
  import optax
  from ris_jax import perturb, train
  cfg = models.loss
  if cfg.soft_labels:
    targets = perturb.soft_labels_from_noise(eta, labels, models.num_classes, cfg.kappa,
                                             cfg.decorrelate_steps)
  else:
    targets = jax.nn.one_hot(labels, models.num_classes)
  gen_params = state.generator['params']
  (_, (images, t_logits, metrics)), g_grads = jax.value_and_grad(train.generator_loss, has_aux=True)(
      gen_params, models, state.generator['batch_stats'], teacher_vars, z, labels, targets, None,
      jnp.zeros(2), perturbation)
  updates, gen_opt = models.generator_tx.update(g_grads, state.generator_opt, gen_params)
  generator = {**state.generator, 'params': optax.apply_updates(gen_params, updates)}
  s_targets = targets if cfg.soft_labels else labels
  s_grads = None
  (tag,) = models.tags  # one student: the reference trains one
  images, t_logits = jax.lax.stop_gradient(images), jax.lax.stop_gradient(t_logits)
  params, opt_state, ranges = state.student[tag], state.student_opt[tag], state.quant_ranges[tag]
  if update_student:
    # train.student_step's update, with its gradient kept: taken once, since a second gradient
    # computation in the same program may round a quantizer near-tie the other way (seen: one
    # such copy 2 % off the gradient the update used).
    (_, (ranges, s_metrics)), s_grads = jax.value_and_grad(train.student_loss, has_aux=True)(
        params, models, teacher_vars, ranges, images, s_targets, t_logits, calibrate)
    updates, student_opt = models.student_tx.update(s_grads, opt_state, params)
    student = optax.apply_updates(params, updates)
  else:
    student, student_opt, ranges, s_metrics = train.student_step(
        params, opt_state, ranges, models, teacher_vars, images, s_targets, t_logits,
        update_student=False, calibrate=calibrate)
  metrics.update(s_metrics)
  new_state = state.replace(step=state.step + 1, generator=generator, generator_opt=gen_opt,
                            student={tag: student}, student_opt={tag: student_opt},
                            quant_ranges={tag: ranges})
  return new_state, {'metrics': metrics, 'targets': targets, 'images': images,
                     'teacher_logits': t_logits, 'generator_grads': g_grads, 'student_grads': s_grads}


def ris_step_draws(models, state, teacher_vars, batch: int, image_shape):
  """The draws `train.ris_step` makes from its key (its key plumbing, repeated here)."""
  import jax
  from ris_jax import train
  rng = jax.random.fold_in(state.rng, state.step)
  k_z, k_y, k_rob = jax.random.split(rng, 3)
  z = jax.random.normal(k_z, (batch, models.generator.latent_dim))
  k_labels, k_soft = jax.random.split(k_y)
  labels = jax.random.randint(k_labels, (batch,), 0, models.num_classes)
  eta = jax.random.normal(k_soft, (batch, models.num_classes))
  perturbation = train.draw_perturbation(models, teacher_vars, k_rob, (batch,) + tuple(image_shape))
  return z, labels, eta, perturbation


def config_for(case: str, arch: str, width: int, latent: int):
  from configs import default
  variant, bits = case.rsplit('_', 1)
  c = default.get_config()
  c.teacher.arch = arch
  c.quant.w_bits, c.quant.a_bits = BITS[bits]
  c.generator.width, c.generator.latent_dim = width, latent
  for k, v in VARIANTS[variant].items():
    c.loss[k] = v
  if variant == 'ait':
    from configs import _published
    _published.ait(c, 1e-3)
  return c


SCALARS = ('g_ce', 'g_bns', 'g_rob', 'feat_inconsistency', 'pred_inconsistency', 'g_loss',
           's_kd', 's_ce', 's_loss')


def run_case(case: str, arch: str = 'resnet8_digits', batch: int = 8, width: int = 16,
             latent: int = 16, seed: int = 0) -> Dict[str, float]:
  """The comparison of one case: ({quantity: max rel diff over the iterations}, notes:
  {'bias_before_bn_grad': see BIAS_BEFORE_BN, 'level_flips': the most activation elements
  (ReLU outputs of the student, after an iteration and, when it fine-tunes, before it, on that
  iteration's images) quantized to different levels by the two frameworks}))."""
  import jax
  import jax.numpy as jnp
  import torch
  from ris_jax import convert, gi, train
  from experiments.torch_reference import TorchRIS
  config = config_for(case, arch, width, latent)
  spec, torch_teacher = random_teacher(arch, seed)
  t_module = spec.module()
  t_vars = convert.torch_to_flax(spec, torch_teacher.state_dict())
  models, state = train.build(config, spec, t_module, t_vars)
  cfg, s = config.loss, spec.image_size // 4
  ref = TorchRIS(torch_teacher, spec.num_classes, spec.image_size, batch, 'gdfq', latent, width,
                 config.quant.w_bits, config.quant.a_bits, cfg.bns_weight, cfg.robust_weight,
                 cfg.weight_eps, cfg.noise_std, cfg.kappa, cfg.decorrelate_steps, cfg.kd_tau,
                 channels=spec.in_channels, soft_labels=cfg.soft_labels,
                 input_perturbation=cfg.input_perturbation,
                 weight_perturbation=cfg.weight_perturbation, input_kinds=cfg.input_kinds,
                 ema_momentum=config.quant.ema_momentum, generator_lr=config.generator.learning_rate,
                 generator_betas=(config.generator.b1, config.generator.b2),
                 student_lr=config.student.learning_rate, student_momentum=config.student.momentum,
                 student_weight_decay=config.student.weight_decay,
                 student_method=config.student.method, gi_threshold=config.student.gi_threshold)
  loaded = ref.generator.load_state_dict(generator_to_torch(state.generator['params'], s, width),
                                         strict=False)
  assert not loaded.unexpected_keys and all(k.split('.')[-1] in ('running_mean', 'running_var',
                                            'num_batches_tracked') for k in loaded.missing_keys), loaded
  (tag,) = models.tags
  student_of = lambda st: flat(st.student[tag])
  ranges_of = lambda st: flat(st.quant_ranges[tag])
  assert tree_rel_diff(student_of(state), student_from_torch(
      spec, dict(ref.student.named_parameters()), student_of(state))) == 0.0

  step = jax.jit(functools.partial(jax_iteration, models=models),
                 static_argnames=('update_student', 'calibrate'))
  ris_step = jax.jit(functools.partial(train.ris_step, models=models, batch_size=batch,
                                       mesh=train.make_mesh()),
                     static_argnames=('update_student', 'calibrate'))
  kernels = {k: v.shape for k, v in flat(t_vars['params']).items() if k.endswith('kernel')}
  rng = np.random.RandomState(1000 + seed)
  kind_offset = 2 if case.startswith('ris') else 0
  worst: Dict[str, float] = {}
  notes: Dict[str, float] = {}  # not relative differences: see BIAS_BEFORE_BN, level_flips
  note = lambda k, v: worst.__setitem__(k, max(worst.get(k, 0.0), v))
  forward = jax.jit(functools.partial(jax_activations, models.student))
  for i, (update_student, calibrate) in enumerate(AIT_PHASES if case.startswith('ait') else PHASES):
    d = draw(rng, batch, latent, spec.num_classes, spec.input_shape, kernels,
             (i + kind_offset) % len(cfg.input_kinds))
    phase = dict(update_student=update_student, calibrate=calibrate)
    old_gen, old_student = flat(state.generator['params']), student_of(state)

    # ris_step (jitted) = the composition below, given ris_step's own draws; in float64, since
    # it is one function computed by two XLA programs: in float32 their rounding differs, and a
    # near-zero ReLU / |·| / quantizer input decided the other way moves a gradient by up to 1e-2
    # (measured: Adam's first moment 9e-3 in ris_w4a4 while every loss agreed to 1e-6; float64:
    # 2.5e-15). The generator through Adam's first moment (its accumulated gradients): the
    # parameters take Adam's ±lr steps, whose sign on near-zero elements is rounding.
    with jax.enable_x64(True):
      state64, t_vars64 = to_float64(state), to_float64(t_vars)
      z_k, y_k, eta_k, pert_k = ris_step_draws(models, state64, t_vars64, batch, spec.input_shape)
      via_step, m_step = ris_step(state64, t_vars64, jnp.zeros(2), **phase)
      composed, rec_k = step(state64, t_vars64, z_k, y_k, eta_k, pert_k, **phase)
    note('ris_step_generator', max(
        tree_rel_diff(adam_first_moment(via_step.generator_opt),
                      adam_first_moment(composed.generator_opt), BIAS_BEFORE_BN),
        max(metric_rel_diff(k, m_step, rec_k['metrics']) for k in m_step if k.startswith('g_'))))
    note('ris_step_student', max(
        tree_rel_diff(student_of(via_step), student_of(composed)),
        tree_rel_diff(ranges_of(via_step), ranges_of(composed)),
        max(metric_rel_diff(k, m_step, rec_k['metrics']) for k in m_step if k.startswith('s_'))))

    before = (state, copy.deepcopy(ref.student))  # the students the gradients are taken at
    state, rec = step(state, t_vars, jnp.asarray(d['z']), jnp.asarray(d['labels']),
                      jnp.asarray(d['eta']), jax_perturbation(models, t_vars['params'], d), **phase)
    t_metrics = ref.step(update_student, calibrate, given=torch_given(spec, d, cfg))
    t_rec = ref.record
    for k in SCALARS:
      if k in t_metrics:
        note(k, metric_rel_diff(k, rec['metrics'], {k: v.numpy() for k, v in t_metrics.items()}))
    note('soft_labels', rel_diff(rec['targets'], t_rec['targets'].numpy()))
    note('images', rel_diff(rec['images'], t_rec['images'].numpy().transpose(0, 2, 3, 1)))
    note('teacher_logits', rel_diff(rec['teacher_logits'], t_rec['teacher_logits'].numpy()))
    gen_t = generator_from_torch(dict(ref.generator.named_parameters()), s, width)
    gen_j = flat(state.generator['params'])
    g_j = flat(rec['generator_grads'])
    g_t = generator_from_torch(t_rec['generator_grads'], s, width)
    note('generator_grads', tree_rel_diff(g_j, g_t, BIAS_BEFORE_BN))
    for g in (g_j, g_t):
      notes['bias_before_bn_grad'] = max(notes.get('bias_before_bn_grad', 0.0), max(
          float(np.max(np.abs(g[k]))) for k in BIAS_BEFORE_BN) / max(float(np.max(np.abs(v))) for v in g.values()))
    note('generator_params', tree_rel_diff(gen_j, gen_t, BIAS_BEFORE_BN))
    note('generator_update', tree_rel_diff({k: gen_j[k] - old_gen[k] for k in gen_j},
                                           {k: gen_t[k] - old_gen[k] for k in gen_j}, BIAS_BEFORE_BN))
    stu_j = student_of(state)
    stu_t = student_from_torch(spec, dict(ref.student.named_parameters()), stu_j)
    note('student_params', tree_rel_diff(stu_j, stu_t))
    if update_student:
      note('student_grads', tree_rel_diff(flat(rec['student_grads']),
                                          student_from_torch(spec, t_rec['student_grads'], stu_j)))
      if config.student.method == 'ait':  # AIT's α per quantized kernel, both frameworks
        by_name = {n: ref.student_opt.alpha_of[id(p)] for n, p in ref.student.named_parameters()
                   if id(p) in ref.student_opt.alpha_of}
        alphas = {k: float(v) for k, v in flat(gi.find_state(state.student_opt[tag]).alpha).items()
                  if k.endswith('kernel')}
        assert len(alphas) == len(by_name), (sorted(alphas), sorted(by_name))
        note('gi_alpha', max(abs(a - by_name[spec.torch_key(tuple(k.split('/')))]) / a
                             for k, a in alphas.items()))
      note('student_update', tree_rel_diff({k: stu_j[k] - old_student[k] for k in stu_j},
                                           {k: stu_t[k] - old_student[k] for k in stu_j}))
    ranges_j = {k: v for k, v in ranges_of(state).items() if not k.endswith('count')}
    note('activation_ranges', tree_rel_diff(ranges_j, ranges_from_torch(ref.student)))
    # Both students after the iteration, on the same images (ris_jax's): quantization level flips.
    # Level flips also in the students the gradients were taken at (before the update, with the
    # ranges that step used; fine-tuning phases): a flip there moves student_grads without
    # showing after the step.
    images = np.asarray(rec['images'])
    pairs = ([before + (False,)] if update_student else []) + [(state, ref.student, True)]
    for st, torch_student, after in pairs:
      logits_j, acts_j = forward(train.student_variables(st, t_vars), images)
      logits_t, acts_t = torch_activations(torch_student, images)
      flips, unflipped = level_flips({k: np.asarray(v) for k, v in acts_j.items()}, acts_t,
                                     ranges_of(st), config.quant.a_bits)
      notes['level_flips'] = max(notes.get('level_flips', 0), flips)
      if after:
        note('activations_without_flips', unflipped)
        note('student_logits_same_images', rel_diff(logits_j, logits_t))
  return worst, notes


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cases', default=','.join(CASES), help=f'comma-separated of {CASES}')
  parser.add_argument('--arch', default='resnet8_digits')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  cases = args.cases.split(',')
  unknown = sorted(set(cases) - set(CASES))
  if unknown:
    parser.error(f'unknown cases {unknown}; known: {CASES}')
  overall = 0.0
  for case in cases:
    worst, notes = run_case(case, args.arch, args.batch, seed=args.seed)
    overall = max(overall, max(worst.values()))
    print(json.dumps({'case': case, **{k: float(f'{v:.3g}') for k, v in worst.items()},
                      'notes': {k: float(f'{v:.3g}') for k, v in notes.items()}}), flush=True)
  print(json.dumps({'cases': len(cases), 'max_rel_diff': float(f'{overall:.3g}')}))


if __name__ == '__main__':
  main()

"""A PyTorch reference of one RIS iteration, written from docs/method.md (the speed baseline of
issue 6; see experiments/bench_step.py).

It mirrors ris_jax's formulation choice by choice: GDFQ generator (BN eps 0.8 in two layers,
non-affine final BN; conditional-BN generator for ImageNet), frozen pytorchcv teacher in eval
mode with BN-statistics taps (forward hooks), robustness loss (one random input perturbation
from {crop, flip, translate, noise} + relative Gaussian weight noise on conv/dense weights via
torch.func.functional_call; 1 − cos on pooled features + L1 on softmax outputs), decorrelated
soft labels, the fake-quantized student (per-output-channel weight quantizer, per-tensor
activation quantizer after every ReLU, plain STE through a torch.autograd.Function), KD
(τ = 20, 'mean' reduction) + CE, Adam(1e-3, betas 0.5/0.999) for the generator and SGD
Nesterov for the student; or (student_method='ait') AIT's student step: KL only, no weight
decay, gradient inflation (`GISGD`, restated from ../shared/docs/ait.md §2) on the conv / linear
weights.

Usage:
    ref = TorchRIS(teacher, num_classes=10, image_size=32, batch_size=64)
    ref.calibrate(n)            # EMA activation ranges on n generator batches
    metrics = ref.step()        # one iteration (generator step then student step)
    metrics = ref.step(given=draws)  # the same, on given randomness (check_reference.py)
"""
from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

INPUT_PERTURBATIONS = ('crop', 'flip', 'translate', 'noise')


# ----------------------------------------------------------------------------------- generator
def _upsample2(x):
  return F.interpolate(x, scale_factor=2, mode='nearest')


class GDFQGenerator(nn.Module):
  """h = z ⊙ (ỹ·E); Linear → (128, s, s) → BN → [×2 → conv 128 → BN(eps 0.8) → LeakyReLU 0.2]
  → [×2 → conv 64 → BN(eps 0.8) → LeakyReLU 0.2] → conv → tanh → BN without affine."""

  def __init__(self, num_classes: int, image_size: int = 32, channels: int = 3,
               latent_dim: int = 100, width: int = 128):
    super().__init__()
    self.s, self.width = image_size // 4, width
    self.label_embedding = nn.Parameter(torch.randn(num_classes, latent_dim))
    self.fc = nn.Linear(latent_dim, width * self.s * self.s)
    self.bn0 = nn.BatchNorm2d(width)
    self.conv1 = nn.Conv2d(width, width, 3, padding=1)
    self.bn1 = nn.BatchNorm2d(width, eps=0.8)
    self.conv2 = nn.Conv2d(width, width // 2, 3, padding=1)
    self.bn2 = nn.BatchNorm2d(width // 2, eps=0.8)
    self.conv3 = nn.Conv2d(width // 2, channels, 3, padding=1)
    self.bn_out = nn.BatchNorm2d(channels, affine=False)
    self.memory_format = torch.contiguous_format

  def forward(self, z, soft_labels):
    h = z * (soft_labels @ self.label_embedding)
    h = self.fc(h).view(-1, self.width, self.s, self.s).contiguous(memory_format=self.memory_format)
    h = self.bn0(h)
    h = F.leaky_relu(self.bn1(self.conv1(_upsample2(h))), 0.2)
    h = F.leaky_relu(self.bn2(self.conv2(_upsample2(h))), 0.2)
    return self.bn_out(torch.tanh(self.conv3(h)))


class ConditionalBN(nn.Module):
  """Non-affine BN, then per-class scale/shift mixed by the soft labels."""

  def __init__(self, num_classes: int, channels: int, eps: float = 1e-5):
    super().__init__()
    self.bn = nn.BatchNorm2d(channels, eps=eps, affine=False)
    self.class_scale = nn.Parameter(torch.ones(num_classes, channels))
    self.class_shift = nn.Parameter(torch.zeros(num_classes, channels))

  def forward(self, x, soft_labels):
    x = self.bn(x)
    return (x * (soft_labels @ self.class_scale)[:, :, None, None]
            + (soft_labels @ self.class_shift)[:, :, None, None])


class ConditionalBNGenerator(nn.Module):
  """The ImageNet generator: Linear on z alone, conditional BN in all three BN layers."""

  def __init__(self, num_classes: int, image_size: int = 224, channels: int = 3,
               latent_dim: int = 100, width: int = 128):
    super().__init__()
    self.s, self.width = image_size // 4, width
    self.fc = nn.Linear(latent_dim, width * self.s * self.s)
    self.cbn0 = ConditionalBN(num_classes, width)
    self.conv1 = nn.Conv2d(width, width, 3, padding=1)
    self.cbn1 = ConditionalBN(num_classes, width, 0.8)
    self.conv2 = nn.Conv2d(width, width // 2, 3, padding=1)
    self.cbn2 = ConditionalBN(num_classes, width // 2, 0.8)
    self.conv3 = nn.Conv2d(width // 2, channels, 3, padding=1)
    self.bn_out = nn.BatchNorm2d(channels, affine=False)
    self.memory_format = torch.contiguous_format

  def forward(self, z, soft_labels):
    h = self.fc(z).view(-1, self.width, self.s, self.s).contiguous(memory_format=self.memory_format)
    h = self.cbn0(h, soft_labels)
    h = F.leaky_relu(self.cbn1(self.conv1(_upsample2(h)), soft_labels), 0.2)
    h = F.leaky_relu(self.cbn2(self.conv2(_upsample2(h)), soft_labels), 0.2)
    return self.bn_out(torch.tanh(self.conv3(h)))


# ------------------------------------------------------------------------------------ quantizer
def quantize(x, lo, hi, bits: int):
  """method.md: s = (2^k − 1)/max(hi − lo, 1e-8), zp = round(s·lo) + 2^(k−1),
  q = clip(round(s·x − zp), −2^(k−1), 2^(k−1) − 1), x̂ = (q + zp)/s."""
  half = 2.0 ** (bits - 1)
  scale = (2.0 ** bits - 1.0) / torch.clamp(hi - lo, min=1e-8)
  zero_point = torch.round(scale * lo) + half
  q = torch.clamp(torch.round(scale * x - zero_point), -half, half - 1.0)
  return (q + zero_point) / scale


class FakeQuantSTE(torch.autograd.Function):
  """Quantize-dequantize; backward = identity (plain straight-through), no grad to lo/hi."""

  @staticmethod
  def forward(ctx, x, lo, hi, bits):
    return quantize(x, lo, hi, bits)

  @staticmethod
  def backward(ctx, g):
    return g, None, None, None


def _weight_fake_quant(w, bits):
  dims = tuple(range(1, w.dim()))  # all but the output channel (dim 0 in PyTorch layout)
  lo = w.detach().amin(dim=dims, keepdim=True)
  hi = w.detach().amax(dim=dims, keepdim=True)
  return FakeQuantSTE.apply(w, lo, hi, bits)


class QConv2d(nn.Conv2d):
  bits = 4

  def forward(self, x):
    return self._conv_forward(x, _weight_fake_quant(self.weight, self.bits), self.bias)


class QLinear(nn.Linear):
  bits = 4

  def forward(self, x):
    return F.linear(x, _weight_fake_quant(self.weight, self.bits), self.bias)


class QReLU(nn.Module):
  """ReLU then the per-tensor activation quantizer; range = EMA (momentum) of batch min/max
  while `calibrating`, frozen otherwise; unquantized until calibrated once."""

  def __init__(self, bits: int, momentum: float = 0.9):
    super().__init__()
    self.bits, self.momentum, self.calibrating, self.count = bits, momentum, False, 0
    self.register_buffer('lo', torch.zeros(()))
    self.register_buffer('hi', torch.zeros(()))

  def forward(self, x):
    y = F.relu(x)
    if self.calibrating:
      blo, bhi = y.detach().min(), y.detach().max()
      if self.count == 0:
        self.lo.copy_(blo), self.hi.copy_(bhi)
      else:
        self.lo.mul_(self.momentum).add_((1 - self.momentum) * blo)
        self.hi.mul_(self.momentum).add_((1 - self.momentum) * bhi)
      self.count += 1
    if self.count == 0:
      return y
    return FakeQuantSTE.apply(y, self.lo, self.hi, self.bits)


# ----------------------------------------------------------------- AIT's gradient inflation (GI)
def weight_codes(w, bits: int):
  """Integer codes of a PyTorch-layout weight (output channel first), range per output channel."""
  flat = w.reshape(w.shape[0], -1)
  shape = (-1,) + (1,) * (w.dim() - 1)
  lo, hi = flat.min(dim=1).values.view(shape), flat.max(dim=1).values.view(shape)
  half = 2.0 ** (bits - 1)
  scale = (2.0 ** bits - 1.0) / torch.clamp(hi - lo, min=1e-8)
  zero_point = torch.round(scale * lo) + half
  return torch.clamp(torch.round(scale * w - zero_point), -half, half - 1.0)


def flip_ratio(w, direction, step, bits: int):
  """r = #{codes of w − step·direction ≠ codes of w} / numel (each with its own range)."""
  changed = weight_codes(w - step * direction, bits) != weight_codes(w, bits)
  return torch.count_nonzero(changed).item() / w.numel()


class GISGD(torch.optim.Optimizer):
  """AIT's GI (ait.md §2), restated: Nesterov SGD whose step on each parameter of a group with
  `bits` is scaled by α, searched so that about a fraction `threshold` of the integer codes
  change (doubling, capped at α > 100 while `capped`, then ≤ `search_iters` bisections with the
  τ/100 early exit); groups without `bits` take the plain step. `max_doublings` bounds the
  doubling (as ris_jax does). After `step()`: `alphas`, `ratios`, `evaluations` per GI tensor
  (in order) and `alpha_of` {id(parameter): α}."""

  def __init__(self, params, lr, momentum=0.9, threshold=1e-3, search_iters=5, max_doublings=60):
    super().__init__(params, dict(lr=lr, momentum=momentum, bits=None))
    self.threshold, self.search_iters, self.max_doublings = threshold, search_iters, max_doublings
    self.capped = True

  def search(self, w, d, lr, bits):
    tau, evaluations = self.threshold, 1
    ratio = lambda a: flip_ratio(w, d, a * lr, bits)
    alpha, r = 1.0, ratio(1.0)
    if r >= tau:
      return alpha, r, evaluations
    doublings = 0
    while True:
      alpha, doublings = alpha * 2, doublings + 1
      r, evaluations = ratio(alpha), evaluations + 1
      if r >= tau or (self.capped and alpha > 100) or doublings >= self.max_doublings:
        break
    lo, hi = alpha / 2, alpha
    for _ in range(self.search_iters):
      mid = (lo + hi) / 2
      r, evaluations = ratio(mid), evaluations + 1
      if abs(r - tau) < tau / 100:
        break
      if r < tau:
        lo = mid
      else:
        hi = mid
    return mid, r, evaluations

  @torch.no_grad()
  def step(self):
    self.alphas, self.ratios, self.evaluations, self.alpha_of = [], [], [], {}
    for group in self.param_groups:
      mu, lr = group['momentum'], group['lr']
      for p in group['params']:
        if p.grad is None:
          continue
        state = self.state[p]
        buf = p.grad.clone() if 'momentum_buffer' not in state else mu * state['momentum_buffer'] + p.grad
        d = p.grad + mu * buf
        alpha = 1.0
        if group['bits'] is not None:
          alpha, r, n = self.search(p, d, lr, group['bits'])
          self.alphas.append(alpha), self.ratios.append(r), self.evaluations.append(n)
          self.alpha_of[id(p)] = alpha
        state['momentum_buffer'] = buf
        # the applied step as torch.optim.SGD (and AIT's gisgd) computes it: g + μ·b fused
        p.add_(p.grad.add(buf, alpha=mu), alpha=-lr * alpha)


def make_student(teacher: nn.Module, w_bits: int, a_bits: int, momentum: float = 0.9) -> nn.Module:
  """A fake-quantized copy of the teacher: every Conv2d/Linear weight quantized per output
  channel, every ReLU followed by a per-tensor activation quantizer; BN in eval mode with the
  teacher's running statistics, its scale/offset trainable."""
  student = copy.deepcopy(teacher)

  def swap(module):
    for name, child in module.named_children():
      if isinstance(child, nn.Conv2d):
        child.__class__ = QConv2d
        child.bits = w_bits
      elif isinstance(child, nn.Linear):
        child.__class__ = QLinear
        child.bits = w_bits
      elif isinstance(child, (nn.ReLU, nn.ReLU6)):
        if isinstance(child, nn.ReLU6):
          raise NotImplementedError('ReLU6 students are not part of the benchmark')
        setattr(module, name, QReLU(a_bits, momentum))
      else:
        swap(child)
  swap(student)
  for p in student.parameters():
    p.requires_grad_(True)
  return student.eval()


# ------------------------------------------------------------------------------------- teacher
class TeacherTaps(nn.Module):
  """Wraps a pytorchcv classifier (`features` ending in a pool, `output`): returns (logits,
  pooled features); while `self.tapping`, forward hooks record each BN input's batch mean and
  biased variance over (N, H, W)."""

  def __init__(self, model: nn.Module):
    super().__init__()
    self.model = model
    self.tapping = False
    self.bn_stats: List = []
    self.bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in self.bns:
      bn.register_forward_hook(self._hook)

  def _hook(self, module, inputs, output):
    if self.tapping:
      x = inputs[0]
      mean = x.mean(dim=(0, 2, 3))
      var = (x - mean[None, :, None, None]).square().mean(dim=(0, 2, 3))
      self.bn_stats.append((mean, var, module.running_mean, module.running_var))

  def forward(self, x):
    pooled = self.model.features(x).flatten(1)
    return self.model.output(pooled), pooled


# -------------------------------------------------------------------------------- perturbations
def _interpolation_matrix(size, scale, shift):
  out = torch.arange(size, dtype=torch.float32) + 0.5
  src = (out[None, :] - size / 2 - shift[:, None]) / scale[:, None] + size / 2 - 0.5
  return F.relu(1.0 - (src[:, :, None] - torch.arange(size, dtype=torch.float32)[None, None, :]).abs())


def _resample(images, scale, shift):
  rows = _interpolation_matrix(images.shape[2], scale, shift[:, 0])
  cols = _interpolation_matrix(images.shape[3], scale, shift[:, 1])
  return torch.einsum('bih,bchw,bjw->bcij', rows, images, cols)


def random_crop(images, min_scale=0.6, scale_u=None, shift_u=None):
  """Random resized crop: area scale u ~ U(min_scale, 1), zoom 1/√u, position shift_u ~ U(−1, 1)²
  times the room that keeps the crop inside the image (drawn here unless given)."""
  b, h = images.shape[0], images.shape[2]
  scale_u = torch.empty(b).uniform_(min_scale, 1.0) if scale_u is None else scale_u
  shift_u = torch.empty(b, 2).uniform_(-1.0, 1.0) if shift_u is None else shift_u
  zoom = 1.0 / torch.sqrt(scale_u)
  room = (zoom - 1.0)[:, None] * h / 2
  return _resample(images, zoom, shift_u * room)


def random_flip(images, flip=None):
  flip = torch.rand(images.shape[0]) < 0.5 if flip is None else flip
  return torch.where(flip[:, None, None, None], images.flip(3), images)


def random_translate(images, max_fraction=0.125, shift_u=None):
  b, h = images.shape[0], images.shape[2]
  shift_u = torch.empty(b, 2).uniform_(-1.0, 1.0) if shift_u is None else shift_u
  return _resample(images, torch.ones(b), shift_u * max_fraction * h)


def perturb_input(images, kinds: Sequence[str] = INPUT_PERTURBATIONS, noise_std=0.1, drawn=None):
  """x̃ = A(x), A uniform over `kinds`; `drawn` (optional) gives the draws: 'kind' (index into
  kinds), 'crop_scale' (B,), 'crop_shift' (B, 2), 'flip' (B,) bool, 'translate' (B, 2),
  'noise' (B, C, H, W)."""
  d = drawn or {}
  kind = kinds[int(d['kind']) if 'kind' in d else int(torch.randint(len(kinds), ()))]
  if kind == 'crop':
    return random_crop(images, scale_u=d.get('crop_scale'), shift_u=d.get('crop_shift'))
  if kind == 'flip':
    return random_flip(images, d.get('flip'))
  if kind == 'translate':
    return random_translate(images, shift_u=d.get('translate'))
  noise = torch.randn_like(images) if d.get('noise') is None else d['noise']
  return images + noise_std * noise


def perturb_weights(params: Dict[str, torch.Tensor], kernel_names, eps: float, noise=None):
  """θ̃ = θ + ε·|θ| ⊙ ξ on conv/dense weights (BN and biases untouched); ξ ~ N(0, I), or
  `noise` (name → tensor) when given."""
  noise = noise or {}
  return {k: (v + eps * v.abs() * (noise[k] if k in noise else torch.randn_like(v))
              if k in kernel_names else v)
          for k, v in params.items()}


def label_correlation_penalty(probs):
  centered = probs - probs.mean(-1, keepdim=True)
  normed = centered / centered.norm(dim=-1, keepdim=True).clamp(min=1e-8)
  c = normed @ normed.T
  b = c.shape[0]
  off = c * (1.0 - torch.eye(b))
  return off.square().sum() / (b * (b - 1))


def soft_labels(labels, num_classes, kappa=3.0, decorrelate_steps=3, step_size=1.0, eta=None):
  """ỹ = softmax(κ·onehot(y) + η), η ~ N(0, I) (or the given `eta` (B, C)), after
  `decorrelate_steps` normalized gradient steps on η lowering the label correlation penalty."""
  logits0 = kappa * F.one_hot(labels, num_classes).float()
  eta = torch.randn_like(logits0) if eta is None else eta.clone()
  penalty = lambda e: label_correlation_penalty(F.softmax(logits0 + e, -1))
  with torch.no_grad():
    best, best_value = eta, penalty(eta)
  for _ in range(decorrelate_steps):
    eta.requires_grad_(True)
    g, = torch.autograd.grad(penalty(eta), eta)
    eta = (eta - step_size * g / g.square().mean().sqrt().clamp(min=1e-12)).detach()
    with torch.no_grad():  # keep the best iterate (as ris_jax.perturb.soft_labels)
      value = penalty(eta)
      best = torch.where(value < best_value, eta, best)
      best_value = torch.minimum(value, best_value)
  return F.softmax(logits0 + best, -1).detach()


# ---------------------------------------------------------------------------------------- losses
def cosine_inconsistency(f, g):
  den = (f.norm(dim=-1) * g.norm(dim=-1)).clamp(min=1e-8)
  return (1.0 - (f * g).sum(-1) / den).mean()


def prediction_inconsistency(logits, perturbed):
  return (F.softmax(logits, -1) - F.softmax(perturbed, -1)).abs().sum(-1).mean()


def cross_entropy(logits, targets):
  """CE with int labels (B,) or soft labels (B, C), batch mean."""
  return F.cross_entropy(logits, targets)


def bn_statistics_loss(stats):
  terms = [(m - rm).square().mean() + (v - rv).square().mean() for m, v, rm, rv in stats]
  return sum(terms) / len(terms)


def kd_loss(student_logits, teacher_logits, tau=20.0):
  """τ²·KL(softmax(T/τ) ‖ softmax(Q/τ)), KL averaged over all B·C elements ('mean')."""
  log_p = F.log_softmax(teacher_logits / tau, -1)
  log_q = F.log_softmax(student_logits / tau, -1)
  return tau ** 2 * (log_p.exp() * (log_p - log_q)).sum() / student_logits.numel()


# ----------------------------------------------------------------------------------- iteration
class TorchRIS:
  """Teacher, generator, student, optimizers; `step()` runs one RIS iteration.

  The loss switches are method.md's ablation flags: `soft_labels` (else one-hot labels, GDFQ),
  `robust_weight` (0: no robustness term), `input_perturbation`, `weight_perturbation`."""

  def __init__(self, teacher: nn.Module, num_classes: int, image_size: int, batch_size: int,
               generator_kind: str = 'gdfq', latent_dim: int = 100, width: int = 128,
               w_bits: int = 4, a_bits: int = 4, bns_weight: float = 0.1,
               robust_weight: float = 1.0, weight_eps: float = 0.05, noise_std: float = 0.1,
               kappa: float = 3.0, decorrelate_steps: int = 3, kd_tau: float = 20.0,
               channels_last: bool = False, channels: int = 3, soft_labels: bool = True,
               input_perturbation: bool = True, weight_perturbation: bool = True,
               input_kinds: Sequence[str] = INPUT_PERTURBATIONS, ema_momentum: float = 0.9,
               generator_lr: float = 1e-3, generator_betas=(0.5, 0.999), student_lr: float = 1e-4,
               student_momentum: float = 0.9, student_weight_decay: float = 1e-4,
               student_method: str = 'gdfq', gi_threshold: float = 1e-3):
    self.num_classes, self.batch_size, self.latent_dim = num_classes, batch_size, latent_dim
    self.bns_weight, self.robust_weight, self.weight_eps = bns_weight, robust_weight, weight_eps
    self.noise_std, self.kappa, self.decorrelate_steps, self.kd_tau = (
        noise_std, kappa, decorrelate_steps, kd_tau)
    self.soft_labels, self.input_perturbation = soft_labels, input_perturbation
    self.weight_perturbation, self.input_kinds = weight_perturbation, tuple(input_kinds)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    teacher = copy.deepcopy(teacher).eval()  # the caller's model is left as it was
    for p in teacher.parameters():
      p.requires_grad_(False)
    self.student = make_student(teacher, w_bits, a_bits, ema_momentum).to(memory_format=fmt)
    self.teacher = TeacherTaps(teacher.to(memory_format=fmt)).eval()
    gen_cls = {'gdfq': GDFQGenerator, 'conditional_bn': ConditionalBNGenerator}[generator_kind]
    self.generator = gen_cls(num_classes, image_size, channels, latent_dim, width).to(memory_format=fmt)
    self.generator.memory_format = fmt
    self.generator.train()
    self.generator_opt = torch.optim.Adam(self.generator.parameters(), lr=generator_lr,
                                          betas=tuple(generator_betas))
    self.student_method = student_method
    if student_method == 'ait':  # KL only, no weight decay, GI on the conv / linear weights
      kernels = [m.weight for m in self.student.modules() if isinstance(m, (QConv2d, QLinear))]
      ids = {id(k) for k in kernels}
      self.student_opt = GISGD([{'params': kernels, 'bits': w_bits},
                                {'params': [p for p in self.student.parameters() if id(p) not in ids]}],
                               lr=student_lr, momentum=student_momentum, threshold=gi_threshold)
    else:
      self.student_opt = torch.optim.SGD(self.student.parameters(), lr=student_lr,
                                         momentum=student_momentum, nesterov=True,
                                         weight_decay=student_weight_decay)
    self.teacher_params = dict(self.teacher.named_parameters())
    self.teacher_buffers = dict(self.teacher.named_buffers())
    self.kernel_names = {f'{n}.weight' for n, m in self.teacher.named_modules()
                         if isinstance(m, (nn.Conv2d, nn.Linear))}
    self.qrelus = [m for m in self.student.modules() if isinstance(m, QReLU)]

  def sample(self):
    """z (B, latent), labels (B,) and the generator's conditioning: soft labels or one-hot."""
    z = torch.randn(self.batch_size, self.latent_dim)
    labels = torch.randint(self.num_classes, (self.batch_size,))
    return z, labels, self.targets(labels)

  def targets(self, labels, eta=None):
    if self.soft_labels:
      return soft_labels(labels, self.num_classes, self.kappa, self.decorrelate_steps, eta=eta)
    return F.one_hot(labels, self.num_classes).float()

  def generator_loss(self, z, labels, targets, drawn=None):
    """L_G = CE + β·BNS + λ_r·(L_feat + L_pred); `drawn` (optional): {'input': draws of
    `perturb_input`, 'weight': {teacher parameter name: ξ}}."""
    drawn = drawn or {}
    images = self.generator(z, targets)
    self.teacher.bn_stats, self.teacher.tapping = [], True
    logits, features = self.teacher(images)
    self.teacher.tapping = False
    ce = cross_entropy(logits, targets if self.soft_labels else labels)
    bns = bn_statistics_loss(self.teacher.bn_stats)
    self.teacher.bn_stats = []
    total = ce + self.bns_weight * bns
    metrics = {'g_ce': ce, 'g_bns': bns}
    if self.robust_weight:
      x = images
      if self.input_perturbation:
        x = perturb_input(images, self.input_kinds, self.noise_std, drawn.get('input'))
      params = self.teacher_params
      if self.weight_perturbation:
        params = perturb_weights(params, self.kernel_names, self.weight_eps, drawn.get('weight'))
      p_logits, p_features = functional_call(self.teacher, {**params, **self.teacher_buffers}, (x,))
      feat = cosine_inconsistency(features, p_features)
      pred = prediction_inconsistency(logits, p_logits)
      rob = feat + pred
      total = total + self.robust_weight * rob
      metrics.update(g_rob=rob, feat_inconsistency=feat, pred_inconsistency=pred)
    metrics['g_loss'] = total
    return total, images, logits, metrics

  def student_loss(self, images, targets, teacher_logits):
    """KD + CE on the labels the images were generated for (the soft ones under RIS)."""
    logits = self.student(images)
    kd = kd_loss(logits, teacher_logits, self.kd_tau)
    ce = cross_entropy(logits, targets)
    total = kd if self.student_method == 'ait' else kd + ce
    return total, {'s_loss': total, 's_kd': kd, 's_ce': ce}

  def step(self, update_student: bool = True, calibrate: bool = False, given=None):
    """One iteration. `given` (optional): the iteration's randomness, {'z', 'labels', 'eta'
    (soft labels' η), 'perturbation' (see `generator_loss`)}. Returns the metrics; with
    `given`, also the soft labels, images, teacher logits and both gradients (`self.record`)."""
    if given is None:
      z, labels, targets = self.sample()
    else:
      z, labels = given['z'], given['labels']
      targets = self.targets(labels, given.get('eta'))
    self.generator_opt.zero_grad(set_to_none=True)
    total, images, t_logits, metrics = self.generator_loss(
        z, labels, targets, None if given is None else given.get('perturbation'))
    total.backward()
    record = given is not None  # (not while benchmarking: cloning gradients costs time)
    generator_grads = ({n: p.grad.detach().clone() for n, p in self.generator.named_parameters()}
                       if record else None)
    self.generator_opt.step()
    images, t_logits = images.detach(), t_logits.detach()
    s_targets = targets if self.soft_labels else labels
    for q in self.qrelus:
      q.calibrating = calibrate
    student_grads = None
    if update_student:
      self.student_opt.zero_grad(set_to_none=True)
      s_total, s_metrics = self.student_loss(images, s_targets, t_logits)
      s_total.backward()
      if record:
        student_grads = {n: p.grad.detach().clone() for n, p in self.student.named_parameters()}
      self.student_opt.step()
    else:
      with torch.no_grad():
        _, s_metrics = self.student_loss(images, s_targets, t_logits)
    for q in self.qrelus:
      q.calibrating = False
    metrics.update(s_metrics)
    metrics = {k: v.detach() for k, v in metrics.items()}
    if record:
      self.record = {'targets': targets, 'images': images, 'teacher_logits': t_logits,
                     'generator_grads': generator_grads, 'student_grads': student_grads}
    return metrics

  def calibrate(self, steps: int = 1):
    """Warm-up iterations (student frozen, activation ranges calibrating)."""
    for _ in range(steps):
      self.step(update_student=False, calibrate=True)

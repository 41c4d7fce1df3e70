"""Export a fake-quantized student to PyTorch.

    python -m ris_jax.export --workdir W --out DIR [--bits w4a4]

Writes two files to DIR (a run of several students, `--config.quant.bits=w4a4,w3a3`: the one
named by `--bits`, or without it each student into DIR/<bits>/):

* `student_state_dict.pth`: `{'state_dict': sd, 'quantization': q}` (read it with
  `torch.load(path)`, `weights_only=True` works). `sd` is a pytorchcv-named state dict that
  loads with `strict=True` into the original pytorchcv model
  (`model.load_state_dict(torch.load(path)['state_dict'])`); every conv/dense weight is on its
  quantization grid (the fake-quantized value, at most 2^bits levels per output channel).
  The state dict is wrapped rather than extended because a `quantization` key inside it would
  break strict loading; `ris_jax.convert.read_torch_state_dict` unwraps it.
  `q` holds:
    - 'weights': per torch weight key {'bits', 'axis' (0, the output channel), 'lo', 'hi',
      'scale', 'zero_point'} (per-channel float32 tensors);
    - 'activations': per torch activation module (e.g. 'features.stage1.unit1.activ', the
      ReLU/ReLU6 whose output is quantized) {'bits', 'fn', 'lo', 'hi', 'scale', 'zero_point',
      'calibrated'} (per-tensor floats; an uncalibrated quantizer passes values through, as
      in ris_jax);
    - 'formula', 'arch', 'w_bits', 'a_bits', 'first_last_bits', 'input_layout' ('NCHW').
  Quantizer: s = (2^k − 1)/max(hi − lo, 1e-8), zp = round(s·lo) + 2^(k−1),
  q = clip(round(s·x − zp), −2^(k−1), 2^(k−1) − 1), x̂ = (q + zp)/s, half-to-even rounding;
  weights are computed with exact float32 division, so w = (q + zp)/s holds bit for bit (the
  jitted JAX student may differ by ≤ 2 ulp: XLA multiplies by reciprocals).
* `student.pt2`: a `torch.export` program of the whole fake-quantized student (quantized
  weights, activation fake-quant after every ReLU/ReLU6 with the frozen ranges, global
  average pool), NCHW float32 input of any batch size:
  `torch.export.load(path).module()(x)`; it needs nothing of ris_jax. Flax activations map
  to pytorchcv modules by name (`stage1_unit1/body/conv1/Activation_0` →
  `features.stage1.unit1.body.conv1.activ`); the module walking happens only here.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Mapping, Tuple

import flax
import jax
import numpy as np

from ris_jax import convert, quant, student
from ris_jax.errors import UserError, cli_entry, exit_with_error
from ris_jax.models import ArchSpec

STATE_DICT_FILE = 'student_state_dict.pth'
PROGRAM_FILE = 'student.pt2'
FORMULA = ('s = (2^k - 1) / max(hi - lo, 1e-8); zp = round(s*lo) + 2^(k-1); '
           'q = clip(round(s*x - zp), -2^(k-1), 2^(k-1) - 1); x_hat = (q + zp) / s; '
           'round = half-to-even')


def scale_zero_point(lo, hi, bits: int) -> Tuple[np.ndarray, np.ndarray]:
  """float32 (scale, zero point) of the quantizer for [lo, hi], computed as `quant._quantize`."""
  lo = np.asarray(lo, np.float32)
  hi = np.asarray(hi, np.float32)
  scale = np.float32(2.0 ** bits - 1.0) / np.maximum(hi - lo, np.float32(1e-8))
  zero_point = np.round(scale * lo) + np.float32(2.0 ** (bits - 1))
  return scale.astype(np.float32), zero_point.astype(np.float32)


def fake_quant_np(x, lo, hi, bits: int) -> np.ndarray:
  """The quantizer formula in float32 numpy, division exact (XLA under `jit` may use
  reciprocals instead, a few ulp off): what a PyTorch user recomputes from scale and zp."""
  scale, zero_point = scale_zero_point(lo, hi, bits)
  half = np.float32(2.0 ** (bits - 1))
  q = np.clip(np.round(scale * np.asarray(x, np.float32) - zero_point), -half, half - 1)
  return ((q + zero_point) / scale).astype(np.float32)


def _get(tree, path):
  for name in path:
    if name not in tree:
      raise UserError(f"student variables lack {'/'.join(path)}")
    tree = tree[name]
  return tree


def _torch_prefix(spec: ArchSpec, module_path: Tuple[str, ...]) -> str:
  """Torch module name of a Flax module path (via the arch's key mapping)."""
  key = spec.torch_key(tuple(module_path) + ('kernel',))
  return key[:-len('.weight')]


def _activation_name(spec: ArchSpec, path: Tuple[str, ...]) -> str:
  """Flax Activation path → torch module name (the arch's `torch_activation` mapping)."""
  try:
    return spec.torch_activation(tuple(path))
  except ValueError as e:
    raise UserError(str(e)) from None


def quantized_student(spec: ArchSpec, qspec, variables: Mapping[str, Any]):
  """(state dict with weights on their grid, quantization entry) of a student."""
  import torch
  kernels, acts = student.quantizers(spec.module(qspec.ops()), spec.input_shape)
  params = jax.tree.map(np.asarray, flax.core.unfreeze(variables['params']))
  q_weights = {}
  for path, quantizer in sorted(kernels.items()):
    if not isinstance(quantizer, quant.WeightQuantizer):
      raise UserError(f"cannot export kernel quantizer {type(quantizer).__name__} of "
                      f"{'/'.join(path)}")
    kernel = np.asarray(_get(params, path + ('kernel',)), np.float32)
    axes = tuple(range(kernel.ndim - 1))
    lo, hi = kernel.min(axis=axes), kernel.max(axis=axes)
    _get(params, path)['kernel'] = fake_quant_np(kernel, lo, hi, quantizer.bits)
    scale, zp = scale_zero_point(lo, hi, quantizer.bits)
    q_weights[spec.torch_key(path + ('kernel',))] = {
        'bits': int(quantizer.bits), 'axis': 0, 'lo': torch.from_numpy(lo),
        'hi': torch.from_numpy(hi), 'scale': torch.from_numpy(scale),
        'zero_point': torch.from_numpy(zp)}
  state_dict = convert.flax_to_torch(spec, {'params': params,
                                            'batch_stats': variables['batch_stats']})
  q_acts = {}
  for path, act in sorted(acts.items()):
    name = _activation_name(spec, path)
    quantizer = act.quantizer
    if quantizer is None:
      continue
    ranges = _get(variables['quant_ranges'], path)
    lo, hi = np.float32(ranges['lo']), np.float32(ranges['hi'])
    scale, zp = scale_zero_point(lo, hi, quantizer.bits)
    q_acts[name] = {'bits': int(quantizer.bits), 'fn': act.fn, 'lo': float(lo), 'hi': float(hi),
                    'scale': float(scale), 'zero_point': float(zp),
                    'calibrated': bool(int(ranges['count']) > 0)}
  quantization = {'formula': FORMULA, 'arch': spec.name, 'w_bits': int(qspec.w_bits),
                  'a_bits': int(qspec.a_bits),
                  'first_last_bits': None if qspec.first_last_bits is None
                  else int(qspec.first_last_bits),
                  'input_layout': 'NCHW', 'weights': q_weights, 'activations': q_acts}
  return state_dict, quantization


def _fake_quant_activation_class():
  import torch

  class FakeQuantActivation(torch.nn.Module):
    """ReLU/ReLU6 then the per-tensor fake quantizer with a frozen range."""

    def __init__(self, activ, bits: int, scale: float, zero_point: float):
      super().__init__()
      self.activ = activ
      self.qmin = -2.0 ** (bits - 1)
      self.qmax = 2.0 ** (bits - 1) - 1.0
      self.register_buffer('scale', torch.tensor(scale, dtype=torch.float32), persistent=False)
      self.register_buffer('zero_point', torch.tensor(zero_point, dtype=torch.float32),
                           persistent=False)

    def forward(self, x):
      x = self.activ(x)
      q = torch.clamp(torch.round(x * self.scale - self.zero_point), self.qmin, self.qmax)
      return (q + self.zero_point) / self.scale

  return FakeQuantActivation


def torch_student(spec: ArchSpec, state_dict, quantization):
  """The eager PyTorch fake-quantized student (eval mode): pytorchcv model, quantized
  weights, activations wrapped in fake quantizers, final pool made global."""
  import torch
  model = spec.torch_model()
  model.load_state_dict(state_dict, strict=True)
  model.eval()
  fq_class = _fake_quant_activation_class()
  relus = {n for n, m in model.named_modules() if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6))}
  acts = quantization['activations']
  if set(acts) != relus:
    missing, extra = sorted(relus - set(acts)), sorted(set(acts) - relus)
    raise UserError(f"activation quantizers do not match the pytorchcv model of '{spec.name}' "
                    f'(torch activations without a quantizer: {missing[:4]}; '
                    f'quantizers without a torch activation: {extra[:4]})')
  for name, q in acts.items():
    activ = model.get_submodule(name)
    want = torch.nn.ReLU6 if q['fn'] == 'relu6' else torch.nn.ReLU
    if type(activ) is not want:
      raise UserError(f"'{name}' is a {type(activ).__name__}, the student has {q['fn']}")
    if q['calibrated']:
      parent, _, child = name.rpartition('.')
      setattr(model.get_submodule(parent), child,
              fq_class(activ, q['bits'], q['scale'], q['zero_point']))
  for name, m in list(model.named_modules()):
    if isinstance(m, torch.nn.AvgPool2d) and name.endswith('final_pool'):
      parent, _, child = name.rpartition('.')
      setattr(model.get_submodule(parent), child, torch.nn.AdaptiveAvgPool2d(1))
  return model


def export_program(spec: ArchSpec, model):
  """`torch.export` program of `model` with a dynamic batch dimension (NCHW input)."""
  import torch
  x = torch.zeros((2, spec.in_channels, spec.image_size, spec.image_size), dtype=torch.float32)
  batch = torch.export.Dim('batch', min=1, max=1 << 16)
  return torch.export.export(model, (x,), dynamic_shapes=({0: batch},))


def export_student(spec: ArchSpec, qspec, variables: Mapping[str, Any],
                   out_dir: str) -> Dict[str, str]:
  """Writes `student_state_dict.pth` and `student.pt2` (see the module docstring) to
  `out_dir`; returns their paths."""
  import torch
  state_dict, quantization = quantized_student(spec, qspec, variables)
  os.makedirs(out_dir, exist_ok=True)
  paths = {'state_dict': os.path.join(out_dir, STATE_DICT_FILE),
           'program': os.path.join(out_dir, PROGRAM_FILE)}
  torch.save({'state_dict': state_dict, 'quantization': quantization}, paths['state_dict'])
  program = export_program(spec, torch_student(spec, state_dict, quantization))
  torch.export.save(program, paths['program'])
  return paths


@cli_entry
def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog='python -m ris_jax.export',
                                   description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='training workdir of the student')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--bits', default=None,
                      help='the student of a several-bit-width run, e.g. w3a3 (default: all, '
                           'each in OUT/<bits>/; a single-student run writes to OUT)')
  args = parser.parse_args(argv)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's notes on read-only managers
  from ris_jax import loop
  try:
    tags = loop.student_tags(args.workdir)
    chosen = [args.bits] if args.bits or len(tags) == 1 else list(tags)
    for bits in chosen:
      spec, qspec, variables = loop.load_student(args.workdir, bits)
      out = args.out if len(chosen) == 1 else os.path.join(args.out, bits)
      paths = export_student(spec, qspec, variables, out)
      print(f'exported {spec.name} W{qspec.w_bits}A{qspec.a_bits} student → '
            f"{paths['state_dict']}, {paths['program']}")
  except UserError as e:
    exit_with_error(e)


if __name__ == '__main__':
  main()

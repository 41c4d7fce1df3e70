"""The fake-quantized student: the teacher's own module with quantizing ops.

Variables: `params` (trainable: kernels, BN scale/offset, dense bias; initialised from the
teacher), `batch_stats` (the teacher's running statistics, fixed: BN runs in inference mode)
and `quant_ranges` (activation ranges; updated only while calibrating).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ris_jax import layers, quant
from ris_jax.models import ArchSpec


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """Bit-widths and quantizer options of a student (validated)."""
  w_bits: int = 4
  a_bits: int = 4
  first_last_bits: Optional[int] = None
  clipped_ste: bool = False
  ema_momentum: float = 0.9

  def ops(self):
    return quant.quantized_ops(self.w_bits, self.a_bits, self.first_last_bits,
                               self.clipped_ste, self.ema_momentum)


def make_student(spec: ArchSpec, teacher_variables: Mapping[str, Any], qspec: QuantSpec):
  """(module, variables) of the quantized student initialised from the teacher.

  Activation ranges start uncalibrated (count 0: activations pass unquantized until the
  first calibration batch)."""
  module = spec.module(qspec.ops())
  x = jnp.zeros((1,) + spec.input_shape, jnp.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  ranges = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['quant_ranges'])
  variables = {'params': jax.tree.map(jnp.array, teacher_variables['params']),
               'batch_stats': jax.tree.map(jnp.array, teacher_variables['batch_stats']),
               'quant_ranges': ranges}
  return module, variables


def quantizers(module, input_shape):
  """The quantizers of a student module, found by intercepting its layers while tracing its
  initialization once (no compute, no compilation): ({conv / dense module path: its
  `kernel_quantizer`}, {activation module path: its `layers.Activation`})."""
  kernels, activations = {}, {}

  def record(next_fun, args, kwargs, context):
    m = context.module
    if context.method_name == '__call__':
      if isinstance(m, (layers.Conv, layers.Dense)) and m.kernel_quantizer is not None:
        kernels[tuple(m.path)] = m.kernel_quantizer
      elif isinstance(m, layers.Activation):
        activations[tuple(m.path)] = m
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1,) + tuple(input_shape), jnp.float32))
  return kernels, activations


def kernel_bits_tree(module, params, input_shape):
  """A tree like `params` holding each quantized conv / dense kernel's bit-width (its
  `kernel_quantizer.bits`: `w_bits`, or `first_last_bits` on the stem and head) and None on
  every other leaf."""
  kernels, _ = quantizers(module, input_shape)
  bits = {path + ('kernel',): q.bits for path, q in kernels.items()}
  return jax.tree_util.tree_map_with_path(
      lambda path, _: bits.get(tuple(k.key for k in path)), params)


def calibrate_step(module, variables, images):
  """One calibration batch: forward with `quant_ranges` mutable (EMA update of activation
  ranges). Returns (logits, variables with new ranges)."""
  logits, updates = module.apply(variables, images, mutable=['quant_ranges'])
  return logits, {**variables, 'quant_ranges': updates['quant_ranges']}


def calibrate(module, variables, batches: Iterable[jax.Array]):
  """Post-training calibration: runs `calibrate_step` over `batches` (NHWC images from any
  source: real, synthetic or noise) and returns the variables with calibrated ranges."""
  step = jax.jit(lambda v, x: calibrate_step(module, v, x)[1])
  for images in batches:
    variables = step(variables, images)
  return variables

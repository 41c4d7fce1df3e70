"""ris_jax: Robustness-Guided Image Synthesis (RIS) for data-free quantization, in JAX/Flax."""

__version__ = '0.1.0'


def load_teacher(arch, path_or_state_dict):
  """(module, variables) of a PyTorch-trained teacher; see `ris_jax.convert.load_teacher`."""
  from ris_jax import convert
  return convert.load_teacher(arch, path_or_state_dict)

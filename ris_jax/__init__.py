"""ris_jax: Robustness-Guided Image Synthesis (RIS) for data-free quantization, in JAX/Flax."""
from ris_jax.convert import load_teacher  # noqa: F401

__version__ = '0.1.0'

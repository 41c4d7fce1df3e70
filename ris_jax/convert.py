"""PyTorch (pytorchcv names) ⇄ Flax weight conversion, by name, both directions.

    python -m ris_jax.convert --arch resnet20_cifar10 --torch-checkpoint W.pth --out DIR

Layouts: conv OIHW ⇄ HWIO; dense (out, in) or 1×1-conv (out, in, 1, 1) ⇄ (in, out);
BN weight/bias/running_mean/running_var ⇄ params scale/bias, batch_stats mean/var.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import warnings
from typing import Any, Dict, Mapping, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from ris_jax.errors import UserError, cli_entry, short_list
from ris_jax.layers import Ops
from ris_jax.models import ArchSpec, get_arch

COLLECTIONS = ('params', 'batch_stats')
_IGNORED_SUFFIX = 'num_batches_tracked'


def spec_or_error(arch: Union[str, ArchSpec]) -> ArchSpec:
  if isinstance(arch, ArchSpec):
    return arch
  try:
    return get_arch(arch)
  except KeyError as e:
    raise UserError(e.args[0]) from None


def variables_template(spec: ArchSpec, ops: Ops = Ops()) -> Dict[str, Any]:
  """Shapes of the model's `params` and `batch_stats` (no compute)."""
  x = jnp.zeros((1,) + spec.input_shape, jnp.float32)
  shapes = jax.eval_shape(spec.module(ops).init, jax.random.key(0), x)
  return {c: shapes[c] for c in COLLECTIONS if c in shapes}


def _leaves(tree) -> Dict[Tuple[str, ...], Any]:
  return {tuple(k.key for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _load_failure(e: Exception) -> str:
  """The informative part of a `torch.load` error (the weights-only unpickler's detail rather
  than its advice to pass weights_only=False)."""
  text = str(e)
  if 'WeightsUnpickler error:' in text:
    text = text.split('WeightsUnpickler error:', 1)[1]
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[0].split('. ')[0][:200] if lines else type(e).__name__


def read_torch_state_dict(source) -> Dict[str, np.ndarray]:
  """A state dict (path or mapping) as numpy arrays; unwraps {'state_dict': …} /
  {'model': …} and strips a DataParallel 'module.' prefix."""
  if isinstance(source, (str, os.PathLike)):
    import torch
    path = os.fspath(source)
    if not os.path.isfile(path):
      raise UserError(f'checkpoint file not found: {path}')
    try:
      with warnings.catch_warnings():  # e.g. a pickle-protocol warning: stderr stays one line
        warnings.simplefilter('ignore')
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # a corrupt file can raise nearly anything (IndexError, KeyError, …)
      raise UserError(f'cannot read {path} as a PyTorch checkpoint ({_load_failure(e)}); '
                      'expected a file written by torch.save(model.state_dict(), path)') from None
  else:
    obj = source
  for wrapper_key in ('state_dict', 'model', 'model_state_dict'):
    if isinstance(obj, Mapping) and wrapper_key in obj and isinstance(obj[wrapper_key], Mapping):
      obj = obj[wrapper_key]
  if not isinstance(obj, Mapping) or not obj:
    raise UserError(f'the checkpoint holds a {type(obj).__name__}, not a state dict '
                    '(a mapping of parameter names to tensors)')
  out = {}
  for key, value in obj.items():
    if not hasattr(value, 'shape'):
      raise UserError(f"state dict entry '{key}' is a {type(value).__name__}, not a tensor")
    key = key[len('module.'):] if key.startswith('module.') else key
    if hasattr(value, 'detach'):
      value = value.detach().cpu()
      value = value.float() if value.is_floating_point() else value  # numpy has no bfloat16
    out[key] = value.numpy() if hasattr(value, 'numpy') else np.asarray(value)
  return out


def _to_flax_layout(torch_value: np.ndarray, flax_shape) -> np.ndarray:
  if len(flax_shape) == 4:
    return np.transpose(torch_value, (2, 3, 1, 0))
  if len(flax_shape) == 2:
    return np.transpose(torch_value.reshape(torch_value.shape[0], -1), (1, 0))
  return torch_value


def _to_torch_layout(flax_value: np.ndarray, torch_shape) -> np.ndarray:
  if flax_value.ndim == 4:
    return np.transpose(flax_value, (3, 2, 0, 1))
  if flax_value.ndim == 2:
    return np.transpose(flax_value, (1, 0)).reshape(torch_shape)
  return flax_value


def _torch_shape(flax_shape, torch_like=None):
  if len(flax_shape) == 4:
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if len(flax_shape) == 2:
    return (flax_shape[1], flax_shape[0]) if torch_like is None else torch_like
  return tuple(flax_shape)


def torch_to_flax(arch: Union[str, ArchSpec], state_dict) -> Dict[str, Any]:
  """pytorchcv state dict (path or mapping) → Flax variables {'params', 'batch_stats'}."""
  spec = spec_or_error(arch)
  sd = read_torch_state_dict(state_dict)
  template = _leaves(variables_template(spec))
  wanted = {spec.torch_key(path[1:]): path for path in template}
  given = {k for k in sd if not k.endswith(_IGNORED_SUFFIX)}
  missing = sorted(set(wanted) - given)
  unexpected = sorted(given - set(wanted))
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f'missing keys: {short_list(missing)}')
    if unexpected:
      parts.append(f'unexpected keys: {short_list(unexpected)}')
    raise UserError(f"checkpoint does not match arch '{spec.name}': " + '; '.join(parts)
                    + ' (wrong --arch, or a checkpoint of another model?)')
  flat = {}
  for key, path in wanted.items():
    shape = template[path].shape
    value = sd[key]
    expected = _torch_shape(shape)
    if value.ndim == 4 and len(shape) == 2:
      expected += (1, 1)  # a dense layer stored as a 1×1 conv (pytorchcv MobileNetV2)
    if tuple(value.shape) != expected:
      raise UserError(f"shape mismatch for '{key}': arch '{spec.name}' expects "
                      f'{expected}, checkpoint has {tuple(value.shape)}')
    flat[path] = jnp.asarray(_to_flax_layout(value.astype(np.float32), shape))
  return _unflatten(flat)


def _unflatten(flat: Mapping[Tuple[str, ...], Any]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for path, leaf in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = leaf
  return tree


def flax_to_torch(arch: Union[str, ArchSpec], variables: Mapping[str, Any]):
  """Flax variables → pytorchcv-named `OrderedDict` of torch tensors, in the order of the
  PyTorch model's own state dict (`num_batches_tracked` written as 0)."""
  import torch
  spec = spec_or_error(arch)
  reference = spec.torch_model().state_dict()
  flat = {spec.torch_key(path[1:]): np.asarray(leaf)
          for path, leaf in _leaves({c: variables[c] for c in COLLECTIONS}).items()}
  out = collections.OrderedDict()
  for key, ref in reference.items():
    if key.endswith(_IGNORED_SUFFIX):
      out[key] = torch.zeros_like(ref)
      continue
    if key not in flat:
      raise UserError(f"variables lack '{key}' needed by arch '{spec.name}'")
    value = _to_torch_layout(flat[key], tuple(ref.shape))
    out[key] = torch.from_numpy(np.array(value, copy=True)).to(ref.dtype)
  return out


def load_teacher(arch: Union[str, ArchSpec], path_or_state_dict):
  """(module, variables) of a PyTorch-trained teacher; `module.apply(variables, x_nhwc)`
  gives logits in inference mode."""
  spec = spec_or_error(arch)
  return spec.module(), torch_to_flax(spec, path_or_state_dict)


def save_variables(directory: str, arch: str, variables: Mapping[str, Any],
                   only_this_process: bool = False) -> None:
  """Writes Flax variables (as host arrays) as an orbax checkpoint under
  `directory/variables` plus `directory/arch.json`. In a multi-process run, every process
  calls it together, or (`only_this_process`) one process alone."""
  import orbax.checkpoint as ocp
  from ris_jax import distributed
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  target = os.path.join(directory, 'variables')
  host = distributed.to_host({c: variables[c] for c in COLLECTIONS})
  options = distributed.orbax_options(only_this_process)
  with ocp.StandardCheckpointer(multiprocessing_options=options) as ckptr:
    ckptr.save(target, host, force=True)
  with open(os.path.join(directory, 'arch.json'), 'w') as f:
    json.dump({'arch': arch}, f)


def load_variables(directory: str, arch: Union[str, None] = None):
  """Reads what `save_variables` wrote; checks the arch if given. Returns (arch, variables),
  replicated on the global mesh (every process of a multi-process run calls it together)."""
  import orbax.checkpoint as ocp
  from ris_jax import distributed
  directory = os.path.abspath(directory)
  meta_path = os.path.join(directory, 'arch.json')
  if not os.path.isfile(meta_path) or not os.path.isdir(os.path.join(directory, 'variables')):
    raise UserError(f'{directory} is not a converted ris_jax model (expected arch.json and '
                    'variables/; write one with python -m ris_jax.convert)')
  with open(meta_path) as f:
    saved_arch = json.load(f)['arch']
  if arch is not None and saved_arch != arch:
    raise UserError(f"{directory} holds arch '{saved_arch}', not '{arch}'")
  spec = spec_or_error(saved_arch)
  sharding = distributed.replicated()
  template = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                          variables_template(spec))
  with ocp.StandardCheckpointer() as ckptr:
    variables = ckptr.restore(os.path.join(directory, 'variables'), template)
  return saved_arch, variables


@cli_entry
def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog='python -m ris_jax.convert', description=__doc__.splitlines()[0])
  parser.add_argument('--arch', required=True)
  parser.add_argument('--torch-checkpoint', required=True)
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  _, variables = load_teacher(args.arch, args.torch_checkpoint)
  save_variables(args.out, args.arch, variables)
  n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables['params']))
  print(f'converted {args.arch} ({n:,} parameters) → {os.path.abspath(args.out)}')


if __name__ == '__main__':
  main()

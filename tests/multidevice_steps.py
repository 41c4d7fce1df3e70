"""A few jitted RIS iterations on every visible device. Run by test_train.py in a subprocess,
since the device count (XLA_FLAGS) must be set before jax is imported:

    python tests/multidevice_steps.py CONFIG.json REF.npz             # a trajectory
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python tests/multidevice_steps.py CONFIG.json OUT.npz REF.npz  # one step from each state

Without REF: `train.steps` steps from the initial state; saves the states `state0..N` and the
metrics of each step. With REF: one step from each state `state{i}` of REF (so every step starts
from the same state as there), saving the resulting `state{i+1}` and metrics. Also saves whether
the teacher changed and how many cross-device reductions the compiled programs hold.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from ris_jax import teacher, train  # noqa: E402


def main(config_path: str, out_path: str, reference: str = '') -> None:
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  tc = config.train
  spec, t_module, t_vars = teacher.get_teacher(config)
  mesh = train.make_mesh()
  models, state = train.build(config, spec, t_module, t_vars)
  step = train.jit_ris_step(models, tc.batch_size, mesh)
  t_vars = train.replicate(t_vars, mesh)
  margins = train.replicate(train.noise_margins(
      models, t_vars, tc.batch_size, spec.input_shape, config.loss.margin_fraction,
      jax.random.PRNGKey(config.seed + 1)), mesh)
  ref = np.load(reference) if reference else None
  template = state
  out, all_reduces = {}, 0

  def dump(prefix, tree):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      out[prefix + jax.tree_util.keystr(path)] = np.array(leaf)  # a copy: the state is donated

  def load(prefix):
    return jax.tree_util.tree_map_with_path(
        lambda p, v: np.asarray(ref[prefix + jax.tree_util.keystr(p)], v.dtype), template)

  state = train.replicate(state, mesh)
  dump('state0', state)
  teacher_before = jax.tree.map(np.array, t_vars)
  for i in range(tc.steps):
    if ref is not None:
      state = train.replicate(load(f'state{i}'), mesh)
    phase = dict(update_student=i >= tc.warmup_steps, calibrate=i < tc.calibration_steps)
    state, metrics = step(state, t_vars, margins, **phase)
    for k, v in jax.device_get(metrics).items():
      out.setdefault(f'metric/{k}', []).append(v)
    dump(f'state{i + 1}', state)
    if i in (0, tc.warmup_steps):  # the partitioned program of each phase (a cache hit)
      hlo = step.lower(state, t_vars, margins, **phase).compile().as_text()
      all_reduces += hlo.count('all-reduce(') + hlo.count('all-reduce-start(')
  out['teacher_max_change'] = max(float(np.max(np.abs(a - np.asarray(b)))) for a, b in
                                  zip(jax.tree.leaves(teacher_before), jax.tree.leaves(t_vars)))
  out['teacher_deleted'] = any(b.is_deleted() for b in jax.tree.leaves(t_vars))
  np.savez(out_path, devices=jax.device_count(), mesh_size=mesh.size,
           state_devices=len(state.step.sharding.device_set), all_reduces=all_reduces,
           **{k: np.asarray(v) for k, v in out.items()})


if __name__ == '__main__':
  main(*sys.argv[1:])

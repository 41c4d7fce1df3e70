"""Multi-process (multi-host) mechanics in one place: starting the JAX distributed system,
"process 0 writes, the others wait", host values broadcast from process 0, and host arrays
put onto the global mesh (every device of every process, axis 'data').

In a run of P processes every process runs the same program: the same jitted functions in
the same order on global arrays; files are written by process 0 only. With one process every
function here is the plain single-process operation (no collectives).

Launching (`config.distributed=True`): on Cloud TPU, SLURM and Open MPI JAX finds the cluster
by itself. Elsewhere give the coordinator (process 0's `host:port`), the number of processes
and this process's id, as `config.cluster.{coordinator_address, num_processes, process_id}`
or as the environment variables JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
(a config field wins over its variable).
"""
from __future__ import annotations

import os
import socket
import time
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ris_jax.errors import UserError

AXIS = 'data'
# Environment variables that give this process's id under the launchers JAX detects itself.
_LAUNCHER_PROCESS_ID = ('SLURM_PROCID', 'OMPI_COMM_WORLD_RANK', 'PMI_RANK')


def _field_or_env(cluster, name: str, env: str, cast=str):
  value = cluster.get(name) if cluster is not None else None
  if value not in (None, ''):
    return cast(value)
  if os.environ.get(env, '') != '':
    try:
      return cast(os.environ[env])
    except ValueError:
      raise UserError(f'{env}={os.environ[env]!r} is not a {cast.__name__}; fix or unset it') from None
  return None


def _wait_for_coordinator(address: str, process_id: int, timeout_s: float) -> None:
  """Returns once `address` (host:port) accepts a TCP connection; a `UserError` after
  `timeout_s`. JAX itself aborts the process (no Python exception) when it cannot connect."""
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise UserError(f'coordinator address {address!r} is not host:port; give process 0\'s '
                    'address, e.g. --config.cluster.coordinator_address=10.0.0.1:1234')
  deadline = time.time() + timeout_s
  while True:
    try:
      socket.create_connection((host.strip('[]'), int(port)), timeout=1.0).close()
      return
    except OSError:
      if time.time() > deadline:
        raise UserError(
            f'process {process_id} cannot reach the coordinator at {address} within '
            f'{timeout_s:g} s; start process 0 (it serves the coordinator) and give every '
            'process its host:port (config.cluster.coordinator_address or '
            'JAX_COORDINATOR_ADDRESS), or raise config.cluster.timeout_s') from None
      time.sleep(0.2)


def initialize(config) -> None:
  """Starts the JAX distributed system when `config.distributed` (before any other JAX
  call); then checks that the process count divides the training batch."""
  if not config.distributed:
    return
  # Cross-process collectives on CPU (JAX's default today; set so that it stays so).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  cluster = config.get('cluster')
  timeout_s = int(cluster.timeout_s) if cluster is not None else 300
  address = _field_or_env(cluster, 'coordinator_address', 'JAX_COORDINATOR_ADDRESS')
  num_processes = _field_or_env(cluster, 'num_processes', 'JAX_NUM_PROCESSES', int)
  process_id = _field_or_env(cluster, 'process_id', 'JAX_PROCESS_ID', int)
  known_id = process_id
  if known_id is None:
    for env in _LAUNCHER_PROCESS_ID:
      if os.environ.get(env, '').isdigit():
        known_id = int(os.environ[env])
        break
  if address and known_id:  # not process 0, which serves the coordinator
    _wait_for_coordinator(address, known_id, timeout_s)
  try:
    jax.distributed.initialize(address, num_processes, process_id,
                               initialization_timeout=timeout_s)
  except (ValueError, TypeError) as e:  # nothing found to tell the cluster's shape
    raise UserError(f'cannot start the distributed run ({e}); outside Cloud TPU, SLURM and '
                    'Open MPI give config.cluster.coordinator_address, num_processes and '
                    'process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, '
                    'JAX_PROCESS_ID)') from None
  count = jax.process_count()
  batch = config.train.batch_size
  if config.mode in ('train', 'dfkd') and batch % count:
    raise UserError(f'config.train.batch_size={batch} is not divisible by the {count} '
                    f'processes; use a multiple of {count}')


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def broadcast(tree: Any) -> Any:
  """Process 0's value of a pytree of host values (numbers, bools, numpy arrays) on every
  process, as numpy; the value itself with one process."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils
  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def gather(value: np.ndarray) -> np.ndarray:
  """Every process's value of a host array, stacked: (processes, *value.shape)."""
  value = np.asarray(value)
  if jax.process_count() == 1:
    return value[None]
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(value))


def global_mesh() -> Mesh:
  """A 1-D mesh over every device of every process, axis 'data'."""
  return Mesh(np.asarray(jax.devices()), (AXIS,))


def replicated(mesh: Optional[Mesh] = None) -> NamedSharding:
  return NamedSharding(mesh if mesh is not None else global_mesh(), P())


def replicate(tree: Any, mesh: Optional[Mesh] = None) -> Any:
  """Every leaf as a global array replicated on every device of `mesh` (default: the global
  mesh). A leaf already so is kept; a host or process-local value is taken as this
  process's copy of the value (every process must hold the same one)."""
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array):
      if x.sharding == sharding:
        return x
      if not x.is_fully_addressable:  # a global array of another sharding
        return jax.device_put(x, sharding)
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
  return jax.tree.map(put, tree)


def shard_batch(tree: Any, mesh: Optional[Mesh] = None) -> Any:
  """Each process's rows (B_local, ...) as one global array (P·B_local, ...) split along
  the mesh axis 'data' (process i's rows at positions i·B_local ... when each process holds
  a contiguous block of the mesh)."""
  sharding = NamedSharding(mesh if mesh is not None else global_mesh(), P(AXIS))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      tree)


def local_batch_size(global_batch: int) -> int:
  """Rows per process of a global batch of about `global_batch` rows: ⌈global_batch / P⌉
  rounded up to a multiple of the process's devices (the extra rows are padding)."""
  per_process = -(-int(global_batch) // jax.process_count())
  devices = jax.local_device_count()
  return -(-per_process // devices) * devices


def to_host(tree: Any) -> Any:
  """Numpy values of a pytree of arrays: replicated or process-local arrays as they are,
  others gathered from every process (a collective: all processes must call it)."""
  def get(x):
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
      from jax.experimental import multihost_utils
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
  return jax.tree.map(get, tree)


def orbax_options(only_this_process: bool = False):
  """orbax `MultiprocessingOptions`: every process together (the default), or this process
  alone (a file that process 0 writes while the others do not take part)."""
  import orbax.checkpoint as ocp
  if not only_this_process or jax.process_count() == 1:
    return ocp.options.MultiprocessingOptions()
  me = jax.process_index()
  return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                            barrier_sync_key_prefix=f'process{me}')

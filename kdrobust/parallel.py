"""Data parallelism through ``jax.sharding``: one mesh over all devices.

Parameters are replicated (``P()``), batches are sharded over the ``'data'``
axis (``P('data')``). The same code runs on one CPU, on simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on a GPU and on a
TPU pod slice (with ``jax.distributed.initialize()`` called first, see
:func:`init_distributed`). No pmap.

Under a global-view ``jit`` batch-norm statistics are computed over the
*global* batch (synchronised BN), unlike pmap-era code with per-device
statistics.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


def init_distributed(enabled: bool) -> None:
  """Call ``jax.distributed.initialize()`` (TPU pods, Slurm, ...) when asked."""
  if enabled:
    jax.distributed.initialize()


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D ``('data',)`` mesh over ``num_devices`` (default: all) devices."""
  devices = jax.devices()
  if num_devices is not None:
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.asarray(devices), ("data",))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def global_batch(mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Assemble a global, batch-sharded array from this process's slice."""
  sh = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sh, np.asarray(v))
          for k, v in local.items()}


def replicate(mesh, tree):
  """Place a pytree replicated on every device of ``mesh``."""
  return jax.device_put(tree, replicated(mesh))


def check_batch_size(global_batch_size: int, mesh) -> None:
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(
        f"Global batch size {global_batch_size} is not divisible by the {n} devices of the mesh.")
  if global_batch_size % jax.process_count():
    raise ValueError(
        f"Global batch size {global_batch_size} is not divisible by the {jax.process_count()} processes.")

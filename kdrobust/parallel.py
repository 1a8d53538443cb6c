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
  """A 1-D ``('data',)`` mesh over ``num_devices`` (default: all) devices.

  Built by ``jax.make_mesh``, which orders the devices for the platform's
  topology (TPU torus, GPU NVLink islands) when it is given all of them.
  """
  devices = jax.devices()
  if num_devices is not None and num_devices < len(devices):
    devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), ("data",), devices=devices)
  return jax.make_mesh((len(devices),), ("data",))


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


def check_batch_size(global_batch_size: int, mesh, name: str = "the global batch size") -> None:
  """Refuse a batch size that does not split evenly over the mesh (``name``: its setting)."""
  n = mesh.devices.size
  for count, what in ((n, "devices of the mesh"), (jax.process_count(), "processes")):
    if global_batch_size % count:
      fit = global_batch_size - global_batch_size % count
      raise ValueError(
          f"{name} = {global_batch_size} is not divisible by the {count} {what}. Set it to a "
          f"multiple of {count} (e.g. {fit or count}), or run on fewer devices "
          "(--config.num_devices).")

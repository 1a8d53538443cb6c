"""Data parallelism through ``jax.sharding``: one mesh over all devices.

Parameters are replicated (``P()``), batches are sharded over the ``'data'``
axis (``P('data')``). The same code runs on one CPU, on simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on a GPU and on a
TPU pod slice (with ``jax.distributed.initialize()`` called first, see
:func:`init_distributed`), and in several processes on one machine (CPU
collectives through gloo, tests/multiprocess_test.py). No pmap.

Several processes (multi-controller JAX): every process runs the same program;
only process 0 writes run files and prints (:func:`quiet_other_processes`);
:func:`sync` is a barrier and :func:`broadcast_from_primary` sends process 0's
decision to all.

Under a global-view ``jit`` batch-norm statistics are computed over the
*global* batch (synchronised BN), unlike pmap-era code with per-device
statistics.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


# The environment variables read when the flags are not given. jax itself reads only
# JAX_COORDINATOR_ADDRESS (jax/_src/distributed.py); kdrobust reads the other two.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def distributed_args(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, environ=None) -> dict[str, Any]:
  """The keyword arguments of ``jax.distributed.initialize``, checked (no compute).

  Each comes from its flag, else from its environment variable
  (:data:`ENV_COORDINATOR`, :data:`ENV_NUM_PROCESSES`, :data:`ENV_PROCESS_ID`),
  else is left out: jax then detects it from the cluster (Slurm, Cloud TPU,
  Open MPI, Kubernetes). A bad value raises a one-line ``ValueError`` naming
  the flag and the variable.
  """
  env = os.environ if environ is None else environ
  out: dict[str, Any] = {}
  addr = coordinator_address or env.get(ENV_COORDINATOR) or None
  if addr is not None:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
      raise ValueError(f"--coordinator_address ({ENV_COORDINATOR}) must be HOST:PORT, e.g. "
                       f"127.0.0.1:12345; got {addr!r}.")
    out["coordinator_address"] = addr
  for key, flag_value, var in (("num_processes", num_processes, ENV_NUM_PROCESSES),
                               ("process_id", process_id, ENV_PROCESS_ID)):
    value = flag_value if flag_value is not None else env.get(var)
    if value is None or value == "":
      continue
    try:
      value = int(value)
    except (TypeError, ValueError):
      value = None
    lo = 1 if key == "num_processes" else 0
    if value is None or value < lo:
      raise ValueError(f"--{key} ({var}) must be an integer >= {lo}; got "
                       f"{flag_value if flag_value is not None else env.get(var)!r}.")
    out[key] = value
  if "process_id" in out and "num_processes" in out and out["process_id"] >= out["num_processes"]:
    raise ValueError(f"--process_id ({ENV_PROCESS_ID}) must be in [0, num_processes = "
                     f"{out['num_processes']}); got {out['process_id']}.")
  if ("process_id" in out) != ("num_processes" in out) or (out and "coordinator_address" not in out):
    raise ValueError("Give --coordinator_address, --num_processes and --process_id together "
                     f"(or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}), or none of "
                     f"them to let jax detect the cluster (Slurm, Cloud TPU); got {sorted(out)}.")
  return out


def init_distributed(enabled: bool, coordinator_address: str | None = None,
                     num_processes: int | None = None, process_id: int | None = None) -> None:
  """Call ``jax.distributed.initialize(...)`` when asked, then quiet the other processes.

  Arguments: :func:`distributed_args` (flags, else ``JAX_COORDINATOR_ADDRESS``,
  ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, else jax's cluster detection).
  On CPU the cross-process collectives are gloo's
  (``jax_cpu_collectives_implementation``, jax's default since 0.4.3x; set
  here if a user's config turned it off), so several processes on one machine
  train together: two on 127.0.0.1 in tests/multiprocess_test.py.
  """
  if not enabled:
    if distributed_args(coordinator_address, num_processes, process_id, environ={}):
      raise ValueError("--coordinator_address, --num_processes and --process_id need "
                       "--jax_distributed.")
    return
  kwargs = distributed_args(coordinator_address, num_processes, process_id)
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  global _DISTRIBUTED
  _DISTRIBUTED = True
  quiet_other_processes()


_DISTRIBUTED = False


def distributed() -> bool:
  """True once :func:`init_distributed` started ``jax.distributed`` in this process."""
  return _DISTRIBUTED


def exit_now(code: int) -> None:
  """Flush and ``os._exit(code)``: a failed process of a distributed run leaves at once.

  A normal interpreter exit would wait in ``jax.distributed``'s shutdown
  barrier for the other processes, which wait for it in a collective: both
  would hang until JAX's timeouts. Exiting at once ends the coordination
  service (process 0) or its heartbeats (others), so the other processes stop too.
  """
  import sys  # pylint: disable=g-import-not-at-top
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(code)  # pylint: disable=protected-access


def is_primary() -> bool:
  """True in process 0 (the one that writes run files and prints)."""
  return jax.process_index() == 0


def quiet_other_processes() -> None:
  """In every process but 0: stdout (file descriptor 1) to ``/dev/null``, logging and
  Python warnings off.

  Process 0 prints progress bars, lines and warnings; the others would repeat
  them. Errors still reach stderr from every process (the error boundary,
  :mod:`kdrobust.cli`, and tracebacks write there); tqdm bars are disabled
  off process 0 (:func:`kdrobust.metrics.progress`).
  """
  if is_primary():
    return
  import logging  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top
  sys.stdout.flush()
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 1)  # also what C++ libraries print (gloo's "Rank 1 is connected")
  os.close(devnull)
  sys.stdout = open(os.devnull, "w")  # pylint: disable=consider-using-with
  logging.getLogger().setLevel(logging.ERROR)
  logging.getLogger("absl").setLevel(logging.ERROR)
  warnings.filterwarnings("ignore")


def sync(name: str) -> None:
  """A barrier over every process (a no-op in one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def broadcast_from_primary(value: int) -> int:
  """Process 0's integer ``value`` in every process (itself in one process)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D ``('data',)`` mesh over ``num_devices`` (default: all) devices.

  Built by ``jax.make_mesh``, which orders the devices for the platform's
  topology (TPU torus, GPU NVLink islands) when it is given all of them.
  The axis is ``AxisType.Auto``: ``jax.make_mesh`` defaults to ``Explicit``
  axes, under which a per-class table indexed by the sharded labels
  (``class_w[y]``, Fair-ARD's weights) is a ``ShardingTypeError``; with Auto
  axes the compiler places such gathers itself, as with a ``jax.sharding.Mesh``.
  """
  devices = jax.devices()
  auto = (jax.sharding.AxisType.Auto,)
  if num_devices is not None and num_devices < len(devices):
    devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), ("data",), axis_types=auto, devices=devices)
  return jax.make_mesh((len(devices),), ("data",), axis_types=auto)


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

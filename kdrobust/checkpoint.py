"""Checkpoints through Orbax: the only module that imports Orbax.

Layout: ``<workdir>/checkpoints/<step>/{state, meta}``; ``state`` is the
:class:`~kdrobust.state.TrainState` (``StandardSave``), ``meta`` a JSON item
(config, metrics at that step, code version). Retention: the latest ``keep``
checkpoints plus the best one by robust accuracy (``BestN``), through Orbax
preservation policies. Orbax writes each checkpoint to a temporary directory
and renames it when complete, so a kill -9 during a save leaves the previous
checkpoints intact; :meth:`Checkpointer.restore_latest` additionally falls back
to older checkpoints (with a warning) when the newest one cannot be read.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

BEST_METRIC = "robust_accuracy"


class Checkpointer:
  """A thin wrapper over ``ocp.CheckpointManager`` (see the module docstring)."""

  def __init__(self, directory: str, *, keep: int = 2, keep_best: bool = True,
               enable_async: bool = True):
    self.directory = os.path.abspath(directory)
    preserve = [policies.LatestN(n=keep)]
    if keep_best:
      preserve.append(policies.BestN(
          get_metric_fn=lambda m: float(m.get(BEST_METRIC, float("-inf"))),
          reverse=False, n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(preserve),
        enable_async_checkpointing=enable_async,
        create=True)
    self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                       item_names=("state", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> bool:
    """Save ``state`` and the JSON ``meta`` at ``step`` (a no-op if it exists)."""
    if step in self._mngr.all_steps():
      return False
    return self._mngr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restore ``(state, meta)`` at ``step`` into the abstract target (with shardings)."""
    out = self._mngr.restore(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def restore_raw(self, step: int) -> dict:
    """The saved state as nested dicts of arrays, with no target (for teachers, evaluation)."""
    out = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return out["state"]

  def restore_raw_single_device(self, step: int, device=None) -> dict:
    """:meth:`restore_raw` onto one device (default: the first), whatever topology
    saved it (a run trained on 8 devices evaluated on 1 would otherwise fail)."""
    path = os.path.join(self.directory, str(step), "state")
    tree = ocp.StandardCheckpointHandler().metadata(epath.Path(path))
    tree = getattr(tree, "tree", tree)
    sharding = jax.sharding.SingleDeviceSharding(device or jax.devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree)
    out = self._mngr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    return out["state"]

  def restore_meta(self, step: int) -> dict:
    out = self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return out["meta"]

  def restore_latest(self, abstract_state: Any):
    """Restore the newest readable checkpoint: ``(state, meta, step)`` or ``None``.

    A checkpoint that fails to restore (partial or corrupt files) is skipped
    with a warning and the one before it is tried.
    """
    for step in reversed(self.all_steps()):
      try:
        state, meta = self.restore(step, abstract_state)
        return state, meta, step
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint at step %d in %s is unreadable (%s: %s); "
                        "falling back to the previous one.", step,
                        self.directory, type(e).__name__, str(e)[:200])
    return None

  def best_step(self) -> int | None:
    """The step with the highest ``robust_accuracy`` among kept checkpoints."""
    best, best_val = None, float("-inf")
    for step in self.all_steps():
      try:
        val = self.restore_meta(step).get("metrics", {}).get(BEST_METRIC)
      except Exception:  # pylint: disable=broad-except
        continue
      if val is not None and val > best_val:
        best, best_val = step, val
    return best

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()


def abstract_like(tree: Any) -> Any:
  """``ShapeDtypeStruct`` leaves (keeping shardings) for a restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)

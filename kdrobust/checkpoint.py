"""Checkpoints through Orbax: the only module that imports Orbax.

Layout: ``<workdir>/checkpoints/<step>/{state, meta, kdrobust_integrity.json}``;
``state`` is the :class:`~kdrobust.state.TrainState` (``StandardSave``),
``meta`` a JSON item (config, metrics at that step, code version).

Integrity (docs/reliability.md). Orbax writes each checkpoint to a temporary
directory and renames it when complete, so a kill -9 during a save leaves the
previous checkpoints intact. On top of that a checkpoint *counts* only once
verified: after its save finished it is restored (state and meta, every leaf
finite) and an integrity record is written next to it with the size and
SHA-256 of every file. A checkpoint is then

* ``intact``: the record exists and every file matches it;
* ``unverified``: no record (killed between the save and the verification, or
  written by older code): restorable as far as anyone knows; a writer verifies
  it by restoring it before using it;
* ``corrupt``: a file is missing, truncated or changed.

:meth:`Checkpointer.save` replaces a corrupt (or unverifiable) checkpoint at
the same step instead of skipping it; :meth:`Checkpointer.restore_latest`
skips corrupt ones with a warning; readers (:meth:`best_step`,
:meth:`latest_intact_step`) never return a corrupt one.

"Good" (the NaN guard, kdrobust.train): the integrity record's ``good`` flag
is set once the training guard passed at a *later* step, i.e. training
continued finitely from the checkpoint (:meth:`mark_healthy`).

Retention: the latest ``keep`` checkpoints plus the best one by robust
accuracy (``BestN``), through Orbax preservation policies. Only checkpoints
that were themselves evaluated carry a metric (kdrobust.train), so the best
one is the evaluated model and is kept while it is the best.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from kdrobust import fileio

BEST_METRIC = "robust_accuracy"
INTEGRITY_FILE = "kdrobust_integrity.json"
INTACT, UNVERIFIED, CORRUPT = "intact", "unverified", "corrupt"


class CheckpointError(RuntimeError):
  """A checkpoint could not be written back, or none of a run's checkpoints is readable."""


def _file_digests(step_dir: str) -> dict[str, list]:
  """``{relative path: [size, sha256]}`` of every file under ``step_dir`` but the record."""
  out = {}
  for root, _, files in os.walk(step_dir):
    for name in sorted(files):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel == INTEGRITY_FILE:
        continue
      h = hashlib.sha256()
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          h.update(chunk)
      out[rel] = [os.path.getsize(path), h.hexdigest()]
  return out


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
    self._pending: list[int] = []        # saved, not yet verified
    self._status: dict[int, tuple[str, str]] = {}  # cache of check()
    self._healthy_through = -1          # the guard passed at this step
    self._unconfirmed: set[int] = set()  # verified here, not yet marked good

  # -- Listing and integrity. ---------------------------------------------------
  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _record(self, step: int) -> dict | None:
    path = os.path.join(self._step_dir(step), INTEGRITY_FILE)
    if not os.path.exists(path):
      return None
    try:
      return fileio.read_json(path)
    except (fileio.TornFileError, OSError):
      return {}

  def check(self, step: int) -> tuple[str, str]:
    """``(status, reason)``: ``intact``, ``unverified`` or ``corrupt`` (module docstring)."""
    if step in self._status:
      return self._status[step]
    rec = self._record(step)
    if rec is None:
      out = (UNVERIFIED, "no integrity record")
    elif not rec.get("files"):
      out = (CORRUPT, f"its {INTEGRITY_FILE} is torn")
    else:
      now = _file_digests(self._step_dir(step))
      bad = sorted(k for k in set(rec["files"]) | set(now)
                   if k not in now or k not in rec["files"] or list(now[k]) != list(rec["files"][k]))
      out = (INTACT, "") if not bad else (
          CORRUPT, f"{len(bad)} file(s) missing or changed since it was verified, e.g. {bad[0]}")
    self._status[step] = out
    return out

  def intact_steps(self) -> list[int]:
    """Steps that are not known to be corrupt (intact or unverified), oldest first."""
    return [s for s in self.all_steps() if self.check(s)[0] != CORRUPT]

  def latest_intact_step(self) -> int | None:
    steps = self.intact_steps()
    return steps[-1] if steps else None

  def good_steps(self) -> list[int]:
    """Intact steps from which training is known to have continued finitely."""
    out = []
    for s in self.all_steps():
      rec = self._record(s)
      if self.check(s)[0] == INTACT and rec and rec.get("good"):
        out.append(s)
    return out

  def verify(self, step: int) -> None:
    """Restore ``step`` (state and meta, leaves finite) and write its integrity record.

    Raises :class:`CheckpointError` if it cannot be read back.
    """
    try:
      raw = self.restore_raw_single_device(step)
      self.restore_meta(step)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"The checkpoint at step {step} in {self.directory} cannot be read back "
          f"({type(e).__name__}: {str(e)[:200]}).") from e
    bad = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(raw)
           if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.all(np.isfinite(v))]
    if bad:
      raise CheckpointError(f"The checkpoint at step {step} in {self.directory} holds "
                            f"non-finite values in {', '.join(bad[:5])}.")
    fileio.fault_point("ckpt_verified")
    good = step < self._healthy_through
    if jax.process_index() == 0:
      fileio.write_json(os.path.join(self._step_dir(step), INTEGRITY_FILE),
                        {"step": step, "good": good, "files": _file_digests(self._step_dir(step))})
    self._status[step] = (INTACT, "")
    if not good:
      self._unconfirmed.add(step)

  def mark_healthy(self, step: int) -> None:
    """The training guard passed at ``step``: earlier checkpoints are "good"."""
    self._healthy_through = max(self._healthy_through, step)
    for s in sorted(self._unconfirmed):
      if s < step and s in self._mngr.all_steps():
        rec = self._record(s)
        if rec and rec.get("files") and jax.process_index() == 0:
          rec["good"] = True
          fileio.write_json(os.path.join(self._step_dir(s), INTEGRITY_FILE), rec)
      if s < step:
        self._unconfirmed.discard(s)

  def _finalize(self) -> None:
    """Wait for running saves, then verify them (a checkpoint counts from here on)."""
    self._mngr.wait_until_finished()
    pending, self._pending = self._pending, []
    existing = set(self._mngr.all_steps())
    for step in pending:
      if step in existing:
        self.verify(step)

  # -- Saving. --------------------------------------------------------------------
  def save(self, step: int, state: Any, meta: dict[str, Any],
           metrics: dict[str, float] | None = None) -> bool:
    """Save ``state`` and the JSON ``meta`` at ``step``.

    A no-op if an intact (or restorable unverified) checkpoint exists at
    ``step``; a corrupt one there is deleted and written again.
    """
    self._finalize()
    if step in self._mngr.all_steps():
      status, reason = self.check(step)
      if status == UNVERIFIED:
        try:
          self.verify(step)
          return False
        except CheckpointError as e:
          reason = str(e)
      elif status == INTACT:
        return False
      logging.warning("Replacing the corrupt checkpoint at step %d in %s (%s).",
                      step, self.directory, reason)
      print(f"Replacing the corrupt checkpoint at step {step} in {self.directory}.", flush=True)
      self._mngr.delete(step)
      self._status.pop(step, None)
    saved = self._mngr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                meta=ocp.args.JsonSave(meta)),
        metrics=metrics, force=True)
    if saved:
      self._pending.append(step)
      self._status.pop(step, None)
    fileio.fault_point("ckpt_save")
    return saved

  # -- Restoring. -----------------------------------------------------------------
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
    """:meth:`restore_raw` onto one device (default: this process's first), whatever
    topology saved it (a run trained on 8 devices evaluated on 1 would otherwise fail).

    This process's own device (``jax.local_devices()[0]``), never
    ``jax.devices()[0]``, which only process 0 owns when several processes run.
    """
    return self.restore_raw_placed(
        step, jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0]))

  def restore_raw_placed(self, step: int, sharding) -> dict:
    """:meth:`restore_raw` with every leaf placed by ``sharding``, whatever topology saved it.

    E.g. ``NamedSharding(mesh, P())``: replicated on a mesh of any process
    count (a teacher, :func:`kdrobust.teachers.load`); every process calls it.
    """
    path = os.path.join(self.directory, str(step), "state")
    tree = ocp.StandardCheckpointHandler().metadata(epath.Path(path))
    tree = getattr(tree, "tree", tree)
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

    A corrupt checkpoint (integrity record mismatch) or one that fails to
    restore is skipped with a warning and the one before it is tried; nothing
    is deleted (a corrupt one is replaced when training saves that step again).
    An unverified one that restores is verified on the way.
    """
    for step in reversed(self.all_steps()):
      status, reason = self.check(step)
      if status == CORRUPT:
        logging.warning("Checkpoint at step %d in %s is corrupt (%s); falling back to the "
                        "previous one.", step, self.directory, reason)
        print(f"Checkpoint at step {step} in {self.directory} is corrupt ({reason}); "
              "falling back to the previous one.", flush=True)
        continue
      try:
        state, meta = self.restore(step, abstract_state)
        if status == UNVERIFIED:
          self.verify(step)
        return state, meta, step
      except Exception as e:  # pylint: disable=broad-except
        self._status[step] = (CORRUPT, f"{type(e).__name__}: {str(e)[:200]}")
        logging.warning("Checkpoint at step %d in %s is unreadable (%s: %s); "
                        "falling back to the previous one.", step,
                        self.directory, type(e).__name__, str(e)[:200])
    return None

  def unreadable_message(self, workdir: str) -> str:
    """The refusal when every checkpoint of a run is unreadable (nothing deleted)."""
    steps = self.all_steps()
    return (f"None of the {len(steps)} checkpoint(s) in {self.directory} (steps "
            f"{', '.join(map(str, steps))}) can be restored, so the run cannot resume; "
            "nothing was deleted. To train again from step 0, rerun with --overwrite (the old "
            f"run is moved aside to {workdir.rstrip('/')}.bak-<time>) or use a fresh --workdir.")

  def best_step(self) -> int | None:
    """The step with the highest ``robust_accuracy`` among kept, non-corrupt checkpoints.

    Only checkpoints that were evaluated themselves record the metric
    (kdrobust.train); ties go to the earliest.
    """
    best, best_val = None, float("-inf")
    for step in self.intact_steps():
      try:
        val = self.restore_meta(step).get("metrics", {}).get(BEST_METRIC)
      except Exception:  # pylint: disable=broad-except
        continue
      if val is not None and math.isfinite(val) and val > best_val:
        best, best_val = step, val
    return best

  def wait(self) -> None:
    """Finish and verify every running save."""
    self._finalize()

  def close(self) -> None:
    try:
      self._finalize()
    finally:
      self._mngr.close()


def abstract_like(tree: Any) -> Any:
  """``ShapeDtypeStruct`` leaves (keeping shardings) for a restore target."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)

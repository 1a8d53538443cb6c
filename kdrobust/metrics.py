"""Metrics a person can plot: JSON lines, TensorBoard summaries, a progress bar.

Only process 0 writes. ``<workdir>/metrics.jsonl`` holds one JSON object per
logged step (``{"step": ..., "split": "train"|"eval"|..., <name>: value}``);
read it with :func:`read_jsonl` (pandas: ``pd.read_json(path, lines=True)``).
TensorBoard event files go to ``<workdir>/tb`` (tensorboardX, no TensorFlow).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Iterable

import jax
import numpy as np


def _to_py(v: Any) -> Any:
  if isinstance(v, (np.ndarray, jax.Array)):
    v = np.asarray(v)
    return v.item() if v.size == 1 else v.tolist()
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  return v


class MetricWriter:
  """Appends JSON lines and TensorBoard scalars (process 0 only)."""

  def __init__(self, workdir: str, *, tensorboard: bool = True):
    self.active = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.active and tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      except ImportError:  # optional: JSON lines are the source of truth
        self._tb = None

  def write(self, step: int, split: str, scalars: dict[str, Any]) -> None:
    if not self.active:
      return
    row = {"step": int(step), "split": split, "time": time.time()}
    row.update({k: _to_py(v) for k, v in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k not in ("step", "split", "time") and isinstance(v, (int, float)) \
            and math.isfinite(v):
          self._tb.add_scalar(f"{split}/{k}", v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """All rows of a ``metrics.jsonl`` file.

  A torn *last* line (the process was killed while appending it) is dropped;
  a malformed line elsewhere raises :class:`kdrobust.fileio.TornFileError`
  naming the file and the line.
  """
  from kdrobust import fileio  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  rows = []
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except ValueError:
      if i == len(lines) - 1:
        break
      raise fileio.TornFileError(
          f"{path} line {i + 1} is malformed. Delete that line (or the file) and rerun."
      ) from None
  return rows


def truncate_after(path: str, step: int) -> None:
  """Drop rows logged after ``step`` (a resumed run re-logs them); atomic rewrite."""
  from kdrobust import fileio  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    return
  rows = [r for r in read_jsonl(path) if r["step"] <= step]
  fileio.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def progress(total: int, initial: int = 0, desc: str = "train"):
  """A tqdm progress bar with rate and ETA (process 0 only; silent elsewhere)."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, desc=desc, unit="step",
              dynamic_ncols=True, file=sys.stderr, smoothing=0.1,
              disable=jax.process_index() != 0 or None)


def format_scalars(scalars: dict[str, Any], keys: Iterable[str] | None = None) -> str:
  keys = list(keys) if keys is not None else sorted(scalars)
  parts = []
  for k in keys:
    if k in scalars:
      v = _to_py(scalars[k])
      parts.append(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}")
  return " ".join(parts)

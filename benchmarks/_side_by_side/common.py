"""Environment, carried wheels, time budget, timing and Markdown/JSON output.

Nothing here imports JAX or torch at module level: :func:`setup_environment`
must set the XLA allocator variables before JAX initialises.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import statistics
import sys
import time
import traceback
from typing import Any, Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WHEELS_DIR = os.path.join(REPO, "benchmarks", "wheels")
EPOCH_IMAGES = 50_000  # CIFAR-10 train split


# ---------------------------------------------------------------- environment

def setup_environment(smoke: bool) -> None:
  """Import paths and allocator settings; call before importing JAX or torch.

  JAX and torch share one GPU here: JAX must not preallocate 75 % of it, and
  its pool is capped (``XLA_PYTHON_CLIENT_MEM_FRACTION``, default 0.45 here)
  so that torch's caching allocator keeps the rest. Values already set in the
  environment win.
  """
  for p in (REPO, os.path.join(REPO, "tests")):
    if p not in sys.path:
      sys.path.insert(0, p)
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if smoke:
    # 2 shared CPU cores in CI: no OpenMP oversubscription.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def activate_wheels(directory: str = WHEELS_DIR) -> list[str]:
  """Put every pure-Python wheel of ``directory`` at the END of ``sys.path``.

  A ``py3-none-any`` wheel is a zip archive with the package at its root, so
  ``zipimport`` imports it as it is: nothing is installed, and an installed
  copy of the same package (earlier on ``sys.path``) wins. Returns the wheel
  file names used.
  """
  used = []
  for whl in sorted(glob.glob(os.path.join(directory, "*.whl"))):
    if not whl.endswith("-none-any.whl"):
      continue  # compiled wheels cannot be imported from a zip
    if whl not in sys.path:
      sys.path.append(whl)
    used.append(os.path.basename(whl))
  return used


def slim_wheels(directory: str = WHEELS_DIR) -> list[str]:
  """Rewrite each wheel in ``directory`` without files under an ``examples/`` folder.

  ``pyautoattack-0.2.0-py3-none-any.whl`` is 42 MB, 41 MB of which is an
  example checkpoint (``pyautoattack/examples/model_test.pt``); the device
  tool carries at most 64 MiB. The RECORD lines of dropped files go too.
  Returns one line per wheel.
  """
  import zipfile  # pylint: disable=g-import-not-at-top
  out = []
  for whl in sorted(glob.glob(os.path.join(directory, "*.whl"))):
    before = os.path.getsize(whl)
    if not zipfile.is_zipfile(whl):
      out.append(f"{os.path.basename(whl)}: not a zip archive, left alone")
      continue
    with zipfile.ZipFile(whl) as z:
      drop = {i.filename for i in z.infolist() if "/examples/" in i.filename}
      if not drop:
        out.append(f"{os.path.basename(whl)}: nothing to drop ({before / 1e6:.2f} MB)")
        continue
      tmp = whl + ".tmp"
      with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as w:
        for info in z.infolist():
          if info.filename in drop:
            continue
          data = z.read(info.filename)
          if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(line for line in data.decode().splitlines(keepends=True)
                           if line.split(",")[0] not in drop).encode()
          w.writestr(info, data)
    os.replace(tmp, whl)
    out.append(f"{os.path.basename(whl)}: dropped {len(drop)} example files, "
               f"{before / 1e6:.2f} MB -> {os.path.getsize(whl) / 1e6:.2f} MB")
  return out


def have(module: str) -> bool:
  """Whether ``module`` can be imported (without importing it twice)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


def missing_wheel_reason(module: str, dist: str, version: str) -> str:
  return (f"{module} is not importable: carry {dist}=={version} as a wheel in benchmarks/wheels/ "
          f"(docs/benchmarks.md, 'GPU side-by-side').")


# ---------------------------------------------------------------- budget

class SkipSection(Exception):
  """Raised inside a section: the whole section is skipped, with the reason."""


class Budget:
  """A wall-clock budget with section priors corrected by what was measured.

  ``estimate(prior)`` scales a prior (seconds, a guess written in the
  configuration) by the median ratio measured/prior of the sections already
  run, so a slow or fast machine corrects the remaining estimates.
  """

  def __init__(self, total_s: float):
    self.total_s = float(total_s)
    self.t0 = time.perf_counter()
    self._ratios: list[float] = []

  def elapsed(self) -> float:
    return time.perf_counter() - self.t0

  def remaining(self) -> float:
    return self.total_s - self.elapsed()

  def scale(self) -> float:
    return statistics.median(self._ratios) if self._ratios else 1.0

  def estimate(self, prior_s: float) -> float:
    return prior_s * self.scale()

  def observe(self, prior_s: float, actual_s: float) -> None:
    if prior_s > 0 and actual_s > 0:
      self._ratios.append(actual_s / prior_s)

  def fits(self, estimate_s: float) -> bool:
    return estimate_s <= self.remaining()


# ---------------------------------------------------------------- timing

def sync_torch(device) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  if str(device).startswith("cuda"):
    torch.cuda.synchronize()


def timed_loop(run: Callable[[], Any], block: Callable[[Any], Any], *, first_s: float,
               min_time_s: float, min_steps: int, max_steps: int,
               repeats: int = 3) -> dict[str, float]:
  """Time ``run()`` back to back (asynchronous dispatch allowed, one sync per repeat).

  The number of steps per repeat is chosen from ``first_s`` (a warm step's
  time) so that a repeat lasts about ``min_time_s / repeats``; the result is
  the median over ``repeats`` of the mean step time, plus the spread.
  """
  per = max(min_time_s / max(repeats, 1), 1e-9)
  n = int(min(max(math.ceil(per / max(first_s, 1e-6)), min_steps), max_steps))
  means = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = None
    for _ in range(n):
      out = run()
    block(out)
    means.append((time.perf_counter() - t0) / n)
  return {"step_s": statistics.median(means), "step_s_min": min(means),
          "step_s_max": max(means), "steps_timed": n * repeats}


class CompileCounter:
  """Counts XLA backend compilations (``jax.monitoring`` events) and their seconds."""

  _installed = None

  def __init__(self):
    self.events: list[float] = []

  @classmethod
  def get(cls) -> "CompileCounter":
    if cls._installed is None:
      import jax  # pylint: disable=g-import-not-at-top
      c = cls()

      def listen(name, secs, **_):
        if name.endswith("backend_compile_duration"):
          c.events.append(float(secs))

      jax.monitoring.register_event_duration_secs_listener(listen)
      cls._installed = c
    return cls._installed

  def mark(self) -> int:
    return len(self.events)

  def since(self, mark: int) -> tuple[int, float]:
    ev = self.events[mark:]
    return len(ev), float(sum(ev))


# ---------------------------------------------------------------- output

@dataclasses.dataclass
class Column:
  key: str
  header: str
  fmt: str = "{}"  # a format string, or "" for str()


@dataclasses.dataclass
class SectionResult:
  """What a section reports: Markdown table rows (dicts) plus notes."""
  letter: str
  slug: str
  title: str
  columns: list[Column] = dataclasses.field(default_factory=list)
  rows: list[dict] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
  status: str = "ok"  # ok | partial | skipped | error
  reason: str = ""
  elapsed_s: float = 0.0
  extra: dict = dataclasses.field(default_factory=dict)

  def skip_row(self, label_key: str, label: str, why: str, partial: bool = True) -> None:
    """A row that was not run: its label and why, the other cells empty.

    ``partial``: the section then reports ``partial`` (a budget skip), not for
    rows that ``--smoke`` leaves out on purpose.
    """
    self.rows.append({label_key: label, "_skipped": why})
    if partial and self.status == "ok":
      self.status = "partial"

  def error_row(self, label_key: str, label: str, exc: BaseException) -> None:
    msg = str(exc).splitlines()[0][:300] if str(exc) else ""
    self.rows.append({label_key: label, "_skipped": f"ERROR {type(exc).__name__}: {msg}"})
    self.extra.setdefault("errors", []).append(
        {"row": label, "traceback": traceback.format_exc(limit=8)})
    self.status = "error"


def _cell(v: Any, fmt: str) -> str:
  if v is None:
    return "n/a"
  if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
    return "n/a"
  try:
    return fmt.format(v) if fmt else str(v)
  except (ValueError, TypeError):
    return str(v)


def markdown(res: SectionResult) -> str:
  """The section as Markdown: heading, status line, notes, table."""
  out = [f"### {res.letter}. {res.title}", ""]
  status = f"status: **{res.status}**, {res.elapsed_s:.1f} s"
  if res.reason:
    status += f"; {res.reason}"
  out += [status, ""]
  if res.columns and res.rows:
    out.append("| " + " | ".join(c.header for c in res.columns) + " |")
    out.append("| " + " | ".join("---" for _ in res.columns) + " |")
    for r in res.rows:
      if "_skipped" in r:
        first = res.columns[0]
        cells = [_cell(r.get(first.key), first.fmt), f"*{r['_skipped']}*"]
        cells += [""] * (len(res.columns) - 2)
        out.append("| " + " | ".join(cells[:len(res.columns)]) + " |")
      else:
        out.append("| " + " | ".join(_cell(r.get(c.key), c.fmt) for c in res.columns) + " |")
    out.append("")
  for n in res.notes:
    out.append(f"* {n}")
  if res.notes:
    out.append("")
  return "\n".join(out)


def _jsonable(v):
  if isinstance(v, dict):
    return {str(k): _jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
    return None
  if isinstance(v, (str, int, float, bool)) or v is None:
    return v
  try:
    return float(v)
  except (TypeError, ValueError):
    return str(v)


def as_json(res: SectionResult) -> dict:
  return _jsonable({"section": res.letter, "slug": res.slug, "title": res.title,
                    "status": res.status, "reason": res.reason,
                    "elapsed_s": res.elapsed_s,
                    "columns": [dataclasses.asdict(c) for c in res.columns],
                    "rows": res.rows, "notes": res.notes, "extra": res.extra})


def _atomic_write(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


class Writer:
  """Writes ``<out>/<letter>_<slug>.md`` and ``.json`` per section, and the summaries.

  ``summary.md`` / ``summary.json`` (all sections so far) are rewritten after
  every section in ``out`` and, if given, in ``summary_out`` too (the device
  tool brings back at most 8 files from ``$OUT``).
  """

  def __init__(self, out: str, summary_out: str | None, header: Sequence[str]):
    self.out = out
    self.summary_out = summary_out
    self.header = list(header)
    self.done: list[SectionResult] = []
    os.makedirs(out, exist_ok=True)
    if summary_out:
      os.makedirs(summary_out, exist_ok=True)

  def paths(self, res: SectionResult) -> tuple[str, str]:
    base = os.path.join(self.out, f"{res.letter}_{res.slug}")
    return base + ".md", base + ".json"

  def write(self, res: SectionResult) -> None:
    md, js = self.paths(res)
    _atomic_write(md, markdown(res))
    _atomic_write(js, json.dumps(as_json(res), indent=1))
    self.done.append(res)
    summary_md = "\n".join(self.header + [""] + [markdown(r) for r in self.done])
    summary_js = json.dumps({"header": self.header,
                             "sections": [as_json(r) for r in self.done]}, indent=1)
    for d in filter(None, (self.out, self.summary_out)):
      _atomic_write(os.path.join(d, "summary.md"), summary_md)
      _atomic_write(os.path.join(d, "summary.json"), summary_js)


def fmt_bytes_gib(n: float | None) -> float | None:
  return None if n is None else n / 2 ** 30

"""The terminal table, the JSON file (never overwritten by accident), the plot."""

from __future__ import annotations

import os
from typing import Any, Sequence

COLUMNS = ("clean", "fgsm", "pgd20", "pgd20_best", "cw", "cw_best", "cw30", "aa", "transfer")
HEADERS = {"clean": "clean", "fgsm": "FGSM", "pgd20": "PGD-20", "pgd20_best": "PGD-20 any",
           "cw": "CW-inf", "cw_best": "CW-inf any", "cw30": "CW-inf 30", "aa": "AA",
           "transfer": "transfer"}
WIDTH = 12  # characters per column


class OutputExistsError(FileExistsError):
  """An evaluation file of that name exists (pass ``overwrite=True`` / ``--overwrite``)."""


def _pct(v: float | None) -> str:
  return "-" if v is None else f"{100.0 * v:.2f}"


def format_table(record: dict[str, Any]) -> str:
  """The results as a fixed-width table, AA stages and warnings below (percentages)."""
  per_eps = record["per_eps"]
  cols = [c for c in COLUMNS if any(c in e["accuracy"] for e in per_eps)]
  width = max([len("eps")] + [len(e["eps_str"]) for e in per_eps]) + 2
  headers = _headers(record)
  w = WIDTH
  head = "eps".ljust(width) + "".join(f"{headers[c]:>{w}}" for c in cols) + f"{'worst':>{w}}"
  lines = [_title(record), head, "-" * len(head)]
  for e in per_eps:
    lines.append(e["eps_str"].ljust(width)
                 + "".join(f"{_pct(e['accuracy'].get(c)):>{w}}" for c in cols)
                 + f"{_pct(e.get('worst_case')):>{w}}")
  lines.append("(accuracy in %; worst = correct under every attack listed)")
  lines += _iterate_lines(record, cols, headers)
  for e in per_eps:
    aa = e.get("autoattack")
    if aa:
      stages = " -> ".join(f"{s['attack']} {_pct(s['robust_acc'])}" for s in aa["stages"])
      lines.append(f"AutoAttack {aa['version']} at eps {e['eps_str']}: clean "
                   f"{_pct(aa['clean_acc'])}" + (f" -> {stages}" if stages else "")
                   + f" (re-evaluated: {_pct(aa['reeval_acc'])})")
  lines += _diagnostic_lines(record.get("diagnostics"))
  warnings = record.get("warnings", [])
  if warnings:
    lines.append(f"Gradient-masking warnings ({len(warnings)}):")
    lines += [f"  ! [{w['code']}] {w['message']}" for w in warnings]
  else:
    lines.append("No gradient-masking signs found.")
  return "\n".join(lines)


def _headers(record: dict[str, Any]) -> dict[str, str]:
  """Column headers; under L2 the CW columns read CW-L2."""
  if record.get("norm") != "L2":
    return dict(HEADERS)
  return {k: v.replace("CW-inf", "CW-L2") for k, v in HEADERS.items()}


def _iterate_lines(record: dict[str, Any], cols, headers) -> list[str]:
  """Which iterate each projected column counts (the presets' ``iterate``)."""
  presets = record.get("presets") or {}
  parts = []
  for c in cols:
    p = presets.get(c)
    if not p or p.get("steps", 1) <= 1:
      continue
    it = p.get("iterate", "any")
    what = {"last": "last iterate", "first": "first misclassified iterate (early stop)",
            "any": "any iterate (stronger than the papers')"}.get(it, it)
    extra = f", {p['restarts']} restarts" if p.get("restarts", 1) > 1 else ""
    parts.append(f"{headers[c]}: {what}{extra}")
  return ["(iterate: " + "; ".join(parts) + ")"] if parts else []


def _title(record: dict[str, Any]) -> str:
  ck = record.get("checkpoint") or {}
  where = record.get("workdir", "<arrays>")
  step = f", checkpoint step {ck['step']} ({ck.get('requested')})" if ck else ""
  ds = f" of {record['dataset']}" if record.get("dataset") else ""
  aa_bs = f", AutoAttack batch {record['aa_batch_size']}" if record.get("aa_batch_size") else ""
  return (f"Evaluation of {where}{step}: {record['num_examples']} test examples{ds}, "
          f"{record['norm']}, seed {record['seed']}, batch {record['batch_size']}{aa_bs}")


def _diagnostic_lines(diag: dict[str, Any] | None) -> list[str]:
  """Teacher-student gradient agreement and local linearity, one line each."""
  if not diag:
    return []
  out = []
  tg = diag.get("teacher_gradients")
  if tg:
    out.append(f"Input gradients vs teacher {tg['teacher']}: GD {tg['gd']:.4g}, "
               f"GC {tg['gc']:.4f} (teacher clean {_pct(tg['teacher_clean_acc'])})")
  ll = diag.get("local_linearity")
  if ll:
    out.append("Local linearity gamma (mean / max): " + ", ".join(
        f"eps {k} {v['mean']:.4g} / {v['max']:.4g}" for k, v in ll["per_eps"].items()))
  return out


def write_json(path: str, record: dict[str, Any], *, overwrite: bool = False) -> str:
  """Write ``record`` to ``path`` atomically; refuse an existing file unless ``overwrite``."""
  check_writable(path, overwrite=overwrite)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  from kdrobust import fileio  # pylint: disable=g-import-not-at-top
  fileio.write_json(path, record, default=_json_default)  # temp file, fsync, os.replace
  return path


def check_writable(path: str, *, overwrite: bool) -> None:
  """Raise :class:`OutputExistsError` if ``path`` exists and ``overwrite`` is off."""
  if os.path.exists(path) and not overwrite:
    raise OutputExistsError(
        f"{path} exists: an earlier evaluation is never overwritten. Pick another --name, "
        "or pass --overwrite to replace it.")


def _json_default(v):
  """numpy scalars and arrays, tuples."""
  if hasattr(v, "tolist"):
    return v.tolist()
  if hasattr(v, "item"):
    return v.item()
  return str(v)


def require_matplotlib():
  """``matplotlib.pyplot`` with the Agg backend, or a clear error naming the extra."""
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("--plot needs matplotlib, an optional extra: "
                      "pip install 'kdrobust[plot]' (or pip install matplotlib).") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


PLOT_METRICS = ("worst",) + COLUMNS  # what --plot_attack may name


def accuracy_curve(record: dict[str, Any], column: str = "worst"
                   ) -> list[tuple[float, float]] | None:
  """``[(eps, accuracy), ...]`` from eps = 0, or None when ``column`` was not measured.

  The eps = 0 point is the record's measured clean accuracy: an attack with
  no budget cannot change an input, so every attack's accuracy at eps = 0 is
  the clean accuracy (on the same test points). ``column`` is an attack of
  :data:`COLUMNS` or ``'worst'`` (correct under every attack listed).
  """
  pts = [(0.0, float(record["clean_acc"]))]
  for e in sorted(record["per_eps"], key=lambda e: e["eps"]):
    v = e.get("worst_case") if column == "worst" else e["accuracy"].get(column)
    if v is None:
      return None
    pts.append((float(e["eps"]), float(v)))
  return pts


def run_label(record: dict[str, Any]) -> str:
  """``'trades (wrn34_10)'``: the run's method and model, as its config names them."""
  method = record.get("method") or "model"
  model = record.get("model")
  return f"{method} ({model})" if model else str(method)


def _metric_name(record: dict[str, Any], column: str) -> str:
  if column == "worst":
    cols = [_headers(record)[c] for c in COLUMNS
            if c != "clean" and c in (record.get("attacks") or ())]
    return "worst case over " + ", ".join(cols) if cols else "worst case"
  return _headers(record)[column]


def accuracy_figure(records: Sequence[dict[str, Any]], *, column: str = "worst"):
  """A matplotlib figure of accuracy (%) against epsilon, for a paper.

  One record: one line per measured attack (clean dashed), titled by the
  run's method and model. Several records (``--compare``): one line per run,
  the ``column`` accuracy (default the worst case over every attack), each
  labelled by method and model. Every line starts at eps = 0
  (:func:`accuracy_curve`); the accuracy axis is autoscaled to the data (a
  fixed 0-100 axis flattens the differences a comparison is about); eps is in
  units of 1/255 under Linf. Returns the figure (the caller saves and closes).
  """
  if column not in PLOT_METRICS:
    raise ValueError(f"Unknown plot metric {column!r}; valid: {', '.join(PLOT_METRICS)}.")
  plt = require_matplotlib()
  first = records[0]
  linf = first.get("norm", "Linf") == "Linf"
  scale = 255.0 if linf else 1.0
  fig, ax = plt.subplots(figsize=(5, 3.5), dpi=150)
  if len(records) == 1:
    for c in COLUMNS:
      pts = accuracy_curve(first, c)
      if pts is not None:
        ax.plot([scale * x for x, _ in pts], [100 * y for _, y in pts], marker="o",
                linestyle="--" if c == "clean" else "-", label=_headers(first)[c])
    title = f"{run_label(first)} on {first.get('dataset') or 'test set'}"
  else:
    labels = [run_label(r) for r in records]
    for i, r in enumerate(records):
      pts = accuracy_curve(r, column)
      if pts is None:
        raise ValueError(f"{r.get('workdir', 'a run')} has no {column} accuracy to plot.")
      label = labels[i]
      if labels.count(label) > 1:  # the same method and model twice (seeds): name the runs
        label += f" [{os.path.basename(os.path.normpath(r.get('workdir') or str(i + 1)))}]"
      ax.plot([scale * x for x, _ in pts], [100 * y for _, y in pts], marker="o",
              label=label)
    title = f"Robust accuracy on {first.get('dataset') or 'test set'}"
  ax.set_xlabel("epsilon (x 1/255)" if linf else "epsilon (L2)")
  ylabel = "accuracy (%)" if len(records) == 1 else f"accuracy (%), {_metric_name(first, column)}"
  ax.set_ylabel(ylabel, fontsize=8 if len(ylabel) > 30 else None)
  ax.set_xlim(left=0)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(f"{title}\n{first['norm']}, {first['num_examples']} test points", fontsize=9)
  fig.tight_layout()
  return fig


def plot_accuracy_vs_eps(record: dict[str, Any], path: str, *, overwrite: bool = False,
                         compare: Sequence[dict[str, Any]] = (), column: str = "worst"
                         ) -> str:
  """Write :func:`accuracy_figure` of ``record`` (and the ``compare`` records) to ``path``."""
  plt = require_matplotlib()
  check_writable(path, overwrite=overwrite)
  fig = accuracy_figure([record, *compare], column=column)
  fig.savefig(path)
  plt.close(fig)
  return path

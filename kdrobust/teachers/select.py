"""Choose DARHT teachers from their transferability matrix.

DARHT (Deng et al. 2024, docs/fidelity.md, DARHT) distils from several
heterogeneous teachers chosen to have *mutually low adversarial
transferability*. Its measurement (``LoadModels/RunAttacks.py``): for each
candidate ``i`` (the *source*), take 1000 class-balanced test images that
``i`` classifies correctly, craft APGD-CE examples on ``i`` (``eps = 0.031``,
initial step ``0.005``, 40 iterations) and report every other model ``j``'s
accuracy on them. High accuracy means low transferability.

Usage::

  python -m kdrobust.teachers.select --teachers a=runs/a,b=conv/b,c=runs/c \\
      --dataset cifar10 --data_dir DIR --k 2 [--num_examples 1000] [--eps 0.031] \\
      [--step_size 0.005] [--n_iter 40] [--include a] [--objective mean|min] \\
      [--out selection.json] [--seed 0]

Every input (names, paths, ``k``, ``--include``, the dataset, each teacher's
classes and input shape, the output path) is checked before any attack runs.
The command prints the matrix, the best few subsets and a ready-to-paste
``config.teachers`` snippet, and with ``--out`` writes a JSON record
(format ``kdrobust.teachers.select/1``: ``names``, ``matrix`` (rows = source,
columns = target, fractions), ``n_points``, ``clean_accuracy``,
``indices`` (each source's points in the test pool), ``protocol``, ``rule``,
``ranking`` (best first, at most 50), ``choice``, ``config_snippet``,
``error``).

Measurement (:func:`measure`). Each source gets its *own* class-balanced
subset drawn from the test points it classifies correctly (DARHT's wording),
so every row is computed on ``num_examples`` points (fewer, with a warning,
when a class has too few correctly classified points: the balance is kept,
the shortfall is not refilled from other classes). The attack is this
package's APGD-CE (:func:`kdrobust.attacks.transfer.transfer_attack`: no random
start, highest-loss iterate), as in
:func:`kdrobust.attacks.transfer.transferability_matrix`; the loop is
written out here for the per-source subsets and per-source progress lines.
PyTorch ``.pt`` files are not taken directly (their architecture and
normalisation need options): convert them first with
``python -m kdrobust.teachers.convert`` and pass the directory.

Selection rule (:func:`choose`; CHOICE: the paper's rule is UNCONFIRMED, the
released code only prints the matrix). For a candidate set ``S`` of size
``k``::

  score(S)      = mean_{i, j in S, i != j} M[i, j]   (both directions)
  min_pair(S)   = min_{i, j in S, i != j} M[i, j]
  robustness(S) = mean_{i in S} M[i, i]

Every size-``k`` subset containing ``--include`` is scored (exhaustive; refused
above :data:`MAX_SUBSETS` subsets). ``objective='mean'`` (default) ranks by
``score``, then ``robustness``, then ``min_pair``; ``objective='min'`` (a
max-min rule) by ``min_pair``, then ``score``, then ``robustness``. Remaining
ties go to the subset listed first in the matrix order. Values are compared
after rounding to 9 decimals, so sums of the same accuracies in another
order tie. Why this rule:

* the mean over ordered pairs is the literal reading of "mutually low
  transferability": each direction ``i -> j`` is one distillation signal the
  student sees (examples that fool ``i`` are what the student's attacks will
  find once it imitates ``i``), and both directions count equally;
* the mean, not the minimum, is the default because one near-zero pair (two
  copies of one model) already shows in the mean, while a minimum rule
  ignores everything but one pair; ``--objective min`` is there for those
  who want the worst-case guarantee;
* the diagonal ``M[i, i]`` is ``i``'s accuracy under its own white-box
  APGD-CE on points it gets right, i.e. its (conditional) robustness. It is
  only a tie-breaker: DARHT's stated criterion is transferability, and
  weighing robustness into the score would need a trade-off weight that
  nothing in the paper fixes. Robust teachers are already favoured by the
  score, since a robust target keeps a high accuracy on transferred examples.
* ``k = 1`` has no pairs: subsets are ranked by robustness alone and
  ``score``/``min_pair`` are ``None``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import ml_collections as mlc
import numpy as np

from kdrobust import cli
from kdrobust import config_lib
from kdrobust import data as data_lib
from kdrobust import evaluate
from kdrobust import teachers as teachers_lib
from kdrobust.attacks import transfer
from kdrobust.attacks.apgd import predict
from kdrobust.evaluation import report
from kdrobust.evaluation import runner

FORMAT = "kdrobust.teachers.select/1"
MAX_SUBSETS = 100_000
OBJECTIVES = ("mean", "min")
RANKING_KEEP = 50  # subsets stored in the JSON record
_DECIMALS = 9


class SelectionError(ValueError):
  """Bad selection inputs (reported before any compute)."""


# ----------------------------------------------------------------------------
# The rule (pure).
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Candidate:
  """One scored teacher subset (members in the matrix's order).

  ``score``: mean of ``M[i, j]`` over ordered pairs ``i != j`` (None for
  ``k = 1``); ``min_pair``: their minimum; ``robustness``: mean diagonal.
  """
  members: tuple[str, ...]
  score: float | None
  min_pair: float | None
  robustness: float
  rank: int = 0

  def as_dict(self) -> dict[str, Any]:
    return {"rank": self.rank, "members": list(self.members), "score": self.score,
            "min_pair": self.min_pair, "robustness": self.robustness}


def count_subsets(n: int, k: int, num_included: int = 0) -> int:
  """Number of size-``k`` subsets of ``n`` items containing ``num_included`` fixed ones."""
  if k < num_included or k > n:
    return 0
  return math.comb(n - num_included, k - num_included)


def _check_request(names: Sequence[str], k, include: Sequence[str], objective: str,
                   max_subsets: int) -> None:
  """The checks shared by :func:`choose` and the CLI's pre-compute plan."""
  n = len(names)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise SelectionError(f"k must be a positive integer (the number of teachers), got {k!r}.")
  if k > n:
    raise SelectionError(f"k = {k} teachers requested but only {n} candidate(s) given "
                         f"({', '.join(names)}).")
  if objective not in OBJECTIVES:
    raise SelectionError(f"Unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}.")
  unknown = [s for s in include if s not in names]
  if unknown:
    raise SelectionError(f"--include names {', '.join(unknown)} are not candidates "
                         f"({', '.join(names)}).")
  if len(set(include)) != len(include):
    raise SelectionError(f"--include repeats a name: {', '.join(include)}.")
  if len(include) > k:
    raise SelectionError(f"--include forces {len(include)} teachers into a set of k = {k}.")
  total = count_subsets(n, int(k), len(include))
  if total > max_subsets:
    raise SelectionError(
        f"{total:,} subsets of size {k} from {n} candidates ({len(include)} forced) is more "
        f"than the {max_subsets:,} scored exhaustively: lower k, force teachers with "
        "--include, or drop candidates.")


def _sort_key(c: Candidate, objective: str, order: tuple[int, ...]):
  r = lambda v: round(float(v), _DECIMALS)  # noqa: E731
  if c.score is None:  # k = 1
    return (-r(c.robustness), order)
  if objective == "min":
    return (-r(c.min_pair), -r(c.score), -r(c.robustness), order)
  return (-r(c.score), -r(c.robustness), -r(c.min_pair), order)


def choose(matrix: transfer.TransferMatrix, k: int, *, include: Sequence[str] = (),
           objective: str = "mean", top: int | None = None,
           max_subsets: int = MAX_SUBSETS) -> list[Candidate]:
  """Rank every size-``k`` teacher subset by the module's rule, best first.

  Args:
    matrix: a :class:`kdrobust.attacks.transfer.TransferMatrix` (``names``,
      ``matrix[i, j]`` = accuracy of ``names[j]`` on examples crafted on
      ``names[i]``, ``n_points``).
    k: subset size (>= 1, <= number of candidates).
    include: names forced into every subset.
    objective: ``'mean'`` (mean cross-accuracy, default) or ``'min'``
      (worst pair); see the module docstring for the tie-breaks.
    top: return only the best ``top`` subsets (default: all).
    max_subsets: refuse (SelectionError) when more subsets would be scored.

  Returns:
    ``Candidate``s with ``rank`` 1, 2, ...

  Raises:
    SelectionError: bad ``k``/``include``/``objective``, too many subsets, or
      a source whose row is unmeasured (NaN: it classified none of its
      points correctly).
  """
  names = tuple(matrix.names)
  m = np.asarray(matrix.matrix, np.float64)
  n = len(names)
  if m.shape != (n, n):
    raise SelectionError(f"The matrix is {m.shape}, expected ({n}, {n}) for {n} names.")
  include = tuple(include)
  _check_request(names, k, include, objective, max_subsets)
  bad = [names[i] for i in range(n) if np.isnan(m[i]).any()]
  if bad:
    raise SelectionError(f"Unmeasured transferability for source(s) {', '.join(bad)} (no "
                         "correctly classified test points to attack): drop them.")
  fixed = sorted(names.index(s) for s in include)
  rest = [i for i in range(n) if i not in fixed]
  off = ~np.eye(k, dtype=bool)
  cands = []
  for extra in itertools.combinations(rest, k - len(fixed)):
    idx = tuple(sorted(fixed + list(extra)))
    sub = m[np.ix_(idx, idx)]
    pairs = sub[off]
    c = Candidate(tuple(names[i] for i in idx),
                  float(pairs.mean()) if pairs.size else None,
                  float(pairs.min()) if pairs.size else None,
                  float(np.mean(np.diag(sub))))
    cands.append((_sort_key(c, objective, idx), c))
  cands.sort(key=lambda t: t[0])
  out = [dataclasses.replace(c, rank=r + 1) for r, (_, c) in enumerate(cands)]
  return out if top is None else out[:top]


# ----------------------------------------------------------------------------
# Class-balanced points.
# ----------------------------------------------------------------------------
def class_balanced_indices(y, n: int, num_classes: int, seed: int = 0, *, eligible=None,
                           strict: bool = True) -> np.ndarray:
  """Sorted indices of ``n`` points of ``y``, as equal per class as possible.

  Each class gets ``n // num_classes`` points; the ``n % num_classes`` extra
  ones go to classes drawn with ``seed``. Within a class the points are drawn
  uniformly without replacement with ``numpy.random.default_rng(seed)``, so
  the result depends only on ``(y, eligible, n, num_classes, seed)``.
  ``eligible`` (bool mask) restricts the draw (DARHT: the points the source
  classifies correctly). A class with fewer eligible points than its quota
  raises with ``strict``; otherwise it gives all it has and the total is
  smaller (the shortfall is not refilled from other classes, which would
  unbalance them).
  """
  y = np.asarray(y)
  if n < 1:
    raise SelectionError(f"The number of points must be positive, got {n}.")
  if num_classes < 1:
    raise SelectionError(f"num_classes must be positive, got {num_classes}.")
  ok = np.ones(y.shape[0], bool) if eligible is None else np.asarray(eligible, bool)
  if ok.shape != y.shape:
    raise SelectionError(f"eligible has shape {ok.shape}, labels {y.shape}.")
  if strict and n > int(ok.sum()):
    raise SelectionError(f"{n} class-balanced points requested from {int(ok.sum())}.")
  rng = np.random.default_rng(seed)
  quota = np.full(num_classes, n // num_classes)
  quota[rng.permutation(num_classes)[:n % num_classes]] += 1
  picked = []
  for c in range(num_classes):
    pool = np.flatnonzero(ok & (y == c))
    q = int(quota[c])
    if pool.size < q:
      if strict:
        raise SelectionError(f"Class {c} has {pool.size} eligible points, {q} needed for {n} "
                             f"class-balanced points over {num_classes} classes.")
      q = pool.size
    if q:
      picked.append(rng.choice(pool, size=q, replace=False))
  if not picked:
    return np.zeros((0,), np.int64)
  return np.sort(np.concatenate(picked)).astype(np.int64)


def class_balanced_subset(x, y, n: int, num_classes: int, seed: int = 0
                          ) -> tuple[np.ndarray, np.ndarray]:
  """``(x[idx], y[idx])`` for :func:`class_balanced_indices` (strict, dataset order)."""
  idx = class_balanced_indices(y, n, num_classes, seed)
  return np.asarray(x)[idx], np.asarray(y)[idx]


# ----------------------------------------------------------------------------
# The measurement.
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Measurement:
  """The matrix plus, per source, its clean accuracy on the pool and its points."""
  matrix: transfer.TransferMatrix
  clean_accuracy: dict
  indices: dict  # source -> indices into the pool
  seconds: dict


def measure(logits_fns: Mapping[str, Callable], x, y, *, num_classes: int,
            num_examples: int = 1000, eps: float = 0.031, step_size: float = 0.005,
            n_iter: int = 40, seed: int = 0, batch_size: int | None = None,
            log: Callable[[str], None] | None = print) -> Measurement:
  """DARHT's matrix with per-source class-balanced correct points (module docstring).

  ``x, y``: the pool (e.g. the test split). For source ``i``: its clean
  predictions on the pool, ``num_examples`` class-balanced points among those
  it gets right (:func:`class_balanced_indices`, non-strict), APGD-CE on
  ``i`` (``eps``, initial ``step_size``, ``n_iter``, key ``seed``), every
  model's accuracy on the result. ``log`` gets one line per source.
  """
  say = log or (lambda s: None)
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  names = tuple(logits_fns)
  mat = np.full((len(names), len(names)), np.nan)
  counts, clean, indices, seconds = [], {}, {}, {}
  for i, src in enumerate(names):
    t0 = time.time()
    correct = predict(logits_fns[src], x, batch_size=batch_size) == y
    clean[src] = float(correct.mean())
    idx = class_balanced_indices(y, num_examples, num_classes, seed, eligible=correct,
                                 strict=False)
    indices[src] = idx
    short = (f" (WARNING: only {idx.size} of {num_examples}: some classes have too few "
             "correctly classified points)") if idx.size < num_examples else ""
    say(f"[{i + 1}/{len(names)}] source {src}: clean accuracy {100 * clean[src]:.1f}% on "
        f"{y.shape[0]} pool points; attacking {idx.size} class-balanced correct points"
        f"{short} ...")
    res = transfer.transfer_attack(logits_fns[src], logits_fns, x[idx], y[idx],
                                   attack="apgd-ce", eps=eps, step_size=step_size,
                                   n_iter=n_iter, key=seed, only_correct=True,
                                   batch_size=batch_size)
    counts.append(int(res.x_adv.shape[0]))
    for j, tgt in enumerate(names):
      mat[i, j] = res.target_accuracy[tgt]
    seconds[src] = round(time.time() - t0, 2)
    say(f"[{i + 1}/{len(names)}] source {src} done in {seconds[src]:.1f}s: target accuracy "
        + ", ".join(f"{t} {100 * mat[i, j]:.1f}%" for j, t in enumerate(names)))
  return Measurement(transfer.TransferMatrix(names, mat, tuple(counts)), clean, indices,
                     seconds)


# ----------------------------------------------------------------------------
# Inputs, plan, output.
# ----------------------------------------------------------------------------
def parse_teachers(spec: str) -> dict[str, str]:
  """``'a=path,b=path2'`` -> ``{'a': 'path', 'b': 'path2'}`` (order kept)."""
  out: dict[str, str] = {}
  for item in (s.strip() for s in (spec or "").split(",")):
    if not item:
      continue
    name, sep, path = item.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
      raise SelectionError(f"Bad --teachers entry {item!r}: expected name=path.")
    if not name.isidentifier():
      raise SelectionError(f"Teacher name {name!r} must be a Python identifier (it becomes "
                           "config.teachers.<name>).")
    if name in out:
      raise SelectionError(f"Teacher name {name!r} given twice.")
    out[name] = path
  if not out:
    raise SelectionError("--teachers is empty: give name=path,name2=path2,...")
  return out


def config_snippet(paths: Mapping[str, str]) -> str:
  """Python lines for a config's ``get_config`` plus the equivalent CLI overrides."""
  lines = ["# In get_config() (DARHT: slot k of the student's head imitates the k-th teacher",
           "# in sorted-name order, and model.kwargs.head_slots must equal the count):",
           "c.teachers = {"]
  lines += [f"    {json.dumps(name)}: config_lib.teacher_config({json.dumps(os.path.abspath(p))}),"
            for name, p in paths.items()]
  lines += ["}", f'c.model.kwargs = {{"head_slots": {len(paths)}}}', "",
            "# Or, for a config whose teachers already have these names:"]
  lines.append(" ".join(f"--config.teachers.{name}.path={os.path.abspath(p)}"
                        for name, p in paths.items()))
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything :func:`select` needs, checked before any compute."""
  paths: dict
  configs: dict  # name -> teacher ConfigDict
  info: Any  # DatasetInfo
  data_dir: str | None
  k: int
  include: tuple
  objective: str
  num_examples: int
  pool: int
  eps: float
  step_size: float
  n_iter: int
  seed: int
  out: str | None


def plan(teachers: str | Mapping[str, str], *, dataset: str, data_dir: str | None = None,
         k: int = 2, include: Sequence[str] = (), objective: str = "mean",
         num_examples: int = 1000, pool: int | None = None, eps: float = 0.031,
         step_size: float = 0.005, n_iter: int = 40, seed: int = 0, out: str | None = None,
         overwrite: bool = False) -> Plan:
  """Check every input without loading weights or data arrays; raises on the first problem.

  Raises SelectionError / TeacherError (ValueError) or
  ``kdrobust.data.DatasetNotFoundError``.
  """
  paths = parse_teachers(teachers) if isinstance(teachers, str) else dict(teachers)
  include = tuple(include)
  _check_request(tuple(paths), k, include, objective, MAX_SUBSETS)
  for what, v in (("--num_examples", num_examples), ("--n_iter", n_iter)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
      raise SelectionError(f"{what} must be a positive integer, got {v!r}.")
  for what, v in (("--eps", eps), ("--step_size", step_size)):
    if not (math.isfinite(v) and v > 0):
      raise SelectionError(f"{what} must be positive, got {v!r}.")
  if pool is not None and pool < 1:
    raise SelectionError(f"--pool must be positive, got {pool}.")
  info = data_lib.info(dataset, data_dir or None)  # unknown / unprepared dataset
  n_pool = min(pool or info.num_test, info.num_test)
  if num_examples > n_pool:
    raise SelectionError(f"--num_examples {num_examples} exceeds the {n_pool} test points "
                         f"available ({dataset}{', --pool' if pool else ''}).")
  configs = {}
  for name, path in paths.items():
    tc = config_lib.teacher_config(path)
    teachers_lib.check_compatible(name, tc, info)  # missing path, bad kind, classes
    if os.path.isfile(path):  # passed check_compatible: a PyTorch .pt/.pth
      raise SelectionError(
          f"Teacher {name!r} is a PyTorch file ({path}): convert it first with "
          f"'python -m kdrobust.teachers.convert --arch ARCH --input {path} --output DIR' "
          "(plus its layout/normalisation options) and pass DIR.")
    configs[name] = tc
  if out:
    if os.path.exists(out) and not overwrite:
      raise SelectionError(f"{out} exists: pass --overwrite to replace it, or another --out.")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
      raise SelectionError(f"The directory of --out ({parent}) does not exist.")
  return Plan(paths, configs, info, data_dir or None, int(k), include, objective,
              int(num_examples), n_pool, float(eps), float(step_size), int(n_iter),
              int(seed), out)


def _nan_to_none(a) -> list:
  return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(a)]


def select(p: Plan, *, batch_size: int | None = None, overwrite: bool = False,
           log: Callable[[str], None] | None = print,
           command: Sequence[str] | None = None) -> dict[str, Any]:
  """Load the teachers, measure the matrix, rank the subsets; returns the JSON record.

  Teachers are loaded and checked against the dataset's input shape and
  classes (:func:`kdrobust.teachers.check_against_data`) before the test data
  is read or any attack runs. Writes ``p.out`` when set. If no subset can be
  ranked after the measurement (a source classified none of its points
  correctly), the record keeps the matrix with ``choice = None`` and the
  reason in ``error``.
  """
  say = log or (lambda s: None)
  t_start = time.time()
  fns, sources = {}, {}
  for name, tc in p.configs.items():
    t = teachers_lib.load(name, tc)
    teachers_lib.check_against_data(t, p.info)
    fns[name] = runner.flax_logits_fn(t.module, t.variables)
    sources[name] = t.source
  cfg = mlc.ConfigDict({"data": {"name": p.info.name, "data_dir": p.data_dir or ""}})
  x, y = evaluate.load_test_data(cfg, p.pool, data_dir=p.data_dir)
  say(f"{len(fns)} candidate teachers, {p.info.name} test pool of {x.shape[0]} points; "
      f"APGD-CE eps {p.eps:g}, initial step {p.step_size:g}, {p.n_iter} iterations on "
      f"{p.num_examples} class-balanced points each source classifies correctly.")
  ms = measure(fns, x, y, num_classes=p.info.num_classes, num_examples=p.num_examples,
               eps=p.eps, step_size=p.step_size, n_iter=p.n_iter, seed=p.seed,
               batch_size=batch_size, log=log)
  error = None
  try:
    ranking = choose(ms.matrix, p.k, include=p.include, objective=p.objective)
  except SelectionError as e:  # e.g. a source with no correct point: keep the matrix
    ranking, error = [], str(e)
  best = ranking[0] if ranking else None
  record = {
      "format": FORMAT,
      "dataset": p.info.name, "data_dir": p.data_dir, "split": "test", "pool": int(x.shape[0]),
      "teachers": {n: {"path": os.path.abspath(p.paths[n]), "source": sources[n]}
                   for n in fns},
      "protocol": {"attack": "apgd-ce", "eps": p.eps, "step_size": p.step_size,
                   "n_iter": p.n_iter, "random_init": False, "select": "highest loss",
                   "num_examples": p.num_examples, "class_balanced": True,
                   "points": "per source, among those it classifies correctly",
                   "seed": p.seed},
      "names": list(ms.matrix.names), "matrix": _nan_to_none(ms.matrix.matrix),
      "n_points": list(ms.matrix.n_points), "clean_accuracy": ms.clean_accuracy,
      "indices": {n: v.tolist() for n, v in ms.indices.items()},
      "seconds": ms.seconds,
      "rule": {"k": p.k, "include": list(p.include), "objective": p.objective,
               "score": "mean over ordered pairs i != j in S of M[i, j]",
               "tie_breaks": ("robustness (mean diagonal), then min_pair" if p.objective ==
                              "mean" else "score, then robustness (mean diagonal)"),
               "num_subsets": count_subsets(len(fns), p.k, len(p.include))},
      "ranking": [c.as_dict() for c in ranking[:RANKING_KEEP]],
      "choice": best.as_dict() if best else None,
      "config_snippet": (config_snippet({n: p.paths[n] for n in best.members}) if best
                         else None),
      "error": error,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "time_s": round(time.time() - t_start, 2),
  }
  if command is not None:
    record["command"] = " ".join(command)
  if p.out:
    record["path"] = report.write_json(p.out, record, overwrite=overwrite)
  return record


def matrix_of(record: Mapping[str, Any]) -> transfer.TransferMatrix:
  """The record's :class:`~kdrobust.attacks.transfer.TransferMatrix` (None -> NaN)."""
  m = np.array([[np.nan if v is None else v for v in row] for row in record["matrix"]],
               np.float64)
  return transfer.TransferMatrix(tuple(record["names"]), m, tuple(record["n_points"]))


def format_matrix(matrix: transfer.TransferMatrix) -> str:
  """The matrix as text (``TransferMatrix.as_table``): rows = source with its point count."""
  return matrix.as_table()


def format_ranking(rows: Sequence[Mapping[str, Any]]) -> str:
  """The ranked subsets as text (percent)."""
  pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
  out = [f"{'rank':>4}  {'score':>6}  {'min':>6}  {'robust':>6}  teachers"]
  for r in rows:
    out.append(f"{r['rank']:>4}  {pct(r['score']):>6}  {pct(r['min_pair']):>6}  "
               f"{pct(r['robustness']):>6}  {', '.join(r['members'])}")
  return "\n".join(out)


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
  """The CLI flags (see the module docstring)."""
  p = cli.ArgumentParser(
      prog="python -m kdrobust.teachers.select",
      description="DARHT teacher selection: measure the APGD transferability matrix of "
      "candidate teachers and rank the size-k subsets by mutual transferability.")
  p.add_argument("--teachers", required=True,
                 help="name=path,name2=path2,...: kdrobust run or converted-teacher dirs.")
  p.add_argument("--dataset", required=True, help="e.g. cifar10, cifar100, synthetic:8x8x1:10.")
  p.add_argument("--data_dir", default=None, help="Prepared datasets (default: TFDS default).")
  p.add_argument("--k", type=int, default=2, help="Number of teachers to choose (default 2).")
  p.add_argument("--include", action="append", default=[],
                 help="Force this teacher into the set (repeatable, or comma-separated).")
  p.add_argument("--objective", default="mean", choices=OBJECTIVES,
                 help="mean (default): mean cross-accuracy; min: the worst pair.")
  p.add_argument("--num_examples", type=int, default=1000,
                 help="Class-balanced correct points per source (default 1000, DARHT).")
  p.add_argument("--pool", type=int, default=None,
                 help="Draw them from the first N test points (default: the whole split).")
  p.add_argument("--eps", type=float, default=0.031, help="Linf radius (default 0.031).")
  p.add_argument("--step_size", type=float, default=0.005,
                 help="APGD initial step (default 0.005).")
  p.add_argument("--n_iter", type=int, default=40, help="APGD iterations (default 40).")
  p.add_argument("--seed", type=int, default=0, help="Subset draw and attack key (default 0).")
  p.add_argument("--batch_size", type=int, default=None, help="Attack batch size.")
  p.add_argument("--top", type=int, default=5, help="Subsets to print (default 5).")
  p.add_argument("--out", default=None, help="Write the JSON record here.")
  p.add_argument("--overwrite", action="store_true", help="Replace an existing --out.")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Run the CLI; returns the exit status (0 ok; 2 bad input: one line ``error: ...``,
  :mod:`kdrobust.cli`; 1 no subset could be ranked after the measurement)."""
  return cli.run(_main, argv)


def _main(argv: Sequence[str]) -> int:
  args = make_parser().parse_args(argv)
  include = tuple(s.strip() for v in args.include for s in v.split(",") if s.strip())
  for what, v in (("--batch_size", args.batch_size), ("--top", args.top)):
    if v is not None and v < 1:
      raise SelectionError(f"{what} must be a positive integer, got {v}.")
  if args.eps > 1:  # plan() checks finite and > 0
    raise SelectionError(f"--eps must be in (0, 1] (pixels are in [0, 1]), got {args.eps}.")
  p = plan(args.teachers, dataset=args.dataset, data_dir=args.data_dir, k=args.k,
           include=include, objective=args.objective, num_examples=args.num_examples,
           pool=args.pool, eps=args.eps, step_size=args.step_size, n_iter=args.n_iter,
           seed=args.seed, out=args.out, overwrite=args.overwrite)
  record = select(p, batch_size=args.batch_size, overwrite=args.overwrite,
                  log=lambda s: print(s, flush=True),
                  command=["python -m kdrobust.teachers.select"] + list(argv))
  print("\nTransferability matrix: accuracy (%) of each target (column) on APGD-CE examples "
        "crafted on each source (row); high = low transferability.")
  print(format_matrix(matrix_of(record)))
  if record["error"]:
    print(f"\nerror: {record['error']}", file=sys.stderr, flush=True)
    if "path" in record:
      print(f"Wrote the matrix to {record['path']}")
    return 1
  print(f"\nBest subsets of k = {p.k} (objective {p.objective}; score = mean cross-accuracy, "
        "min = worst pair, robust = mean diagonal; of "
        f"{record['rule']['num_subsets']} subsets):")
  print(format_ranking(record["ranking"][:max(args.top, 1)]))
  print(f"\nChosen: {', '.join(record['choice']['members'])}\n")
  print(record["config_snippet"])
  if "path" in record:
    print(f"\nWrote {record['path']}")
  else:
    print("\n(no --out: JSON record not written)")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""AutoAttack (Croce & Hein, ICML 2020) in JAX: the standard / plus / rand cascades.

Reference: ``autoattack.py`` of ``fra31/auto-attack`` ``a392200`` (=
``pyautoattack==0.2.0``, ``run_standard_evaluation``); how it is checked: docs/evaluation.md.

    robust_0 = [argmax f(x) == y]                       (clean pass)
    for attack in stages(version):
      attack only {i : robust_i}, always from the clean x_i
      robust_i <- robust_i and [argmax f(x_adv_i) == y_i]  (fresh forward pass)
    robust accuracy = mean_i robust_i over all N points (denominator N)

Versions (L-inf and L2; AutoAttack's L1 is not implemented):

========  ====================================================================
standard  apgd-ce (1 restart), apgd-t (9 targets), fab-t (9 targets),
          square (5000 queries); 100 iterations for the gradient attacks
plus      apgd-ce (5 restarts), apgd-dlr (5 restarts), fab (untargeted,
          5 restarts), square, apgd-t (9 targets), fab-t (9 targets)
rand      apgd-ce, apgd-dlr (1 restart each) with EoT over 20 gradient
          samples per step; for randomised models, called as
          ``logits_fn(x, key)`` when ``randomized=True`` (a deterministic
          ``logits_fn`` gets 20 identical gradients, as the reference would)
custom    ``attacks=[...]`` from the names above
========  ====================================================================

Scheduling. Stages run in order on the still-robust points. APGD/APGD-T/FAB
are per-example independent, so each of their rounds (restart or target)
takes *all* still-robust points, compacted on the host and cut into padded
chunks of ``chunk_size`` rows (one compilation per kernel and bucket, none
per batch or epsilon). Square's draws are shared by a batch, so it uses the
reference's batches: the still-robust points in index order, in chunks of
``batch_size``. Only the assignment of random numbers differs from the
reference (its seeds are torch's; ours ``fold_in(PRNGKey(seed), stage)``).

At scale (defaults resolved by the backend; CPU keeps the small-machine
behaviour):

* ``chunk_size`` (APGD/FAB/clean-pass rows per kernel call) is decoupled from
  Square's ``batch_size``; default ``batch_size x devices``.
* ``buckets``: padded shapes per kernel, 8 on CPU, 2 on GPU/TPU (a shape
  costs seconds to compile there, a padded row microseconds).
* ``devices``: every chunk's rows are split over a 1-D mesh of the local
  devices (1 on CPU, all on accelerators); the kernels are per-example, so
  no collectives. Padded sizes become multiples of the device count; with
  ``batch_size`` and ``chunk_size`` multiples of it, results equal the
  one-device run's (tests/attacks_autoattack_scale_test.py).
* compile once per process and shape; ``kdrobust.evaluation.compilation_cache``
  keeps the executables across processes.
* ``precision`` (default ``'highest'``) is enforced inside and recorded in
  ``AutoAttackConfig.precision``.

Sanity checks (the reference's ``checks.py``), returned as ``warnings``:
randomness of the forward pass (5 passes on the first batch, not in 'rand'),
outputs that look like probabilities, too few classes for DLR / targets,
zero input gradients at the APGD-DLR start, and ``check_square_sr`` (Square
lowering robust accuracy by more than 0.2 pp below every previous stage:
a sign of gradient masking). AutoAttack's "dynamic model" check (autograd
inside the forward) has no JAX analogue and is skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
import warnings as _warnings
from typing import Any, Callable, Sequence

import jax
import numpy as np

from kdrobust.attacks import _precision
from kdrobust.attacks.apgd import (DEFAULT_BATCH, DEFAULT_BUCKETS, _pad_rows, apgd_rounds,
                                   as_logits_fn, attack_mesh, call_logits, derive_key,
                                   mesh_size, predict, put_rows, resolve_buckets)
from kdrobust.attacks.fab import fab_rounds
from kdrobust.attacks.projected import as_key, canonical_norm
from kdrobust.attacks._precision import with_precision
from kdrobust.attacks.square import square_batches

logger = logging.getLogger("kdrobust.autoattack")

ATTACKS = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
VERSIONS = ("standard", "plus", "rand", "custom")


@dataclasses.dataclass(frozen=True)
class AutoAttackConfig:
  """Every knob of a run (defaults: AutoAttack's)."""
  norm: str = "Linf"
  eps: float = 8 / 255
  version: str = "standard"
  attacks: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")
  seed: int | None = 0
  batch_size: int = DEFAULT_BATCH
  n_iter: int = 100
  apgd_restarts: int = 1
  apgd_dlr_restarts: int = 1
  apgd_targets: int = 9
  eot_iter: int = 1
  fab_restarts: int = 5
  fab_targets: int = 9
  square_queries: int = 5000
  square_p_init: float = 0.8
  buckets: int = DEFAULT_BUCKETS
  chunk_size: int = DEFAULT_BATCH  # APGD/FAB/clean-pass rows per kernel call
  devices: int = 1  # devices each chunk is split over
  precision: str = "highest"  # matmul precision of every kernel


def version_config(version: str, *, norm: str = "Linf", eps: float = 8 / 255,
                   attacks: Sequence[str] | None = None, seed: int | None = 0,
                   batch_size: int = DEFAULT_BATCH) -> AutoAttackConfig:
  """The reference's ``_set_version`` as a config."""
  if norm not in ("Linf", "L2"):
    raise ValueError(f"norm must be 'Linf' or 'L2' (L1 is not implemented), got {norm!r}.")
  base = dict(norm=norm, eps=float(eps), version=version, seed=seed,
              batch_size=int(batch_size))
  if version in ("standard", "plus", "rand") and attacks is not None:
    raise ValueError("attacks= is only used with version='custom'.")
  if version == "standard":
    return AutoAttackConfig(**base, attacks=("apgd-ce", "apgd-t", "fab-t", "square"))
  if version == "plus":
    return AutoAttackConfig(**base, attacks=("apgd-ce", "apgd-dlr", "fab", "square",
                                             "apgd-t", "fab-t"),
                            apgd_restarts=5, apgd_dlr_restarts=5, fab_restarts=5)
  if version == "rand":
    return AutoAttackConfig(**base, attacks=("apgd-ce", "apgd-dlr"), eot_iter=20)
  if version == "custom":
    if not attacks:
      raise ValueError("version='custom' needs attacks=[...].")
    bad = [a for a in attacks if a not in ATTACKS]
    if bad:
      raise ValueError(f"Unknown attacks {bad}; valid: {ATTACKS}.")
    return AutoAttackConfig(**base, attacks=tuple(attacks))
  raise ValueError(f"Unknown version {version!r}; valid: {VERSIONS}.")


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
  """Reported after every chunk: ``done``/``total`` are point-rounds of the stage
  (``total`` is re-estimated as points drop out); ``robust_accuracy`` is the
  accuracy before the stage, except in the stage's last event (sent once the
  stage's points are re-checked), which carries the accuracy after it.
  ``started``: ``time.time()`` when the stage began (its first chunk, compile
  included, counts in the stage's elapsed time and rate)."""
  stage: str
  stage_index: int
  n_stages: int
  done: int
  total: int
  robust_accuracy: float
  started: float | None = None


@dataclasses.dataclass(frozen=True)
class AutoAttackResult:
  """Outcome of :func:`autoattack` (numpy arrays, in the input order).

  ``robust``: per-example flag (clean-correct and survived every stage);
  ``stage_accuracy``: robust accuracy after each stage, in order (keys are
  the attack names; a stage skipped because nothing was left robust is
  absent); ``y_adv``: predictions on ``x_adv``; ``timings``: seconds per
  stage (including compilation on first use) and ``'total'``.
  """
  x_adv: np.ndarray
  y_adv: np.ndarray
  robust: np.ndarray
  clean_accuracy: float
  robust_accuracy: float
  stage_accuracy: dict
  warnings: tuple[str, ...]
  timings: dict
  max_perturbation: float
  config: AutoAttackConfig


# ---------------------------------------------------------------------------
# Sanity checks (reference: checks.py). Each returns a message or None.
# ---------------------------------------------------------------------------


@jax.jit
def _logits(fn, x):
  return fn(x)


def check_randomized(logits: Sequence[np.ndarray], y: np.ndarray,
                     alpha: float = 1e-4) -> str | None:
  """Warn if repeated forward passes differ (correct counts or normalised logits > alpha)."""
  counts = [int(np.sum(np.argmax(z, -1) == y)) for z in logits]
  normed = [z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-10) for z in logits]
  max_diff = max((float(np.linalg.norm(a - b, axis=-1).max())
                  for i, a in enumerate(normed) for b in normed[i + 1:]), default=0.0)
  if len(set(counts)) > 1 or max_diff > alpha:
    return "it seems to be a randomized defense! Please use version='rand'."
  return None


def check_range_output(logits: np.ndarray, alpha: float = 1e-5) -> str | None:
  """Warn if the outputs look like a probability simplex rather than logits."""
  if (logits.max() < 1 + alpha and logits.min() > -alpha
      and np.all(np.abs(logits.sum(-1) - 1) < alpha)):
    return ("it seems that the output is a probability distribution, please be "
            "sure that the logits are used!")
  return None


def check_n_classes(n_cls: int, attacks: Sequence[str], apgd_targets: int,
                    fab_targets: int) -> str | None:
  """Warn about DLR with <= 2 classes, targeted DLR with 3, or too many targets."""
  msg = None
  if "apgd-dlr" in attacks or "apgd-t" in attacks:
    if n_cls <= 2:
      msg = f"with only {n_cls} classes it is not possible to use the DLR loss!"
    elif n_cls == 3:
      msg = f"with only {n_cls} classes it is not possible to use the targeted DLR loss!"
    elif "apgd-t" in attacks and apgd_targets + 1 > n_cls:
      msg = (f"it seems that more target classes ({apgd_targets}) than possible "
             f"({n_cls - 1}) are used in APGD-T!")
  if "fab-t" in attacks and fab_targets + 1 > n_cls:
    extra = (f"it seems that more target classes ({fab_targets}) than possible "
             f"({n_cls - 1}) are used in FAB-T!")
    msg = extra if msg is None else msg + " Also, " + extra
  return msg


def check_square_sr(acc: dict, alpha: float = 0.002) -> str | None:
  """Warn if Square lowered robust accuracy by more than ``alpha`` below every other stage."""
  if "square" in acc and len(acc) > 2:
    best = min(v for k, v in acc.items() if k != "square")
    if acc["square"] < best - alpha:
      return (f"Square Attack has decreased the robust accuracy of "
              f"{best - acc['square']:.2%}. This might indicate that the robustness "
              "evaluation using AutoAttack is unreliable (gradient masking).")
  return None


STAGE_BAR_TOTAL = 1000  # every stage's bar counts per mille of its work


def stage_bars(desc: str = "", file=None):
  """``(callback, close)``: one honest tqdm bar per AutoAttack stage.

  A stage's work (point-rounds) shrinks as points are broken, so the bar
  shows the fraction done on a fixed scale of :data:`STAGE_BAR_TOTAL` (its
  total never changes mid-stage). Its clock starts when the stage starts
  (``ProgressEvent.started``), so the first chunk's compilation counts in the
  elapsed time and the rate: no absurd first rate, and a stage that reports
  only at its end (Square) shows its real duration. A stage's bar closes at
  its last event or when the next stage starts.
  """
  import sys  # pylint: disable=g-import-not-at-top
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  bars: dict[str, Any] = {}

  def callback(ev: ProgressEvent):
    bar = bars.get(ev.stage)
    if bar is None:
      for other in bars.values():
        other.close()
      bar = bars[ev.stage] = tqdm(
          total=STAGE_BAR_TOTAL, unit="‰", file=file or sys.stderr, dynamic_ncols=True,
          smoothing=0.1, desc=(f"{desc} " if desc else "")
          + f"[{ev.stage_index + 1}/{ev.n_stages}] {ev.stage}",
          bar_format="{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]")
      if ev.started is not None:
        bar.start_t = bar.last_print_t = ev.started
    frac = 1.0 if ev.total <= 0 else min(ev.done / ev.total, 1.0)
    bar.n = max(bar.n, round(STAGE_BAR_TOTAL * frac))  # never backwards
    bar.set_postfix(robust=f"{ev.robust_accuracy:.2%}", refresh=False)
    bar.refresh()

  def close():
    for bar in bars.values():
      bar.close()

  return callback, close


def _tqdm_progress():
  """A ``progress`` callback drawing one tqdm bar per stage (:func:`stage_bars`)."""
  return stage_bars()[0]


# ---------------------------------------------------------------------------
# The cascade.
# ---------------------------------------------------------------------------


def _run_stage(name: str, fn, x, y, active, key, cfg: AutoAttackConfig, norm: str,
               randomized: bool, progress, mesh=None):
  """Run one stage on the ``active`` points; returns ``(x_adv, zero_grad_count)``."""
  common = dict(eps=cfg.eps, norm=norm, active=active, batch_size=cfg.chunk_size,
                buckets=cfg.buckets, progress=progress, mesh=mesh)
  if name in ("apgd-ce", "apgd-dlr"):
    restarts = cfg.apgd_restarts if name == "apgd-ce" else cfg.apgd_dlr_restarts
    x_adv, _, zero = apgd_rounds(fn, x, y, key, loss=name[5:], n_iter=cfg.n_iter,
                                 n_restarts=restarts, eot_iter=cfg.eot_iter,
                                 randomized=randomized, **common)
    return x_adv, zero
  if name == "apgd-t":
    x_adv, _, zero = apgd_rounds(fn, x, y, key, loss="dlr-targeted",
                                 n_iter=cfg.n_iter, n_restarts=1,
                                 n_target_classes=cfg.apgd_targets,
                                 eot_iter=cfg.eot_iter, randomized=randomized,
                                 **common)
    return x_adv, zero
  if randomized:
    raise NotImplementedError(f"{name} does not support randomized models; "
                              "use version='rand'.")
  if name in ("fab", "fab-t"):
    tgt = name == "fab-t"
    x_adv, _ = fab_rounds(fn, x, y, key, targeted=tgt, n_iter=cfg.n_iter,
                          n_restarts=1 if tgt else cfg.fab_restarts,
                          n_target_classes=cfg.fab_targets, **common)
    return x_adv, 0
  if name == "square":
    x_adv, _ = square_batches(fn, x, y, key, n_queries=cfg.square_queries,
                              p_init=cfg.square_p_init,
                              **dict(common, batch_size=cfg.batch_size))
    return x_adv, 0
  raise ValueError(f"Unknown attack {name!r}; valid: {ATTACKS}.")


@with_precision
def autoattack(logits_fn, x, y, *, eps, norm: str = "Linf",
               version: str = "standard", seed: int | None = 0,
               batch_size: int | None = None,
               attacks: Sequence[str] | None = None,
               progress: bool | Callable[[ProgressEvent], None] | None = None,
               randomized: bool = False, checks: bool = True, buckets: int | None = None,
               config_overrides: dict | None = None, chunk_size: int | None = None,
               devices=None) -> AutoAttackResult:
  """Run AutoAttack on ``(x, y)`` and return an :class:`AutoAttackResult`.

  ``logits_fn``: images (float32 NHWC in [0,1]) -> logits; pass
  ``jax.tree_util.Partial(apply_fn, params)`` to keep large parameters out
  of the compiled executables. ``eps`` is traced (no recompilation across
  epsilons). ``seed=None`` draws a time-based seed like the reference.
  ``batch_size`` (default 250, AutoAttack's) fixes every kernel's shape
  and Square's batches; ``chunk_size`` (default ``batch_size x devices``)
  the APGD/FAB/clean-pass chunks; a chunk smaller than that is padded to one
  of ``buckets`` sizes (``apgd.bucket_size``; ``None``: 8 on CPU, 2 on
  accelerators; ``buckets=1``: one shape, one compilation per kernel).
  ``devices`` (``None``: 1 on CPU, every local device elsewhere; an int;
  ``'all'``; or a list of devices) splits each chunk's rows over a mesh
  (``apgd.attack_mesh``). ``precision`` (keyword, default ``'highest'``):
  see ``attacks/_precision.py``. ``progress=True`` shows tqdm bars per stage (ETA);
  a callable receives :class:`ProgressEvent` s. ``config_overrides`` may
  change iteration/query counts (e.g. ``{'square_queries': 1000}``) for
  cheaper diagnostics; such runs are not AutoAttack.
  """
  t_start = time.perf_counter()
  norm_l = canonical_norm(norm)  # 'Linf'/'linf'/'L2'/'l2'
  norm = {"linf": "Linf", "l2": "L2"}[norm_l]
  if seed is None:
    seed = int(time.time() * 1000) % (2 ** 31)
  x = np.asarray(x)
  if x.dtype != np.float64:
    x = x.astype(np.float32)
  y = np.asarray(y).astype(np.int32)
  n = x.shape[0]
  bs = min(batch_size or DEFAULT_BATCH, n)
  if chunk_size is not None and int(chunk_size) < 1:
    raise ValueError(f"chunk_size must be >= 1 (or None), got {chunk_size}.")
  if devices is None:
    devices = 1 if jax.default_backend() == "cpu" else "all"
  mesh = attack_mesh(devices)
  n_dev = mesh_size(mesh)
  cs = min(int(chunk_size or bs * n_dev), n)
  cfg = version_config(version, norm=norm, eps=eps, attacks=attacks, seed=seed,
                       batch_size=bs)
  cfg = dataclasses.replace(cfg, buckets=resolve_buckets(buckets), chunk_size=cs,
                            devices=n_dev,
                            precision=_precision.current() or "highest")
  if config_overrides:
    cfg = dataclasses.replace(cfg, **config_overrides)
  fn = as_logits_fn(logits_fn)
  key = as_key(int(seed))
  msgs: list[str] = []

  def warn(msg):
    if msg:
      msgs.append(msg)
      logger.warning(msg)

  # Sanity checks on the first batch.
  first = put_rows(_pad_rows(x[:bs], -(-bs // n_dev) * n_dev), mesh)
  if randomized:
    z_first = np.asarray(call_logits(fn, first, derive_key(key, 999), True))[:min(bs, n)]
  else:
    z_first = np.asarray(_logits(fn, first))[:min(bs, n)]
  if checks:
    if version != "rand" and not randomized:
      zs = [z_first] + [np.asarray(_logits(fn, first))[:min(bs, n)] for _ in range(4)]
      warn(check_randomized(zs, y[:bs]))
    warn(check_range_output(z_first))
    warn(check_n_classes(z_first.shape[-1], cfg.attacks, cfg.apgd_targets,
                         cfg.fab_targets))

  # Clean pass.
  y_adv = predict(fn, x, batch_size=cfg.chunk_size, randomized=randomized,
                  key=derive_key(key, 1000), buckets=cfg.buckets, mesh=mesh)
  robust = y_adv == y
  clean_acc = float(robust.mean())
  acc = collections.OrderedDict(clean=clean_acc)
  logger.info("initial accuracy: %.2f%%", 100 * clean_acc)
  x_adv = np.array(x, copy=True)
  timings = {}
  n_stages = len(cfg.attacks)

  for si, name in enumerate(cfg.attacks):
    n_rob = int(robust.sum())
    if n_rob == 0:
      logger.info("no robust points left, skipping %s and later stages", name)
      break
    t0 = time.perf_counter()
    cb = None
    if progress is not None and progress is not False:
      sink = _tqdm_progress() if progress is True else progress
      cur_acc = float(robust.mean())
      last = [0, 0]
      started = time.time()

      def cb(done, total, _name=name, _si=si, _sink=sink, _acc=cur_acc, _last=last,
             _started=started):
        _last[:] = [int(done), int(total)]
        _sink(ProgressEvent(_name, _si, n_stages, int(done), int(total), _acc, _started))
    skey = derive_key(key, si)
    xa_stage, zero = _run_stage(name, fn, x, y, robust, skey, cfg, norm_l,
                                randomized, cb, **({} if mesh is None else {"mesh": mesh}))
    if zero:
      warn(f"there are {zero} points with zero gradient at the start of {name}! "
           "This might lead to unreliable evaluation with gradient-based attacks.")
    # Fresh forward pass on the returned points (the reference's re-check).
    idx = np.flatnonzero(robust)
    pred = predict(fn, xa_stage[idx], batch_size=cfg.chunk_size, randomized=randomized,
                   key=derive_key(key, 2000 + si), buckets=cfg.buckets, mesh=mesh)
    broken = pred != y[idx]
    x_adv[idx[broken]] = xa_stage[idx[broken]]
    y_adv[idx[broken]] = pred[broken]
    robust[idx[broken]] = False
    acc[name] = float(robust.mean())
    if cb is not None:  # the stage's bar ends on its own result
      sink(ProgressEvent(name, si, n_stages, max(last), max(last), acc[name], started))
    timings[name] = time.perf_counter() - t0
    logger.info("robust accuracy after %s: %.2f%% (%.1f s)", name.upper(),
                100 * acc[name], timings[name])

  warn(check_square_sr(acc))
  delta = (x_adv.astype(np.float64) - x).reshape(n, -1)
  if norm_l == "linf":
    max_pert = float(np.abs(delta).max(initial=0.0))
  else:
    max_pert = float(np.sqrt((delta ** 2).sum(-1)).max(initial=0.0))
  if np.isnan(x_adv).any():
    warn(f"{int(np.isnan(x_adv).sum())} NaN values in x_adv")
  timings["total"] = time.perf_counter() - t_start
  stage_acc = collections.OrderedDict((k, v) for k, v in acc.items() if k != "clean")
  return AutoAttackResult(
      x_adv=x_adv, y_adv=y_adv, robust=robust, clean_accuracy=clean_acc,
      robust_accuracy=float(robust.mean()), stage_accuracy=stage_acc,
      warnings=tuple(msgs), timings=timings, max_perturbation=max_pert, config=cfg)


def warn_all(result: AutoAttackResult) -> None:
  """Re-emit a result's sanity-check messages through :mod:`warnings`."""
  for m in result.warnings:
    _warnings.warn(m)


__all__ = ["autoattack", "AutoAttackResult", "AutoAttackConfig", "ProgressEvent",
           "version_config", "check_randomized", "check_range_output",
           "check_n_classes", "check_square_sr", "ATTACKS", "VERSIONS"]


from kdrobust.attacks._callable import make_callable  # noqa: E402

make_callable(__name__, autoattack)

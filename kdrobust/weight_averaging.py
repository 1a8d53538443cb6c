"""Weight averaging of the student: SWA (SAAD, PeerAiD) and EMA, with BN recalibration.

``config.weight_averaging`` (plain data, :func:`default_config`; off by default):

* ``kind``: ``'none'`` | ``'swa'`` | ``'ema'``.
* ``start_epoch``: the first epoch whose end (SWA) or whose steps (EMA) update
  the average. An integer >= 1 is a **1-indexed** epoch, as the papers count
  (SAAD's ``--swa_epoch 95`` of 200; PeerAiD's first lr-decay epoch, 0-indexed
  214, i.e. 215); a number in (0, 1) is a fraction of ``num_epochs`` for short
  runs: the first epoch ``e`` with ``e >= start_epoch * num_epochs``
  (:func:`start_epoch`; 0.475 of 200 is 95).
* SWA: ``every_epochs`` (cadence from the start epoch) and ``weighting``,
  only ``'equal'``: the equal-weight mean of the snapshots,

      swa_1 = theta_1,   swa_{n+1} = swa_n + (theta_{n+1} - swa_n) / (n + 1),

  PyTorch's ``AveragedModel`` (``torch.lerp`` with weight ``1/(n+1)``, the first
  update copies; SAAD ``[C:saad@295121c:saad.py:41-42,90-93]``). PeerAiD's
  ``moving_average(swa, theta, 1/(n+1))``, ``swa (1 - 1/(n+1)) + theta/(n+1)``
  ``[C:PeerAiD@cd12e92:utils/SWA.py:25-28; main.py:427-432]``, is the same
  mean (its first update, ``alpha = 1``, also copies); the two differ only in
  float rounding (ulps; tests/weight_averaging_test.py).
* EMA: ``decay`` and ``every_steps``: ``ema_1 = theta_1``,
  ``ema_{n+1} = decay ema_n + (1 - decay) theta_{n+1}`` every ``every_steps``
  steps from the start epoch on. None of SAAD/PeerAiD uses it
  (docs/fidelity.md, SAAD and PeerAiD); it is offered as the common alternative.
* ``bn_recalibration``: what the averaged model's batch statistics are.

  - ``'none'``: averaged like the parameters (``AveragedModel(use_buffers=True)``
    for SWA; timm's ``ModelEmaV2`` for EMA).
  - ``'pytorch'`` (SAAD: ``torch.optim.swa_utils.update_bn``
    ``[C:saad@295121c:saad.py:93,133]``): reset mean 0 / var 1, one pass in train
    mode over one epoch of the augmented, clean training stream, each batch
    weighted equally (``momentum=None``: ``r_k = (1 - 1/k) r_{k-1} + stat_k / k``).
  - ``'sample_weighted'`` (PeerAiD's ``bn_update``
    ``[C:PeerAiD@cd12e92:utils/SWA.py:61-88]``): the same pass with
    ``momentum = b / (n + b)`` (``n`` samples seen), a per-sample mean. kdrobust's
    training batches are all full, so it equals ``'pytorch'`` up to rounding.

  Both store the **unbiased** batch variance, as PyTorch and kdrobust's
  :class:`~kdrobust.models.layers.BatchNorm` do. The papers recalibrate after
  every update; kdrobust recalibrates only when the statistics are needed (an
  evaluation, a checkpoint, the end of the run) and stale: the recalibrated
  statistics never feed back into training, so the final model is the papers'.
  The pass's data order is a function of the update count only
  (:func:`recalibration_seed`), so a resumed run recalibrates identically.

State: ``TrainState.averaged = {'params', 'batch_stats', 'count', 'bn_count'}``
(``count`` updates so far; ``bn_count`` the ``count`` the statistics were
recalibrated at). :func:`update` runs inside the jitted train step (a
``lax.cond``, no recompiles); with ``kind='none'`` the step is unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp

KINDS = ("none", "swa", "ema")
WEIGHTINGS = ("equal",)
RECALIBRATIONS = ("none", "pytorch", "sample_weighted")
WEIGHTS = ("auto", "averaged", "raw")
_FIELDS = ("kind", "start_epoch", "every_epochs", "weighting", "decay", "every_steps",
           "bn_recalibration")


def default_config() -> dict[str, Any]:
  """``config.weight_averaging`` of the base config: off."""
  return {"kind": "none", "start_epoch": 1, "every_epochs": 1, "weighting": "equal",
          "decay": 0.999, "every_steps": 1, "bn_recalibration": "none"}


def swa_config(start_epoch, *, bn_recalibration: str, every_epochs: int = 1) -> dict[str, Any]:
  """``config.weight_averaging`` for an equal-weight SWA (the paper configs)."""
  return dict(default_config(), kind="swa", start_epoch=start_epoch,
              every_epochs=every_epochs, bn_recalibration=bn_recalibration)


def field(wa, key):
  """``config.weight_averaging.<key>``, or its default when the block or key is missing."""
  return (wa or {}).get(key, default_config()[key])


def enabled(wa) -> bool:
  """Whether ``config.weight_averaging`` averages anything."""
  return bool(wa) and field(wa, "kind") != "none"


def check_config(wa, num_epochs: int) -> None:
  """One-line ``ValueError`` naming the bad field and the valid values (before any compute)."""
  if not wa:
    return
  unknown = sorted(set(wa) - set(_FIELDS))
  if unknown:
    raise ValueError(f"config.weight_averaging has unknown field(s) {unknown}; "
                     f"valid: {list(_FIELDS)}.")
  for key, valid in (("kind", KINDS), ("weighting", WEIGHTINGS),
                     ("bn_recalibration", RECALIBRATIONS)):
    if field(wa, key) not in valid:
      raise ValueError(f"Unknown config.weight_averaging.{key} {field(wa, key)!r}; valid: "
                       f"{', '.join(valid)}.")
  s = field(wa, "start_epoch")
  ok = (isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)
        and ((0 < s < 1) or (s >= 1 and float(s).is_integer())))
  if not ok:
    raise ValueError("config.weight_averaging.start_epoch must be a 1-indexed epoch "
                     f"(an integer >= 1) or a fraction of num_epochs in (0, 1); got {s!r}.")
  for key in ("every_epochs", "every_steps"):
    v = field(wa, key)
    if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
      raise ValueError(f"config.weight_averaging.{key} must be an integer >= 1; got {v!r}.")
  d = field(wa, "decay")
  if not (isinstance(d, (int, float)) and not isinstance(d, bool) and 0 <= d < 1):
    raise ValueError(f"config.weight_averaging.decay must be in [0, 1); got {d!r}.")
  if enabled(wa) and start_epoch(wa, num_epochs) > num_epochs:
    raise ValueError(f"config.weight_averaging.start_epoch {s!r} is after the last epoch "
                     f"({num_epochs}): nothing would be averaged.")


def start_epoch(wa, num_epochs: int) -> int:
  """The 1-indexed start epoch (a fraction ``f`` gives the first ``e >= f * num_epochs``)."""
  s = field(wa, "start_epoch")
  if s >= 1:
    return int(s)
  return max(1, math.ceil(s * num_epochs - 1e-9))


def init(params, batch_stats) -> dict[str, Any]:
  """``TrainState.averaged`` before any update (copies; ``count`` 0)."""
  copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731
  return {"params": copy(params), "batch_stats": copy(batch_stats),
          "count": jnp.zeros((), jnp.int32), "bn_count": jnp.zeros((), jnp.int32)}


def lerp(a, b, w):
  """``torch.lerp(a, b, w)`` as PyTorch computes it (the branch on ``w`` keeps ``w=1`` exact)."""
  return jnp.where(w < 0.5, a + w * (b - a), b - (b - a) * (1 - w))


def is_due(wa, step_after, steps_per_epoch: int, num_epochs: int):
  """Whether the step that brought the count of steps to ``step_after`` updates the average."""
  first = start_epoch(wa, num_epochs)
  if field(wa, "kind") == "swa":
    epoch_done = step_after // steps_per_epoch  # 1-indexed epoch just finished
    return ((step_after % steps_per_epoch == 0) & (epoch_done >= first)
            & ((epoch_done - first) % field(wa, "every_epochs") == 0))
  return ((step_after > (first - 1) * steps_per_epoch)
          & (step_after % field(wa, "every_steps") == 0))


def combine(wa, averaged, params, batch_stats) -> dict[str, Any]:
  """One averaging update (unconditional): the formulas of the module docstring."""
  n = averaged["count"]
  if field(wa, "kind") == "swa":
    w = 1.0 / (n.astype(jnp.float32) + 1.0)
    mix = lambda a, b: lerp(a, b, w.astype(a.dtype))  # noqa: E731  (n=0: w=1 copies)
  else:
    d = field(wa, "decay")
    mix = lambda a, b: jnp.where(n == 0, b, d * a + (1 - d) * b)  # noqa: E731
  new = dict(averaged, params=jax.tree.map(mix, averaged["params"], params),
             count=n + 1)
  if field(wa, "bn_recalibration") == "none":
    new["batch_stats"] = jax.tree.map(mix, averaged["batch_stats"], batch_stats)
  return new


def update(wa, averaged, params, batch_stats, step_after, *, steps_per_epoch: int,
           num_epochs: int):
  """``averaged`` after the step that made ``state.step == step_after`` (jittable).

  Called by :func:`kdrobust.train_step.make_train_step` with the post-step
  parameters; a ``lax.cond``, so the averaging costs nothing off its steps.
  """
  due = is_due(wa, step_after, steps_per_epoch, num_epochs)
  return jax.lax.cond(due, lambda a: combine(wa, a, params, batch_stats), lambda a: a,
                      averaged)


# ----------------------------------------------------------------------------
# BN recalibration.
# ----------------------------------------------------------------------------
def needs_recalibration(wa, averaged) -> bool:
  """Host check: averaging on, recalibrating, averaged at least once, statistics stale."""
  if not enabled(wa) or field(wa, "bn_recalibration") == "none" or not averaged:
    return False
  a = jax.device_get({"count": averaged["count"], "bn_count": averaged["bn_count"]})
  return bool(averaged["batch_stats"]) and int(a["count"]) > 0 and a["count"] != a["bn_count"]


def recalibration_seed(seed: int, count: int) -> int:
  """The data-order seed of the pass recalibrating the ``count``-th average."""
  return (int(seed) * 7919 + 104729 * int(count) + 1) % (2 ** 31 - 1)


def make_batch_statistics(apply_fn):
  """``stats(params, batch_stats, x, key) -> {'mean', 'var'}`` of one batch, per BN layer.

  The unbiased variance, as kdrobust's BatchNorm stores it. Obtained from two
  train-mode applies starting from running statistics 0 and 1: with momentum
  ``m``, ``out_0 = (1 - m) stat`` and ``out_1 = m + (1 - m) stat``, so
  ``stat = out_0 / (1 - (out_1 - out_0))`` for any momentum (relative error
  ~1e-6 in float32).
  """

  @jax.jit
  def stats(params, batch_stats, x, key):
    def run(fill):
      bs = jax.tree.map(lambda a: jnp.full_like(a, fill), batch_stats)
      _, upd = apply_fn({"params": params, "batch_stats": bs}, x, train=True,
                        mutable=["batch_stats"], rngs={"dropout": key})
      return upd["batch_stats"]
    out0, out1 = run(0.0), run(1.0)
    return jax.tree.map(lambda a, b: a / (1.0 - (b - a)), out0, out1)

  return stats


def recalibrate(apply_fn, params, batch_stats, batches: Iterable[dict], mode: str, *,
                key=None, stats_fn: Callable | None = None):
  """Batch statistics of ``params`` from one pass over ``batches`` (``'pytorch'`` or ``'sample_weighted'``).

  Start from mean 0 / var 1; batch ``k`` (``b`` examples, ``n`` seen before)
  mixes in with weight ``w = 1/k`` ('pytorch', ``momentum=None``) or
  ``w = b/(n+b)`` ('sample_weighted'): ``r <- (1 - w) r + w stat_k``, PyTorch's
  running-statistics update. ``batches`` yield ``{'image': ...}`` (placed
  or sharded by the caller). Models without batch norm: returned unchanged.
  """
  if mode not in RECALIBRATIONS[1:]:
    raise ValueError(f"Unknown bn_recalibration {mode!r}; valid: "
                     f"{', '.join(RECALIBRATIONS[1:])}.")
  if not batch_stats:
    return batch_stats
  stats_fn = stats_fn or make_batch_statistics(apply_fn)
  key = jax.random.PRNGKey(0) if key is None else key
  run = _reset(batch_stats)
  mix = jax.jit(lambda r, s, w: jax.tree.map(lambda a, b: (1 - w) * a + w * b, r, s))
  seen, k = 0, 0
  for k, batch in enumerate(batches, start=1):
    x = batch["image"]
    b = int(x.shape[0])
    s = stats_fn(params, batch_stats, x, jax.random.fold_in(key, k))
    w = 1.0 / k if mode == "pytorch" else b / (seen + b)
    run = mix(run, s, jnp.float32(w))
    seen += b
  if k == 0:
    raise ValueError("BN recalibration got no batches.")
  return run


def _reset(batch_stats):
  """Running statistics reset as PyTorch's ``reset_running_stats``: mean 0, var 1."""
  def leaf(path, a):
    name = getattr(path[-1], "key", str(path[-1]))
    return jnp.ones_like(a) if name == "var" else jnp.zeros_like(a)
  return jax.tree_util.tree_map_with_path(leaf, batch_stats)


# ----------------------------------------------------------------------------
# Which weights a checkpoint offers.
# ----------------------------------------------------------------------------
def has_average(tree) -> bool:
  """A state or raw checkpoint dict holding an average of at least one update."""
  a = tree.get("averaged") if isinstance(tree, dict) else getattr(tree, "averaged", None)
  return bool(a) and int(jax.device_get(a["count"])) > 0


def select_variables(tree, weights: str = "auto") -> tuple[dict[str, Any], str]:
  """``(variables, used)`` of a state or raw checkpoint dict: ``used`` in {'averaged', 'raw'}.

  ``'auto'``: the averaged weights when the checkpoint holds an average of at
  least one update (the model the run evaluated and ranked), else the raw
  student; ``'averaged'`` refuses a checkpoint without one; ``'raw'``: the
  student as trained.
  """
  if weights not in WEIGHTS:
    raise ValueError(f"Unknown weights {weights!r}; valid: {', '.join(WEIGHTS)}.")
  get = (lambda k: tree.get(k)) if isinstance(tree, dict) else (lambda k: getattr(tree, k, None))
  avail = has_average(tree)
  if weights == "averaged" and not avail:
    raise ValueError("This checkpoint holds no averaged weights (config.weight_averaging was "
                     "off, or no average was taken yet); use --weights raw or auto.")
  used = "averaged" if (weights == "averaged" or (weights == "auto" and avail)) else "raw"
  src = get("averaged") if used == "averaged" else {"params": get("params"),
                                                   "batch_stats": get("batch_stats")}
  v = {"params": src["params"]}
  if src.get("batch_stats"):
    v["batch_stats"] = src["batch_stats"]
  return v, used


def describe(wa, num_epochs: int) -> str:
  """One line for the recipe card (:mod:`kdrobust.recipe`)."""
  if not enabled(wa):
    return "off (the raw student is evaluated and saved)"
  first = start_epoch(wa, num_epochs)
  if field(wa, "kind") == "swa":
    n = len(range(first, num_epochs + 1, field(wa, "every_epochs")))
    what = (f"SWA, equal-weight mean of the student's parameters at the end of epoch {first} "
            f"(1-indexed) and every {field(wa, 'every_epochs')} epoch(s) after ({n} snapshots)")
  else:
    what = (f"EMA of the student's parameters, decay {field(wa, 'decay')}, every "
            f"{field(wa, 'every_steps')} step(s) from epoch {first} (1-indexed)")
  bn = {"none": "BN statistics averaged like the parameters",
        "pytorch": "BN statistics recalibrated by one clean augmented train pass, equal weight "
                   "per batch (torch update_bn, SAAD)",
        "sample_weighted": "BN statistics recalibrated by one clean augmented train pass, "
                           "weighted by samples (PeerAiD's bn_update)"}[field(wa, "bn_recalibration")]
  return (f"{what}; {bn}; the average is evaluated, ranks the best checkpoint and is "
          "reported (the raw student too, as 'raw')")

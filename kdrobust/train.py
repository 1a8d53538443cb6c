"""``train_and_evaluate(config, workdir)``: the training loop.

Sections, top to bottom: validate everything (before any compute) -> mesh ->
model and state -> teachers -> resume -> loop (step, log, evaluate,
checkpoint) -> final evaluation and ``results.json``.

Everything a colab or a test needs is importable: :func:`build_model`,
:func:`create_state`, :func:`make_optimizer`, :func:`evaluate`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax

import kdrobust
from kdrobust import checkpoint as ckpt_lib
from kdrobust import config_lib
from kdrobust import data as data_lib
from kdrobust import fileio
from kdrobust import methods as methods_lib
from kdrobust import metrics as metrics_lib
from kdrobust import models as models_lib
from kdrobust import parallel
from kdrobust import teachers as teachers_lib
from kdrobust import train_step as step_lib
from kdrobust import weight_averaging as wa_lib
from kdrobust.models import init as init_lib
from kdrobust.state import TrainState


class WorkdirConflictError(RuntimeError):
  """The workdir holds a run of a different config."""


class NonFiniteLossError(FloatingPointError):
  """The loss, the gradients, the parameters or the BN statistics became NaN/Inf or blew up."""


# The NaN guard's blow-up threshold on max |parameter or BN statistic|. Trained
# weight-decayed CNNs/ResNets here stay below ~1e2 (BN running variances below
# ~1e4); a diverging update (e.g. a learning rate multiplied by 1e30) lands
# many orders of magnitude above 1e6 while the loss can still be finite.
BLOWUP_THRESHOLD = 1e6


# ----------------------------------------------------------------------------
# Building blocks (importable).
# ----------------------------------------------------------------------------
def build_model(model_config, num_classes: int, dataset: str):
  """The Flax module described by ``config.model`` (normalisation inside)."""
  kw = dict(model_config.get("kwargs", {}) or {})
  if model_config.get("normalize", True) and "mean" not in kw:
    stats = models_lib.DATASET_STATS.get(dataset.split(":")[0])
    if stats is not None:
      kw["mean"], kw["std"] = stats
  return models_lib.get(model_config.name, num_classes=num_classes,
                        dtype=model_config.get("dtype", "float32"), **kw)


def make_schedule(optim, steps_per_epoch: int, num_epochs: int):
  """The learning-rate schedule by epoch (optax), indexed by step.

  Epochs are 0-indexed and a change applies from the first step of its epoch
  (``step = epoch * steps_per_epoch``). ``optim.schedule``:

  * ``'piecewise'``: ``lr * decay_factor ** #{e in decay_epochs : e <= epoch}``;
  * ``'table'``: ``lr * lr_factors[i]`` for ``lr_epochs[i] <= epoch <
    lr_epochs[i + 1]`` (``lr_epochs`` strictly increasing from 0; factors may
    be 0), any per-epoch schedule a script produces, e.g. DARHT's
    (configs/paper_settings.py, docs/fidelity.md erratum E9);
  * ``'cosine'``: cosine decay from ``lr`` to 0 over ``num_epochs``;
  * ``'constant'``: ``lr``.

  ``warmup_epochs > 0`` prepends a linear ramp from 0 to ``lr``.
  """
  lr = optim.lr
  total = max(num_epochs * steps_per_epoch, 1)
  if optim.schedule == "constant":
    sched = optax.constant_schedule(lr)
  elif optim.schedule == "piecewise":
    bounds = {int(e * steps_per_epoch): optim.decay_factor for e in optim.decay_epochs}
    sched = optax.piecewise_constant_schedule(lr, bounds)
  elif optim.schedule == "table":
    sched = _table_schedule(lr, tuple(optim.get("lr_epochs", ())),
                            tuple(optim.get("lr_factors", ())), steps_per_epoch)
  elif optim.schedule == "cosine":
    sched = optax.cosine_decay_schedule(lr, total)
  else:
    raise ValueError(f"Unknown schedule {optim.schedule!r}; "
                     "valid: constant, piecewise, table, cosine.")
  warm = int(optim.warmup_epochs * steps_per_epoch)
  if warm > 0:
    sched = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warm), sched], [warm])
  return sched


def _table_schedule(lr: float, epochs: tuple, factors: tuple, steps_per_epoch: int):
  """``schedule='table'``: ``lr * factors[i]`` from epoch ``epochs[i]`` on (checked)."""
  if not epochs or len(epochs) != len(factors):
    raise ValueError("schedule='table' needs optim.lr_epochs and optim.lr_factors of the same "
                     f"non-zero length; got {len(epochs)} epochs and {len(factors)} factors.")
  if epochs[0] != 0 or any(b <= a for a, b in zip(epochs, epochs[1:])):
    raise ValueError(f"optim.lr_epochs must increase strictly from 0; got {list(epochs)}.")
  if any(f < 0 for f in factors):
    raise ValueError(f"optim.lr_factors must be >= 0; got {list(factors)}.")
  starts = jnp.asarray([int(e * steps_per_epoch) for e in epochs], jnp.int32)
  values = jnp.asarray([lr * f for f in factors], jnp.float32)

  def sched(count):
    i = jnp.searchsorted(starts, jnp.asarray(count, jnp.int32), side="right") - 1
    return values[jnp.clip(i, 0, len(factors) - 1)]

  return sched


def make_optimizer(optim, schedule) -> optax.GradientTransformation:
  """SGD with momentum and PyTorch-style *coupled* L2 weight decay.

  ``add_decayed_weights`` adds ``wd * theta`` to the gradient before the
  momentum, exactly what ``torch.optim.SGD(weight_decay=wd)`` does, applied to
  every parameter (BN scales and biases included) as in the papers' code.
  """
  return optax.chain(
      optax.add_decayed_weights(optim.weight_decay),
      optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov))


def extra_network_configs(config, method) -> dict[str, tuple[Any, Any]]:
  """``{name: (model config, optim config)}`` of ``method``'s extra trainable networks.

  ``config.extra_networks.<name>`` (optional, plain data) holds ``model`` and
  ``optim`` blocks shaped like ``config.model`` / ``config.optim``; a missing
  block or field is the student's (PeerAiD's peer: the student's
  architecture, the same SGD and schedule by default). Unknown names or
  fields raise a one-line ``ValueError`` listing the valid ones (called by
  :func:`validate`, before any compute).
  """
  names = step_lib.extra_network_names(method)
  given = config.get("extra_networks") or {}
  unknown = sorted(set(given) - set(names))
  if unknown:
    raise ValueError(f"config.extra_networks has {unknown}, which method {method.name!r} "
                     f"does not train; valid: {list(names) or 'none'}.")
  out = {}
  for name in names:
    entry = given.get(name) or {}
    bad = sorted(set(entry) - {"model", "optim"})
    if bad:
      raise ValueError(f"config.extra_networks.{name} has unknown field(s) {bad}; "
                       "valid: ['model', 'optim'].")
    blocks = []
    for key in ("model", "optim"):
      base = config[key].to_dict()
      over = dict(entry.get(key) or {})
      extra_keys = sorted(set(over) - set(base))
      if extra_keys:
        raise ValueError(f"config.extra_networks.{name}.{key} has unknown field(s) "
                         f"{extra_keys}; valid: {sorted(base)}.")
      blocks.append(mlc.ConfigDict(dict(base, **over)))
    if blocks[0].name not in models_lib.available():
      raise ValueError(f"Unknown model {blocks[0].name!r} for config.extra_networks.{name}; "
                       f"valid models: {', '.join(models_lib.available())}.")
    out[name] = tuple(blocks)
  return out


def build_extra_networks(config, method, num_classes: int, dataset: str,
                         steps_per_epoch: int) -> dict[str, tuple[Any, Any, Any, str]]:
  """``{name: (module, tx, schedule, init)}`` of ``method``'s extra networks (empty for most).

  Each has its own optimizer (:func:`make_optimizer`) and learning-rate
  schedule (:func:`make_schedule`) from :func:`extra_network_configs`.
  """
  out = {}
  for name, (model_cfg, optim_cfg) in extra_network_configs(config, method).items():
    sched = make_schedule(optim_cfg, steps_per_epoch, config.num_epochs)
    out[name] = (build_model(model_cfg, num_classes, dataset),
                 make_optimizer(optim_cfg, sched), sched, model_cfg.get("init", "flax"))
  return out


def create_state(model, tx, method, num_classes: int, image_shape, seed: int,
                 init: str = "flax", extras=None, weight_averaging=None) -> TrainState:
  """A fresh train state (call under ``jax.jit`` to place it on devices).

  ``init`` is ``config.model.init``: ``'flax'`` keeps Flax's initialisers,
  ``'torch'`` re-draws the parameters as ``torch.nn`` does
  (:func:`kdrobust.models.init.torch_default_init`, docs/fidelity.md erratum E12) from a key
  derived from ``seed``. ``extras`` (:func:`build_extra_networks`) adds the
  method's extra networks to ``state.extra``; the ``i``-th (in
  ``method.extra_networks`` order) is drawn from keys folded from ``seed``
  and ``0xE0 + i``, independent of the student's.
  """
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = model.init({"params": jax.random.PRNGKey(seed),
                          "dropout": jax.random.PRNGKey(seed + 1)}, x, train=False)
  params = init_lib.apply_init(init, variables["params"],
                               jax.random.fold_in(jax.random.PRNGKey(seed), 0x7E12))
  extra = {}
  for i, (name, (m, t, _, m_init)) in enumerate((extras or {}).items()):
    k = jax.random.fold_in(jax.random.PRNGKey(seed), 0xE0 + i)
    v = m.init({"params": k, "dropout": jax.random.fold_in(k, 1)}, x, train=False)
    extra[name] = (init_lib.apply_init(m_init, v["params"], jax.random.fold_in(k, 0x7E12)),
                   v.get("batch_stats", {}), t)
  batch_stats = variables.get("batch_stats", {})
  averaged = (wa_lib.init(params, batch_stats) if wa_lib.enabled(weight_averaging)
              else None)  # config.weight_averaging: the student's SWA/EMA
  return TrainState.create(params, batch_stats,
                           tx, method.init_state(num_classes), extra=extra, averaged=averaged)


def code_version() -> str:
  """kdrobust version plus the git commit (and '+dirty') when available."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    rev = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=5).stdout.strip()
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
  except Exception:  # pylint: disable=broad-except
    rev, dirty = "", ""
  return kdrobust.__version__ + (f"+g{rev}" if rev else "") + (".dirty" if dirty else "")


def eval_attacks(eval_config) -> dict[str, Any]:
  return {name: step_lib.eval_attack(**dict(a)) for name, a in eval_config.attacks.items()}


def _batch_sums(step_fn, args, batches, mesh, eps: float) -> tuple[dict, float]:
  """Sum ``step_fn(*args, batch, eps, i)`` over padded, masked batches; one fetch at the end.

  Returns the summed values and the summed ``count`` (real examples).
  """
  totals = None
  for i, local in enumerate(batches):
    batch = parallel.global_batch(mesh, local)
    out = step_fn(*args, batch, jnp.float32(eps), jnp.int32(i))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  return totals, float(totals.pop("count"))


def evaluate(eval_step, variables, batches, mesh, eps: float) -> dict[str, float]:
  """Clean and robust accuracy over padded, masked batches (one fetch at the end)."""
  totals, n = _batch_sums(eval_step, (variables,), batches, mesh, eps)
  clean = float(totals.pop("clean")) / n
  return {"clean_accuracy": clean, "num_examples": int(n),
          "robust_accuracy": {k: float(v) / n for k, v in sorted(totals.items())}}


def diagnose(diag_step, variables, teacher_variables, batches, mesh, eps: float
             ) -> dict[str, float]:
  """Means of the diagnostics over padded, masked batches (one fetch at the end)."""
  totals, n = _batch_sums(diag_step, (variables, teacher_variables), batches, mesh, eps)
  return {k: float(v) / n for k, v in sorted(totals.items())}


# ----------------------------------------------------------------------------
# Validation: every bad input fails before any compute.
# ----------------------------------------------------------------------------
SCHEDULES = ("constant", "piecewise", "table", "cosine")


def _is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _need(ok: bool, key: str, want: str, got: Any) -> None:
  """``ValueError('config.<key> must be <want>; got <got>. Set --config.<key>=...')``."""
  if not ok:
    raise ValueError(f"config.{key} must be {want}; got {got!r}. Set --config.{key}=<value> "
                     "(or fix the config file).")


def check_ranges(config) -> None:
  """The numeric fields a run reads, in range (one-line ``ValueError`` naming the key).

  eps in [0, 1] for L-inf (finite, >= 0 for L2: pixels are in [0, 1]); the
  learning rate, momentum, weight decay and schedule factors finite and >= 0;
  batch sizes, ``num_epochs``, ``log_every_steps``, ``ckpt.keep`` and attack
  steps >= 1; ``total_steps`` >= 0 (0: the whole ``num_epochs``); cadences
  (``eval``/``ckpt``/``diagnostics.every_epochs``) finite, > 0 for checkpoints
  and >= 0 (0 = off) for the others; example counts >= 0.
  """
  fin = lambda v: _is_num(v) and math.isfinite(v)  # noqa: E731
  ints = (("num_epochs", 1), ("total_steps", 0), ("log_every_steps", 1), ("num_devices", 0),
          ("data.batch_size", 1), ("data.eval_batch_size", 1), ("ckpt.keep", 1),
          ("teacher_eval_examples", 0), ("eval.num_examples", 0), ("eval.aa_batch_size", 1),
          ("diagnostics.num_examples", 0))
  for key, lo in ints:
    node, *rest = key.split(".")
    if node not in config or (rest and rest[0] not in config[node]):
      continue
    v = config[node][rest[0]] if rest else config[node]
    _need(isinstance(v, int) and not isinstance(v, bool) and v >= lo, key,
          f"an integer >= {lo}", v)
  o = config.optim
  if "guard_max_abs" in config:
    _need(fin(config.guard_max_abs) and config.guard_max_abs > 0, "guard_max_abs",
          "a finite number > 0", config.guard_max_abs)
  for key in ("lr", "weight_decay", "decay_factor", "warmup_epochs"):
    if key in o:
      _need(fin(o[key]) and o[key] >= 0, f"optim.{key}", "a finite number >= 0", o[key])
  if "momentum" in o:
    _need(fin(o.momentum) and 0 <= o.momentum <= 1, "optim.momentum", "in [0, 1]", o.momentum)
  _need(o.schedule in SCHEDULES, "optim.schedule", f"one of {', '.join(SCHEDULES)}",
        o.schedule)
  for e in tuple(o.get("decay_epochs", ()) or ()):
    _need(fin(e) and e >= 0, "optim.decay_epochs", "finite epochs >= 0",
          list(o.decay_epochs))
  if o.schedule == "table":
    _table_schedule(o.lr, tuple(o.get("lr_epochs", ())), tuple(o.get("lr_factors", ())), 1)
  if "precision" in config.eval:  # the in-training monitor's (train_step.monitor_precision)
    from kdrobust.attacks import _precision  # pylint: disable=g-import-not-at-top
    _need(config.eval.precision in ("auto",) + tuple(_precision.PRECISIONS), "eval.precision",
          f"one of auto, {', '.join(_precision.PRECISIONS)}", config.eval.precision)
  _need(fin(config.ckpt.every_epochs) and config.ckpt.every_epochs > 0, "ckpt.every_epochs",
        "a finite number > 0", config.ckpt.every_epochs)
  for key in ("eval.every_epochs", "diagnostics.every_epochs"):
    node, leaf = key.split(".")
    if node in config and leaf in config[node]:
      v = config[node][leaf]
      _need(fin(v) and v >= 0, key, "a finite number >= 0 (0 = off)", v)

  def check_eps(key, v, norm):
    linf = str(norm).lower() in ("linf", "inf", "l_inf")
    _need(fin(v) and v >= 0 and (v <= 1 or not linf), key,
          "in [0, 1] (pixels are in [0, 1]; e.g. 8/255 = 0.0314)" if linf
          else "a finite number >= 0", v)

  check_eps("eval.eps", config.eval.eps, "linf")
  attack = config.method.get("attack")
  if attack is not None:
    if "eps" in attack:
      check_eps("method.attack.eps", attack.eps, attack.get("norm", "linf"))
    if "step_size" in attack:
      _need(fin(attack.step_size) and attack.step_size >= 0, "method.attack.step_size",
            "a finite number >= 0", attack.step_size)
    if "steps" in attack:
      _need(isinstance(attack.steps, int) and attack.steps >= 0, "method.attack.steps",
            "an integer >= 0", attack.steps)
  for name, a in config.eval.attacks.items():
    if "steps" in a:
      _need(isinstance(a.steps, int) and a.steps >= 1, f"eval.attacks.{name}.steps",
            "an integer >= 1", a.steps)
    if "restarts" in a:
      _need(isinstance(a.restarts, int) and a.restarts >= 1,
            f"eval.attacks.{name}.restarts", "an integer >= 1", a.restarts)
    if "step_fraction" in a:
      _need(fin(a.step_fraction) and a.step_fraction >= 0,
            f"eval.attacks.{name}.step_fraction", "a finite number >= 0", a.step_fraction)


def check_workdir_path(workdir: str) -> None:
  """Refuse a ``--workdir`` that cannot hold a run (before anything is written).

  It must be a directory or not exist yet, its nearest existing ancestor a
  writable directory, and the workdir itself writable if it exists.
  """
  if not workdir:
    raise ValueError("--workdir is empty. Pass --workdir DIR (created if missing).")
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"--workdir {workdir} is a file, not a directory. Pass a directory "
                     "(it is created if missing).")
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise ValueError(f"--workdir {workdir} cannot be created: {probe} is a file. Pass "
                     "another --workdir.")
  if not os.access(probe, os.W_OK | os.X_OK):
    what = "is read-only" if probe == path else f"cannot be created ({probe} is read-only)"
    raise ValueError(f"--workdir {workdir} {what}. Pass a writable --workdir, or fix the "
                     "permissions.")


def validate(config, workdir: str | None = None) -> tuple[Any, Any]:
  """Check ranges, names, dataset, teachers (and ``workdir``); returns ``(method, dataset_info)``.

  Nothing is computed or written before this passes.
  """
  check_ranges(config)
  method = methods_lib.from_config(config.method)  # unknown names/fields -> ValueError
  if config.model.name not in models_lib.available():
    raise ValueError(f"Unknown model {config.model.name!r}; valid models: "
                     f"{', '.join(models_lib.available())}.")
  init_lib.check_init(config.model.get("init", "flax"))
  wa_lib.check_config(config.get("weight_averaging"), config.num_epochs)
  info = None
  try:
    info = data_lib.info(config.data.name, config.data.data_dir or None)
  except data_lib.DatasetNotFoundError:
    if config.data.name != "digits":
      raise
  # digits ships inside scikit-learn: preparing it needs no source and no network. With
  # several processes, process 0 decides and prepares it, the others wait (no race).
  if parallel.broadcast_from_primary(int(info is None)):
    from kdrobust.data import prepare  # pylint: disable=g-import-not-at-top
    if jax.process_index() == 0:
      print("Preparing the bundled digits dataset (scikit-learn, offline)...", flush=True)
      prepare.prepare("digits", source=None, data_dir=config.data.data_dir or None)
    parallel.sync("kdrobust:digits-prepared")
    info = data_lib.info(config.data.name, config.data.data_dir or None)
  lo, hi = type(method).teachers
  n = len(config.teachers)
  if n < lo or (hi is not None and n > hi):
    want = f"exactly {lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
    raise ValueError(f"Method {method.name!r} needs {want} teacher(s) in config.teachers; "
                     f"got {n} ({', '.join(config.teachers) or 'none'}).")
  for name, tc in config.teachers.items():
    teachers_lib.check_compatible(name, tc, info)
  for name, (_, o) in extra_network_configs(config, method).items():  # names, fields, models
    _need(o.schedule in SCHEDULES, f"extra_networks.{name}.optim.schedule",
          f"one of {', '.join(SCHEDULES)}", o.schedule)
  if (config.get("teacher_entropy") or {}).get("unlearnable"):  # kdrobust.teacher_entropy
    from kdrobust import teacher_entropy as te_lib  # pylint: disable=g-import-not-at-top
    te_lib.check_config(config.teacher_entropy, config.data.name,
                        config.data.data_dir or None, num_teachers=n)
  d = config.get("diagnostics")
  if d is not None and d.every_epochs:
    if not (d.local_linearity or (d.gradient_agreement and n)):
      raise ValueError(
          "config.diagnostics.every_epochs > 0 but there is nothing to log: gradient "
          "agreement (GD/GC) needs teachers in config.teachers, and "
          "config.diagnostics.local_linearity is off.")
    if d.local_linearity and d.local_linearity_steps < 1:
      raise ValueError("config.diagnostics.local_linearity_steps must be >= 1.")
  mesh = parallel.make_mesh(config.num_devices or None)  # no compute: a device list
  parallel.check_batch_size(config.data.batch_size, mesh, "config.data.batch_size")
  parallel.check_batch_size(config.data.eval_batch_size, mesh, "config.data.eval_batch_size")
  if workdir is not None:
    check_workdir_path(workdir)
  return method, info


def _check_workdir(workdir: str, config_dict: dict, overwrite: bool, move: bool = True) -> bool:
  """Refuse a workdir holding another config; returns True if it holds this run.

  ``move=False``: where ``overwrite`` would move the old run aside, return
  False without moving it (the other processes of a multi-process run: process
  0 moves it once every process has read the workdir).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return False
  old = fileio.read_json(path, fix=(
      "It is the run's config: restore it from a backup, or start afresh with --overwrite "
      "(the old workdir is moved aside, not deleted) or a new --workdir"))
  diff = (config_lib.config_differences(old, config_dict)
          + config_lib.new_keys_off_default(old, config_dict))
  if not diff:
    added = config_lib.new_keys(old, config_dict)
    if added:
      logging.warning("Resuming a run saved before these config fields existed; they take "
                      "their current values: %s.", ", ".join(added))
    return True
  if not overwrite:
    raise WorkdirConflictError(
        f"{workdir} holds a run of a different config (differs in: {', '.join(diff[:10])}). "
        "Use another --workdir, or pass --overwrite to move the old run aside "
        "(it is renamed, never deleted).")
  if not move:
    return False
  backup = f"{workdir.rstrip('/')}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
  shutil.move(workdir, backup)
  logging.warning("Moved the previous run in %s to %s.", workdir, backup)
  return False


# ----------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------
class _Preemption:
  """SIGTERM sets a flag; the loop saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handler)
    except ValueError:  # not the main thread
      self._old = None
    return self

  def _handler(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def train_and_evaluate(config: mlc.ConfigDict, workdir: str, *,
                       overwrite: bool = False) -> dict[str, Any]:
  """Train ``config`` in ``workdir`` (resuming if it holds this run); returns results.

  One writer per workdir: :class:`kdrobust.fileio.WorkdirLock` is held from
  just after validation to the end (a second writer gets
  :class:`kdrobust.fileio.WorkdirLockedError`; a dead holder's lock is taken over). With
  several processes (``--jax_distributed``) process 0 holds it for the whole run.
  """
  lock = fileio.WorkdirLock(workdir)
  try:
    return _train_and_evaluate(config, workdir, overwrite=overwrite, lock=lock)
  finally:
    lock.release()


def _train_and_evaluate(config, workdir: str, *, overwrite: bool, lock) -> dict[str, Any]:
  # -- Validate (no compute before this passes). ------------------------------
  method, info = validate(config, workdir)
  config_dict = config.to_dict()
  # Several processes (kdrobust.parallel): process 0 alone holds the lock and changes the
  # workdir, after every process has read it (a barrier), so all agree on `resuming`.
  primary, single = jax.process_index() == 0, jax.process_count() == 1
  if primary:
    lock.acquire()  # before the workdir is read or moved aside
  resuming = _check_workdir(workdir, config_dict, overwrite, move=single)
  parallel.sync("kdrobust:workdir-read")
  if primary and not single and not resuming:
    _check_workdir(workdir, config_dict, overwrite)  # --overwrite: moves the old run aside
  if primary and not os.path.exists(lock.path):  # --overwrite moved the old run (and lock)
    lock.release()
    lock.acquire()
  mesh = parallel.make_mesh(config.num_devices or None)
  # Teachers are loaded (replicated on the mesh, in every process) and checked before
  # anything is written: a failed start leaves no stub config.json that would block the
  # corrected command.
  teachers = [teachers_lib.load(name, tc, mesh) for name, tc in config.teachers.items()]
  for t in teachers:
    teachers_lib.check_against_data(t, info)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    fileio.write_json(os.path.join(workdir, "config.json"), config_dict)
    fileio.write_json(os.path.join(workdir, "model.json"), {  # read by teacher loading
        "model": config.model.to_dict(), "num_classes": info.num_classes,
        "image_shape": list(info.image_shape), "dataset": config.data.name,
        # label order, checked when this run is used as a teacher
        "class_names": list(info.class_names) if info.class_names else None})
    # recipe.md: the card of `python -m kdrobust.recipe`, regenerated at every start.
    from kdrobust import recipe as recipe_lib  # pylint: disable=g-import-not-at-top
    recipe_lib.write_card(workdir, config)

  # -- Mesh (built above), data geometry, schedule. ----------------------------
  parallel.check_batch_size(config.data.batch_size, mesh, "config.data.batch_size")
  parallel.check_batch_size(config.data.eval_batch_size, mesh, "config.data.eval_batch_size")
  steps_per_epoch = data_lib.steps_per_epoch(config.data.name, config.data.data_dir or None,
                                             config.data.batch_size)
  total_steps = config.total_steps or config.num_epochs * steps_per_epoch
  schedule = make_schedule(config.optim, steps_per_epoch, config.num_epochs)
  tx = make_optimizer(config.optim, schedule)

  # -- Model and state (created on device, replicated). -----------------------
  model = build_model(config.model, info.num_classes, config.data.name)
  extras = build_extra_networks(config, method, info.num_classes, config.data.name,
                                steps_per_epoch)  # e.g. PeerAiD's peer; {} for most methods
  rep = parallel.replicated(mesh)
  wa_cfg = config.get("weight_averaging")  # kdrobust.weight_averaging; off by default
  state = jax.jit(lambda: create_state(model, tx, method, info.num_classes,
                                       info.image_shape, config.seed,
                                       init=config.model.get("init", "flax"),
                                       extras=extras, weight_averaging=wa_cfg),
                  out_shardings=rep)()

  # -- Teachers: frozen, replicated, checked (loaded above). --------------------
  teacher_vars = tuple(parallel.replicate(mesh, t.variables) for t in teachers)

  # -- Resume. -----------------------------------------------------------------
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.ckpt.keep)
  start_step, best = 0, {}
  if resuming and ckpt.all_steps():
    restored = ckpt.restore_latest(ckpt_lib.abstract_like(state))
    if restored is None:  # never a silent restart from step 0
      msg = ckpt.unreadable_message(workdir)
      ckpt.close()
      raise ckpt_lib.CheckpointError(msg)
    state, meta, start_step = restored
    logging.info("Resumed from the checkpoint at step %d in %s.", start_step, workdir)
    print(f"Resumed from the checkpoint at step {start_step} in {workdir}.", flush=True)
    if primary:
      metrics_lib.truncate_after(os.path.join(workdir, "metrics.jsonl"), start_step)
  elif resuming and primary:
    metrics_lib.truncate_after(os.path.join(workdir, "metrics.jsonl"), 0)
  writer = metrics_lib.MetricWriter(workdir)  # after the refusal above: it creates tb/

  # -- Evaluation setup. ---------------------------------------------------------
  levels = data_lib.image_levels(config.data.name)  # batches are uint8; steps convert
  eval_step = step_lib.make_eval_step(
      model.apply, eval_attacks(config.eval), seed=config.seed, image_levels=levels,
      precision=step_lib.monitor_precision(config.eval.get("precision", "auto"),
                                           config.model.get("dtype", "float32")))

  def eval_batches(num_examples):
    return data_lib.eval_iterator(config.data.name, data_dir=config.data.data_dir or None,
                                  batch_size=config.data.eval_batch_size,
                                  num_examples=num_examples or None)

  wa_on = wa_lib.enabled(wa_cfg)

  def evaluate_student(st):
    """The monitor: the average once one is taken (then also the raw student, as 'raw')."""
    variables, used = wa_lib.select_variables(st) if wa_on else (st.variables(), "raw")
    res = evaluate(eval_step, variables, eval_batches(config.eval.num_examples), mesh,
                   config.eval.eps)
    if wa_on:
      res["weights"] = used
      if used == "averaged":
        res["raw"] = evaluate(eval_step, st.variables(), eval_batches(config.eval.num_examples),
                              mesh, config.eval.eps)
    return res

  def refresh_average(st):
    """``st`` with the average's BN statistics recalibrated if stale (kdrobust.weight_averaging)."""
    if not wa_lib.needs_recalibration(wa_cfg, st.averaged):
      return st
    count = int(jax.device_get(st.averaged["count"]))
    seed = wa_lib.recalibration_seed(config.seed, count)
    it = data_lib.train_iterator(config.data.name, data_dir=config.data.data_dir or None,
                                 batch_size=config.data.batch_size, seed=seed,
                                 augment=config.data.augment, prefetch_size=0,
                                 image_dtype="float32")  # recalibrate takes floats
    stats = wa_lib.recalibrate(
        model.apply, st.averaged["params"], st.averaged["batch_stats"],
        (parallel.global_batch(mesh, next(it)) for _ in range(steps_per_epoch)),
        wa_lib.field(wa_cfg, "bn_recalibration"), key=jax.random.PRNGKey(seed))
    averaged = dict(st.averaged, batch_stats=stats, bn_count=jnp.asarray(count, jnp.int32))
    return st.replace(averaged=jax.device_put(averaged, rep))

  diag = config.get("diagnostics") or {}
  diag_step = None
  if diag and diag.every_epochs:
    diag_step = step_lib.make_diagnostics_step(
        model.apply, {t.name: t.module.apply for t in teachers} if diag.gradient_agreement
        else {}, local_linearity=diag.local_linearity,
        local_linearity_steps=diag.local_linearity_steps, seed=config.seed,
        image_levels=levels)
    diag_teacher_vars = teacher_vars if diag.gradient_agreement else ()
    diag_every = max(int(diag.every_epochs * steps_per_epoch), 1)

  def run_diagnostics(step_now, variables):
    res = diagnose(diag_step, variables, diag_teacher_vars,
                   eval_batches(diag.num_examples), mesh, config.eval.eps)
    writer.write(step_now, "diagnostics", res)
    return res

  last_diag: dict[str, float] = {}
  if start_step == 0 and config.teacher_eval_examples and teachers:
    for t, t_vars in zip(teachers, teacher_vars):  # replicated on the mesh, as in the step
      t_eval = step_lib.make_eval_step(
          t.module.apply, eval_attacks(config.eval), seed=config.seed, image_levels=levels,
          precision=step_lib.monitor_precision(config.eval.get("precision", "auto"), t.dtype))
      res = evaluate(t_eval, t_vars, eval_batches(config.teacher_eval_examples), mesh,
                     config.eval.eps)
      writer.write(0, f"teacher/{t.name}", _flat_eval(res))
      print(f"Teacher {t.name}: clean {res['clean_accuracy']:.4f} "
            + " ".join(f"{k} {v:.4f}" for k, v in res["robust_accuracy"].items())
            + f" ({res['num_examples']} test examples)", flush=True)
  if start_step == 0 and teachers and (config.get("teacher_entropy") or {}).get("unlearnable"):
    from kdrobust import teacher_entropy as te_lib  # pylint: disable=g-import-not-at-top
    te_lib.check_teachers(teachers, config.teacher_entropy, dataset=config.data.name,
                          data_dir=config.data.data_dir or None, workdir=workdir,
                          seed=config.seed, batch_size=config.data.eval_batch_size,
                          writer=writer)

  # -- Train. --------------------------------------------------------------------
  train_step = step_lib.make_train_step(
      apply_fn=model.apply, method=method, tx=tx,
      teacher_apply_fns=[t.module.apply for t in teachers],
      num_classes=info.num_classes, num_epochs=config.num_epochs,
      steps_per_epoch=steps_per_epoch, seed=config.seed, lr_schedule=schedule,
      mesh=mesh, extra_networks={n: step_lib.ExtraNetwork(m.apply, t, sch)
                                 for n, (m, t, sch, _) in extras.items()},
      weight_averaging=wa_cfg, image_levels=levels)
  batches = data_lib.train_iterator(config.data.name, data_dir=config.data.data_dir or None,
                                    batch_size=config.data.batch_size, seed=config.seed,
                                    start_step=start_step, augment=config.data.augment,
                                    workers=config.data.get("workers", 0))
  meta_base = {"config": config_dict, "code_version": code_version(),
               "teachers": [t.source for t in teachers],
               # config.teachers.<name>.dtype 'auto' resolved on this backend
               "teacher_dtypes": {t.name: t.dtype for t in teachers}}
  eval_every = max(int(config.eval.every_epochs * steps_per_epoch), 1) \
      if config.eval.every_epochs else 0
  ckpt_every = max(int(config.ckpt.every_epochs * steps_per_epoch), 1)
  last_eval: dict[str, Any] = {}
  last_eval_step = -1  # the step last_eval belongs to (only that checkpoint carries it)
  bar = metrics_lib.progress(total_steps, initial=start_step)
  t0, s0 = time.time(), start_step
  step = start_step
  guard_max_abs = config.get("guard_max_abs", BLOWUP_THRESHOLD)
  pending = None  # (step, metrics, guard values) of a log step, read one step late

  def write_train(at, m):
    nonlocal t0, s0
    m["steps_per_sec"] = (at - s0) / max(time.time() - t0, 1e-9)
    m["epoch"] = at / steps_per_epoch
    writer.write(at, "train", m)
    bar.set_postfix_str(metrics_lib.format_scalars(m, ("loss", "lr")), refresh=False)
    t0, s0 = time.time(), at

  with _Preemption() as preempt:
    while step < total_steps:
      batch = parallel.global_batch(mesh, next(batches))
      state, metrics = train_step(state, teacher_vars, batch)
      step += 1
      bar.update(1)
      is_log = step % config.log_every_steps == 0 or step == total_steps
      is_epoch_end = step % steps_per_epoch == 0 or step == total_steps
      is_eval = bool(eval_every) and (step % eval_every == 0 or step == total_steps)
      # An evaluated state is always checkpointed: its accuracy labels that checkpoint.
      is_ckpt = step % ckpt_every == 0 or step == total_steps or preempt.requested or is_eval
      # Metrics one step late: a plain log step's metrics and guard values are
      # read here, after the next step is dispatched, so the device never waits
      # for the host. Epoch ends and checkpoints read at once: the guard runs
      # before anything is saved, so a NaN still stops the run with the last
      # good checkpoint intact (docs/reliability.md).
      if pending is not None:
        at, late_metrics, late_guard = pending
        pending = None
        _check_guard(jax.device_get(late_guard), at, ckpt, guard_max_abs)
        write_train(at, _fetch_metrics(late_metrics))
      if is_epoch_end or is_ckpt:
        _check_finite(state, step, ckpt, guard_max_abs)  # before anything is saved
        if is_log:
          write_train(step, _fetch_metrics(metrics))
      elif is_log:  # dispatched now, read after the next step's dispatch
        pending = (step, metrics, _guard_values(state))
      if is_eval or is_ckpt:  # stale statistics of the average recalibrated (if configured)
        state = refresh_average(state)
      if is_eval:
        last_eval = evaluate_student(state)
        last_eval_step = step
        fileio.fault_point("eval")
        writer.write(step, "eval", _flat_eval(last_eval))
      if diag_step is not None and (step % diag_every == 0 or step == total_steps):
        last_diag = run_diagnostics(step, state.variables())
      if is_epoch_end:
        epoch = -(-step // steps_per_epoch)
        summary = f"epoch {epoch} step {step}/{total_steps}"
        if last_eval and last_eval_step == step:  # never an older evaluation's numbers
          summary += (f" clean {last_eval['clean_accuracy']:.4f} "
                      + " ".join(f"{k} {v:.4f}" for k, v in last_eval["robust_accuracy"].items()))
        if last_diag:
          summary += " " + " ".join(f"{k} {v:.4g}" for k, v in last_diag.items())
        bar.write(summary)
      if is_ckpt:
        own = _best_metrics(last_eval) if last_eval_step == step else {}  # only its own eval
        ckpt.save(step, state, dict(meta_base, step=step, metrics=own), metrics=own or None)
      if preempt.requested:
        ckpt.close()
        bar.close()
        print(f"SIGTERM: saved the checkpoint at step {step}; exiting. "
              "Run the same command to resume.", flush=True)
        raise SystemExit(143)
  bar.close()
  ckpt.wait()  # every save finished and verified

  # -- Final evaluation and results. ---------------------------------------------
  final = last_eval if last_eval and last_eval_step == step else evaluate_student(
      refresh_average(state))
  best_step = ckpt.best_step()
  for s in {step, best_step} - {None}:  # results.json only names readable checkpoints
    if ckpt.check(s)[0] == ckpt_lib.UNVERIFIED:
      ckpt.verify(s)
    if ckpt.check(s)[0] != ckpt_lib.INTACT:
      msg = (f"The checkpoint at step {s} in {ckpt.directory} is corrupt "
             f"({ckpt.check(s)[1]}); results.json was not written. Run the same command again.")
      ckpt.close()
      raise ckpt_lib.CheckpointError(msg)
  results = {
      "clean_accuracy": final["clean_accuracy"],
      "robust_accuracy": final["robust_accuracy"],
      "num_examples": final["num_examples"], "eps": config.eval.eps,
      # With weight averaging: which weights the numbers above are ('averaged'
      # once an average was taken, else 'raw'), and the raw student's own.
      **({"weights": final["weights"]} if "weights" in final else {}),
      **({"raw": {k: final["raw"][k] for k in ("clean_accuracy", "robust_accuracy")}}
         if "raw" in final else {}),
      "step": step, "best_step": best_step, "method": method.name,
      "teacher_dtypes": meta_base["teacher_dtypes"],
      "config": config_dict, "code_version": code_version(),
      **({"diagnostics": last_diag} if last_diag else {}),
      "jax_version": jax.__version__, "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
  }
  ckpt.close()
  writer.close()
  fileio.fault_point("results")
  if jax.process_index() == 0:
    fileio.write_json(os.path.join(workdir, "results.json"), results)
  print(f"Final: clean accuracy {results['clean_accuracy']:.4f}, robust accuracy "
        + ", ".join(f"{k} {v:.4f}" for k, v in results["robust_accuracy"].items())
        + f" on {results['num_examples']} test examples (eps {config.eval.eps:.4f}).", flush=True)
  return results


def _flat_eval(res: dict[str, Any]) -> dict[str, float]:
  out = {"clean_accuracy": res["clean_accuracy"]}
  out.update({f"robust_accuracy/{k}": v for k, v in res["robust_accuracy"].items()})
  if "raw" in res:  # weight averaging: the raw student next to the average
    out.update({f"raw/{k}": v for k, v in _flat_eval(res["raw"]).items()})
  return out


def _best_metrics(res: dict[str, Any]) -> dict[str, float]:
  """The checkpoint metric: the lowest robust accuracy over the eval attacks."""
  if not res or not res.get("robust_accuracy"):
    return {}
  return {ckpt_lib.BEST_METRIC: min(res["robust_accuracy"].values()),
          "clean_accuracy": res["clean_accuracy"]}


@jax.jit
def _max_abs(tree) -> jax.Array:
  """``max |x|`` over the floating leaves of ``tree`` (NaN if any leaf holds a NaN)."""
  leaves = [jnp.max(jnp.abs(x)).astype(jnp.float32) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating) and x.size]
  return jnp.max(jnp.stack(leaves)) if leaves else jnp.float32(0)


def _fetch_metrics(metrics):
  """The host copy of a step's metrics (the loop's only read of them; a test hook)."""
  return jax.device_get(metrics)


def _guard_values(state: TrainState) -> tuple[jax.Array, jax.Array]:
  """``(state.nonfinite, max |params, BN statistics|)``: the guard's inputs, on the device.

  Dispatched without waiting, so a log step can read them one step late
  (new buffers: ``state`` itself is donated to the next step).
  """
  extra = {n: {k: e[k] for k in ("params", "batch_stats") if k in e}  # PeerAiD's peer, ...
           for n, e in (getattr(state, "extra", None) or {}).items()}
  return (jnp.copy(state.nonfinite),
          _max_abs({"params": state.params, "batch_stats": state.batch_stats, "extra": extra}))


def _check_finite(state: TrainState, step: int, ckpt,
                  threshold: float = BLOWUP_THRESHOLD) -> None:
  """The NaN guard, run at epoch ends, before every checkpoint and at log steps.

  At a plain log step (no save, no epoch end) the loop reads the guard's
  values (:func:`_guard_values`, taken from that step's state) one step late,
  after dispatching the next step; nothing is saved in between.

  Stops the run if an update was rejected (loss or gradients NaN/Inf,
  ``state.nonfinite``) or if a parameter or BN statistic (of the student or
  of an extra trainable network, ``state.extra``) is no longer finite
  or exceeds ``threshold`` (``config.guard_max_abs``, default
  :data:`BLOWUP_THRESHOLD`) in magnitude (an update that diverged
  while the loss was still finite). Passing marks every earlier checkpoint
  "good" (training continued finitely from it); the message names the last
  good one, or says there is none.
  """
  _check_guard(_guard_values(state), step, ckpt, threshold)


def _check_guard(values, step: int, ckpt, threshold: float = BLOWUP_THRESHOLD) -> None:
  """:func:`_check_finite` on ``_guard_values(state)`` of the state after ``step`` (blocks)."""
  rejected, size = (int(values[0]), float(values[1]))
  if rejected == 0 and size <= threshold:  # NaN compares False: caught here
    ckpt.mark_healthy(step)
    return
  ckpt.close()
  if rejected:
    cause = (f"the loss or gradients became NaN/Inf before step {step} (the bad update "
             "was not applied)")
  else:
    cause = (f"the parameters or BN statistics diverged before step {step} (max |value| "
             f"{size:.3g} > config.guard_max_abs = {threshold:.0e}; raise it if such values "
             "are legitimate for this model)")
  good = ckpt.good_steps()
  if good:
    where = (f"The last good checkpoint (step {good[-1]}, from which training continued "
             f"finitely) in {ckpt.directory} is intact.")
  else:
    saved = ckpt.intact_steps()
    where = ("There is no last good checkpoint: " + (
        f"training did not continue finitely from the newest one (step {saved[-1]}) "
        if saved else "none was saved yet ") + f"in {ckpt.directory}.")
  raise NonFiniteLossError(f"The run stopped: {cause}. {where} Lower the learning rate "
                           "(check the schedule) or check the data.")

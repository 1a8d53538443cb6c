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
from kdrobust import methods as methods_lib
from kdrobust import metrics as metrics_lib
from kdrobust import models as models_lib
from kdrobust import parallel
from kdrobust import teachers as teachers_lib
from kdrobust import train_step as step_lib
from kdrobust.models import init as init_lib
from kdrobust.state import TrainState


class WorkdirConflictError(RuntimeError):
  """The workdir holds a run of a different config."""


class NonFiniteLossError(FloatingPointError):
  """The loss or the gradients became NaN/Inf."""


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
    (configs/paper_settings.py, methods.md E9);
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


def create_state(model, tx, method, num_classes: int, image_shape, seed: int,
                 init: str = "flax") -> TrainState:
  """A fresh train state (call under ``jax.jit`` to place it on devices).

  ``init`` is ``config.model.init``: ``'flax'`` keeps Flax's initialisers,
  ``'torch'`` re-draws the parameters as ``torch.nn`` does
  (:func:`kdrobust.models.init.torch_default_init`, methods.md E12) from a key
  derived from ``seed``.
  """
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = model.init({"params": jax.random.PRNGKey(seed),
                          "dropout": jax.random.PRNGKey(seed + 1)}, x, train=False)
  params = init_lib.apply_init(init, variables["params"],
                               jax.random.fold_in(jax.random.PRNGKey(seed), 0x7E12))
  return TrainState.create(params, variables.get("batch_stats", {}),
                           tx, method.init_state(num_classes))


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
def validate(config) -> tuple[Any, Any]:
  """Check names, dataset, teachers; returns ``(method, dataset_info)``."""
  method = methods_lib.from_config(config.method)  # unknown names/fields -> ValueError
  if config.model.name not in models_lib.available():
    raise ValueError(f"Unknown model {config.model.name!r}; valid models: "
                     f"{', '.join(models_lib.available())}.")
  init_lib.check_init(config.model.get("init", "flax"))
  try:
    info = data_lib.info(config.data.name, config.data.data_dir or None)
  except data_lib.DatasetNotFoundError:
    if config.data.name != "digits":
      raise
    # digits ships inside scikit-learn: preparing it needs no source and no network.
    from kdrobust.data import prepare  # pylint: disable=g-import-not-at-top
    print("Preparing the bundled digits dataset (scikit-learn, offline)...", flush=True)
    info = prepare.prepare("digits", source=None, data_dir=config.data.data_dir or None)
  lo, hi = type(method).teachers
  n = len(config.teachers)
  if n < lo or (hi is not None and n > hi):
    want = f"exactly {lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
    raise ValueError(f"Method {method.name!r} needs {want} teacher(s) in config.teachers; "
                     f"got {n} ({', '.join(config.teachers) or 'none'}).")
  for name, tc in config.teachers.items():
    teachers_lib.check_compatible(name, tc, info)
  d = config.get("diagnostics")
  if d is not None and d.every_epochs:
    if not (d.local_linearity or (d.gradient_agreement and n)):
      raise ValueError(
          "config.diagnostics.every_epochs > 0 but there is nothing to log: gradient "
          "agreement (GD/GC) needs teachers in config.teachers, and "
          "config.diagnostics.local_linearity is off.")
    if d.local_linearity and d.local_linearity_steps < 1:
      raise ValueError("config.diagnostics.local_linearity_steps must be >= 1.")
  return method, info


def _check_workdir(workdir: str, config_dict: dict, overwrite: bool) -> bool:
  """Refuse a workdir holding another config; returns True if it holds this run."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return False
  with open(path) as f:
    old = json.load(f)
  diff = config_lib.config_differences(old, config_dict)
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
  """Train ``config`` in ``workdir`` (resuming if it holds this run); returns results."""
  # -- Validate (no compute before this passes). ------------------------------
  method, info = validate(config)
  config_dict = config.to_dict()
  resuming = _check_workdir(workdir, config_dict, overwrite)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config_dict, f, indent=2, default=list)
    with open(os.path.join(workdir, "model.json"), "w") as f:  # read by teacher loading
      json.dump({"model": config.model.to_dict(), "num_classes": info.num_classes,
                 "image_shape": list(info.image_shape), "dataset": config.data.name,
                 # label order, checked when this run is used as a teacher
                 "class_names": list(info.class_names) if info.class_names else None},
                f, indent=2, default=list)
    # recipe.md: the card of `python -m kdrobust.recipe`, regenerated at every start.
    from kdrobust import recipe as recipe_lib  # pylint: disable=g-import-not-at-top
    recipe_lib.write_card(workdir, config)

  # -- Mesh, data geometry, schedule. -----------------------------------------
  mesh = parallel.make_mesh(config.num_devices or None)
  parallel.check_batch_size(config.data.batch_size, mesh)
  parallel.check_batch_size(config.data.eval_batch_size, mesh)
  steps_per_epoch = data_lib.steps_per_epoch(config.data.name, config.data.data_dir or None,
                                             config.data.batch_size)
  total_steps = config.total_steps or config.num_epochs * steps_per_epoch
  schedule = make_schedule(config.optim, steps_per_epoch, config.num_epochs)
  tx = make_optimizer(config.optim, schedule)

  # -- Model and state (created on device, replicated). -----------------------
  model = build_model(config.model, info.num_classes, config.data.name)
  rep = parallel.replicated(mesh)
  state = jax.jit(lambda: create_state(model, tx, method, info.num_classes,
                                       info.image_shape, config.seed,
                                       init=config.model.get("init", "flax")),
                  out_shardings=rep)()

  # -- Teachers: frozen, replicated, checked. ---------------------------------
  teachers = [teachers_lib.load(name, tc) for name, tc in config.teachers.items()]
  for t in teachers:
    teachers_lib.check_against_data(t, info)
  teacher_vars = tuple(parallel.replicate(mesh, t.variables) for t in teachers)
  writer = metrics_lib.MetricWriter(workdir)

  # -- Resume. -----------------------------------------------------------------
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.ckpt.keep)
  start_step, best = 0, {}
  if resuming and ckpt.all_steps():
    restored = ckpt.restore_latest(ckpt_lib.abstract_like(state))
    if restored is not None:
      state, meta, start_step = restored
      logging.info("Resumed from the checkpoint at step %d in %s.", start_step, workdir)
      print(f"Resumed from the checkpoint at step {start_step} in {workdir}.", flush=True)
      metrics_lib.truncate_after(writer.path, start_step)
  elif resuming:
    metrics_lib.truncate_after(writer.path, 0)

  # -- Evaluation setup. ---------------------------------------------------------
  eval_step = step_lib.make_eval_step(model.apply, eval_attacks(config.eval), seed=config.seed)

  def eval_batches(num_examples):
    return data_lib.eval_iterator(config.data.name, data_dir=config.data.data_dir or None,
                                  batch_size=config.data.eval_batch_size,
                                  num_examples=num_examples or None)

  diag = config.get("diagnostics") or {}
  diag_step = None
  if diag and diag.every_epochs:
    diag_step = step_lib.make_diagnostics_step(
        model.apply, {t.name: t.module.apply for t in teachers} if diag.gradient_agreement
        else {}, local_linearity=diag.local_linearity,
        local_linearity_steps=diag.local_linearity_steps, seed=config.seed)
    diag_teacher_vars = teacher_vars if diag.gradient_agreement else ()
    diag_every = max(int(diag.every_epochs * steps_per_epoch), 1)

  def run_diagnostics(step_now, variables):
    res = diagnose(diag_step, variables, diag_teacher_vars,
                   eval_batches(diag.num_examples), mesh, config.eval.eps)
    writer.write(step_now, "diagnostics", res)
    return res

  last_diag: dict[str, float] = {}
  if start_step == 0 and config.teacher_eval_examples and teachers:
    for t in teachers:
      t_eval = step_lib.make_eval_step(t.module.apply, eval_attacks(config.eval), seed=config.seed)
      res = evaluate(t_eval, t.variables, eval_batches(config.teacher_eval_examples), mesh,
                     config.eval.eps)
      writer.write(0, f"teacher/{t.name}", _flat_eval(res))
      print(f"Teacher {t.name}: clean {res['clean_accuracy']:.4f} "
            + " ".join(f"{k} {v:.4f}" for k, v in res["robust_accuracy"].items())
            + f" ({res['num_examples']} test examples)", flush=True)

  # -- Train. --------------------------------------------------------------------
  train_step = step_lib.make_train_step(
      apply_fn=model.apply, method=method, tx=tx,
      teacher_apply_fns=[t.module.apply for t in teachers],
      num_classes=info.num_classes, num_epochs=config.num_epochs,
      steps_per_epoch=steps_per_epoch, seed=config.seed, lr_schedule=schedule,
      mesh=mesh)
  batches = data_lib.train_iterator(config.data.name, data_dir=config.data.data_dir or None,
                                    batch_size=config.data.batch_size, seed=config.seed,
                                    start_step=start_step, augment=config.data.augment)
  meta_base = {"config": config_dict, "code_version": code_version(),
               "teachers": [t.source for t in teachers]}
  eval_every = max(int(config.eval.every_epochs * steps_per_epoch), 1) \
      if config.eval.every_epochs else 0
  ckpt_every = max(int(config.ckpt.every_epochs * steps_per_epoch), 1)
  last_eval: dict[str, Any] = {}
  bar = metrics_lib.progress(total_steps, initial=start_step)
  t0, s0 = time.time(), start_step
  step = start_step
  with _Preemption() as preempt:
    while step < total_steps:
      batch = parallel.global_batch(mesh, next(batches))
      state, metrics = train_step(state, teacher_vars, batch)
      step += 1
      bar.update(1)
      is_log = step % config.log_every_steps == 0 or step == total_steps
      is_epoch_end = step % steps_per_epoch == 0 or step == total_steps
      if is_log or is_epoch_end or preempt.requested:
        _check_finite(state, step, ckpt)
      if is_log:
        m = jax.device_get(metrics)
        m["steps_per_sec"] = (step - s0) / max(time.time() - t0, 1e-9)
        m["epoch"] = step / steps_per_epoch
        writer.write(step, "train", m)
        bar.set_postfix_str(metrics_lib.format_scalars(m, ("loss", "lr")), refresh=False)
        t0, s0 = time.time(), step
      if eval_every and (step % eval_every == 0 or step == total_steps):
        last_eval = evaluate(eval_step, state.variables(),
                             eval_batches(config.eval.num_examples), mesh, config.eval.eps)
        writer.write(step, "eval", _flat_eval(last_eval))
      if diag_step is not None and (step % diag_every == 0 or step == total_steps):
        last_diag = run_diagnostics(step, state.variables())
      if is_epoch_end:
        epoch = -(-step // steps_per_epoch)
        summary = f"epoch {epoch} step {step}/{total_steps}"
        if last_eval:
          summary += (f" clean {last_eval['clean_accuracy']:.4f} "
                      + " ".join(f"{k} {v:.4f}" for k, v in last_eval["robust_accuracy"].items()))
        if last_diag:
          summary += " " + " ".join(f"{k} {v:.4g}" for k, v in last_diag.items())
        bar.write(summary)
      if step % ckpt_every == 0 or step == total_steps or preempt.requested:
        ckpt.save(step, state, dict(meta_base, step=step, metrics=_best_metrics(last_eval)),
                  metrics=_best_metrics(last_eval) or None)
      if preempt.requested:
        ckpt.close()
        bar.close()
        print(f"SIGTERM: saved the checkpoint at step {step}; exiting. "
              "Run the same command to resume.", flush=True)
        raise SystemExit(143)
  bar.close()
  ckpt.wait()

  # -- Final evaluation and results. ---------------------------------------------
  final = last_eval if eval_every and last_eval else evaluate(
      eval_step, state.variables(), eval_batches(config.eval.num_examples), mesh,
      config.eval.eps)
  results = {
      "clean_accuracy": final["clean_accuracy"],
      "robust_accuracy": final["robust_accuracy"],
      "num_examples": final["num_examples"], "eps": config.eval.eps,
      "step": step, "best_step": ckpt.best_step(), "method": method.name,
      "config": config_dict, "code_version": code_version(),
      **({"diagnostics": last_diag} if last_diag else {}),
      "jax_version": jax.__version__, "devices": f"{jax.device_count()}x {jax.devices()[0].device_kind}",
  }
  ckpt.close()
  writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=2, default=list)
  print(f"Final: clean accuracy {results['clean_accuracy']:.4f}, robust accuracy "
        + ", ".join(f"{k} {v:.4f}" for k, v in results["robust_accuracy"].items())
        + f" on {results['num_examples']} test examples (eps {config.eval.eps:.4f}).", flush=True)
  return results


def _flat_eval(res: dict[str, Any]) -> dict[str, float]:
  out = {"clean_accuracy": res["clean_accuracy"]}
  out.update({f"robust_accuracy/{k}": v for k, v in res["robust_accuracy"].items()})
  return out


def _best_metrics(res: dict[str, Any]) -> dict[str, float]:
  """The checkpoint metric: the lowest robust accuracy over the eval attacks."""
  if not res or not res.get("robust_accuracy"):
    return {}
  return {ckpt_lib.BEST_METRIC: min(res["robust_accuracy"].values()),
          "clean_accuracy": res["clean_accuracy"]}


def _check_finite(state: TrainState, step: int, ckpt) -> None:
  if int(jax.device_get(state.nonfinite)) > 0:
    ckpt.close()
    last = ckpt.latest_step()
    raise NonFiniteLossError(
        f"The loss or gradients became NaN/Inf before step {step}; the bad update was "
        f"not applied and the run stopped. The last good checkpoint (step {last}) in "
        f"{ckpt.directory} is intact. Lower the learning rate or check the data.")

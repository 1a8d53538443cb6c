"""``python -m kdrobust.evaluate --workdir DIR``: evaluate a kdrobust run.

Clean accuracy, FGSM, PGD-20, CW-inf and AutoAttack (stage by stage) on the
first ``--num_examples`` test points (dataset order, as RobustBench), at the
run's ``config.eval.eps`` or at every epsilon of ``--eps 2/255,4/255,8/255``.
Prints a table, writes ``DIR/eval/<name>.json`` (never overwriting one
without ``--overwrite``) and flags gradient-masking signs. PGD-20 and CW-inf
follow the papers' code (the last iterate; ``pgd20_best``/``cw_best`` are
kdrobust's any-iterate variants). ``--robustbench`` also writes
``DIR/eval/<name>.robustbench.json``, the model-info file of a RobustBench
submission. ``--plot`` draws accuracy against epsilon from eps = 0, titled by
method and model; ``--compare DIR,DIR`` overlays other runs (teacher against
students, methods). The presets, the JSON fields and the warnings are documented in
``docs/evaluation.md``.

Library use::

  module, variables, config, step = load_run(workdir, "best")
  record = evaluate_run(workdir, eps="8/255", attacks="clean,pgd20,aa",
                        num_examples=1000)

Evaluation always applies the model in inference mode (batch norm running
statistics) with matmuls at ``--precision`` (default 'highest', the only
reportable one; the choice is recorded in the JSON). ``--compilation_cache_dir``
(default ``~/.cache/kdrobust/jax``) keeps compiled kernels across runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kdrobust import cli
from kdrobust.attacks._precision import PRECISIONS
from kdrobust.evaluation import compilation_cache
from kdrobust.evaluation import masking
from kdrobust.evaluation import presets as presets_lib
from kdrobust.evaluation import report
from kdrobust.evaluation import runner

FORMAT = "kdrobust.evaluate/2"  # 2: pgd20/cw are the papers' last-iterate presets

# RobustBench's model_info/<dataset>/<threat model>/<Model>.json fields, in its
# order [C:robustbench@78fcc9e:model_info/cifar10/Linf/*.json; robustbench/utils.py ModelInfo].
ROBUSTBENCH_FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes",
                      "dataset", "venue", "architecture", "eps", "clean_acc", "reported",
                      "footnote", "autoattack_acc", "unreliable")
# Fields a user may set (--robustbench_field KEY=VALUE); the measured ones are not.
ROBUSTBENCH_SETTABLE = ("link", "name", "authors", "additional_data", "number_forward_passes",
                        "venue", "architecture", "reported", "footnote", "external",
                        "unreliable")
ROBUSTBENCH_DATASETS = {"cifar10": ("cifar10", 10000), "cifar100": ("cifar100", 10000),
                        "imagenet2012": ("imagenet", 5000)}


class EvaluationError(ValueError):
  """Bad evaluation inputs (reported before any compute)."""


# ----------------------------------------------------------------------------
# Loading a run.
# ----------------------------------------------------------------------------
def _read_json(path: str) -> dict[str, Any]:
  from kdrobust import fileio  # pylint: disable=g-import-not-at-top
  return fileio.read_json(path)  # a torn file: one line naming it (fileio.TornFileError)


def _checkpointer(workdir: str):
  """The run's Checkpointer (synchronous, read-only use)."""
  from kdrobust import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  ckdir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckdir):
    raise EvaluationError(f"{workdir} has no checkpoints/ directory: is it a kdrobust run?")
  return ckpt_lib.Checkpointer(ckdir, enable_async=False)


def resolve_checkpoint(workdir: str, checkpoint: str | int = "best") -> tuple[int, str]:
  """``(step, how)`` for ``'best'`` (by robust accuracy), ``'latest'`` or a step number.

  ``'best'`` falls back to the latest checkpoint when none records a robust
  accuracy (a run without periodic evaluation); ``how`` says which happened.
  """
  which = str(checkpoint).strip().lower()
  ck = _checkpointer(workdir)
  try:
    steps = ck.all_steps()
    if not steps:
      raise EvaluationError(f"{workdir} has no checkpoint yet.")
    if which == "best":
      best = ck.best_step()
      if best is not None:
        return best, "best"
      return steps[-1], "latest (no checkpoint records a robust accuracy)"
    if which == "latest":  # the newest checkpoint not known to be corrupt
      return (ck.latest_intact_step() or steps[-1]), "latest"
    try:
      step = int(which)
    except ValueError:
      raise EvaluationError(f"--checkpoint must be best, latest or a step number, "
                            f"got {checkpoint!r}.") from None
    if step not in steps:
      raise EvaluationError(f"{workdir} has no checkpoint at step {step}; "
                            f"available: {', '.join(map(str, steps))}.")
    return step, "step"
  finally:
    ck.close()


def load_run(workdir: str, checkpoint: str | int = "best", *, dtype: str = "float32",
             weights: str = "auto"):
  """``(module, variables, config, step)`` of a kdrobust run directory.

  ``weights`` (``config.weight_averaging``, :mod:`kdrobust.weight_averaging`):
  ``'auto'`` (default) the averaged weights when the checkpoint holds an
  average (the model the run evaluated and ranked), else the student's;
  ``'averaged'`` or ``'raw'`` explicitly (:func:`load_run_weights` also says
  which it used).

  ``module`` is the Flax model (normalisation inside, compute ``dtype``,
  float32 by default whatever the run trained in), ``variables``
  ``{'params', 'batch_stats'}`` on the default device, ``config`` the run's
  ``ml_collections.ConfigDict``. Apply it with
  ``module.apply(variables, x, train=False)`` (inference mode), or get a
  ready logits function with :func:`kdrobust.evaluation.runner.flax_logits_fn`.
  """
  return load_run_weights(workdir, checkpoint, dtype=dtype, weights=weights)[:4]


def load_run_weights(workdir: str, checkpoint: str | int = "best", *, dtype: str = "float32",
                     weights: str = "auto"):
  """:func:`load_run` plus the weights used: ``(module, variables, config, step, used)``."""
  import ml_collections as mlc  # pylint: disable=g-import-not-at-top
  from kdrobust import train  # pylint: disable=g-import-not-at-top
  from kdrobust import weight_averaging as wa_lib  # pylint: disable=g-import-not-at-top
  if weights not in wa_lib.WEIGHTS:
    raise EvaluationError(f"Unknown --weights {weights!r}; valid: {', '.join(wa_lib.WEIGHTS)}.")
  config, spec = _run_files(workdir)
  step, _ = resolve_checkpoint(workdir, checkpoint)
  ck = _checkpointer(workdir)
  try:
    raw = ck.restore_raw_single_device(step)
  except Exception as e:  # pylint: disable=broad-except
    others = [s for s in ck.all_steps() if s != step]
    raise EvaluationError(
        f"The checkpoint at step {step} in {ck.directory} is unreadable (corrupt or truncated: "
        f"{type(e).__name__}: {' '.join(str(e).split())[:160]}). "
        + (f"Evaluate another one with --checkpoint N (available: {', '.join(map(str, others))}), "
           "or rerun the training command to rewrite it." if others else
           "Rerun the training command to rewrite it.")) from e
  finally:
    ck.close()
  model_cfg = mlc.ConfigDict(_tuples(spec["model"]))
  model_cfg.dtype = dtype
  module = train.build_model(model_cfg, int(spec["num_classes"]), spec["dataset"])
  try:
    variables, used = wa_lib.select_variables(raw, weights)
  except ValueError as e:
    raise EvaluationError(f"{e} (checkpoint at step {step} of {workdir})") from None
  variables = jax.tree.map(jnp.asarray, variables)
  return module, variables, config, step, used


def _tuples(tree):
  """JSON lists back to the tuples the config held (hashable modules compile once)."""
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


def _run_files(workdir: str):
  """The run's config (ConfigDict) and model spec (``model.json``)."""
  import ml_collections as mlc  # pylint: disable=g-import-not-at-top
  cpath, mpath = os.path.join(workdir, "config.json"), os.path.join(workdir, "model.json")
  if not os.path.exists(cpath):
    raise EvaluationError(f"{workdir} is not a kdrobust run directory (no config.json).")
  config = mlc.ConfigDict(_read_json(cpath))
  if os.path.exists(mpath):
    spec = _read_json(mpath)
  else:
    from kdrobust import data as data_lib  # pylint: disable=g-import-not-at-top
    info = data_lib.info(config.data.name, config.data.data_dir or None)
    spec = {"model": config.model.to_dict(), "num_classes": info.num_classes,
            "image_shape": list(info.image_shape), "dataset": config.data.name}
  return config, spec


def load_test_data(config, num_examples: int | None = None, *, data_dir: str | None = None,
                   batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """The first ``num_examples`` test points (dataset order) as numpy ``(x, y)``."""
  from kdrobust import data as data_lib  # pylint: disable=g-import-not-at-top
  xs, ys = [], []
  for b in data_lib.eval_iterator(config.data.name, data_dir=data_dir or config.data.data_dir
                                  or None, batch_size=batch_size,
                                  num_examples=num_examples or None, process_index=0,
                                  process_count=1, image_dtype="float32"):
    m = np.asarray(b["mask"], bool)
    xs.append(np.asarray(b["image"], np.float32)[m])
    ys.append(np.asarray(b["label"])[m])
  if not xs:
    raise EvaluationError(f"The test split of {config.data.name} is empty.")
  return np.concatenate(xs), np.concatenate(ys).astype(np.int32)


# ----------------------------------------------------------------------------
# Names, metadata.
# ----------------------------------------------------------------------------
def default_name(step: int, requested: str, eps_list, norm: str, *, num_examples=None,
                 attacks=presets_lib.DEFAULT_ATTACKS, aa_version: str = "standard") -> str:
  """``best-step120_linf_eps8-255[_n1000][_clean-pgd20][_aa-plus]``.

  The AutoAttack batch size is not in the name (it is in the record).
  """
  tag = f"{requested}-step{step}" if requested in ("best", "latest") else f"step{step}"
  name = f"{tag}_{norm}_eps" + "_".join(presets_lib.eps_slug(l) for _, l in eps_list)
  if num_examples:
    name += f"_n{num_examples}"
  if tuple(attacks) != presets_lib.DEFAULT_ATTACKS:
    name += "_" + "-".join(attacks)
  if "aa" in attacks and aa_version != "standard":
    name += f"_aa-{aa_version}"
  return name


def versions() -> dict[str, str]:
  """kdrobust (with git commit), jax, jaxlib, flax, numpy, python."""
  import flax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  from kdrobust import train  # pylint: disable=g-import-not-at-top
  return {"kdrobust": train.code_version(), "jax": jax.__version__,
          "jaxlib": getattr(jaxlib, "__version__", "?"), "flax": flax.__version__,
          "numpy": np.__version__, "python": platform.python_version()}


def device_string() -> str:
  """The device evaluated on, e.g. 'gpu: NVIDIA H100 80GB HBM3 (1 of 8 devices used)'."""
  d = jax.devices()[0]
  return f"{d.platform}: {d.device_kind} (1 of {jax.device_count()} devices used)"


def headline_eps(eps_list, configured: float | None) -> int:
  """Index of the headline epsilon: the run's configured one if listed, else the largest."""
  if configured is not None:
    for i, (v, _) in enumerate(eps_list):
      if abs(v - configured) < 1e-9:
        return i
  return max(range(len(eps_list)), key=lambda i: eps_list[i][0])


def build_record(results: dict[str, Any], *, headline: int, meta: dict[str, Any]
                 ) -> dict[str, Any]:
  """The JSON record: RobustBench-style headline fields, per-eps figures, warnings."""
  top = results["per_eps"][headline]
  aa = top["accuracy"].get("aa")
  record = {"format": FORMAT, **meta,
            "norm": results["norm"], "eps": top["eps"], "eps_str": top["eps_str"],
            "num_examples": results["num_examples"],
            "clean_acc": results["clean_acc"], "autoattack_acc": aa,
            "robust_acc": {k: v for k, v in top["accuracy"].items() if k != "clean"},
            "worst_case_acc": top["worst_case"],
            "robustbench": {"clean_acc": presets_lib.robustbench_percent(results["clean_acc"]),
                            "autoattack_acc": presets_lib.robustbench_percent(aa),
                            "eps": top["eps_str"], "norm": results["norm"],
                            "n_examples": results["num_examples"],
                            "attack": (f"AutoAttack {results['aa_version']} "
                                       "(kdrobust JAX port)") if aa is not None else None},
            "attacks": results["attacks"], "aa_version": results["aa_version"],
            "presets": {k: p.describe() for k, p in presets_lib.PRESETS.items()
                        if k in results["attacks"]},
            "iterate": {k: p.describe()["iterate"] for k, p in presets_lib.PRESETS.items()
                        if k in results["attacks"]},
            "seed": results["seed"], "batch_size": results["batch_size"],
            "aa_batch_size": results.get("aa_batch_size"),
            "per_eps": results["per_eps"]}
  if aa is not None:
    record["robustbench"]["aa_batch_size"] = results.get("aa_batch_size")
  if "aa" in results["attacks"]:
    record["autoattack_stages"] = top.get("autoattack", {}).get("stages", [])
  return record


# ----------------------------------------------------------------------------
# RobustBench model info.
# ----------------------------------------------------------------------------
def robustbench_architecture(model: dict[str, Any]) -> str:
  """RobustBench's spelling of a kdrobust architecture (``wrn34_10`` -> ``WideResNet-34-10``).

  ``model`` is the run's ``model.json`` model block (``name``, ``kwargs``);
  an unknown name is returned as it is.
  """
  name = str(model.get("name", ""))
  kw = model.get("kwargs") or {}
  m = re.fullmatch(r"wrn(\d+)_(\d+)", name)
  if m:
    return f"WideResNet-{m.group(1)}-{m.group(2)}"
  if name == "wrn" and "depth" in kw and "width" in kw:
    return f"WideResNet-{kw['depth']}-{kw['width']}"
  m = re.fullmatch(r"(preact_)?resnet(\d+)(_imagenet)?", name)
  if m:
    return ("PreActResNet-" if m.group(1) else "ResNet-") + m.group(2)
  fixed = {"mobilenet_v2": "MobileNetV2", "vit_b": "ViT-B", "vit_s": "ViT-S",
           "vit_ti": "ViT-Ti"}
  return fixed.get(name, name)


def parse_robustbench_fields(fields) -> dict[str, Any]:
  """``['name=My model', 'additional_data=true']`` (or a dict) -> typed RobustBench fields.

  ``additional_data`` and ``unreliable`` are booleans, ``number_forward_passes``
  an integer, ``reported``/``external`` percentages (a number becomes a
  2-decimal string), the rest strings. Only :data:`ROBUSTBENCH_SETTABLE`
  keys are accepted: the measured fields come from the evaluation.
  """
  if not fields:
    return {}
  if isinstance(fields, dict):
    items = list(fields.items())
  else:
    items = []
    for item in fields:
      key, sep, value = str(item).partition("=")
      if not sep:
        raise EvaluationError(f"--robustbench_field wants KEY=VALUE, got {item!r}.")
      items.append((key.strip(), value))
  out: dict[str, Any] = {}
  for key, value in items:
    if key not in ROBUSTBENCH_SETTABLE:
      raise EvaluationError(f"Unknown or measured RobustBench field {key!r}; settable: "
                            f"{', '.join(ROBUSTBENCH_SETTABLE)}.")
    if key in ("additional_data", "unreliable"):
      if isinstance(value, str):
        if value.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
          raise EvaluationError(f"RobustBench field {key} is true or false, got {value!r}.")
        value = value.strip().lower() in ("true", "1", "yes")
      out[key] = bool(value)
    elif key == "number_forward_passes":
      try:
        out[key] = int(value)
      except (TypeError, ValueError):
        raise EvaluationError(f"number_forward_passes is an integer, got {value!r}.") from None
    elif key in ("reported", "external") and not isinstance(value, str):
      out[key] = f"{float(value):.2f}"
    else:
      out[key] = str(value)
  return out


def robustbench_model_info(record: dict[str, Any], *, architecture: str | None = None,
                           fields: dict[str, Any] | None = None) -> dict[str, Any]:
  """The model-info JSON of a RobustBench submission, from an evaluation record.

  The fields and their formats are RobustBench's ``model_info/<dataset>/
  <threat model>/<Model>.json`` (docs/evaluation.md, RobustBench model info): percentages as
  2-decimal strings, ``eps`` as written (``"8/255"``), ``dataset`` in
  RobustBench's names. ``clean_acc``, ``autoattack_acc``, ``eps`` and
  ``dataset`` are measured; ``reported`` defaults to the AutoAttack figure
  and ``footnote`` says how it was measured; ``link``, ``authors`` and
  ``venue`` are left empty for the submitter; ``fields`` (see
  :func:`parse_robustbench_fields`) sets any settable field.
  """
  rb = record["robustbench"]
  if rb.get("autoattack_acc") is None:
    raise EvaluationError("The RobustBench model info needs an AutoAttack figure.")
  ds = ROBUSTBENCH_DATASETS.get(record.get("dataset"), (record.get("dataset"), None))[0]
  n = record["num_examples"]
  method = record.get("method") or "model"
  info = {
      "link": "", "name": f"{method} {record.get('model') or ''} (kdrobust)".replace("  ", " "),
      "authors": "", "additional_data": False, "number_forward_passes": 1,
      "dataset": ds, "venue": "",
      "architecture": architecture or str(record.get("model") or ""),
      "eps": record["eps_str"], "clean_acc": rb["clean_acc"],
      "reported": rb["autoattack_acc"],
      "footnote": (f"AutoAttack {record.get('aa_version', 'standard')} by kdrobust's JAX port "
                   f"of fra31/auto-attack, on the first {n} test points, seed "
                   f"{record.get('seed')}, batch size {record.get('aa_batch_size')}."),
      "autoattack_acc": rb["autoattack_acc"], "unreliable": False}
  info.update(fields or {})
  order = list(ROBUSTBENCH_FIELDS)
  order.insert(order.index("autoattack_acc") + 1, "external")
  return {k: info[k] for k in order if k in info}


def _robustbench_summary(record: dict[str, Any], info: dict[str, Any], path: str
                         ) -> dict[str, Any]:
  """What the kdrobust record says about the model-info file written next to it."""
  ds = record.get("dataset")
  rb_ds, full_n = ROBUSTBENCH_DATASETS.get(ds, (None, None))
  notes = []
  if rb_ds is None:
    notes.append(f"{ds} is not a RobustBench dataset (cifar10, cifar100, imagenet).")
  if full_n is not None and record["num_examples"] < full_n:
    notes.append(f"RobustBench evaluates {full_n} test points; this evaluation used "
                 f"{record['num_examples']}.")
  return {"path": path,
          "model_info_dir": f"model_info/{rb_ds or ds}/{record['norm']}",
          "to_fill": [k for k in ("link", "authors", "venue") if not info.get(k)],
          "full_test_set": None if full_n is None else record["num_examples"] >= full_n,
          "notes": notes}


# ----------------------------------------------------------------------------
# Optional extras: diagnostics (teacher GD/GC, local linearity), transfer.
# ----------------------------------------------------------------------------
def _diagnostics_module():
  """``kdrobust.diagnostics`` if this checkout has it, else None."""
  try:
    from kdrobust import diagnostics  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return diagnostics


def _check_extras(*, teacher, local_linearity, transfer_from, plot) -> None:
  """Fail before any compute when an optional extra cannot run."""
  if (teacher or local_linearity) and _diagnostics_module() is None:
    raise EvaluationError("--teacher and --local_linearity need kdrobust.diagnostics, which "
                          "this checkout does not have.")
  if teacher and not os.path.exists(teacher):
    raise EvaluationError(f"Teacher path {teacher!r} does not exist.")
  if transfer_from and not os.path.exists(os.path.join(transfer_from, "config.json")):
    raise EvaluationError(f"--transfer_from {transfer_from!r} is not a kdrobust run directory.")
  if plot:
    try:
      report.require_matplotlib()
    except ImportError as e:
      raise EvaluationError(str(e)) from None


def load_teacher(path: str):
  """``(logits_fn, source)`` of a teacher: a run directory, a converted teacher or a .pt.

  Goes through :func:`kdrobust.teachers.load`, except for a kdrobust run
  directory, which is loaded with :func:`load_run` (best checkpoint) so that
  a teacher trained on another number of devices restores onto this one.
  """
  if os.path.isdir(path) and os.path.exists(os.path.join(path, "model.json")):
    module, variables, _, step = load_run(path, "best")
    return runner.flax_logits_fn(module, variables), f"run:{os.path.abspath(path)}@{step}"
  from kdrobust import config_lib  # pylint: disable=g-import-not-at-top
  from kdrobust import teachers as teachers_lib  # pylint: disable=g-import-not-at-top
  t = teachers_lib.load("teacher", config_lib.teacher_config(path))
  return runner.flax_logits_fn(t.module, t.variables), t.source


def run_diagnostics(logits_fn, x, y, *, eps_list, teacher: str | None = None,
                    local_linearity: bool = False, seed: int = 0, batch_size: int = 256
                    ) -> dict[str, Any]:
  """IGDM's GD/GC against ``teacher`` and KDIGA's local linearity at every epsilon.

  Uses :mod:`kdrobust.diagnostics`; GD/GC are computed on the clean test
  points (the CE input gradient at the true label), local linearity with
  50 sign-ascent steps of 0.1 eps from a uniform start.
  """
  out: dict[str, Any] = {}
  if teacher:
    t_fn, source = load_teacher(teacher)
    _check_same_classes(logits_fn, t_fn, x, what="--teacher")
    out["teacher_gradients"] = dict(
        teacher=source, **runner.gradient_agreement(logits_fn, t_fn, x, y,
                                                    batch_size=batch_size))
  if local_linearity:
    out["local_linearity"] = {
        "steps": runner.LL_STEPS, "step_size": f"{runner.LL_STEP_FRACTION:g} * eps",
        "loss": "CE", "per_eps": {
            label: runner.local_linearity(logits_fn, x, y, eps=value, seed=seed,
                                          batch_size=batch_size)
            for value, label in eps_list}}
  return out


# ----------------------------------------------------------------------------
# The library entry point.
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plan:
  """What :func:`evaluate_run` will do, settled (and checked) before any compute."""
  workdir: str
  config: Any
  spec: dict
  step: int
  requested: str
  resolved: str
  eps_list: list
  configured_eps: float | None
  attacks: tuple
  norm: str
  name: str
  json_path: str
  png_path: str | None
  aa_batch_size: int = presets_lib.AA_BATCH_SIZE
  robustbench_path: str | None = None
  robustbench_fields: dict | None = None


def plan(workdir: str, *, checkpoint="best", num_examples=None, eps=None,
         attacks=presets_lib.DEFAULT_ATTACKS, aa_version="standard", norm="Linf",
         name=None, overwrite=False, write=True, plot=False, teacher=None,
         local_linearity=False, transfer_from=None, aa_batch_size=None,
         robustbench=False, weights="auto") -> Plan:
  """Check every input and the output paths; raises before any compute.

  ``aa_batch_size``: None takes the run's ``config.eval.aa_batch_size``, else
  :data:`~kdrobust.evaluation.presets.AA_BATCH_SIZE`. ``robustbench``: True,
  or the RobustBench fields to set (:func:`parse_robustbench_fields`).
  """
  attacks = presets_lib.parse_attacks(attacks)
  norm_c = presets_lib.canonical_norm(norm)
  if aa_version not in presets_lib.AA_VERSIONS:
    raise EvaluationError(f"Unknown AutoAttack version {aa_version!r}; valid: "
                          f"{', '.join(presets_lib.AA_VERSIONS)}.")
  if num_examples is not None and num_examples <= 0:
    raise EvaluationError(f"--num_examples must be positive, got {num_examples}.")
  if aa_batch_size is not None and int(aa_batch_size) <= 0:
    raise EvaluationError(f"--aa_batch_size must be positive, got {aa_batch_size}.")
  rb_fields = None
  if robustbench:
    if "aa" not in attacks:
      raise EvaluationError("--robustbench needs AutoAttack: add aa to --attacks.")
    if aa_version != "standard":
      raise EvaluationError("--robustbench needs --aa_version standard (RobustBench's "
                            f"leaderboard runs AutoAttack standard), got {aa_version!r}.")
    rb_fields = parse_robustbench_fields(robustbench if not isinstance(robustbench, bool)
                                         else None)
  _check_extras(teacher=teacher, local_linearity=local_linearity,
                transfer_from=transfer_from, plot=plot)
  config, spec = _run_files(workdir)
  configured = float(config.eval.eps) if "eval" in config and "eps" in config.eval else None
  eps_list = presets_lib.parse_eps(eps if eps is not None else configured)
  step, how = resolve_checkpoint(workdir, checkpoint)
  requested = str(checkpoint).lower()
  name = name or default_name(step, requested, eps_list, norm_c, num_examples=num_examples,
                              attacks=attacks, aa_version=aa_version) + (
                                  "_raw" if weights == "raw" else "")  # --weights raw
  json_path = os.path.join(workdir, "eval", f"{name}.json")
  png_path = os.path.join(workdir, "eval", f"{name}.png") if plot else None
  rb_path = os.path.join(workdir, "eval", f"{name}.robustbench.json") if robustbench else None
  if write:
    for path in (json_path, png_path, rb_path):
      if path:
        report.check_writable(path, overwrite=overwrite)
  if aa_batch_size is None:
    aa_batch_size = config.get("eval", {}).get("aa_batch_size") or presets_lib.AA_BATCH_SIZE
  return Plan(workdir, config, spec, step, requested, how, eps_list, configured, attacks,
              norm_c, name, json_path, png_path, int(aa_batch_size), rb_path, rb_fields)


def _metadata(p: Plan, command: Sequence[str] | None, precision: str = "highest"
              ) -> dict[str, Any]:
  """Provenance fields of the record: run, checkpoint, versions, device, time."""
  meta = {"name": p.name, "workdir": os.path.abspath(p.workdir),
          "checkpoint": {"requested": p.requested, "step": p.step, "resolved": p.resolved},
          "dataset": p.config.data.name, "split": "test", "model": p.spec["model"].get("name"),
          "method": p.config.method.get("name") if "method" in p.config else None,
          "precision": precision, "reportable_precision": precision == "highest",
          "compute_dtype": "float32", "batch_norm": "inference",
          "versions": versions(), "device": device_string(),
          "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  if command is not None:
    meta["command"] = " ".join(command)
  return meta


def evaluate_run(workdir: str, *, checkpoint: str | int = "best",
                 num_examples: int | None = None, eps=None,
                 attacks=presets_lib.DEFAULT_ATTACKS, aa_version: str = "standard",
                 norm: str = "Linf", seed: int = 0, batch_size: int | None = None,
                 name: str | None = None, overwrite: bool = False, write: bool = True,
                 plot: bool = False, teacher: str | None = None,
                 local_linearity: bool = False, transfer_from: str | None = None,
                 data_dir: str | None = None, progress: bool = True,
                 log: Callable[[str], None] | None = print,
                 command: Sequence[str] | None = None, aa_batch_size: int | None = None,
                 robustbench: bool | dict = False, unlearnable: str | None = None,
                 unlearnable_attack: str = "teacher",
                 precision: str = "highest", weights: str = "auto",
                 compare: Sequence[str] | str | None = None,
                 plot_attack: str = "worst") -> dict[str, Any]:
  """Evaluate a run; returns the record written to ``DIR/eval/<name>.json``.

  ``plot`` also writes ``DIR/eval/<name>.png``, accuracy against epsilon from
  eps = 0 (the clean accuracy), titled by the run's method and model;
  ``compare`` (run directories, or one comma-separated string; needs
  ``plot``) overlays those runs, one line each of ``plot_attack`` accuracy
  ('worst', the default: correct under every attack, or one attack). A
  compared run is evaluated with the same settings, or its
  ``eval/<name>.json`` of the same settings is reused when it exists
  (:func:`plan_compare`); the returned record's ``compare`` lists the files used.

  ``unlearnable`` (a file of ``python -m kdrobust.teacher_entropy identify``,
  needs ``teacher``) adds ``diagnostics.teacher_entropy``: the teacher's
  entropy on the robustly unlearnable training set, with PGD crafted on
  ``unlearnable_attack`` ('teacher', 'student' = this run, 'none', or a run
  directory); see :mod:`kdrobust.teacher_entropy`.

  Every input is checked, and an existing output refused, before any compute
  (:func:`plan`). ``eps``: None (the run's ``config.eval.eps``), a float, or
  a string list such as ``'2/255,4/255,8/255'``. ``attacks``: a subset of
  ``clean,fgsm,pgd20,pgd20_best,cw,cw_best,cw30,aa`` (default
  ``clean,fgsm,pgd20,cw,aa``). ``batch_size`` (projected attacks, checks)
  defaults to the run's ``config.data.eval_batch_size``; AutoAttack's own
  ``aa_batch_size`` to the run's ``config.eval.aa_batch_size``, else 250 (the
  reference's). ``robustbench`` (True, or RobustBench fields to set) also
  writes ``DIR/eval/<name>.robustbench.json``, RobustBench's model-info file.
  ``write=False`` only returns the record. ``weights``: ``'auto'`` (the
  averaged weights when the checkpoint has them, :mod:`kdrobust.weight_averaging`),
  ``'averaged'`` or ``'raw'``; the record's ``weights`` says which were used.
  The fields are documented in ``docs/evaluation.md``.
  """
  t_start = time.time()
  if precision not in PRECISIONS:
    raise EvaluationError(f"Unknown --precision {precision!r}; valid: {', '.join(PRECISIONS)} "
                          "(reportable numbers use highest).")
  if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
    raise EvaluationError(f"--batch_size must be a positive integer, got {batch_size}.")
  p = plan(workdir, checkpoint=checkpoint, num_examples=num_examples, eps=eps,
           attacks=attacks, aa_version=aa_version, norm=norm, name=name,
           overwrite=overwrite, write=write, plot=plot, teacher=teacher,
           local_linearity=local_linearity, transfer_from=transfer_from,
           aa_batch_size=aa_batch_size, robustbench=robustbench, weights=weights)
  compare_plans = plan_compare(
      p, compare, plot=plot, plot_attack=plot_attack, checkpoint=checkpoint,
      num_examples=num_examples, eps=[l for _, l in p.eps_list], attacks=p.attacks,
      aa_version=aa_version, norm=norm, weights=weights)  # this run's epsilons, also by default
  if unlearnable:
    from kdrobust import teacher_entropy as te_lib  # pylint: disable=g-import-not-at-top
    te_file = te_lib.check_for_evaluate(p.config.data.name, unlearnable, teacher=teacher,
                                        attack=unlearnable_attack,
                                        data_dir=data_dir or p.config.data.data_dir or None)
  module, variables, config, _, used = load_run_weights(workdir, p.step, weights=weights)
  bs = int(batch_size or config.data.get("eval_batch_size", 256))
  x, y = load_test_data(config, num_examples, data_dir=data_dir, batch_size=bs)
  fn = runner.flax_logits_fn(module, variables, precision=precision)
  source, transfer_meta = None, None
  if transfer_from:
    smod, svars, _, sstep = load_run(transfer_from, "best")
    source = runner.flax_logits_fn(smod, svars)
    _check_same_classes(fn, source, x, what="--transfer_from")
    transfer_meta = {"workdir": os.path.abspath(transfer_from), "step": sstep,
                     "attack": "pgd20 crafted on the source model"}
  say = log or (lambda s: None)
  say(f"Evaluating {workdir} at step {p.step} ({p.resolved}) on {x.shape[0]} test examples "
      f"of {config.data.name}; eps {', '.join(l for _, l in p.eps_list)}; "
      f"attacks {','.join(p.attacks)}.")
  with jax.default_matmul_precision("highest"):
    results = runner.evaluate_arrays(fn, x, y, eps=[l for _, l in p.eps_list],
                                     attacks=p.attacks, norm=p.norm, aa_version=aa_version,
                                     seed=seed, batch_size=bs,
                                     aa_batch_size=p.aa_batch_size, transfer_fn=source,
                                     progress=progress, log=log, precision=precision)
    diagnostics = None
    if teacher or local_linearity:
      say("Diagnostics: " + ", ".join(
          n for n, on in (("teacher GD/GC", teacher), ("local linearity", local_linearity))
          if on) + ".")
      diagnostics = run_diagnostics(fn, x, y, eps_list=p.eps_list, teacher=teacher,
                                    local_linearity=local_linearity, seed=seed,
                                    batch_size=bs)
    if unlearnable:
      t_fn, t_source = load_teacher(teacher)
      student = unlearnable_attack == "student"
      diagnostics = dict(diagnostics or {}, teacher_entropy=te_lib.diagnose(
          t_fn, dict(te_file, path=os.path.abspath(unlearnable)), dataset=config.data.name,
          data_dir=data_dir or config.data.data_dir or None,
          attack="teacher" if student else unlearnable_attack, attack_fn=fn if student else None,
          attack_source=f"student:run:{os.path.abspath(workdir)}@{p.step}" if student else None,
          teacher_source=t_source, seed=seed, batch_size=bs, log=log))
      say(te_lib.summary_line(diagnostics["teacher_entropy"]))
  record = build_record(results, headline=headline_eps(p.eps_list, p.configured_eps),
                        meta=_metadata(p, command, precision))
  record["weights"] = used  # 'averaged' (config.weight_averaging) or 'raw'
  if transfer_meta:
    record["transfer_from"] = transfer_meta
  if diagnostics is not None:
    record["diagnostics"] = diagnostics
  record["warnings"] = masking.check_warnings(record)
  model_info = None
  if p.robustbench_path:
    model_info = robustbench_model_info(record, fields=p.robustbench_fields,
                                        architecture=robustbench_architecture(p.spec["model"]))
    record["robustbench"]["model_info"] = _robustbench_summary(
        record, model_info, p.robustbench_path if write else None)
  record["time_s"] = round(time.time() - t_start, 2)
  if model_info is not None:
    record["robustbench_model_info"] = model_info
  if write:
    if model_info is not None:
      report.write_json(p.robustbench_path, model_info, overwrite=overwrite)
    record["path"] = report.write_json(p.json_path, record, overwrite=overwrite)
  if compare_plans:
    others = _compare_records(compare_plans, write=write, say=say, seed=seed,
                              num_examples=num_examples,
                              batch_size=batch_size, aa_version=aa_version, norm=norm,
                              data_dir=data_dir, progress=progress, log=log,
                              aa_batch_size=aa_batch_size, precision=precision,
                              weights=weights)
    record["compare"] = [{"workdir": r["workdir"], "name": r["name"], "path": r.get("path"),
                          "reused": r.get("reused", False)} for r in others]
  if write and p.png_path:
    record["plot"] = report.plot_accuracy_vs_eps(
        record, p.png_path, overwrite=overwrite, column=plot_attack,
        compare=others if compare_plans else ())
  return record


def plan_compare(p: Plan, compare, *, plot: bool, plot_attack: str = "worst",
                 checkpoint="best", **settings) -> list[Plan]:
  """Check the ``--compare`` runs before any compute; their plans (same settings as ``p``).

  Each must be a kdrobust run directory on the same dataset as ``p``; each is
  planned with ``p``'s epsilons, attacks, norm and test points, at its own
  best checkpoint (its latest with ``checkpoint='latest'``), under its own
  default name, so an evaluation of the same settings found there is reused.
  """
  if plot_attack not in report.PLOT_METRICS:
    raise EvaluationError(f"Unknown --plot_attack {plot_attack!r}; valid: "
                          f"{', '.join(report.PLOT_METRICS)}.")
  if plot_attack != "worst" and plot_attack not in p.attacks:
    raise EvaluationError(f"--plot_attack {plot_attack} is not among --attacks "
                          f"{','.join(p.attacks)}.")
  if compare is None or compare == "" or compare == ():
    return []
  dirs = [d.strip() for d in compare.split(",")] if isinstance(compare, str) else list(compare)
  if not plot:
    raise EvaluationError("--compare overlays runs on the --plot figure: add --plot.")
  plans = []
  for d in dirs:
    if not d or not os.path.exists(os.path.join(d, "config.json")):
      raise EvaluationError(f"--compare {d!r} is not a kdrobust run directory (no "
                            "config.json); give run directories separated by commas.")
    if os.path.realpath(d) == os.path.realpath(p.workdir):
      raise EvaluationError(f"--compare {d!r} is the --workdir run itself.")
    q = plan(d, checkpoint="latest" if str(checkpoint).lower() == "latest" else "best",
             write=False, plot=False, **settings)
    if q.config.data.name != p.config.data.name:
      raise EvaluationError(f"--compare {d!r} is a run on {q.config.data.name}, --workdir on "
                            f"{p.config.data.name}.")
    plans.append(q)
  return plans


def _compare_records(plans: Sequence[Plan], *, write: bool, say, **settings
                     ) -> list[dict[str, Any]]:
  """The compared runs' records: reused from ``eval/<name>.json``, else evaluated."""
  out = []
  for q in plans:
    if os.path.exists(q.json_path):
      say(f"--compare {q.workdir}: reusing {q.json_path}.")
      out.append(dict(_read_json(q.json_path), path=q.json_path, reused=True))
    else:
      say(f"--compare {q.workdir}: evaluating with the same settings.")
      out.append(evaluate_run(q.workdir, checkpoint=q.requested, eps=[l for _, l in q.eps_list],
                              attacks=q.attacks, name=q.name, write=write, **settings))
  return out


def _check_same_classes(fn, other, x, *, what: str) -> None:
  """A teacher or transfer source must run on these inputs and predict the same classes."""
  shape = jax.ShapeDtypeStruct((1,) + x.shape[1:], jnp.float32)
  a = jax.eval_shape(fn, shape)
  try:
    b = jax.eval_shape(other, shape)
  except Exception as e:  # pylint: disable=broad-except
    raise EvaluationError(f"{what} cannot run on inputs of shape {x.shape[1:]}: "
                          f"{type(e).__name__}: {e}") from e
  if a.shape != b.shape:
    raise EvaluationError(f"{what} predicts {b.shape[-1]} classes, this run {a.shape[-1]}.")


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
  """The CLI flags (documented in docs/evaluation.md)."""
  p = cli.ArgumentParser(
      prog="python -m kdrobust.evaluate",
      description="Evaluate a kdrobust run: clean, FGSM, PGD-20, CW-inf and AutoAttack; "
      "writes DIR/eval/<name>.json and flags gradient masking.")
  p.add_argument("--workdir", required=True, help="The run directory.")
  p.add_argument("--checkpoint", default="best", help="best (default), latest or a step.")
  p.add_argument("--weights", default="auto", choices=("auto", "averaged", "raw"),
                 help="auto (default): the averaged weights (config.weight_averaging) when "
                 "the checkpoint has them, else the student's; averaged; raw.")
  p.add_argument("--num_examples", type=int, default=None,
                 help="Evaluate the first N test points (default: the whole test split).")
  p.add_argument("--eps", default=None,
                 help="Epsilon(s), e.g. 8/255 or 2/255,4/255,8/255 (default: config.eval.eps).")
  p.add_argument("--attacks", default=",".join(presets_lib.DEFAULT_ATTACKS),
                 help=f"Subset of {','.join(presets_lib.ALL_ATTACKS)} (default: "
                 f"{','.join(presets_lib.DEFAULT_ATTACKS)}; *_best: any-iterate variants).")
  p.add_argument("--aa_version", default="standard", choices=presets_lib.AA_VERSIONS)
  p.add_argument("--norm", default="Linf", help="Linf (default) or L2.")
  p.add_argument("--seed", type=int, default=0, help="Seed of every attack (default 0).")
  p.add_argument("--batch_size", type=int, default=None,
                 help="Batch size of FGSM/PGD/CW and the checks (default: the run's "
                 "config.data.eval_batch_size).")
  p.add_argument("--aa_batch_size", type=int, default=None,
                 help="AutoAttack's batch size (default: the run's config.eval.aa_batch_size, "
                 f"else {presets_lib.AA_BATCH_SIZE}, the reference's; RobustBench's "
                 f"benchmark() uses {presets_lib.ROBUSTBENCH_AA_BATCH_SIZE}).")
  p.add_argument("--robustbench", action="store_true",
                 help="Also write DIR/eval/<name>.robustbench.json, RobustBench's model-info "
                 "file (needs aa, version standard).")
  p.add_argument("--robustbench_field", action="append", default=[], metavar="KEY=VALUE",
                 help="Set a RobustBench field (repeatable): "
                 + ", ".join(ROBUSTBENCH_SETTABLE) + ".")
  p.add_argument("--name", default=None, help="Output name: DIR/eval/<name>.json.")
  p.add_argument("--overwrite", action="store_true", help="Replace an existing <name>.json.")
  p.add_argument("--plot", action="store_true",
                 help="Also write DIR/eval/<name>.png: accuracy against epsilon from eps = 0, "
                 "titled by method and model (needs matplotlib: pip install 'kdrobust[plot]').")
  p.add_argument("--compare", default=None, metavar="DIR,DIR,...",
                 help="With --plot: overlay these runs (e.g. the teacher and other students), "
                 "one line each, evaluated with the same settings (or their eval/<name>.json "
                 "of the same settings reused).")
  p.add_argument("--plot_attack", default="worst", choices=report.PLOT_METRICS,
                 help="The accuracy drawn per run with --compare: worst (default: correct "
                 "under every attack) or one attack.")
  p.add_argument("--teacher", default=None,
                 help="Teacher run/converted dir or .pt: adds GD/GC input-gradient figures.")
  p.add_argument("--unlearnable", default=None, metavar="FILE",
                 help="With --teacher: the teacher's entropy on the robustly unlearnable set "
                 "in FILE (python -m kdrobust.teacher_entropy identify).")
  p.add_argument("--unlearnable_attack", default="teacher",
                 help="Model the PGD of --unlearnable is crafted on: teacher (default), "
                 "student (this run), none, or a run directory.")
  p.add_argument("--local_linearity", action="store_true",
                 help="Add KDIGA's local-linearity measure.")
  p.add_argument("--transfer_from", default=None,
                 help="Another run: PGD-20 examples crafted on it, evaluated on this one.")
  p.add_argument("--data_dir", default=None, help="Override the run's config.data.data_dir.")
  p.add_argument("--no_progress", action="store_true", help="No progress bar.")
  p.add_argument("--precision", default="highest", choices=PRECISIONS,
                 help="Matmul precision of every attack and forward, recorded in the JSON "
                 "(default highest, the only reportable one; tensorfloat32/bfloat16 are faster "
                 "on GPUs/TPUs).")
  p.add_argument("--compilation_cache_dir", default=compilation_cache.DEFAULT_DIR,
                 help="JAX's persistent compilation cache (default "
                 f"{compilation_cache.DEFAULT_DIR}; 'none' turns it off).")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Run the CLI; returns the exit status (0 ok, 2 bad input or existing output: one line
  ``error: ...`` on stderr, the traceback with ``--debug``; :mod:`kdrobust.cli`)."""
  return cli.run(_main, argv)


def _main(argv: Sequence[str]) -> int:
  args = make_parser().parse_args(argv)
  compilation_cache.enable(args.compilation_cache_dir)
  if args.robustbench_field and not args.robustbench:
    raise EvaluationError("--robustbench_field needs --robustbench.")
  record = evaluate_run(
      args.workdir, checkpoint=args.checkpoint, num_examples=args.num_examples,
      eps=args.eps, attacks=args.attacks, aa_version=args.aa_version, norm=args.norm,
      seed=args.seed, batch_size=args.batch_size, name=args.name, overwrite=args.overwrite,
      plot=args.plot, teacher=args.teacher, local_linearity=args.local_linearity,
      transfer_from=args.transfer_from, data_dir=args.data_dir,
      aa_batch_size=args.aa_batch_size, unlearnable=args.unlearnable,
      unlearnable_attack=args.unlearnable_attack,
      robustbench=(parse_robustbench_fields(args.robustbench_field) or True)
      if args.robustbench else False,
      precision=args.precision, weights=args.weights,
      compare=args.compare, plot_attack=args.plot_attack,
      progress=not args.no_progress, log=lambda s: print(s, file=sys.stderr, flush=True),
      command=["python -m kdrobust.evaluate"] + list(argv))
  print(report.format_table(record), flush=True)
  for c in record.get("compare", []):
    if not c["reused"] and c["path"]:
      print(f"Wrote {c['path']}", flush=True)
  extra = [record[k] for k in ("plot",) if k in record]
  if "model_info" in record.get("robustbench", {}):
    extra.append(record["robustbench"]["model_info"]["path"])
  print(f"Wrote {record['path']}" + "".join(f" and {e}" for e in extra), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

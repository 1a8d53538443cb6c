"""Config helpers: the base schema, typed ``get_config`` arguments, method blocks.

Configs are plain data (``ml_collections.ConfigDict``): strings, numbers,
tuples and nested dicts, never Python objects, so every field can be changed
with ``--config.key=value`` and the whole config serialises to JSON. Names are
resolved through registries (models, methods, datasets, attacks).
"""

from __future__ import annotations

import ast
from typing import Any

import ml_collections as mlc

from kdrobust import methods as methods_lib

# Keys that may differ when the same workdir is resumed (cadence, length).
RESUMABLE_KEYS = ("total_steps", "log_every_steps", "ckpt", "eval.every_epochs",
                  "teacher_eval_examples", "diagnostics")


def parse_arg(arg: str | None, **defaults: Any) -> mlc.ConfigDict:
  """Parse ``"key=value,flag"`` config arguments with types from ``defaults``.

  ``configs/x.py:arch=wrn34_10,smoke`` gives ``arch='wrn34_10'`` and
  ``smoke=True``. Unknown keys raise an error listing the valid ones.
  """
  out = dict(defaults)
  for part in filter(None, (arg or "").split(",")):
    key, _, value = part.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r}; valid: {sorted(defaults)}.")
    if not _:
      out[key] = True
      continue
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes", "y")
    elif isinstance(default, (int, float)):
      out[key] = type(default)(ast.literal_eval(value))
    else:
      out[key] = value
  return mlc.ConfigDict(out)


def method_config(name: str, *, igdm_alpha: float = 0.0, igdm_beta: float = 1.0,
                  igdm_gamma: float = 1.0, **overrides: Any) -> mlc.ConfigDict:
  """``config.method`` for ``name``: the method's paper defaults, then overrides.

  ``igdm`` holds the IGDM plug-in (active when ``alpha > 0``): its weight and
  the scales ``beta``, ``gamma`` of its two points ``x + beta d``, ``x - gamma d``.
  """
  hp = methods_lib.default_hparams(name)
  attack_overrides = overrides.pop("attack", {})
  unknown = sorted(set(overrides) - set(hp))
  if unknown:
    raise ValueError(f"Method {name!r} has no hyperparameter(s) {unknown}; valid: {sorted(hp)}.")
  hp.update(overrides)
  if "attack" in hp:
    hp["attack"] = dict(hp["attack"], **attack_overrides)
  block = {"name": name, **hp,
           "igdm": {"alpha": igdm_alpha, "beta": igdm_beta, "gamma": igdm_gamma}}
  return mlc.ConfigDict(block)


def teacher_config(path: str = "", *, model: str = "", num_classes: int = 0,
                   dtype: str = "float32", which: str = "best", class_names: str = "",
                   **model_kw: Any) -> mlc.ConfigDict:
  """One entry of ``config.teachers``.

  ``path`` is a kdrobust run directory (its best or latest checkpoint), a
  converted-teacher directory (``python -m kdrobust.teachers.convert``) or a
  PyTorch ``.pt``/``.pth`` state_dict (then ``model`` names the architecture
  and ``model_kw`` its keyword arguments). ``which`` picks a run's checkpoint:
  ``'best'`` (by robust accuracy), ``'latest'`` or a step number as a string.
  ``dtype='bfloat16'`` runs the frozen teacher in bf16 (a free speed-up).
  ``class_names`` (a text file, one name per line, in the teacher's label
  order) lets the run refuse a ``.pt`` teacher whose class order differs from
  the dataset's (runs and converted teachers record their own).
  """
  return mlc.ConfigDict({"path": path, "model": model, "num_classes": num_classes,
                         "dtype": dtype, "which": which, "class_names": class_names,
                         "kwargs": dict(model_kw)})


def base_config() -> mlc.ConfigDict:
  """Every field a run reads, with defaults (experiment configs override them)."""
  c = mlc.ConfigDict()
  c.seed = 0
  c.num_epochs = 1
  c.total_steps = 0  # > 0 cuts the run to this many steps (schedules keep num_epochs)
  c.log_every_steps = 50
  c.num_devices = 0  # 0 = every device
  c.data = mlc.ConfigDict({
      "name": "digits", "data_dir": "", "batch_size": 128,
      "eval_batch_size": 256, "augment": True})
  c.model = mlc.ConfigDict({
      "name": "small_cnn",
      "normalize": True,  # per-dataset mean/std inside the model
      "dtype": "float32",  # compute dtype; 'bfloat16' keeps params and inputs fp32
      # 'flax': Flax's default initialisers; 'torch': PyTorch's default
      # (kaiming_uniform_(a=sqrt(5)) weights, uniform biases), as the official codes' students.
      "init": "flax",
      "kwargs": {}})
  c.method = method_config("natural")
  # name -> teacher_config(...). ml_collections orders keys by name, so multi-teacher
  # methods (MTARD: adversarial then natural; DARHT) see them in sorted name order.
  c.teachers = mlc.ConfigDict()
  c.teacher_eval_examples = 512  # clean + PGD-20 check of each teacher; 0 = off
  # Learning rate by 0-indexed epoch (kdrobust.train.make_schedule), then an
  # optional linear warm-up from 0 over warmup_epochs:
  # 'piecewise': lr x decay_factor^(number of decay_epochs <= epoch);
  # 'table': lr x lr_factors[i] for lr_epochs[i] <= epoch < lr_epochs[i + 1]
  #   (lr_epochs increasing from 0; any schedule a script produces, e.g.
  #   DARHT's lr 0 for its first epochs and its lagging decays);
  # 'cosine': cosine decay to 0 over num_epochs; 'constant': lr.
  c.optim = mlc.ConfigDict({
      "lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
      "schedule": "piecewise",  # 'piecewise' | 'table' | 'cosine' | 'constant'
      "decay_epochs": (), "decay_factor": 0.1, "warmup_epochs": 0.0,
      "lr_epochs": (), "lr_factors": ()})
  # The in-training monitor: PGD-20 as the `pgd20` preset of kdrobust.evaluate,
  # the papers' protocol (the last iterate, select='last'; 'any' counts success at
  # any iterate, kdrobust.attacks.projected.pgd). aa_batch_size: AutoAttack's batch
  # size for `python -m kdrobust.evaluate` (the reference's 250; RobustBench's
  # benchmark() uses 32); training never runs AutoAttack.
  c.eval = mlc.ConfigDict({
      "every_epochs": 1, "num_examples": 0, "eps": 8 / 255, "aa_batch_size": 250,
      "attacks": {"pgd20": dict(eval_attack_config("pgd", steps=20, step_fraction=0.25),
                                select="last")}})
  # Distillation diagnostics logged while training (kdrobust.diagnostics), on the
  # first num_examples test points at eval.eps: IGDM's GD/GC against every teacher
  # (gradient_agreement) and KDIGA's local linearity. every_epochs = 0: off.
  c.diagnostics = mlc.ConfigDict({
      "every_epochs": 0, "num_examples": 512, "gradient_agreement": True,
      "local_linearity": False, "local_linearity_steps": 50})
  c.ckpt = mlc.ConfigDict({"every_epochs": 1, "keep": 2})
  # Where the recipe comes from (printed on the recipe card, kdrobust.recipe):
  # protocol name, sources of the settings ("[C:ARD@779ade3:main.py]" tags as in
  # methods.md) and free-text notes (paper-vs-code differences, choices).
  c.provenance = mlc.ConfigDict({"protocol": "", "sources": "", "notes": ""})
  return c


def eval_attack_config(name: str, *, steps: int = 1, step_fraction: float = 1.0,
                       loss: str = "ce", init: str = "uniform", restarts: int = 1,
                       norm: str = "linf") -> dict[str, Any]:
  """An evaluation attack preset (step size = ``step_fraction * eps``)."""
  return {"name": name, "steps": steps, "step_fraction": step_fraction,
          "loss": loss, "init": init, "restarts": restarts, "norm": norm}


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def config_differences(old: dict, new: dict, ignore=RESUMABLE_KEYS) -> list[str]:
  """Keys whose values differ between a saved config and a new one.

  Resumable keys (cadence, length) are ignored, and so are keys the saved
  config does not have: fields added by a newer kdrobust (see
  :func:`new_keys`) must not make an older run unresumable.
  """
  fa, fb = flatten(old), flatten(new)
  skip = lambda k: any(k == i or k.startswith(i + ".") for i in ignore)
  return sorted(k for k in fa if not skip(k) and fa.get(k) != fb.get(k))


def new_keys(old: dict, new: dict) -> list[str]:
  """Keys of ``new`` that the saved config ``old`` does not have."""
  return sorted(set(flatten(new)) - set(flatten(old)))

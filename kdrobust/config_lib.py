"""Config helpers: the base schema, typed ``get_config`` arguments, method blocks.

Configs are plain data (``ml_collections.ConfigDict``): strings, numbers,
tuples and nested dicts, never Python objects, so every field can be changed
with ``--config.key=value`` and the whole config serialises to JSON. Names are
resolved through registries (models, methods, datasets, attacks).
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any, Sequence

import ml_collections as mlc

from kdrobust import methods as methods_lib
from kdrobust import weight_averaging as wa_lib

# Keys that may differ when the same workdir is resumed (cadence, length).
RESUMABLE_KEYS = ("total_steps", "log_every_steps", "ckpt", "eval.every_epochs",
                  "teacher_eval_examples", "diagnostics", "compilation_cache_dir",
                  "teacher_entropy", "guard_max_abs", "data.workers")


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
      raise ValueError(f"Unknown config argument {key!r}; valid: {sorted(defaults)}."
                       + did_you_mean(key, defaults, prefix=" Did you mean "))
    if not _:
      out[key] = True
      continue
    default = defaults[key]
    if isinstance(default, bool):
      out[key] = value.lower() in ("1", "true", "yes", "y")
    elif isinstance(default, (int, float)):
      try:
        out[key] = type(default)(ast.literal_eval(value.strip()))
      except (ValueError, TypeError, SyntaxError, OverflowError):
        raise ValueError(f"Config argument {key}={value!r} is not a{'n' if isinstance(default, int) else ''} "
                         f"{type(default).__name__} (default {default!r}); write e.g. "
                         f"{key}={default!r}.") from None
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
                   dtype: str = "auto", which: str = "best", class_names: str = "",
                   **model_kw: Any) -> mlc.ConfigDict:
  """One entry of ``config.teachers``.

  ``path`` is a kdrobust run directory (its best or latest checkpoint), a
  converted-teacher directory (``python -m kdrobust.teachers.convert``) or a
  PyTorch ``.pt``/``.pth`` state_dict (then ``model`` names the architecture
  and ``model_kw`` its keyword arguments). ``which`` picks a run's checkpoint:
  ``'best'`` (by robust accuracy), ``'latest'`` or a step number as a string.
  ``dtype``: the frozen teacher's compute dtype, ``'auto'`` (bfloat16 on
  GPU/TPU, float32 on CPU: ``kdrobust.teachers.resolve_dtype``),
  ``'float32'`` or ``'bfloat16'``; logits are float32 either way.
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
  # NaN guard: stop when a parameter or BN statistic exceeds this in magnitude (a diverged
  # update whose loss is still finite); docs/reliability.md.
  c.guard_max_abs = 1e6
  c.num_devices = 0  # 0 = every device
  c.data = mlc.ConfigDict({
      "name": "digits", "data_dir": "", "batch_size": 128,
      "eval_batch_size": 256, "augment": True,
      # Decoding processes for streamed (ImageNet-size) data: 0 = a thread pool in this
      # process; N = N grain worker processes. The batches are identical either way.
      "workers": 0})
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
  # Teacher entropy on the robustly unlearnable set (kdrobust.teacher_entropy), once at
  # the start of a run: unlearnable = a file of `python -m kdrobust.teacher_entropy
  # identify` ('' = off); attack = the model its PGD is crafted on ('teacher', 'none' or a
  # reference-student run directory); num_examples = first N indices of each set (0 = all).
  c.teacher_entropy = mlc.ConfigDict({"unlearnable": "", "attack": "teacher",
                                      "num_examples": 0})
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
  # precision: the monitor's matmul precision, 'auto' = the compute dtype's
  # (kdrobust.train_step.monitor_precision: bfloat16 for a bf16 model, else
  # tensorfloat32), or 'highest' / 'tensorfloat32' / 'bfloat16'; num_examples
  # (0 = the whole test split) sets its size. Reportable numbers: kdrobust.evaluate.
  c.eval = mlc.ConfigDict({
      "every_epochs": 1, "num_examples": 0, "eps": 8 / 255, "aa_batch_size": 250,
      "precision": "auto",
      "attacks": {"pgd20": dict(eval_attack_config("pgd", steps=20, step_fraction=0.25),
                                select="last")}})
  # Distillation diagnostics logged while training (kdrobust.diagnostics), on the
  # first num_examples test points at eval.eps: IGDM's GD/GC against every teacher
  # (gradient_agreement) and KDIGA's local linearity. every_epochs = 0: off.
  c.diagnostics = mlc.ConfigDict({
      "every_epochs": 0, "num_examples": 512, "gradient_agreement": True,
      "local_linearity": False, "local_linearity_steps": 50})
  c.ckpt = mlc.ConfigDict({"every_epochs": 1, "keep": 2})
  # Weight averaging of the student (kdrobust.weight_averaging): kind 'none' | 'swa' |
  # 'ema'; start_epoch 1-indexed (or a fraction of num_epochs in (0, 1)); SWA every
  # every_epochs epoch ends, 'equal' weighting; EMA decay every every_steps steps;
  # bn_recalibration 'none' | 'pytorch' (SAAD) | 'sample_weighted' (PeerAiD). When on,
  # the monitor, the best checkpoint and results.json are the average's ('raw' too).
  c.weight_averaging = mlc.ConfigDict(wa_lib.default_config())
  # JAX's persistent compilation cache (kdrobust.evaluation.compilation_cache):
  # compiled steps and AutoAttack kernels reused across runs; '' or 'none': off.
  c.compilation_cache_dir = "~/.cache/kdrobust/jax"
  # Where the recipe comes from (printed on the recipe card, kdrobust.recipe):
  # protocol name, sources of the settings ("[C:ARD@779ade3:main.py]" tags: [C:<repo>@<commit>:<file>]
  # = official code, [P:<paper> <table>] = paper) and free-text notes (paper-vs-code differences, choices).
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
  fa, fb = _resolved(flatten(old)), _resolved(flatten(new))
  skip = lambda k: any(k == i or k.startswith(i + ".") for i in ignore)
  return sorted(k for k in fa if not skip(k) and fa.get(k) != fb.get(k))


def _resolved(flat: dict) -> dict:
  """``teachers.<name>.dtype`` as this backend computes it (``'auto'``: bfloat16 on GPU/TPU,
  float32 on CPU), so a run saved with ``'float32'`` before ``'auto'`` became the default
  still resumes where ``'auto'`` means float32, and is refused where it would change."""
  from kdrobust import teachers as teachers_lib  # pylint: disable=g-import-not-at-top
  out = dict(flat)
  for k, v in flat.items():
    if k.startswith("teachers.") and k.endswith(".dtype") and isinstance(v, str):
      try:
        out[k] = teachers_lib.resolve_dtype(v)
      except ValueError:
        pass  # an unknown name stays as written (validation reports it)
  return out


def new_keys(old: dict, new: dict) -> list[str]:
  """Keys of ``new`` that the saved config ``old`` does not have."""
  return sorted(set(flatten(new)) - set(flatten(old)))


def new_keys_off_default(old: dict, new: dict, ignore=RESUMABLE_KEYS) -> list[str]:
  """Keys :func:`new_keys` finds whose new value is not :func:`base_config`'s default.

  The saved run trained without the field, i.e. as its default; a different
  value (e.g. ``weight_averaging.kind='swa'``) would change the run, so resuming
  is refused. Resumable keys, keys with no default in the base config, and
  the method's and teachers' fields (their defaults live in the method
  dataclass and the teacher entry, not in the base config) are not judged.
  """
  defaults = flatten(base_config().to_dict())
  nb = flatten(new)
  skip = lambda k: any(k == i or k.startswith(i + ".")
                       for i in tuple(ignore) + ("method", "teachers"))
  return [k for k in new_keys(old, new)
          if not skip(k) and k in defaults and nb[k] != defaults[k]]


# ----------------------------------------------------------------------------
# Loading a config file with one-line errors (kdrobust.main's --config).
# ----------------------------------------------------------------------------
def did_you_mean(name: str, valid, *, prefix: str = "did you mean ") -> str:
  """``"<prefix>'close'?"`` for the closest of ``valid`` (difflib), or ``""``."""
  close = difflib.get_close_matches(name, [str(v) for v in valid], n=1, cutoff=0.6)
  return f"{prefix}{close[0]!r}?" if close else ""


def load_config_file(spec: str) -> mlc.ConfigDict:
  """``get_config(arg)`` of ``'path.py[:arg]'`` (what ``--config`` loads), one-line errors.

  A missing file, a file without ``get_config`` or a ``get_config`` that
  rejects ``arg`` (unknown key, malformed value) raises ``ValueError`` naming
  the file and the fix.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    what = "is a directory, not a config file" if os.path.isdir(path) else "does not exist"
    here = os.path.dirname(path) or "."
    avail = sorted(f for f in os.listdir(here) if f.endswith(".py")) if os.path.isdir(here) else []
    raise ValueError(f"--config {path!r} {what}. Pass a config file, e.g. --config "
                     "configs/quickstart.py"
                     + (f" ({len(avail)} .py files in {here}: {', '.join(avail[:8])}"
                        f"{', ...' if len(avail) > 8 else ''})" if avail else "") + ".")
  try:
    module_spec = importlib.util.spec_from_file_location("kdrobust_user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
  except SyntaxError as e:
    raise ValueError(f"--config {path!r} is not valid Python (line {e.lineno}: {e.msg}). "
                     "Fix the file.") from e
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"--config {path!r} defines no get_config(). A config file defines "
                     "get_config(arg=None) returning an ml_collections.ConfigDict.")
  try:
    config = module.get_config(arg) if _ else module.get_config()
  except (ValueError, TypeError, KeyError) as e:
    msg = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
    raise ValueError(f"--config {spec!r}: {msg}") from e
  if not isinstance(config, mlc.ConfigDict):
    raise ValueError(f"--config {path!r}: get_config() returned {type(config).__name__}, "
                     "not an ml_collections.ConfigDict.")
  return config


def check_override_key(config: mlc.ConfigDict, key: str) -> None:
  """Refuse ``--config.<key>=...`` when ``key`` (dotted) is not a field of ``config``.

  The message suggests the closest existing key (difflib), e.g. ``unknown key
  'optim.lrr'; did you mean 'optim.lr'?``.
  """
  node: Any = config
  parts = key.split(".")
  for i, part in enumerate(parts):
    is_mapping = isinstance(node, (mlc.ConfigDict, dict))
    if is_mapping and part in node:
      node = node[part]
      continue
    if not is_mapping and i > 0:
      parent = ".".join(parts[:i])
      raise ValueError(f"--config.{key}: config.{parent} is a value "
                       f"({type(node).__name__}), not a group of keys.")
    full = sorted(flatten(config.to_dict()))
    groups = {k.rsplit(".", j)[0] for k in full for j in range(1, k.count(".") + 1)}
    hint = did_you_mean(key, full + sorted(groups), prefix="; did you mean ")
    siblings = sorted(node) if is_mapping else []
    raise ValueError(
        f"Unknown config key {key!r} (--config.{key}){hint or '.'} "
        + (f"Keys of config{'.' + '.'.join(parts[:i]) if i else ''}: "
           f"{', '.join(map(str, siblings[:25]))}{', ...' if len(siblings) > 25 else ''}."
           if siblings else "The config has no keys there."))


def check_config_argv(argv: Sequence[str], flag: str = "config") -> mlc.ConfigDict | None:
  """Check ``--config`` and every ``--config.<key>`` in ``argv`` before absl parses them.

  Loads the file (:func:`load_config_file`) and checks each override key
  (:func:`check_override_key`); returns the loaded config, or None when
  ``--config`` is absent (absl then reports the missing flag).
  """
  spec, keys = None, []
  args = list(argv)
  for i, a in enumerate(args):
    if a == "--":
      break
    if a == f"--{flag}" or a.startswith(f"--{flag}="):
      spec = a.split("=", 1)[1] if "=" in a else (args[i + 1] if i + 1 < len(args) else None)
    elif a.startswith(f"--{flag}."):
      keys.append(a[len(flag) + 3:].split("=", 1)[0])
  if spec is None:
    return None
  config = load_config_file(spec)
  for key in keys:
    check_override_key(config, key)
  return config

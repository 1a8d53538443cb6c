"""Recipe cards: what a config trains, on one page, without running anything.

    python -m kdrobust.recipe configs/cifar_ard.py:protocol=official
    python -m kdrobust.recipe configs/cifar_ard.py:protocol=official --config.optim.lr=0.05
    python -m kdrobust.recipe --config=configs/quickstart.py

The config is given exactly as ``--config`` of :mod:`kdrobust.main` takes it
(``path[:args]``, positional or as ``--config=``) and loaded by the same
``ml_collections.config_flags`` machinery, so ``--config.key=value`` overrides
work and misspelt keys are errors. :func:`recipe_card` is a pure function of
the config; ``train_and_evaluate`` writes the same card to ``DIR/recipe.md``
at the start of every run (:func:`write_card`).

The card (Markdown) lists, with sources where the config or the code has them:

* provenance: ``config.provenance`` (protocol, source tags, notes);
* optimisation: the **effective** learning rate at the first step of every
  epoch, computed by :func:`kdrobust.train.make_schedule` (the function the
  run uses) and compressed into ranges, the weight decay (coupled L2, as
  ``torch.optim.SGD``), momentum, batch size, epochs, steps;
* the inner attack (eps, step, steps, start, objective, batch-norm mode);
* the outer loss: every field of the method dataclass built by
  :func:`kdrobust.methods.from_config` (IGDM wrapper fields too) and the
  formulas of the method's docstring (spans ``L = ...``, ``x' = ...``, ...),
  with the docstring's batch-norm order and its code references;
* batch norm, initialisation, model, dtype, data, teachers (never loaded) and
  what is evaluated when (evaluation, diagnostics, checkpoints, best).

Nothing is trained and no teacher, model or data is loaded; the number of
training examples comes from the prepared dataset's ``dataset_info.json`` when
it exists, else from the dataset's standard size (the card says which).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import os
import re
import sys
from typing import Any, Iterable, Sequence

CARD_NAME = "recipe.md"

# Training-set sizes of the standard splits, used when a dataset is not
# prepared on this machine (a prepared dataset's own count always wins).
STANDARD_NUM_TRAIN = {"cifar10": 50000, "cifar100": 50000, "svhn_cropped": 73257,
                      "tiny_imagenet": 100000, "imagenet2012": 1281167, "digits": 1437}

ATTACK_BN = {
    "eval": "running statistics, nothing updated (PyTorch net.eval())",
    "batch": ("statistics of the attacked batch, running statistics NOT updated "
              "(train-mode forwards without their updates)"),
    "train": ("batch statistics + running-statistic update at every attack forward, in "
              "order (PyTorch net.train())"),
}
ATTACK_INIT = {  # kdrobust.attacks.projected.random_init
    "uniform": "uniform: clip_[0,1](x + U[-eps, eps])",
    "uniform_unclipped": "uniform_unclipped: x + U[-eps, eps], not clipped before the first step",
    "gaussian": "gaussian: x + 0.001 N(0, I), not clipped before the first step",
    "gaussian_clamped": "gaussian_clamped: clip_[0,1](x + 0.001 N(0, I))",
    "none": "none: x itself",
}
REDUCTIONS = {
    "batchmean": "(1/B) sum_i (PyTorch reduction='batchmean')",
    "mean": "(1/B) sum_i (alias of batchmean)",
    "elemmean": "(1/(B C)) sum over batch and classes (nn.KLDivLoss() default 'mean')",
    "sum": "sum over the batch",
}
INITS = {
    "flax": "Flax defaults (lecun_normal kernels, zero biases)",
    "torch": ("PyTorch defaults: kaiming_uniform_(a=sqrt(5)) conv/linear weights, "
              "U(+-1/sqrt(fan_in)) biases, BN weight 1 / bias 0"),
    "wrn": ("the official WideResNets' re-initialisation: conv N(0, 2/(kh kw out)), "
            "linear bias 0, BN weight 1 / bias 0 [C:TRADES@6e8e11b:models/wideresnet.py:74]"),
}
AUGMENT = {
    "pad_crop_flip": "zero-pad 4, random crop back, random horizontal flip",
    "inception_crop_flip": "Inception-style random resized crop + horizontal flip",
    "none": "none",
}
# Names a docstring formula may define (``L = ...``, ``x' = ...``, ``w_i = ...``).
_FORMULA = re.compile(r"^(L(_\w+)?|x'|x~|w_\w+|G|d|e)\s*=(?!=)")
_CODE_REF = re.compile(r"``([\w.-]+/[\w.-]+@[0-9a-f]{7,40}[^`]*)``|(\[[CP]:[^\]]+\])")
_MAX_RUNS = 12
# config.optim fields the card prints by name; any other field is listed too.
_OPTIM_KNOWN = ("lr", "momentum", "nesterov", "weight_decay", "schedule", "decay_epochs",
                "decay_factor", "warmup_epochs", "lr_epochs", "lr_factors")


# ----------------------------------------------------------------------------
# Formatting helpers.
# ----------------------------------------------------------------------------
def _num(v: Any) -> str:
  """A hyperparameter value, deterministic and short (floats: 6 significant digits)."""
  if isinstance(v, bool) or v is None:
    return str(v)
  if isinstance(v, float):
    return f"{v:.6g}"
  if isinstance(v, (tuple, list)):
    return "(" + ", ".join(_num(x) for x in v) + ("," if len(v) == 1 else "") + ")"
  if isinstance(v, dict):
    return "{" + ", ".join(f"{k}: {_num(x)}" for k, x in sorted(v.items())) + "}"
  return str(v)


def _pixels(v: float) -> str:
  """A pixel-space size: ``8/255 (0.0313725)`` when it is k/255 with one decimal, else ``v``."""
  v = float(v)
  r = v * 255
  if v and round(v, 4) != v and abs(r - round(r, 1)) < 1e-6:
    return f"{round(r, 1):g}/255 ({v:.6g})"
  return f"{v:.6g}"


def _cell(s: Any) -> str:
  return str(s).replace("|", "\\|").replace("\n", " ")


def _table(rows: Iterable[tuple[str, Any]], head=("setting", "value")) -> list[str]:
  out = [f"| {head[0]} | {head[1]} |", "|---|---|"]
  out += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
  return out


def _collapse(s: str) -> str:
  return " ".join(s.split())


def _plural(n: float, word: str) -> str:
  return f"{_num(n)} {word}" + ("" if n == 1 else "s")


# ----------------------------------------------------------------------------
# Docstrings: formulas, batch-norm order, code references.
# ----------------------------------------------------------------------------
def formulas(doc: str | None) -> list[str]:
  """The formulas of a docstring, in order, one line each.

  Double-backtick spans that define ``L``, ``L_*``, ``x'``, ``x~``, ``w_*``,
  ``G``, ``d`` or ``e`` (``L = alpha tau^2 ...``), and lines of literal blocks
  (indented 4+ spaces) that define ``L`` or ``L_*``, with their continuation
  lines (indented deeper).
  """
  doc = inspect.cleandoc(doc or "")
  found = []
  for m in re.finditer(r"``(.+?)``", doc, re.S):
    f = _collapse(m.group(1))
    if _FORMULA.match(f):
      found.append((m.start(), f))
  # Literal-block lines, with the backtick spans blanked out (positions kept).
  rest = re.sub(r"``(.+?)``", lambda m: re.sub(r"[^\n]", " ", m.group(0)), doc, flags=re.S)
  for m in re.finditer(r"^( {4,})(L(_\w+)?\s*=(?!=).*(?:\n\1 +\S.*)*)", rest, re.M):
    found.append((m.start(), _collapse(m.group(2))))  # with its deeper-indented continuation
  out = [f.rstrip(",;. ") for _, f in sorted(found)]
  return list(dict.fromkeys(out))


def _paragraphs(doc: str | None) -> list[str]:
  return [_collapse(p) for p in re.split(r"\n\s*\n", inspect.cleandoc(doc or "")) if p.strip()]


def bn_order(doc: str | None) -> str:
  """The docstring's sentence on the batch-norm order of the forwards ('' if none).

  The sentence that starts with "Batch-norm order" (or says "in the code's
  order"), plus the parenthetical sentences right after it.
  """
  for p in _paragraphs(doc):
    sentences = re.split(r"(?<=[.)])\s+(?=[A-Z(])", p.replace("``", ""))
    for i, sent in enumerate(sentences):
      if sent.startswith("Batch-norm order") or "in the code's order" in sent:
        out = [sent]
        out += [x for x in itertools.takewhile(lambda x: x.startswith("("), sentences[i + 1:])]
        return " ".join(out)
  return ""


def code_refs(doc: str | None) -> list[str]:
  """Code references of a docstring: ``owner/repo@commit path`` spans and ``[C:...]`` tags."""
  refs = [_collapse(m.group(1) or m.group(2)) for m in _CODE_REF.finditer(doc or "")]
  return list(dict.fromkeys(refs))


def _module_doc(cls) -> str:
  return getattr(sys.modules.get(cls.__module__), "__doc__", "") or ""


def _documented_class(cls):
  """``cls`` or the first base class with a docstring of its own.

  Skips classes whose ``__doc__`` is the signature ``dataclasses`` writes for
  undocumented classes (e.g. IGDM's generated ``IGDM_<Base>`` classes).
  """
  for c in cls.__mro__:
    doc = c.__dict__.get("__doc__")
    if doc and not doc.startswith(c.__name__ + "("):
      return c
  return cls


def method_doc(cls) -> dict[str, Any]:
  """What the card shows of a method class: formulas, batch-norm order, code references.

  Formulas come from the class docstring, else from its module's docstring,
  else the class docstring's first paragraph is used.
  """
  cls = _documented_class(cls)
  doc = cls.__doc__ or ""
  fs = formulas(doc) or formulas(_module_doc(cls))
  if not fs:
    paras = _paragraphs(doc)
    fs = [paras[0].replace("``", "")] if paras else []
  return {"formulas": fs, "bn_order": bn_order(doc),
          "refs": code_refs(doc) or code_refs(_module_doc(cls))}


# ----------------------------------------------------------------------------
# The schedule.
# ----------------------------------------------------------------------------
def num_train_examples(config) -> tuple[int | None, str]:
  """Training-set size and where it comes from (prepared data, else the standard size)."""
  from kdrobust import data as data_lib  # pylint: disable=g-import-not-at-top
  from kdrobust.data import catalog  # pylint: disable=g-import-not-at-top
  name = config.data.name
  if catalog.is_synthetic(name):
    return catalog.SYNTHETIC_NUM_TRAIN, "synthetic"
  try:
    return data_lib.info(name, config.data.data_dir or None).num_train, "prepared dataset"
  except data_lib.DatasetNotFoundError:
    if name in STANDARD_NUM_TRAIN:
      return STANDARD_NUM_TRAIN[name], "standard size; not prepared here"
    return None, "not prepared here, size unknown"


def epoch_lrs(config, steps_per_epoch: int) -> list[float]:
  """The lr of each epoch's first update, from :func:`kdrobust.train.make_schedule`.

  Optax evaluates the schedule at the update count, so epoch ``e`` starts
  with ``schedule(e * steps_per_epoch)``.
  """
  from kdrobust import train as train_lib  # pylint: disable=g-import-not-at-top
  schedule = train_lib.make_schedule(config.optim, steps_per_epoch, config.num_epochs)
  return [float(schedule(e * steps_per_epoch)) for e in range(config.num_epochs)]


def lr_ranges(lrs: Sequence[float]) -> str:
  """``'epochs 0-99: 0.1; epochs 100-199: 0.01'`` (0-indexed; equal values, 6 digits, merged)."""
  runs: list[list[Any]] = []
  for e, v in enumerate(lrs):
    s = _num(float(v))
    if runs and runs[-1][2] == s:
      runs[-1][1] = e
    else:
      runs.append([e, e, s])
  parts = [(f"epoch {a}" if a == b else f"epochs {a}-{b}") + f": {s}" for a, b, s in runs]
  if len(parts) > _MAX_RUNS:
    parts = parts[:8] + [f"... ({len(parts) - 11} more)"] + parts[-3:]
  return "; ".join(parts)


# ----------------------------------------------------------------------------
# The card.
# ----------------------------------------------------------------------------
def _objective(formula: str) -> str:
  """``"x' = PGD(CE(S(.), y), x; eps = ...)"`` -> ``'maximise CE(S(.), y)'`` (else as is).

  The docstring's step settings are the class defaults; the card's rows show
  the configured ones, so only the objective is kept.
  """
  m = re.match(r"^(x'|x~) = PGD\(\s*(.*?),\s*x\s*;.*\)$", formula)
  return f"maximise {m.group(2)}" if m else formula


def _has_attack(method) -> bool:
  from kdrobust.methods.base import Method  # pylint: disable=g-import-not-at-top
  m = getattr(method, "base", None) or method
  return type(m).perturb is not Method.perturb


def _hparams(method, skip=("attack", "base")) -> list[tuple[str, str]]:
  rows = []
  for f in dataclasses.fields(method):
    if f.name in skip:
      continue
    v = getattr(method, f.name)
    s = _num(v)
    if f.name == "reduction" and v in REDUCTIONS:
      s += f" = {REDUCTIONS[v]}"
    if f.name == "temperature":
      s += " (tau)"
    rows.append((f.name, s))
  return rows


def _class_path(cls) -> str:
  return f"{cls.__module__}.{cls.__qualname__}"


def _loss_section(title: str, method, cls) -> list[str]:
  d = method_doc(cls)
  out = [f"### {title}: `{method.name}` ({_class_path(cls)})", ""]
  rows = _hparams(method)
  out += _table(rows, ("hyperparameter", "value")) if rows else ["(no hyperparameters)"]
  out += ["", "Formula (method docstring; its numbers are the class defaults, the tables "
          "are what runs):", "", "```text", *d["formulas"], "```"]
  if d["bn_order"]:
    out += ["", d["bn_order"]]
  if d["refs"]:
    out += ["", "Code: " + "; ".join(d["refs"])]
  return out + [""]


def recipe_card(config) -> str:
  """The recipe card of ``config`` (Markdown); deterministic, runs nothing.

  Args:
    config: a run config (``ml_collections.ConfigDict``), as
      ``kdrobust.main --config`` builds it.

  Returns:
    The card, ending with a newline.

  Raises:
    ValueError: unknown method, method field or dataset (with the valid ones).
  """
  from kdrobust import methods as methods_lib  # pylint: disable=g-import-not-at-top
  from kdrobust.data import catalog  # pylint: disable=g-import-not-at-top
  method = methods_lib.from_config(config.method)
  base = getattr(method, "base", None)
  core = base or method
  prov = config.get("provenance") or {}
  protocol = prov.get("protocol", "") or "(not set)"
  spec = catalog.spec(config.data.name)
  o, a = config.optim, core.attack

  title = f"# Recipe card: {method.name}, {config.model.name} on {config.data.name}"
  out = [title + f", protocol {protocol}", "",
         "Generated from the run's config by `kdrobust.recipe` (nothing run or loaded). "
         "Epochs are 0-indexed.", ""]

  # -- Provenance. ---------------------------------------------------------------
  out += ["## Provenance", ""]
  sources = prov.get("sources", "")
  if hasattr(sources, "items"):
    sources = "; ".join(f"{k}: {v}" for k, v in sorted(sources.items()))
  out += [f"- protocol: {protocol}", f"- sources: {sources or '(none given)'}",
          f"- notes: {prov.get('notes', '') or '(none)'}", ""]

  # -- Optimisation. --------------------------------------------------------------
  n_train, n_src = num_train_examples(config)
  bs = config.data.batch_size
  spe = n_train // bs if n_train else 0
  total = config.num_epochs * spe
  if spe:
    lr_line = lr_ranges(epoch_lrs(config, spe))
  else:
    lr_line = "(unknown: no steps per epoch)"
  shown = {"piecewise": ("decay_epochs", "decay_factor"), "table": ("lr_epochs", "lr_factors")}
  sched_keys = [k for k in shown.get(o.schedule, ())]
  sched_keys += [k for k in sorted(o) if k not in _OPTIM_KNOWN]  # fields added later
  if o.get("warmup_epochs", 0):
    sched_keys.append("warmup_epochs")
  sched_fields = "".join(f", {k} {_num(o[k])}" for k in sched_keys)
  rows = [
      ("effective lr (first step of each epoch, kdrobust.train.make_schedule)", lr_line),
      ("schedule", f"{o.schedule}, base lr {_num(o.lr)}{sched_fields}"),
      ("optimizer", f"SGD, momentum {_num(o.momentum)}, nesterov {o.nesterov}"),
      ("weight decay", f"{_num(o.weight_decay)}, coupled L2 (wd * theta added to the "
                       "gradient before momentum, as torch.optim.SGD), on every parameter"),
      ("batch size", f"{bs} (global); {spe} steps/epoch = {n_train} train examples "
                     f"({n_src}) // {bs}, remainder dropped"),
      ("epochs", f"{config.num_epochs} ({total} steps)"),
  ]
  if config.total_steps:
    rows.append(("total steps", f"CUT to {config.total_steps} "
                 f"(epoch {config.total_steps / max(spe, 1):.4g} of {config.num_epochs}); "
                 "the schedule keeps num_epochs"))
  rows.append(("seed, devices", f"{config.seed}, "
               + (f"{config.num_devices}" if config.num_devices else "every device")))
  out += ["## Optimisation", "", *_table(rows), ""]

  # -- Inner attack. ------------------------------------------------------------------
  out += ["## Inner attack (training)", ""]
  if _has_attack(method):
    d = method_doc(type(core))
    inner = [_objective(f) for f in d["formulas"] if f.startswith(("x'", "x~"))]
    known = ("eps", "step_size", "steps", "norm", "init", "bn_mode")
    other = ", ".join(f"{f.name} {_num(getattr(a, f.name))}" for f in dataclasses.fields(a)
                      if f.name not in known)
    rows = [("eps", _pixels(a.eps)), ("step", _pixels(a.step_size)), ("steps", a.steps),
            ("norm", a.norm), ("start", ATTACK_INIT.get(a.init, a.init)),
            ("objective", "; ".join(inner) or f"see {_class_path(type(core))}"),
            ("student BN", f"{a.bn_mode}: {ATTACK_BN.get(a.bn_mode, '(undocumented mode)')}")]
    if other:
      rows.append(("other", other))
    out += _table(rows)
  else:
    out += ["none: trained on clean inputs (config.method.attack is unused)"]
  out += [""]

  # -- Outer loss. ------------------------------------------------------------------
  out += ["## Outer loss", ""]
  out += _loss_section("Method", core, type(core))
  if base is not None:
    out += _loss_section("IGDM plug-in, added to the loss above", method, type(method))
  else:
    out += [f"IGDM: off (method.igdm.alpha = {_num(config.method.igdm.get('alpha', 0.0))})",
            ""]

  # -- Batch norm, model, data. ------------------------------------------------------
  init = config.model.get("init", "flax")
  model_kw = dict(config.model.get("kwargs", {}) or {})
  model_kw = f" {_num(model_kw)}" if model_kw else ""
  rows = [
      ("BN, attack forwards",
       f"{a.bn_mode}: {ATTACK_BN.get(a.bn_mode, '?')}" if _has_attack(method) else "(no attack)"),
      ("BN, outer-loss forwards", "train: batch statistics; each forward updates the running "
                                  "statistics once, in the order above"),
      ("BN, teachers", "inference: running statistics, frozen, no gradient to their weights"),
      ("student", f"{config.model.name}{model_kw}, dtype {config.model.get('dtype', 'float32')}"),
      ("initialisation", f"{init}: {INITS.get(init, '(unknown scheme)')}"),
      ("input", "per-dataset mean/std inside the model" if config.model.get("normalize", True)
       else "raw [0, 1] pixels"),
      ("dataset", f"{config.data.name}: {spec.num_classes} classes, {spec.image_shape}"),
      ("augmentation", (f"{spec.train_aug}: {AUGMENT.get(spec.train_aug, '?')}"
                        if config.data.augment else "off (data.augment False)")),
  ]
  out += ["## Batch norm, model, data", "", *_table(rows), ""]

  # -- Teachers. -------------------------------------------------------------------
  out += ["## Teachers", ""]
  if config.teachers:
    out += ["In config.teachers order (sorted by name), as the method indexes them.", "",
            "| name | architecture | classes | dtype | path | checkpoint |",
            "|---|---|---|---|---|---|"]
    for name, t in config.teachers.items():
      arch = t.get("model", "") or f"from {t.path}/model.json"
      kw = dict(t.get("kwargs", {}) or {})
      if kw:
        arch += " " + _num(kw)
      out.append("| " + " | ".join(_cell(x) for x in (
          name, arch, t.get("num_classes", 0) or "(from the teacher)",
          _teacher_dtype(t.get("dtype", "float32")), t.path or "(none)",
          t.get("which", "best"))) + " |")
  else:
    out += ["none"]
  out += [""]

  # -- Evaluation and checkpoints. ---------------------------------------------------
  ev, eps = config.eval, config.eval.eps
  attacks = []
  for name, at in sorted(ev.attacks.items()):
    at = dict(at)
    if at.get("name") == "fgsm":
      desc = f"fgsm {at.get('norm', 'linf')}, init {at.get('init', 'uniform')}"
    else:
      step = at.get("step_size")
      if at.get("step_fraction") is not None:
        step = at["step_fraction"] * eps
        step_s = f"{_num(at['step_fraction'])} eps = {_pixels(step)}"
      else:
        step_s = _pixels(step)
      desc = (f"{at.get('name')} {at.get('norm', 'linf')}, {at.get('steps')} steps of "
              f"{step_s}, loss {at.get('loss', 'ce')}, init {at.get('init', 'uniform')}, "
              f"{_plural(at.get('restarts', 1), 'restart')}, "
              f"{at.get('select', 'last')} iterate")
    attacks.append(f"{name}: {desc}")
  n_ex = f"first {ev.num_examples}" if ev.num_examples else "all"
  when = (f"every {_plural(ev.every_epochs, 'epoch')} and at the last step"
          if ev.every_epochs else "only at the end")
  diag = config.get("diagnostics") or {}
  if diag and diag.get("every_epochs"):
    what = [w for w, on in (("gradient agreement GD/GC vs each teacher",
                             diag.get("gradient_agreement") and config.teachers),
                            (f"local linearity ({diag.get('local_linearity_steps')} steps)",
                             diag.get("local_linearity"))) if on]
    diag_s = (f"every {_plural(diag.every_epochs, 'epoch')} on the first "
              f"{diag.num_examples} test examples at eps {_pixels(eps)}: " + ", ".join(what))
  else:
    diag_s = "off"
  te = config.get("teacher_eval_examples", 0)
  from kdrobust import weight_averaging as wa_lib  # pylint: disable=g-import-not-at-top
  rows = [
      ("evaluation", f"{when}, on {n_ex} test examples, eps {_pixels(eps)}"),
      ("eval attacks", "; ".join(attacks) or "none (clean only)"),
      ("teacher check", (f"step 0: clean + eval attacks on {te} test examples per teacher"
                         if te and config.teachers else "off")),
      ("diagnostics", diag_s),
      ("weight averaging", wa_lib.describe(config.get("weight_averaging"), config.num_epochs)),
      ("checkpoints", f"every {_plural(config.ckpt.every_epochs, 'epoch')} and at the last "
                      f"step; keep the latest {config.ckpt.keep} + the best"),
      ("best checkpoint", "highest robust accuracy (minimum over the eval attacks, at the "
                          "latest evaluation); results.json reports the last step"),
      ("train log", f"every {config.log_every_steps} steps"),
  ]
  out += ["## Evaluation and checkpoints", "", *_table(rows)]
  return "\n".join(out) + "\n"


def write_card(workdir: str, config) -> str:
  """Write ``workdir/recipe.md`` from ``config``; returns its path.

  The card is the run's own file and is regenerated at every start; when an
  existing card differs (e.g. a resumed run with a changed resumable key such
  as ``total_steps``), a line says it was regenerated.
  """
  path = os.path.join(workdir, CARD_NAME)
  card = recipe_card(config)
  old = None
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
  if old != card:
    from kdrobust import fileio  # pylint: disable=g-import-not-at-top
    fileio.write_text(path, card)  # atomic
    if old is not None:
      print(f"Regenerated {path}: the config differs from the one it was written for.",
            flush=True)
  return path


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------
class UsageError(ValueError):
  """Bad command line."""


def _config_files(directory: str) -> list[str]:
  try:
    names = sorted(os.listdir(directory))
  except OSError:
    return []
  out = []
  for n in names:
    p = os.path.join(directory, n)
    if n.endswith(".py") and os.path.isfile(p):
      with open(p) as f:
        if "def get_config" in f.read():
          out.append(p)
  return out


def load_config(argv: Sequence[str]):
  """The config of ``[path[:args]] [--config=path[:args]] [--config.key=value ...]``.

  Loaded by ``ml_collections.config_flags`` as :mod:`kdrobust.main` loads
  ``--config`` (locked: a misspelt override key is an error), on a private
  flag registry so that it never clashes with another module's flags.

  Raises:
    UsageError: no config, several, a missing file or a bad override.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  args, spec = [], []
  for x in argv:
    if x.startswith("-"):
      args.append(x)
    elif args and args[-1].startswith("--config") and "=" not in args[-1]:
      args.append(x)  # the value of '--config X' or '--config.key X'
    else:
      spec.append(x)
  if any(x == "--config" or x.startswith("--config=") for x in args):
    i = next(i for i, x in enumerate(args) if x == "--config" or x.startswith("--config="))
    spec.append(args[i].partition("=")[2] or (args[i + 1] if i + 1 < len(args) else ""))
    del args[i:i + (1 if "=" in args[i] else 2)]
  if len(spec) != 1 or not spec[0]:
    raise UsageError("give one config: python -m kdrobust.recipe configs/<name>.py[:args] "
                     f"[--config.key=value ...] (got {len(spec)}).")
  path = spec[0].split(":", 1)[0]
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    valid = _config_files(folder) or _config_files("configs")
    raise UsageError(f"config file {path!r} not found; configs: "
                     + (", ".join(valid) if valid else "(none found)") + ".")
  full = ["kdrobust.recipe", f"--config={spec[0]}", *args]
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                           flag_values=fv, lock_config=True, sys_argv=full)
  try:
    rest = fv(full)
  except flags.Error as e:
    msg = str(e).strip()
    if "Error whilst parsing config file" in msg:  # the config's own error, last line
      msg = f"{spec[0]}: {msg.splitlines()[-1]}"
    raise UsageError(msg) from None
  except (AttributeError, KeyError, TypeError) as e:  # unknown override key, wrong type
    raise UsageError(f"bad override: {str(e).strip(chr(39))}") from None
  if len(rest) > 1:
    raise UsageError(f"unexpected arguments {rest[1:]}.")
  return holder.value


def main(argv: Sequence[str]) -> int:
  """Print the card of the config on ``argv`` (without the program name); exit status."""
  if any(x in ("-h", "--help") for x in argv):
    print(__doc__)
    return 0
  try:
    print(recipe_card(load_config(argv)), end="")
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1
  return 0


def run():
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # never claim an accelerator for a printout
  sys.exit(main(sys.argv[1:]))


def _teacher_dtype(dtype: str) -> str:
  """``config.teachers.<name>.dtype`` as the run resolves it (kdrobust.teachers.resolve_dtype)."""
  if dtype == "auto":
    return "auto: bfloat16 on GPU/TPU (float32 logits), float32 on CPU"
  return dtype


if __name__ == "__main__":
  run()

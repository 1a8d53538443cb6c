"""Every experiment config builds, for every documented argument combination (no training).

A config file is loaded the way ``ml_collections.config_flags`` loads it (by
path); ``get_config(arg)`` must return a lockable ConfigDict whose method
builds, whose model is registered and whose teachers fit the method. The
combinations come from each file's ``arg_combinations()`` and from every
``--config configs/<file>.py:<args>`` command in any config docstring.
No teacher is loaded, nothing is trained.
"""

import glob
import importlib.util
import json
import os
import re

import ml_collections as mlc
import pytest

from kdrobust import methods as methods_lib
from kdrobust import models as models_lib
from kdrobust.methods import igdm as igdm_lib
from kdrobust.teachers import torch_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
SUPPORT_MODULES = ("paper_settings.py",)  # data, not configs
CIFAR_FILES = ("cifar_adaad", "cifar_ard", "cifar_darht", "cifar_iad", "cifar_igdm", "cifar_kd",
               "cifar_kdiga", "cifar_mtard", "cifar_natural", "cifar_rslad")
# Which methods' target numbers each file's docstring must show.
TARGET_FILES = {"cifar_igdm": ("pgd_at", "trades"), "cifar_ard": ("ard",),
                "cifar_iad": ("iad",), "cifar_rslad": ("rslad",),
                "cifar_adaad": ("adaad", "adaiad")}
_COMMAND = re.compile(r"--config configs/(\w+)\.py(?::(\S+))?")
_MODULES = {}


def load(name):
  """The config module ``configs/<name>.py``, loaded by path (cached)."""
  if name not in _MODULES:
    spec = importlib.util.spec_from_file_location(f"kdrobust_config_{name}",
                                                  os.path.join(CONFIGS, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _MODULES[name] = mod
  return _MODULES[name]


def settings():
  return load("paper_settings")


def config_names():
  return sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIGS, "*.py"))
                if os.path.basename(p) not in SUPPORT_MODULES)


def documented_commands():
  """``(file, arg)`` of every ``--config configs/<file>.py[:arg]`` in a config docstring."""
  out = set()
  for name in config_names():
    for m in _COMMAND.finditer(load(name).__doc__ or ""):
      out.add((m.group(1), m.group(2)))
  return sorted(out, key=lambda t: (t[0], t[1] or ""))


def all_cases():
  cases = {(name, None) for name in config_names()}
  for name in config_names():
    mod = load(name)
    if hasattr(mod, "arg_combinations"):
      cases |= {(name, a) for a in mod.arg_combinations()}
  cases |= set(documented_commands())
  return sorted(cases, key=lambda t: (t[0], t[1] or ""))


def test_config_files_found():
  names = config_names()
  assert set(CIFAR_FILES) | {"digits_distill", "subset_distill"} <= set(names)
  for name in names:
    assert callable(getattr(load(name), "get_config", None)), name


def test_docstring_commands_point_to_existing_files():
  names = set(config_names())
  for name, _ in documented_commands():
    assert name in names, f"a docstring runs configs/{name}.py, which does not exist"


@pytest.mark.parametrize("name,arg", all_cases())
def test_config_builds(name, arg):
  c = load(name).get_config(arg)
  assert isinstance(c, mlc.ConfigDict)
  json.dumps(c.to_dict())  # the run writes it as config.json
  locked = mlc.ConfigDict(c.to_dict())
  locked.lock()
  with pytest.raises(AttributeError):
    locked.no_such_field = 1
  method = methods_lib.from_config(c.method)
  assert c.model.name in models_lib.available()
  lo, hi = type(method).teachers
  n = len(c.teachers)
  assert lo <= n and (hi is None or n <= hi), (
      f"{name}:{arg}: {method.name} takes {lo}..{hi} teachers, the config gives {n}")
  for tname, tc in c.teachers.items():
    assert tc.path, f"{name}:{arg}: teacher {tname} has no path"
    if tc.path.endswith((".pt", ".pth")):
      assert tc.model in models_lib.available()
      torch_io.layout_for(tc.model, dict(tc.kwargs))  # a convertible layout
      assert tc.num_classes in (10, 100)
  if method.name == "darht":
    assert c.model.kwargs.head_slots == n
    names = list(c.teachers)
    assert names == sorted(names), "teacher order = sorted names = DARHT slot order"
  if method.name == "mtard":
    assert list(c.teachers) == ["adversarial", "natural"]
  assert c.num_epochs > 0 and c.data.batch_size > 0 and c.data.eval_batch_size > 0
  decay = tuple(c.optim.decay_epochs)
  assert all(0 < e < c.num_epochs for e in decay) and list(decay) == sorted(decay)


@pytest.mark.parametrize("name", CIFAR_FILES)
def test_cifar_recipes(name):
  ps = settings()
  mod = load(name)
  for arg in [None] + mod.arg_combinations():
    c = mod.get_config(arg)
    assert c.data.name in ps.DATASETS
    assert c.model.normalize is False  # official codes feed raw pixels
    assert c.eval.eps == pytest.approx(8 / 255) and c.eval.every_epochs > 0
    assert c.optim.lr == 0.1 and c.optim.momentum == 0.9
    assert c.optim.schedule == "piecewise"
    doc = mod.__doc__
    assert doc.splitlines()[2].strip().startswith(
        f"python -m kdrobust.main --config configs/{name}.py")
    for tc in c.teachers.values():
      if tc.path.startswith("teachers/") and tc.path.endswith(".pt"):
        assert re.fullmatch(r"teachers/cifar100?/Linf/[\w.-]+\.pt", tc.path)


@pytest.mark.parametrize("name", CIFAR_FILES + ("cifar10_pgd_at", "cifar10_trades"))
def test_full_cifar_batches_fit_multi_gpu_meshes(name):
  """Train and eval batches divide 1, 2, 4, 8 and 16 devices (launch/slurm_gpu.sh)."""
  mod = load(name)
  for arg in [None] + getattr(mod, "arg_combinations", list)():
    c = mod.get_config(arg)
    assert c.data.batch_size % 16 == 0 and c.data.eval_batch_size % 16 == 0, (name, arg)


def _args(arg):
  return dict(p.split("=", 1) for p in (arg or "").split(",") if p)


@pytest.mark.parametrize("name", ["cifar_igdm", "cifar_ard", "cifar_iad", "cifar_rslad",
                                  "cifar_adaad"])
def test_igdm_alpha_from_the_table(name):
  ps = settings()
  mod = load(name)
  seen = 0
  for arg in mod.arg_combinations():
    a = _args(arg)
    c = mod.get_config(arg)
    if a.get("igdm", "0" if name != "cifar_igdm" else "1") != "1":
      assert c.method.igdm.alpha == 0.0
      continue
    base = a.get("base") or a.get("method") or name.split("_", 1)[1]
    teacher = a.get("teacher", "ltd")
    teacher = "ltd" if teacher == "ltd2" else teacher
    want = ps.IGDM_ALPHA[(a.get("student", "resnet18"), a.get("dataset", "cifar10"), teacher,
                          "adaad" if base == "adaiad" else base)]
    assert c.method.igdm.alpha == want, arg
    seen += 1
  assert seen > 0
  c = mod.get_config("igdm=1,igdm_alpha=3.5")
  assert c.method.igdm.alpha == 3.5


@pytest.mark.parametrize("name", config_names())
def test_unknown_arg_lists_valid_ones(name):
  with pytest.raises(ValueError, match=r"Unknown config argument 'no_such_arg'; valid: \["):
    load(name).get_config("no_such_arg=1")


@pytest.mark.parametrize("name,arg,valid", [
    ("cifar_ard", "dataset=mnist", "cifar10, cifar100"),
    ("cifar_ard", "student=vgg16", "resnet18, mobilenet_v2"),
    ("cifar_ard", "teacher=nope", "ltd"),
    ("cifar_ard", "teacher=standard", "ltd"),  # natural teacher refused
    ("cifar_ard", "protocol=paper", "igdm, official"),
    ("cifar_igdm", "base=ard", "pgd_at, trades"),
    ("cifar_adaad", "method=rslad", "adaad, adaiad"),
    ("cifar_adaad", "radius=12", "8, 16"),
    ("cifar_adaad", "dataset=cifar100,teacher=ltd2", "ltd, bdm, ikl"),
    ("cifar_rslad", "protocol=official,igdm=1", "Pass igdm_alpha"),
    ("cifar_mtard", "dataset=cifar100,natural=standard", "wrn34_10"),
    ("cifar_kdiga", "variant=kd", "kdiga, kdiga_ard"),
    ("cifar_darht", "dataset=cifar10", "teachers=public"),
    ("cifar_darht", "teachers=ltd+nope", "gowal70"),
    ("digits_distill", "method=nope", "adaad"),
    ("digits_distill", "method=pgd_at", "igdm=<alpha> > 0"),
    ("digits_distill", "method=kd,igdm=5", "supports: pgd_at"),
    ("subset_distill", "method=natural", "rslad"),
])
def test_bad_values_list_valid_ones(name, arg, valid):
  with pytest.raises(ValueError) as e:
    load(name).get_config(arg)
  assert valid in str(e.value)


def test_small_configs_cover_every_distillation_method():
  want = {n for n in methods_lib.available() if methods_lib.get_class(n).teachers[0] >= 1}
  for name in ("digits_distill", "subset_distill"):
    mod = load(name)
    got = {_args(a)["method"] for a in mod.arg_combinations()}
    assert want | {"pgd_at", "trades"} <= got, want - got
    for base in igdm_lib.SUPPORTED:
      assert f"method={base},igdm=5" in mod.arg_combinations()


def test_target_tables_in_docstrings():
  """Every paper number of paper_settings.TARGETS appears in its file's docstring."""
  ps = settings()
  covered = set()
  for name, meths in TARGET_FILES.items():
    doc = load(name).__doc__
    for t in ps.TARGETS:
      if t["method"] in meths:
        assert ps.format_target(t) in doc, (name, t)
        covered.add(id(t))
  missing = {t["method"] for t in ps.TARGETS if id(t) not in covered}
  assert missing <= {"akd"}, missing  # AKD is not implemented


def test_paper_settings_lookups():
  ps = settings()
  assert ps.teacher("cifar100", "gowal70")["robustbench_id"] == "Gowal2020Uncovering"
  with pytest.raises(ValueError, match="valid: ltd, ltd2, bdm, ikl, trades, standard"):
    ps.teacher("cifar10", "gowal70")
  with pytest.raises(ValueError, match="valid: cifar10, cifar100"):
    ps.teacher("svhn", "ltd")
  assert ps.igdm_alpha("resnet18", "cifar100", "bdm", "adaad") == 70
  assert ps.igdm_alpha("resnet18", "cifar100", "bdm", "adaiad") == 70
  assert ps.igdm_alpha("mobilenet_v2", "cifar10", "ltd", "trades") == 1
  assert ps.igdm_alpha("resnet18", "cifar10", "ikl", "rslad") == 1
  with pytest.raises(ValueError, match="resnet18/cifar10/ltd"):
    ps.igdm_alpha("resnet18", "cifar10", "trades", "ard")
  with pytest.raises(ValueError, match="ard/igdm"):
    ps.recipe("ard", "paper")
  assert len(ps.IGDM_ALPHA) == 4 * 3 * 7 + 2 * 7
  rec = ps.targets("cifar100", "mobilenet_v2", "bdm", "rslad", igdm=True)
  assert [(r["clean"], r["pgd20"], r["aa"]) for r in rec] == [(61.48, 35.22, 29.32)]
  assert ps.targets("cifar10", "resnet18", "bdm", "ard") == []
  assert ps.short_run_hparams("darht", 10) == {"kd_start_epoch": 1, "ce_stop_epoch": 3}


@pytest.mark.parametrize("dataset,key", [(d, k) for d, ts in
                                          load("paper_settings").TEACHERS.items() for k in ts])
def test_teacher_layouts_build(dataset, key):
  t = settings().teacher(dataset, key)
  shapes = torch_io.expected_torch_shapes(t["arch"], t["num_classes"], **t["kwargs"])
  head = "logits.weight" if t["kwargs"].get("variant") == "dm" else "fc.weight"
  assert shapes[head] == (t["num_classes"], shapes[head][1])

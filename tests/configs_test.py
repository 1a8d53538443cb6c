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
               "cifar_kdiga", "cifar_mtard", "cifar_natural", "cifar_rslad",
               # issue 12 (docs/fidelity.md, "Methods published since")
               "cifar_absld", "cifar_b_mtard", "cifar_cgard", "cifar_fair_ard", "cifar_saad")
# The paper configs: official students are PyTorch modules (model.init='torch').
PAPER_FILES = CIFAR_FILES + ("cifar10_pgd_at", "cifar10_trades", "igdm_datasets")
CPU_FILES = ("digits_distill", "subset_distill", "quickstart_distill", "quickstart",
             "cifar10_subset_pgd_at")
# Which methods' target numbers each file's docstring must show.
_CIFAR = ("cifar10", "cifar100")
TARGET_FILES = {"cifar_igdm": (("pgd_at", "trades"), _CIFAR), "cifar_ard": (("ard",), _CIFAR),
                "cifar_iad": (("iad",), _CIFAR), "cifar_rslad": (("rslad",), _CIFAR),
                "cifar_adaad": (("adaad", "adaiad"), _CIFAR),
                "igdm_datasets": (("pgd_at", "trades", "ard", "iad", "rslad", "adaad"),
                                  ("svhn_cropped", "tiny_imagenet")),
                "cifar_cgard": (("cgard",), _CIFAR), "cifar_b_mtard": (("b_mtard",), _CIFAR),
                "cifar_saad": (("saad",), _CIFAR)}
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
      assert tc.num_classes in (10, 100, 200)
  if method.name == "darht":
    assert c.model.kwargs.head_slots == n
    names = list(c.teachers)
    assert names == sorted(names), "teacher order = sorted names = DARHT slot order"
  if method.name == "mtard":
    assert list(c.teachers) == ["adversarial", "natural"]
  assert c.num_epochs > 0 and c.data.batch_size > 0 and c.data.eval_batch_size > 0
  decay = tuple(c.optim.decay_epochs)
  assert all(0 < e < c.num_epochs for e in decay) and list(decay) == sorted(decay)
  if c.optim.schedule == "table":
    lr_epochs = list(c.optim.lr_epochs)
    assert lr_epochs[0] == 0 and lr_epochs == sorted(set(lr_epochs))
    assert lr_epochs[-1] < c.num_epochs and len(c.optim.lr_factors) == len(lr_epochs)


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
    assert c.optim.schedule in ("piecewise", "table")
    doc = mod.__doc__
    assert doc.splitlines()[2].strip().startswith(
        f"python -m kdrobust.main --config configs/{name}.py")
    for tc in c.teachers.values():
      if tc.path.startswith("teachers/") and tc.path.endswith(".pt"):
        assert re.fullmatch(r"teachers/cifar100?/(Linf/)?[\w.-]+\.pt", tc.path)


@pytest.mark.parametrize("name", CIFAR_FILES + ("cifar10_pgd_at", "cifar10_trades"))
def test_full_cifar_batches_fit_multi_gpu_meshes(name):
  """Train and eval batches divide 1, 2, 4, 8 and 16 devices (launch/slurm_gpu.sh)."""
  mod = load(name)
  for arg in [None] + getattr(mod, "arg_combinations", list)():
    c = mod.get_config(arg)
    assert c.data.batch_size % 16 == 0 and c.data.eval_batch_size % 16 == 0, (name, arg)


def _args(arg):
  return dict(p.split("=", 1) for p in (arg or "").split(",") if p)


@pytest.mark.parametrize("name", CPU_FILES)
def test_cpu_batches_fit_1_2_4_8_devices_or_processes(name):
  """The CPU-sized configs run on 2 processes (tests/multiprocess_test.py) or 8 devices."""
  mod = load(name)
  for arg in [None] + getattr(mod, "arg_combinations", list)():
    c = mod.get_config(arg)
    assert c.data.batch_size % 8 == 0 and c.data.eval_batch_size % 8 == 0, (
        name, arg, c.data.batch_size, c.data.eval_batch_size)


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
    ("cifar_adaad", "dataset=cifar100,teacher=ltd2", "ltd, bdm, ikl, gowal70"),
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
  """Every paper number of paper_settings.TARGETS appears in its file's docstring.

  The files append ``paper_settings.targets_table`` to their docstring (the
  numbers live once, in paper_settings); each row must be there.
  """
  ps = settings()
  covered = set()
  for name, (meths, datasets) in TARGET_FILES.items():
    doc = load(name).__doc__
    assert ps.targets_table(meths, datasets) in doc, name
    for t in ps.TARGETS:
      if t["method"] in meths and t["dataset"] in datasets:
        row = [line for line in doc.splitlines() if ps.format_target(t) in line
               and line.split()[:3] == [t["dataset"], t["student"], t["teacher"]]]
        assert row and t["source"] in row[0], (name, t)
        covered.add(id(t))
  missing = {t["method"] for t in ps.TARGETS if id(t) not in covered}
  assert missing <= {"akd"}, missing  # AKD is not implemented


def test_paper_settings_lookups():
  ps = settings()
  assert ps.teacher("cifar100", "gowal70")["robustbench_id"] == "Gowal2020Uncovering"
  with pytest.raises(ValueError,
                     match="valid: ltd, bdm, ikl, ltd2, trades, standard, mtard_natural"):
    ps.teacher("cifar10", "gowal70")
  with pytest.raises(ValueError, match="valid: cifar10, cifar100, svhn_cropped, tiny_imagenet"):
    ps.teacher("svhn", "ltd")
  assert ps.igdm_alpha("resnet18", "cifar100", "bdm", "adaad") == 70
  assert ps.igdm_alpha("resnet18", "cifar100", "bdm", "adaiad") == 70
  assert ps.igdm_alpha("mobilenet_v2", "cifar10", "ltd", "trades") == 1
  assert ps.igdm_alpha("resnet18", "cifar10", "ikl", "rslad") == 1
  with pytest.raises(ValueError, match="resnet18/cifar10/ltd"):
    ps.igdm_alpha("resnet18", "cifar10", "trades", "ard")
  with pytest.raises(ValueError, match="protocol for ard='paper'; valid: igdm, official"):
    ps.recipe("ard", "paper")
  with pytest.raises(ValueError, match="protocol for kd='igdm'; valid: official"):
    ps.recipe("kd", "igdm")
  with pytest.raises(ValueError, match="No recipe for method 'akd'"):
    ps.recipe("akd")
  assert len(ps.IGDM_ALPHA) == 4 * 3 * 7 + 2 * 7
  rec = ps.targets("cifar100", "mobilenet_v2", "bdm", "rslad", igdm=True)
  assert [(r["clean"], r["pgd20"], r["aa"]) for r in rec] == [(61.48, 35.22, 29.32)]
  assert ps.targets("cifar10", "resnet18", "bdm", "ard") == []
  rec = ps.targets("tiny_imagenet", "preact_resnet18", "rift", "adaad", igdm=True)
  assert [(r["clean"], r["pgd20"], r["aa"]) for r in rec] == [(51.21, 25.73, 21.17)]
  assert ps.short_run_hparams("darht", 10) == {"kd_start_epoch": 1, "ce_stop_epoch": 3}


@pytest.mark.parametrize("dataset,key", [(d, k) for d, ts in
                                          load("paper_settings").TEACHERS.items() for k in ts])
def test_teacher_layouts_build(dataset, key):
  t = settings().teacher(dataset, key)
  shapes = torch_io.expected_torch_shapes(t["arch"], t["num_classes"], **t["kwargs"])
  head = "logits.weight" if t["kwargs"].get("variant") == "dm" else "fc.weight"
  assert shapes[head] == (t["num_classes"], shapes[head][1])


# -- Issue 8: the official and IGDM protocols as the codes run (docs/fidelity.md errata). --

DISTILL_FILES = ("cifar_adaad", "cifar_ard", "cifar_darht", "cifar_iad", "cifar_igdm", "cifar_kd",
                 "cifar_kdiga", "cifar_mtard", "cifar_rslad", "igdm_datasets", "digits_distill",
                 "subset_distill", "quickstart_distill", "cifar_absld", "cifar_b_mtard",
                 "cifar_cgard", "cifar_fair_ard", "cifar_saad")
# file -> its protocols (the first is the default).
PROTOCOLS = {"cifar_adaad": ("igdm", "official"), "cifar_ard": ("igdm", "official"),
             "cifar_iad": ("igdm", "official"), "cifar_rslad": ("igdm", "official"),
             "cifar_darht": ("official",), "cifar_kd": ("official",),
             "cifar_kdiga": ("official",), "cifar_mtard": ("official",),
             "cifar_igdm": ("igdm",), "igdm_datasets": ("igdm",),
             "digits_distill": ("short_run",), "subset_distill": ("short_run",),
             "quickstart_distill": ("short_run",), "cifar10_pgd_at": ("official", "igdm"),
             "cifar10_trades": ("official", "igdm"), "cifar_natural": ("kdrobust",),
             "cifar_absld": ("kdrobust", "official"), "cifar_b_mtard": ("official",),
             "cifar_cgard": ("paper",), "cifar_fair_ard": ("kdrobust", "official"),
             "cifar_saad": ("official", "paper")}


def test_every_distillation_config_takes_protocol():
  assert set(DISTILL_FILES) <= set(PROTOCOLS)
  ps = settings()
  for name, protos in PROTOCOLS.items():
    mod = load(name)
    assert mod.get_config(None).provenance.protocol == protos[0], name
    for p in protos:
      assert mod.get_config(f"protocol={p}").provenance.protocol == p, (name, p)
    with pytest.raises(ValueError, match=r"protocol.*='no_such_protocol'; valid: ") as e:
      mod.get_config("protocol=no_such_protocol")
    assert set(str(e.value).split("valid: ")[1].rstrip(".").split(", ")) == set(protos), name
  with pytest.raises(ValueError, match="protocol for kd='igdm'; valid: official"):
    load("cifar_kd").get_config("protocol=igdm")
  assert ps.protocols("kdiga_rs") == ("official",)


@pytest.mark.parametrize("name", PAPER_FILES + CPU_FILES)
def test_model_init_and_provenance(name):
  """E12: PyTorch's default initialisation in every paper config; the CPU ones keep Flax's."""
  mod = load(name)
  for arg in [None] + getattr(mod, "arg_combinations", list)():
    c = mod.get_config(arg)
    assert c.model.init == ("torch" if name in PAPER_FILES else "flax"), (name, arg)
    if name in PAPER_FILES:
      assert c.provenance.protocol and c.provenance.sources, (name, arg)
      assert isinstance(c.provenance.notes, str)


def _attack(name, arg):
  return dict(load(name).get_config(arg).method.attack)


@pytest.mark.parametrize("name,arg", [
    ("cifar_ard", "protocol=official"), ("cifar_ard", "protocol=official,dataset=cifar100"),
    ("cifar_iad", "protocol=official"), ("cifar_iad", "method=iad2"),
    ("cifar_kdiga", "variant=kdiga_ard")])
def test_e2_official_train_mode_attack(name, arg):
  """E2: ARD, IAD and KDIGA attack in net.train() mode from x + U[-eps, eps], unclipped."""
  a = _attack(name, arg)
  assert a["bn_mode"] == "train" and a["init"] == "uniform_unclipped"
  assert a["eps"] == pytest.approx(8 / 255) and a["steps"] == 10
  assert a["step_size"] == pytest.approx(1.6 / 255 if "kdiga" in name else 2 / 255)


@pytest.mark.parametrize("name,arg,init", [
    ("cifar_ard", "protocol=igdm", "uniform"), ("cifar_iad", "protocol=igdm", "uniform"),
    ("cifar_rslad", None, "gaussian"), ("cifar_adaad", None, "gaussian"),
    ("cifar_mtard", None, "gaussian"), ("cifar_darht", None, "gaussian"),
    ("cifar_igdm", None, "uniform"), ("cifar10_trades", None, "gaussian"),
    ("cifar10_pgd_at", None, "gaussian_clamped")])
def test_eval_mode_attacks_elsewhere(name, arg, init):
  a = _attack(name, arg)
  assert a["bn_mode"] == "eval" and a["init"] == init


def test_igdm_ard_step_is_the_codes():
  """IGDM's ARD scripts call attacks.PGD with its default step 2/225 (the paper: 2/255)."""
  assert _attack("cifar_ard", "protocol=igdm")["step_size"] == pytest.approx(2 / 225)
  assert _attack("cifar_iad", "protocol=igdm")["step_size"] == pytest.approx(2 / 255)


def test_e3_igdm_weight_decay():
  """E3: IGDM's code runs 2e-4, except its AdaAD baseline script (5e-4 hard-coded)."""
  ps = settings()
  assert ps.IGDM_WEIGHT_DECAY == 2e-4
  wd = lambda name, arg: load(name).get_config(arg).optim.weight_decay
  for name, arg in [("cifar_ard", None), ("cifar_ard", "igdm=1"), ("cifar_iad", None),
                    ("cifar_rslad", "igdm=1"), ("cifar_igdm", None), ("cifar_igdm", "igdm=0"),
                    ("cifar_adaad", "igdm=1"), ("cifar_adaad", "method=adaiad,igdm=1"),
                    ("igdm_datasets", "method=ard")]:
    assert wd(name, arg) == 2e-4, (name, arg)
  assert wd("cifar_adaad", None) == 5e-4  # adaad_cifar100.py:73
  assert wd("cifar_adaad", "protocol=official") == 5e-4
  assert wd("cifar_adaad", "protocol=official,igdm=1") == 5e-4
  assert wd("cifar_ard", "protocol=official") == 2e-4


@pytest.mark.parametrize("arg,reduction", [
    (None, "batchmean"), ("dataset=cifar100", "batchmean"),
    ("protocol=official", "elemmean"), ("protocol=official,dataset=cifar100", "batchmean")])
def test_e4_adaad_reduction(arg, reduction):
  """E4: AdaAD's KL is batchmean under IGDM's protocol, elemmean on AdaAD's own CIFAR-10."""
  assert load("cifar_adaad").get_config(arg).method.reduction == reduction


def test_e5_ard_official_teacher_and_student():
  ps = settings()
  c = load("cifar_ard").get_config("protocol=official")
  assert c.teachers.teacher.path == ps.teacher("cifar10", "trades")["file"]
  assert c.model.name == "mobilenet_v2"  # main.py's --model default
  assert c.method.temperature == 30.0 and c.method.reduction == "elemmean"
  c = load("cifar_ard").get_config("protocol=official,teacher=ltd,student=resnet18")
  assert c.teachers.teacher.path.endswith("Chen2021LTD_WRN34_10.pt")
  assert c.model.name == "resnet18"


def test_e6_mtard_natural_teacher_by_path():
  ps = settings()
  c = load("cifar_mtard").get_config(None)
  rec = ps.teacher("cifar10", "mtard_natural")
  assert dict(c.teachers.natural) == dict(ps.teacher_entry(rec))
  assert (rec["arch"], rec["kwargs"], rec["role"]) == ("wrn34_10", {"variant": "standard"},
                                                      "natural")
  c = load("cifar_mtard").get_config("natural_path=/ckpt/mtard_clean.pt")
  assert c.teachers.natural.path == "/ckpt/mtard_clean.pt"
  assert c.teachers.natural.model == "wrn34_10"
  c = load("cifar_mtard").get_config("dataset=cifar100")
  assert c.teachers.natural.path == "runs/cifar100_natural_wrn34_10"


def _method_has(method, field):
  return field in methods_lib.default_hparams(method)


def test_e10_e11_official_extra_forwards():
  """E11: Plain_Madry's clamped start and extra S(x); E10: IAD-I's extra S(x')."""
  c = load("cifar10_pgd_at").get_config(None)
  assert c.method.attack.init == "gaussian_clamped"
  assert c.num_epochs == 110 and tuple(c.optim.decay_epochs) == (100, 105)
  for name, method, field in [("cifar10_pgd_at", "pgd_at", "extra_clean_forward"),
                              ("cifar_iad", "iad", "adv_bn_forward")]:
    c = load(name).get_config("protocol=official")
    if _method_has(method, field):
      assert c.method[field] is True, (name, field)
      assert "NOT REPRODUCED" not in c.provenance.notes
    else:
      assert f"NOT REPRODUCED (kdrobust's {method} has no field {field})" in c.provenance.notes
  assert not load("cifar10_pgd_at").get_config("protocol=igdm").method.extra_clean_forward


def test_e8_trades_official_attack():
  c = load("cifar10_trades").get_config(None)
  assert (c.method.attack.eps, c.method.attack.step_size) == (0.031, 0.007)
  assert c.num_epochs == 76 and tuple(c.optim.decay_epochs) == (74,)
  c = load("cifar10_trades").get_config("epochs=110")
  assert tuple(c.optim.decay_epochs) == (74, 89, 99)


def test_e9_darht_table_schedule():
  c = load("cifar_darht").get_config(None)
  assert c.optim.schedule == "table"
  assert tuple(c.optim.lr_epochs) == (0, 3, 116, 161, 186)
  assert tuple(c.optim.lr_factors) == (0.0, 1.0, 0.1, 0.01, 0.001)


@pytest.mark.parametrize("dataset,student,epochs,decay,classes", [
    ("svhn_cropped", "resnet18", 50, (40, 45), 10),
    ("tiny_imagenet", "preact_resnet18", 100, (50, 80), 200)])
def test_igdm_svhn_and_tiny_imagenet(dataset, student, epochs, decay, classes):
  """Issue 8a: IGDM's SVHN and Tiny ImageNet settings (IGDM, ICLR 2025, App. B.1-B.2, Tab. 1)."""
  from kdrobust.data import catalog  # pylint: disable=g-import-not-at-top
  ps = settings()
  mod = load("igdm_datasets")
  for method in mod.METHODS:
    c = mod.get_config(f"dataset={dataset},method={method}")
    assert c.data.name == dataset and catalog.spec(dataset).num_classes == classes
    assert (c.model.name, c.num_epochs, tuple(c.optim.decay_epochs)) == (student, epochs, decay)
    key = ps.IGDM_MORE[dataset]["teacher"]
    base = "adaad" if method == "adaiad" else method
    assert c.method.igdm.alpha == ps.IGDM_ALPHA[(student, dataset, key, base)]
    assert c.teachers.teacher.num_classes == classes
    assert c.teachers.teacher.model == "wrn34_10"
  assert mod.get_config(f"dataset={dataset},method=pgd_at,igdm=0").teachers.to_dict() == {}
  c = mod.get_config(f"dataset={dataset},teacher_path=/t/rift.pt")
  assert c.teachers.teacher.path == "/t/rift.pt"
  with pytest.raises(ValueError, match="valid: svhn_cropped, tiny_imagenet"):
    mod.get_config("dataset=cifar10")

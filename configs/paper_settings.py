"""The papers' settings as plain data (teachers, IGDM alphas, recipes, targets); config builders.

Not a config file: every config in ``configs/`` reads it (``import
paper_settings``, with this directory on ``sys.path``). Every number carries
its source; the tags are those of ``shared/research/methods.md``
(``[P:IGDM Tab.2]`` = IGDM paper, ``[C:<repo>]`` = official code,
``RobustBench`` = ``model_info`` JSON).

* :data:`TEACHERS` ``[dataset][key]``: RobustBench id, architecture in our
  zoo (``kdrobust.models`` name + model kwargs for the PyTorch layout),
  expected file, RobustBench clean / AA (and IGDM Tab. 1 clean / PGD / AA).
* :data:`IGDM_ALPHA` ``[(student, dataset, teacher, base)]``: IGDM's weight
  alpha before the ``t / E`` ramp (IGDM App. B.2, methods.md section 6.3).
* :data:`RECIPES` ``[(method, protocol)]``: epochs, lr decay epochs, weight
  decay, batch size, inner attack.
* :data:`TARGETS`: the papers' numbers (methods.md section 9), one record per
  (dataset, student, teacher, method, igdm, source).

Lookups (:func:`teacher`, :func:`adversarial_teacher`, :func:`igdm_alpha`,
:func:`recipe`, :func:`choice`) raise a ``ValueError`` listing the valid keys;
:func:`targets` returns the published numbers of a setting (often none).
:data:`SHORT_RUN` holds the CPU configs' per-method choices.

Config builders (the code the config files share; each returns plain data):
:func:`cifar_config` turns a recipe into a full-size CIFAR config (data, model,
SGD schedule, PGD-20 evaluation), :func:`one_teacher_config` is that with one
teacher, :func:`cpu_config` does the same for the CPU-sized runs of
:data:`CPU_DATA`; :func:`parse_arg` reads and checks a config's arguments
(:func:`protocol_arg`: those of the IGDM-or-official protocol configs),
:func:`teacher_entry` makes a ``config.teachers`` entry of a teacher record,
:func:`igdm_weight` picks IGDM's alpha and :func:`arg_strings` spells out a
file's ``arg_combinations`` (:func:`protocol_arg_strings`: the protocol
configs').
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

import ml_collections as mlc

from kdrobust import config_lib

DATASETS = ("cifar10", "cifar100")
STUDENTS = ("resnet18", "mobilenet_v2")

# Channel statistics the DeepMind-layout (``variant='dm'``) RobustBench models
# normalise with inside the model (``CIFAR10_MEAN`` etc. of RobustBench's
# dm_wide_resnet.py; identical to kdrobust.models.DATASET_STATS).
_C10 = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2471, 0.2435, 0.2616)}
_C100 = {"mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762)}


def _t(rb_id, dataset, arch, kwargs, name, rb, *, igdm_tab1=None, role="adversarial",
       note=""):
  return {"robustbench_id": rb_id, "dataset": dataset, "arch": arch, "kwargs": kwargs,
          "name": name, "robustbench_clean_aa": rb, "igdm_tab1_clean_pgd_aa": igdm_tab1,
          "role": role, "note": note,
          "num_classes": 10 if dataset == "cifar10" else 100,
          "file": f"teachers/{dataset}/Linf/{rb_id}.pt"}


# Teachers. ``file`` is where RobustBench itself puts the checkpoint with
# ``robustbench.utils.load_model(model_name=ID, dataset=D, threat_model='Linf',
# model_dir='teachers')``: ``teachers/<dataset>/Linf/<id>.pt`` (the dataset is
# part of the path because LTD, BDM-AT and IKL-AT use the same id on CIFAR-10
# and CIFAR-100). Layouts (RobustBench model_zoo/cifar10.py, cifar100.py):
# TRADES/LTD = ``WideResNet(depth, widen_factor[, sub_block1])``, raw [0, 1]
# inputs -> our ``variant='standard'`` (the unused ``sub_block1`` is dropped by
# the converter); Gowal2020 / Wang2023 / Cui2023 = ``DMWideResNet(...,
# activation_fn=Swish | nn.SiLU, mean, std)`` -> ``variant='dm'``,
# ``activation='swish'`` (= SiLU) and the dataset's mean/std (given explicitly:
# some RobustBench files carry them as buffers, older ones do not; the
# converter checks them against the buffers when present). UNCONFIRMED: the
# Wang2023Better / Cui2023Decoupled entries are not in the RobustBench
# snapshots we could read (they predate them); their layout above is the
# zoo entry as recalled (DMWideResNet, nn.SiLU). The converter checks keys and
# shapes, not the activation: the step-0 teacher check
# (``config.teacher_eval_examples``) shows a wrong one as a far-off clean
# accuracy (RobustBench: 92.4% / 72.6% clean).
TEACHERS: dict[str, dict[str, dict[str, Any]]] = {
    "cifar10": {
        "ltd": _t("Chen2021LTD_WRN34_10", "cifar10", "wrn34_10", {"variant": "standard"},
                  "LTD WRN-34-10", (85.21, 56.94), igdm_tab1=(85.21, 60.89, 56.94)),
        "ltd2": _t("Chen2021LTD_WRN34_20", "cifar10", "wrn34_20", {"variant": "standard"},
                   "LTD WRN-34-20 (AdaAD's CIFAR-10 teacher, IGDM's 'LTD2')", (86.03, 57.71)),
        "bdm": _t("Wang2023Better_WRN-28-10", "cifar10", "wrn28_10",
                  {"variant": "dm", "activation": "swish", **_C10},
                  "BDM-AT WRN-28-10 (Wang et al. 2023, 50M generated images)", (92.44, 67.31),
                  igdm_tab1=(92.44, 70.63, 67.31)),
        "ikl": _t("Cui2023Decoupled_WRN-28-10", "cifar10", "wrn28_10",
                  {"variant": "dm", "activation": "swish", **_C10},
                  "IKL-AT WRN-28-10 (Cui et al. 2023)", (92.16, 67.73),
                  igdm_tab1=(92.16, 71.09, 67.73)),
        "trades": _t("Zhang2019Theoretically", "cifar10", "wrn34_10", {"variant": "standard"},
                     "TRADES WRN-34-10 (RSLAD/MTARD/KDIGA teacher, model_cifar_wrn.pt)",
                     (84.92, 53.08), note="RobustBench evaluates it at eps 0.031"),
        "standard": _t("Standard", "cifar10", "wrn28_10", {"variant": "standard"},
                       "naturally trained WRN-28-10 (RobustBench 'Standard')", (94.78, 0.0),
                       role="natural",
                       note="clean/AA from the RobustBench leaderboard, not methods.md"),
    },
    "cifar100": {
        "ltd": _t("Chen2021LTD_WRN34_10", "cifar100", "wrn34_10", {"variant": "standard"},
                  "LTD WRN-34-10", (64.07, 30.59), igdm_tab1=(64.07, 36.61, 30.57)),
        "bdm": _t("Wang2023Better_WRN-28-10", "cifar100", "wrn28_10",
                  {"variant": "dm", "activation": "swish", **_C100},
                  "BDM-AT WRN-28-10 (Wang et al. 2023, 50M generated images)", (72.58, 38.83),
                  igdm_tab1=(72.58, 44.24, 38.83)),
        "ikl": _t("Cui2023Decoupled_WRN-28-10", "cifar100", "wrn28_10",
                  {"variant": "dm", "activation": "swish", **_C100},
                  "IKL-AT WRN-28-10 (Cui et al. 2023)", (73.85, 39.18),
                  igdm_tab1=(73.80, 44.14, 39.18)),
        "gowal70": _t("Gowal2020Uncovering", "cifar100", "wrn70_16",
                      {"variant": "dm", "activation": "swish", **_C100},
                      "DeepMind WRN-70-16 without extra data (RSLAD/MTARD/DARHT teacher, "
                      "cifar100_linf_wrn70-16_without.pt)", (60.86, 30.03)),
    },
}

# DARHT's CIFAR-100 teacher set (K = 4, slot order of the released script,
# methods.md 7.4): the WRN-70-16 above plus three ViTs trained with FAT
# (friendly adversarial training) that have no public checkpoint. Users
# supply the ViTs themselves (see configs/cifar_darht.py).
DARHT_PAPER_TEACHERS = {
    "cifar100": ("gowal70", "vit_b16_fat_k10_tau0", "vit_b16_fat_tau1", "vit_b32_fat_tau0"),
}
DARHT_VITS = {
    "vit_b16_fat_k10_tau0": "ViT-B/16, FAT with K = 10, tau = 0, on 224x224 inputs",
    "vit_b16_fat_tau1": "ViT-B/16, FAT with tau = 1, on 224x224 inputs",
    "vit_b32_fat_tau0": "ViT-B/32, FAT with tau = 0, on 224x224 inputs",
}
# CHOICE (the released code has no CIFAR-10 script and the v2 abstract names
# no set): publicly available teachers that differ in architecture and
# adversarial-training algorithm.
DARHT_PUBLIC_TEACHERS = {
    "cifar10": ("trades", "ltd", "bdm", "ikl"),
    "cifar100": ("gowal70", "ltd", "bdm", "ikl"),
}

# IGDM alpha (before the linear ramp t / E), IGDM App. B.2 (methods.md 6.3).
# Bases: pgd_at, trades, ard, iad, akd (not implemented here), rslad, adaad
# (AdaAD and AdaIAD share a column). Teachers ltd / bdm / ikl; the SVHN row uses
# IGDM's own PGD-AT WRN-34-10 teacher ('pgdat'), the Tiny-ImageNet row RiFT
# WRN-34-10 ('rift') with a PreActResNet-18 student.
IGDM_BASES = ("pgd_at", "trades", "ard", "iad", "akd", "rslad", "adaad")
_ALPHA_ROWS = {
    # (student, dataset, teachers): {base: alphas per teacher}
    ("resnet18", "cifar100", ("ltd", "bdm", "ikl")): {
        "pgd_at": (100, 220, 100), "trades": (5, 5, 5), "ard": (50, 100, 100),
        "iad": (20, 50, 50), "akd": (50, 25, 40), "rslad": (3, 10, 10), "adaad": (15, 70, 50)},
    ("resnet18", "cifar10", ("ltd", "bdm", "ikl")): {
        "pgd_at": (60, 70, 70), "trades": (20, 20, 20), "ard": (5, 10, 10),
        "iad": (50, 30, 30), "akd": (7, 10, 15), "rslad": (0.9, 0.9, 1), "adaad": (5, 10, 5)},
    ("mobilenet_v2", "cifar100", ("ltd", "bdm", "ikl")): {
        "pgd_at": (150, 160, 160), "trades": (10, 10, 3), "ard": (70, 70, 70),
        "iad": (20, 50, 50), "akd": (30, 30, 30), "rslad": (3, 4, 10), "adaad": (20, 50, 40)},
    ("mobilenet_v2", "cifar10", ("ltd", "bdm", "ikl")): {
        "pgd_at": (70, 40, 50), "trades": (1, 0.5, 0.2), "ard": (10, 8, 9),
        "iad": (50, 50, 50), "akd": (15, 15, 15), "rslad": (0.5, 0.7, 0.7), "adaad": (10, 10, 10)},
    ("resnet18", "svhn_cropped", ("pgdat",)): {
        "pgd_at": (60,), "trades": (30,), "ard": (50,), "iad": (40,), "akd": (10,),
        "rslad": (3,), "adaad": (9,)},
    ("preact_resnet18", "tiny_imagenet", ("rift",)): {
        "pgd_at": (30,), "trades": (20,), "ard": (10,), "iad": (20,), "akd": (10,),
        "rslad": (1,), "adaad": (10,)},
}
IGDM_ALPHA: dict[tuple[str, str, str, str], float] = {
    (student, dataset, t, base): float(vals[i])
    for (student, dataset, ts), row in _ALPHA_ROWS.items()
    for base, vals in row.items()
    for i, t in enumerate(ts)
}

# Training recipes. All: SGD, lr 0.1, momentum 0.9, coupled L2 weight decay,
# pad-4 crop + flip, raw [0, 1] inputs, lr x0.1 at each decay epoch.
# ``batch_size`` per dataset; ``attack`` = the inner maximisation (None: none).
_EPS, _STEP = 8 / 255, 2 / 255


def _attack(init, eps=_EPS, step=_STEP, steps=10):
  return {"eps": eps, "step_size": step, "steps": steps, "init": init}


def _r(epochs, decay, wd, batch, attack, source):
  if isinstance(batch, int):
    batch = {"cifar10": batch, "cifar100": batch}
  return {"epochs": epochs, "decay_epochs": tuple(decay), "weight_decay": wd,
          "batch_size": batch, "attack": attack, "source": source}


# The IGDM protocol = IGDM's re-runs behind every number of methods.md
# section 9: 200 epochs (RSLAD-based: 300), batch 128, PGD-10 at 8/255 with
# step 2/255, weight decay 5e-4. CHOICE (methods.md 6.2, 10.3: the paper says
# 5e-4, the re-uploaded code's args.py defaults to 2e-4): 5e-4, because the
# paper text is the primary source, and IGDM's code base is AdaAD's, whose
# official recipe (which IGDM's AdaAD re-runs reproduce) uses 5e-4.
IGDM_WEIGHT_DECAY = 5e-4
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("pgd_at", "igdm"): _r(200, (100, 150), IGDM_WEIGHT_DECAY, 128, _attack("uniform"),
                           "[P:IGDM App.B.1]"),
    ("trades", "igdm"): _r(200, (100, 150), IGDM_WEIGHT_DECAY, 128, _attack("gaussian"),
                           "[P:IGDM App.B.1 eq.15], [C:TRADES] (beta 6, gaussian start)"),
    ("ard", "igdm"): _r(200, (100, 150), IGDM_WEIGHT_DECAY, 128, _attack("uniform"),
                        "[P:IGDM App.B.1], [C:IGDM a22ed64:ard_cifar100.py]"),
    ("ard", "official"): _r(200, (100, 150), 2e-4, {"cifar10": 128, "cifar100": 256},
                            _attack("uniform"), "[C:ARD@779ade3:main.py]"),
    ("iad", "igdm"): _r(200, (100, 150), IGDM_WEIGHT_DECAY, 128, _attack("uniform"),
                        "[P:IGDM App.B.1]"),
    ("iad", "official"): _r(200, (100, 150), 2e-4, 128, _attack("uniform"),
                            "[C:IAD@a8091a8:IAD-I.py]"),
    ("rslad", "igdm"): _r(300, (215, 260, 285), IGDM_WEIGHT_DECAY, 128, _attack("gaussian"),
                          "[P:IGDM App.B.1], [C:IGDM a22ed64:rslad_IGDM_cifar100.py]"),
    ("rslad", "official"): _r(300, (215, 260, 285), 2e-4, 128, _attack("gaussian"),
                              "[C:RSLAD@c40e04f:resnet18_rslad_cifar10/100.py]"),
    ("adaad", "official"): _r(200, (100, 150), 5e-4, 128, _attack("gaussian"),
                              "[C:AdaAD@9e5c6e5:main.py] (IGDM's re-runs use the same)"),
    ("mtard", "official"): _r(300, (215, 260, 285), 2e-4, 128, _attack("gaussian"),
                              "[C:MTARD@6480a1b:mtard_resnet18_cifar10/100.py]"),
    ("kdiga", "official"): _r(200, (100, 150), 2e-4, {"cifar10": 128, "cifar100": 256}, None,
                              "[C:KDIGA@12e774f:main.py]"),
    ("kdiga_ard", "official"): _r(200, (100, 150), 2e-4, {"cifar10": 128, "cifar100": 256},
                                  _attack("uniform", step=1.6 / 255),
                                  "[C:KDIGA@12e774f:main.py] (step 16/255/10)"),
    ("kd", "official"): _r(200, (100, 150), 2e-4, {"cifar10": 128, "cifar100": 256}, None,
                           "[C:KDIGA@12e774f:main.py distill_method='kd']"),
    ("darht", "official"): _r(350, (115, 160, 185), 5e-4, 256,
                              _attack("gaussian", eps=0.031, step=0.003),
                              "[C:DARHT@5c0a1ff:DARHT_CIFAR_100_stateful_MWU.py]"),
    # Our choice (no paper gives it): the natural teacher of MTARD.
    ("natural", "kdrobust"): _r(200, (100, 150), 5e-4, 128, None,
                                "kdrobust choice (standard CIFAR natural training)"),
    # The plain adversarial-training recipes of configs/cifar10_pgd_at.py and
    # configs/cifar10_trades.py (not the IGDM re-runs above). TRADES: the
    # code's schedule; CHOICE (the values): eps 8/255, step 2/255, where
    # the code uses 0.031 and 0.007.
    ("pgd_at", "plain_madry"): _r(110, (100, 105), 5e-4, 128, _attack("uniform"),
                                  "[C:AdaAD Plain_Madry] (methods.md 3.2)"),
    ("trades", "official"): _r(76, (75, 90, 100), 2e-4, 128, _attack("gaussian"),
                               "[C:TRADES train_trades_cifar10.py] (methods.md 3.3)"),
}

# Method hyperparameters of the CPU-sized configs (digits_distill.py,
# subset_distill.py: about 10 epochs of a small CNN). CHOICES for short runs,
# not paper settings: every KL at ``batchmean`` (the papers' ``elemmean`` or
# RSLAD/MTARD ``scale = 0.1`` divide the loss by 10 and train 10x slower at
# these few steps), tau = 1 for ARD and AdaIAD (their codes' tau = 30 targets
# 200-epoch runs), and epoch-based switches (IAD/AdaIAD ``begin``, DARHT's
# curriculum) at the same *fraction* of the run as in the papers (floats in
# (0, 1) below are fractions of the number of epochs).
SHORT_RUN = {
    "kd": {"reduction": "batchmean"},
    "ard": {"temperature": 1.0, "reduction": "batchmean"},
    "iad": {"begin": 60 / 200},
    "rslad": {"scale": 1.0},
    "mtard": {"scale": 1.0, "weight_lr_decay_epochs": ()},
    "kdiga": {"reduction": "batchmean"},
    "kdiga_ard": {"reduction": "batchmean"},
    "adaad": {"reduction": "batchmean"},
    "adaiad": {"temperature": 1.0, "begin": 60 / 200},
    "darht": {"kd_start_epoch": 50 / 350, "ce_stop_epoch": 118 / 350},
}
_EPOCH_FIELDS = ("begin", "kd_start_epoch", "ce_stop_epoch")

# Target numbers (methods.md section 9). ``None`` = not reported.
# Columns: clean, FGSM, PGD-20, C&W, AA.
METRICS = ("clean", "fgsm", "pgd20", "cw", "aa")
TARGETS: list[dict[str, Any]] = []


def _add(dataset, student, teacher, method, igdm, values, source):
  values = tuple(values) + (None,) * (5 - len(values))
  TARGETS.append({"dataset": dataset, "student": student, "teacher": teacher,
                  "method": method, "igdm": igdm, "source": source,
                  **dict(zip(METRICS, values))})


def _cap(clean, pgd20, aa):
  """A Clean / PGD-20 / AA row (IGDM Tab. 10, 11)."""
  return (clean, None, pgd20, None, aa)


# 9.1 CIFAR-100, ResNet-18 [P:IGDM Tab.2]: (method, igdm) -> (BDM-AT, LTD).
_TAB2 = {
    ("pgd_at", False): ((55.80, 23.51, 19.88, 20.46, 18.86), (55.80, 23.51, 19.88, 20.46, 18.86)),
    ("pgd_at", True): ((60.83, 38.11, 35.09, 30.21, 29.16), (60.49, 37.22, 33.72, 29.61, 28.02)),
    ("trades", False): ((53.56, 29.85, 25.85, 23.32, 22.02), (53.56, 29.85, 25.85, 23.92, 22.02)),
    ("trades", True): ((60.88, 36.26, 32.26, 26.50, 25.50), (59.29, 36.08, 32.08, 26.10, 26.10)),
    ("ard", False): ((61.51, 34.23, 30.23, 26.97, 24.77), (61.34, 35.19, 31.19, 27.74, 25.74)),
    ("ard", True): ((61.62, 39.75, 35.75, 30.99, 28.79), (61.58, 37.45, 33.45, 29.94, 27.84)),
    ("iad", False): ((59.92, 35.47, 31.47, 26.91, 25.15), (60.12, 36.91, 32.91, 28.29, 26.29)),
    ("iad", True): ((62.99, 37.32, 34.76, 29.55, 27.76), (62.73, 37.69, 33.69, 29.65, 27.49)),
    ("akd", False): ((60.27, 35.38, 31.38, 26.29, 25.09), (60.46, 35.53, 31.53, 27.29, 25.37)),
    ("akd", True): ((60.42, 37.63, 33.62, 29.27, 28.86), (60.31, 38.15, 34.15, 29.44, 28.44)),
    ("rslad", False): ((60.22, 36.16, 32.16, 27.96, 26.76), (60.01, 36.39, 32.39, 28.94, 26.94)),
    ("rslad", True): ((62.06, 39.67, 35.67, 30.98, 29.78), (60.43, 38.02, 34.02, 29.94, 28.51)),
    ("adaad", False): ((64.43, 37.33, 33.21, 29.53, 28.06), (63.34, 37.39, 33.39, 29.73, 27.81)),
    ("adaiad", False): ((64.13, 37.33, 33.33, 29.02, 27.82), (63.24, 37.45, 33.45, 29.04, 27.83)),
    ("adaad", True): ((64.44, 39.31, 36.19, 31.75, 30.32), (63.44, 38.23, 34.23, 31.09, 28.87)),
}
for (_m, _g), (_bdm, _ltd) in _TAB2.items():
  _add("cifar100", "resnet18", "bdm", _m, _g, _bdm, "IGDM Tab.2")
  _add("cifar100", "resnet18", "ltd", _m, _g, _ltd, "IGDM Tab.2")
_add("cifar100", "resnet18", "ikl", "adaad", False, (65.36, None, None, None, 26.89), "IGDM Tab.12")
_add("cifar100", "resnet18", "ikl", "adaad", True, (66.00, None, None, None, 29.22), "IGDM Tab.12")

# 9.2 CIFAR-10, ResNet-18, LTD WRN-34-10 [P:IGDM Tab.3]: (method) -> (base, +IGDM).
_TAB3 = {
    "pgd_at": ((84.52, 52.42, 42.80, 42.98, 41.12), (84.15, 59.21, 53.70, 51.19, 49.63)),
    "trades": ((82.46, 56.97, 49.13, 47.98, 47.09), (83.50, 60.84, 54.64, 49.34, 48.83)),
    "ard": ((85.04, 60.31, 53.27, 50.27, 49.49), (85.18, 61.24, 54.75, 51.31, 50.20)),
    "iad": ((84.33, 61.21, 54.24, 50.97, 50.09), (84.49, 62.45, 56.55, 53.01, 51.09)),
    "akd": ((85.10, 59.07, 51.53, 49.13, 48.04), (84.94, 61.36, 54.89, 51.55, 50.87)),
    "rslad": ((83.59, 60.97, 55.98, 53.15, 52.13), (83.67, 62.41, 57.34, 54.00, 53.10)),
    "adaad": ((84.74, 61.87, 56.78, 53.51, 52.79), (84.83, 62.54, 57.61, 55.09, 54.02)),
    "adaiad": ((84.75, 61.98, 57.04, 53.57, 52.88), None),
}
for _m, (_base, _ig) in _TAB3.items():
  _add("cifar10", "resnet18", "ltd", _m, False, _base, "IGDM Tab.3")
  if _ig is not None:
    _add("cifar10", "resnet18", "ltd", _m, True, _ig, "IGDM Tab.3")
_add("cifar10", "resnet18", "ikl", "adaad", False, (86.59, None, None, None, 50.86), "IGDM Tab.13")
_add("cifar10", "resnet18", "ikl", "adaad", True, (86.10, None, None, None, 51.29), "IGDM Tab.13")
# CIFAR-10 with the LTD WRN-34-20 teacher: IGDM Tab. 7 (same setup as the AdaAD
# paper) and the AdaAD paper's own numbers as quoted there.
_add("cifar10", "resnet18", "ltd2", "adaad", False, (85.47, None, None, None, 52.47),
     "IGDM Tab.7 (re-run)")
_add("cifar10", "resnet18", "ltd2", "adaad", True, (85.50, None, None, None, 53.45), "IGDM Tab.7")
_add("cifar10", "resnet18", "ltd2", "adaad", False, (85.58, None, None, None, 51.37),
     "AdaAD paper, IGDM Tab.7")
_add("cifar10", "resnet18", "ltd2", "adaiad", False, (85.04, None, None, None, 52.96),
     "AdaAD paper, IGDM Tab.7")
_add("cifar100", "resnet18", "ltd", "adaad", False, (62.19, None, None, None, 26.74),
     "AdaAD paper, IGDM Tab.7")
_add("cifar100", "resnet18", "ltd", "adaiad", False, (62.49, None, None, None, 27.98),
     "AdaAD paper, IGDM Tab.7")

# 9.3 MobileNetV2 [P:IGDM Tab.10 (C-100), Tab.11 (C-10)]: Clean / PGD-20 / AA,
# columns C-100 BDM, C-100 LTD, C-10 BDM, C-10 LTD.
_TAB10_11 = {
    ("pgd_at", False): ((59.23, 24.04, 21.58), (59.23, 24.04, 21.58),
                        (83.52, 44.47, 41.19), (83.52, 44.47, 41.19)),
    ("pgd_at", True): ((59.52, 32.88, 27.28), (59.70, 32.59, 27.14),
                       (82.78, 51.54, 47.13), (81.73, 52.63, 48.51)),
    ("trades", False): ((51.05, 24.83, 20.62), (51.05, 24.83, 20.62),
                        (81.57, 50.49, 46.88), (81.57, 50.49, 46.88)),
    ("trades", True): ((57.80, 29.47, 22.05), (56.81, 29.87, 23.38),
                       (82.33, 52.94, 47.70), (81.82, 52.96, 47.47)),
    ("ard", False): ((60.74, 29.92, 24.33), (60.55, 30.82, 25.28),
                     (84.38, 48.26, 44.02), (84.18, 52.16, 48.11)),
    ("ard", True): ((60.83, 33.55, 27.50), (60.44, 33.36, 27.59),
                    (84.53, 52.45, 45.06), (84.25, 54.03, 49.53)),
    ("iad", False): ((56.35, 28.96, 23.43), (56.11, 29.55, 24.22),
                     (83.79, 48.36, 44.02), (83.38, 52.71, 48.45)),
    ("iad", True): ((57.65, 31.97, 25.60), (58.60, 31.36, 25.64),
                    (84.27, 52.42, 45.08), (83.65, 54.57, 50.14)),
    ("akd", False): ((60.84, 29.37, 24.22), (60.65, 29.84, 24.85),
                     (83.75, 47.15, 43.43), (84.46, 50.84, 46.96)),
    ("akd", True): ((60.39, 33.62, 28.04), (59.94, 33.70, 28.12),
                    (83.29, 53.29, 48.41), (83.98, 54.40, 49.99)),
    ("rslad", False): ((61.29, 31.74, 26.18), (60.43, 32.37, 26.85),
                       (84.69, 50.94, 47.38), (82.60, 54.55, 50.44)),
    ("rslad", True): ((61.48, 35.22, 29.32), (60.36, 33.99, 28.00),
                      (84.64, 52.33, 49.27), (82.61, 55.02, 51.01)),
    ("adaad", False): ((61.89, 29.54, 23.80), (61.43, 30.58, 25.03),
                       (84.51, 50.67, 46.56), (84.24, 55.47, 51.36)),
    ("adaiad", False): ((60.83, 29.94, 23.83), (61.22, 30.78, 25.22),
                        (85.04, 51.33, 47.62), (84.14, 55.58, 51.48)),
    ("adaad", True): ((61.43, 33.51, 27.43), (61.57, 33.14, 27.65),
                      (84.75, 52.35, 48.34), (84.27, 56.15, 52.15)),
}
for (_m, _g), _cols in _TAB10_11.items():
  for (_d, _t_key, _src), _v in zip((("cifar100", "bdm", "IGDM Tab.10"),
                                     ("cifar100", "ltd", "IGDM Tab.10"),
                                     ("cifar10", "bdm", "IGDM Tab.11"),
                                     ("cifar10", "ltd", "IGDM Tab.11")), _cols):
    _add(_d, "mobilenet_v2", _t_key, _m, _g, _cap(*_v), _src)


# ----------------------------------------------------------------------------
# Lookups.
# ----------------------------------------------------------------------------

def choice(name: str, value: Any, valid: Iterable[Any]) -> Any:
  """``value`` if it is one of ``valid``, else a ValueError listing them."""
  valid = list(valid)
  if value not in valid:
    raise ValueError(f"Invalid {name}={value!r}; valid: {', '.join(map(str, valid))}.")
  return value


def teacher(dataset: str, key: str) -> dict[str, Any]:
  """The teacher record ``TEACHERS[dataset][key]`` (a copy)."""
  choice("dataset", dataset, TEACHERS)
  choice(f"teacher for {dataset}", key, TEACHERS[dataset])
  rec = dict(TEACHERS[dataset][key])
  rec["kwargs"] = dict(rec["kwargs"])
  return rec


def adversarial_teacher(dataset: str, key: str) -> dict[str, Any]:
  """:func:`teacher`, restricted to the adversarially trained teachers of ``dataset``."""
  choice("dataset", dataset, TEACHERS)
  valid = [k for k, v in TEACHERS[dataset].items() if v["role"] == "adversarial"]
  choice(f"adversarial teacher for {dataset}", key, valid)
  return teacher(dataset, key)


def igdm_alpha(student: str, dataset: str, teacher_key: str, base: str) -> float:
  """IGDM's alpha for the setting (IGDM App. B.2); AdaIAD uses AdaAD's column."""
  base = "adaad" if base == "adaiad" else base
  key = (student, dataset, teacher_key, base)
  if key not in IGDM_ALPHA:
    valid = sorted({k[:3] for k in IGDM_ALPHA})
    raise ValueError(
        f"IGDM App. B.2 gives no alpha for (student, dataset, teacher, base) = {key}; "
        f"bases: {', '.join(IGDM_BASES)}; (student, dataset, teacher) settings: "
        + "; ".join("/".join(v) for v in valid)
        + ". Pass igdm_alpha=<value> to choose one.")
  return IGDM_ALPHA[key]


def recipe(method: str, protocol: str = "official") -> dict[str, Any]:
  """The training recipe ``RECIPES[(method, protocol)]`` (a copy)."""
  key = (method, protocol)
  if key not in RECIPES:
    raise ValueError(f"No recipe for (method, protocol) = {key}; valid: "
                     + ", ".join(f"{m}/{p}" for m, p in RECIPES) + ".")
  rec = dict(RECIPES[key])
  rec["attack"] = dict(rec["attack"]) if rec["attack"] else None
  return rec


def targets(dataset: str, student: str, teacher_key: str, method: str,
            igdm: bool = False) -> list[dict[str, Any]]:
  """The papers' numbers for one setting (possibly none: not every setting was published)."""
  choice("dataset", dataset, DATASETS)
  return [t for t in TARGETS
          if (t["dataset"], t["student"], t["teacher"], t["method"], t["igdm"])
          == (dataset, student, teacher_key, method, bool(igdm))]


def format_target(t: dict[str, Any]) -> str:
  """``'64.43 / 37.33 / 33.21 / 29.53 / 28.06'`` with ``-`` for unreported metrics."""
  return " / ".join("-" if t[m] is None else f"{t[m]:.2f}" for m in METRICS)


def short_run_hparams(method: str, epochs: int) -> dict[str, Any]:
  """:data:`SHORT_RUN` overrides of ``method`` with epoch fractions turned into epochs."""
  out = dict(SHORT_RUN.get(method, {}))
  for k in _EPOCH_FIELDS:
    if k in out:
      out[k] = max(1, round(out[k] * epochs))
  return out


def arg_strings(**axes: Iterable[Any]) -> list[str]:
  """``'k1=v1,k2=v2,...'`` for every combination of the axes' values (for ``arg_combinations``).

  The keyword order is the order of the keys in each string; the last axis
  varies fastest (``itertools.product``). Booleans are written ``0`` / ``1``,
  as ``config_lib.parse_arg`` reads them.
  """
  def fmt(v):
    return str(int(v)) if isinstance(v, bool) else str(v)
  names = list(axes)
  return [",".join(f"{k}={fmt(v)}" for k, v in zip(names, values))
          for values in itertools.product(*axes.values())]


# ----------------------------------------------------------------------------
# Config builders: the code every config file would otherwise repeat.
# ----------------------------------------------------------------------------

def parse_arg(arg: str | None, valid: dict[str, Iterable[Any]] | None = None,
              **defaults: Any) -> mlc.ConfigDict:
  """``config_lib.parse_arg(arg, **defaults)``, then :func:`choice` checks.

  Checked in this order: each ``valid[name]``, then ``dataset`` against
  :data:`DATASETS` and ``student`` against :data:`STUDENTS` when they are
  arguments, so a wrong value fails with the list of valid ones before any
  lookup.
  """
  a = config_lib.parse_arg(arg, **defaults)
  checks = dict(valid or {})
  for name, values in (("dataset", DATASETS), ("student", STUDENTS)):
    if name in defaults:
      checks.setdefault(name, values)
  for name, values in checks.items():
    choice(name, a[name], values)
  return a


# The configs that run a distillation method under IGDM's protocol or its
# official one, optionally plus IGDM (configs/cifar_ard.py, cifar_iad.py,
# cifar_rslad.py) share their arguments.
PROTOCOLS = ("igdm", "official")
IGDM_TEACHERS = ("ltd", "bdm", "ikl")  # IGDM's tables; any adversarial teacher is accepted


def protocol_arg(arg: str | None, teacher: str = "ltd") -> mlc.ConfigDict:
  """The arguments of a protocol config, checked (:func:`parse_arg`).

  ``protocol=igdm|official``, ``dataset``, ``student``, ``teacher``,
  ``igdm=0|1``, ``igdm_alpha`` (0: IGDM App. B.2) and ``teacher_path``.
  Defaults: IGDM protocol, CIFAR-10, ResNet-18, ``teacher`` (empty: the
  config picks one per protocol), no IGDM.
  """
  return parse_arg(arg, {"protocol": PROTOCOLS}, protocol="igdm", dataset="cifar10",
                   student="resnet18", teacher=teacher, igdm=False, igdm_alpha=0.0,
                   teacher_path="")


def protocol_arg_strings(protocols: Iterable[str] = PROTOCOLS) -> list[str]:
  """Every (protocol, dataset, student, IGDM teacher, igdm) setting of :func:`protocol_arg`."""
  return arg_strings(protocol=tuple(protocols), dataset=DATASETS, student=STUDENTS,
                     teacher=IGDM_TEACHERS, igdm=(False, True))


def teacher_entry(rec: dict[str, Any], path: str = "") -> dict[str, Any]:
  """The ``config.teachers`` entry of a :data:`TEACHERS` record.

  ``path`` (a ``teacher_path=`` argument) replaces the record's RobustBench
  file; the architecture, class count and layout kwargs stay the record's, so
  a ``.pt`` in the same layout converts the same way.
  """
  return config_lib.teacher_config(path or rec["file"], model=rec["arch"],
                                   num_classes=rec["num_classes"], **rec["kwargs"])


def igdm_weight(a: Any, base: str, teacher_key: str | None = None) -> float:
  """IGDM's alpha for the parsed arguments ``a`` (0.0 when ``a.igdm`` is off).

  ``a.igdm_alpha`` when given (non-zero), else :func:`igdm_alpha` of
  ``(a.student, a.dataset, teacher_key or a.teacher, base)``: IGDM App. B.2.
  """
  if not a.igdm:
    return 0.0
  return a.igdm_alpha or igdm_alpha(a.student, a.dataset, teacher_key or a.teacher, base)


def one_teacher_config(a: Any, rec: dict[str, Any], method: Any,
                       t: dict[str, Any]) -> mlc.ConfigDict:
  """:func:`cifar_config` of a single-teacher distillation: ``a.student`` learns from ``t``.

  ``a`` holds the parsed ``dataset``, ``student`` and ``teacher_path``
  arguments; ``t`` is a :data:`TEACHERS` record (``teacher_path`` replaces its
  file), the one ``config.teachers`` entry is named ``teacher``.
  """
  return cifar_config(a.dataset, a.student, rec, method,
                      teachers={"teacher": teacher_entry(t, a.teacher_path)})


def cifar_config(dataset: str, model: str, rec: dict[str, Any], method: Any, *,
                 teachers: dict[str, Any] | None = None,
                 model_kwargs: dict[str, Any] | None = None) -> mlc.ConfigDict:
  """A full-size CIFAR run of the recipe ``rec`` (a :func:`recipe` record).

  What every CIFAR config shares: ``rec``'s epochs, batch size, weight decay
  and lr-decay epochs; SGD lr 0.1, momentum 0.9, piecewise schedule (x0.1 at
  each decay epoch); raw [0, 1] pixels (``model.normalize = False``, as the
  official codes feed them); eval batch 400 (divides the 10,000 test images
  and any 1, 2, 4, 8 or 16 devices); PGD-20 at 8/255 every 5 epochs; a log line
  every 100 steps. ``method`` is the ``config.method`` block, ``teachers`` the
  ``config.teachers`` entries (None: none), ``model_kwargs`` the student's.
  """
  c = config_lib.base_config()
  c.num_epochs = rec["epochs"]
  c.data.name = dataset
  c.data.batch_size = rec["batch_size"][dataset]
  c.data.eval_batch_size = 400
  c.model.name = model
  c.model.normalize = False
  if model_kwargs is not None:
    c.model.kwargs = model_kwargs
  c.method = method
  if teachers is not None:
    c.teachers = teachers
  c.optim.lr = 0.1
  c.optim.weight_decay = rec["weight_decay"]
  c.optim.schedule = "piecewise"
  c.optim.decay_epochs = rec["decay_epochs"]
  c.eval.eps = 8 / 255
  c.eval.every_epochs = 5
  c.log_every_steps = 100
  return c


# The CPU-sized runs' data: scikit-learn's 8x8 digits (1,437 train / 360 test,
# eval batch 120 = 360 / 3) and the real CIFAR-10 subset (5,085 / 1,017, eval
# batch 339 = 1,017 / 3: no padding needed), each with its log cadence.
CPU_DATA = {
    "digits": {"name": "digits", "batch_size": 64, "eval_batch_size": 120,
               "log_every_steps": 20},
    "cifar10_subset": {"name": "cifar10", "batch_size": 128, "eval_batch_size": 339,
                       "log_every_steps": 10},
}


def cpu_config(data: str, model: str, method: Any, *, epochs: int, eps: float,
               data_dir: str = "", teachers: dict[str, Any] | None = None,
               model_kwargs: dict[str, Any] | None = None) -> mlc.ConfigDict:
  """A run of minutes on a CPU (configs/quickstart*.py, digits_distill.py, the subset configs).

  ``data`` is a key of :data:`CPU_DATA` (``data_dir`` where it was prepared,
  empty: the default); seed 0, SGD lr 0.05, momentum 0.9, weight decay 5e-4,
  cosine schedule over ``epochs``; PGD-20 at ``eps`` every 5 epochs.
  ``method``, ``teachers`` and ``model_kwargs`` as in :func:`cifar_config`.
  """
  d = CPU_DATA[data]
  c = config_lib.base_config()
  c.seed = 0
  c.num_epochs = epochs
  c.data.name = d["name"]
  if data_dir:
    c.data.data_dir = data_dir
  c.data.batch_size = d["batch_size"]
  c.data.eval_batch_size = d["eval_batch_size"]
  c.model.name = model
  if model_kwargs is not None:
    c.model.kwargs = model_kwargs
  c.method = method
  if teachers is not None:
    c.teachers = teachers
  c.optim.lr = 0.05
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "cosine"
  c.eval.eps = eps
  c.eval.every_epochs = 5
  c.log_every_steps = d["log_every_steps"]
  return c

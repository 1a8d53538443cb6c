"""The papers' settings as plain data (teachers, IGDM alphas, recipes, targets); config builders.

Not a config file: every config in ``configs/`` reads it (``import
paper_settings``, with this directory on ``sys.path``). Every number carries
its source; the tags are
(``[P:IGDM Tab.2]`` = IGDM paper, ``[C:<repo>]`` = official code,
``RobustBench`` = ``model_info`` JSON).

* :data:`TEACHERS` ``[dataset][key]``: RobustBench id, architecture in our
  zoo (``kdrobust.models`` name + model kwargs for the PyTorch layout),
  expected file, RobustBench clean / AA (and IGDM Tab. 1 clean / PGD / AA).
* :data:`IGDM_ALPHA` ``[(student, dataset, teacher, base)]``: IGDM's weight
  alpha before the ``t / E`` ramp (IGDM App. B.2, docs/fidelity.md, IGDM).
* :data:`RECIPES` ``[(method, protocol)]``: epochs, lr decay epochs, weight
  decay, batch size, inner attack.
* :data:`TARGETS`: the papers' numbers (paper_settings.TARGETS), one record per
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
# IGDM's other two settings (IGDM App. B.1-B.2; configs/igdm_datasets.py).
MORE_DATASETS = ("svhn_cropped", "tiny_imagenet")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn_cropped": 10, "tiny_imagenet": 200}

# Channel statistics the DeepMind-layout (``variant='dm'``) RobustBench models
# normalise with inside the model (``CIFAR10_MEAN`` etc. of RobustBench's
# dm_wide_resnet.py; identical to kdrobust.models.DATASET_STATS).
_C10 = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2471, 0.2435, 0.2616)}
_C100 = {"mean": (0.5071, 0.4865, 0.4409), "std": (0.2673, 0.2564, 0.2762)}


def _t(rb_id, dataset, arch, kwargs, name, rb, *, igdm_tab1=None, role="adversarial",
       note="", file=""):
  return {"robustbench_id": rb_id, "dataset": dataset, "arch": arch, "kwargs": kwargs,
          "name": name, "robustbench_clean_aa": rb, "igdm_tab1_clean_pgd_aa": igdm_tab1,
          "role": role, "note": note, "num_classes": NUM_CLASSES[dataset],
          "file": file or f"teachers/{dataset}/Linf/{rb_id}.pt"}


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
def _igdm_teachers(dataset, stats, ltd, bdm, ikl):
  """IGDM Tab. 1's three CIFAR teachers; each argument: (RobustBench clean/AA, IGDM Tab. 1)."""
  dm = {"variant": "dm", "activation": "swish", **stats}
  return {
      "ltd": _t("Chen2021LTD_WRN34_10", dataset, "wrn34_10", {"variant": "standard"},
                "LTD WRN-34-10", ltd[0], igdm_tab1=ltd[1]),
      "bdm": _t("Wang2023Better_WRN-28-10", dataset, "wrn28_10", dm,
                "BDM-AT WRN-28-10 (Wang et al. 2023, 50M generated images)", bdm[0],
                igdm_tab1=bdm[1]),
      "ikl": _t("Cui2023Decoupled_WRN-28-10", dataset, "wrn28_10", dict(dm),
                "IKL-AT WRN-28-10 (Cui et al. 2023)", ikl[0], igdm_tab1=ikl[1]),
  }


def _wrn34_10(dataset, name, igdm_tab1, file, note):
  """A non-RobustBench TRADES-layout WRN-34-10 adversarial teacher of IGDM Tab. 1."""
  return _t(None, dataset, "wrn34_10", {"variant": "standard"}, name, None,
            igdm_tab1=igdm_tab1, file=file, note=note)


TEACHERS: dict[str, dict[str, dict[str, Any]]] = {
    "cifar10": {
        **_igdm_teachers("cifar10", _C10, ltd=((85.21, 56.94), (85.21, 60.89, 56.94)),
                         bdm=((92.44, 67.31), (92.44, 70.63, 67.31)),
                         ikl=((92.16, 67.73), (92.16, 71.09, 67.73))),
        "ltd2": _t("Chen2021LTD_WRN34_20", "cifar10", "wrn34_20", {"variant": "standard"},
                   "LTD WRN-34-20 (AdaAD's CIFAR-10 teacher, IGDM's 'LTD2')", (86.03, 57.71)),
        "trades": _t("Zhang2019Theoretically", "cifar10", "wrn34_10", {"variant": "standard"},
                     "TRADES WRN-34-10 (ARD/RSLAD/MTARD/KDIGA teacher, model_cifar_wrn.pt)",
                     (84.92, 53.08), note="RobustBench evaluates it at eps 0.031"),
        "standard": _t("Standard", "cifar10", "wrn28_10", {"variant": "standard"},
                       "naturally trained WRN-28-10 (RobustBench 'Standard')", (94.78, 0.0),
                       role="natural",
                       note="clean/AA from the RobustBench leaderboard, not a paper"),
        # E6: MTARD's README links the authors' clean-trained teacher, loaded
        # as ``wideresnet()`` = WRN-34-10 in the TRADES layout
        # (mtard/cifar10_models/wideresnet.py; its unused sub_block1 is dropped
        # by the converter). Download it to ``file`` or pass natural_path.
        "mtard_natural": _t(None, "cifar10", "wrn34_10", {"variant": "standard"},
                            "MTARD's released clean WRN-34-10 (the authors' natural teacher)",
                            None, role="natural",
                            file="teachers/cifar10/mtard_natural_wrn34_10.pt",
                            note="MTARD README's clean-teacher checkpoint"),
        # SAAD's teachers (HongsinLee/saad@295121c main.sh, utils.py:207-211; loaded by
        # RobustBench name) [C:RobustBench@78fcc9e:model_zoo/cifar10.py] (DMWideResNet,
        # Swish / SiLU).
        "gowal21": _t("Gowal2021Improving_28_10_ddpm_100m", "cifar10", "wrn28_10",
                      {"variant": "dm", "activation": "swish", **_C10},
                      "Gowal2021 WRN-28-10 (100M DDPM images; SAAD main.sh)", (87.50, 63.44)),
        "bartoldson": _t("Bartoldson2024Adversarial_WRN-94-16", "cifar10", "wrn",
                         {"variant": "dm", "activation": "swish", **_C10, "depth": 94,
                          "width": 16},
                         "Bartoldson2024 WRN-94-16 (SAAD's alternative teacher)",
                         (93.68, 73.71)),
    },
    "cifar100": {
        **_igdm_teachers("cifar100", _C100, ltd=((64.07, 30.59), (64.07, 36.61, 30.57)),
                         bdm=((72.58, 38.83), (72.58, 44.24, 38.83)),
                         ikl=((73.85, 39.18), (73.80, 44.14, 39.18))),
        "gowal70": _t("Gowal2020Uncovering", "cifar100", "wrn70_16",
                      {"variant": "dm", "activation": "swish", **_C100},
                      "DeepMind WRN-70-16 without extra data (RSLAD/MTARD/DARHT teacher, "
                      "cifar100_linf_wrn70-16_without.pt)", (60.86, 30.03),
                      note=("RSLAD's CIFAR-100 script builds it with CIFAR-10's mean/std and "
                            "calls teacher.half() on float32 inputs, so it cannot run as "
                            "released; kdrobust uses CIFAR-100's statistics, as RobustBench "
                            "and DeepMind do")),
    },
    # IGDM Tab. 1's other teachers; neither is public (no RobustBench id).
    # SVHN: IGDM's own PGD-AT WRN-34-10. CHOICE: train it with kdrobust
    # (configs/igdm_datasets.py:dataset=svhn_cropped,method=pgd_at,igdm=0,
    # student=wrn34_10, into this run directory), or pass a TRADES-layout
    # WideResNet .pt as teacher_path.
    "svhn_cropped": {
        "pgdat": _wrn34_10("svhn_cropped", "PGD-AT WRN-34-10 (IGDM's own SVHN teacher)",
                           (93.90, 61.78, 54.28), "runs/svhn_cropped_pgd_at_wrn34_10",
                           "no public checkpoint: a kdrobust run of configs/igdm_datasets.py"),
    },
    # Tiny ImageNet: RiFT (Zhu et al. 2023) WRN-34-10, supplied by the user.
    # UNCONFIRMED: its PyTorch layout; we assume the TRADES-style WideResNet
    # (raw [0, 1] inputs, global average pooling, 200 classes), labels in
    # torchvision ImageFolder order (sorted wnids = data.name 'tiny_imagenet').
    # The step-0 teacher check (config.teacher_eval_examples) shows a wrong
    # layout or class order as a far-off clean accuracy (IGDM Tab. 1: 52.54%).
    "tiny_imagenet": {
        "rift": _wrn34_10("tiny_imagenet", "RiFT WRN-34-10 (Zhu et al. 2023)",
                          (52.54, 25.52, 21.78), "teachers/tiny_imagenet/rift_wrn34_10.pt",
                          "no public checkpoint known: supply it"),
    },
}

# DARHT's CIFAR-100 teacher set (K = 4, slot order of the released script,
# docs/fidelity.md, DARHT): the WRN-70-16 above plus three ViTs trained with FAT
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

# IGDM alpha (before the linear ramp t / E), IGDM App. B.2 (docs/fidelity.md, IGDM).
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

# Training recipes, one per (method, protocol). All: SGD, lr 0.1, momentum
# 0.9, coupled L2 weight decay, pad-4 crop + flip, raw [0, 1] inputs.
# Epochs are 0-indexed here: lr x0.1 from each of ``decay_epochs`` on (the
# *effective* schedule of the code, which is not always the one its arguments
# name: see E1, E8), or, with ``lr_table = (epochs, factors)``, lr x factors[i]
# from epochs[i] on (E9). ``batch_size`` per dataset; ``attack`` = the inner
# maximisation (None: none; ``bn_mode`` 'train' = PyTorch ``net.train()``
# during the attack, E2); ``weight_decay`` of the base run and
# ``igdm_weight_decay`` of a run with the IGDM term (they differ where IGDM's
# scripts do); ``student`` and ``teacher`` (per dataset) are the protocol's
# defaults; ``source`` the code it was read from (file:line); ``notes`` where
# the paper's text, or another reading, differs. Protocols:
#
# * ``official``: each method's own released code, *as it runs*;
# * ``igdm``: IGDM's re-runs (the numbers of paper_settings.TARGETS), as IGDM's
#   code (Xavaitron/VLM_Distillation@a22ed64, ICLR_IGDM/) runs them;
# * ``kdrobust``: our choice where no code exists.
_EPS, _STEP = 8 / 255, 2 / 255
# ``paper``: a paper's text where it differs from its code or has none (SAAD, CGARD).
PROTOCOL_ORDER = ("igdm", "official", "kdrobust", "paper")


def _attack(init, eps=_EPS, step=_STEP, steps=10, bn_mode="eval"):
  return {"eps": eps, "step_size": step, "steps": steps, "init": init, "bn_mode": bn_mode}


def _r(epochs, decay, wd, batch, attack, source, *, igdm_wd=None, lr_table=None,
       student="resnet18", teacher="ltd", notes=""):
  if isinstance(batch, int):
    batch = dict.fromkeys(NUM_CLASSES, batch)
  if isinstance(teacher, str):
    teacher = dict.fromkeys(NUM_CLASSES, teacher)
  return {"epochs": epochs, "decay_epochs": tuple(decay), "weight_decay": wd,
          "igdm_weight_decay": wd if igdm_wd is None else igdm_wd, "lr_table": lr_table,
          "batch_size": batch, "attack": attack, "source": source, "student": student,
          "teacher": teacher, "notes": notes}


# E1 (docs/fidelity.md errata): ARD, IAD-I, KDIGA and KD's ``adjust_learning_rate``
# multiplies a *local* copy of the unchanged ``args.lr``, so their "decay at
# 150" sets 0.01 again: 0.1 for epochs 0-99, then 0.01 to the end.
_E1 = ("the code's lr_schedule [100, 150] decays a local copy of args.lr, so epoch 150 "
       "re-sets 0.01 (docs/fidelity.md erratum E1): effective lr 0.1 for epochs 0-99, 0.01 for 100-199")
# E2: their AttackPGD runs the student in train mode (batch statistics and
# running-statistic updates at every attack forward) from x + U[-eps, eps]
# without a clip before the first step.
_E2 = ("attack in net.train() mode: every forward uses batch statistics and updates the "
       "running statistics (docs/fidelity.md erratum E2); start x + U[-eps, eps] not clipped before the "
       "first step")
_TRAIN_ATTACK = dict(init="uniform_unclipped", bn_mode="train")
_KDIGA_BATCH = {**dict.fromkeys(NUM_CLASSES, 128), "cifar100": 256}
_KDIGA_TEACHER = {**dict.fromkeys(NUM_CLASSES, "trades"), "cifar100": "ltd"}

# E3: IGDM's code runs weight decay 2e-4 (``args.py:22`` default, passed as
# ``args.wd`` by the IGDM scripts, not overridden by ``cifar100.sh``); the
# paper text says 5e-4. The protocol follows the code. Exception in the same
# code: the AdaAD *baseline* script ``adaad_cifar100.py:73`` hard-codes 5e-4
# (its IGDM variant uses args.wd = 2e-4); ``ard_cifar100.py:72`` hard-codes
# 2e-4; ``rslad_cifar100.py`` passes args.wd.
IGDM_WEIGHT_DECAY = 2e-4
_IGDM_WD_NOTE = "IGDM's paper text: weight decay 5e-4 (App. B.1); its code: 2e-4 (E3)"
_IGDM = "[C:IGDM@a22ed64:ICLR_IGDM/"
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    # ---- IGDM protocol (IGDM's code; PGD-AT, TRADES and IAD have no script in
    # the snapshot: IGDM App. B.1 with the code's args.py weight decay).
    ("pgd_at", "igdm"): _r(200, (100, 150), IGDM_WEIGHT_DECAY, 128, _attack("uniform"),
                           "[P:IGDM App.B.1], " + _IGDM + "args.py:22]", notes=_IGDM_WD_NOTE),
    ("trades", "igdm"): _r(200, (100, 150), IGDM_WEIGHT_DECAY, 128, _attack("gaussian"),
                           "[P:IGDM App.B.1 eq.15], [C:TRADES@6e8e11b:trades.py] (beta 6), "
                           + _IGDM + "args.py:22]", notes=_IGDM_WD_NOTE),
    # ard_cifar100.py / ard_IGDM_cifar100.py call attacks.PGD with its default
    # step alpha=2/225 (attacks.py:93), the paper says 2/255: the code wins.
    ("ard", "igdm"): _r(200, (100, 150), IGDM_WEIGHT_DECAY, 128,
                        _attack("uniform", step=2 / 225),
                        _IGDM + "ard_cifar100.py:72,130,180; ard_IGDM_cifar100.py:71,117; "
                        "attacks.py:93]",
                        notes=_IGDM_WD_NOTE + "; inner step 2/225 in the code (attacks.py:93 "
                        "default alpha), 2/255 in the paper text"),
    ("iad", "igdm"): _r(200, (100, 150), IGDM_WEIGHT_DECAY, 128, _attack("uniform"),
                        "[P:IGDM App.B.1], " + _IGDM + "args.py:22]",
                        notes=_IGDM_WD_NOTE + "; no IAD script in IGDM's code: step 2/255 "
                        "as the paper text"),
    # E7: int(0.7 E), int(0.86 E), int(0.95 E) after 1-indexed epoch t, i.e.
    # from 0-indexed 210, 258, 285 (E = 300); the paper text: 215/260/285.
    ("rslad", "igdm"): _r(300, (210, 258, 285), IGDM_WEIGHT_DECAY, 128, _attack("gaussian"),
                          _IGDM + "rslad_cifar100.py:71,176; rslad_IGDM_cifar100.py:71,167]",
                          notes=_IGDM_WD_NOTE + "; decays after 1-indexed epochs int(0.7E), "
                          "int(0.86E), int(0.95E) = 210/258/285 in the code (E7), 215/260/285 "
                          "in the paper text"),
    # E4: AdaAD's KL is batchmean under IGDM's protocol (the config's choice).
    ("adaad", "igdm"): _r(200, (100, 150), 5e-4, 128, _attack("gaussian"),
                          _IGDM + "adaad_cifar100.py:73,137; adaad_IGDM_cifar100.py:74,142]",
                          igdm_wd=IGDM_WEIGHT_DECAY,
                          notes="weight decay 5e-4 hard-coded in IGDM's AdaAD baseline script, "
                          "2e-4 (args.wd) in its AdaAD+IGDM script; the paper text: 5e-4 "
                          "for both (E3); KL batchmean (E4)"),
    # ---- Official protocols (each method's released code as it runs).
    ("ard", "official"): _r(200, (100,), 2e-4, _KDIGA_BATCH,
                            _attack(**_TRAIN_ATTACK),
                            "[C:ARD@779ade3:main.py:32-36,49,55,68-79,118,167-170]",
                            student="mobilenet_v2", teacher=_KDIGA_TEACHER,
                            notes=_E1 + "; " + _E2 + "; teacher: the README's TRADES "
                            "WRN-34-10 on CIFAR-10 (E5), none named for CIFAR-100 (CHOICE: "
                            "LTD WRN-34-10)"),
    ("iad", "official"): _r(200, (100,), 2e-4, 128, _attack(**_TRAIN_ATTACK),
                            "[C:IAD@a8091a8:IAD-I.py:49-53,76,95-106,159,224-230]",
                            notes=_E1 + "; " + _E2 + "; teacher: the code's default is an "
                            "in-house PGD-AT ResNet-18 (pre_train/AT.py; CHOICE: LTD "
                            "WRN-34-10, or teacher_path)"),
    # IAD-II.py: IAD-I's optimizer, schedule (E1) and train-mode attack; its
    # natural teacher is an in-house ResNet-18 (pre_train/ST.py).
    ("iad2", "official"): _r(200, (100,), 2e-4, 128, _attack(**_TRAIN_ATTACK),
                             "[C:IAD@a8091a8:IAD-II.py:171-197]",
                             notes=_E1 + "; " + _E2 + "; teachers: the code's defaults are "
                             "in-house PGD-AT and natural ResNet-18s (pre_train/AT.py, ST.py; "
                             "CHOICE: LTD WRN-34-10 and a kdrobust natural ResNet-18, or paths)"),
    ("rslad", "official"): _r(300, (215, 260, 285), 2e-4, 128, _attack("gaussian"),
                              "[C:RSLAD@c40e04f:resnet18_rslad_cifar10.py:37,47,81]",
                              teacher={**dict.fromkeys(NUM_CLASSES, "trades"),
                                       "cifar100": "gowal70"}),
    ("adaad", "official"): _r(200, (100, 150), 5e-4, 128, _attack("gaussian"),
                              "[C:AdaAD@9e5c6e5:main.py:58-64,113-128,341-351]",
                              teacher={**dict.fromkeys(NUM_CLASSES, "ltd2"), "cifar100": "ltd"}),
    ("mtard", "official"): _r(300, (215, 260, 285), 2e-4, 128, _attack("gaussian"),
                              "[C:MTARD@6480a1b:mtard/mtard_resnet18_cifar10.py:42,54-62,135]",
                              teacher={**dict.fromkeys(NUM_CLASSES, "trades"),
                                       "cifar100": "gowal70"}),
    ("kdiga", "official"): _r(200, (100,), 2e-4, _KDIGA_BATCH, None,
                              "[C:KDIGA@12e774f:main.py:44-48,61,67,168-196,289-292]",
                              student="mobilenet_v2", teacher=_KDIGA_TEACHER, notes=_E1),
    ("kdiga_rs", "official"): _r(200, (100,), 2e-4, _KDIGA_BATCH, None,
                                 "[C:KDIGA@12e774f:main.py:168-173,289-292]",
                                 student="mobilenet_v2", teacher=_KDIGA_TEACHER, notes=_E1),
    ("kdiga_ard", "official"): _r(200, (100,), 2e-4, _KDIGA_BATCH,
                                  _attack(step=1.6 / 255, **_TRAIN_ATTACK),
                                  "[C:KDIGA@12e774f:main.py:38,81-92,197-224,289-292] "
                                  "(step 16/255/10)",
                                  student="mobilenet_v2", teacher=_KDIGA_TEACHER,
                                  notes=_E1 + "; " + _E2),
    ("kd", "official"): _r(200, (100,), 2e-4, _KDIGA_BATCH, None,
                           "[C:KDIGA@12e774f:main.py:154-167,289-292] (distill_method='kd')",
                           student="mobilenet_v2", teacher=_KDIGA_TEACHER, notes=_E1),
    # E9: DARHT_CIFAR_100_stateful_MWU.py builds MultiStepLR([115, 160, 185])
    # and then WarmUpLR, whose constructor's initial step sets lr = 0.1 * 0 /
    # iters = 0 (it is never stepped again); ``train_scheduler.step(epoch)`` is
    # called after training epoch e only for e > 1 and (deprecated epoch
    # argument) sets lr = 0.1 * 0.1^bisect_right(milestones, e) for epoch
    # e + 1. So epochs 0-2 run at lr 0, 3-115 at 0.1, 116-160 at 0.01, 161-185
    # at 0.001, 186- at 1e-4 (checked against torch's schedulers in
    # tests/schedules_test.py).
    ("darht", "official"): _r(350, (), 5e-4, 256,
                              _attack("gaussian", eps=0.031, step=0.003),
                              "[C:DARHT@5c0a1ff:DARHT_CIFAR_100_stateful_MWU.py:75-90,242,"
                              "330-333,390-408]",
                              lr_table=((0, 3, 116, 161, 186), (0.0, 1.0, 0.1, 0.01, 0.001)),
                              notes="nominal MultiStepLR milestones 115/160/185 and a 1-epoch "
                              "warm-up; as the code runs (E9): lr 0 for epochs 0-2 (the "
                              "never-stepped WarmUpLR's constructor sets 0), every decay one "
                              "epoch late (step(epoch) after epoch e > 1)"),
    # ---- Teacher-free baselines' own codes.
    # E11: AdaAD's Plain_Madry: start clamp(x + 0.001 N(0, I), 0, 1), attack in
    # eval mode, then an extra train-mode S(x) forward (only BN statistics).
    ("pgd_at", "official"): _r(110, (100, 105), 5e-4, 128, _attack("gaussian_clamped"),
                               "[C:AdaAD@9e5c6e5:main.py:113-128,307-324; AT_helper.py:51-85] "
                               "(Plain_Madry, README: eps 8, step 2, 110 epochs)",
                               notes="start clamp(x + 0.001 N(0, I), 0, 1); an extra train-mode "
                               "forward S(x) whose only effect is a running-statistics update "
                               "(E11); argparse defaults eps 16/255, step 4/255, the README "
                               "command 8 and 2"),
    # E8: adjust_learning_rate(epoch) with 1-indexed epochs 1..76: lr 0.01 from
    # 1-indexed 75, i.e. 0-indexed 74 (and 0.001 from 89, 1e-4 from 99 when
    # trained longer). The code's eps 0.031 and step 0.007.
    ("trades", "official"): _r(76, (74, 89, 99), 2e-4, 128,
                               _attack("gaussian", eps=0.031, step=0.007),
                               "[C:TRADES@6e8e11b:train_trades_cifar10.py:20-37,137-157]",
                               notes="decay from 1-indexed epochs 75/90/100 = 0-indexed "
                               "74/89/99 (E8); eps 0.031, step 0.007 (the code)"),
    # Our choice (no paper gives it): the natural teacher of MTARD.
    ("natural", "kdrobust"): _r(200, (100, 150), 5e-4, 128, None,
                                "kdrobust choice (standard CIFAR natural training)",
                                student="wrn34_10"),
}

# ---- Issue 12's methods (docs/fidelity.md; their configs: cifar_saad.py,
# cifar_cgard.py, cifar_absld.py, cifar_fair_ard.py; B-MTARD runs MTARD's).
_SAAD_SRC = "[C:saad@295121c:saad.py:39,46,53-86,128-130; attacks.py:139-193; main.sh:1-16]"
_SAAD_SWA = ("SWA of the student from epoch 95 (1-indexed), every epoch, BN statistics "
             "recalibrated as torch's update_bn (config.weight_averaging)")
_SAAD_TEACHER = {"cifar10": "gowal21", "cifar100": "bdm"}
_ABSLD_SRC = "[C:ABSLD@7407c3a:resnet18_absld_cifar10.py:20-21,54,66-72,94-125,173-193]"
_FAIR = "[C:Fair-ARD@910c8cd:"
_FAIR_E1 = ("the code's lr_schedule [100, 150] decays a local copy of args.lr (docs/fidelity.md erratum E1): "
            "lr 0.1 for epochs 0-99, 0.01 for 100-199")
# Fair-*: method -> (epochs, decay epochs, attack init/BN, source, notes); the same
# recipe under both protocols (they differ in method fields: configs/cifar_fair_ard.py).
_FAIR_RECIPES = {
    "fair_ard": (200, (100,), _TRAIN_ATTACK, _FAIR + "Fair-ARD.py:14-34,52-78,116-167]",
                 _FAIR_E1),
    "fair_iad": (200, (100,), _TRAIN_ATTACK, _FAIR + "Fair-IAD.py:22-31,76-94,144-236]",
                 _FAIR_E1),
    "fair_rslad": (300, (215, 260, 285), dict(init="gaussian", bn_mode="eval"),
                   _FAIR + "Fair-RSLAD.py:40-151]", ""),
    "fair_mtard": (300, (215, 260, 285), dict(init="gaussian", bn_mode="eval"),
                   _FAIR + "Fair-MTARD.py:42-188]", ""),
}
RECIPES.update({
    ("saad", "official"): _r(200, (100, 150), 2e-4, 128, _attack("gaussian"), _SAAD_SRC,
                             teacher=_SAAD_TEACHER,
                             notes="weight decay 2e-4 hard-coded in saad.py:39 (paper: 5e-4, "
                             "A5); CIFAR-100 teacher: CHOICE (bdm), the paper's is "
                             "UNCONFIRMED; " + _SAAD_SWA),
    ("saad", "paper"): _r(200, (100, 150), 5e-4, 128, _attack("gaussian"),
                          _SAAD_SRC + ", [S:7i10] (weight decay)", teacher=_SAAD_TEACHER,
                          notes="weight decay 5e-4 as the paper is read by a third party "
                          "(UNCONFIRMED, A5); " + _SAAD_SWA),
    ("cgard", "paper"): _r(300, (215, 260, 285), 2e-4, 128, _attack("gaussian"),
                           "[P:CGARD section 3.1, eqs. 7-13] (no code released)", teacher="ltd",
                           notes="no code: the preprint's equations; student BN mode in the "
                           "search, KL reductions and lr-decay indexing UNCONFIRMED; teacher: "
                           "CHOICE LTD WRN-34-10 for the paper's unreleased ST WRN-34-10"),
    **{("absld", p): _r(300, (215, 260, 285), 2e-4, 128, _attack("gaussian"), _ABSLD_SRC,
                        teacher={"cifar10": "trades"}, notes=n)
       for p, n in (("kdrobust", "temperature_mode=separate"),
                    ("official", "temperature_mode=product (the released step, A1)"))},
    **{(m, p): _r(e, d, 2e-4, 128, _attack(**a), src, teacher={"cifar10": "trades"}, notes=n)
       for m, (e, d, a, src, n) in _FAIR_RECIPES.items() for p in ("kdrobust", "official")},
})

# Each method's loss hyperparameters under IGDM's protocol, which are also the
# official codes' for IAD-I, IAD-II and RSLAD (the CIFAR configs and
# configs/igdm_datasets.py; ARD's and AdaAD's official ones differ, see their
# configs): ARD tau = 1, alpha = 1, batchmean
# (IGDM's ard_cifar100.py); IAD-I's defaults; RSLAD's 5/6-1/6 with the
# code's mean over B*C (x10 on CIFAR-100: batchmean x 0.1 on both); AdaAD
# lambda = 1 with batchmean (E4); AdaIAD tau = 30 (AdaAD's --temp default,
# CHOICE); TRADES beta = 6.
LOSS_HPARAMS = {
    "pgd_at": {},
    "trades": {"beta": 6.0},
    # IGDM's ard_cifar100.py:135-136 runs S(x) before S(x').
    "ard": {"temperature": 1.0, "alpha": 1.0, "reduction": "batchmean",
            "teacher_input": "clean", "forward_order": "clean_first"},
    "iad": {"alpha": 1.0, "temperature": 1.0, "beta": 0.1, "begin": 60,
            "reduction": "batchmean"},
    "iad2": {"alpha1": 0.5, "alpha2": 0.25, "temperature": 1.0, "beta": 0.1, "begin": 40},
    "rslad": {"adv_weight": 5 / 6, "clean_weight": 1 / 6, "reduction": "batchmean",
              "scale": 0.1},
    "adaad": {"alpha": 1.0, "reduction": "batchmean"},
    "adaiad": {"alpha": 1.0, "temperature": 30.0, "beta": 0.1, "begin": 60,
               "reduction": "batchmean"},
}


# IGDM's SVHN and Tiny ImageNet runs (IGDM App. B.1):
# the CIFAR IGDM recipe of each base with these epochs and decays (0-indexed);
# students ResNet-18 (SVHN) and PreActResNet-18 (Tiny ImageNet).
IGDM_MORE = {
    "svhn_cropped": {"epochs": 50, "decay_epochs": (40, 45), "student": "resnet18",
                     "teacher": "pgdat"},
    "tiny_imagenet": {"epochs": 100, "decay_epochs": (50, 80), "student": "preact_resnet18",
                      "teacher": "rift"},
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
    "iad2": {"begin": 40 / 200},
    "rslad": {"scale": 1.0},
    "mtard": {"scale": 1.0, "weight_lr_decay_epochs": ()},
    "kdiga": {"reduction": "batchmean"},
    "kdiga_ard": {"reduction": "batchmean"},
    "adaad": {"reduction": "batchmean"},
    "adaiad": {"temperature": 1.0, "begin": 60 / 200},
    "darht": {"kd_start_epoch": 50 / 350, "ce_stop_epoch": 118 / 350},
    # Issue 12's methods, by the same rules. ABSLD is RSLAD plus class
    # temperatures: scale 1, and the temperature rate's 215/260/285 decays
    # dropped like MTARD's (they lie beyond a 10-epoch run anyway); the rate
    # itself stays 0.1 per epoch (temperatures move at most 1.0 in 10 epochs).
    "absld": {"scale": 1.0, "temperature_lr_decay_epochs": ()},
    # B-MTARD is MTARD with entropy-balanced temperatures; ``decay_epochs``
    # decays both its weight and temperature steps (per step: 0.025, 0.001).
    "b_mtard": {"scale": 1.0, "decay_epochs": ()},
    # Fair-* are their bases with class weights (updated every epoch, as in
    # the code): Fair-ARD as ARD (tau 1, batchmean instead of tau = 30 with
    # elemmean), Fair-IAD's begin at IAD's fraction, Fair-RSLAD as RSLAD,
    # Fair-MTARD as MTARD.
    "fair_ard": {"temperature": 1.0, "reduction": "batchmean"},
    "fair_iad": {"begin": 60 / 200},
    "fair_rslad": {"scale": 1.0},
    "fair_mtard": {"scale": 1.0, "weight_lr_decay_epochs": ()},
    # SAAD and CGARD need nothing: their KLs are already batchmean, they
    # have no decay epochs, and SAAD's IGDM ramp e/E is a fraction of the run.
    "saad": {},
    "cgard": {},
}
_EPOCH_FIELDS = ("begin", "kd_start_epoch", "ce_stop_epoch")

# Target numbers (paper_settings.TARGETS). ``None`` = not reported.
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


# 9.2 / 9.4: IGDM's other datasets. SVHN, ResNet-18, IGDM's PGD-AT WRN-34-10
# teacher [P:IGDM Tab.3] (clean, AA); Tiny ImageNet, PreActResNet-18, RiFT
# WRN-34-10 [P:IGDM Tab.14] (Clean / PGD / AA: the table's "PGD" is stored in
# the PGD-20 column, UNCONFIRMED that it is 20 steps).
_add("svhn_cropped", "resnet18", "pgdat", "adaad", False, (93.27, None, None, None, 52.93),
     "IGDM Tab.3")
_add("svhn_cropped", "resnet18", "pgdat", "adaad", True, (93.48, None, None, None, 53.89),
     "IGDM Tab.3")
_TAB14 = {
    "pgd_at": ((50.13, 17.10, 14.58), (51.46, 25.04, 20.10)),
    "trades": ((46.51, 19.51, 14.89), (51.31, 24.10, 18.92)),
    "ard": ((50.81, 23.37, 19.48), (50.86, 25.39, 20.57)),
    "iad": ((49.89, 23.89, 19.10), (50.02, 25.57, 20.69)),
    "akd": ((51.70, 23.86, 19.69), (51.38, 25.25, 20.99)),
    "rslad": ((47.12, 22.14, 17.65), (47.54, 23.95, 18.35)),
    "adaad": ((51.54, 24.65, 20.60), (51.21, 25.73, 21.17)),
}
for _m, (_base, _ig) in _TAB14.items():
  _add("tiny_imagenet", "preact_resnet18", "rift", _m, False, _cap(*_base), "IGDM Tab.14")
  _add("tiny_imagenet", "preact_resnet18", "rift", _m, True, _cap(*_ig), "IGDM Tab.14")

# Issue 12's methods (paper_settings.TARGETS). Teacher keys that are not in
# TEACHERS: 'st' = CGARD's Squeeze-Training WRN-34-10 (not released).
# CGARD: the preprint's Tab. 1 (primary).
for (_d, _s), _v in {("cifar10", "resnet18"): (82.96, 56.47, 53.69, 52.46),
                     ("cifar100", "resnet18"): (56.93, 33.28, 29.83, 28.49),
                     ("cifar10", "mobilenet_v2"): (82.19, 54.96, 52.12, 50.86),
                     ("cifar100", "mobilenet_v2"): (56.79, 32.95, 29.00, 27.66)}.items():
  _add(_d, _s, "st", "cgard", False, (_v[0], None) + _v[1:], "CGARD Tab.1")
# B-MTARD Tab. 3 as quoted by a third-party compilation (secondary, UNCONFIRMED);
# the PGD-20 column holds its PGD_SAT, the source its PGD_TRADES. Robust teachers:
# WRN-34-10 (MTARD's TRADES one, CHOICE of key) and WRN-70-16 (gowal70).
_add("cifar10", "resnet18", "trades", "b_mtard", False, (88.20, None, 51.68, 49.88, 47.44),
     "B-MTARD Tab.3 [S:compil] UNCONFIRMED; PGD_SAT (PGD_TRADES 54.40)")
_add("cifar100", "resnet18", "gowal70", "b_mtard", False, (65.08, None, 28.50, 25.45, 23.98),
     "B-MTARD Tab.3 [S:compil] UNCONFIRMED; PGD_SAT (PGD_TRADES 29.94)")
# SAAD: AutoAttack of the last-epoch SWA student, mean of 3 seeds, as read by a
# third party (secondary, UNCONFIRMED).
_add("cifar10", "resnet18", "bartoldson", "saad", False, (None, None, None, None, 50.34),
     "SAAD [S:7i10] UNCONFIRMED; SWA, 3 seeds, sd 0.08")
_add("cifar10", "resnet18", "gowal21", "saad", False, (None, None, None, None, 50.35),
     "SAAD [S:7i10] UNCONFIRMED; SWA, 3 seeds, sd 0.22")

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


def protocols(method: str) -> tuple[str, ...]:
  """The protocols :data:`RECIPES` has for ``method``, in :data:`PROTOCOL_ORDER`."""
  return tuple(p for p in PROTOCOL_ORDER if (method, p) in RECIPES)


def recipe(method: str, protocol: str = "official") -> dict[str, Any]:
  """The training recipe ``RECIPES[(method, protocol)]`` (a copy, with both keys).

  An unknown protocol of a known method raises a ValueError listing the
  method's protocols (``official`` alone for most methods).
  """
  valid = protocols(method)
  if not valid:
    raise ValueError(f"No recipe for method {method!r}; methods: "
                     + ", ".join(sorted({m for m, _ in RECIPES})) + ".")
  choice(f"protocol for {method}", protocol, valid)
  rec = dict(RECIPES[(method, protocol)], method=method, protocol=protocol)
  rec["attack"] = dict(rec["attack"]) if rec["attack"] else None
  return rec


def igdm_dataset_recipe(base: str, dataset: str) -> dict[str, Any]:
  """IGDM's recipe of ``base`` on SVHN or Tiny ImageNet (:data:`IGDM_MORE`).

  The CIFAR IGDM-protocol recipe of ``base`` (attack, weight decays, batch)
  with the dataset's epochs, decay epochs, student and teacher.
  """
  choice("dataset", dataset, IGDM_MORE)
  more = IGDM_MORE[dataset]
  rec = recipe(base, "igdm")
  rec.update(epochs=more["epochs"], decay_epochs=more["decay_epochs"],
             student=more["student"], teacher=dict.fromkeys(NUM_CLASSES, more["teacher"]),
             source=rec["source"] + f", [P:IGDM App.B.1] ({dataset}: {more['epochs']} epochs, "
             f"decay at {'/'.join(map(str, more['decay_epochs']))})")
  return rec


def targets(dataset: str, student: str, teacher_key: str, method: str,
            igdm: bool = False) -> list[dict[str, Any]]:
  """The papers' numbers for one setting (possibly none: not every setting was published)."""
  choice("dataset", dataset, DATASETS + MORE_DATASETS)
  return [t for t in TARGETS
          if (t["dataset"], t["student"], t["teacher"], t["method"], t["igdm"])
          == (dataset, student, teacher_key, method, bool(igdm))]


def targets_table(methods: Iterable[str], datasets: Iterable[str] = DATASETS) -> str:
  """The docstring table of :data:`TARGETS` for ``methods`` on ``datasets``.

  One line per record, sorted by dataset, student, teacher, method, IGDM:
  ``dataset student teacher method[+IGDM] Clean / FGSM / PGD-20 / C&W / AA
  source`` (``-`` = not reported). Config files append it to their docstring,
  so the numbers live once, here.
  """
  methods, datasets = tuple(methods), tuple(datasets)
  order = {d: i for i, d in enumerate(datasets)}
  rows = sorted((t for t in TARGETS if t["method"] in methods and t["dataset"] in order),
                key=lambda t: (order[t["dataset"]], t["student"] != "resnet18", t["student"],
                               t["teacher"], methods.index(t["method"]), t["igdm"]))
  head = (f"    {'dataset':<13} {'student':<15} {'teacher':<10} {'method':<13} "
          "Clean / FGSM / PGD-20 / C&W / AA       source")
  lines = [f"    {t['dataset']:<13} {t['student']:<15} {t['teacher']:<10} "
           f"{t['method'] + ('+IGDM' if t['igdm'] else ''):<13} {format_target(t):<38} "
           f"{t['source']}" for t in rows]
  return "\n".join([head] + lines)


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
  lookup. An empty value whose default is empty ("the protocol's own") is
  not checked here.
  """
  a = config_lib.parse_arg(arg, **defaults)
  checks = dict(valid or {})
  for name, values in (("dataset", DATASETS), ("student", STUDENTS)):
    if name in defaults:
      checks.setdefault(name, values)
  for name, values in checks.items():
    if a[name] == "" and defaults.get(name) == "":
      continue
    choice(name, a[name], values)
  return a


# Every distillation config takes ``protocol=`` (the valid values: the
# protocols RECIPES has for its method; ``official`` alone for most), the
# dataset, the student and teacher (empty: the protocol's own, RECIPES
# ``student`` / ``teacher``) and a teacher file; the IGDM-capable ones also
# ``igdm=0|1`` and ``igdm_alpha``.
IGDM_TEACHERS = ("ltd", "bdm", "ikl")  # IGDM's tables; any adversarial teacher is accepted


def protocol_arg(arg: str | None, method_key: str, /, *, protocol: str = "",
                 igdm: bool = True, methods: tuple[str, ...] = (),
                 valid: dict[str, Iterable[Any]] | None = None,
                 **defaults: Any) -> mlc.ConfigDict:
  """The checked arguments of a distillation config, with the protocol's defaults filled in.

  ``method_key`` names the :data:`RECIPES` method whose protocols are valid;
  with ``methods``, a ``method=`` argument (default ``method_key``, valid
  ``methods``) names it instead. Arguments: ``protocol`` (default:
  ``protocol``, else the method's first of :func:`protocols`), ``dataset``
  (CIFAR-10), ``student`` and ``teacher`` (empty: the recipe's),
  ``teacher_path``; with ``igdm``: ``igdm=0|1`` (off) and ``igdm_alpha`` (0:
  IGDM App. B.2). ``defaults`` adds or overrides arguments, ``valid`` their
  checks (:func:`parse_arg`). A protocol the method lacks fails with the
  method's protocols; ``student`` is checked against :data:`STUDENTS` after
  the protocol's default is filled in.
  """
  args = dict(protocol="", dataset="cifar10", student="", teacher="", teacher_path="")
  checks = dict(valid or {})
  if methods:
    args["method"] = method_key
    checks["method"] = methods
  if igdm:
    args.update(igdm=False, igdm_alpha=0.0)
  args.update(defaults)
  a = parse_arg(arg, checks, **args)
  key = a.method if methods else method_key
  a.protocol = a.protocol or protocol or protocols(key)[0]
  rec = recipe(key, a.protocol)  # an unknown protocol fails here, listing the valid ones
  a.student = a.student or rec["student"]
  a.teacher = a.teacher or rec["teacher"][a.dataset]
  choice("student", a.student, STUDENTS)
  return a


def protocol_arg_strings(method: str, *, teachers: Iterable[str] = IGDM_TEACHERS,
                         igdm: bool = True) -> list[str]:
  """Settings of :func:`protocol_arg` for the tests: each protocol's defaults per
  dataset, then every (protocol, dataset, student, teacher[, igdm]) combination."""
  out = arg_strings(protocol=protocols(method), dataset=DATASETS)
  axes = dict(protocol=protocols(method), dataset=DATASETS, student=STUDENTS,
              teacher=tuple(teachers))
  if igdm:
    axes["igdm"] = (False, True)
  return out + arg_strings(**axes)


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


def one_teacher_config(a: Any, rec: dict[str, Any], method: Any, t: dict[str, Any],
                       notes: str = "") -> mlc.ConfigDict:
  """:func:`cifar_config` of a single-teacher distillation: ``a.student`` learns from ``t``.

  ``a`` holds the parsed ``dataset``, ``student`` and ``teacher_path``
  arguments; ``t`` is a :data:`TEACHERS` record (``teacher_path`` replaces its
  file), the one ``config.teachers`` entry is named ``teacher``.
  """
  return cifar_config(a.dataset, a.student, rec, method, notes=notes,
                      teachers={"teacher": teacher_entry(t, a.teacher_path)})


def _run_config(*, data: dict[str, Any], model: str, method: Any, epochs: int, lr: float,
                weight_decay: float, eps: float, log_every_steps: int,
                teachers: dict[str, Any] | None, model_kwargs: dict[str, Any] | None
                ) -> mlc.ConfigDict:
  """``base_config()`` with what every config sets: data, model, method, teachers, SGD
  (momentum 0.9, ``lr``, ``weight_decay``), PGD-20 at ``eps`` every 5 epochs."""
  c = config_lib.base_config()
  c.num_epochs = epochs
  c.data.update(data)
  c.model.name = model
  if model_kwargs is not None:
    c.model.kwargs = model_kwargs
  c.method = method
  if teachers is not None:
    c.teachers = teachers
  c.optim.lr = lr
  c.optim.weight_decay = weight_decay
  c.eval.eps = eps
  c.eval.every_epochs = 5
  c.log_every_steps = log_every_steps
  return c


def cifar_config(dataset: str, model: str, rec: dict[str, Any], method: Any, *,
                 teachers: dict[str, Any] | None = None,
                 model_kwargs: dict[str, Any] | None = None,
                 notes: str = "") -> mlc.ConfigDict:
  """A full-size run of the recipe ``rec`` (a :func:`recipe` record) on ``dataset``.

  What every paper config shares: ``rec``'s epochs, batch size and weight
  decay (``igdm_weight_decay`` when ``method.igdm.alpha > 0``); SGD lr 0.1,
  momentum 0.9, x0.1 at each of ``rec``'s decay epochs (``schedule =
  'piecewise'``) or ``rec``'s lr table (``'table'``); the student in
  PyTorch's default initialisation (``model.init = 'torch'``: the official
  students are PyTorch modules, docs/fidelity.md erratum E12) on raw [0, 1] pixels
  (``model.normalize = False``, as the official codes feed them); eval batch
  400 (divides the 10,000 CIFAR test images and any 1, 2, 4, 8 or 16
  devices); PGD-20 at 8/255 every 5 epochs; a log line every 100 steps;
  ``config.provenance`` from ``rec`` plus ``notes``. ``method`` is the
  ``config.method`` block, ``teachers`` the ``config.teachers`` entries
  (None: none), ``model_kwargs`` the student's.
  """
  igdm_on = float(method.get("igdm", {}).get("alpha", 0.0)) > 0
  c = _run_config(
      data={"name": dataset, "batch_size": rec["batch_size"][dataset], "eval_batch_size": 400},
      model=model, method=method, epochs=rec["epochs"], lr=0.1,
      weight_decay=rec["igdm_weight_decay" if igdm_on else "weight_decay"], eps=8 / 255,
      log_every_steps=100, teachers=teachers, model_kwargs=model_kwargs)
  c.model.normalize = False
  c.model.init = "torch"
  if rec["lr_table"]:
    c.optim.schedule = "table"
    c.optim.lr_epochs, c.optim.lr_factors = (tuple(v) for v in rec["lr_table"])
  else:
    c.optim.schedule = "piecewise"
    c.optim.decay_epochs = rec["decay_epochs"]
  c.provenance.protocol = rec["protocol"]
  c.provenance.sources = rec["source"]
  c.provenance.notes = "; ".join(n for n in (rec["notes"], notes) if n)
  return c


# The CPU-sized runs' data: scikit-learn's 8x8 digits (1,437 train / 360 test,
# eval batch 120 = 360 / 3) and the real CIFAR-10 subset (5,085 / 1,017, eval
# batch 344: 3 batches, the last padded by 15 masked examples), each with its log
# cadence. Every batch size divides by 1, 2, 4 and 8 devices (or processes).
CPU_DATA = {
    "digits": {"name": "digits", "batch_size": 64, "eval_batch_size": 120,
               "log_every_steps": 20},
    "cifar10_subset": {"name": "cifar10", "batch_size": 128, "eval_batch_size": 344,
                       "log_every_steps": 10},
}
# The only protocol of the CPU-sized distillation configs: short-run choices.
SHORT_PROTOCOL = "short_run"


def cpu_config(data: str, model: str, method: Any, *, epochs: int, eps: float,
               data_dir: str = "", teachers: dict[str, Any] | None = None,
               model_kwargs: dict[str, Any] | None = None) -> mlc.ConfigDict:
  """A run of minutes on a CPU (configs/quickstart*.py, digits_distill.py, the subset configs).

  ``data`` is a key of :data:`CPU_DATA` (``data_dir`` where it was prepared,
  empty: the default); seed 0, SGD lr 0.05, momentum 0.9, weight decay 5e-4,
  cosine schedule over ``epochs``; PGD-20 at ``eps`` every 5 epochs; Flax's
  default initialisation (the measured behaviour of these configs).
  ``method``, ``teachers`` and ``model_kwargs`` as in :func:`cifar_config`.
  """
  d = dict(CPU_DATA[data])
  log_every = d.pop("log_every_steps")
  if data_dir:
    d["data_dir"] = data_dir
  c = _run_config(data=d, model=model, method=method, epochs=epochs, lr=0.05,
                  weight_decay=5e-4, eps=eps, log_every_steps=log_every, teachers=teachers,
                  model_kwargs=model_kwargs)
  c.seed = 0
  c.optim.schedule = "cosine"
  c.provenance.protocol = SHORT_PROTOCOL
  c.provenance.notes = ("CPU-sized choices, not a paper's recipe (paper_settings.SHORT_RUN, "
                        "cpu_config)")
  return c


# The official recipes' extra step details that are method fields (the
# method's dataclass), by (method, protocol): PGD-AT's Plain_Madry extra
# train-mode S(x) forward (E11; its clamped start is attack.init
# 'gaussian_clamped'), IAD-I's extra train-mode S(x') forward (E10). A field
# the method does not (yet) have is listed on the recipe card (provenance
# notes) instead of silently dropped.
OFFICIAL_STEP_FIELDS = {
    ("pgd_at", "official"): {"extra_clean_forward": True},
    ("iad", "official"): {"adv_bn_forward": True},
}


def step_fields(method: str, protocol: str) -> tuple[dict[str, Any], str]:
  """``(fields the method has, note on those it lacks)`` of :data:`OFFICIAL_STEP_FIELDS`."""
  from kdrobust import methods as methods_lib  # pylint: disable=g-import-not-at-top
  want = OFFICIAL_STEP_FIELDS.get((method, protocol), {})
  have = methods_lib.default_hparams(method)
  fields = {k: v for k, v in want.items() if k in have}
  missing = sorted(set(want) - set(fields))
  note = (f"NOT REPRODUCED (kdrobust's {method} has no field {', '.join(missing)}): "
          + ", ".join(f"{k}={want[k]}" for k in missing)) if missing else ""
  return fields, note


def adversarial_training_config(base: str, arg: str | None, **hparams: Any
                                ) -> mlc.ConfigDict:
  """configs/cifar10_pgd_at.py and cifar10_trades.py: ``base`` on CIFAR-10.

  Arguments ``protocol`` (official, the default, or igdm: IGDM's re-run of
  the baseline), ``arch`` (the student, default ResNet-18) and ``epochs``
  (default: the protocol's; the recipe's decays beyond it are dropped).
  ``hparams`` are the method's loss hyperparameters.
  """
  a = parse_arg(arg, {"protocol": protocols(base)}, protocol="official", arch="resnet18",
                epochs=0)
  r = recipe(base, a.protocol)
  r["epochs"] = a.epochs or r["epochs"]
  r["decay_epochs"] = tuple(e for e in r["decay_epochs"] if e < r["epochs"])
  fields, note = step_fields(base, a.protocol)
  method = config_lib.method_config(base, attack=r["attack"], **hparams, **fields)
  c = cifar_config("cifar10", a.arch, r, method, notes=note)
  if a.arch.startswith("wrn"):
    # The official WideResNets re-initialise themselves (He fan-out normal convs,
    # zero linear bias) [C:TRADES@6e8e11b:models/wideresnet.py:74-82].
    c.model.init = "wrn"
  return c

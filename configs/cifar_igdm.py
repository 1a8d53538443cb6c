"""PGD-AT or TRADES plus IGDM (Lee, Cho, Kim; ICLR 2025) on CIFAR-10/100: IGDM's recipe.

    python -m kdrobust.main --config configs/cifar_igdm.py --workdir runs/c10_r18_ltd_pgd_at_igdm
    python -m kdrobust.main --config configs/cifar_igdm.py:base=trades,dataset=cifar100,teacher=bdm \
        --workdir runs/c100_r18_bdm_trades_igdm
    python -m kdrobust.main --config configs/cifar_igdm.py:student=mobilenet_v2,igdm=0 \
        --workdir runs/c10_mnv2_pgd_at      # the baseline of the same tables: no teacher
    python -m kdrobust.evaluate --workdir runs/c10_r18_ltd_pgd_at_igdm --checkpoint latest

Args: ``base=pgd_at|trades``, ``dataset=cifar10|cifar100``,
``student=resnet18|mobilenet_v2``, ``teacher=ltd|bdm|ikl`` (only read with
IGDM: for PGD-AT/TRADES the teacher enters only through the IGDM term),
``igdm=1|0``, ``igdm_alpha=<float>`` (default: IGDM's table for the setting),
``teacher_path=<file or dir>``. Defaults: PGD-AT + IGDM, CIFAR-10,
ResNet-18, LTD teacher.

Teacher (``configs/paper_settings.py`` TEACHERS): the RobustBench checkpoint
``teachers/<dataset>/Linf/<RobustBench id>.pt`` (where
``robustbench.utils.load_model(ID, dataset=..., threat_model='Linf',
model_dir='teachers')`` saves it; reading it needs torch), or any
``teacher_path``: a ``.pt`` in the same layout, a directory written by
``python -m kdrobust.teachers.convert`` (no torch at run time) or a kdrobust
run. ltd = Chen2021LTD_WRN34_10 (WRN-34-10), bdm = Wang2023Better_WRN-28-10,
ikl = Cui2023Decoupled_WRN-28-10 (DeepMind-layout swish WRN-28-10s). Runs in
float32; ``--config.teachers.teacher.dtype=bfloat16`` is faster.

Recipe (methods.md sections 2, 3.2, 3.3, 6; IGDM App. B.1-B.2): SGD lr 0.1,
momentum 0.9, batch 128, 200 epochs, lr x0.1 at 100 and 150; pad-4 crop +
flip; raw [0, 1] pixels (``model.normalize = False``, as the official codes).
Inner attack: 10 steps of 2/255 in the eps = 8/255 ball; PGD-AT maximises
CE(S(x'), y) from a uniform start, TRADES maximises KL(p_S(x) || p_S(x'))
from x + 0.001 N(0, I); outer loss CE(S(x'), y) (PGD-AT) or CE(S(x), y) +
6 KL(p_S(x) || p_S(x')) (TRADES, beta = 6). IGDM adds
alpha (t / E) KL_batchmean(softmax(T(x+d) - T(x-d)) || softmax(S(x+d) - S(x-d)))
with d = x' - x of the base attack, t the epoch and alpha from IGDM App. B.2
(``paper_settings.IGDM_ALPHA``; e.g. ResNet-18 / CIFAR-10 / LTD: 60 for
PGD-AT, 20 for TRADES). Weight decay: CHOICE 5e-4 (IGDM's paper; its
re-uploaded code defaults to 2e-4, see ``paper_settings.IGDM_WEIGHT_DECAY``);
``--config.optim.weight_decay=2e-4`` gives the code's value. Evaluation
during training: PGD-20 (step 2/255, uniform start) at 8/255 on the test set
every 5 epochs; IGDM reports the last epoch (``--checkpoint latest``) with
FGSM, PGD-20, C&W and AutoAttack on the full test set.

Targets (IGDM Tab. 2, 3, 10, 11; Clean / FGSM / PGD-20 / C&W / AA, ``-`` = not
reported; the baselines do not use the teacher, so their rows repeat):

    dataset   student       teach method        Clean / FGSM / PGD-20 / C&W / AA       source
    cifar10   resnet18      ltd   pgd_at        84.52 / 52.42 / 42.80 / 42.98 / 41.12  IGDM Tab.3
    cifar10   resnet18      ltd   pgd_at+IGDM   84.15 / 59.21 / 53.70 / 51.19 / 49.63  IGDM Tab.3
    cifar10   resnet18      ltd   trades        82.46 / 56.97 / 49.13 / 47.98 / 47.09  IGDM Tab.3
    cifar10   resnet18      ltd   trades+IGDM   83.50 / 60.84 / 54.64 / 49.34 / 48.83  IGDM Tab.3
    cifar10   mobilenet_v2  ltd   pgd_at        83.52 / - / 44.47 / - / 41.19          IGDM Tab.11
    cifar10   mobilenet_v2  ltd   pgd_at+IGDM   81.73 / - / 52.63 / - / 48.51          IGDM Tab.11
    cifar10   mobilenet_v2  ltd   trades        81.57 / - / 50.49 / - / 46.88          IGDM Tab.11
    cifar10   mobilenet_v2  ltd   trades+IGDM   81.82 / - / 52.96 / - / 47.47          IGDM Tab.11
    cifar10   mobilenet_v2  bdm   pgd_at+IGDM   82.78 / - / 51.54 / - / 47.13          IGDM Tab.11
    cifar10   mobilenet_v2  bdm   trades+IGDM   82.33 / - / 52.94 / - / 47.70          IGDM Tab.11
    cifar100  resnet18      ltd   pgd_at        55.80 / 23.51 / 19.88 / 20.46 / 18.86  IGDM Tab.2
    cifar100  resnet18      ltd   pgd_at+IGDM   60.49 / 37.22 / 33.72 / 29.61 / 28.02  IGDM Tab.2
    cifar100  resnet18      ltd   trades        53.56 / 29.85 / 25.85 / 23.92 / 22.02  IGDM Tab.2
    cifar100  resnet18      ltd   trades+IGDM   59.29 / 36.08 / 32.08 / 26.10 / 26.10  IGDM Tab.2
    cifar100  resnet18      bdm   trades        53.56 / 29.85 / 25.85 / 23.32 / 22.02  IGDM Tab.2
    cifar100  resnet18      bdm   pgd_at+IGDM   60.83 / 38.11 / 35.09 / 30.21 / 29.16  IGDM Tab.2
    cifar100  resnet18      bdm   trades+IGDM   60.88 / 36.26 / 32.26 / 26.50 / 25.50  IGDM Tab.2
    cifar100  mobilenet_v2  ltd   pgd_at        59.23 / - / 24.04 / - / 21.58          IGDM Tab.10
    cifar100  mobilenet_v2  ltd   pgd_at+IGDM   59.70 / - / 32.59 / - / 27.14          IGDM Tab.10
    cifar100  mobilenet_v2  ltd   trades        51.05 / - / 24.83 / - / 20.62          IGDM Tab.10
    cifar100  mobilenet_v2  ltd   trades+IGDM   56.81 / - / 29.87 / - / 23.38          IGDM Tab.10
    cifar100  mobilenet_v2  bdm   pgd_at+IGDM   59.52 / - / 32.88 / - / 27.28          IGDM Tab.10
    cifar100  mobilenet_v2  bdm   trades+IGDM   57.80 / - / 29.47 / - / 22.05          IGDM Tab.10

(IGDM Tab. 2 prints the TRADES C&W as 23.32 in the BDM column and 23.92 in the
LTD column for the same teacher-free run.) No published PGD-AT/TRADES + IGDM
numbers with the IKL-AT teacher, nor with BDM-AT for ResNet-18 on CIFAR-10.
"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

BASES = ("pgd_at", "trades")
TEACHERS = ps.IGDM_TEACHERS  # only these (no IGDM alpha for the others)


def get_config(arg=None):
  a = ps.parse_arg(arg, {"base": BASES, "teacher": TEACHERS}, base="pgd_at",
                   dataset="cifar10", student="resnet18", teacher="ltd", igdm=True,
                   igdm_alpha=0.0, teacher_path="")
  r = ps.recipe(a.base, "igdm")
  teachers = None  # PGD-AT and TRADES use a teacher only through the IGDM term
  if a.igdm:
    teachers = {"teacher": ps.teacher_entry(ps.teacher(a.dataset, a.teacher),
                                            a.teacher_path)}
  hparams = {"beta": 6.0} if a.base == "trades" else {}
  method = config_lib.method_config(a.base, igdm_alpha=ps.igdm_weight(a, a.base),
                                    attack=r["attack"], **hparams)
  return ps.cifar_config(a.dataset, a.student, r, method, teachers=teachers)


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return ps.arg_strings(base=BASES, dataset=ps.DATASETS, student=ps.STUDENTS,
                        teacher=TEACHERS, igdm=(True, False))

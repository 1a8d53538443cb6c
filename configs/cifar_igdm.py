"""PGD-AT or TRADES plus IGDM (Lee, Cho, Kim; ICLR 2025) on CIFAR-10/100: IGDM's recipe.

    python -m kdrobust.main --config configs/cifar_igdm.py --workdir runs/c10_r18_ltd_pgd_at_igdm
    python -m kdrobust.main --config configs/cifar_igdm.py:base=trades,dataset=cifar100,teacher=bdm \
        --workdir runs/c100_r18_bdm_trades_igdm
    python -m kdrobust.main --config configs/cifar_igdm.py:student=mobilenet_v2,igdm=0 \
        --workdir runs/c10_mnv2_pgd_at      # the baseline of the same tables: no teacher
    python -m kdrobust.evaluate --workdir runs/c10_r18_ltd_pgd_at_igdm --checkpoint latest

Args: ``protocol=igdm`` (the only one: IGDM's recipe), ``base=pgd_at|trades``,
``dataset=cifar10|cifar100``, ``student=resnet18|mobilenet_v2``,
``teacher=ltd|bdm|ikl`` (only read with IGDM: for PGD-AT/TRADES the teacher
enters only through the IGDM term), ``igdm=1|0``, ``igdm_alpha=<float>``
(default: IGDM's table for the setting), ``teacher_path=<file or dir>``.
Defaults: PGD-AT + IGDM, CIFAR-10, ResNet-18, LTD teacher. Teacher files:
``paper_settings.TEACHERS`` (RobustBench's ``teachers/<dataset>/Linf/<id>.pt``,
needs torch; a converted directory or a kdrobust run as ``teacher_path``);
ltd = Chen2021LTD_WRN34_10, bdm = Wang2023Better_WRN-28-10, ikl =
Cui2023Decoupled_WRN-28-10. ``--config.teachers.teacher.dtype=bfloat16`` is
faster.

Recipe (docs/fidelity.md, IGDM; IGDM App. B.1-B.2; IGDM's code
snapshot has no PGD-AT or TRADES script): SGD lr 0.1, momentum 0.9, batch
128, 200 epochs, lr x0.1 at 100 and 150, weight decay 2e-4 (the code's
args.py default; the paper text: 5e-4, docs/fidelity.md erratum E3); pad-4 crop + flip;
raw [0, 1] pixels; students from PyTorch's default initialisation
(``model.init='torch'``, E12). Inner attack: 10 steps of 2/255 in the
eps = 8/255 ball, student in eval mode; PGD-AT maximises CE(S(x'), y) from
clip(x + U[-eps, eps]), TRADES maximises KL(p_S(x) || p_S(x')) from
x + 0.001 N(0, I); outer loss CE(S(x'), y) (PGD-AT) or CE(S(x), y) +
6 KL(p_S(x) || p_S(x')) (TRADES, beta = 6). IGDM adds
alpha (t / E) KL_batchmean(softmax(T(x+d) - T(x-d)) || softmax(S(x+d) - S(x-d)))
with d = x' - x of the base attack, t the epoch and alpha from IGDM App. B.2
(``paper_settings.IGDM_ALPHA``; e.g. ResNet-18 / CIFAR-10 / LTD: 60 for
PGD-AT, 20 for TRADES). Evaluation during training: PGD-20 (step 2/255,
uniform start) at 8/255 every 5 epochs; IGDM reports the last epoch
(``--checkpoint latest``) with FGSM, PGD-20, C&W and AutoAttack on the full
test set.

Targets (IGDM Tab. 2, 3, 10, 11; Clean / FGSM / PGD-20 / C&W / AA, ``-`` = not
reported; the baselines do not use the teacher, so their rows repeat; IGDM
Tab. 2 prints the TRADES C&W as 23.32 in the BDM column and 23.92 in the LTD
column for the same teacher-free run; no published PGD-AT/TRADES + IGDM
numbers with the IKL-AT teacher, nor with BDM-AT for ResNet-18 on CIFAR-10):

"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

__doc__ += ps.targets_table(("pgd_at", "trades")) + "\n"

BASES = ("pgd_at", "trades")
TEACHERS = ps.IGDM_TEACHERS  # only these (no IGDM alpha for the others)


def get_config(arg=None):
  a = ps.parse_arg(arg, {"protocol": ("igdm",), "base": BASES, "teacher": TEACHERS},
                   protocol="igdm", base="pgd_at", dataset="cifar10", student="resnet18",
                   teacher="ltd", igdm=True, igdm_alpha=0.0, teacher_path="")
  r = ps.recipe(a.base, a.protocol)
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

"""KDIGA (Shao, Yi, Chen, Hsieh; arXiv 2110.12072): KD with input gradient alignment, CIFAR.

    python -m kdrobust.main --config configs/cifar_kdiga.py --workdir runs/c10_mnv2_trades_kdiga
    python -m kdrobust.main --config configs/cifar_kdiga.py:variant=kdiga_ard \
        --workdir runs/c10_mnv2_trades_kdiga_ard
    python -m kdrobust.main --config configs/cifar_kdiga.py:dataset=cifar100,student=resnet18 \
        --workdir runs/c100_r18_ltd_kdiga

Args: ``protocol=official`` (the only one), ``variant=kdiga|kdiga_ard`` (and
``kdiga_rs`` where the method exists: x + U[-8/255, 8/255], not clipped,
replaces x before everything), ``dataset=cifar10|cifar100``,
``student=mobilenet_v2|resnet18``, ``teacher=`` (default ``trades`` on
CIFAR-10, ``ltd`` on CIFAR-100; any adversarial teacher of
``paper_settings.TEACHERS`` is accepted), ``teacher_path=<file or dir>``.
Defaults: the author code's default setting, MobileNetV2 student, TRADES
WRN-34-10 teacher, CIFAR-10. Teacher files: ``paper_settings.TEACHERS``
(RobustBench's ``teachers/<dataset>/Linf/<id>.pt``; needs torch) or
``teacher_path``; trades = Zhang2019Theoretically (the TRADES release
``model_cifar_wrn.pt`` the code loads from ``../checkpoint/trades/``).
CHOICE, UNCONFIRMED: the code's CIFAR-100 teacher is not recorded
there; we use LTD WRN-34-10 (Chen2021LTD_WRN34_10), the same
architecture and input convention.

Recipe (docs/fidelity.md, KDIGA; RulinShao/AdversariallyRobustDistillation@12e774f
main.py) as the code runs: SGD momentum 0.9, weight decay 2e-4, 200 epochs,
lr 0.1 for epochs 0-99 and 0.01 from 100 to 199 (its lr_schedule [100, 150]
rebinds a local copy: the "decay at 150" sets 0.01 again, docs/fidelity.md erratum E1),
batch 128 (CIFAR-10) / 256 (CIFAR-100), pad-4 crop + flip, raw [0, 1] pixels,
the student from PyTorch's default initialisation (``model.init='torch'``,
E12). Loss, all at the clean x:
alpha tau^2 KL_elemmean(p_T^tau || p_S^tau) + (1 - alpha) CE(S(x), y)
+ (gamma / B) ||grad_x meanCE(S(x), y) - grad_x meanCE(T(x), y)||_2 with
alpha = 0.5, tau = 1, gamma = 0.5 (the final code's defaults; the paper's
gamma is UNCONFIRMED, earlier commits used 1 ... 1000), double back-prop
through the student's input gradient. CHOICE: we keep the released 0.5 for
fidelity, but measured it to be inert on digits (docs/results.md: with this
normalisation the term stays near 0.001, and KDIGA's students were as
non-robust as KD's, AutoAttack 40.5 vs 40.1 %; gamma = 100 kept 62.6 %, 3
seeds each): sweep ``--config.method.gamma`` before drawing conclusions.
``variant=kdiga_ard``: the KD term on ARD points x' = PGD(CE(S(.), y)), 10
steps of 1.6/255 (the code's 16/255/10) in the 8/255 ball, teacher on x', same
gradient term at x; its attack runs the student in train mode
(``attack.bn_mode='train'``: batch statistics and running-statistic updates
at every forward, E2) from x + U[-eps, eps] not clipped
(``init='uniform_unclipped'``), as the code's AttackPGD. Evaluation while
training: PGD-20 (step 2/255) at 8/255 every 5 epochs (the KDIGA code
evaluates PGD-20 with step 2 eps / 20 and AutoAttack on the first 1000 test
images: ``python -m kdrobust.evaluate --num_examples 1000``).

Targets: none. All KDIGA numbers are UNCONFIRMED (the
paper body was not readable).
"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib
from kdrobust import methods as methods_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# KDIGA's variants in the code; kdiga_rs where kdrobust has the method.
VARIANTS = tuple(v for v in ("kdiga", "kdiga_ard", "kdiga_rs") if v in methods_lib.available())


def get_config(arg=None):
  a = ps.protocol_arg(arg, "kdiga", igdm=False, valid={"variant": VARIANTS},
                      variant="kdiga")
  t = ps.adversarial_teacher(a.dataset, a.teacher)
  r = ps.recipe(a.variant, a.protocol)
  hparams = {"alpha": 0.5, "temperature": 1.0, "gamma": 0.5, "reduction": "elemmean"}
  if r["attack"]:
    hparams["attack"] = r["attack"]
  method = config_lib.method_config(a.variant, **hparams)
  return ps.one_teacher_config(a, r, method, t)


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return ["protocol=official"] + ps.arg_strings(variant=VARIANTS, dataset=ps.DATASETS,
                                                 student=ps.STUDENTS)

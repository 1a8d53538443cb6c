"""ARD (Goldblum et al., AAAI 2020), optionally plus IGDM, on CIFAR-10/100.

    python -m kdrobust.main --config configs/cifar_ard.py --workdir runs/c10_r18_ltd_ard
    python -m kdrobust.main --config configs/cifar_ard.py:dataset=cifar100,teacher=bdm,igdm=1 \
        --workdir runs/c100_r18_bdm_ard_igdm
    python -m kdrobust.main --config configs/cifar_ard.py:protocol=official \
        --workdir runs/c10_r18_ltd_ard_official
    python -m kdrobust.evaluate --workdir runs/c10_r18_ltd_ard --checkpoint latest

Args: ``protocol=igdm|official``, ``dataset=cifar10|cifar100``,
``student=resnet18|mobilenet_v2``, ``teacher=ltd|bdm|ikl`` (any adversarial
teacher of ``paper_settings.TEACHERS`` also works), ``igdm=0|1``,
``igdm_alpha=<float>`` (default: IGDM App. B.2), ``teacher_path=<file or
dir>``. Defaults: IGDM protocol, CIFAR-10, ResNet-18, LTD, no IGDM.

Teacher: ``teachers/<dataset>/Linf/<RobustBench id>.pt`` (RobustBench's own
``model_dir='teachers'`` layout; needs torch) or ``teacher_path`` (a ``.pt``, a
``python -m kdrobust.teachers.convert`` directory or a kdrobust run). ltd =
Chen2021LTD_WRN34_10, bdm = Wang2023Better_WRN-28-10, ikl =
Cui2023Decoupled_WRN-28-10 (see ``configs/paper_settings.py``).

Loss (methods.md 3.4): inner x' = PGD(CE(S(.), y)), 10 steps of 2/255 in the
8/255 ball from a uniform start (student in inference mode); outer
alpha tau^2 KL(p_T^tau(x) || p_S^tau(x')) + (1 - alpha) CE(S(x), y), the
teacher on the CLEAN x, alpha = 1 (the CE term is off).

* ``protocol=igdm`` (default; the numbers below): IGDM's re-run of ARD,
  tau = 1, alpha = 1, KL ``batchmean`` (IAD's ARD.py and IGDM's
  ard_cifar100.py); 200 epochs, lr 0.1 x0.1 at 100 and 150, batch 128, weight
  decay 5e-4 (CHOICE: IGDM's paper; its code defaults to 2e-4, see
  ``paper_settings.IGDM_WEIGHT_DECAY``). Inner step 2/255 (CHOICE: IGDM's
  attacks.py has the typo 2/225; the paper says 2/255).
* ``protocol=official``: goldblum/AdversariallyRobustDistillation main.py,
  tau = 30, alpha = 1, ``elemmean`` (``nn.KLDivLoss()``); 200 epochs, x0.1 at
  100 and 150, weight decay 2e-4, batch 128 (CIFAR-10) / 256 (CIFAR-100).
  The official ARD teacher is not given in methods.md: LTD by default.

With ``igdm=1``: + alpha_IGDM (t / E) KL_batchmean(softmax(T(x+d) - T(x-d)) ||
softmax(S(x+d) - S(x-d))), d = x' - x, alpha_IGDM from IGDM App. B.2 (e.g. 5 for
ResNet-18 / CIFAR-10 / LTD, 100 for ResNet-18 / CIFAR-100 / BDM-AT; tuned with
the IGDM protocol). Raw [0, 1] pixels (``model.normalize = False``), SGD
momentum 0.9, pad-4 crop + flip. Evaluation while training: PGD-20 at 8/255
every 5 epochs; IGDM reports the last epoch (``--checkpoint latest``).

Targets, IGDM protocol (IGDM Tab. 2, 3, 10, 11; Clean / FGSM / PGD-20 / C&W /
AA, ``-`` = not reported):

    dataset   student       teach method        Clean / FGSM / PGD-20 / C&W / AA       source
    cifar10   resnet18      ltd   ard           85.04 / 60.31 / 53.27 / 50.27 / 49.49  IGDM Tab.3
    cifar10   resnet18      ltd   ard+IGDM      85.18 / 61.24 / 54.75 / 51.31 / 50.20  IGDM Tab.3
    cifar10   mobilenet_v2  ltd   ard           84.18 / - / 52.16 / - / 48.11          IGDM Tab.11
    cifar10   mobilenet_v2  ltd   ard+IGDM      84.25 / - / 54.03 / - / 49.53          IGDM Tab.11
    cifar10   mobilenet_v2  bdm   ard           84.38 / - / 48.26 / - / 44.02          IGDM Tab.11
    cifar10   mobilenet_v2  bdm   ard+IGDM      84.53 / - / 52.45 / - / 45.06          IGDM Tab.11
    cifar100  resnet18      ltd   ard           61.34 / 35.19 / 31.19 / 27.74 / 25.74  IGDM Tab.2
    cifar100  resnet18      ltd   ard+IGDM      61.58 / 37.45 / 33.45 / 29.94 / 27.84  IGDM Tab.2
    cifar100  resnet18      bdm   ard           61.51 / 34.23 / 30.23 / 26.97 / 24.77  IGDM Tab.2
    cifar100  resnet18      bdm   ard+IGDM      61.62 / 39.75 / 35.75 / 30.99 / 28.79  IGDM Tab.2
    cifar100  mobilenet_v2  ltd   ard           60.55 / - / 30.82 / - / 25.28          IGDM Tab.10
    cifar100  mobilenet_v2  ltd   ard+IGDM      60.44 / - / 33.36 / - / 27.59          IGDM Tab.10
    cifar100  mobilenet_v2  bdm   ard           60.74 / - / 29.92 / - / 24.33          IGDM Tab.10
    cifar100  mobilenet_v2  bdm   ard+IGDM      60.83 / - / 33.55 / - / 27.50          IGDM Tab.10

No published numbers for the IKL-AT teacher, BDM-AT with ResNet-18 on
CIFAR-10, or the official protocol (methods.md has no ARD paper table).
"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# protocol -> ARD loss hyperparameters (teacher on the clean input in both).
LOSS = {
    "igdm": {"temperature": 1.0, "alpha": 1.0, "reduction": "batchmean",
             "teacher_input": "clean"},
    "official": {"temperature": 30.0, "alpha": 1.0, "reduction": "elemmean",
                 "teacher_input": "clean"},
}


def get_config(arg=None):
  a = ps.protocol_arg(arg)  # the Args above
  t = ps.adversarial_teacher(a.dataset, a.teacher)
  r = ps.recipe("ard", a.protocol)
  method = config_lib.method_config("ard", igdm_alpha=ps.igdm_weight(a, "ard"),
                                    attack=r["attack"], **LOSS[a.protocol])
  return ps.one_teacher_config(a, r, method, t)


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return ps.protocol_arg_strings()

"""IAD-I (Zhu et al., ICLR 2022), optionally plus IGDM, on CIFAR-10/100.

    python -m kdrobust.main --config configs/cifar_iad.py --workdir runs/c10_r18_ltd_iad
    python -m kdrobust.main --config configs/cifar_iad.py:dataset=cifar100,teacher=bdm,igdm=1 \
        --workdir runs/c100_r18_bdm_iad_igdm
    python -m kdrobust.evaluate --workdir runs/c10_r18_ltd_iad --checkpoint latest

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

Loss (methods.md 3.5, ZFancy/IAD IAD-I.py): ARD's inner attack (CE PGD, 10
steps of 2/255 in the 8/255 ball, uniform start, student in inference mode);
w_i = p_T(y_i | x'_i)^0.1 (constant), and
alpha tau^2 KL(p_T^tau(x) || p_S^tau(x')) + [epoch > 60] alpha (1/B) sum_i
(1 - w_i) KL(p_S(x_i) || p_S(x'_i)) + (1 - alpha) CE(S(x), y) with alpha = 1,
tau = 1, ``batchmean``, begin = 60 (the second term from the 61st epoch).
CHOICE: IGDM's "IAD" baseline is IAD-I (UNCONFIRMED in methods.md, implied by
its student-only inner attack); IAD-II (natural teacher) is not implemented.

* ``protocol=igdm`` (default; the numbers below): 200 epochs, lr 0.1 x0.1 at
  100 and 150, batch 128, weight decay 5e-4 (CHOICE: IGDM's paper; its code
  defaults to 2e-4, see ``paper_settings.IGDM_WEIGHT_DECAY``).
* ``protocol=official``: the same loss and schedule with IAD-I.py's weight
  decay 2e-4.

With ``igdm=1``: + alpha_IGDM (t / E) KL_batchmean(softmax(T(x+d) - T(x-d)) ||
softmax(S(x+d) - S(x-d))), d = x' - x, alpha_IGDM from IGDM App. B.2 (e.g. 50
for ResNet-18 / CIFAR-10 / LTD). Raw [0, 1] pixels (``model.normalize =
False``), SGD momentum 0.9, pad-4 crop + flip. Evaluation while training:
PGD-20 at 8/255 every 5 epochs; IGDM reports the last epoch
(``--checkpoint latest``).

Targets, IGDM protocol (IGDM Tab. 2, 3, 10, 11; Clean / FGSM / PGD-20 / C&W /
AA, ``-`` = not reported):

    dataset   student       teach method        Clean / FGSM / PGD-20 / C&W / AA       source
    cifar10   resnet18      ltd   iad           84.33 / 61.21 / 54.24 / 50.97 / 50.09  IGDM Tab.3
    cifar10   resnet18      ltd   iad+IGDM      84.49 / 62.45 / 56.55 / 53.01 / 51.09  IGDM Tab.3
    cifar10   mobilenet_v2  ltd   iad           83.38 / - / 52.71 / - / 48.45          IGDM Tab.11
    cifar10   mobilenet_v2  ltd   iad+IGDM      83.65 / - / 54.57 / - / 50.14          IGDM Tab.11
    cifar10   mobilenet_v2  bdm   iad           83.79 / - / 48.36 / - / 44.02          IGDM Tab.11
    cifar10   mobilenet_v2  bdm   iad+IGDM      84.27 / - / 52.42 / - / 45.08          IGDM Tab.11
    cifar100  resnet18      ltd   iad           60.12 / 36.91 / 32.91 / 28.29 / 26.29  IGDM Tab.2
    cifar100  resnet18      ltd   iad+IGDM      62.73 / 37.69 / 33.69 / 29.65 / 27.49  IGDM Tab.2
    cifar100  resnet18      bdm   iad           59.92 / 35.47 / 31.47 / 26.91 / 25.15  IGDM Tab.2
    cifar100  resnet18      bdm   iad+IGDM      62.99 / 37.32 / 34.76 / 29.55 / 27.76  IGDM Tab.2
    cifar100  mobilenet_v2  ltd   iad           56.11 / - / 29.55 / - / 24.22          IGDM Tab.10
    cifar100  mobilenet_v2  ltd   iad+IGDM      58.60 / - / 31.36 / - / 25.64          IGDM Tab.10
    cifar100  mobilenet_v2  bdm   iad           56.35 / - / 28.96 / - / 23.43          IGDM Tab.10
    cifar100  mobilenet_v2  bdm   iad+IGDM      57.65 / - / 31.97 / - / 25.60          IGDM Tab.10

No published numbers for the IKL-AT teacher, BDM-AT with ResNet-18 on
CIFAR-10, or the official protocol.
"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  a = ps.protocol_arg(arg)  # the Args above
  t = ps.adversarial_teacher(a.dataset, a.teacher)
  r = ps.recipe("iad", a.protocol)
  method = config_lib.method_config(
      "iad", igdm_alpha=ps.igdm_weight(a, "iad"), alpha=1.0, temperature=1.0, beta=0.1,
      begin=60, reduction="batchmean", attack=r["attack"])
  return ps.one_teacher_config(a, r, method, t)


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return ps.protocol_arg_strings()

"""ARD (Goldblum et al., AAAI 2020), optionally plus IGDM, on CIFAR-10/100.

    python -m kdrobust.main --config configs/cifar_ard.py --workdir runs/c10_r18_ltd_ard
    python -m kdrobust.main --config configs/cifar_ard.py:dataset=cifar100,teacher=bdm,igdm=1 \
        --workdir runs/c100_r18_bdm_ard_igdm
    python -m kdrobust.main --config configs/cifar_ard.py:protocol=official \
        --workdir runs/c10_mnv2_trades_ard_official
    python -m kdrobust.evaluate --workdir runs/c10_r18_ltd_ard --checkpoint latest
    python -m kdrobust.recipe configs/cifar_ard.py:protocol=official   # the recipe card

Args: ``protocol=igdm|official``, ``dataset=cifar10|cifar100``,
``student=resnet18|mobilenet_v2``, ``teacher=ltd|bdm|ikl|trades|...`` (any
adversarial teacher of ``paper_settings.TEACHERS``), ``igdm=0|1``,
``igdm_alpha=<float>`` (default: IGDM App. B.2), ``teacher_path=<file or
dir>``. Defaults: IGDM protocol, CIFAR-10, no IGDM; the student and teacher
default to the protocol's (IGDM: ResNet-18, LTD; official: MobileNetV2,
TRADES WRN-34-10 on CIFAR-10, LTD on CIFAR-100).
Teacher files: ``paper_settings.TEACHERS`` (RobustBench's
``teachers/<dataset>/Linf/<id>.pt``; needs torch) or ``teacher_path``.

Loss (docs/fidelity.md, ARD): inner x' = PGD(CE(S(.), y)), 10 steps in the 8/255
ball; outer alpha tau^2 KL(p_T^tau(x) || p_S^tau(x')) + (1 - alpha) CE(S(x), y),
the teacher on the CLEAN x, alpha = 1 (the CE term is off).

* ``protocol=igdm`` (default; the numbers below): IGDM's re-run as its code
  runs it (ICLR_IGDM/ard_cifar100.py, ard_IGDM_cifar100.py): tau = 1,
  alpha = 1, KL ``batchmean``; 200 epochs, lr 0.1 x0.1 at 100 and 150, batch
  128, weight decay 2e-4 (the paper text: 5e-4; docs/fidelity.md erratum E3); inner step
  2/225, the default of the code's attacks.PGD (the paper text: 2/255), from
  clip(x + U[-eps, eps]), student in eval mode; the outer forwards run S(x)
  then S(x') (``forward_order='clean_first'``, ard_cifar100.py:135-136).
* ``protocol=official``: goldblum/AdversariallyRobustDistillation main.py as it
  runs: tau = 30, alpha = 1, ``elemmean`` (``nn.KLDivLoss()``); lr 0.1 for
  epochs 0-99 and 0.01 from 100 to 199 (its lr_schedule [100, 150] rebinds a
  local copy, so the "decay at 150" sets 0.01 again: E1); weight decay 2e-4,
  batch 128 (CIFAR-10) / 256 (CIFAR-100); the attack runs the student in
  train mode (``attack.bn_mode='train'``: batch statistics, running statistics
  updated at every attack forward, E2) from x + U[-eps, eps] not clipped
  (``init='uniform_unclipped'``), step 2/255; student MobileNetV2 (the code's
  default) and the TRADES WRN-34-10 teacher of ARD's README (E5; CIFAR-100:
  no teacher named, CHOICE LTD). The ARD paper's text was not readable
  (the paper's text was not readable): nothing to compare the code with.

With ``igdm=1``: + alpha_IGDM (t / E) KL_batchmean(softmax(T(x+d) - T(x-d)) ||
softmax(S(x+d) - S(x-d))), d = x' - x, alpha_IGDM from IGDM App. B.2 (e.g. 5 for
ResNet-18 / CIFAR-10 / LTD, 100 for ResNet-18 / CIFAR-100 / BDM-AT; tuned with
the IGDM protocol). Students start from PyTorch's default initialisation
(``model.init='torch'``, E12), raw [0, 1] pixels, SGD momentum 0.9, pad-4
crop + flip. Evaluation while training: PGD-20 at 8/255 every 5 epochs; IGDM
reports the last epoch (``--checkpoint latest``).

Targets, IGDM protocol (IGDM Tab. 2, 3, 10, 11; Clean / FGSM / PGD-20 / C&W /
AA, ``-`` = not reported; no published numbers for the IKL-AT teacher,
BDM-AT with ResNet-18 on CIFAR-10, or the official protocol):

"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

__doc__ += ps.targets_table(("ard",)) + "\n"

# protocol -> ARD loss hyperparameters (teacher on the clean input in both).
LOSS = {
    "igdm": ps.LOSS_HPARAMS["ard"],
    "official": {"temperature": 30.0, "alpha": 1.0, "reduction": "elemmean",
                 "teacher_input": "clean", "forward_order": "adv_first"},
}


def get_config(arg=None):
  a = ps.protocol_arg(arg, "ard")  # the Args above
  t = ps.adversarial_teacher(a.dataset, a.teacher)
  r = ps.recipe("ard", a.protocol)
  method = config_lib.method_config("ard", igdm_alpha=ps.igdm_weight(a, "ard"),
                                    attack=r["attack"], **LOSS[a.protocol])
  return ps.one_teacher_config(a, r, method, t)


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return ps.protocol_arg_strings("ard")

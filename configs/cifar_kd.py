"""Standard KD (Hinton et al. 2015) from a robust teacher on clean CIFAR inputs: a baseline.

    python -m kdrobust.main --config configs/cifar_kd.py --workdir runs/c10_mnv2_trades_kd
    python -m kdrobust.main --config configs/cifar_kd.py:dataset=cifar100,student=resnet18,teacher=bdm \
        --workdir runs/c100_r18_bdm_kd

Args: ``protocol=official`` (the only one), ``dataset=cifar10|cifar100``,
``student=mobilenet_v2|resnet18``, ``teacher=`` (default ``trades`` on
CIFAR-10, ``ltd`` on CIFAR-100; any teacher of ``paper_settings.TEACHERS``),
``temperature=<float>`` (default 1), ``teacher_path=<file or dir>``.
Defaults: KDIGA's setting (its code's ``kd`` baseline), MobileNetV2 student,
TRADES WRN-34-10 teacher, CIFAR-10. Teacher files:
``paper_settings.TEACHERS`` (RobustBench's ``teachers/<dataset>/Linf/<id>.pt``;
needs torch) or ``teacher_path``. CHOICE, UNCONFIRMED: the CIFAR-100 default
teacher (LTD WRN-34-10), as in configs/cifar_kdiga.py.

Recipe (docs/fidelity.md, KD; RulinShao/AdversariallyRobustDistillation@12e774f
main.py ``distill_method='kd'``, the baseline next to KDIGA), as the code
runs: SGD momentum 0.9, weight decay 2e-4, 200 epochs, lr 0.1 for epochs
0-99 and 0.01 from 100 to 199 (the code's lr_schedule [100, 150] rebinds a
local copy, so the "decay at 150" sets 0.01 again: docs/fidelity.md erratum E1), batch 128
(CIFAR-10) / 256 (CIFAR-100), pad-4 crop + flip, raw [0, 1] pixels, the
student from PyTorch's default initialisation (``model.init='torch'``, E12).
Loss on clean inputs only (one train-mode forward):
(1 - alpha) CE(S(x), y) + alpha tau^2 KL_elemmean(p_T^tau(x) || p_S^tau(x)),
alpha = 0.5, tau = 1 (the CIFAR KD literature often uses tau = 4, not from our
sources: ``temperature=4``). Evaluation while training: PGD-20 at 8/255 every
5 epochs (expect little robustness: KD on clean inputs transfers little).

Targets: none (KDIGA's tables are UNCONFIRMED).
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
  a = ps.protocol_arg(arg, "kd", igdm=False, temperature=1.0)
  t = ps.teacher(a.dataset, a.teacher)
  method = config_lib.method_config("kd", alpha=0.5, temperature=a.temperature,
                                    reduction="elemmean")
  return ps.one_teacher_config(a, ps.recipe("kd", a.protocol), method, t)


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  out = ps.arg_strings(dataset=ps.DATASETS, student=ps.STUDENTS)
  return out + ["protocol=official", "dataset=cifar100,student=resnet18,teacher=bdm",
                "temperature=4"]

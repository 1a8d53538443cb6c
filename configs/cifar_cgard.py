"""CGARD (Li et al., 2026 preprint): distillation with teacher-favourable examples, CIFAR-10/100.

    python -m kdrobust.main --config configs/cifar_cgard.py --workdir runs/c10_r18_ltd_cgard
    python -m kdrobust.main --config configs/cifar_cgard.py:dataset=cifar100,student=mobilenet_v2 \
        --workdir runs/c100_mnv2_ltd_cgard

Args: ``protocol=paper`` (the only one: no code was released),
``dataset=cifar10|cifar100``, ``student=resnet18|mobilenet_v2``,
``teacher=`` (default ``ltd``; any adversarial teacher of
``paper_settings.TEACHERS``), ``teacher_path=``.

Teacher: the paper's is a WRN-34-10 trained with Squeeze Training (ST;
84.75 clean / 54.33 AA on CIFAR-10, 59.40 / 29.19 on CIFAR-100 [P:CGARD
Tab.1]), not publicly released as far as we know. CHOICE: LTD
WRN-34-10 (Chen2021LTD_WRN34_10, 85.21 / 56.94 and 64.07 / 30.59 on
RobustBench), the closest public WRN-34-10 in strength; pass
``teacher_path=`` for an ST checkpoint (TRADES-layout WideResNet).

Recipe [P:CGARD section 3.1] (kdrobust.methods.cgard): 300 epochs, batch
128, SGD lr 0.1, momentum 0.9, weight decay 2e-4, lr / 10 at epochs 215,
260, 285 (read as after those 1-indexed epochs, as RSLAD/MTARD; the indexing
is UNCONFIRMED). Inner: joint search of x_S' (through the student, eval
mode: UNCONFIRMED) and x_T'' (through the teacher) maximising
D_SKL(p_S(x_S'), p_T(x_T'')), 10 simultaneous steps of 2/255 in the 8/255
ball from x + 0.001 N(0, I), x_T'' reset to x wherever the teacher's CE
exceeds its clean CE. Outer: 0.3 KL(p_T(x_T'') || p_S(x_S')) + 0.7
KL(p_T(x_S') || p_S(x_S')) (batchmean: UNCONFIRMED). Evaluation while
training: PGD-20 at 8/255 every 5 epochs.

All the paper's baselines are the authors' own reproductions with the ST
teacher (paper_settings.TARGETS lists them).

Targets [P:CGARD Tab.1] (teacher ``st`` = the ST WRN-34-10; Clean / FGSM /
PGD-20 / C&W / AA, ``-`` = not reported; paper_settings.TARGETS):

"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

__doc__ += ps.targets_table(("cgard",)) + "\n"

# The recipe: paper_settings.RECIPES[('cgard', 'paper')].


def get_config(arg=None):
  a = ps.parse_arg(arg, {"protocol": ps.protocols("cgard")}, protocol="paper", dataset="cifar10",
                   student="resnet18", teacher="", teacher_path="")
  r = ps.recipe("cgard", a.protocol)
  a.teacher = a.teacher or r["teacher"][a.dataset]
  t = ps.adversarial_teacher(a.dataset, a.teacher)
  method = config_lib.method_config("cgard", attack=r["attack"], alpha=0.7,
                                    reduction="batchmean", feasibility=True)
  return ps.one_teacher_config(a, r, method, t)


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return ps.arg_strings(dataset=ps.DATASETS, student=ps.STUDENTS) + ["teacher=trades"]

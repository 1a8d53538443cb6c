"""SAAD (Lee & Chung, TMLR 2026): sample-wise adaptive adversarial distillation on CIFAR-10/100.

    python -m kdrobust.main --config configs/cifar_saad.py --workdir runs/c10_r18_gowal21_saad
    python -m kdrobust.main --config configs/cifar_saad.py:teacher=bartoldson \
        --workdir runs/c10_r18_bartoldson_saad
    python -m kdrobust.main --config configs/cifar_saad.py:protocol=paper,dataset=cifar100 \
        --workdir runs/c100_r18_bdm_saad

Args: ``protocol=official|paper``, ``dataset=cifar10|cifar100``,
``student=resnet18|mobilenet_v2``, ``teacher=`` (default ``gowal21`` on
CIFAR-10, ``main.sh``'s; ``bdm`` on CIFAR-100, a CHOICE: the paper's CIFAR-100
teacher is UNCONFIRMED; ``bartoldson`` or any adversarial teacher of
``paper_settings.TEACHERS`` is accepted), ``ig_alpha=`` (0: the code's
comment, 1 on CIFAR-10 and 10 on CIFAR-100), ``teacher_path=``.

Teachers (RobustBench ``teachers/<dataset>/Linf/<id>.pt``, loaded by name in
the code ``utils.py:207-211``): gowal21 = Gowal2021Improving_28_10_ddpm_100m
(WRN-28-10, Swish, DeepMind layout; 87.50 clean / 63.44 AA), bartoldson =
Bartoldson2024Adversarial_WRN-94-16 (WRN-94-16, SiLU; 93.68 / 73.71).

Step (docs/fidelity.md, SAAD; HongsinLee/saad@295121c saad.py:53-86,
attacks.py saad_inner_loss; kdrobust.methods.saad): inner PGD, 10 steps of
2/255 in the 8/255 ball from x + 0.001 N(0, I), student in eval mode, on
KL(softmax(T(x) + <grad_x T_y(x), u - x> e_y) || softmax(S(u))) with the
target differentiable in u; outer
mean_i w_i [KL(T(x') || S(x')) + ig_alpha (e/E) KL(softmax(T(x') - T(x-d)) ||
softmax(S(x') - S(x-d)))], w_i = max(0, 5 (H(T(x'_i)) - min_batch H)), Shannon
entropy (main.sh --gamma 1), clean term off (main.sh --beta 0); three
train-mode student forwards S(x'), S(x-d), S(x).

* ``protocol=official`` (default): the code as it runs: 200 epochs, batch
  128, SGD lr 0.1, momentum 0.9, weight decay **2e-4** (hard-coded in
  saad.py:39; ``--wd`` is ignored), lr x0.1 after epochs 100 and 150.
* ``protocol=paper``: the same with weight decay **5e-4**, the paper's value
  as read by a third party (docs/fidelity.md, UNCONFIRMED).

Weight averaging (``config.weight_averaging``, kdrobust.weight_averaging): the
paper's model is an SWA average of the student, as the code's
``AveragedModel`` (equal weights, parameters only, updated at the end of every
epoch from epoch 95, 1-indexed: 106 snapshots), with batch-norm statistics
recalibrated by ``update_bn`` on one pass over the augmented clean training
loader ('pytorch': equal weight per batch) [C:saad@295121c:saad.py:41-42,90-97,133].
kdrobust recalibrates only when the statistics are used (evaluations,
checkpoints, the end): the final model is the same. The monitor, the best
checkpoint and results.json are the SWA model's from epoch 95 on (the raw
student too, as ``raw``); the paper reports the last-epoch SWA model
(``--checkpoint latest``). Evaluation while training: PGD-20 at 8/255 every 5
epochs (the code: every epoch, PGD-20 step 2/255).

SAAD's baselines in the same secondary reading (RSLAD 44.42 / 40.57, AdaAD
44.55 / 43.27, IGDM 44.94 / 44.76 AA with the Bartoldson / Gowal teachers)
come from scripts that attack at radius 2/255 and use no SWA (A4): not
comparable targets.

Targets (paper_settings.TARGETS; AutoAttack of the last-epoch SWA
student, mean +- sample std over 3 seeds, secondary reading [S:7i10],
UNCONFIRMED; Clean / FGSM / PGD-20 / C&W / AA; paper_settings.TARGETS):

"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib
from kdrobust import weight_averaging as wa_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

__doc__ += ps.targets_table(("saad",)) + "\n"

# SAAD's teachers (gowal21, bartoldson) and recipes live in paper_settings (TEACHERS,
# RECIPES[('saad', protocol)]).
IG_ALPHA = {"cifar10": 1.0, "cifar100": 10.0}  # [C:saad@295121c:saad.py:72]
SWA_START = 95  # --swa_epoch, 1-indexed [C:saad@295121c:args.py:17; saad.py:90]


def teacher_record(dataset: str, key: str):
  """Any adversarial teacher of paper_settings.TEACHERS (SAAD's gowal21 and bartoldson included)."""
  return ps.adversarial_teacher(dataset, key)


def get_config(arg=None):
  a = ps.parse_arg(arg, {"protocol": ps.protocols("saad")}, protocol="official",
                   dataset="cifar10", student="resnet18", teacher="", teacher_path="",
                   ig_alpha=0.0)
  r = ps.recipe("saad", a.protocol)
  a.teacher = a.teacher or r["teacher"][a.dataset]
  t = teacher_record(a.dataset, a.teacher)
  method = config_lib.method_config(
      "saad", attack=r["attack"], lambda_inner=1.0, entropy_scale=5.0, renyi_order=1.0,
      clean_weight=0.0, ig_alpha=a.ig_alpha or IG_ALPHA[a.dataset],
      weight_normalization="none")
  c = ps.one_teacher_config(a, r, method, t)
  # SWA from the end of epoch 95 (1-indexed), every epoch; torch update_bn [saad.py:90-97].
  c.weight_averaging = wa_lib.swa_config(SWA_START, bn_recalibration="pytorch")
  return c


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return ps.arg_strings(protocol=ps.protocols("saad"), dataset=ps.DATASETS) + [
      "teacher=bartoldson", "dataset=cifar100,student=mobilenet_v2,teacher=ltd",
      "ig_alpha=2"]

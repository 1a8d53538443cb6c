"""IAD-I (Zhu et al., ICLR 2022), optionally plus IGDM, on CIFAR-10/100.

    python -m kdrobust.main --config configs/cifar_iad.py --workdir runs/c10_r18_ltd_iad
    python -m kdrobust.main --config configs/cifar_iad.py:dataset=cifar100,teacher=bdm,igdm=1 \
        --workdir runs/c100_r18_bdm_iad_igdm
    python -m kdrobust.main --config configs/cifar_iad.py:protocol=official \
        --workdir runs/c10_r18_ltd_iad_official
    python -m kdrobust.main --config configs/cifar_natural.py:arch=resnet18 \
        --workdir runs/cifar10_natural_resnet18    # IAD-II's natural teacher, first
    python -m kdrobust.main --config configs/cifar_iad.py:method=iad2 --workdir runs/c10_r18_iad2
    python -m kdrobust.evaluate --workdir runs/c10_r18_ltd_iad --checkpoint latest

Args: ``method=iad|iad2``, ``protocol=igdm|official`` (IAD-II: official
only, its default), ``dataset=cifar10|cifar100``,
``student=resnet18|mobilenet_v2``, ``teacher=ltd|bdm|ikl|...`` (any
adversarial teacher of ``paper_settings.TEACHERS``), ``igdm=0|1``,
``igdm_alpha=<float>`` (default: IGDM App. B.2), ``teacher_path=<file or
dir>``, ``natural_path=`` (IAD-II's natural teacher, default the kdrobust run
``runs/<dataset>_natural_resnet18`` of
``configs/cifar_natural.py:arch=resnet18``, read at its latest checkpoint).
Defaults: IAD-I, IGDM protocol, CIFAR-10, ResNet-18, LTD, no IGDM.

Teacher files: ``paper_settings.TEACHERS`` (RobustBench's
``teachers/<dataset>/Linf/<id>.pt``; needs torch) or ``teacher_path``.

Loss (docs/fidelity.md, IAD-I; ZFancy/IAD IAD-I.py): ARD's inner attack (CE PGD, 10
steps of 2/255 in the 8/255 ball); w_i = p_T(y_i | x'_i)^0.1 (constant), and
alpha tau^2 KL(p_T^tau(x) || p_S^tau(x')) + [epoch > 60] alpha (1/B) sum_i
(1 - w_i) KL(p_S(x_i) || p_S(x'_i)) + (1 - alpha) CE(S(x), y) with alpha = 1,
tau = 1, ``batchmean``, begin = 60 (the second term from the 61st epoch).
CHOICE: IGDM's "IAD" baseline is IAD-I (UNCONFIRMED, implied by
its student-only inner attack). ``method=iad2``: IAD-II.py (docs/fidelity.md, IAD-II;
the ``iad2`` method: an adversarial and a natural teacher on x', AKD-style,
begin = 40), run with IAD-I's official recipe below (its code's natural
teacher is an in-house ResNet-18 trained by pre_train/ST.py: CHOICE a
kdrobust natural ResNet-18).

* ``protocol=igdm`` (default; the numbers below): 200 epochs, lr 0.1 x0.1 at
  100 and 150, batch 128, weight decay 2e-4 (IGDM's code, args.py; the paper
  text: 5e-4, docs/fidelity.md erratum E3; IGDM's code snapshot has no IAD script), attack
  from clip(x + U[-eps, eps]) with the student in eval mode.
* ``protocol=official``: IAD-I.py as it runs: lr 0.1 for epochs 0-99, then
  0.01 to 199 (its lr_schedule [100, 150] rebinds a local copy: E1), weight
  decay 2e-4, batch 128; the attack runs the student in train mode
  (``attack.bn_mode='train'``, E2) from x + U[-eps, eps] not clipped; the
  code's extra train-mode forward S(x') (E10) is the IAD method's. Teacher:
  the code's default is an in-house PGD-AT ResNet-18 (IAD's pre_train/AT.py,
  no released checkpoint): CHOICE LTD WRN-34-10, or ``teacher_path``. The
  IAD paper's text was not readable.

With ``igdm=1``: + alpha_IGDM (t / E) KL_batchmean(softmax(T(x+d) - T(x-d)) ||
softmax(S(x+d) - S(x-d))), d = x' - x, alpha_IGDM from IGDM App. B.2 (e.g. 50
for ResNet-18 / CIFAR-10 / LTD). Students start from PyTorch's default
initialisation (``model.init='torch'``, E12), raw [0, 1] pixels, SGD momentum
0.9, pad-4 crop + flip. Evaluation while training: PGD-20 at 8/255 every 5
epochs; IGDM reports the last epoch (``--checkpoint latest``).

IGDM's numbers for IAD-I under its protocol (Tab. 2, 3, 10, 11), Clean /
FGSM / PGD-20 / C&W / AA with ``-`` where not reported; none for the IKL-AT
teacher, BDM-AT with ResNet-18 on CIFAR-10, IAD-II or the official protocol:

"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

__doc__ += ps.targets_table(("iad",)) + "\n"


METHODS = ("iad", "iad2")


def get_config(arg=None):
  a = ps.protocol_arg(arg, "iad", methods=METHODS, natural_path="")  # the Args above
  t = ps.adversarial_teacher(a.dataset, a.teacher)
  r = ps.recipe(a.method, a.protocol)
  fields, note = ps.step_fields(a.method, a.protocol)  # E10's extra forward (official)
  method = config_lib.method_config(
      a.method, igdm_alpha=ps.igdm_weight(a, a.method), attack=r["attack"],
      **ps.LOSS_HPARAMS[a.method], **fields)  # the code's defaults, both protocols
  if a.method == "iad":
    return ps.one_teacher_config(a, r, method, t, notes=note)
  # IAD-II: teacher 0 = adversarial, 1 = natural (sorted names keep the order);
  # ``latest``: a natural run's "best" checkpoint (by PGD-20) is meaningless.
  natural = config_lib.teacher_config(
      a.natural_path or f"runs/{a.dataset}_natural_resnet18", which="latest")
  teachers = {"adversarial": ps.teacher_entry(t, a.teacher_path), "natural": natural}
  return ps.cifar_config(a.dataset, a.student, r, method, teachers=teachers, notes=note)


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  iad2 = ps.arg_strings(method=("iad2",), dataset=ps.DATASETS, student=ps.STUDENTS)
  return ps.protocol_arg_strings("iad") + iad2 + ["method=iad2,protocol=official"]

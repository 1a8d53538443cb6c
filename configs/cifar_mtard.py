"""MTARD (Zhao et al., ECCV 2022): two teachers, adversarial and natural, on CIFAR-10/100.

    python -m kdrobust.main --config configs/cifar_mtard.py --workdir runs/c10_r18_mtard
    python -m kdrobust.main --config configs/cifar_mtard.py:natural=standard \
        --workdir runs/c10_r18_mtard_std       # RobustBench 'Standard' WRN-28-10 as T_nat
    python -m kdrobust.main --config configs/cifar_mtard.py:dataset=cifar100 --workdir runs/c100_r18_mtard

The CIFAR-100 default natural teacher (and ``natural=wrn34_10``) must be
trained first (once per dataset):

    python -m kdrobust.main --config configs/cifar_natural.py:dataset=cifar100 \
        --workdir runs/cifar100_natural_wrn34_10

Args: ``protocol=official`` (the only one), ``dataset=cifar10|cifar100``,
``student=resnet18|mobilenet_v2``, ``teacher=`` adversarial teacher (default:
MTARD's/RSLAD's, ``trades`` on CIFAR-10, ``gowal70`` on CIFAR-100; any
adversarial teacher of ``paper_settings.TEACHERS`` is accepted),
``natural=mtard|wrn34_10|standard`` (default: ``mtard`` on CIFAR-10,
``wrn34_10`` on CIFAR-100), ``teacher_path=``, ``natural_path=`` (files or
directories overriding the defaults below).

Teachers, in this order (``config.teachers``: 0 = adversarial, 1 = natural):

* ``adversarial``: ``teachers/<dataset>/Linf/<RobustBench id>.pt``
  (RobustBench's ``model_dir='teachers'`` layout; needs torch) or
  ``teacher_path``. trades = Zhang2019Theoretically (the TRADES release
  WRN-34-10), gowal70 = Gowal2020Uncovering (DeepMind WRN-70-16 without extra
  data).
* ``natural``: ``natural=mtard`` (CIFAR-10 default, docs/fidelity.md erratum E6): the
  authors' clean-trained WRN-34-10 that MTARD's README links (loaded as the
  code's ``wideresnet()``), downloaded to
  ``teachers/cifar10/mtard_natural_wrn34_10.pt`` or given as ``natural_path``
  (a TRADES-layout WideResNet state_dict). The released CIFAR-100 script
  calls an undefined ``wideresnet()`` and cannot run, and no CIFAR-100 clean
  teacher is linked: CHOICE ``natural=wrn34_10`` there = a naturally trained
  WRN-34-10 of configs/cifar_natural.py in ``runs/<dataset>_natural_wrn34_10``
  (commands above; ``natural_path`` for another run), read at its latest
  checkpoint. ``natural=standard`` (CIFAR-10 only): RobustBench's naturally
  trained WRN-28-10 ``Standard`` (94.78% clean),
  ``teachers/cifar10/Linf/Standard.pt``.

Recipe (docs/fidelity.md, MTARD; zhaoshiji123/MTARD mtard_loss.py,
mtard_resnet18_cifar10/100.py): SGD lr 0.1, momentum 0.9, weight decay 2e-4,
batch 128, 300 epochs, lr x0.1 at 215, 260, 285; pad-4 crop + flip; raw
[0, 1] pixels; the student from PyTorch's default initialisation
(``model.init='torch'``, E12). Inner: student-only CE PGD, 10 steps of 2/255
in the 8/255 ball from x + 0.001 N(0, I), student in eval mode. Outer:
w_adv KL(p_{T_adv}(x') || p_S(x')) + w_nat KL(p_{T_nat}(x) || p_S(x)), each KL
with RSLAD's reduction (``batchmean`` x ``scale = 0.1`` on both datasets);
w_nat starts at 0.5 and follows w_nat <- w_nat - 0.025 (w_nat - r_n / (r_a +
r_n)), r = (L / L_first_batch)^1, w_adv = 1 - w_nat, with the weight step 0.025
decayed x0.1 together with the lr (at 215, 260, 285). Evaluation while
training: PGD-20 at 8/255 on the test set every 5 epochs.

Targets: none. paper_settings.TARGETS has no MTARD numbers (the MTARD paper body
was not readable); compare with RSLAD (configs/cifar_rslad.py
``protocol=official``), which uses the same adversarial teachers.
"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

NATURAL = {"cifar10": ("mtard", "wrn34_10", "standard"), "cifar100": ("wrn34_10",)}
NATURAL_TEACHER_KEY = {"mtard": "mtard_natural", "standard": "standard"}  # TEACHERS keys


def get_config(arg=None):
  a = ps.protocol_arg(arg, "mtard", igdm=False, natural="", natural_path="")
  a.natural = a.natural or NATURAL[a.dataset][0]
  ps.choice(f"natural teacher for {a.dataset}", a.natural, NATURAL[a.dataset])
  t = ps.adversarial_teacher(a.dataset, a.teacher)
  r = ps.recipe("mtard", a.protocol)
  method = config_lib.method_config(
      "mtard", reduction="batchmean", scale=0.1, weight_lr=0.025,
      weight_lr_decay_epochs=r["decay_epochs"], weight_lr_decay_factor=0.1, b=1.0,
      attack=r["attack"])
  if a.natural in NATURAL_TEACHER_KEY:
    natural = ps.teacher_entry(ps.teacher(a.dataset, NATURAL_TEACHER_KEY[a.natural]),
                               a.natural_path)
  else:  # a kdrobust run of configs/cifar_natural.py (or a converted directory)
    # ``latest``: a natural run's "best" checkpoint (by PGD-20) is meaningless.
    natural = config_lib.teacher_config(
        a.natural_path or f"runs/{a.dataset}_natural_{a.natural}", which="latest")
  # ConfigDict iterates keys in sorted order: "adversarial" < "natural" keeps
  # MTARD's order (teacher 0 = T_adv, teacher 1 = T_nat).
  teachers = {"adversarial": ps.teacher_entry(t, a.teacher_path), "natural": natural}
  return ps.cifar_config(a.dataset, a.student, r, method, teachers=teachers,
                         notes=f"natural teacher: {a.natural}")


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return ["protocol=official"] + [
      s for d in ps.DATASETS
      for s in ps.arg_strings(dataset=(d,), student=ps.STUDENTS, natural=NATURAL[d])]

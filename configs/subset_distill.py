"""Any distillation method on the real CIFAR-10 subset (5,085 / 1,017 images), on a CPU.

Prepare the subset and train its teacher once (see configs/cifar10_subset_pgd_at.py; docs/data.md
says what the subset is and how ``python -m kdrobust.data.cifar_subset`` builds it):

    python -m kdrobust.data.prepare cifar10 \
        --source cifar-10-python-subset.tar.gz \
        --data_dir data/cifar10_subset
    python -m kdrobust.main --config configs/cifar10_subset_pgd_at.py --workdir runs/subset_pgd_at

then

    python -m kdrobust.main --config configs/subset_distill.py:method=rslad --workdir runs/subset/rslad
    python -m kdrobust.main --config configs/subset_distill.py:method=adaad,igdm=5 \
        --workdir runs/subset/adaad_igdm

MTARD and DARHT take a second teacher, ``teacher2=`` (default: the same run as
``teacher``); MTARD's natural teacher:

    python -m kdrobust.main --config configs/cifar10_subset_pgd_at.py:method=natural \
        --workdir runs/subset_natural
    python -m kdrobust.main --config configs/subset_distill.py:method=mtard,teacher2=runs/subset_natural \
        --workdir runs/subset/mtard

Args: as configs/digits_distill.py (``protocol=short_run``, ``method=``, ``igdm=<alpha>``,
``teacher=`` default ``runs/subset_pgd_at``, ``teacher2=``, ``epochs=10``,
``eps=0.03137`` = 8/255) plus ``data_dir=`` (default ``data/cifar10_subset``).

Teacher: the ``small_cnn`` PGD-AT run of configs/cifar10_subset_pgd_at.py (eps
8/255, 10 epochs). Student ``tiny_cnn`` (DARHT: with 2 teacher slots),
per-dataset normalisation inside the model. SGD lr 0.05, momentum 0.9, weight
decay 5e-4, batch 128, cosine schedule, inner attack 5 steps of 2/255 in the
8/255 ball (loop unrolled: faster on XLA:CPU), evaluation PGD-20 at 8/255
every 5 epochs on the 1,017 test images; method hyperparameters as
configs/digits_distill.py (``paper_settings.SHORT_RUN``). Accuracies on this
subset are not CIFAR-10 results.

Measured on the 2-core development CPU while other jobs kept it busy (load
average 6 to 8): the teacher (configs/cifar10_subset_pgd_at.py) 21 min wall,
the natural teacher 7 min; ``method=adaad`` 12 min wall, 9.5 min of CPU
(user + system), for the default 10 epochs (31 min with the attack loop not
unrolled), ending at clean 0.28 / PGD-20 0.14 (teacher 0.30 / 0.20). The other
methods were timed on digits only (configs/digits_distill.py).
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import digits_distill  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  a = ps.parse_arg(arg, {"protocol": (ps.SHORT_PROTOCOL,)}, protocol=ps.SHORT_PROTOCOL,
                   method="adaad", igdm=0.0, teacher="runs/subset_pgd_at", teacher2="",
                   epochs=10, eps=8 / 255, data_dir="data/cifar10_subset")
  # unroll=5: XLA:CPU runs the unrolled 5-step attack faster; 20 AdaAD steps took
  # 63 s of CPU with unroll=1 and 40 s with unroll=5 (XLA:CPU runs an unrolled loop faster).
  method, teachers, student, model_kw = digits_distill.method_and_teachers(
      a.method, a.igdm, a.eps, a.epochs, a.teacher, a.teacher2, unroll=5)
  return ps.cpu_config("cifar10_subset", student, method, epochs=a.epochs, eps=a.eps,
                       data_dir=a.data_dir, teachers=teachers, model_kwargs=model_kw)


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return [s.replace("runs/quickstart/natural", "runs/subset_natural")
          for s in digits_distill.arg_combinations()]

"""Any distillation method on real digits, in minutes on a CPU.

    python -m kdrobust.main --config configs/quickstart.py --workdir runs/quickstart/teacher
    python -m kdrobust.main --config configs/digits_distill.py:method=rslad --workdir runs/digits/rslad
    python -m kdrobust.main --config configs/digits_distill.py:method=ard,igdm=5 --workdir runs/digits/ard_igdm
    python -m kdrobust.main --config configs/digits_distill.py:method=pgd_at,igdm=5 \
        --workdir runs/digits/pgd_at_igdm

Multi-teacher methods read a second teacher, ``teacher2=`` (default: the same
run as ``teacher``). For MTARD's natural teacher train one first:

    python -m kdrobust.main --config configs/quickstart.py:method=natural \
        --workdir runs/quickstart/natural
    python -m kdrobust.main --config configs/digits_distill.py:method=mtard,teacher2=runs/quickstart/natural \
        --workdir runs/digits/mtard
    python -m kdrobust.main --config configs/digits_distill.py:method=darht,teacher2=runs/quickstart/natural \
        --workdir runs/digits/darht

Args: ``protocol=short_run`` (the only one: the CPU-sized choices below, not a
paper's recipe), ``method=`` every registered method that takes a teacher (``kd``,
``ard``, ``iad``, ``iad2``, ``rslad``, ``mtard``, ``kdiga``, ``kdiga_ard``,
``kdiga_rs``, ``adaad``, ``adaiad``, ``darht``; the list is read from the
registry), ``peeraid`` (no teacher: a peer of the student's architecture and
optimizer is trained with it) and ``pgd_at`` /
``trades`` with ``igdm`` > 0; ``igdm=<alpha>`` (0 = off; only for the bases
IGDM supports), ``teacher=`` (default ``runs/quickstart/teacher``, the PGD-AT
``small_cnn`` of configs/quickstart.py, read at its best checkpoint),
``teacher2=`` (MTARD's and IAD-II's natural teacher, DARHT's second teacher; read at its
latest checkpoint, because a natural run's "best" by PGD-20 is meaningless),
``epochs=10``, ``eps=0.1``.

Data: scikit-learn's bundled 8x8 digits (1,437 train / 360 test), prepared on
first use. Student ``tiny_cnn`` (widths 16-32-64), per-dataset normalisation
inside the model. SGD lr 0.05, momentum 0.9, weight decay 5e-4, batch 64,
cosine schedule, eps 0.1 in [0, 1] pixels, inner attack 5 steps of eps/4 from
each method's own start (uniform or gaussian), evaluation PGD-20 at eps every
5 epochs. CHOICES for short CPU runs (``paper_settings.SHORT_RUN``): every KL
at ``batchmean`` (no 1/C, no RSLAD/MTARD 0.1 factor), tau = 1 for ARD and
AdaIAD, IAD/AdaIAD ``begin`` and DARHT's curriculum at the papers' fraction of
the run (30% for ``begin``, IAD-II's 20%; DARHT's 50/350 and 118/350), MTARD's
weight step not decayed (cosine lr). MTARD and IAD-II: teacher 0 = ``teacher``
(adversarial), teacher 1 = ``teacher2`` (natural). DARHT: K = 2 slots (``teacher``, ``teacher2``),
``model.kwargs.head_slots = 2``. Caveat of that DARHT scaling: the KD-only
phase then starts at epoch 4 of 10, with the cosine learning rate near its
peak, and the student's final layer gets no gradient in that phase; keeping
CE on (``--config.method.ce_stop_epoch=10``) took DARHT from 0.62 to 0.81
AutoAttack on digits (docs/results.md). Accuracies on digits are demos, not
paper results.

Measured (wall clock, JIT compilation included) on the 2-core development
CPU while other jobs kept it busy (load average about 8): the teacher
(configs/quickstart.py) 61 s, the natural teacher 38 s, each of the 17
settings above (every method, the IGDM variants, MTARD and DARHT with the
natural teacher) 34 s to 81 s for the default 10 epochs. Final clean / PGD-20
accuracy at eps 0.1: teacher 0.99 / 0.87; the methods trained on adversarial
inputs 0.98-0.99 / 0.79-0.85; DARHT 0.89 / 0.65; KD and KDIGA (clean inputs
only) 0.98 / 0.42.
"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib
from kdrobust import methods as methods_lib
from kdrobust.methods import igdm as igdm_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

IGDM_ONLY = ("pgd_at", "trades")  # teacher-free bases: a teacher only through IGDM
# Distillation without a frozen teacher: the target is an extra network trained with
# the student (PeerAiD's peer: the student's architecture and optimizer).
PEER_METHODS = ("peeraid",)


def distill_methods():
  """Registered methods that take a teacher, plus the IGDM-only bases."""
  names = [n for n in methods_lib.available() if methods_lib.get_class(n).teachers[0] >= 1]
  return sorted(names) + list(PEER_METHODS) + list(IGDM_ONLY)


def method_and_teachers(method, igdm, eps, epochs, teacher, teacher2, unroll=1):
  """``(config.method, config.teachers, student name, student kwargs)`` of a short CPU run.

  Shared with configs/subset_distill.py. ``unroll`` is the inner attack's
  ``lax.fori_loop`` unroll (faster on XLA:CPU for 32x32 images, not for 8x8).
  """
  ps.choice("method", method, distill_methods())
  if method in IGDM_ONLY and igdm <= 0:
    raise ValueError(f"{method} uses a teacher only through IGDM: set igdm=<alpha> > 0 "
                     "(plain adversarial training: configs/quickstart.py).")
  if igdm > 0 and method not in igdm_lib.SUPPORTED:
    raise ValueError(f"IGDM is not defined for {method!r}; it supports: "
                     f"{', '.join(igdm_lib.SUPPORTED)}.")
  hparams = ps.short_run_hparams(method, epochs)
  attack = {"eps": eps, "step_size": eps / 4, "steps": 5, "unroll": unroll}
  method_config = config_lib.method_config(method, igdm_alpha=igdm, attack=attack, **hparams)
  first = config_lib.teacher_config(teacher)
  second = config_lib.teacher_config(teacher2 or teacher, which="latest")
  student, model_kw = "tiny_cnn", {}
  # Two-teacher methods; sorted names: adversarial (0) before natural (1).
  if method in ("mtard", "iad2", "b_mtard", "fair_mtard"):
    teachers = {"adversarial": first, "natural": second}
  elif method == "darht":  # slot k imitates teacher k; names keep the order
    teachers = {"t0_teacher": first, "t1_teacher2": second}
    model_kw = {"head_slots": 2}
  else:
    teachers = {"teacher": first}
  if method in PEER_METHODS:  # no frozen teacher (teacher= / teacher2= unused)
    teachers = {}
  return method_config, teachers, student, model_kw


def get_config(arg=None):
  a = ps.parse_arg(arg, {"protocol": (ps.SHORT_PROTOCOL,)}, protocol=ps.SHORT_PROTOCOL,
                   method="adaad", igdm=0.0, teacher="runs/quickstart/teacher", teacher2="",
                   epochs=10, eps=0.1)
  method, teachers, student, model_kw = method_and_teachers(
      a.method, a.igdm, a.eps, a.epochs, a.teacher, a.teacher2)
  return ps.cpu_config("digits", student, method, epochs=a.epochs, eps=a.eps,
                       teachers=teachers, model_kwargs=model_kw)


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  out = []
  for m in distill_methods():
    if m not in IGDM_ONLY:
      out.append(f"method={m}")
    if m in igdm_lib.SUPPORTED:
      out.append(f"method={m},igdm=5")
  return out + ["method=mtard,teacher2=runs/quickstart/natural",
                "method=iad2,teacher2=runs/quickstart/natural",
                "method=darht,teacher2=runs/quickstart/natural"]

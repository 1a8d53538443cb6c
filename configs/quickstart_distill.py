"""Quickstart, part 2: distil the quickstart's robust teacher into a smaller student
with AdaAD + IGDM, on real digits, on any CPU.

    python -m kdrobust.main --config configs/quickstart_distill.py:teacher=runs/quickstart/teacher \
        --workdir runs/quickstart/student

(``python -m kdrobust.quickstart`` runs teacher, student and AutoAttack in one go.)

Args: ``protocol=short_run`` (the only one), ``teacher=``, ``epochs=15``,
``eps=0.1``, ``igdm=5.0`` (alpha), ``method=adaad``.

Teacher: ``small_cnn`` trained by configs/quickstart.py (PGD-AT, eps 0.1).
Student: ``tiny_cnn`` (widths 16-32-64, about 4x fewer parameters).
Method: AdaAD (Huang et al. 2023): inner attack maximises KL(p_T(x') || p_S(x'))
through both networks from a gaussian start; outer loss KL on x' (lambda = 1).
Reduction ``batchmean`` (the CIFAR-100 branch of the official code) because the
digits runs are short and the ``elemmean`` scale (1/C) trains 10x slower at
this learning rate. Plus IGDM (Lee et al. 2025) with alpha = 5 ramped linearly
over the epochs. Choice for speed on a CPU: a 5-step inner attack (papers: 10)
with step eps/4, eps = 0.1.
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
  a = ps.parse_arg(arg, {"protocol": (ps.SHORT_PROTOCOL,)}, protocol=ps.SHORT_PROTOCOL,
                   teacher="runs/quickstart/teacher", epochs=15, eps=0.1, igdm=5.0,
                   method="adaad")
  method = config_lib.method_config(
      a.method, igdm_alpha=a.igdm, reduction="batchmean",
      attack=dict(eps=a.eps, step_size=a.eps / 4, steps=5, init="gaussian"))
  c = ps.cpu_config("digits", "tiny_cnn", method, epochs=a.epochs, eps=a.eps,
                    teachers={"robust": config_lib.teacher_config(a.teacher)})
  c.teacher_eval_examples = 0  # the quickstart reports the teacher itself
  return c

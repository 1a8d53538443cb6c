"""Quickstart: PGD adversarial training of a small CNN on real digits, on any CPU.

    python -m kdrobust.main --config configs/quickstart.py --workdir runs/quickstart

Data: scikit-learn's bundled 8x8 handwritten digits (1,437 train / 360 test),
prepared automatically the first time (no network). Model: ``small_cnn`` (3
conv-BN-ReLU blocks). Method: PGD-AT (Madry), eps = 0.1 in [0,1] pixel space,
PGD-5 inner attack with step eps/4, uniform start; evaluation with PGD-20 at
the same eps. Runs in a few minutes on a 2-core CPU.

Args: ``epochs=15``, ``eps=0.1``, ``method=pgd_at|trades|natural`` (the same
recipe with TRADES' loss, or natural training: MTARD's and DARHT's natural
teacher)::

    python -m kdrobust.main --config configs/quickstart.py:method=natural --workdir runs/quickstart/natural
"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


METHODS = ("pgd_at", "trades", "natural")  # the methods without a teacher


def get_config(arg=None):
  a = config_lib.parse_arg(arg, epochs=15, eps=0.1, method="pgd_at")
  if a.method not in METHODS:
    raise ValueError(f"configs/quickstart.py: method={a.method!r} is not one of "
                     f"{', '.join(METHODS)} (distillation: configs/digits_distill.py).")
  method = config_lib.method_config(
      a.method, attack=dict(eps=a.eps, step_size=a.eps / 4, steps=5, init="uniform"))
  c = ps.cpu_config("digits", "small_cnn", method, epochs=a.epochs, eps=a.eps)
  c.ckpt.every_epochs = 1
  return c

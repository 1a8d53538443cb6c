"""Smoke run on the real CIFAR-10 subset (5,085 train / 1,017 test images).

Prepare it once, offline (docs/data.md says what the subset is and how
``python -m kdrobust.data.cifar_subset`` builds it from the official CIFAR-10 archive):

    python -m kdrobust.data.prepare cifar10 \
        --source cifar-10-python-subset.tar.gz \
        --data_dir data/cifar10_subset

then

    python -m kdrobust.main --config configs/cifar10_subset_pgd_at.py --workdir runs/subset_pgd_at
    python -m kdrobust.main --config configs/cifar10_subset_pgd_at.py:method=trades --workdir runs/subset_trades

A small CNN, PGD-AT (or TRADES) with eps 8/255 and a PGD-5 inner attack,
10 epochs: minutes on a CPU. Accuracies on this subset are not CIFAR-10 results.
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
  a = config_lib.parse_arg(arg, method="pgd_at", epochs=10, data_dir="data/cifar10_subset",
                           arch="small_cnn")
  init = "gaussian" if a.method == "trades" else "uniform"
  method = config_lib.method_config(
      a.method, attack=dict(eps=8 / 255, step_size=2 / 255, steps=5, init=init))
  return ps.cpu_config("cifar10_subset", a.arch, method, epochs=a.epochs, eps=8 / 255,
                       data_dir=a.data_dir)

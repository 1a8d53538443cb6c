"""Natural (clean) training of a CIFAR teacher: MTARD's natural teacher.

    python -m kdrobust.main --config configs/cifar_natural.py --workdir runs/cifar10_natural_wrn34_10
    python -m kdrobust.main --config configs/cifar_natural.py:dataset=cifar100 \
        --workdir runs/cifar100_natural_wrn34_10

Args: ``protocol=kdrobust`` (the only one: our choice),
``dataset=cifar10|cifar100``, ``arch=<kdrobust.models name>`` (default
``wrn34_10``; IAD-II's natural teacher: ``resnet18``). configs/cifar_mtard.py
and configs/cifar_iad.py read ``runs/<dataset>_natural_<arch>`` by default, so
keep that workdir name.

Recipe: CHOICE (no paper gives MTARD's natural-teacher
training): the standard CIFAR recipe, SGD lr 0.1, momentum 0.9, weight decay
5e-4, batch 128, 200 epochs, lr x0.1 at 100 and 150, pad-4 crop + flip, cross
entropy on clean inputs, raw [0, 1] pixels (``model.normalize = False``, as
the distillation codes feed their teachers), PyTorch's default initialisation
(``model.init='torch'``). The run's "best" checkpoint is
chosen by PGD-20 accuracy (about 0% for a natural model), so
configs/cifar_mtard.py loads this run's LATEST checkpoint (``which='latest'``).
No target numbers (a WRN-34-10 typically reaches about 95% clean accuracy on
CIFAR-10 and about 78% on CIFAR-100; literature values, not a paper's).
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
  a = ps.parse_arg(arg, {"protocol": ps.protocols("natural")}, protocol="kdrobust",
                   dataset="cifar10", arch="wrn34_10")
  return ps.cifar_config(a.dataset, a.arch, ps.recipe("natural", a.protocol),
                         config_lib.method_config("natural"))


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return ps.arg_strings(dataset=ps.DATASETS)

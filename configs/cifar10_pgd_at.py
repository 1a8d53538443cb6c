"""PGD-AT (Madry et al. 2018) on CIFAR-10: the full recipe.

    python -m kdrobust.main --config configs/cifar10_pgd_at.py --workdir runs/c10_pgd_at_r18
    python -m kdrobust.main --config configs/cifar10_pgd_at.py:arch=wrn34_10 --workdir runs/c10_pgd_at_wrn

Needs CIFAR-10 prepared offline first (``config.data.data_dir``, default the
TFDS directory ``~/tensorflow_datasets``):

    python -m kdrobust.data.prepare cifar10 --source cifar-10-python.tar.gz --data_dir DIR

Recipe (methods.md sections 2, 3.2; AdaAD repo ``Plain_Madry``): SGD lr 0.1,
momentum 0.9, coupled L2 weight decay 5e-4, batch 128, 110 epochs, lr x0.1 at
epochs 100 and 105; pad-4 crop + flip; inner PGD-10, eps 8/255, step 2/255,
uniform random start, student in inference mode during the attack; outer CE on
the adversarial batch in train mode. Evaluation: PGD-20 (step 2/255, uniform
start) on the test set every 5 epochs; the best checkpoint by PGD-20 is kept.
Inputs are raw [0,1] pixels (no mean/std), as in the official codes.
Target (IGDM Tab. 3, ResNet-18): clean 84.52, PGD-20 42.80, AA 41.12.
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
  a = config_lib.parse_arg(arg, arch="resnet18", epochs=110)
  r = dict(ps.recipe("pgd_at", "plain_madry"), epochs=a.epochs)
  return ps.cifar_config("cifar10", a.arch, r,
                         config_lib.method_config("pgd_at", attack=r["attack"]))

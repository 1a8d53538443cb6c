"""PGD-AT (Madry et al. 2018) on CIFAR-10: the full recipe.

    python -m kdrobust.main --config configs/cifar10_pgd_at.py --workdir runs/c10_pgd_at_r18
    python -m kdrobust.main --config configs/cifar10_pgd_at.py:arch=wrn34_10 --workdir runs/c10_pgd_at_wrn

Needs CIFAR-10 prepared offline first (``config.data.data_dir``, default the
TFDS directory ``~/tensorflow_datasets``):

    python -m kdrobust.data.prepare cifar10 --source cifar-10-python.tar.gz --data_dir DIR

Args: ``protocol=official|igdm``, ``arch=<kdrobust.models name>`` (default
``resnet18``), ``epochs=<int>`` (default: the protocol's).

* ``protocol=official`` (default; docs/fidelity.md, PGD-AT and erratum E11): AdaAD's
  ``Plain_Madry`` as it runs (boyellow/AdaAD main.py with its README's
  command): SGD lr 0.1, momentum 0.9, coupled weight decay 5e-4, batch 128,
  110 epochs, lr x0.1 at epochs 100 and 105 (0-indexed); inner PGD-10, eps
  8/255, step 2/255 (the README; the argparse defaults are 16 and 4), from
  clamp(x + 0.001 N(0, I), 0, 1), student in eval mode; outer CE on the
  adversarial batch in train mode, after which the code runs one more
  train-mode S(x) forward whose only effect is a running-statistics update.
  The start is ``attack.init='gaussian_clamped'`` and that forward PgdAT's
  ``extra_clean_forward`` field (the recipe card says if this kdrobust lacks
  it).
* ``protocol=igdm``: IGDM's PGD-AT baseline (200 epochs, x0.1 at 100 and
  150, weight decay 2e-4, uniform start; as configs/cifar_igdm.py
  ``base=pgd_at,igdm=0``).

The student starts from PyTorch's default initialisation
(``model.init='torch'``, E12; a WRN ``arch`` gets the official WideResNet's own
re-initialisation, ``model.init='wrn'``) on raw [0, 1] pixels. Evaluation: PGD-20 (step
2/255, uniform start) on the test set every 5 epochs; the best checkpoint by
PGD-20 is kept. Target (IGDM Tab. 3, ResNet-18, IGDM's protocol): clean
84.52, PGD-20 42.80, AA 41.12.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg=None):
  return ps.adversarial_training_config("pgd_at", arg)


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return ps.arg_strings(protocol=ps.protocols("pgd_at")) + ["epochs=50"]

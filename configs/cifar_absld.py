"""ABSLD (Zhao et al., NeurIPS 2024): RSLAD with per-class teacher temperatures, on CIFAR-10.

    python -m kdrobust.main --config configs/cifar_absld.py --workdir runs/c10_r18_absld
    python -m kdrobust.main --config configs/cifar_absld.py:protocol=official \
        --workdir runs/c10_r18_absld_official      # the released step (product temperatures)
    python -m kdrobust.evaluate --workdir runs/c10_r18_absld --checkpoint latest

Args: ``protocol=kdrobust|official``, ``student=resnet18|mobilenet_v2``,
``teacher=`` (default ``trades``: the code loads ``./models/model_cifar_wrn.pt``,
the file name of the TRADES WRN-34-10 release that RSLAD also uses, so the
teacher is inferred; any adversarial CIFAR-10 teacher of
``paper_settings.TEACHERS`` is accepted), ``teacher_path=``. CIFAR-10 only:
the authors released no CIFAR-100 script (docs/fidelity.md, ABSLD).

Recipe (zhaoshiji123/ABSLD@7407c3a resnet18_absld_cifar10.py): 300 epochs,
batch 128, SGD lr 0.1, momentum 0.9, weight decay 2e-4, no Nesterov, lr x0.1
after epochs 215, 260, 285; pad-4 crop + flip; raw [0, 1] pixels; student
from PyTorch's default initialisation. Inner: RSLAD's PGD (10 x 2/255 in the
8/255 ball, x + 0.001 N start, student in eval mode) towards the tempered
adversarial soft label. Outer: (5/6) KL(q_adv || p_S(x')) + (1/6)
KL(q_nat || p_S(x)) with the code's mean over B x C and log(q + 1e-5).
Temperatures: per class, start at 1, after each epoch
tau <- clip(tau - eta (L_c - mean L) / max |L - mean L|, 0.5, 5) from the
epoch's per-class student CE sums, eta = 0.1 (x0.1 with the lr).

* ``protocol=kdrobust`` (default): two separate temperatures
  (``temperature_mode='separate'``), the code's evident intent (A1 in the
  method's docstring, ``kdrobust.methods.absld``).
* ``protocol=official``: ``temperature_mode='product'``: the released step,
  where both soft labels use tau_adv[y] tau_nat[y] (the aliasing of two
  ``.detach()``-ed tensors).

Evaluation: the code's monitor is PGD-20 with step 0.003 on a class-sorted
test set, reporting the average and the worst-class robust accuracy; here
the base config's PGD-20 every 5 epochs (use ``kdrobust.evaluate`` for AA).

Targets: none. No ABSLD number was found (the paper
body was not readable); compare with RSLAD (configs/cifar_rslad.py
``protocol=official``), same teacher and recipe.
"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

PROTOCOLS = {"kdrobust": "separate", "official": "product"}


def recipe(protocol: str) -> dict:
  """The ABSLD training recipe: ``paper_settings.recipe('absld', protocol)``."""
  return ps.recipe("absld", protocol)


def get_config(arg=None):
  a = ps.parse_arg(arg, {"protocol": tuple(PROTOCOLS), "dataset": ("cifar10",)},
                   protocol="kdrobust", dataset="cifar10", student="resnet18",
                   teacher="trades", teacher_path="")
  t = ps.adversarial_teacher(a.dataset, a.teacher)
  r = recipe(a.protocol)
  method = config_lib.method_config(
      "absld", attack=r["attack"], temperature_mode=PROTOCOLS[a.protocol],
      temperature_lr=0.1, temperature_lr_decay_epochs=r["decay_epochs"],
      temperature_lr_decay_factor=0.1, temperature_min=0.5, temperature_max=5.0,
      adv_weight=5 / 6, clean_weight=1 / 6, reduction="batchmean", scale=0.1, log_eps=1e-5)
  return ps.one_teacher_config(a, r, method, t)


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return ps.arg_strings(protocol=tuple(PROTOCOLS), student=ps.STUDENTS)

"""IGDM's SVHN and Tiny ImageNet settings: every base method, with or without IGDM.

    python -m kdrobust.main --config configs/igdm_datasets.py:method=pgd_at,igdm=0,student=wrn34_10 \
        --workdir runs/svhn_cropped_pgd_at_wrn34_10   # the SVHN teacher, trained first
    python -m kdrobust.main --config configs/igdm_datasets.py \
        --workdir runs/svhn_r18_adaad_igdm          # IGDM Tab. 3: 93.48 clean / 53.89 AA
    python -m kdrobust.main --config configs/igdm_datasets.py:dataset=tiny_imagenet,method=ard,igdm=1 \
        --workdir runs/tin_prn18_rift_ard_igdm
    python -m kdrobust.evaluate --workdir runs/svhn_r18_adaad_igdm --checkpoint latest

Data (prepare once, offline): ``python -m kdrobust.data.prepare svhn_cropped
--source DIR_WITH_train_32x32.mat_AND_test_32x32.mat`` and ``python -m
kdrobust.data.prepare tiny_imagenet --source tiny-imagenet-200.zip`` (labels =
sorted wnids, torchvision ImageFolder's order; evaluation on the 10,000
validation images, as the papers' Tiny ImageNet test set).

Args: ``protocol=igdm`` (the only one: IGDM's recipe),
``dataset=svhn_cropped|tiny_imagenet``, ``method=pgd_at|trades|ard|iad|rslad|
adaad|adaiad``, ``igdm=0|1`` (default 1), ``igdm_alpha=<float>`` (default: IGDM
App. B.2's row of the dataset), ``student=`` (default: the paper's,
ResNet-18 on SVHN, PreActResNet-18 on Tiny ImageNet; any kdrobust model name,
e.g. ``wrn34_10`` to train the SVHN teacher), ``teacher_path=<file or dir>``.
Defaults: SVHN, AdaAD + IGDM (IGDM Tab. 3's SVHN rows). AKD (in IGDM's tables)
is not implemented.

Teachers (IGDM Tab. 1, docs/fidelity.md, IGDM), neither public:

* SVHN: IGDM's own PGD-AT WRN-34-10 (93.90 clean / 54.28 AA). Default: the
  kdrobust run ``runs/svhn_cropped_pgd_at_wrn34_10`` of the first command
  above (CHOICE: IGDM gives no recipe for it; this file's PGD-AT recipe,
  with IGDM's weight decay 2e-4 and SVHN schedule); or
  a TRADES-layout WideResNet ``.pt`` as ``teacher_path``.
* Tiny ImageNet: RiFT (Zhu et al. 2023) WRN-34-10 (52.54 / 21.78), supplied
  as ``teachers/tiny_imagenet/rift_wrn34_10.pt`` or ``teacher_path``.
  UNCONFIRMED: its layout (we assume the TRADES-style WideResNet with global
  average pooling, raw [0, 1] inputs, labels in ImageFolder order); the
  step-0 teacher check (``config.teacher_eval_examples``) shows a mismatch as
  a far-off clean accuracy.

Recipe (IGDM App. B.1; docs/fidelity.md, IGDM): each base method's IGDM
protocol recipe (configs/cifar_*.py ``protocol=igdm``: attacks, losses, weight
decay 2e-4 as IGDM's code, 5e-4 for AdaAD without IGDM) with SVHN 50 epochs,
lr 0.1 x0.1 at 40 and 45, and Tiny ImageNet 100 epochs, x0.1 at 50 and 80;
batch 128, eps 8/255, 10 steps of 2/255 (ARD: IGDM code's 2/225), pad-4 crop +
flip, raw [0, 1] pixels, students from PyTorch's default initialisation
(``model.init='torch'``, E12). UNCONFIRMED (the sources give none for these
datasets): the learning rate, taken as the common 0.1 (SVHN adversarial
training is often run at 0.01: ``--config.optim.lr=0.01``), and the
augmentation (pad-4 crop + flip on both, as on CIFAR). IGDM alpha (App. B.2):
SVHN 60 / 30 / 50 / 40 / 3 / 9 and Tiny ImageNet 30 / 20 / 10 / 20 / 1 / 10
for PGD-AT / TRADES / ARD / IAD / RSLAD / AdaAD (AdaIAD: AdaAD's), ramped by
t / E. Evaluation while training: PGD-20 at 8/255 every 5 epochs.

Targets (IGDM Tab. 3 SVHN: Clean / AA; Tab. 14 Tiny ImageNet: Clean / PGD /
AA, the PGD column shown as PGD-20; ``-`` = not reported):

"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib
from kdrobust import models as models_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

METHODS = ("pgd_at", "trades", "ard", "iad", "rslad", "adaad", "adaiad")
TEACHER_FREE = ("pgd_at", "trades")  # a teacher only through the IGDM term

__doc__ += ps.targets_table(METHODS, ps.MORE_DATASETS) + "\n"


def get_config(arg=None):
  a = ps.parse_arg(arg, {"protocol": ("igdm",), "dataset": ps.MORE_DATASETS,
                         "method": METHODS, "student": models_lib.available()},
                   protocol="igdm", dataset="svhn_cropped", method="adaad", igdm=True,
                   igdm_alpha=0.0, student="", teacher_path="")
  base = "adaad" if a.method == "adaiad" else a.method  # AdaIAD: AdaAD's recipe
  r = ps.igdm_dataset_recipe(base, a.dataset)
  a.student = a.student or r["student"]
  t_key = r["teacher"][a.dataset]
  t = ps.teacher(a.dataset, t_key)
  method = config_lib.method_config(a.method, igdm_alpha=ps.igdm_weight(a, a.method, t_key),
                                    attack=r["attack"], **ps.LOSS_HPARAMS[a.method])
  teachers = None
  if a.igdm or a.method not in TEACHER_FREE:
    teachers = {"teacher": ps.teacher_entry(t, a.teacher_path)}
  notes = ("UNCONFIRMED for this dataset: lr 0.1, pad-4 crop + flip; teacher "
           f"{t_key}: {t['note']}")
  return ps.cifar_config(a.dataset, a.student, r, method, teachers=teachers, notes=notes)


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  out = ps.arg_strings(dataset=ps.MORE_DATASETS, method=METHODS, igdm=(True, False))
  return out + ["protocol=igdm", "method=pgd_at,igdm=0,student=wrn34_10"]

"""DARHT (Deng et al., arXiv 2402.15586): distillation from heterogeneous teachers, CIFAR.

    python -m kdrobust.main --config configs/cifar_darht.py --workdir runs/c100_r18_darht
    python -m kdrobust.main --config configs/cifar_darht.py:teachers=public \
        --workdir runs/c100_r18_darht_public   # runnable with RobustBench files only
    python -m kdrobust.main --config configs/cifar_darht.py:dataset=cifar10,teachers=trades+ltd+bdm \
        --workdir runs/c10_r18_darht3

Args: ``protocol=official`` (the only one), ``dataset=cifar100|cifar10``,
``student=resnet18|mobilenet_v2``,
``teachers=paper|public|<key>+<key>+...`` (keys of
``paper_settings.TEACHERS[dataset]``), ``vit_dir=<directory>`` (where the
paper set's ViTs are, default ``teachers/cifar100/darht``). Defaults: the
released script's CIFAR-100 setting, ResNet-18 student, the paper's 4
teachers.

Teachers (slot k of the student's head imitates teacher k; names ``t<k>_<key>``
keep that order, because ``config.teachers`` iterates in sorted order):

* ``teachers=paper`` (CIFAR-100 only; the released DARHT_CIFAR_100_stateful_MWU.py,
  docs/fidelity.md, DARHT): t0 = gowal70, RobustBench Gowal2020Uncovering (WRN-70-16
  without extra data, the code's ``cifar100_linf_wrn70-16_without.pt``),
  ``teachers/cifar100/Linf/Gowal2020Uncovering.pt``; t1..t3 = ViT-B/16 FAT
  (K = 10, tau = 0), ViT-B/16 FAT (tau = 1), ViT-B/32 FAT (tau = 0) on 224x224
  inputs normalised with the CIFAR-100 mean/std. These ViTs have NO public
  checkpoint: train them yourself (friendly adversarial training of a
  ViT-B) and supply each as ``<vit_dir>/vit_b16_fat_k10_tau0``,
  ``<vit_dir>/vit_b16_fat_tau1``, ``<vit_dir>/vit_b32_fat_tau0``: a kdrobust run
  or converted directory whose model maps 32x32 [0, 1] CIFAR images to logits
  (resizing to 224 and normalising inside). kdrobust's ViT does that with
  ``model.kwargs = {"patch_size": 16, "image_size": 224, "resize_inputs": True,
  "mean": CIFAR-100 mean, "std": CIFAR-100 std}`` (bilinear resize, tested
  against torch's), so such a teacher can be trained with kdrobust; but the
  torch converter has no timm/ViT-pytorch layout yet, so the paper's own
  PyTorch ViT checkpoints cannot be loaded. Until then use ``teachers=public``
  or a ``+`` list.
  Any teacher file can be replaced with ``--config.teachers.<name>.path=...``
  (e.g. ``--config.teachers.t0_gowal70.path=DIR``).
* ``teachers=public`` (CHOICE, not the paper's: the released code has no
  CIFAR-10 script and the ViTs are private): RobustBench teachers that differ
  in architecture and training algorithm, CIFAR-100: gowal70 + ltd + bdm + ikl;
  CIFAR-10: trades + ltd + bdm + ikl.

Recipe (docs/fidelity.md, DARHT; bayesomicslab/DARHT@5c0a1ff) as the code runs:
SGD momentum 0.9, weight decay 5e-4, batch 256, 350 epochs (the code's
argparse default; CHOICE: the run length behind the paper is UNCONFIRMED).
The code builds MultiStepLR([115, 160, 185], x0.1) and a one-epoch warm-up;
as it runs (docs/fidelity.md erratum E9, checked against torch's schedulers in
tests/schedules_test.py), the never-stepped warm-up scheduler's constructor
sets the lr to 0, and ``MultiStepLR.step(epoch)`` is called only after epochs
e > 1 and sets the lr of epoch e + 1, so (0-indexed epochs) lr 0 for 0-2,
0.1 for 3-115, 0.01 for 116-160, 0.001 for 161-185, 1e-4 from 186
(``optim.schedule = 'table'``); pad-4 crop + flip; raw [0, 1] pixels; the
student from PyTorch's default initialisation (``model.init='torch'``, E12).
Student: backbone -> Dense(K * C) "slots" -> Dense(C) (``model.kwargs.head_slots
= K``). Per batch, with probability 0.5 x~ = x, else x~ = PGD(CE(student), x;
eps 0.031, step 0.003, 10 steps, x + 0.001 N(0, I) start). Loss by epoch e
(0-indexed): e < 50 CE; 50 <= e < 118 CE + KD; e >= 118 KD, with
KD = sum_k w_k KL_batchmean(p_{t_k}(x~) || softmax(z_k(x~))),
w_k = exp(-meanCE(t_k(x~), y)) (unnormalised, every batch); batches with
CE > 8 are skipped. ``--config.method.kd_loss=mse`` is the code's MSE option
(PyTorch ``MSELoss()`` on the logits). MC dropout: CHOICE, not implemented,
because it is not in the released code and its role is UNCONFIRMED
(docs/fidelity.md, DARHT); nothing here guesses it. Evaluation while training: PGD-20 at 8/255
on the full test set every 5 epochs (the code: 1000 random test images at
eps 0.031, best checkpoint by PGD-20 there).

Targets: none. The paper reports only relative gains of "weighted robust
accuracy" (docs/fidelity.md, DARHT: +3.66 pp Auto-PGD, +4.76 pp Square on CIFAR-100,
+3.26 / +5.23 pp on CIFAR-10 over competing distillation methods); no
absolute number could be confirmed.
"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _teacher_keys(dataset: str, spec: str) -> list[str]:
  if spec == "paper":
    if dataset not in ps.DARHT_PAPER_TEACHERS:
      raise ValueError(f"DARHT's paper teacher set is known for "
                       f"{', '.join(ps.DARHT_PAPER_TEACHERS)} only; for {dataset} use "
                       "teachers=public or a '+'-joined list of: "
                       f"{', '.join(ps.TEACHERS[dataset])}.")
    return list(ps.DARHT_PAPER_TEACHERS[dataset])
  if spec == "public":
    return list(ps.DARHT_PUBLIC_TEACHERS[dataset])
  keys = [k for k in spec.split("+") if k]
  for k in keys:
    ps.choice(f"DARHT teacher for {dataset} (or teachers=paper|public)", k,
              ps.TEACHERS[dataset])
  if not keys:
    raise ValueError("teachers= is empty; use paper, public or a '+'-joined list of: "
                     f"{', '.join(ps.TEACHERS[dataset])}.")
  return keys


def get_config(arg=None):
  a = ps.parse_arg(arg, {"protocol": ps.protocols("darht")}, protocol="official",
                   dataset="cifar100", student="resnet18", teachers="paper",
                   vit_dir="teachers/cifar100/darht")
  keys = _teacher_keys(a.dataset, a.teachers)
  r = ps.recipe("darht", a.protocol)
  method = config_lib.method_config(
      "darht", p_adv=0.5, kd_start_epoch=50, ce_stop_epoch=118, ce_skip_threshold=8.0,
      attack=r["attack"])
  teachers = {}  # slot k = teacher k: the names ``t<k>_<key>`` sort in slot order
  for k, key in enumerate(keys):
    if key in ps.DARHT_VITS:  # user-supplied (no public checkpoint)
      teachers[f"t{k}_{key}"] = config_lib.teacher_config(os.path.join(a.vit_dir, key))
    else:
      teachers[f"t{k}_{key}"] = ps.teacher_entry(ps.teacher(a.dataset, key))
  return ps.cifar_config(a.dataset, a.student, r, method, teachers=teachers,
                         model_kwargs={"head_slots": len(keys)})


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  out = ps.arg_strings(dataset=("cifar100",), student=ps.STUDENTS,
                       teachers=("paper", "public"))
  out += ps.arg_strings(dataset=("cifar10",), student=ps.STUDENTS, teachers=("public",))
  return out + ["dataset=cifar10,teachers=trades+ltd+bdm", "protocol=official"]

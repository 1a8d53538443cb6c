"""PeerAiD (Jung et al., CVPR 2024): distillation from a peer trained jointly with the student.

    python -m kdrobust.main --config configs/cifar_peeraid.py --workdir runs/c10_r18_peeraid
    python -m kdrobust.main --config configs/cifar_peeraid.py:dataset=cifar100 \
        --workdir runs/c100_r18_peeraid

Args: ``protocol=official`` (the only one), ``dataset=cifar10|cifar100``,
``student=resnet18|mobilenet_v2`` (the peer is the same architecture, as in
every README command).

No teacher: the peer (``config.extra_networks.peer``) is a second network of
the student's architecture, trained from scratch (PyTorch's default
initialisation, ``model.init = 'torch'``) with its own SGD; its parameters,
batch statistics and optimizer state are checkpointed with the student
(``TrainState.extra``). Its ``model`` and ``optim`` blocks here are explicit
copies of the student's (the README runs both with lr 0.1, momentum 0.9,
weight decay 2e-4 and the same schedule); ``student=`` sets both, a command
line override of ``config.model`` / ``config.optim`` changes the student only.

Step (docs/fidelity.md, PeerAiD; jaewonalive/PeerAiD@cd12e92 main.py:333-404,
attack_function.py:59-84; kdrobust.methods.peeraid): p0 = P_eval(x);
x' = PGD(sum KL(softmax(p0) || softmax(S_eval(u))), x; 8/255, 2/255, 10) from
x + 0.001 N(0, I); L_peer = g1 CE(P(x'), y) + g2 tr^2 KL(S(x')/tr || P(x')/tr)
with S(x') not detached (A6); L_stu = l1 CE(S(x'), y) + l2 T^2 KL(sg P(x')/T ||
S(x')/T) + l3 T^2 KL(S(x)/T || S(x')/T); every KL ``nn.KLDivLoss()``'s mean
over B*C (``elemmean``); one backward of L_peer + L_stu, then both SGD steps.

Recipe (README "reproduce Table 1", configs/PeerAiD_resnet18_cifar10.json and
_cifar100.json): 300 epochs, batch 128, lr 0.1 for both networks, x0.1 at the
start of 0-indexed epochs 214, 259 and 284 (``adjust_learning_rate`` at
main.py:840-852 on 0-indexed epochs, ``lr /= 10`` for each decay epoch <=
epoch: one epoch earlier than RSLAD's "after 215", docs/fidelity.md), weight
decay 2e-4, T = 5, g1 = 1, tr = 1, l1 = 0, l2 = 1, l3 = 1, and g2 = 0.1 on
CIFAR-10, 1 on CIFAR-100. (Tiny-ImageNet: T = 1, g2 = 100, l1 = 0.035, l2 =
35, l3 = 20, 200 epochs, decays 99/149: not in this file, kdrobust has no
Tiny-ImageNet PeerAiD setting yet.)

Weight averaging (``config.weight_averaging``, kdrobust.weight_averaging): the
paper's runs (``--swa_s``) average the student, SWA from the first decay
epoch (0-indexed 214, so ``start_epoch=215`` 1-indexed) at the end of every
epoch, ``swa <- swa (1 - 1/(n+1)) + theta/(n+1)`` (the equal mean; parameters
only), batch-norm statistics recomputed by ``bn_update`` on the augmented
clean training set ('sample_weighted': momentum b/(n+b))
[C:PeerAiD@cd12e92:main.py:110-111,427-432; utils/SWA.py:25-28,61-88]; the
peer is never averaged. The code keeps the best SWA and the best plain
student by test PGD-10; here the monitor ranks the SWA model once it exists
(results.json and the eval log also give the raw student, as ``raw``).
Evaluation while training: PGD-20 at 8/255 every 5 epochs (the code: PGD-10
every epoch, on the full test set).

Targets (paper_settings.TARGETS; ResNet-18 students, eps 8/255, AA =
AutoAttack standard; whether the paper reports the SWA or the plain student is
UNCONFIRMED):

    dataset   student   source                         clean  PGD-20  CW     AA
    cifar10   resnet18  PeerAiD paper, via [S:7i10]    85.01  -       -      52.57  (UNCONFIRMED)
    cifar10   resnet18  CGARD Tab. 1 reproduction      82.63  54.21   52.24  50.25
    cifar100  resnet18  CGARD Tab. 1 reproduction      56.76  32.99   29.66  27.97
    cifar10   mobilenet_v2  CGARD Tab. 1 reproduction  82.12  53.70   50.76  48.76
    cifar100  mobilenet_v2  CGARD Tab. 1 reproduction  56.67  31.47   28.82  26.92

The PeerAiD poster (confirmed) reports CIFAR-100 ResNet-18 student robust
accuracy 29.69 (attack not stated; 24.48 with a pretrained teacher instead of
the peer), and Tiny-ImageNet ResNet-18 55.19 clean / 21.67 AA.
"""

from __future__ import annotations

import os
import sys

from kdrobust import config_lib
from kdrobust import weight_averaging as wa_lib

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)
import paper_settings as ps  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

_SRC = ("[C:PeerAiD@cd12e92:main.py:333-404,840-852; attack_function.py:59-84; README.md; "
        "configs/PeerAiD_resnet18_cifar10.json, PeerAiD_resnet18_cifar100.json]")
_SWA = ("student SWA from the end of 0-indexed epoch 214 (start_epoch 215), every epoch, BN "
        "recomputed sample-weighted (config.weight_averaging)")
RECIPES = {
    "official": ps._r(300, (214, 259, 284), 2e-4, 128, ps._attack("gaussian"), _SRC,  # pylint: disable=protected-access
                      teacher="none",
                      notes="no teacher: a peer of the student's architecture is trained "
                      "jointly (config.extra_networks.peer, its own SGD); lr decays at the "
                      "start of 0-indexed epochs 214/259/284 (A7); " + _SWA),
}
# --gamma2 of the README commands [C:PeerAiD@cd12e92:README.md:31,39].
GAMMA2 = {"cifar10": 0.1, "cifar100": 1.0}


def get_config(arg=None):
  a = ps.parse_arg(arg, {"protocol": tuple(RECIPES)}, protocol="official", dataset="cifar10",
                   student="resnet18")
  r = dict(RECIPES[a.protocol], method="peeraid", protocol=a.protocol)
  r["attack"] = dict(r["attack"])
  method = config_lib.method_config(
      "peeraid", attack=r["attack"], temperature=5.0, peer_temperature=1.0, lambda1=0.0,
      lambda2=1.0, lambda3=1.0, gamma1=1.0, gamma2=GAMMA2[a.dataset], reduction="elemmean",
      peer_loss_trains_student=True, clean_target_grad=True, adv_forwards="two")
  c = ps.cifar_config(a.dataset, a.student, r, method)
  # The peer: the student's architecture and optimizer (explicit copies, plain data).
  c.extra_networks = {"peer": {"model": c.model.to_dict(), "optim": c.optim.to_dict()}}
  # SWA of the student from its first lr-decay epoch (0-indexed e >= 214 in main.py:427,
  # i.e. 1-indexed 215), every epoch; bn_update's momentum b/(n+b) [utils/SWA.py:61-88].
  c.weight_averaging = wa_lib.swa_config(int(c.optim.decay_epochs[0]) + 1,
                                         bn_recalibration="sample_weighted")
  return c


def arg_combinations():
  """Every setting this file documents (the tests build each one)."""
  return ps.arg_strings(dataset=ps.DATASETS, student=ps.STUDENTS)

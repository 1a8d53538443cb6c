"""PeerAiD: adversarial distillation from a specialized peer tutor (Jung et al., CVPR 2024).

Source: the official code ``jaewonalive/PeerAiD@cd12e92`` (``main.py:333-404``
the step, ``attack_function.py:59-84`` ``LinfPeerAttack``, ``main.py:840-852``
the schedule, the README's "reproduce Table 1" commands); docs/fidelity.md,
PeerAiD. There is no frozen teacher: a *peer* network of the student's
architecture, trained from scratch with its own SGD, learns on the student's
adversarial examples and is the student's distillation target. The peer is an
extra trainable network (``extra_networks = ('peer',)``,
:mod:`kdrobust.train_step`): its parameters, batch statistics and optimizer
state live in ``TrainState.extra['peer']`` and are checkpointed with the
student. Step parity with the code: ``tests/parity_peeraid_test.py``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax

from kdrobust import losses
from kdrobust.methods import register
from kdrobust.methods.base import InnerAttack, LossOut, Method, sg
from kdrobust.methods.kd import attack_kwargs, bn_only_forward
from kdrobust.methods.rslad import rslad_inner

Array = jax.Array

ADV_FORWARDS = ("two", "shared")


@register
@dataclasses.dataclass(frozen=True)
class PeerAiD(Method):
  """PeerAiD (docs/fidelity.md, PeerAiD): student and peer trained jointly, one backward.

  Step, in the code's order ``[C:PeerAiD@cd12e92:main.py:333-404]``:

  1. ``p0 = sg(P_eval(x))``: the peer in inference mode (running statistics)
     at the clean batch (``ctx.extra_eval['peer']``).
  2. ``x' = PGD(sum_i KL(softmax(p0_i) || softmax(S_eval(u_i))), x; 8/255, 2/255, 10)``
     from ``x + 0.001 N(0, I)`` (not clamped; every step projects, then clamps
     to [0, 1]); the student in inference mode (``LinfPeerAttack``: the
     summed ``KLDivLoss``, the same loop as RSLAD's, :func:`rslad_inner`).
  3. Train-mode forwards: peer ``a = P(x')``, student ``s1 = S(x')``, then
     ``s2 = S(x')`` and ``s0 = S(x)``: the student's running statistics move
     3 times per step (x', x', x), the peer's once.
  4. ``L_peer = g1 CE(a, y) + g2 tr^2 KL_elem(softmax(s1/tr) || softmax(a/tr))``,
     ``L_stu = l1 CE(s2, y) + l2 T^2 KL_elem(softmax(sg(a)/T) || softmax(s2/T))
              + l3 T^2 KL_elem(softmax(s0/T) || softmax(s2/T))``,
     ``KL_elem`` = ``nn.KLDivLoss()`` (mean over B*C: ``reduction='elemmean'``).
  5. One ``value_and_grad`` of ``L_peer + L_stu`` with respect to both
     networks, then the peer's and the student's own SGD updates
     (``loss_total.backward(); peer_optimizer.step(); student_optimizer.step()``):
     both from the pre-step gradients, so their order does not matter.

  Gradients (docs/fidelity.md). The code detaches only the peer's output in
  ``L_stu`` (``peer_outputs.detach_()``). The peer's KL takes the student's
  ``s1`` as its target *without* detaching it, and PyTorch differentiates
  ``kl_div`` with respect to its target, so the student also receives
  ``g2 tr^2 dKL/ds1``; the l3 term's target ``s0`` is not detached either.
  Both are configurable, because the paper writes two losses, one per
  network, and does not say whether a network's output that is the other's
  target carries a gradient (UNCONFIRMED; docs/fidelity.md, PeerAiD):

  * ``peer_loss_trains_student = True`` (default, the code): ``s1`` is not
    stop-gradiented; ``False``: ``sg(s1)``, each network is trained by its
    own loss only (the two-separate-minimisations reading).
  * ``clean_target_grad = True`` (default, the code): ``s0`` is not
    stop-gradiented in the l3 term; ``False``: ``sg(s0)``.

  ``adv_forwards``: ``'two'`` (default, the code: two differentiated train-mode
  forwards at x'); ``'shared'``: one differentiated forward used as both
  ``s1`` and ``s2`` plus a statistics-only forward (no backward) for the
  second running-statistic update. In train mode the two outputs are the
  same function of the parameters (batch statistics, no dropout), so the
  gradient and the statistics are the code's, for one backward pass less;
  the parity test checks both.

  Defaults are the README's CIFAR-10 command (``--temperature 5 --gamma1 1
  --gamma2 0.1 --re_kd_temperature 1 --lamb1 0 --lamb2 1 --lamb3 1``); CIFAR-100
  uses ``gamma2 = 1`` (configs/cifar_peeraid.py). The argparse defaults
  (T = 6, g2 = 1, l1 = 1) are not the paper's runs. IGDM (``method.igdm``) is
  not applied on top: the distillation target is a network trained in the
  same step, not a frozen teacher, and kdrobust.methods.igdm does not list
  ``peeraid``. SWA of the student (the paper's reported model) is
  ``config.weight_averaging``'s, not this method's.
  """
  name = "peeraid"
  teachers = (0, 0)
  extra_networks: ClassVar[tuple[str, ...]] = ("peer",)
  attack: InnerAttack = InnerAttack(init="gaussian")
  temperature: float = 5.0        # T (--temperature)
  peer_temperature: float = 1.0   # tr (--re_kd_temperature)
  lambda1: float = 0.0            # --lamb1: CE(S(x'), y)
  lambda2: float = 1.0            # --lamb2: KL(sg P(x') || S(x'))
  lambda3: float = 1.0            # --lamb3: KL(S(x) || S(x'))
  gamma1: float = 1.0             # --gamma1: CE(P(x'), y)
  gamma2: float = 0.1             # --gamma2: KL(S(x') || P(x'))
  reduction: str = "elemmean"
  peer_loss_trains_student: bool = True
  clean_target_grad: bool = True
  adv_forwards: str = "two"

  def __post_init__(self):
    if self.adv_forwards not in ADV_FORWARDS:
      raise ValueError(f"Unknown PeerAiD adv_forwards {self.adv_forwards!r}; "
                       f"valid: {ADV_FORWARDS}.")
    if self.reduction not in losses.REDUCTIONS:
      raise ValueError(f"Unknown PeerAiD reduction {self.reduction!r}; "
                       f"valid: {losses.REDUCTIONS}.")

  def perturb(self, ctx):
    p0 = sg(ctx.extra_eval["peer"](ctx.x))
    return rslad_inner(ctx.student_inner, p0, ctx.x, ctx.sub_key("attack"),
                       stateful=ctx.student_inner, **attack_kwargs(self.attack))

  def loss(self, ctx, student, x_adv, state):
    peer = ctx.extra_train["peer"]
    red = lambda v: losses.reduce(v, ctx.mask, reduction=self.reduction,  # noqa: E731
                                  num_classes=ctx.num_classes)
    ce = lambda z: losses.reduce(losses.xent(z, ctx.y), ctx.mask)  # noqa: E731
    a = peer(x_adv)
    s1 = student(x_adv)
    if self.adv_forwards == "two":
      s2 = student(x_adv)
    else:
      bn_only_forward(student, x_adv)
      s2 = s1
    s0 = student(ctx.x)
    tr, t = self.peer_temperature, self.temperature
    s1_target = s1 if self.peer_loss_trains_student else sg(s1)
    peer_kl = red(losses.kl(a, s1_target, temperature=tr))
    peer_ce = ce(a)
    loss_peer = self.gamma1 * peer_ce + self.gamma2 * tr * tr * peer_kl
    kl_peer = red(losses.kl(s2, sg(a), temperature=t))
    s0_target = s0 if self.clean_target_grad else sg(s0)
    kl_nat = red(losses.kl(s2, s0_target, temperature=t))
    loss_student = self.lambda2 * t * t * kl_peer + self.lambda3 * t * t * kl_nat
    if self.lambda1:
      loss_student = loss_student + self.lambda1 * ce(s2)
    m = {"loss_peer": loss_peer, "loss_student": loss_student, "peer_ce": peer_ce,
         "peer_kl": peer_kl, "kl_peer": kl_peer, "kl_nat": kl_nat,
         "peer_train_adv_accuracy": losses.reduce(losses.accuracy(a, ctx.y), ctx.mask),
         "train_adv_accuracy": losses.reduce(losses.accuracy(s2, ctx.y), ctx.mask),
         "train_accuracy": losses.reduce(losses.accuracy(s0, ctx.y), ctx.mask)}
    return LossOut(loss_peer + loss_student, m, state)

"""PGD adversarial training (Madry et al., ICLR 2018)."""

from __future__ import annotations

import dataclasses

from kdrobust import losses
from kdrobust.methods import register
from kdrobust.methods.base import InnerAttack, LossOut, Method


@register
@dataclasses.dataclass(frozen=True)
class PgdAT(Method):
  """Madry's PGD-AT.

  Inner (student in inference mode):
  ``x' = PGD(CE(S(.), y), x; eps = 8/255, step = 2/255, K = 10, uniform start)``.
  Outer (student in train mode): ``L = (1/B) sum_i CE(S(x'_i), y_i)``
  (methods.md section 3.2).
  """
  name = "pgd_at"
  attack: InnerAttack = InnerAttack(init="uniform")

  def perturb(self, ctx):
    return self.attack(lambda u: losses.xent(ctx.student_inner(u), ctx.y),
                       ctx.x, ctx.sub_key("attack"), stateful=ctx.student_inner)

  def loss(self, ctx, student, x_adv, state):
    logits = student(x_adv)
    ce = losses.reduce(losses.xent(logits, ctx.y), ctx.mask)
    acc = losses.reduce(losses.accuracy(logits, ctx.y), ctx.mask)
    return LossOut(ce, {"ce_adv": ce, "train_adv_accuracy": acc}, state)

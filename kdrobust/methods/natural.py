"""Natural (standard) training: cross-entropy on clean inputs."""

from __future__ import annotations

import dataclasses

from kdrobust import losses
from kdrobust.methods import register
from kdrobust.methods.base import LossOut, Method


@register
@dataclasses.dataclass(frozen=True)
class Natural(Method):
  """``L = (1/B) sum_i CE(S(x_i), y_i)``, student in train mode; no attack.

  The standard step, as AdaAD's ``Plain_Clean`` runs it
  ``[C:AdaAD@9e5c6e5:main.py:291,302-305,386-387]``: ``net.train()``, one
  forward ``S(x)`` (one running-statistic update), ``nn.CrossEntropyLoss()``
  (mean over the batch), SGD with momentum and coupled weight decay.
  """
  name = "natural"

  def loss(self, ctx, student, x_adv, state):
    logits = student(ctx.x)
    ce = losses.reduce(losses.xent(logits, ctx.y), ctx.mask)
    acc = losses.reduce(losses.accuracy(logits, ctx.y), ctx.mask)
    return LossOut(ce, {"ce": ce, "train_accuracy": acc}, state)

"""IAD-I: Introspective Adversarial Distillation (Zhu et al., ICLR 2022)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kdrobust import losses
from kdrobust.methods import register
from kdrobust.methods.ard import ce_inner
from kdrobust.methods.base import InnerAttack, LossOut, Method, sg
from kdrobust.methods.kd import (attack_kwargs, bn_only_forward, distill_kl,
                                 forward_if, is_one)

Array = jax.Array


def iad_weights(teacher_adv_logits: Array, labels: Array, beta: float = 0.1) -> Array:
  """Teacher reliability ``w_i = p_T(y_i | x'_i)^beta`` (a constant: stop-gradient)."""
  p = jax.nn.softmax(jnp.asarray(teacher_adv_logits, jnp.float32), axis=-1)
  p_y = jnp.take_along_axis(p, labels[:, None], axis=-1)[:, 0]
  return sg(p_y**beta)


def introspection_term(student_adv_logits: Array, student_clean_logits: Array,
                       weights: Array, *, mask: Array | None = None) -> Array:
  """``(1/B) sum_i (1 - w_i) KL(p_S(x_i) || p_S(x'_i))`` at temperature 1.

  The target ``p_S(x)`` is **not** detached (as in the code): the gradient
  flows through both student forwards.
  """
  per_example = (1.0 - weights) * losses.kl(student_adv_logits, student_clean_logits)
  return losses.reduce(per_example, mask, reduction="batchmean")


def iad_active(epoch: Array, begin: int) -> Array:
  """Whether IAD's second term is on: ``epoch - 1 >= begin`` for the 1-indexed ``epoch``.

  The official loops are 0-indexed (``for epoch in range(epochs)``, term on
  when ``epoch >= begin``), so with ``begin = 60`` the term starts in the
  61st epoch.
  """
  return jnp.asarray(epoch, jnp.float32) - 1.0 >= begin


def iad_loss(student_adv_logits: Array, student_clean_logits: Array | None,
             student_target_logits: Array, teacher_kd_logits: Array,
             weights: Array, labels: Array, active, *, alpha: float = 1.0,
             temperature: float = 1.0, reduction: str = "batchmean",
             mask: Array | None = None) -> tuple[Array, dict[str, Array]]:
  """The IAD-I / AdaIAD objective (pure):

  ``a tau^2 red_i KL(p_T^tau || p_S^tau(x'_i))
    + [active] a (1/B) sum_i (1 - w_i) KL(p_S(x_i) || p_S(x'_i))
    + (1 - a) (1/B) sum_i CE(S(x_i), y_i)``.

  ``teacher_kd_logits`` are the teacher on ``x`` (IAD-I) or on ``x'``
  (AdaIAD); ``student_target_logits`` is the (not detached) ``S(x)`` of the
  introspection target; ``weights`` from :func:`iad_weights`; ``active`` a
  bool (traced or not). ``student_clean_logits`` may be ``None`` when
  ``alpha == 1``.
  """
  kl = distill_kl(student_adv_logits, sg(teacher_kd_logits),
                  temperature=temperature, reduction=reduction, mask=mask)
  intro = introspection_term(student_adv_logits, student_target_logits, weights,
                             mask=mask)
  intro = jnp.where(active, intro, 0.0)
  loss = alpha * temperature**2 * kl + alpha * intro
  metrics = {"kl": kl, "introspection": intro,
             "introspection_active": jnp.asarray(active, jnp.float32),
             "teacher_reliability": losses.reduce(weights, mask)}
  if not is_one(alpha):
    ce = losses.reduce(losses.xent(student_clean_logits, labels), mask)
    loss = loss + (1.0 - alpha) * ce
    metrics["ce"] = ce
  return loss, metrics


@register
@dataclasses.dataclass(frozen=True)
class IAD(Method):
  """IAD-I, the ARD-based variant (methods.md section 3.5).

  Inner: ARD's student-only CE PGD (``8/255, 2/255, 10`` steps, uniform start).
  Outer, with ``w_i = p_T(y_i | x'_i)^beta`` (teacher on ``x'``, constant):

  ``L = alpha tau^2 (1/B) sum_i KL(p_T^tau(x_i) || p_S^tau(x'_i))
        + [e >= begin] alpha (1/B) sum_i (1 - w_i) KL(p_S(x_i) || p_S(x'_i))
        + (1 - alpha) (1/B) sum_i CE(S(x_i), y_i)``

  with ``e`` the 0-indexed epoch (``ctx.epoch - 1``): the code's loop is
  0-indexed, so with ``begin = 60`` the second term is on from the 61st
  epoch. The self-introspection target ``p_S(x)`` is not detached (as in the
  code). Source: ``ZFancy/IAD@a8091a8 IAD-I.py``; defaults ``alpha = 1``,
  ``tau = 1``, ``beta = 0.1``, ``begin = 60``; the code's KLs are explicit
  ``(1/B) sum``, i.e. ``reduction = 'batchmean'``.

  Batch-norm order follows the code: ``S(x')``, ``S(x)`` (the CE forward,
  always run; without a backward pass when ``alpha = 1``), then, only when the
  second term is on, a third ``S(x)`` (the introspection target), run inside a
  ``lax.cond``. The teacher forward on ``x'`` for ``w`` is also skipped
  before ``begin``. (The official code runs its PGD with the student in train
  mode; we follow methods.md section 0: inference mode.)
  """
  name = "iad"
  teachers = (1, 1)
  attack: InnerAttack = InnerAttack(init="uniform")
  alpha: float = 1.0
  temperature: float = 1.0
  beta: float = 0.1
  begin: int = 60
  reduction: str = "batchmean"

  def perturb(self, ctx):
    return ce_inner(ctx.student_inner, ctx.x, ctx.y, ctx.sub_key("attack"),
                    stateful=ctx.student_inner, **attack_kwargs(self.attack))

  def loss(self, ctx, student, x_adv, state):
    active = iad_active(ctx.epoch, self.begin)
    s_adv = student(x_adv)
    s_clean = (bn_only_forward(student, ctx.x) if is_one(self.alpha)
               else student(ctx.x))
    s_target = forward_if(student, active, ctx.x)
    teacher = ctx.teacher(0)
    t_clean = sg(teacher(ctx.x))
    w = jax.lax.cond(active,
                     lambda: iad_weights(teacher(x_adv), ctx.y, self.beta),
                     lambda: jnp.ones(ctx.y.shape, jnp.float32))
    loss, m = iad_loss(s_adv, s_clean, s_target, t_clean, w, ctx.y, active,
                       alpha=self.alpha, temperature=self.temperature,
                       reduction=self.reduction, mask=ctx.mask)
    m["train_accuracy"] = losses.reduce(losses.accuracy(s_clean, ctx.y), ctx.mask)
    m["train_adv_accuracy"] = losses.reduce(losses.accuracy(s_adv, ctx.y), ctx.mask)
    return LossOut(loss, m, state)

"""IAD: Introspective Adversarial Distillation (Zhu et al., ICLR 2022): IAD-I and IAD-II.

Source: ``ZFancy/IAD@a8091a8 IAD-I.py`` and ``IAD-II.py``. Both official
scripts attack with the student in ``train()`` mode from ``x + U[-eps, eps]``
(not clamped before the first step, docs/fidelity.md erratum E2): the recipes set
``attack.bn_mode = 'train'`` and ``attack.init = 'uniform_unclipped'``
(``configs/paper_settings.py``, ``protocol=official``).
"""

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
  """Teacher reliability ``w_i = p_T(y_i | x'_i)^beta`` (a constant: stop-gradient).

  The code reads each weight with ``.item()`` (``IAD-I.py:176-178``), so no
  gradient flows through it. float32 logits give float32 weights (float64
  stays float64: the step-parity tests).
  """
  p = jax.nn.softmax(losses.at_least_f32(teacher_adv_logits), axis=-1)
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


def _weights_if(active: Array, teacher_adv_logits_fn, labels: Array, beta: float) -> Array:
  """:func:`iad_weights` when ``active`` (teacher forward in a ``lax.cond``), else ones."""
  on = lambda: iad_weights(teacher_adv_logits_fn(), labels, beta)
  shape = jax.eval_shape(on)
  return jax.lax.cond(active, on, lambda: jnp.ones(shape.shape, shape.dtype))


@register
@dataclasses.dataclass(frozen=True)
class IAD(Method):
  """IAD-I, the ARD-based variant (docs/fidelity.md, IAD-I).

  Inner: ARD's student-only CE PGD (``8/255, 2/255, 10`` steps). Outer, with
  ``w_i = p_T(y_i | x'_i)^beta`` (teacher on ``x'``, constant) and ``e`` the
  0-indexed epoch (``ctx.epoch - 1``):

  ``L = alpha tau^2 (1/B) sum_i KL(p_T^tau(x_i) || p_S^tau(x'_i))
        + [e >= begin] alpha (1/B) sum_i (1 - w_i) KL(p_S(x_i) || p_S(x'_i))
        + (1 - alpha) (1/B) sum_i CE(S(x_i), y_i)``.

  The code's loop is 0-indexed, so with ``begin = 60`` the second term is on
  from the 61st epoch. The self-introspection target ``p_S(x)`` is not
  detached (as in the code). Source: ``ZFancy/IAD@a8091a8 IAD-I.py``
  (``[C:IAD@a8091a8:IAD-I.py:159-181]``); defaults ``alpha = 1``, ``tau = 1``,
  ``beta = 0.1``, ``begin = 60``; the code's KLs are explicit ``(1/B) sum``,
  i.e. ``reduction = 'batchmean'``.

  Batch-norm order follows the code: the K attack forwards (``bn_mode='train'``
  in the official recipe, E2), ``S(x')``, with ``adv_bn_forward`` a second
  ``S(x')`` whose only effect is a running-statistics update (the code's
  detached ``basicop``, E10), then, only when the second term is on, the
  introspection target ``S(x)`` (in a ``lax.cond``), then ``S(x)`` for the CE
  (always run, as in the code; without a backward pass when ``alpha = 1``).
  (``adv_bn_forward`` defaults to False, the forward a re-implementation of the
  loss does not have; ``protocol=official`` sets it, as IAD-I.py runs it. The
  teacher forward on ``x'`` for ``w`` is skipped before ``begin``; the teacher
  has no state, so this changes nothing.)
  """
  name = "iad"
  teachers = (1, 1)
  attack: InnerAttack = InnerAttack(init="uniform")
  alpha: float = 1.0
  temperature: float = 1.0
  beta: float = 0.1
  begin: int = 60
  reduction: str = "batchmean"
  adv_bn_forward: bool = False

  def perturb(self, ctx):
    return ce_inner(ctx.student_inner, ctx.x, ctx.y, ctx.sub_key("attack"),
                    stateful=ctx.student_inner, **attack_kwargs(self.attack))

  def loss(self, ctx, student, x_adv, state):
    active = iad_active(ctx.epoch, self.begin)
    s_adv = student(x_adv)
    if self.adv_bn_forward:
      bn_only_forward(student, x_adv)  # IAD-I.py:169 `basicop` (E10)
    s_target = forward_if(student, active, ctx.x)
    s_clean = (bn_only_forward(student, ctx.x) if is_one(self.alpha)
               else student(ctx.x))
    teacher = ctx.teacher(0)
    t_clean = sg(teacher(ctx.x))
    w = _weights_if(active, lambda: teacher(x_adv), ctx.y, self.beta)
    loss, m = iad_loss(s_adv, s_clean, s_target, t_clean, w, ctx.y, active,
                       alpha=self.alpha, temperature=self.temperature,
                       reduction=self.reduction, mask=ctx.mask)
    m["train_accuracy"] = losses.reduce(losses.accuracy(s_clean, ctx.y), ctx.mask)
    m["train_adv_accuracy"] = losses.reduce(losses.accuracy(s_adv, ctx.y), ctx.mask)
    return LossOut(loss, m, state)


@register
@dataclasses.dataclass(frozen=True)
class IAD2(Method):
  """IAD-II: IAD with an adversarial and a natural teacher on ``x'`` (AKD-style).

  Teachers, in the order of ``config.teachers``: ``T`` (adversarially
  trained, teacher 0) and ``N`` (naturally trained, teacher 1). Inner: the
  student-only CE PGD of IAD-I. With ``w_i = p_T(y_i | x'_i)^beta``
  (constant), ``e`` the 0-indexed epoch and ``a_0 = 1 - a_1 - a_2``:

  ``L = a_0 (1/B) sum_i CE(S(x'_i), y_i)
        + a_1 tau^2 (1/B) sum_i w~_i KL(p_T^tau(x'_i) || p_S^tau(x'_i))
        + [e >= begin] a_1 tau^2 (1/B) sum_i (1 - w_i) KL(p_S(x_i) || p_S(x'_i))
        + a_2 tau^2 (1/B) sum_i KL(p_N^tau(x'_i) || p_S^tau(x'_i))``

  with ``w~ = w`` from ``begin`` on and ``w~ = 1`` before (the code's
  ``Alpha`` stays all ones until then). The CE is on ``x'``; the
  introspection KL is at temperature 1 inside the ``a_1 tau^2`` bracket; the
  target ``p_S(x)`` is not detached. Source: ``ZFancy/IAD@a8091a8 IAD-II.py``
  (``[C:IAD@a8091a8:IAD-II.py:171-197]``): ``a_1 = 0.5``, ``a_2 = 0.25``,
  ``tau = 1``, ``beta = 0.1``, ``begin = 40``, explicit ``(1/B) sum``
  reductions. The script's optimizer and schedule are IAD-I's (SGD 0.1,
  momentum 0.9, weight decay 2e-4, the E1 schedule), its natural teacher a
  ResNet-18 (``pre_train/ST.py``).

  Batch-norm order follows the code: the K attack forwards (train mode in the
  official recipe), ``S(x')``, then, only from ``begin`` on, the
  introspection target ``S(x)`` (in a ``lax.cond``). (Unlike IAD-I there is
  no extra ``S(x')`` and no ``S(x)`` before ``begin``.)
  """
  name = "iad2"
  teachers = (2, 2)
  attack: InnerAttack = InnerAttack(init="uniform")
  alpha1: float = 0.5
  alpha2: float = 0.25
  temperature: float = 1.0
  beta: float = 0.1
  begin: int = 40

  def perturb(self, ctx):
    return ce_inner(ctx.student_inner, ctx.x, ctx.y, ctx.sub_key("attack"),
                    stateful=ctx.student_inner, **attack_kwargs(self.attack))

  def loss(self, ctx, student, x_adv, state):
    active = iad_active(ctx.epoch, self.begin)
    tau2 = self.temperature**2
    s_adv = student(x_adv)
    s_target = forward_if(student, active, ctx.x)
    t_adv = sg(ctx.teacher(0)(x_adv))
    n_adv = sg(ctx.teacher(1)(x_adv))
    w = _weights_if(active, lambda: t_adv, ctx.y, self.beta)
    ce = losses.reduce(losses.xent(s_adv, ctx.y), ctx.mask)
    kl_t = losses.reduce(w * losses.kl(s_adv, t_adv, temperature=self.temperature),
                         ctx.mask, reduction="batchmean")
    intro = jnp.where(active, introspection_term(s_adv, s_target, w, mask=ctx.mask), 0.0)
    kl_n = distill_kl(s_adv, n_adv, temperature=self.temperature, reduction="batchmean",
                      mask=ctx.mask)
    a0 = 1.0 - self.alpha1 - self.alpha2
    loss = a0 * ce + self.alpha1 * tau2 * (kl_t + intro) + self.alpha2 * tau2 * kl_n
    m = {"ce": ce, "kl": kl_t, "kl_natural": kl_n, "introspection": intro,
         "introspection_active": jnp.asarray(active, jnp.float32),
         "teacher_reliability": losses.reduce(w, ctx.mask),
         "train_adv_accuracy": losses.reduce(losses.accuracy(s_adv, ctx.y), ctx.mask)}
    return LossOut(loss, m, state)

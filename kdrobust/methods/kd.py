"""Standard knowledge distillation (Hinton et al., 2015) and shared KD helpers.

Besides the ``kd`` method this module holds the small helpers every
distillation method uses:

* :func:`distill_kl`: ``red_i KL(p_T^tau(x_i) || p_S^tau(x_i))`` with an
  explicit reduction (pure: arrays in, scalar out);
* :func:`attack_kwargs`: an :class:`InnerAttack` as keyword arguments for the
  pure inner attacks;
* :func:`bn_only_forward` and :func:`forward_if`: train-mode student forwards
  that exist in the official codes only for their batch-norm side effect, or
  only after a warm-up epoch (IAD), threaded exactly like
  :class:`~kdrobust.methods.base.TrainForward`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from kdrobust import losses
from kdrobust.methods import register
from kdrobust.methods.base import InnerAttack, LossOut, Method, TrainForward, sg

Array = jax.Array


def distill_kl(student_logits: Array, teacher_logits: Array, *,
               temperature: float = 1.0, reduction: str = "batchmean",
               mask: Array | None = None) -> Array:
  """``red_i KL(softmax(t_i/tau) || softmax(s_i/tau))`` (no ``tau^2`` factor).

  ``reduction`` is ``'sum'``, ``'batchmean'`` (sum / B) or ``'elemmean'``
  (sum / (B C), PyTorch's ``nn.KLDivLoss()`` default), see
  :func:`kdrobust.losses.reduce`. The teacher is the target distribution.
  """
  per_example = losses.kl(student_logits, teacher_logits, temperature=temperature)
  return losses.reduce(per_example, mask, reduction=reduction,
                       num_classes=student_logits.shape[-1])


def kd_loss(student_logits: Array, teacher_logits: Array, labels: Array, *,
            alpha: float = 0.5, temperature: float = 1.0,
            reduction: str = "elemmean", mask: Array | None = None
            ) -> tuple[Array, dict[str, Array]]:
  """Hinton KD: ``(1 - a) CE(S(x), y) + a tau^2 KL_red(p_T^tau || p_S^tau)``.

  The CE is the batch mean; the KL uses ``reduction``. Returns
  ``(loss, {'ce': ..., 'kl': ...})``; the teacher logits are stop-gradiented.
  """
  teacher_logits = sg(teacher_logits)
  ce = losses.reduce(losses.xent(student_logits, labels), mask)
  kl = distill_kl(student_logits, teacher_logits, temperature=temperature,
                  reduction=reduction, mask=mask)
  loss = (1.0 - alpha) * ce + alpha * temperature**2 * kl
  return loss, {"ce": ce, "kl": kl}


def is_one(weight) -> bool:
  """Whether ``weight`` is the Python number 1 (a term weighted ``1 - weight`` is off).

  Traced weights are never "one": their terms are always computed.
  """
  return isinstance(weight, (int, float)) and float(weight) == 1.0


def attack_kwargs(attack: InnerAttack) -> dict[str, Any]:
  """The fields of an :class:`InnerAttack` as keyword arguments of ``pgd_inner``."""
  return dict(eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
              norm=attack.norm, init=attack.init, unroll=attack.unroll)


def bn_only_forward(student: TrainForward, x: Array) -> Array:
  """A train-mode forward that updates batch-norm statistics but carries no gradient.

  The official codes run some student forwards whose loss term has weight
  zero (e.g. ARD's ``(1 - alpha) CE(S(x), y)`` with ``alpha = 1``): they only
  move the running statistics. Running them with stop-gradient parameters
  gives the same statistics and the same (zero) gradient without paying for
  the backward pass. Returns the (stop-gradient) logits.
  """
  params = student.params
  student.params = jax.lax.stop_gradient(params)
  try:
    logits = student(x)
  finally:
    student.params = params
  return jax.lax.stop_gradient(logits)


def forward_if(student: TrainForward, pred: Array, x: Array) -> Array:
  """``student(x)`` when the traced bool ``pred`` holds, else zeros; one ``lax.cond``.

  Batch-norm statistics are threaded only when the forward runs, so a
  forward that the official code performs only after a warm-up epoch (IAD's
  self-introspection target) updates the running statistics exactly when it
  does there. Only the taken branch is computed; the result is differentiable
  with respect to the student parameters.
  """
  params, calls, rngs = student.params, student.calls, student.rngs

  def run(bs):
    s = TrainForward(student.apply_fn, params, bs, rngs)
    s.calls = calls
    out = s(x)
    return out, s.batch_stats

  out_shape = jax.eval_shape(run, student.batch_stats)[0]

  def skip(bs):
    return jnp.zeros(out_shape.shape, out_shape.dtype), bs

  logits, new_bs = jax.lax.cond(pred, run, skip, student.batch_stats)
  student.batch_stats = new_bs
  student.calls += 1
  return logits


@register
@dataclasses.dataclass(frozen=True)
class KD(Method):
  """Standard KD on clean inputs (Hinton, Vinyals & Dean 2015; docs/fidelity.md, KD).

  ``L = (1 - alpha) (1/B) sum_i CE(S(x_i), y_i)
        + alpha tau^2 red_i KL(p_T^tau(x_i) || p_S^tau(x_i))``,
  student in train mode (one forward), teacher in inference mode, no attack.

  Defaults are those of the KDIGA author code's ``distill_method='kd'``
  (``RulinShao/AdversariallyRobustDistillation@12e774f main.py``):
  ``alpha = 0.5``, ``tau = 1``, ``reduction = 'elemmean'`` (``nn.KLDivLoss()``
  = sum / (B C)). The CIFAR KD literature often uses ``tau = 4``; that value
  is not from KDIGA's code (the source of this recipe), so configs must set it explicitly.
  """
  name = "kd"
  teachers = (1, 1)
  alpha: float = 0.5
  temperature: float = 1.0
  reduction: str = "elemmean"

  def loss(self, ctx, student, x_adv, state):
    del x_adv
    logits = student(ctx.x)
    t = sg(ctx.teacher(0)(ctx.x))
    loss, m = kd_loss(logits, t, ctx.y, alpha=self.alpha,
                      temperature=self.temperature, reduction=self.reduction,
                      mask=ctx.mask)
    m["train_accuracy"] = losses.reduce(losses.accuracy(logits, ctx.y), ctx.mask)
    return LossOut(loss, m, state)

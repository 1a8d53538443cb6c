"""CGARD: Collaboratively Guided Adversarial Robust Distillation with Teacher-Favorable Examples.

Li, Liu, Yang, Wang, Gao, Yao, Zhou (Yunnan University), 2026 preprint; venue
UNCONFIRMED. **No code was released**: everything here is transcribed from
the preprint's equations (section 2.2 eqs. 7-11: the constrained joint
search; section 2.3 eqs. 12-13: the dual alignment; section 3.1: the
settings), docs/fidelity.md, CGARD. What the text leaves open is a
kdrobust choice, marked in :class:`CGARD`'s docstring. Step parity with a
PyTorch transcription of the equations: ``tests/parity_cgard_test.py``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kdrobust import losses
from kdrobust.attacks import projected
from kdrobust.methods import register
from kdrobust.methods.base import InnerAttack, LossOut, Method, Perturbed, sg
from kdrobust.methods.kd import distill_kl

Array = jax.Array


def symmetric_kl(a_logits: Array, b_logits: Array) -> Array:
  """``D_SKL(p_a, p_b) = (KL(p_a || p_b) + KL(p_b || p_a)) / 2`` per example."""
  return 0.5 * (losses.kl(b_logits, a_logits) + losses.kl(a_logits, b_logits))


def cgard_inner(student_fn, teacher_fn, x: Array, y: Array, key: Array, *, eps=8 / 255,
                step_size=2 / 255, steps: int = 10, init: str = "gaussian", norm: str = "linf",
                unroll: int = 1, feasibility: bool = True) -> tuple[Array, Array]:
  """CGARD's constrained joint search; returns ``(x_S', x_T'')`` (stop-gradient).

  ``max_{x_S', x_T'' in B_eps(x)} sum_i D_SKL(p_S(x_S'_i), p_T(x_T''_i))``
  s.t. ``CE(T(x_T''_i), y_i) <= CE(T(x_i), y_i)``. Both variables start at
  ``init`` (``x + 0.001 N(0, I)``, separate draws: student first). Each of the
  ``steps`` simultaneous steps takes both input gradients at the current pair
  (``x_S'`` through the student, ``x_T''`` through the frozen teacher),
  ``x <- Proj(x + step sign(grad))`` (the ball, then [0, 1]), and resets each
  candidate ``x_T''_i`` that violates the constraint to the clean ``x_i``
  (``feasibility = False``: the unconstrained joint search). ``student_fn``
  and ``teacher_fn`` must be per-example (inference-mode batch norm).
  """
  ks, kt = jax.random.split(key)
  xs0 = projected.random_init(ks, x, eps, norm=norm, init=init)
  xt0 = projected.random_init(kt, x, eps, norm=norm, init=init)
  ce_clean = sg(losses.xent(teacher_fn(x), y))
  grad_fn = jax.grad(lambda a, b: jnp.sum(symmetric_kl(student_fn(a), teacher_fn(b))),
                     argnums=(0, 1))
  shape = (-1,) + (1,) * (x.ndim - 1)

  def body(_, carry):
    xs, xt = carry
    gs, gt = grad_fn(xs, xt)
    xs = projected.project(xs + step_size * projected.ascent_direction(gs, norm), x, eps, norm)
    xt = projected.project(xt + step_size * projected.ascent_direction(gt, norm), x, eps, norm)
    if feasibility:
      ok = losses.xent(teacher_fn(xt), y) <= ce_clean
      xt = jnp.where(ok.reshape(shape), xt, x)
    return xs, xt

  xs, xt = jax.lax.fori_loop(0, steps, body, (xs0, xt0), unroll=unroll)
  return sg(xs), sg(xt)


def cgard_loss(s_adv: Array, t_col: Array, t_adv: Array, *, alpha: float = 0.7,
               reduction: str = "batchmean", mask: Array | None = None
               ) -> tuple[Array, dict[str, Array]]:
  """``(1 - alpha) red KL(p_T(x_T'') || p_S(x_S')) + alpha red KL(p_T(x_S') || p_S(x_S'))``.

  Both terms supervise the same student prediction; teachers stop-gradiented.
  """
  l_col = distill_kl(s_adv, sg(t_col), reduction=reduction, mask=mask)
  l_adv = distill_kl(s_adv, sg(t_adv), reduction=reduction, mask=mask)
  return (1.0 - alpha) * l_col + alpha * l_adv, {"kl_col": l_col, "kl_adv": l_adv}


@register
@dataclasses.dataclass(frozen=True)
class CGARD(Method):
  """CGARD (docs/fidelity.md, CGARD), from the preprint's equations.

  Inner: :func:`cgard_inner`, ``eps = 8/255``, step ``2/255``, ``K = 10``,
  both points from ``x + 0.001 N(0, I)`` [P:CGARD section 3.1]; the teacher
  point must keep the teacher's CE at most its clean CE, or is reset to ``x``
  (eq. 10-11). Outer (student in train mode, one forward ``S(x_S')``):
  ``L = (1 - alpha) KL(p_T(x_T'') || p_S(x_S')) + alpha KL(p_T(x_S') || p_S(x_S'))``,
  ``alpha = 0.7``, tau = 1, no clean term, no CE (eqs. 12-13).

  Choices where the preprint is silent (UNCONFIRMED; docs/fidelity.md, CGARD):

  * the student's batch-norm mode during the search: inference
    (``attack.bn_mode = 'eval'``, as AdaAD); ``'batch'`` is accepted,
    ``'train'`` (running statistics threaded through the search) is not
    implemented and refused;
  * the start ``x + 0.001 N`` is not clipped (``attack.init = 'gaussian'``,
    as TRADES/RSLAD) and the teacher's start is not feasibility-checked: the
    check follows each update, as the text describes it;
  * the objective's batch reduction (a sum; irrelevant under ``sign``) and
    the teacher CE per example ("for each training example");
  * the outer KLs' reduction: ``reduction = 'batchmean'``;
  * ``feasibility = False`` drops the constraint (an ablation, not the paper's).

  ``perturb`` returns ``Perturbed(x=x_S', aux={'x_teacher': x_T''})``.
  IGDM (``method.igdm.alpha > 0``) on top: supported, a kdrobust extension
  (the paper does not combine them; ``kdrobust.methods.igdm.NEXT_BASES``):
  ``d = x_S' - x`` (the student point; ``x_T''`` enters only CGARD's loss),
  forwards ``S(x_S' + d)``, ``S(x - d)``, then ``S(x_S')``.

  Batch-norm order: one train-mode forward per step, ``S(x_S')``; the search
  runs the student in inference mode.
  """
  name = "cgard"
  teachers = (1, 1)
  attack: InnerAttack = InnerAttack(init="gaussian")
  alpha: float = 0.7
  reduction: str = "batchmean"
  feasibility: bool = True

  def __post_init__(self):
    if self.attack.bn_mode == "train":
      raise ValueError("CGARD's joint search does not thread batch-norm statistics: "
                       "attack.bn_mode 'train' is not supported; valid: ('eval', 'batch').")

  def perturb(self, ctx):
    a = self.attack
    x_s, x_t = cgard_inner(ctx.student_inner, ctx.teacher(0), ctx.x, ctx.y,
                           ctx.sub_key("attack"), eps=a.eps, step_size=a.step_size,
                           steps=a.steps, init=a.init, norm=a.norm, unroll=a.unroll,
                           feasibility=self.feasibility)
    return Perturbed(x=x_s, aux={"x_teacher": x_t})

  def loss(self, ctx, student, x_adv, state):
    if not isinstance(x_adv, Perturbed):
      raise ValueError("CGARD's loss needs the Perturbed (x_S', x_T'') of its own inner search.")
    x_s, x_t = x_adv.x, x_adv.aux["x_teacher"]
    s_adv = student(x_s)
    teacher = ctx.teacher(0)
    t_col = sg(teacher(x_t))
    t_adv = sg(teacher(x_s))
    loss, m = cgard_loss(s_adv, t_col, t_adv, alpha=self.alpha, reduction=self.reduction,
                         mask=ctx.mask)
    moved = jnp.any((x_t != ctx.x).reshape(x_t.shape[0], -1), axis=1)
    m["teacher_point_moved"] = losses.reduce(moved.astype(jnp.float32), ctx.mask)
    m["train_adv_accuracy"] = losses.reduce(losses.accuracy(s_adv, ctx.y), ctx.mask)
    return LossOut(loss, m, state)

"""SAAD: Sample-wise Adaptive Adversarial Distillation (Lee & Chung, TMLR 2026, arXiv 2512.10275).

Source: the official code ``HongsinLee/saad@295121c`` (``saad.py:53-86``,
``attacks.py`` ``saad_inner_loss``, ``utils.py`` ``samplewise_kl_div`` and
``samplewise_renyi_entropy``, ``main.sh``). The weights are a cheap proxy of
adversarial transferability: the teacher's entropy at the student's
adversarial point. Step parity with the code: ``tests/parity_saad_test.py``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kdrobust import attacks as attacks_lib
from kdrobust import losses
from kdrobust.methods import register
from kdrobust.methods.base import InnerAttack, LossOut, Method, sg
from kdrobust.methods.kd import attack_kwargs, bn_only_forward

Array = jax.Array

WEIGHT_NORMALIZATIONS = ("none", "mean")


def label_logit_gradient(teacher_fn, x: Array, y: Array) -> Array:
  """``g_i = grad_u z_{T, y_i}(u) at u = x_i``: the gradient of ``sum_i z_{T,y_i}(x_i)``.

  Exact per example because the teacher runs in inference mode (examples are
  independent). Stop-gradient: a constant of the attack.
  """
  def total(u):
    z = teacher_fn(u)
    return jnp.sum(jnp.take_along_axis(z, y[:, None].astype(jnp.int32), axis=1))
  return sg(jax.grad(total)(x))


def corrected_teacher_logits(t_clean: Array, grad_y: Array, x: Array, u: Array, y: Array,
                             lambda_inner: float) -> Array:
  """``z~(u) = sg(T(x)) + lambda <g_i, u_i - x_i> e_{y_i}``: only the true-class logit moves.

  Linear (hence differentiable) in ``u``: the first-order Taylor term of the
  teacher's true-class logit around the clean point.
  """
  corr = jnp.sum((grad_y * (u - x)).reshape(u.shape[0], -1), axis=1)
  onehot = jax.nn.one_hot(y, t_clean.shape[-1], dtype=t_clean.dtype)
  return sg(t_clean) + lambda_inner * corr.astype(t_clean.dtype)[:, None] * onehot


def saad_inner(student_fn, teacher_fn, x: Array, y: Array, key: Array, *,
               lambda_inner: float = 1.0, eps=8 / 255, step_size=2 / 255, steps: int = 10,
               init: str = "gaussian", norm: str = "linf", unroll: int = 1,
               stateful=None) -> Array:
  """SAAD's inner maximisation (``saad_inner_loss``).

  ``x' = PGD(sum_i KL(softmax(z~_i(u)) || softmax(S(u_i))), x; eps, step, K, gaussian start)``
  with :func:`corrected_teacher_logits`. The target is **not** detached: the
  input gradient has a path through ``z~(u)`` (linear in ``u``) besides the
  student's, as in the code, where the corrected logits are built from
  ``x_adv`` inside the differentiated block and ``nn.KLDivLoss`` is
  differentiable in its target. Costs one teacher forward and one input
  backward at ``x``, then the student's K passes.
  """
  t_clean = sg(teacher_fn(x))
  g = label_logit_gradient(teacher_fn, x, y)

  def objective(u):
    z = corrected_teacher_logits(t_clean, g, x, u, y, lambda_inner)
    return losses.kl(student_fn(u), z)

  return attacks_lib.pgd_inner(objective, x, key, eps=eps, step_size=step_size, steps=steps,
                               norm=norm, init=init, unroll=unroll, stateful=stateful)


def renyi_entropy(logits: Array, order: float = 1.0, eps: float = 1e-12) -> Array:
  """Per-example Renyi entropy of ``softmax(logits)`` (the code's ``samplewise_renyi_entropy``).

  Order 1 (``|order - 1| < 1e-6``): Shannon ``-sum_c p_c log(p_c + eps)``;
  otherwise ``log(sum_c p_c^order + eps) / (1 - order)``.
  """
  p = jax.nn.softmax(losses.at_least_f32(logits), axis=-1)
  if abs(order - 1.0) < 1e-6:
    return -jnp.sum(p * jnp.log(p + eps), axis=-1)
  return jnp.log(jnp.sum(p**order, axis=-1) + eps) / (1.0 - order)


def saad_weights(entropy: Array, mask: Array | None = None, *, scale: float = 5.0,
                 normalization: str = "none") -> tuple[Array, Array]:
  """``(w, w~)``: ``w_i = max(0, scale (H_i - min_j H_j))``, ``w~ = (w - min w) / (max w - min w + 1e-8)``.

  Minimum and maximum over the valid (``mask``) rows of the whole batch;
  padded rows get ``w = w~ = 0``. ``normalization='mean'`` (kdrobust's
  option, not the code's) divides ``w`` by its masked batch mean, so the loss
  scale no longer follows the entropy spread. Both are constants (teacher only).
  """
  h = sg(entropy)
  valid = jnp.ones(h.shape, bool) if mask is None else mask.astype(bool)
  h_min = jnp.min(jnp.where(valid, h, jnp.inf))
  w = jnp.where(valid, jnp.maximum(scale * (h - h_min), 0.0), 0.0)
  if normalization == "mean":
    mean = losses.reduce(w, valid)
    w = jnp.where(mean > 0, w / jnp.where(mean > 0, mean, 1.0), 0.0).astype(h.dtype)
  w_min = jnp.min(jnp.where(valid, w, jnp.inf))
  w_max = jnp.max(jnp.where(valid, w, -jnp.inf))
  w_norm = jnp.where(valid, (w - w_min) / (w_max - w_min + 1e-8), 0.0)
  return w, w_norm


def saad_loss(s_adv: Array, s_minus: Array, s_clean: Array, t_adv: Array,
              t_minus: Array | None, t_clean: Array | None, w: Array, w_norm: Array, *,
              ig_weight, clean_weight: float, mask: Array | None = None
              ) -> tuple[Array, dict[str, Array]]:
  """``(1/B) sum_i [w_i (KLadv_i + ig_weight IG_i) + clean_weight (1 - w~_i) KLnat_i]``.

  ``KLadv_i = KL(p_T(x'_i) || p_S(x'_i))``,
  ``IG_i = KL(softmax(T(x') - T(x - d))_i || softmax(S(x') - S(x - d))_i)``,
  ``KLnat_i = KL(p_T(x_i) || p_S(x_i))``; teachers stop-gradiented. ``t_minus``
  (``t_clean``) may be ``None`` when ``ig_weight`` (``clean_weight``) is 0.
  """
  kl_adv = losses.kl(s_adv, sg(t_adv))
  per = kl_adv
  metrics = {"kl_adv": losses.reduce(kl_adv, mask)}
  if t_minus is not None:
    ig = losses.kl(s_adv - s_minus, sg(t_adv - t_minus))
    per = per + ig_weight * ig
    metrics["igdm"] = losses.reduce(ig, mask)
  per = w * per
  if t_clean is not None and clean_weight:
    kl_nat = losses.kl(s_clean, sg(t_clean))
    per = per + clean_weight * (1.0 - w_norm) * kl_nat
    metrics["kl_clean"] = losses.reduce(kl_nat, mask)
  return losses.reduce(per, mask), metrics


@register
@dataclasses.dataclass(frozen=True)
class SAAD(Method):
  """SAAD (docs/fidelity.md, SAAD): entropy-weighted AdaAD-style distillation with IGDM.

  Inner (student in inference mode, ``model.eval()``; teacher in inference
  mode): ``g_i = grad_x z_{T,y_i}(x_i)`` once, then
  ``x' = PGD(sum_i KL(softmax(T(x_i) + lambda <g_i, u_i - x_i> e_{y_i}) || softmax(S(u_i))),
  x; 8/255, 2/255, 10)`` from ``x + 0.001 N(0, I)`` (not clamped), the target
  differentiable in ``u`` (:func:`saad_inner`); ``lambda = lambda_inner = 1``
  (``--lambda_inner``).

  Outer (student in train mode), ``d = x' - x``, ``x - d`` not clipped:
  ``H_i = H_gamma(p_T(x'_i))`` (Renyi order ``renyi_order``, ``--gamma``: 1 in
  ``main.sh``, Shannon), ``w_i = max(0, 5 (H_i - min_batch H))``,
  ``w~ = minmax(w)``;
  ``L = (1/B) sum_i [ w_i (KL(p_T(x'_i) || p_S(x'_i))
        + ig_alpha (e/E) KL(softmax(T(x'_i) - T(x_i - d_i)) || softmax(S(x'_i) - S(x_i - d_i))))
        + clean_weight (1 - w~_i) KL(p_T(x_i) || p_S(x_i)) ]``,
  ``e`` the 1-indexed epoch, ``E`` the run's epochs. tau = 1, no CE.

  Choices where the code and the paper (read only through secondary
  sources; docs/fidelity.md, SAAD) may differ:

  * A3: the weights are neither normalised nor bounded (``w in [0, 5 ln C]``;
    the batch's lowest-entropy sample gets 0): ``weight_normalization =
    'none'`` (default, the code: the loss scale, which interacts with lr and
    weight decay, is the code's); ``'mean'`` divides ``w`` by its batch mean
    (kdrobust's option for comparisons at a fixed loss scale; no paper uses it).
  * ``entropy_scale = 5``: hard-coded in ``saad.py:76`` (``--entropy_scale``
    exists with default 5 but is unused).
  * ``clean_weight`` (``--beta``) = 0 in ``main.sh``: the clean term is off;
    the paper describes inverse weights for clean distillation, with an
    UNCONFIRMED beta. ``S(x)`` is still run (train mode, running statistics
    move), without a backward pass when the weight is 0.
  * ``ig_alpha`` (``--igdm_alpha``): 1 on CIFAR-10 (``main.sh``), 10 on
    CIFAR-100 and Tiny-ImageNet (code comment); the configs set it.
  * A5 (weight decay 2e-4 in the code, 5e-4 in the paper's reading) and SWA
    (the paper's model is an SWA average from epoch 95) are config matters:
    configs/cifar_saad.py.

  Batch-norm order follows the code: ``S(x')``, ``S(x - d)``, ``S(x)``: three
  train-mode forwards per step. Teacher: ``T(x)`` (inner, and the clean term),
  ``T(x')``, ``T(x - d)``, inference mode. IGDM (``method.igdm``) is not
  applied on top: SAAD already carries its own IGDM term (``ig_alpha``), and
  kdrobust.methods.igdm does not list ``saad`` as a base.
  """
  name = "saad"
  teachers = (1, 1)
  attack: InnerAttack = InnerAttack(init="gaussian")
  lambda_inner: float = 1.0
  entropy_scale: float = 5.0
  renyi_order: float = 1.0
  clean_weight: float = 0.0
  ig_alpha: float = 1.0
  weight_normalization: str = "none"

  def __post_init__(self):
    if self.weight_normalization not in WEIGHT_NORMALIZATIONS:
      raise ValueError(f"Unknown SAAD weight_normalization {self.weight_normalization!r}; "
                       f"valid: {WEIGHT_NORMALIZATIONS}.")

  def perturb(self, ctx):
    return saad_inner(ctx.student_inner, ctx.teacher(0), ctx.x, ctx.y, ctx.sub_key("attack"),
                      lambda_inner=self.lambda_inner, stateful=ctx.student_inner,
                      **attack_kwargs(self.attack))

  def loss(self, ctx, student, x_adv, state):
    teacher = ctx.teacher(0)
    x_minus = ctx.x - sg(x_adv - ctx.x)
    ig_on = float(self.ig_alpha) != 0.0
    clean_on = float(self.clean_weight) != 0.0
    s_adv = student(x_adv)
    s_minus = student(x_minus) if ig_on else bn_only_forward(student, x_minus)
    s_clean = student(ctx.x) if clean_on else bn_only_forward(student, ctx.x)
    t_adv = sg(teacher(x_adv))
    t_minus = sg(teacher(x_minus)) if ig_on else None
    t_clean = sg(teacher(ctx.x)) if clean_on else None
    entropy = renyi_entropy(t_adv, self.renyi_order)
    w, w_norm = saad_weights(entropy, ctx.mask, scale=self.entropy_scale,
                             normalization=self.weight_normalization)
    # e / E in the logits' dtype (float64 in the parity test; the epoch is an integer).
    ig_weight = self.ig_alpha * (jnp.asarray(ctx.epoch).astype(s_adv.dtype) / ctx.num_epochs)
    loss, m = saad_loss(s_adv, s_minus, s_clean, t_adv, t_minus, t_clean, w, w_norm,
                        ig_weight=ig_weight, clean_weight=self.clean_weight, mask=ctx.mask)
    m.update({
        "entropy": losses.reduce(entropy, ctx.mask),
        "weight_mean": losses.reduce(w, ctx.mask),
        "weight_max": jnp.max(w),
        "igdm_weight": ig_weight,
        "train_accuracy": losses.reduce(losses.accuracy(s_clean, ctx.y), ctx.mask),
        "train_adv_accuracy": losses.reduce(losses.accuracy(s_adv, ctx.y), ctx.mask)})
    return LossOut(loss, m, state)

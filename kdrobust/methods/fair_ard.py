"""Fair-ARD, Fair-IAD, Fair-RSLAD, Fair-MTARD (Yue, Mou, Wang, Zhao; NeurIPS 2023).

Each is its base method (ARD, IAD-I, RSLAD, MTARD) with every per-sample loss
term multiplied by a class weight ``w_{y_i}`` that grows with the class's
difficulty. Difficulty comes from inside the training attack: ``kappa_i`` is
the number of PGD iterates ``x_0 .. x_{K-1}`` that the student still
classifies correctly (from the forward that also gives that iterate's
gradient; the last iterate ``x_K`` is not counted), so ``kappa_i in 0..K``.
Per epoch, ``kbar_c`` = mean ``kappa`` of class ``c``; at the end of the epoch

    w_c = clip( C (kbar_c + 1e-5)^(-beta) / sum_c' (kbar_c' + 1e-5)^(-beta), 5/6, 5/2 ),

``beta = 2``, used throughout the next epoch (the first epoch uses ``w = 1``).

Source: ``NISP-official/Fair-ARD@910c8cd`` ``Fair-ARD.py``, ``Fair-IAD.py``,
``Fair-RSLAD.py``, ``Fair-MTARD.py`` (docs/fidelity.md, Fair-ARD).
Machinery: the attack's per-step correctness is an opt-in signal of
:func:`kdrobust.attacks.projected.pgd_inner`; the per-class sums live in the
method state and :meth:`_Fair.epoch_update` turns them into the weights at the
epoch boundary (:func:`kdrobust.methods.base.epoch_boundary`).
Step parity: ``tests/parity_fair_ard_test.py``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from kdrobust import attacks as attacks_lib
from kdrobust import losses
from kdrobust.methods import register
from kdrobust.methods.base import (InnerAttack, LossOut, Method, Perturbed, per_class_sum,
                                   sg)
from kdrobust.methods.iad import _weights_if, iad_active
from kdrobust.methods.kd import attack_kwargs, bn_only_forward, is_one
from kdrobust.methods.mtard import mtard_init_state, mtard_weight_update, weight_lr_at
from kdrobust.methods.rslad import OFFICIAL_LOG_EPS, soft_label_offset

Array = jax.Array

KAPPA_MEANS = ("class_count", "balanced")
NAT_TARGETS = ("nat_teacher", "adv_teacher")


def fair_init_state(num_classes: int) -> dict[str, Array]:
  """``class_w = 1`` and zero per-epoch sums of ``kappa`` and of the class counts."""
  f = jnp.result_type(float)
  return {"class_w": jnp.ones((num_classes,), f), "kappa_sum": jnp.zeros((num_classes,), f),
          "count": jnp.zeros((num_classes,), f)}


def class_weights(kappa_mean: Array, *, beta: float = 2.0, kappa_eps: float = 1e-5,
                  w_min: float = 5 / 6, w_max: float = 5 / 2) -> Array:
  """``clip(C (k + eps)^-beta / sum_c (k_c + eps)^-beta, w_min, w_max)`` (``weight_assign``).

  The clip follows the normalisation, so ``sum_c w_c != C`` in general.
  Fair-RSLAD's code has ``kappa_eps = 0`` (a class with ``kbar = 0`` then
  gives NaN weights).
  """
  r = (1.0 / (kappa_mean + kappa_eps)) ** beta
  r = r * (kappa_mean.shape[-1] / jnp.sum(r))
  return jnp.clip(r, w_min, w_max).astype(kappa_mean.dtype)


def kappa_inner(objective_logits, x: Array, y: Array, key: Array, *, stateful=None,
                **attack) -> tuple[Array, Array]:
  """``(x', kappa)``: PGD on ``sum_i loss_i`` with ``kappa_i = #{k < K: argmax S(x_k)_i = y_i}``.

  ``objective_logits(u) -> (loss[B], logits[B, C])``: the count uses the
  logits of the forward that gives the step's gradient (no extra forward).
  """
  x_adv, correct = attacks_lib.pgd_inner(
      objective_logits, x, key, stateful=stateful,
      signal=lambda logits: jnp.argmax(logits, -1) == y, **attack)
  return x_adv, jnp.sum(correct.astype(jnp.int32), axis=0)


def ce_objective(student, y):
  """Student CE per example (ARD/IAD/MTARD attack objective) with its logits."""
  def f(u):
    logits = student(u)
    return losses.xent(logits, y), logits
  return f


def kl_objective(student, teacher_logits):
  """``KL(p_T(x) || p_S(u))`` per example (RSLAD attack objective) with the student logits."""
  t = sg(teacher_logits)

  def f(u):
    logits = student(u)
    return losses.kl(logits, t), logits
  return f


def weighted(values: Array, w: Array, mask: Array | None, reduction: str,
             num_classes: int | None = None) -> Array:
  """``red_i w_i v_i`` (masked)."""
  return losses.reduce(values * w, mask, reduction=reduction, num_classes=num_classes)


@dataclasses.dataclass(frozen=True)
class _Fair(Method):
  """Shared state, attack signal and epoch update of the four Fair-* methods.

  Fields: ``beta`` (2), ``kappa_eps`` (1e-5), ``weight_min`` / ``weight_max``
  (5/6, 5/2) and ``kappa_mean``: ``'class_count'`` (default, CHOICE: divide
  each class's kappa sum by its number of examples in the epoch) or
  ``'balanced'`` (the code: divide by ``N / C``, ``N`` = the examples of the
  epoch; equal to the first on balanced data such as CIFAR-10;
  ``protocol=official`` sets it). An epoch with no example leaves the
  weights unchanged.
  """
  beta: float = 2.0
  kappa_eps: float = 1e-5
  weight_min: float = 5 / 6
  weight_max: float = 5 / 2
  kappa_mean: str = "class_count"

  def __post_init__(self):
    if self.kappa_mean not in KAPPA_MEANS:
      raise ValueError(f"Unknown kappa_mean {self.kappa_mean!r}; valid: {KAPPA_MEANS}.")

  def init_state(self, num_classes):
    return fair_init_state(num_classes)

  def epoch_update(self, state, epoch):
    del epoch
    if self.kappa_mean == "class_count":
      denom = jnp.maximum(state["count"], 1.0)
    else:
      denom = jnp.maximum(jnp.sum(state["count"]), 1.0) / state["count"].shape[-1]
    w = class_weights(state["kappa_sum"] / denom, beta=self.beta, kappa_eps=self.kappa_eps,
                      w_min=self.weight_min, w_max=self.weight_max)
    # An epoch without examples (a resumed or restarted count) keeps the weights.
    w = jnp.where(jnp.sum(state["count"]) > 0, w, state["class_w"])
    new = dict(state)
    new.update(class_w=w.astype(state["class_w"].dtype),
               kappa_sum=jnp.zeros_like(state["kappa_sum"]),
               count=jnp.zeros_like(state["count"]))
    return new

  def _accumulate(self, ctx, state, kappa) -> dict[str, Array]:
    c = ctx.num_classes
    new = dict(state)
    new["kappa_sum"] = state["kappa_sum"] + per_class_sum(
        kappa, ctx.y, ctx.mask, c).astype(state["kappa_sum"].dtype)
    new["count"] = state["count"] + per_class_sum(
        jnp.ones(ctx.y.shape), ctx.y, ctx.mask, c).astype(state["count"].dtype)
    return new

  def _objective(self, ctx):
    """The inner attack's objective: CE on the label (Fair-ARD, -IAD, -MTARD)."""
    return ce_objective(ctx.student_inner, ctx.y)

  def perturb(self, ctx):
    """PGD on :meth:`_objective`; ``aux`` is each example's kappa (:func:`kappa_inner`)."""
    x_adv, kappa = kappa_inner(self._objective(ctx), ctx.x, ctx.y, ctx.sub_key("attack"),
                               stateful=ctx.student_inner, **attack_kwargs(self.attack))
    return Perturbed(x_adv, kappa)

  def _w(self, ctx, state) -> Array:
    return sg(state["class_w"][ctx.y])

  def _metrics(self, ctx, state, kappa, s_clean, s_adv):
    return {"kappa": losses.reduce(kappa.astype(jnp.float32), ctx.mask),
            "class_w_min": jnp.min(state["class_w"]), "class_w_max": jnp.max(state["class_w"]),
            "train_accuracy": losses.reduce(losses.accuracy(s_clean, ctx.y), ctx.mask),
            "train_adv_accuracy": losses.reduce(losses.accuracy(s_adv, ctx.y), ctx.mask)}


@register
@dataclasses.dataclass(frozen=True)
class FairARD(_Fair):
  """Fair-ARD: ARD with class weights (``Fair-ARD.py``).

  Inner (the code's ``AttackPGD`` inside ``net.train()``: student in **train**
  mode, threading the running statistics through the ``K`` forwards, start
  ``x + U[-eps, eps]`` not clipped; these are the class defaults, A8):
  ``x' = PGD(sum_i CE(S(x'_i), y_i))`` with ``kappa`` counted.
  Outer (``S(x')`` then ``S(x)``, train mode; the teacher on the clean ``x``):
  ``L = alpha tau^2 (1/B) sum_i w_{y_i} KL(p_T^tau(x_i) || p_S^tau(x'_i)) / C
        + (1 - alpha) (1/B) sum_i w_{y_i} CE(S(x_i), y_i)``,
  ``tau = 30``, ``alpha = 1`` (``S(x)`` then only moves the statistics), the
  per-example ``nn.KLDivLoss()`` on a C-vector = ``elemmean``. Recipe: 200
  epochs, SGD Nesterov, lr 0.1 then 0.01 from epoch 100 (E1).
  IGDM on top: supported (a kdrobust extension, no paper combines them;
  ``kdrobust.methods.igdm.NEXT_BASES``): ``d = x' - x``, forwards
  ``S(x + d)``, ``S(x - d)`` before the base's; the IGDM term is not
  class-weighted; ``kappa`` and the weights are the base's.
  """
  name = "fair_ard"
  teachers = (1, 1)
  attack: InnerAttack = InnerAttack(init="uniform_unclipped", bn_mode="train")
  temperature: float = 30.0
  alpha: float = 1.0
  reduction: str = "elemmean"

  def loss(self, ctx, student, x_adv, state):
    x_adv, kappa = x_adv
    w = self._w(ctx, state)
    s_adv = student(x_adv)
    s_clean = bn_only_forward(student, ctx.x) if is_one(self.alpha) else student(ctx.x)
    t = sg(ctx.teacher(0)(ctx.x))
    kl = weighted(losses.kl(s_adv, t, temperature=self.temperature), w, ctx.mask,
                  self.reduction, ctx.num_classes)
    loss = self.alpha * self.temperature**2 * kl
    m = self._metrics(ctx, state, kappa, s_clean, s_adv)
    m["kl"] = kl
    if not is_one(self.alpha):
      ce = weighted(losses.xent(s_clean, ctx.y), w, ctx.mask, "batchmean")
      loss = loss + (1.0 - self.alpha) * ce
      m["ce"] = ce
    return LossOut(loss, m, self._accumulate(ctx, state, kappa))


@register
@dataclasses.dataclass(frozen=True)
class FairIAD(_Fair):
  """Fair-IAD: IAD-I with class weights (``Fair-IAD.py``).

  Inner: Fair-ARD's (train mode, unclipped uniform start, ``kappa``).
  Outer, with ``a_i = p_T(y_i | x'_i)^0.1`` (constant) and the 0-indexed
  epoch ``e``:
  ``L = (1/B) sum_i w_{y_i} [ alpha tau^2 KL(p_T^tau(x_i) || p_S^tau(x'_i))
        + [e >= begin] alpha (1 - a_i) KL(p_S(x_i) || p_S(x'_i))
        + (1 - alpha) CE(S(x'_i), y_i) ]``
  (true KLs, summed over classes; the target ``p_S(x)`` not detached; the CE
  term is on ``S(x')`` as in the code and off with ``alpha = 1``).
  Forwards in the code's order: ``S(x')``, ``S(x)`` (always run, the
  introspection target), then ``S(x')`` again whose only effect is a
  running-statistics update (``basicop``); the teacher on ``x'`` only from
  ``begin`` on (it has no state). Defaults ``tau = 1``, ``alpha = 1``,
  ``beta_iad = 0.1``, ``begin = 60``.
  IGDM on top: supported, as for Fair-ARD.
  """
  name = "fair_iad"
  teachers = (1, 1)
  attack: InnerAttack = InnerAttack(init="uniform_unclipped", bn_mode="train")
  temperature: float = 1.0
  alpha: float = 1.0
  beta_iad: float = 0.1
  begin: int = 60

  def loss(self, ctx, student, x_adv, state):
    x_adv, kappa = x_adv
    w = self._w(ctx, state)
    active = iad_active(ctx.epoch, self.begin)
    s_adv = student(x_adv)
    s_clean = student(ctx.x)
    bn_only_forward(student, x_adv)  # Fair-IAD.py:170 `basicop`
    teacher = ctx.teacher(0)
    t = sg(teacher(ctx.x))
    a = _weights_if(active, lambda: teacher(x_adv), ctx.y, self.beta_iad)
    kl = weighted(losses.kl(s_adv, t, temperature=self.temperature), w, ctx.mask, "batchmean")
    intro = weighted((1.0 - a) * losses.kl(s_adv, s_clean), w, ctx.mask, "batchmean")
    intro = jnp.where(active, intro, 0.0)
    loss = self.alpha * self.temperature**2 * kl + self.alpha * intro
    m = self._metrics(ctx, state, kappa, s_clean, s_adv)
    m.update(kl=kl, introspection=intro)
    if not is_one(self.alpha):
      ce = weighted(losses.xent(s_adv, ctx.y), w, ctx.mask, "batchmean")
      loss = loss + (1.0 - self.alpha) * jnp.where(active, ce, 0.0)
      m["ce"] = ce
    return LossOut(loss, m, self._accumulate(ctx, state, kappa))


def _soft_label_terms(s: Array, t: Array, log_eps: float) -> Array:
  """Per example ``sum_c p_T (log(p_T + eps) - log p_S)`` (the code's ``kl_loss`` summed over C)."""
  v = losses.kl(s, t)
  if log_eps:
    v = v + soft_label_offset(t, log_eps)
  return v


@register
@dataclasses.dataclass(frozen=True)
class FairRSLAD(_Fair):
  """Fair-RSLAD: RSLAD with class weights (``Fair-RSLAD.py``).

  Inner: RSLAD's (student in **eval** mode, ``x + 0.001 N``, KL to the clean
  teacher soft label, summed), ``kappa`` counted.
  Outer (``S(x')`` then ``S(x)``): ``L = scale (1/B) sum_i w_{y_i} [ (5/6) l_i(x')
  + (1/6) l_i(x) ]``, ``l_i(u) = sum_c p_T(x_i) (log(p_T(x_i) + 1e-5) - log p_S(u))``,
  ``scale = 0.1`` (the code's mean over ``B x C`` on CIFAR-10).
  ``kappa_eps``: the code has none (``(1 / kbar)^beta``); CHOICE 1e-5 as in
  the three other scripts (0 gives NaN weights when a class never survives a
  step); ``protocol=official`` sets 0.
  IGDM on top: supported, as for Fair-ARD.
  """
  name = "fair_rslad"
  teachers = (1, 1)
  attack: InnerAttack = InnerAttack(init="gaussian")
  adv_weight: float = 5 / 6
  clean_weight: float = 1 / 6
  scale: float = 0.1
  log_eps: float = OFFICIAL_LOG_EPS

  def _objective(self, ctx):
    return kl_objective(ctx.student_inner, ctx.teacher(0)(ctx.x))  # RSLAD's KL to T(x)

  def loss(self, ctx, student, x_adv, state):
    x_adv, kappa = x_adv
    w = self._w(ctx, state)
    s_adv = student(x_adv)
    s_clean = student(ctx.x)
    t = sg(ctx.teacher(0)(ctx.x))
    l_adv = self.scale * weighted(_soft_label_terms(s_adv, t, self.log_eps), w, ctx.mask,
                                  "batchmean")
    l_nat = self.scale * weighted(_soft_label_terms(s_clean, t, self.log_eps), w, ctx.mask,
                                  "batchmean")
    loss = self.adv_weight * l_adv + self.clean_weight * l_nat
    m = self._metrics(ctx, state, kappa, s_clean, s_adv)
    m.update(kl_adv=l_adv, kl_clean=l_nat)
    return LossOut(loss, m, self._accumulate(ctx, state, kappa))


@register
@dataclasses.dataclass(frozen=True)
class FairMTARD(_Fair):
  """Fair-MTARD: MTARD with class weights (``Fair-MTARD.py``).

  Teachers: 0 = adversarially trained ``T_adv``, 1 = natural ``T_nat``.
  Inner: MTARD's student CE PGD (eval mode, ``x + 0.001 N``), ``kappa`` counted.
  Outer (``S(x')`` then ``S(x)``):
  ``L_adv = scale (1/B) sum_i w_{y_i} l(S(x'_i), T_adv(x'_i))``,
  ``L_nat = scale (1/B) sum_i w_{y_i} l(S(x_i), target_i)``,
  ``l`` the code's soft-label KL with ``log(p_T + 1e-5)``, and
  ``L = w_adv L_adv + w_nat L_nat`` with MTARD's weight rule
  (:func:`kdrobust.methods.mtard.mtard_weight_update`, b = 1, lr_w = 0.025
  x0.1 at 215/260/285) on the reweighted loss values.

  ``nat_target``: ``'nat_teacher'`` (default, CHOICE) = ``T_nat(x)``,
  MTARD's natural term, which the paper's "reweight the base method"
  describes; ``'adv_teacher'`` = the released code, whose natural term uses
  ``T_adv(x')`` while ``T_nat(x)`` is computed and never used (A9; looks like a
  slip); ``protocol=official`` sets it. The method state holds MTARD's
  weights and the Fair-* sums.
  IGDM on top: no (two teachers).
  """
  name = "fair_mtard"
  teachers = (2, 2)
  attack: InnerAttack = InnerAttack(init="gaussian")
  nat_target: str = "nat_teacher"
  scale: float = 0.1
  weight_lr: float = 0.025
  weight_lr_decay_epochs: tuple[int, ...] = (215, 260, 285)
  weight_lr_decay_factor: float = 0.1
  b: float = 1.0
  log_eps: float = OFFICIAL_LOG_EPS

  def __post_init__(self):
    super().__post_init__()
    if self.nat_target not in NAT_TARGETS:
      raise ValueError(f"Unknown nat_target {self.nat_target!r}; valid: {NAT_TARGETS}.")

  def init_state(self, num_classes):
    return {**fair_init_state(num_classes), **mtard_init_state()}

  def loss(self, ctx, student, x_adv, state):
    x_adv, kappa = x_adv
    w = self._w(ctx, state)
    s_adv = student(x_adv)
    s_clean = student(ctx.x)
    t_adv = sg(ctx.teacher(0)(x_adv))
    t_nat = t_adv if self.nat_target == "adv_teacher" else sg(ctx.teacher(1)(ctx.x))
    l_adv = self.scale * weighted(_soft_label_terms(s_adv, t_adv, self.log_eps), w, ctx.mask,
                                  "batchmean")
    l_nat = self.scale * weighted(_soft_label_terms(s_clean, t_nat, self.log_eps), w,
                                  ctx.mask, "batchmean")
    first = state["initialized"] < 0.5
    init_adv = jnp.where(first, sg(l_adv), state["init_adv"])
    init_nat = jnp.where(first, sg(l_nat), state["init_nat"])
    lr_w = weight_lr_at(ctx.epoch, self.weight_lr, self.weight_lr_decay_epochs,
                        self.weight_lr_decay_factor)
    w_adv, w_nat = mtard_weight_update(state["w_nat"], l_adv, l_nat, init_adv, init_nat,
                                       lr_w, b=self.b)
    loss = w_adv * l_adv + w_nat * l_nat
    new = self._accumulate(ctx, state, kappa)
    new.update(w_adv=w_adv.astype(state["w_adv"].dtype), w_nat=w_nat.astype(state["w_nat"].dtype),
               init_adv=init_adv.astype(state["init_adv"].dtype),
               init_nat=init_nat.astype(state["init_nat"].dtype),
               initialized=jnp.ones_like(state["initialized"]))
    m = self._metrics(ctx, state, kappa, s_clean, s_adv)
    m.update(kl_adv=l_adv, kl_nat=l_nat, w_adv=w_adv, w_nat=w_nat, weight_lr=lr_w)
    return LossOut(loss, m, new)

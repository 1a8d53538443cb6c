"""IGDM: Indirect Gradient Distillation Module (Lee, Cho, Kim; ICLR 2025, arXiv 2312.03286).

A plug-in, not a registered method: ``wrap(base, alpha)`` (or
``methods.make(name, igdm={'alpha': a})``) returns a method whose inner attack
is the base method's own and whose loss is

    L = L_base + alpha (t / E) L_IGDM,
    L_IGDM = KL_batchmean( softmax(T(x+d) - T(x-d)) || softmax(S(x+d) - S(x-d)) ),

with ``d = stop_gradient(x' - x)``, ``x'`` the base method's adversarial
input, ``t`` the 1-indexed epoch and ``E`` the number of epochs.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax

from kdrobust import losses
from kdrobust.methods.base import LossOut, Method, epoch_ramp, sg

Array = jax.Array

# Base methods IGDM is defined for (IGDM App. B.1) and their modules.
SUPPORTED = ("pgd_at", "trades", "ard", "iad", "rslad", "adaad", "adaiad")


def igdm_loss(s_plus: Array, s_minus: Array, t_plus: Array, t_minus: Array, *,
              mask: Array | None = None) -> Array:
  """``(1/B) sum_i KL(softmax(T(x+d)_i - T(x-d)_i) || softmax(S(x+d)_i - S(x-d)_i))``.

  Softmax of the logit *differences* (tau = 1), the teacher difference is the
  target (stop-gradient); exactly zero when the student equals the teacher.
  """
  return losses.reduce(losses.kl(s_plus - s_minus, sg(t_plus - t_minus)), mask,
                       reduction="batchmean")


def igdm_points(x: Array, x_adv: Array) -> tuple[Array, Array]:
  """``(x + d, x - d)`` with ``d = stop_gradient(x' - x)``.

  ``x + d`` is ``x'`` itself (already in [0, 1]); ``x - d`` is NOT clipped
  to [0, 1], as in the code.
  """
  d = sg(x_adv - x)
  return sg(x_adv), x - d


@dataclasses.dataclass(frozen=True)
class IGDM(Method):
  """A base method plus the IGDM term (methods.md section 6).

  ``perturb`` is the base method's; ``loss`` is
  ``L_base + alpha (ctx.epoch / ctx.num_epochs) L_IGDM`` (the linear ramp of
  IGDM App. B.2; the code hard-codes ``epoch/200`` or ``epoch/300`` = the run
  length, we use the configured number of epochs). Student in train mode for
  ``S(x+d)`` and ``S(x-d)``, teacher 0 in inference mode without gradient.
  For PGD-AT and TRADES the teacher enters only through ``L_IGDM``, so every
  wrapped method needs exactly one teacher.

  Batch-norm order: ``S(x+d)``, ``S(x-d)``, then the base method's forwards.
  (The IGDM+AdaAD code runs ``S(x+d), S(x), S(x-d), S(x')``; the base loss
  is a separate method here, so its forwards come after the IGDM pair.)
  Source: ``Xavaitron/VLM_Distillation@a22ed64 ICLR_IGDM/adaad_IGDM_cifar100.py``
  (and the ARD/RSLAD scripts), ``beta = gamma = 1``.
  """
  name: ClassVar[str] = "igdm"
  teachers: ClassVar[tuple[int, int | None]] = (1, 1)
  base: Method | None = None
  alpha: float = 0.0

  def init_state(self, num_classes):
    return self.base.init_state(num_classes)

  def perturb(self, ctx):
    return self.base.perturb(ctx)

  def loss(self, ctx, student, x_adv, state):
    if x_adv is None:
      raise ValueError("IGDM needs the base method's adversarial input.")
    x_plus, x_minus = igdm_points(ctx.x, x_adv)
    s_plus = student(x_plus)
    s_minus = student(x_minus)
    teacher = ctx.teacher(0)
    t_plus = sg(teacher(x_plus))
    t_minus = sg(teacher(x_minus))
    l_igdm = igdm_loss(s_plus, s_minus, t_plus, t_minus, mask=ctx.mask)
    out = self.base.loss(ctx, student, x_adv, state)
    weight = self.alpha * epoch_ramp(ctx)
    metrics = dict(out.metrics)
    metrics.update({"base_loss": out.loss, "igdm": l_igdm, "igdm_weight": weight})
    return LossOut(out.loss + weight * l_igdm, metrics, out.state, out.skip)


_CLASSES: dict[type, type] = {}


def _wrapped_class(base_cls: type) -> type:
  """One ``IGDM`` subclass per base class, with class vars ``name`` and ``teachers``.

  ``name = 'igdm_<base name>'``; ``teachers = (1, 1)`` (``train.py`` reads
  ``type(method).teachers``).
  """
  if base_cls not in _CLASSES:
    cls = type(f"IGDM_{base_cls.__name__}", (IGDM,),
               {"__module__": __name__, "__qualname__": f"IGDM_{base_cls.__name__}",
                "name": f"igdm_{base_cls.name}", "teachers": (1, 1),
                "__annotations__": {}})
    _CLASSES[base_cls] = dataclasses.dataclass(frozen=True)(cls)
  return _CLASSES[base_cls]


def wrap(base: Method, alpha: float, **unknown) -> IGDM:
  """Wrap ``base`` with IGDM at weight ``alpha`` (before the ``t / E`` ramp).

  Supported bases: ``pgd_at``, ``trades``, ``ard``, ``iad``, ``rslad``,
  ``adaad``, ``adaiad`` (the paper's; AKD is not implemented). The wrapped
  method's ``attack`` field is the base's (the one ``perturb`` uses).
  """
  if unknown:
    raise ValueError(f"Unknown IGDM option(s) {sorted(unknown)}; valid: ['alpha'].")
  if isinstance(base, IGDM):
    raise ValueError("The method is already wrapped with IGDM.")
  if base.name not in SUPPORTED:
    raise ValueError(f"IGDM is not defined for method {base.name!r}; supported base "
                     f"methods: {', '.join(SUPPORTED)}.")
  lo, hi = type(base).teachers
  if hi is not None and hi > 1:
    raise ValueError(f"IGDM supports single-teacher bases; {base.name!r} takes {lo}-{hi}.")
  return _wrapped_class(type(base))(attack=base.attack, base=base, alpha=float(alpha))

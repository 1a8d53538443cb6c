"""PGD adversarial training (Madry et al., ICLR 2018)."""

from __future__ import annotations

import dataclasses

from kdrobust import losses
from kdrobust.methods import register
from kdrobust.methods.base import InnerAttack, LossOut, Method
from kdrobust.methods.kd import bn_only_forward


@register
@dataclasses.dataclass(frozen=True)
class PgdAT(Method):
  """Madry's PGD-AT, and the official ``Plain_Madry`` step of the AdaAD code.

  Inner (student in ``attack.bn_mode``, by default inference mode):
  ``x' = PGD(CE(S(.), y), x; eps = 8/255, step = 2/255, K = 10, attack.init)``.
  Outer (student in train mode):
  ``L = (1 - a) (1/B) sum_i CE(S(x'_i), y_i) + a (1/B) sum_i CE(S(x_i), y_i)``
  with ``a = mixture_alpha`` (0: Madry's loss, docs/fidelity.md, PGD-AT).

  Fields beyond the attack:

  * ``extra_clean_forward``: after the forward on ``x'``, one more train-mode
    forward ``S(x)``. The official ``Plain_Madry`` loop runs it
    (``ori_outputs = net(inputs)`` after ``adv_outputs = net(adv_inputs)``,
    ``[C:AdaAD@9e5c6e5:main.py:311-318]``, docs/fidelity.md erratum E11) and,
    without ``--mixture``, only reports its accuracy, so its one effect on
    training is a running-statistic update. It runs here without gradient
    (``kd.bn_only_forward``) when ``mixture_alpha == 0``, with gradient
    otherwise. Default ``False`` (Madry's step: one forward).
  * ``mixture_alpha``: AdaAD's ``--mixture`` option, which acts only in
    ``Plain_Madry`` (``main.py:320-324``): ``a CE(S(x)) + (1 - a) CE(S(x'))``
    on the forwards above (the clean forward then always runs, after
    ``S(x')``). As released the option cannot run: ``args.mixture_alpha`` is
    never defined by ``get_args``, so ``--mixture`` raises ``AttributeError``
    and no value of ``a`` is given. Default ``0.0`` (off, as the README runs).

  The official recipes (configs/cifar10_pgd_at.py):

  * ``official`` = AdaAD's ``Plain_Madry``: ``attack.init =
    'gaussian_clamped'`` (``clamp(x + 0.001 N(0, I), 0, 1)``,
    ``AT_helper.py:65-69``), ``attack.bn_mode = 'eval'`` (``BN_eval=True``:
    ``model.eval()`` for the attack, ``model.train()`` after it), the attack's
    CE is ``reduction='mean'`` (same sign as our sum), and
    ``extra_clean_forward = True``.
  * ``igdm``: IGDM's code (``Xavaitron/VLM_Distillation@a22ed64``,
    ``ICLR_IGDM/``) has no PGD-AT script; its ``attacks.PGD`` (the attack its
    ARD scripts train with: ``model.eval()``, ``clamp(x + U[-eps, eps], 0, 1)``,
    CE, step default ``alpha = 2/225``, a typo of 2/255) with one train-mode
    forward on ``x'``: ``attack.init = 'uniform'``, ``bn_mode = 'eval'``, no
    extra forward; the step (2/255 in the paper, 2/225 if the missing script
    kept the default) is the config's ``attack.step_size``.
  """
  name = "pgd_at"
  attack: InnerAttack = InnerAttack(init="uniform")
  extra_clean_forward: bool = False
  mixture_alpha: float = 0.0

  def perturb(self, ctx):
    return self.attack(lambda u: losses.xent(ctx.student_inner(u), ctx.y),
                       ctx.x, ctx.sub_key("attack"), stateful=ctx.student_inner)

  def loss(self, ctx, student, x_adv, state):
    logits = student(x_adv)
    ce = losses.reduce(losses.xent(logits, ctx.y), ctx.mask)
    acc = losses.reduce(losses.accuracy(logits, ctx.y), ctx.mask)
    metrics = {"ce_adv": ce, "train_adv_accuracy": acc}
    loss = ce
    mixed = not _is_zero(self.mixture_alpha)
    if self.extra_clean_forward or mixed:
      clean = student(ctx.x) if mixed else bn_only_forward(student, ctx.x)
      metrics["train_accuracy"] = losses.reduce(losses.accuracy(clean, ctx.y), ctx.mask)
      if mixed:
        ce_clean = losses.reduce(losses.xent(clean, ctx.y), ctx.mask)
        loss = self.mixture_alpha * ce_clean + (1.0 - self.mixture_alpha) * ce
        metrics["ce"] = ce_clean
    return LossOut(loss, metrics, state)


def _is_zero(weight) -> bool:
  """Whether ``weight`` is the Python number 0 (the mixture is off); traced values never are."""
  return isinstance(weight, (int, float)) and float(weight) == 0.0

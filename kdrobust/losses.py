"""Pure per-example losses and the one batch-reduction helper.

Every loss here maps logits (and labels or teacher logits) to a per-example
``float32[B]`` vector and never reduces over the batch. Reductions happen once,
in :func:`reduce`, with the padding mask. Inputs are cast to float32 so bf16
logits never leak into a loss.

Conventions (as the official codes of docs/fidelity.md use them):

* ``kl(student_logits, teacher_logits)`` is ``KL(p_T || p_S) =
  sum_c p_T,c (log p_T,c - log p_S,c)``: the *teacher* (second argument) is
  the target distribution. This is what PyTorch's
  ``KLDivLoss(log_softmax(s), softmax(t))`` computes and what every paper's
  "KL(S || T)" notation means.
* Reductions:
  ``'sum'`` = sum over the batch; ``'batchmean'`` = sum / B (true mean per
  example); ``'elemmean'`` = sum / (B * C) (PyTorch's default
  ``reduction='mean'`` on a ``[B, C]`` KL, e.g. ``nn.KLDivLoss()``).
  ``B`` counts only unmasked examples.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

Array = jax.Array
Reduction = Literal["sum", "batchmean", "elemmean", "mean"]
REDUCTIONS = ("sum", "batchmean", "elemmean", "mean")


def at_least_f32(x: Array) -> Array:
  """Cast to float32, or keep float64 (x64 mode: the float64 parity tests)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


_f32 = at_least_f32


def one_hot(labels: Array, num_classes: int) -> Array:
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def xent(logits: Array, labels: Array) -> Array:
  """Cross-entropy per example: ``-log softmax(z)_y``.

  ``labels`` is either ``int[B]`` or a probability matrix ``float[B, C]``.
  """
  logits = _f32(logits)
  logp = jax.nn.log_softmax(logits, axis=-1)
  if labels.ndim == logits.ndim:
    return -jnp.sum(_f32(labels) * logp, axis=-1)
  return -jnp.sum(one_hot(labels, logits.shape[-1]) * logp, axis=-1)


def kl(student_logits: Array, teacher_logits: Array, *,
       temperature: float | Array = 1.0) -> Array:
  """``KL(softmax(t/T) || softmax(s/T))`` per example (no ``T^2`` factor).

  Methods that follow Hinton et al. multiply by ``T**2`` themselves, so the
  formula in each method's docstring reads exactly as in its paper.
  The value is exactly zero when ``student_logits == teacher_logits``.
  """
  s = _f32(student_logits) / temperature
  t = _f32(teacher_logits) / temperature
  log_ps = jax.nn.log_softmax(s, axis=-1)
  log_pt = jax.nn.log_softmax(t, axis=-1)
  return jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), axis=-1)


def margin(logits: Array, labels: Array, *, kappa: float | None = None) -> Array:
  """Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (higher = more adversarial).

  The true class is masked with ``-inf`` rather than multiplied by zero
  (docs/evaluation.md). With ``kappa`` the CW-inf objective of the FAT/IAD code is
  returned instead: ``-max(z_y - max_{j != y} z_j + kappa, 0)``, which stops
  rewarding the attack once the wrong class leads by ``kappa``.
  """
  z = _f32(logits)
  oh = one_hot(labels, z.shape[-1]) > 0
  z_y = jnp.sum(jnp.where(oh, z, 0.0), axis=-1)
  z_other = jnp.max(jnp.where(oh, -jnp.inf, z), axis=-1)
  m = z_other - z_y
  if kappa is None:
    return m
  return -jnp.maximum(-m + kappa, 0.0)


def dlr(logits: Array, labels: Array) -> Array:
  """AutoAttack's untargeted DLR loss (Croce & Hein 2020), maximised.

  ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``pi`` the
  indices of the logits sorted in decreasing order.
  """
  z = _f32(logits)
  top = jax.lax.top_k(z, 3)[0]  # = sort(z)[:, ::-1][:, :3]; XLA:CPU sorts slowly.
  oh = one_hot(labels, z.shape[-1]) > 0
  z_y = jnp.sum(jnp.where(oh, z, 0.0), axis=-1)
  is_top = jnp.argmax(z, axis=-1) == labels
  z_other = jnp.where(is_top, top[:, 1], top[:, 0])
  return -(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted(logits: Array, labels: Array, targets: Array) -> Array:
  """AutoAttack's targeted DLR: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2 + 1e-12)``."""
  z = _f32(logits)
  top = jax.lax.top_k(z, 4)[0]  # = sort(z)[:, ::-1][:, :4]
  c = z.shape[-1]
  z_y = jnp.sum(one_hot(labels, c) * z, axis=-1)
  z_t = jnp.sum(one_hot(targets, c) * z, axis=-1)
  return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def accuracy(logits: Array, labels: Array) -> Array:
  """Per-example top-1 correctness as float32 (1.0 correct, 0.0 wrong)."""
  return (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)


def reduce(values: Array, mask: Array | None = None, *,
           reduction: Reduction = "batchmean", num_classes: int | None = None
           ) -> Array:
  """The only batch reduction: masked ``sum`` / ``batchmean`` / ``elemmean``.

  ``values`` is per example ``[B]``; ``mask`` (bool or float ``[B]``) drops
  padding. ``'mean'`` is an alias of ``'batchmean'``. ``'elemmean'`` needs
  ``num_classes`` and equals ``batchmean / C`` (PyTorch's default KL reduction).
  """
  values = _f32(values)
  if mask is None:
    mask = jnp.ones(values.shape[:1], jnp.float32)
  mask = _f32(mask)
  total = jnp.sum(values * mask)
  if reduction == "sum":
    return total
  count = jnp.maximum(jnp.sum(mask), 1.0)
  if reduction in ("batchmean", "mean"):
    return total / count
  if reduction == "elemmean":
    if num_classes is None:
      raise ValueError("reduction='elemmean' needs num_classes.")
    return total / (count * num_classes)
  raise ValueError(f"Unknown reduction {reduction!r}; valid: {REDUCTIONS}.")


def masked_mean(values: Array, mask: Array | None = None) -> Array:
  """``reduce(values, mask, reduction='batchmean')``."""
  return reduce(values, mask, reduction="batchmean")

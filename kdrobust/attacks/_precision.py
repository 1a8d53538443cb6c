"""Matmul precision of an attack: a named, recorded choice, enforced inside the attack.

Every evaluation attack (``fgsm``, ``pgd``, ``cw_linf``, ``apgd``,
``apgd_targeted``, ``fab``, ``fab_targeted``, ``square``, ``autoattack`` and
their single-run / host-driver forms) takes ``precision=`` (keyword only;
unset: the enclosing attack's, else ``'highest'``) and traces its whole
computation under ``jax.default_matmul_precision(precision)``. The precision is part of JAX's
trace context, hence of every jit cache key: a caller's surrounding
``default_matmul_precision`` context can neither lower nor raise it, and two
precisions never share an executable.

========================  ======================================================
``'highest'``             full float32 matmuls/convolutions (no TF32 or bf16
                          passes): the default, and the only setting for
                          reportable numbers
``'tensorfloat32'``       TF32 on NVIDIA Ampere and later (XLA ``HIGH``)
``'bfloat16'``            one bf16 pass (XLA ``DEFAULT``; the TPU default and a
                          GPU's fastest)
========================  ======================================================

On XLA:CPU the three lower to different HLO precision attributes but compute
alike (float32).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect

import jax

PRECISIONS = ("highest", "tensorfloat32", "bfloat16")
DEFAULT_PRECISION = "highest"


def check_precision(precision: str) -> str:
  """Return ``precision`` if valid, else raise a one-line error listing the valid names."""
  if precision not in PRECISIONS:
    raise ValueError(f"Unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}.")
  return precision


def precision_scope(precision: str):
  """``jax.default_matmul_precision(precision)`` after validating the name."""
  return jax.default_matmul_precision(check_precision(precision))


# The precision of the attack being run (None outside any attack): an attack
# called by another without ``precision=`` (AutoAttack's APGD, cw_linf's PGD)
# inherits the outer attack's, never the caller's jax context.
_ATTACK_PRECISION: contextvars.ContextVar = contextvars.ContextVar(
    "kdrobust_attack_precision", default=None)


@contextlib.contextmanager
def attack_scope(precision: str):
  """Run attacks (and everything else traced) at ``precision``.

  Sets the matmul precision and the precision the attacks called inside
  without ``precision=`` inherit (e.g. a monitor step whose attacks are
  plain ``(logits_fn, x, y, key, eps)`` callables).
  """
  token = _ATTACK_PRECISION.set(check_precision(precision))
  try:
    with jax.default_matmul_precision(precision):
      yield
  finally:
    _ATTACK_PRECISION.reset(token)


def current() -> str | None:
  """The precision of the attack scope being traced (None outside any)."""
  return _ATTACK_PRECISION.get()


def with_precision(fn):
  """Add a keyword-only ``precision='highest'`` to ``fn`` and run ``fn`` under it.

  The wrapper validates the name before any compute, then calls ``fn`` inside
  :func:`attack_scope`, so everything ``fn`` traces or dispatches (its own
  tracing when called inside a caller's ``jit``, or the jitted kernels a host
  driver calls) uses that precision. Without ``precision=`` the precision is
  that of the enclosing attack if ``fn`` is called by one, else
  ``'highest'``. The signature shows the new parameter
  (``inspect.signature(fn).parameters['precision']``).
  """

  @functools.wraps(fn)
  def wrapper(*args, precision: str | None = None, **kwargs):
    if precision is None:
      precision = _ATTACK_PRECISION.get() or DEFAULT_PRECISION
    with attack_scope(precision):
      return fn(*args, **kwargs)

  sig = inspect.signature(fn)
  params = list(sig.parameters.values())
  extra = inspect.Parameter("precision", inspect.Parameter.KEYWORD_ONLY,
                            default=None, annotation="str | None")
  tail = [p for p in params if p.kind == inspect.Parameter.VAR_KEYWORD]
  head = [p for p in params if p.kind != inspect.Parameter.VAR_KEYWORD]
  wrapper.__signature__ = sig.replace(parameters=head + [extra] + tail)
  return wrapper



"""Model registry: ``get(name, num_classes=..., ...)`` returns a Flax linen module.

Every model is called as ``model.apply(variables, x, train=bool, mutable=...)``
with ``x`` float32 NHWC in [0, 1]. Normalisation (mean/std) happens *inside*
the model, in float32, so attack budgets are always in pixel space; the cast
to the compute ``dtype`` (e.g. bfloat16) happens after normalisation, and
parameters stay float32.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn

from kdrobust.models.layers import DATASET_STATS, Normalize  # noqa: F401

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(*names: str):
  """Decorator registering a module constructor under one or more names."""

  def deco(fn):
    for name in names:
      if name in _REGISTRY:
        raise ValueError(f"Model {name!r} registered twice.")
      _REGISTRY[name] = fn
    return fn

  return deco


def available() -> list[str]:
  """Sorted list of registered model names."""
  _import_all()
  return sorted(_REGISTRY)


def get(name: str, *, num_classes: int, **kwargs) -> nn.Module:
  """Build the model ``name`` with ``num_classes`` outputs.

  Common keyword arguments: ``mean``/``std`` (tuples, or ``None`` for no
  normalisation), ``dtype`` (compute dtype name: ``'float32'`` or
  ``'bfloat16'``). Unknown names raise a ``ValueError`` listing valid ones.
  """
  _import_all()
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}.")
  return _REGISTRY[name](num_classes=num_classes, **kwargs)


def _import_all() -> None:
  # Importing the modules runs their @register decorators.
  from kdrobust.models import small_cnn  # noqa: F401
  try:  # The architecture zoo (added module by module).
    from kdrobust.models import zoo  # noqa: F401
  except ImportError as e:  # pragma: no cover - only while the zoo is absent
    if "zoo" not in str(e):
      raise

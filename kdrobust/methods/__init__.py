"""Method registry: ``available()`` lists methods, ``make(name, **hparams)`` builds one.

``config.method`` is plain data: ``name``, the method's hyperparameters, an
``attack`` sub-dict (the inner PGD) and an ``igdm`` sub-dict (the IGDM plug-in,
active when ``igdm.alpha > 0``). :func:`from_config` turns it into a frozen
method dataclass and refuses unknown names and unknown fields with the list of
valid ones.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping

from kdrobust.methods.base import (  # noqa: F401
    Ctx, InnerAttack, InnerStudent, LossOut, Method, TrainForward)

_REGISTRY: dict[str, type[Method]] = {}

# Modules whose import registers methods. One module per idea.
_MODULES = (
    "natural", "pgd_at", "trades",
    # Distillation methods (issue 4): each registers itself when present.
    "kd", "ard", "iad", "rslad", "mtard", "kdiga", "adaad", "darht",
    "saad", "b_mtard", "cgard",  # issue 12, docs/fidelity.md
    "absld", "fair_ard",  # issue 12, docs/fidelity.md
    "peeraid",  # issue 12, docs/fidelity.md, PeerAiD (an extra trainable network)
)


def register(cls: type[Method]) -> type[Method]:
  """Class decorator: register a :class:`Method` subclass under ``cls.name``."""
  if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
    raise ValueError(f"Method {cls.name!r} registered twice.")
  _REGISTRY[cls.name] = cls
  return cls


def _import_all() -> None:
  for mod in _MODULES:
    try:
      importlib.import_module(f"kdrobust.methods.{mod}")
    except ModuleNotFoundError as e:
      if e.name != f"kdrobust.methods.{mod}":
        raise


def available() -> list[str]:
  """Names of all registered methods, sorted."""
  _import_all()
  return sorted(_REGISTRY)


def get_class(name: str) -> type[Method]:
  _import_all()
  if name not in _REGISTRY:
    raise ValueError(f"Unknown method {name!r}; valid methods: {', '.join(sorted(_REGISTRY))}.")
  return _REGISTRY[name]


def default_hparams(name: str) -> dict[str, Any]:
  """The paper defaults of method ``name`` as plain data (for configs)."""
  cls = get_class(name)
  out = {}
  for f in dataclasses.fields(cls):
    v = _default(f)
    out[f.name] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
  return out


def _default(f: dataclasses.Field):
  if f.default is not dataclasses.MISSING:
    return f.default
  if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
    return f.default_factory()  # type: ignore[misc]
  raise ValueError(f"Field {f.name} has no default.")


def make(name: str, *, igdm: Mapping[str, Any] | None = None,
         **hparams) -> Method:
  """Build method ``name`` from plain hyperparameters.

  ``attack`` may be a mapping of :class:`InnerAttack` fields. ``igdm`` (a
  mapping with ``alpha`` > 0) wraps the method with the IGDM plug-in.
  """
  cls = get_class(name)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(hparams) - set(fields))
  if unknown:
    raise ValueError(
        f"Method {name!r} has no hyperparameter(s) {unknown}; valid: {sorted(fields)}.")
  if "attack" in hparams and isinstance(hparams["attack"], Mapping):
    base = _default(fields["attack"])
    attack_fields = {f.name for f in dataclasses.fields(InnerAttack)}
    bad = sorted(set(hparams["attack"]) - attack_fields)
    if bad:
      raise ValueError(f"Unknown inner-attack field(s) {bad}; valid: {sorted(attack_fields)}.")
    hparams["attack"] = dataclasses.replace(base, **dict(hparams["attack"]))
  for k, v in list(hparams.items()):
    if isinstance(v, list):
      hparams[k] = tuple(v)
  method = cls(**hparams)
  if igdm is not None and float(dict(igdm).get("alpha", 0.0)) > 0:
    from kdrobust.methods import igdm as igdm_lib  # pylint: disable=g-import-not-at-top
    method = igdm_lib.wrap(method, **dict(igdm))
  return method


def from_config(method_config) -> Method:
  """Build the method described by ``config.method`` (a ConfigDict or dict)."""
  d = method_config.to_dict() if hasattr(method_config, "to_dict") else dict(method_config)
  d = dict(d)
  name = d.pop("name")
  return make(name, **d)

"""The train state: everything that changes during training (and is checkpointed).

Teachers are *not* here: they are frozen data, never optimised, never
checkpointed with the student (they are loaded again on resume, see the README's
"Checkpoints and resume").

Extra trainable networks (issue 12; PeerAiD's peer): a method may own
networks trained with the student inside the one jitted step
(``Method.extra_networks``, :mod:`kdrobust.train_step`). Each one's
``{'params', 'batch_stats', 'opt_state'}`` lives in ``TrainState.extra[name]``,
so it is checkpointed and resumed with the student. The pytree holds the
``extra`` node only when it is non-empty: the state of every method without
extra networks has exactly the structure saved before ``extra`` existed, so
older checkpoints restore unchanged (Orbax restores by structure).

Weight averaging (``config.weight_averaging``, :mod:`kdrobust.weight_averaging`):
``TrainState.averaged = {'params', 'batch_stats', 'count', 'bn_count'}``, the
SWA/EMA average of the student, likewise a node only when averaging is on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

_FIELDS = ("step", "params", "batch_stats", "opt_state", "method_state", "nonfinite")


@dataclasses.dataclass(frozen=True)
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  method_state: Any
  nonfinite: jax.Array  # number of steps rejected because loss or grads were NaN/Inf
  # {name: {'params', 'batch_stats', 'opt_state'}} of the method's extra networks.
  extra: Any = dataclasses.field(default_factory=dict)
  # The student's weight average (kdrobust.weight_averaging); {} when off.
  averaged: Any = dataclasses.field(default_factory=dict)

  @classmethod
  def create(cls, params, batch_stats, tx, method_state, extra=None, averaged=None):
    """A fresh state; ``extra`` maps a name to ``(params, batch_stats, tx)``."""
    extra = {name: extra_entry(p, bs, t) for name, (p, bs, t) in (extra or {}).items()}
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               batch_stats=batch_stats, opt_state=tx.init(params),
               method_state=method_state,
               nonfinite=jnp.zeros((), jnp.int32), extra=extra, averaged=averaged or {})

  def replace(self, **updates) -> "TrainState":
    return dataclasses.replace(self, **updates)

  def variables(self) -> dict[str, Any]:
    """Flax variables for ``apply``."""
    return _variables(self.params, self.batch_stats)

  def extra_variables(self, name: str) -> dict[str, Any]:
    """Flax variables of the extra network ``name``."""
    e = self.extra[name]
    return _variables(e["params"], e["batch_stats"])


def extra_entry(params, batch_stats, tx) -> dict[str, Any]:
  """``TrainState.extra[name]`` of a fresh network: its variables and ``tx.init(params)``."""
  return {"params": params, "batch_stats": batch_stats, "opt_state": tx.init(params)}


def _variables(params, batch_stats) -> dict[str, Any]:
  v = {"params": params}
  if batch_stats:
    v["batch_stats"] = batch_stats
  return v


def _flatten(state: TrainState):
  has = (bool(state.extra), bool(state.averaged))
  names = _FIELDS + tuple(n for n, h in zip(("extra", "averaged"), has) if h)
  return [(jax.tree_util.GetAttrKey(n), getattr(state, n)) for n in names], has


def _unflatten(has, children) -> TrainState:
  children = list(children)
  rest = iter(children[len(_FIELDS):])
  has_extra, has_averaged = has
  return TrainState(*children[:len(_FIELDS)],
                    extra=next(rest) if has_extra else {},
                    averaged=next(rest) if has_averaged else {})


jax.tree_util.register_pytree_with_keys(TrainState, _flatten, _unflatten)

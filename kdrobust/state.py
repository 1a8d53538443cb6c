"""The train state: everything that changes during training (and is checkpointed).

Teachers are *not* here: they are frozen data, never optimised, never
checkpointed with the student (anchors.md section 3.1).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  method_state: Any
  nonfinite: jax.Array  # number of steps rejected because loss or grads were NaN/Inf

  @classmethod
  def create(cls, params, batch_stats, tx, method_state):
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               batch_stats=batch_stats, opt_state=tx.init(params),
               method_state=method_state,
               nonfinite=jnp.zeros((), jnp.int32))

  def variables(self) -> dict[str, Any]:
    """Flax variables for ``apply``."""
    v = {"params": self.params}
    if self.batch_stats:
      v["batch_stats"] = self.batch_stats
    return v

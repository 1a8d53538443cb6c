"""A small CNN with batch norm for tests, the quickstart and digits."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdrobust.models import register
from kdrobust.models.layers import (BatchNorm, Normalize, classifier_head,
                                    compute_dtype, stem_dtype)


class SmallCNN(nn.Module):
  """conv-BN-ReLU blocks (stride 1, then 2, 2), global average pool, dense head."""
  num_classes: int
  widths: Sequence[int] = (32, 64, 128)
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None
  dtype: Any = "float32"
  head_slots: int = 0  # > 0: DARHT's K-teacher slot head (layers.classifier_head)

  @nn.compact
  def __call__(self, x, train: bool = False):
    dt = compute_dtype(self.dtype)
    x = Normalize(self.mean, self.std, stem_dtype(dt))(x)  # float32 stem for a bf16 model
    for i, w in enumerate(self.widths):
      x = nn.Conv(w, (3, 3), strides=1 if i == 0 else 2,
                  padding=((1, 1), (1, 1)), use_bias=False,
                  dtype=stem_dtype(dt) if i == 0 else dt)(x).astype(dt)
      x = BatchNorm(use_running_average=not train, momentum=0.9,
                    epsilon=1e-5, dtype=dt)(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    return classifier_head(self, x, self.num_classes, self.head_slots, dt)


@register("small_cnn")
def small_cnn(num_classes: int, **kw) -> nn.Module:
  return SmallCNN(num_classes=num_classes, **kw)


@register("tiny_cnn")
def tiny_cnn(num_classes: int, **kw) -> nn.Module:
  """Narrower variant used as the distilled student in quick demos and tests."""
  kw.setdefault("widths", (16, 32, 64))
  return SmallCNN(num_classes=num_classes, **kw)

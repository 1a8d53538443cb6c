"""Shared layers: in-model normalisation, dtype helpers, per-dataset statistics."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

# Channel statistics in [0, 1] pixel space (torchvision conventions).
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "digits": ((0.3,), (0.4,)),
}


def compute_dtype(dtype: Any) -> Any:
  """Map a dtype name ('float32', 'bfloat16', 'float16') or dtype to a jnp dtype."""
  if isinstance(dtype, str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
            "float16": jnp.float16, "float64": jnp.float64}[dtype]
  return dtype


class Normalize(nn.Module):
  """``(x - mean) / std`` in float32, then cast to the compute dtype.

  ``mean=None`` disables normalisation (the official distillation codes feed
  raw [0, 1] pixels to their students).
  """
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.asarray(x, jnp.float32)
    if self.mean is not None:
      x = (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
    return x.astype(compute_dtype(self.dtype))


# ---------------------------------------------------------------------------
# Helpers shared by the architecture zoo (resnet, wide_resnet, ...).
# ---------------------------------------------------------------------------

def activation_fn(name: str):
  """Activation by name: 'relu', 'swish' / 'silu' (x * sigmoid(x)), 'gelu'."""
  fns = {"relu": nn.relu, "swish": nn.swish, "silu": nn.silu,
         "gelu": lambda x: nn.gelu(x, approximate=False)}
  if name not in fns:
    raise ValueError(f"Unknown activation {name!r}; valid: {', '.join(sorted(fns))}.")
  return fns[name]


def batch_norm(train: bool, dtype: Any, name: str | None = None) -> nn.BatchNorm:
  """PyTorch-compatible BatchNorm (momentum 0.9 == torch 0.1, epsilon 1e-5)."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


def conv(features: int, kernel: int, stride: int = 1, padding: Any = None,
         dtype: Any = jnp.float32, name: str | None = None,
         use_bias: bool = False, groups: int = 1) -> nn.Conv:
  """``kernel x kernel`` conv (bias-free by default) with explicit PyTorch-style padding.

  ``padding=None`` means PyTorch's symmetric ``padding=kernel // 2``; pass an
  explicit ``((top, bottom), (left, right))`` for anything else (e.g. the
  TF-"SAME" ``((0, 1), (0, 1))`` of DeepMind models at stride 2).
  """
  if padding is None:
    p = kernel // 2
    padding = ((p, p), (p, p))
  elif isinstance(padding, int):
    padding = ((padding, padding), (padding, padding))
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=padding, use_bias=use_bias, feature_group_count=groups,
                 dtype=dtype, name=name)


def classifier_head(module: nn.Module, features, num_classes: int,
                    head_slots: int = 0, dtype: Any = jnp.float32):
  """The classifier head shared by every backbone; returns float32 logits.

  Must be called from inside ``module``'s ``@nn.compact`` method (the Dense
  layers become children of ``module``). With ``head_slots == 0`` it is
  ``Dense(C, name='head')``. With ``head_slots = K > 0`` (DARHT) it is
  ``z = Dense(K * C, name='slots')(features)``, ``z`` reshaped to ``(B, K, C)``
  is sown as ``intermediates/teacher_slots``, and
  ``logits = Dense(C, name='head')(z)``.
  """
  if head_slots < 0:
    raise ValueError(f"head_slots must be >= 0, got {head_slots}.")
  if head_slots:
    z = nn.Dense(head_slots * num_classes, dtype=dtype, name="slots")(features)
    module.sow("intermediates", "teacher_slots",
               z.reshape(z.shape[0], head_slots, num_classes).astype(jnp.float32))
    features = z
  logits = nn.Dense(num_classes, dtype=dtype, name="head")(features)
  return logits.astype(jnp.float32)


def global_avg_pool(x):
  """Mean over the spatial axes of NHWC ``x``, accumulated in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)

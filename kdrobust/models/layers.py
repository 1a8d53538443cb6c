"""Shared layers: in-model normalisation, dtype helpers, per-dataset statistics."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Channel statistics in [0, 1] pixel space (torchvision conventions).
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "tiny_imagenet_wnids": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),  # wnids.txt order
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "digits": ((0.3,), (0.4,)),
}


def compute_dtype(dtype: Any) -> Any:
  """Map a dtype name ('float32', 'bfloat16', 'float16') or dtype to a jnp dtype."""
  if isinstance(dtype, str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
            "float16": jnp.float16, "float64": jnp.float64}[dtype]
  return dtype


def stem_dtype(dtype: Any) -> Any:
  """Compute dtype of the input normalisation and the first layer (the "stem").

  float32 for a half-precision model, else ``dtype`` itself (float32 and
  float64 models are unchanged). Pixels are in [0, 1], where bfloat16's spacing
  is 2^-8 ~ 1/256 near 1: a perturbation of 2/255 survives the cast with a
  2.7 % error (6.2 % after normalisation), but APGD's halved and FAB's small
  steps do not (0.5/255: 65 % error, 22 % of the perturbed entries rounded
  away; measured on 256 CIFAR-10 images). So the stem computes in float32 and
  casts its output to the model's dtype; it costs ~0.6 % of a ResNet-18's
  FLOPs. Weights stay float32 in every layer (Flax's ``param_dtype``).
  """
  dt = compute_dtype(dtype)
  return jnp.float32 if dt in (jnp.bfloat16, jnp.float16) else dt


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
    x = jnp.asarray(x, jnp.promote_types(jnp.asarray(x).dtype, jnp.float32))
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


class BatchNorm(nn.Module):
  """``torch.nn.BatchNorm2d`` (and ``1d``) exactly, in Flax.

  Train mode normalises with the *biased* variance of the batch, like PyTorch
  and Flax, but updates the running variance with the **unbiased** one:

      mean_B = mean(x),  var_B = mean((x - mean_B)^2)          (over N, H, W)
      y      = (x - mean_B) / sqrt(var_B + eps) * scale + bias
      ra_mean <- m ra_mean + (1 - m) mean_B
      ra_var  <- m ra_var  + (1 - m) var_B * n / (n - 1)       (n = N H W)

  with ``m = momentum = 0.9`` (PyTorch's ``momentum=0.1``). ``flax.linen.BatchNorm``
  uses ``var_B`` in the last line, so its running variance drifts from PyTorch's
  by the factor ``n / (n - 1)`` at every update (issue 8). Inference mode uses
  the running statistics. Statistics are computed in float32 or wider
  (two-pass variance) whatever the compute ``dtype``; the output is cast to ``dtype``.
  Variable names (``params/scale, bias``, ``batch_stats/mean, var``) are
  Flax's, so checkpoints and converted PyTorch teachers load unchanged.
  ``unbiased_running_var=False`` gives Flax's update.
  """
  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None
  unbiased_running_var: bool = True

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    out_dtype = x.dtype if self.dtype is None else compute_dtype(self.dtype)
    xf = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))  # float64 stays float64
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(xf, axis=axes)
      var = jnp.mean(jnp.square(xf - mean), axis=axes)
      if not self.is_initializing():
        n = 1
        for a in axes:
          n *= x.shape[a]
        unbiased = var * (n / (n - 1)) if (self.unbiased_running_var and n > 1) else var
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
        ra_var.value = m * ra_var.value + (1.0 - m) * unbiased
    y = (xf - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(out_dtype)


def batch_norm(train: bool, dtype: Any, name: str | None = None) -> BatchNorm:
  """PyTorch's BatchNorm (momentum 0.9 == torch 0.1, epsilon 1e-5, unbiased running var)."""
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
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
  """The classifier head shared by every backbone; returns float32 logits (float64 stays).

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
               _at_least_f32(z.reshape(z.shape[0], head_slots, num_classes)))
    features = z
  logits = nn.Dense(num_classes, dtype=dtype, name="head")(features)
  return _at_least_f32(logits)


def _at_least_f32(x):
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def global_avg_pool(x):
  """Mean over the spatial axes of NHWC ``x``, accumulated in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)

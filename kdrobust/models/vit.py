"""Vision Transformer (Dosovitskiy et al. 2021): Ti/S/B with configurable patch size.

Standard pre-LN encoder: patch embedding (a ``patch x patch`` stride-``patch``
conv with bias), a learned class token, learned position embeddings (one per
patch plus the class token), ``depth`` blocks of
``x + MHA(LN(x))``, ``x + MLP(LN(x))`` (GELU, hidden ``4 * width``), a final
LayerNorm, and the class token goes to the shared classifier head. Defaults
are for CIFAR (``image_size=32``, ``patch_size=4``: 64 tokens + class token).

``resize_inputs=True`` resizes inputs of any size to ``image_size`` (bilinear,
half-pixel centres: torchvision's ``Resize`` on tensors, which DARHT applies
to 32x32 CIFAR images before its 224x224 ViT teachers) before normalising.

No BatchNorm, so ``mutable=['batch_stats']`` returns an empty collection.
Dropout (``dropout_rate``) defaults to 0; with a positive rate, training calls
need a ``'dropout'`` RNG.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from kdrobust.models import register
from kdrobust.models.layers import Normalize, classifier_head, compute_dtype, stem_dtype


class EncoderBlock(nn.Module):
  """Pre-LN transformer block."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="ln1")(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        dropout_rate=self.dropout_rate, deterministic=not train, name="attn")(y)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="ln2")(x)
    y = nn.Dense(self.mlp_dim, dtype=self.dtype,
                 kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(1e-6), name="mlp_fc1")(y)
    y = nn.gelu(y, approximate=False)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = nn.Dense(x.shape[-1], dtype=self.dtype,
                 kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(1e-6), name="mlp_fc2")(y)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    return x + y


class ViT(nn.Module):
  """ViT classifier with a class token."""
  num_classes: int
  width: int = 192
  depth: int = 12
  num_heads: int = 3
  mlp_dim: int | None = None
  patch_size: int = 4
  image_size: int = 32
  dropout_rate: float = 0.0
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None
  dtype: Any = "float32"
  head_slots: int = 0
  resize_inputs: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    dt = compute_dtype(self.dtype)
    if self.resize_inputs and (x.shape[1], x.shape[2]) != (self.image_size,) * 2:
      x = jax.image.resize(x, (x.shape[0], self.image_size, self.image_size, x.shape[3]),
                           method="bilinear")
    if x.shape[1] != self.image_size or x.shape[2] != self.image_size:
      raise ValueError(f"ViT built for {self.image_size}x{self.image_size} inputs, "
                       f"got {x.shape[1]}x{x.shape[2]} (resize_inputs=True resizes them).")
    if self.image_size % self.patch_size:
      raise ValueError("image_size must be a multiple of patch_size.")
    x = Normalize(self.mean, self.std, stem_dtype(dt))(x)  # float32 stem for a bf16 model
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=stem_dtype(dt),
                name="patch_embed")(x).astype(dt)
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    cls = self.param("cls_token", nn.initializers.zeros, (1, 1, c), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(dt), (b, 1, c)), x], axis=1)
    pos = self.param("pos_embedding", nn.initializers.normal(0.02),
                     (1, h * w + 1, c), jnp.float32)
    x = x + pos.astype(dt)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    mlp_dim = self.mlp_dim or 4 * self.width
    for i in range(self.depth):
      x = EncoderBlock(self.num_heads, mlp_dim, self.dropout_rate, dt,
                       name=f"block{i}")(x, train)
    x = nn.LayerNorm(epsilon=1e-6, dtype=dt, name="ln_final")(x)
    feats = x[:, 0]
    self.sow("intermediates", "features", feats)
    return classifier_head(self, feats, self.num_classes, self.head_slots, dt)


_SIZES = {"ti": (192, 12, 3), "s": (384, 12, 6), "b": (768, 12, 12)}


def _make(size: str):
  width, depth, heads = _SIZES[size]

  def ctor(num_classes: int, **kw) -> nn.Module:
    return ViT(num_classes=num_classes, width=width, depth=depth,
               num_heads=heads, **kw)

  ctor.__doc__ = (f"ViT-{size.upper()} (width {width}, depth {depth}, {heads} heads); "
                  "kwargs ``patch_size``, ``image_size``, ``resize_inputs``.")
  return ctor


for _s in _SIZES:
  register(f"vit_{_s}")(_make(_s))

"""MobileNetV2 (Sandler et al. 2018), CIFAR variant of kuangliu/pytorch-cifar.

Differences from the ImageNet network (as in the kuangliu code used by the
robust-distillation papers, e.g. ARD/RSLAD students): stride 1 in the stem
conv and in the second stage, plain ReLU (not ReLU6), and a 1x1 conv+BN
projection shortcut when a stride-1 block changes the width. Head: 1x1 conv
to 1280, BN-ReLU, global average pool, linear. ~2.30 M parameters for 10
classes. Torch keys: ``conv1``, ``bn1``,
``layers.I.{conv1,bn1,conv2,bn2,conv3,bn3,shortcut.0,shortcut.1}``, ``conv2``,
``bn2``, ``linear``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdrobust.models import register
from kdrobust.models.layers import (Normalize, batch_norm, classifier_head,
                                    compute_dtype, conv, global_avg_pool, stem_dtype)

# (expansion, out_planes, num_blocks, stride) -- stage 2 uses stride 1 for CIFAR.
CIFAR_CFG = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
             (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(nn.Module):
  """1x1 expand - 3x3 depthwise (stride) - 1x1 linear projection (+ shortcut at stride 1)."""
  out_planes: int
  expansion: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    dt = self.dtype
    planes = self.expansion * x.shape[-1]
    out = conv(planes, 1, 1, padding=0, dtype=dt, name="conv1")(x)
    out = nn.relu(batch_norm(train, dt, "bn1")(out))
    out = conv(planes, 3, self.stride, dtype=dt, groups=planes, name="conv2")(out)
    out = nn.relu(batch_norm(train, dt, "bn2")(out))
    out = conv(self.out_planes, 1, 1, padding=0, dtype=dt, name="conv3")(out)
    out = batch_norm(train, dt, "bn3")(out)
    if self.stride != 1:
      return out
    if x.shape[-1] != self.out_planes:
      x = conv(self.out_planes, 1, 1, padding=0, dtype=dt, name="shortcut_conv")(x)
      x = batch_norm(train, dt, "shortcut_bn")(x)
    return out + x


class MobileNetV2(nn.Module):
  """CIFAR MobileNetV2 (kuangliu layout)."""
  num_classes: int
  cfg: Sequence[Sequence[int]] = CIFAR_CFG
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None
  dtype: Any = "float32"
  head_slots: int = 0

  @nn.compact
  def __call__(self, x, train: bool = False):
    dt = compute_dtype(self.dtype)
    st = stem_dtype(dt)  # float32 input and first conv for a bf16 model
    x = Normalize(self.mean, self.std, st)(x)
    x = conv(32, 3, 1, dtype=st, name="conv1")(x).astype(dt)
    x = nn.relu(batch_norm(train, dt, "bn1")(x))
    idx = 0
    for expansion, out_planes, num_blocks, stride in self.cfg:
      for i in range(num_blocks):
        x = InvertedResidual(out_planes, expansion, stride if i == 0 else 1, dt,
                             name=f"layers_{idx}")(x, train)
        idx += 1
    x = conv(1280, 1, 1, padding=0, dtype=dt, name="conv2")(x)
    x = nn.relu(batch_norm(train, dt, "bn2")(x))
    feats = global_avg_pool(x)
    self.sow("intermediates", "features", feats)
    return classifier_head(self, feats, self.num_classes, self.head_slots, dt)


@register("mobilenet_v2")
def mobilenet_v2(num_classes: int, **kw) -> nn.Module:
  """CIFAR MobileNetV2 (stride 1 stem and stage 2, 1280-d head)."""
  return MobileNetV2(num_classes=num_classes, **kw)

"""ResNet-18/34/50 in the CIFAR layout (kuangliu) and the ImageNet layout (torchvision).

CIFAR variant (``resnet18``, ``resnet34``, ``resnet50``): 3x3 stride-1 stem
conv + BN + ReLU, no max-pool, four stages of widths 64/128/256/512 (times 4
for the bottleneck), global average pooling, linear head. This is the
"kuangliu/pytorch-cifar" network that RobustBench ships as ``ResNet18`` and
that most robust-distillation papers use as the student.

ImageNet variant (``resnet18_imagenet``, ...): 7x7 stride-2 stem (padding 3),
BN, ReLU, 3x3 stride-2 max-pool (padding 1), the same stages (stride on the
3x3 conv of the bottleneck, i.e. torchvision's "v1.5"), global average pool.

Flax module names mirror the PyTorch ``state_dict`` (``layer2_0/conv1`` <->
``layer2.0.conv1``; ``shortcut_conv``/``shortcut_bn`` <-> ``shortcut.0/1``
(CIFAR) or ``downsample.0/1`` (torchvision); ``head`` <-> ``linear``/``fc``),
see ``kdrobust.teachers.torch_io``. All paddings are explicit and symmetric as
in PyTorch.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdrobust.models import register
from kdrobust.models.layers import (Normalize, batch_norm, classifier_head,
                                    compute_dtype, conv, global_avg_pool,
                                    stem_dtype)


class BasicBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN, plus (projected) shortcut, then ReLU."""
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = conv(self.planes, 3, self.stride, dtype=self.dtype, name="conv1")(x)
    out = nn.relu(batch_norm(train, self.dtype, "bn1")(out))
    out = conv(self.planes, 3, 1, dtype=self.dtype, name="conv2")(out)
    out = batch_norm(train, self.dtype, "bn2")(out)
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = conv(self.planes, 1, self.stride, padding=0, dtype=self.dtype,
               name="shortcut_conv")(x)
      x = batch_norm(train, self.dtype, "shortcut_bn")(x)
    return nn.relu(out + x)


class Bottleneck(nn.Module):
  """1x1-3x3(stride)-1x1 bottleneck with expansion 4."""
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    out_ch = self.planes * self.expansion
    out = conv(self.planes, 1, 1, padding=0, dtype=self.dtype, name="conv1")(x)
    out = nn.relu(batch_norm(train, self.dtype, "bn1")(out))
    out = conv(self.planes, 3, self.stride, dtype=self.dtype, name="conv2")(out)
    out = nn.relu(batch_norm(train, self.dtype, "bn2")(out))
    out = conv(out_ch, 1, 1, padding=0, dtype=self.dtype, name="conv3")(out)
    out = batch_norm(train, self.dtype, "bn3")(out)
    if self.stride != 1 or x.shape[-1] != out_ch:
      x = conv(out_ch, 1, self.stride, padding=0, dtype=self.dtype,
               name="shortcut_conv")(x)
      x = batch_norm(train, self.dtype, "shortcut_bn")(x)
    return nn.relu(out + x)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
  """ResNet; ``stem='cifar'`` (3x3, no pool) or ``'imagenet'`` (7x7/2 + max-pool)."""
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = "basic"
  stem: str = "cifar"
  width: int = 64
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None
  dtype: Any = "float32"
  head_slots: int = 0

  @nn.compact
  def __call__(self, x, train: bool = False):
    dt = compute_dtype(self.dtype)
    block_cls = _BLOCKS[self.block]
    st = stem_dtype(dt)  # float32 input and first conv for a bf16 model
    x = Normalize(self.mean, self.std, st)(x)
    if self.stem == "cifar":
      x = conv(self.width, 3, 1, dtype=st, name="conv1")(x).astype(dt)
      x = nn.relu(batch_norm(train, dt, "bn1")(x))
    elif self.stem == "imagenet":
      x = conv(self.width, 7, 2, padding=3, dtype=st, name="conv1")(x).astype(dt)
      x = nn.relu(batch_norm(train, dt, "bn1")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(f"Unknown stem {self.stem!r}; valid: 'cifar', 'imagenet'.")
    for s, n in enumerate(self.stage_sizes):
      planes = self.width * 2 ** s
      for i in range(n):
        stride = 2 if (s > 0 and i == 0) else 1
        x = block_cls(planes, stride, dt, name=f"layer{s + 1}_{i}")(x, train)
    feats = global_avg_pool(x)
    self.sow("intermediates", "features", feats)
    return classifier_head(self, feats, self.num_classes, self.head_slots, dt)


_DEPTHS = {18: ((2, 2, 2, 2), "basic"), 34: ((3, 4, 6, 3), "basic"),
           50: ((3, 4, 6, 3), "bottleneck")}


def _make(depth: int, stem: str):
  stages, block = _DEPTHS[depth]

  def ctor(num_classes: int, **kw) -> nn.Module:
    kw.setdefault("stage_sizes", stages)  # Overridable (tests run shallow instances).
    return ResNet(num_classes=num_classes, block=block, stem=stem, **kw)

  ctor.__doc__ = f"ResNet-{depth}, {stem} layout."
  return ctor


for _d in _DEPTHS:
  register(f"resnet{_d}")(_make(_d, "cifar"))
  register(f"resnet{_d}_imagenet")(_make(_d, "imagenet"))

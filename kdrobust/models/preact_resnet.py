"""Pre-activation ResNet-18 (He et al. 2016, "Identity Mappings"), CIFAR layout.

``preact_resnet18`` takes ``variant``:

* ``'standard'`` (default): BN-ReLU before each conv, the 1x1 projection
  shortcut reads the *pre-activated* input, and a final BN-ReLU precedes the
  pooling. RobustBench ``PreActResNet(PreActBlockV2, bn_before_fc=True)``
  (e.g. Rice2020Overfitting's L2 model); torch keys ``conv1``,
  ``layerS.I.{bn1,conv1,bn2,conv2,shortcut.0}``, ``bn``, ``linear``.
* ``'kuangliu'``: the same blocks, no final BN-ReLU (kuangliu/pytorch-cifar).
* ``'wong'``: the projection shortcut reads the *raw* block input, no final
  BN-ReLU: RobustBench ``PreActResNet(PreActBlock)`` (Wong2020Fast,
  Andriushchenko2020Understanding).
* ``'dm'``: DeepMind's ``DMPreActResNet`` (Rebuffi2021Fixing_R18,
  Gowal2021Improving_R18): TF-"SAME" padding (0, 1) at stride 2, a 3x3
  shortcut conv on the raw input, final BN-act, biasful ``logits``; the
  activation defaults to ``'swish'``. Torch keys ``conv_2d``,
  ``layer_S.I.{batchnorm_0,conv_2d_1,batchnorm_1,conv_2d_2,shortcut}``,
  ``batchnorm``, ``logits``.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdrobust.models import register
from kdrobust.models.layers import (Normalize, activation_fn, batch_norm,
                                    classifier_head, compute_dtype, conv,
                                    global_avg_pool, stem_dtype)

VARIANTS = ("standard", "kuangliu", "wong", "dm")


def _same_pad(stride: int):
  """TF-"SAME" padding of a 3x3 conv on even sizes: (1, 1) at stride 1, (0, 1) at 2."""
  if stride == 1:
    return ((1, 1), (1, 1))
  if stride == 2:
    return ((0, 1), (0, 1))
  raise ValueError(f"Unsupported stride {stride}.")


class PreActBlock(nn.Module):
  """BN-act-conv3x3(stride)-BN-act-conv3x3 + shortcut (no activation after the sum)."""
  planes: int
  stride: int = 1
  shortcut_from_preact: bool = True
  activation: str = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = activation_fn(self.activation)
    out = act(batch_norm(train, self.dtype, "bn1")(x))
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = conv(self.planes, 1, self.stride, padding=0, dtype=self.dtype,
                      name="shortcut_conv")(out if self.shortcut_from_preact else x)
    else:
      shortcut = x
    out = conv(self.planes, 3, self.stride, dtype=self.dtype, name="conv1")(out)
    out = act(batch_norm(train, self.dtype, "bn2")(out))
    out = conv(self.planes, 3, 1, dtype=self.dtype, name="conv2")(out)
    return out + shortcut


class DMPreActBlock(nn.Module):
  """DeepMind pre-activation block (TF-"SAME" padding, 3x3 shortcut on the raw input)."""
  planes: int
  stride: int = 1
  activation: str = "swish"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = activation_fn(self.activation)
    out = act(batch_norm(train, self.dtype, "batchnorm_0")(x))
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = conv(self.planes, 3, self.stride, padding=_same_pad(self.stride),
                      dtype=self.dtype, name="shortcut")(x)
    else:
      shortcut = x
    out = conv(self.planes, 3, self.stride, padding=_same_pad(self.stride),
               dtype=self.dtype, name="conv_2d_1")(out)
    out = act(batch_norm(train, self.dtype, "batchnorm_1")(out))
    out = conv(self.planes, 3, 1, dtype=self.dtype, name="conv_2d_2")(out)
    return out + shortcut


class PreActResNet(nn.Module):
  """Pre-activation ResNet (see the module docstring for ``variant``)."""
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  variant: str = "standard"
  activation: str | None = None
  width: int = 64
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None
  dtype: Any = "float32"
  head_slots: int = 0

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.variant not in VARIANTS:
      raise ValueError(f"Unknown variant {self.variant!r}; valid: {VARIANTS}.")
    dm = self.variant == "dm"
    act_name = self.activation or ("swish" if dm else "relu")
    act = activation_fn(act_name)
    dt = compute_dtype(self.dtype)
    st = stem_dtype(dt)  # float32 input and first conv for a bf16 model
    x = Normalize(self.mean, self.std, st)(x)
    x = conv(self.width, 3, 1, dtype=st, name="conv_2d" if dm else "conv1")(x).astype(dt)
    for s, n in enumerate(self.stage_sizes):
      planes = self.width * 2 ** s
      for i in range(n):
        stride = 2 if (s > 0 and i == 0) else 1
        if dm:
          x = DMPreActBlock(planes, stride, act_name, dt,
                            name=f"layer_{s}_{i}")(x, train)
        else:
          x = PreActBlock(planes, stride, self.variant != "wong", act_name, dt,
                          name=f"layer{s + 1}_{i}")(x, train)
    if dm:
      x = act(batch_norm(train, dt, "batchnorm")(x))
    elif self.variant == "standard":
      x = act(batch_norm(train, dt, "bn")(x))
    feats = global_avg_pool(x)
    self.sow("intermediates", "features", feats)
    return classifier_head(self, feats, self.num_classes, self.head_slots, dt)


@register("preact_resnet18")
def preact_resnet18(num_classes: int, **kw) -> nn.Module:
  """PreActResNet-18; ``variant`` in ('standard', 'kuangliu', 'wong', 'dm')."""
  return PreActResNet(num_classes=num_classes, stage_sizes=(2, 2, 2, 2), **kw)

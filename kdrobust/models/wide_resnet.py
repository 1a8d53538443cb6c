"""WideResNet-d-k (Zagoruyko & Komodakis 2016) in the two layouts RobustBench uses.

``variant='standard'``: RobustBench ``WideResNet`` (from the TRADES code;
Zhang2019Theoretically, Chen2021LTD, Rice2020Overfitting, ...). Pre-activation
blocks: when a block changes the width, BN-act is applied to the input once and
both the 3x3 conv and the 1x1 ``convShortcut`` read the pre-activated input;
otherwise the shortcut is the identity. All 3x3 convs pad 1 symmetrically.
Final BN-act, global average pool (``avg_pool2d(8)`` at 32x32), ``fc``.
RobustBench's optional ``sub_block1`` (built with ``sub_block1=True``) is never
used in ``forward``; it has no counterpart here and the converter drops its
weights (after checking their shapes). Torch keys: ``conv1``,
``blockG.layer.I.{bn1,conv1,bn2,conv2,convShortcut}``, ``bn1``, ``fc``.

``variant='dm'``: DeepMind's ``DMWideResNet`` (Gowal2020Uncovering,
Rebuffi2021Fixing, Wang2023Better, ...). Same block logic, but the first 3x3
conv of each block pads TF-"SAME"-style: (1, 1) at stride 1 and (0, 1)
(bottom/right only) at stride 2; the activation defaults to swish (``silu``
is the same function). Torch keys: ``init_conv``,
``layer.G.block.I.{batchnorm_0,conv_0,batchnorm_1,conv_1,shortcut}``,
``batchnorm``, ``logits``. DeepMind checkpoints also carry the ``mean``/``std``
buffers (the converter turns them into the model's ``mean``/``std``).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from kdrobust.models import register
from kdrobust.models.layers import (Normalize, activation_fn, batch_norm,
                                    classifier_head, compute_dtype, conv,
                                    global_avg_pool, stem_dtype)

VARIANTS = ("standard", "dm")


class WideBlock(nn.Module):
  """Pre-activation wide basic block (both layouts; ``dm`` switches names and padding)."""
  out_planes: int
  stride: int = 1
  activation: str = "relu"
  dm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = activation_fn(self.activation)
    dt = self.dtype
    names = (("batchnorm_0", "conv_0", "batchnorm_1", "conv_1", "shortcut") if self.dm
             else ("bn1", "conv1", "bn2", "conv2", "convShortcut"))
    equal_in_out = x.shape[-1] == self.out_planes
    pre = act(batch_norm(train, dt, names[0])(x))
    if self.dm:
      pad0 = ((1, 1), (1, 1)) if self.stride == 1 else ((0, 1), (0, 1))
      if self.stride not in (1, 2):
        raise ValueError(f"Unsupported stride {self.stride}.")
    else:
      pad0 = ((1, 1), (1, 1))
    out = conv(self.out_planes, 3, self.stride, padding=pad0, dtype=dt,
               name=names[1])(pre)
    out = act(batch_norm(train, dt, names[2])(out))
    out = conv(self.out_planes, 3, 1, dtype=dt, name=names[3])(out)
    if equal_in_out:
      # Identity shortcut (the torch code never pairs it with stride 2).
      if self.stride != 1:
        raise ValueError("Identity shortcut with stride != 1 is not a WRN block.")
      shortcut = x
    else:
      shortcut = conv(self.out_planes, 1, self.stride, padding=0, dtype=dt,
                      name=names[4])(pre)
    return shortcut + out


class WideResNet(nn.Module):
  """WRN-depth-width; ``variant`` 'standard' (RobustBench/TRADES) or 'dm' (DeepMind)."""
  num_classes: int
  depth: int = 28
  width: int = 10
  activation: str | None = None
  variant: str = "standard"
  mean: Sequence[float] | None = None
  std: Sequence[float] | None = None
  dtype: Any = "float32"
  head_slots: int = 0

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.variant not in VARIANTS:
      raise ValueError(f"Unknown variant {self.variant!r}; valid: {VARIANTS}.")
    if (self.depth - 4) % 6:
      raise ValueError(f"WRN depth must be 6n + 4, got {self.depth}.")
    dm = self.variant == "dm"
    act_name = self.activation or ("swish" if dm else "relu")
    dt = compute_dtype(self.dtype)
    n = (self.depth - 4) // 6
    widths = (16 * self.width, 32 * self.width, 64 * self.width)
    st = stem_dtype(dt)  # float32 input and first conv for a bf16 model
    x = Normalize(self.mean, self.std, st)(x)
    x = conv(16, 3, 1, dtype=st, name="init_conv" if dm else "conv1")(x).astype(dt)
    for g, w in enumerate(widths):
      for i in range(n):
        stride = 2 if (g > 0 and i == 0) else 1
        name = f"layer_{g}_block_{i}" if dm else f"block{g + 1}_{i}"
        x = WideBlock(w, stride, act_name, dm, dt, name=name)(x, train)
    x = batch_norm(train, dt, "batchnorm" if dm else "bn1")(x)
    x = activation_fn(act_name)(x)
    feats = global_avg_pool(x)
    self.sow("intermediates", "features", feats)
    return classifier_head(self, feats, self.num_classes, self.head_slots, dt)


@register("wrn")
def wrn(num_classes: int, **kw) -> nn.Module:
  """Generic WRN: kwargs ``depth``, ``width``, ``activation``, ``variant``."""
  return WideResNet(num_classes=num_classes, **kw)


def _make(depth: int, width: int):
  def ctor(num_classes: int, **kw) -> nn.Module:
    return WideResNet(num_classes=num_classes, depth=depth, width=width, **kw)

  ctor.__doc__ = f"WRN-{depth}-{width} (kwargs ``activation``, ``variant``)."
  return ctor


for _d, _w in ((28, 10), (34, 10), (34, 20), (70, 16)):
  register(f"wrn{_d}_{_w}")(_make(_d, _w))

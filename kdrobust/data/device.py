"""uint8 -> float32 on the device, at the top of the jitted steps (imports JAX).

The pipeline ships uint8 images (:mod:`kdrobust.data.pipeline`); each jitted
step converts once, before any attack or forward::

  x = u / 255                                   (levels = 255, every RGB set)
  x = round(u * levels / 255) / levels          (the 8x8 digits, levels = 16)

Both are a gather from a 256-entry float32 table computed on the host by
:func:`kdrobust.data.augment.float_table`, the very values the host's
:func:`kdrobust.data.augment.to_float` gives, so the device values equal the
host's bit for bit on every backend (``tests/data_test.py``). A plain
``u.astype(f32) / 255`` would not: XLA rewrites a division by a constant into
a multiplication by its rounded reciprocal (1 ulp off for some u; measured
on CPU). The gather costs one table lookup per pixel, memory-bound like the
conversion itself. Floating inputs pass through unchanged, so a step fed
float32 batches (tests, notebooks) behaves as before.
"""

from __future__ import annotations

import jax.numpy as jnp
from kdrobust.data import augment as aug_lib


def to_float(image, levels: int = 255):
  """``image`` as float32 in [0, 1] if it is an integer array; floats unchanged."""
  if jnp.issubdtype(image.dtype, jnp.floating):
    return image
  if image.dtype != jnp.uint8:
    raise ValueError(f"Batch images must be uint8 or floating, got {image.dtype}.")
  return jnp.asarray(aug_lib.float_table(levels))[image]


def batch_to_float(batch: dict, levels: int = 255) -> dict:
  """``batch`` with its 'image' converted by :func:`to_float` (other keys as they are)."""
  return dict(batch, image=to_float(batch["image"], levels))

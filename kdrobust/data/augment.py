"""Numpy image augmentations on uint8 NHWC; random parameters are drawn apart.

Drawing the parameters for the whole *global* batch from one generator and
applying them to any slice of it is what makes the pipeline deterministic,
resumable and identical across process counts (see ``pipeline``).
No normalisation here: the model normalises.
"""

from __future__ import annotations

import functools
import math

import numpy as np

INCEPTION_ATTEMPTS = 10


def pad_crop_flip_params(rng: np.random.Generator, n: int, pad: int = 4) -> dict:
  """Offsets in [0, 2*pad] and flip bits for n examples."""
  return {"oy": rng.integers(0, 2 * pad + 1, n),
          "ox": rng.integers(0, 2 * pad + 1, n),
          "flip": rng.random(n) < 0.5}


def pad_crop_flip(images: np.ndarray, params: dict, pad: int = 4) -> np.ndarray:
  """Zero-pad by ``pad``, crop back to HxW at the offsets, flip horizontally."""
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.empty_like(images)
  for i in range(b):
    oy, ox = params["oy"][i], params["ox"][i]
    crop = padded[i, oy:oy + h, ox:ox + w]
    out[i] = crop[:, ::-1] if params["flip"][i] else crop
  return out


def inception_crop_params(rng: np.random.Generator, n: int) -> dict:
  """Uniforms for up to 10 crop attempts (area, log-ratio, top, left) + flips."""
  return {"u": rng.random((n, INCEPTION_ATTEMPTS, 4)),
          "flip": rng.random(n) < 0.5}


def inception_crop_box(height: int, width: int, u: np.ndarray,
                       scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple:
  """(top, left, h, w) of a random-resized crop (torchvision's rule).

  ``u`` is [attempts, 4] uniforms; after the attempts fall back to the
  largest centred crop with the aspect ratio clamped into ``ratio``.
  """
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for a_u, r_u, t_u, l_u in u:
    target = area * (scale[0] + a_u * (scale[1] - scale[0]))
    aspect = math.exp(log_lo + r_u * (log_hi - log_lo))
    cw = int(round(math.sqrt(target * aspect)))
    ch = int(round(math.sqrt(target / aspect)))
    if 0 < cw <= width and 0 < ch <= height:
      top = int(t_u * (height - ch + 1))
      left = int(l_u * (width - cw + 1))
      return top, left, ch, cw
  in_ratio = width / height
  if in_ratio < ratio[0]:
    cw, ch = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    ch, cw = height, int(round(height * ratio[1]))
  else:
    cw, ch = width, height
  return (height - ch) // 2, (width - cw) // 2, ch, cw


def _pil(image: np.ndarray):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _np(pil_image, channels: int) -> np.ndarray:
  x = np.asarray(pil_image)
  return x[..., None] if channels == 1 else x


def inception_crop_flip(image: np.ndarray, u: np.ndarray, flip: bool,
                        size: int = 224) -> np.ndarray:
  """Random-resized crop of one HxWxC uint8 image to size x size, then flip."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  top, left, ch, cw = inception_crop_box(image.shape[0], image.shape[1], u)
  out = _pil(image).resize((size, size), Image.BILINEAR,
                           box=(left, top, left + cw, top + ch))
  out = _np(out, image.shape[-1])
  return out[:, ::-1] if flip else out


def resize_center_crop(image: np.ndarray, resize: int = 256,
                       crop: int = 224) -> np.ndarray:
  """Resize the shorter side to ``resize``, then take the central crop."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  s = resize / min(h, w)
  nh, nw = max(crop, int(round(h * s))), max(crop, int(round(w * s)))
  out = _np(_pil(image).resize((nw, nh), Image.BILINEAR), image.shape[-1])
  top, left = (nh - crop) // 2, (nw - crop) // 2
  return out[top:top + crop, left:left + crop]


@functools.lru_cache(maxsize=None)
def _lut(levels: int) -> np.ndarray:
  u = np.arange(256, dtype=np.float64)
  return (np.minimum(np.round(u * levels / 255), levels) / levels).astype(np.float32)


def float_table(levels: int = 255) -> np.ndarray:
  """float32[256]: ``to_float`` of every uint8 value (the device's conversion table)."""
  return to_float(np.arange(256, dtype=np.uint8), levels)


def to_float(images: np.ndarray, levels: int = 255) -> np.ndarray:
  """uint8 -> float32 in [0, 1]: ``round(u * levels / 255) / levels``.

  With levels=255 this is plain ``u / 255``; digits use 16 so that the
  stored ``round(v * 255 / 16)`` maps back to exactly ``v / 16``.
  """
  if levels == 255:
    return images.astype(np.float32) / np.float32(255)
  return _lut(levels)[images]

"""A deterministic random image dataset with a learnable class signal (no TFDS).

Use it through the normal iterators as ``name='synthetic:<H>x<W>x<C>:<K>'``
(512 train / 128 test examples, data seed 0), e.g. ``synthetic:32x32x3:10``.
Each class has a smooth random template (a 4x4 grid of colours blown up to
HxW); an example is ``0.6 * template + 0.4 * uniform noise``, quantised to
uint8, so a small CNN separates the classes within a few dozen steps.
"""

from __future__ import annotations

import numpy as np

from kdrobust.data import catalog

DATA_SEED = 0


def _templates(rng: np.random.Generator, image_shape, num_classes) -> np.ndarray:
  """[K, H, W, C] float templates in [0, 1], constant on a 4x4 grid of cells."""
  h, w, c = image_shape
  cells = rng.uniform(size=(num_classes, 4, 4, c))
  rows = np.arange(h) * 4 // h
  cols = np.arange(w) * 4 // w
  return cells[:, rows][:, :, cols]


def _split(rng, templates, n) -> dict[str, np.ndarray]:
  """n examples with balanced labels in random order."""
  k = templates.shape[0]
  labels = rng.permutation(np.arange(n) % k).astype(np.int32)
  noise = rng.uniform(size=(n,) + templates.shape[1:])
  x = 0.6 * templates[labels] + 0.4 * noise
  return {"image": np.round(x * 255).astype(np.uint8), "label": labels}


def make(num_train: int, num_test: int, image_shape, num_classes: int,
         seed: int = DATA_SEED) -> dict[str, dict[str, np.ndarray]]:
  """{'train'|'test': {'image': uint8[N,H,W,C], 'label': int32[N]}}.

  Images are uint8 (the same storage as the TFDS datasets); the iterators yield
  them as they are and the jitted steps turn them into float32 in [0, 1] as
  ``u / 255`` (``image_dtype='float32'``: the iterators do, on the host).
  """
  rng = np.random.default_rng(seed)
  templates = _templates(rng, tuple(image_shape), num_classes)
  return {"train": _split(rng, templates, num_train),
          "test": _split(rng, templates, num_test)}


def load(name: str, split: str) -> dict[str, np.ndarray]:
  """The split of ``synthetic:HxWxC:K`` as used by the iterators."""
  s = catalog.synthetic_spec(name)
  data = make(catalog.SYNTHETIC_NUM_TRAIN, catalog.SYNTHETIC_NUM_TEST,
              s.image_shape, s.num_classes, DATA_SEED)
  if split not in data:
    raise ValueError(f"Synthetic data has splits 'train' and 'test', not {split!r}.")
  return data[split]

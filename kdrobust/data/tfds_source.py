"""Reading prepared TFDS datasets without TensorFlow (ArrayRecord data sources).

The only reading module that imports ``tensorflow_datasets``, lazily inside the
functions. ``download=False`` always: reading never touches the network.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os

import numpy as np

from kdrobust.data import catalog

_CHUNK = 512


def _quiet_opencv_notice(record) -> bool:
  """TFDS says at every first decode that OpenCV is absent; PIL is what we use."""
  return "OpenCV is not installed" not in record.getMessage()


logging.getLogger("absl").addFilter(_quiet_opencv_notice)


def open_split(name: str, data_dir: str | None, split: str):
  """A random-access ``tfds.data_source`` over the prepared split.

  Items are dicts of numpy values ('image' uint8 HxWxC, 'label' int, ...).
  Raises DatasetNotFoundError (with the prepare command) if not prepared.
  """
  meta = catalog.read_prepared(name, data_dir)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds.data_source(f"{name}:{meta['version']}", split=split,
                          data_dir=catalog.resolve_data_dir(data_dir),
                          download=False)


def get_items(source, indices) -> list[dict]:
  """``source[i]`` for each index, batched through ``__getitems__`` if it works."""
  indices = [int(i) for i in indices]
  try:
    return list(source.__getitems__(indices))
  except TypeError:  # tfds.testing.mock_data's __getitems__ is broken (4.9.10).
    return [source[i] for i in indices]


def _decode_chunk(source, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
  items = get_items(source, range(lo, hi))
  return (np.stack([np.asarray(x["image"], np.uint8) for x in items]),
          np.asarray([x["label"] for x in items], np.int32))


@functools.lru_cache(maxsize=4)
def _load_arrays(name: str, data_dir: str, split: str, version: str,
                 threads: int) -> dict[str, np.ndarray]:
  del version  # Part of the cache key only: a re-prepared dataset reloads.
  source = open_split(name, data_dir, split)
  n = len(source)
  bounds = [(lo, min(lo + _CHUNK, n)) for lo in range(0, n, _CHUNK)]
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    parts = list(pool.map(lambda b: _decode_chunk(source, *b), bounds))
  if not parts:
    raise ValueError(f"Split {split!r} of {name!r} in {data_dir} is empty.")
  images = np.concatenate([p[0] for p in parts])
  labels = np.concatenate([p[1] for p in parts])
  images.flags.writeable = False
  labels.flags.writeable = False
  return {"image": images, "label": labels}


def load_arrays(name: str, data_dir: str | None, split: str,
                threads: int | None = None) -> dict[str, np.ndarray]:
  """The whole split decoded once: {'image': uint8[N,H,W,C], 'label': int32[N]}.

  Cached per (name, data_dir, split, version) for the process (read-only
  arrays). Used for the small datasets (CIFAR, SVHN, Tiny ImageNet, digits).
  ``threads`` (default: up to 8) decode chunks of 512 examples in parallel.
  """
  d = catalog.resolve_data_dir(data_dir)
  version = catalog.read_prepared(name, d)["version"]
  return _load_arrays(name, d, split, version, threads or min(8, os.cpu_count() or 1))


def clear_cache() -> None:
  """Drops the decoded splits held in memory."""
  _load_arrays.cache_clear()

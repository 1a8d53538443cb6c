"""Deterministic, resumable, multi-host train and eval iterators (numpy out).

Resumability is structural, nothing is checkpointed:

* the example order of epoch ``e`` is a permutation derived from (seed, e);
* the global batch at step ``s`` is the slice ``[k*B, (k+1)*B)`` of that order,
  with ``e, k = divmod(s, num_train // B)`` (each epoch's remainder dropped);
* the augmentation randomness of step ``s`` is drawn for the whole global
  batch from a generator derived from (seed, s);
* process ``p`` of ``P`` takes the contiguous chunk ``[p*b, (p+1)*b)``,
  ``b = B // P``, of the global batch and of its augmentation parameters.

So ``train_iterator(..., start_step=s)`` yields exactly what an uninterrupted
iterator yields from step ``s`` on, and P processes together yield exactly the
single-process global batch. Small datasets are decoded once into uint8 numpy;
ImageNet is decoded per batch in a thread pool (``workers=0``, the default) or
in grain worker processes (``workers=N``, :mod:`kdrobust.data.grain_loader`:
the same batches, bit for bit).

Batches travel as uint8 (``image_dtype='uint8'``, the default): 4x fewer bytes
through the host and the host-to-device copy. The jitted steps convert at
their top with :func:`kdrobust.data.device.to_float` (``u / 255``, or
``round(u * levels / 255) / levels`` for the 8x8 digits), the same float32
values that ``image_dtype='float32'`` gives on the host (bit for bit; host
consumers that need floats, e.g. the whole-test-set evaluation, ask for it).
The pad-4 crop + flip of the small datasets stays on the host (a gather of
uint8 rows, a few percent of the step; docs/benchmarks.md). Normalisation
lives in the model.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import queue
import threading
from typing import Iterator

import numpy as np

from kdrobust.data import augment as aug_lib
from kdrobust.data import catalog
from kdrobust.data import synthetic
from kdrobust.data import tfds_source

_ORDER_TAG = 0
_AUGMENT_TAG = 1
PAD = 4
IMAGE_DTYPES = ("uint8", "float32")


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The example order of ``epoch``: a permutation of range(n) from (seed, epoch)."""
  return np.random.default_rng([seed, _ORDER_TAG, epoch]).permutation(n)


def step_rng(seed: int, step: int) -> np.random.Generator:
  """The generator of the augmentation randomness of global step ``step``."""
  return np.random.default_rng([seed, _AUGMENT_TAG, step])


def local_range(global_batch: int, process_index: int,
                process_count: int) -> tuple[int, int]:
  """[lo, hi) of this process's contiguous chunk of a global batch."""
  if global_batch % process_count:
    raise ValueError(f"Global batch size {global_batch} is not divisible by "
                     f"the process count {process_count}.")
  b = global_batch // process_count
  return process_index * b, (process_index + 1) * b


def resolve_process(process_index: int | None,
                    process_count: int | None) -> tuple[int, int]:
  """Fills in the missing process index / count from JAX."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
  return process_index, process_count


def _load(name: str, data_dir: str | None, split: str, spec: catalog.Spec):
  """In-memory arrays (small datasets, synthetic) or a random-access source."""
  if catalog.is_synthetic(name):
    return synthetic.load(name, split)
  if spec.in_memory:
    return tfds_source.load_arrays(name, data_dir, split)
  return tfds_source.open_split(name, data_dir, split)


def _size(data) -> int:
  return len(data["label"]) if isinstance(data, dict) else len(data)


def _augment_params(spec: catalog.Spec, rng, n: int) -> dict:
  if spec.train_aug == "pad_crop_flip":
    return aug_lib.pad_crop_flip_params(rng, n, PAD)
  if spec.train_aug == "inception_crop_flip":
    return aug_lib.inception_crop_params(rng, n)
  return {}


def _view(spec: catalog.Spec, image: np.ndarray, params: dict | None,
          j: int) -> np.ndarray:
  """One decoded (streamed) example -> its HxWxC uint8 training/eval view."""
  size = spec.image_shape[0]
  if params and spec.train_aug == "inception_crop_flip":
    return aug_lib.inception_crop_flip(image, params["u"][j], params["flip"][j], size)
  if spec.eval_view == "resize_center_crop":
    return aug_lib.resize_center_crop(image, round(size * 256 / 224), size)
  return image


def _gather(data, spec: catalog.Spec, indices: np.ndarray, params: dict | None,
            pool) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images and int32 labels of ``indices``, augmented by ``params``."""
  if isinstance(data, dict):
    images = data["image"][indices]
    if params and spec.train_aug == "pad_crop_flip":
      images = aug_lib.pad_crop_flip(images, params, PAD)
    return images, data["label"][indices].astype(np.int32)

  def one(j_i):
    j, i = j_i
    ex = data[int(i)]
    return _view(spec, np.asarray(ex["image"], np.uint8), params, j), ex["label"]
  out = list((pool.map if pool is not None else map)(one, enumerate(indices)))
  return (np.stack([o[0] for o in out]),
          np.asarray([o[1] for o in out], np.int32))


def check_image_dtype(image_dtype: str) -> None:
  """Refuses an unknown ``image_dtype`` (one line listing the valid values)."""
  if image_dtype not in IMAGE_DTYPES:
    raise ValueError(f"Unknown image_dtype {image_dtype!r}; valid: {', '.join(IMAGE_DTYPES)}.")


def _convert(images: np.ndarray, spec: catalog.Spec, image_dtype: str) -> np.ndarray:
  return images if image_dtype == "uint8" else aug_lib.to_float(images, spec.levels)


def train_batch(data, spec: catalog.Spec, step: int, *, batch_size: int, seed: int,
                augment: bool, lo: int, hi: int, pool=None,
                order_cache: dict | None = None) -> dict:
  """This process's uint8 batch of global step ``step``: a pure function of (seed, step).

  ``order_cache`` (optional, {'epoch', 'order'}) keeps the epoch's permutation
  between calls. Used by the in-process iterator and the grain workers alike.
  """
  n = _size(data)
  e, k = divmod(step, n // batch_size)
  if order_cache is not None and order_cache.get("epoch") == e:
    order = order_cache["order"]
  else:
    order = epoch_order(seed, e, n)
    if order_cache is not None:
      order_cache.update(epoch=e, order=order)
  indices = order[k * batch_size:(k + 1) * batch_size][lo:hi]
  params = None
  if augment:
    params = _augment_params(spec, step_rng(seed, step), batch_size)
    params = {key: v[lo:hi] for key, v in params.items()}
  images, labels = _gather(data, spec, indices, params, pool)
  return {"image": images, "label": labels}


def _make_pool(data, threads: int | None):
  if isinstance(data, dict):
    return None
  return concurrent.futures.ThreadPoolExecutor(threads or os.cpu_count() or 1)


def _train_batches(data, spec: catalog.Spec, *, batch_size: int, seed: int,
                   start_step: int, augment: bool, lo: int, hi: int,
                   threads: int | None, image_dtype: str = "uint8") -> Iterator[dict]:
  pool = _make_pool(data, threads)
  cache: dict = {}
  try:
    step = start_step
    while True:
      b = train_batch(data, spec, step, batch_size=batch_size, seed=seed, augment=augment,
                      lo=lo, hi=hi, pool=pool, order_cache=cache)
      yield {"image": _convert(b["image"], spec, image_dtype), "label": b["label"]}
      step += 1
  finally:
    if pool is not None:
      pool.shutdown(wait=False, cancel_futures=True)


def _eval_batches(data, spec: catalog.Spec, *, n: int, batch_size: int, lo: int,
                  hi: int, threads: int | None, image_dtype: str = "uint8") -> Iterator[dict]:
  pool = _make_pool(data, threads)
  shape = (data["image"].shape[1:] if isinstance(data, dict) else spec.image_shape)
  try:
    for k in range(math.ceil(n / batch_size)):
      positions = np.arange(k * batch_size + lo, k * batch_size + hi)
      mask = positions < n
      image = np.zeros((hi - lo,) + tuple(shape), np.dtype(image_dtype))
      label = np.zeros((hi - lo,), np.int32)
      if mask.any():
        images, labels = _gather(data, spec, positions[mask], None, pool)
        image[mask] = _convert(images, spec, image_dtype)
        label[mask] = labels
      yield {"image": image, "label": label, "mask": mask}
  finally:
    if pool is not None:
      pool.shutdown(wait=False, cancel_futures=True)


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
  """Puts unless ``stop`` is set first; returns whether it was put."""
  while not stop.is_set():
    try:
      q.put(item, timeout=0.05)
      return True
    except queue.Full:
      pass
  return False


def prefetch(it: Iterator, size: int = 2) -> Iterator:
  """Runs ``it`` in a daemon thread, ``size`` items ahead; re-raises its errors."""
  if size <= 0:
    yield from it
    return
  q, stop = queue.Queue(maxsize=size), threading.Event()

  def work():
    try:
      for x in it:
        if not _put(q, (True, x), stop):
          return
      _put(q, (False, None), stop)
    except BaseException as e:  # pylint: disable=broad-except
      _put(q, (False, e), stop)

  threading.Thread(target=work, daemon=True, name="kdrobust-prefetch").start()
  try:
    while True:
      ok, x = q.get()
      if not ok:
        if x is not None:
          raise x
        return
      yield x
  finally:
    stop.set()


def train_iterator(name: str, *, data_dir: str | None, batch_size: int,
                   seed: int, start_step: int = 0, augment: bool = True,
                   process_index: int | None = None,
                   process_count: int | None = None, prefetch_size: int = 2,
                   threads: int | None = None, image_dtype: str = "uint8",
                   workers: int = 0) -> Iterator[dict]:
  """Infinite training batches of this process: {'image', 'label'}.

  Args:
    name: dataset name (see ``available()``), e.g. 'cifar10' or
      'synthetic:32x32x3:10'.
    data_dir: TFDS data dir (None: $TFDS_DATA_DIR or ~/tensorflow_datasets).
    batch_size: the GLOBAL batch size; this process yields
      ``batch_size // process_count`` examples per step.
    seed: order and augmentation seed (non-negative int).
    start_step: the first global step to yield (resume).
    augment: pad-4 crop + flip (32x32, 64x64), random-resized crop + flip
      (ImageNet), nothing for 8x8 digits. With False, ImageNet gets the eval
      view (resize 256, centre crop 224) and the others the raw images.
    process_index / process_count: default to JAX's.
    prefetch_size: batches prepared ahead in a background thread (0: none).
    threads: decoding threads for ImageNet (default: all cores).
    image_dtype: 'uint8' (default; the steps convert on the device,
      :func:`kdrobust.data.device.to_float`) or 'float32' (in [0, 1], on the host).
    workers: 0 (default): decode in this process (a thread pool for streamed
      sources). N > 0: N grain worker processes, each building whole batches
      (:mod:`kdrobust.data.grain_loader`; the same batches; for the streamed
      ImageNet path, where decoding is the bottleneck).

  Yields:
    {'image': uint8[b, H, W, C] (or float32 in [0, 1]), 'label': int32[b]}.

  Raises (at call time): ValueError for an unknown name, a bad batch size or
    image_dtype, DatasetNotFoundError if the dataset is not prepared.
  """
  check_image_dtype(image_dtype)
  if workers < 0:
    raise ValueError(f"workers must be >= 0, got {workers}.")
  spec = catalog.spec(name)
  p, pc = resolve_process(process_index, process_count)
  lo, hi = local_range(batch_size, p, pc)
  data = _load(name, data_dir, spec.train_split, spec)
  if _size(data) < batch_size:
    raise ValueError(f"{name!r} has {_size(data)} training examples, fewer "
                     f"than the global batch size {batch_size}.")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  if workers:
    from kdrobust.data import grain_loader  # pylint: disable=g-import-not-at-top
    it = grain_loader.train_batches(name, data_dir, batch_size=batch_size, seed=seed,
                                    start_step=start_step, augment=augment, lo=lo, hi=hi,
                                    workers=workers, threads=threads,
                                    prefetch=max(prefetch_size, 1))
    if image_dtype == "uint8":
      return it
    return ({"image": _convert(b["image"], spec, image_dtype), "label": b["label"]}
            for b in it)
  it = _train_batches(data, spec, batch_size=batch_size, seed=seed,
                      start_step=start_step, augment=augment, lo=lo, hi=hi,
                      threads=threads, image_dtype=image_dtype)
  return prefetch(it, prefetch_size)


def eval_iterator(name: str, *, data_dir: str | None, batch_size: int,
                  split: str | None = None, num_examples: int | None = None,
                  process_index: int | None = None,
                  process_count: int | None = None, prefetch_size: int = 2,
                  threads: int | None = None, image_dtype: str = "uint8") -> Iterator[dict]:
  """Finite eval batches of this process: {'image', 'label', 'mask'}.

  The first ``num_examples`` examples of ``split`` (default: the test split)
  in dataset order; global batch ``k`` covers positions ``[k*B, (k+1)*B)`` and
  process ``p`` takes its contiguous chunk. Positions past the end are
  zero-padded with ``mask=False``, so every example counts exactly once and
  every process yields ``ceil(n / B)`` batches. ImageNet is resized (shorter
  side 256) and centre-cropped to 224. Images are uint8 unless
  ``image_dtype='float32'`` (see :func:`train_iterator`).
  """
  check_image_dtype(image_dtype)
  spec = catalog.spec(name)
  p, pc = resolve_process(process_index, process_count)
  lo, hi = local_range(batch_size, p, pc)
  data = _load(name, data_dir, split or spec.test_split, spec)
  n = _size(data) if num_examples is None else min(num_examples, _size(data))
  it = _eval_batches(data, spec, n=n, batch_size=batch_size, lo=lo, hi=hi,
                     threads=threads, image_dtype=image_dtype)
  return prefetch(it, prefetch_size)


def steps_per_epoch(name: str, data_dir: str | None, batch_size: int) -> int:
  """num_train // batch_size (the global batch size)."""
  return catalog.info(name, data_dir).num_train // batch_size


def image_levels(name: str) -> int:
  """The ``levels`` of ``name``'s uint8 -> float conversion (255; 16 for the digits)."""
  return catalog.spec(name).levels

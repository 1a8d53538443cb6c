"""Training batches built in grain worker processes (``train_iterator(workers=N)``).

The ImageNet path decodes a JPEG, random-resized-crops and flips it per example;
one Python process tops out at what its GIL lets a thread pool do. Here the
unit of work is a whole global step: ``grain.MapDataset.range(start_step, ...)``
mapped by :class:`StepBatch` (``step -> this process's uint8 batch``, the very
:func:`kdrobust.data.pipeline.train_batch` of the in-process path) and
``mp_prefetch`` over ``workers`` processes, which hand the steps out
round-robin and yield them back in order. So what made the in-process path
correct holds unchanged:

* determinism: a batch is a pure function of (seed, step);
* resumability: the dataset starts at ``start_step``;
* multi-host slicing: each process builds its own ``[lo, hi)`` chunk.

Each worker opens the ``tfds.data_source`` itself (nothing but the dataset's
name crosses the process boundary) and decodes its batch with ``threads``
threads (default 1: one core per worker). This is grain's ``DataLoader``
design (worker processes over ``tfds.data_source``) with a per-step record
instead of grain's per-example sampler, which could not reproduce the
(seed, step) augmentation draws of the global batch. Measured against the
thread pool in ``benchmarks/data_pipeline.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import concurrent.futures
from typing import Iterator

# Far beyond any run; grain's MapDataset needs a finite length.
_HORIZON = 1 << 40


class StepBatch:
  """Picklable ``step -> {'image': uint8, 'label': int32}`` of one process's chunk."""

  def __init__(self, name: str, data_dir: str | None, *, batch_size: int, seed: int,
               augment: bool, lo: int, hi: int, threads: int = 1, source=None):
    self.name, self.data_dir, self.source = name, data_dir, source
    self.kw = dict(batch_size=batch_size, seed=seed, augment=augment, lo=lo, hi=hi)
    self.threads = threads
    self._opened = None

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_opened"] = None  # each worker opens the source itself
    return state

  def _open(self):
    if self._opened is None:
      from kdrobust.data import catalog  # pylint: disable=g-import-not-at-top
      from kdrobust.data import pipeline  # pylint: disable=g-import-not-at-top
      spec = catalog.spec(self.name)
      if self.source is not None:
        data = self.source()
      else:
        load = pipeline._load  # pylint: disable=protected-access
        data = load(self.name, self.data_dir, spec.train_split, spec)
      pool = None
      if not isinstance(data, dict) and self.threads > 1:
        pool = concurrent.futures.ThreadPoolExecutor(self.threads)
      self._opened = (spec, data, pool, {})
    return self._opened

  def __call__(self, step) -> dict:
    from kdrobust.data import pipeline  # pylint: disable=g-import-not-at-top
    spec, data, pool, cache = self._open()
    return pipeline.train_batch(data, spec, int(step), pool=pool, order_cache=cache,
                                **self.kw)


def train_batches(name: str, data_dir: str | None, *, batch_size: int, seed: int,
                  start_step: int, augment: bool, lo: int, hi: int, workers: int,
                  threads: int | None = None, prefetch: int = 2,
                  source=None) -> Iterator[dict]:
  """This process's batches from ``start_step`` on, built by ``workers`` processes.

  ``prefetch``: batches each worker keeps ready. ``threads``: decoding threads
  inside each worker (default 1). ``source``: a picklable zero-argument
  callable returning the random-access training source to use instead of the
  prepared split of ``name`` (the benchmark's generated JPEGs; ``name`` still
  picks the augmentation).
  """
  import grain  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # grain reads its absl flags; outside an absl app,
    flags.FLAGS.mark_as_parsed()   # take their defaults
  fn = StepBatch(name, data_dir, batch_size=batch_size, seed=seed, augment=augment,
                 lo=lo, hi=hi, threads=threads or 1, source=source)
  ds = grain.MapDataset.range(start_step, start_step + _HORIZON).map(fn)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
  ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                   per_worker_buffer_size=prefetch))
  return iter(ds)

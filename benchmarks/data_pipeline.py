"""Throughput of kdrobust.data's train iterator: CIFAR shape, and the ImageNet path.

  python benchmarks/data_pipeline.py [--source cifar-10-python(-subset).tar.gz]
      [--batch_size 128] [--steps 300] [--repeats 3] [--json out.json]
      [--section all|cifar|imagenet] [--smoke]

ImageNet path (``--section imagenet``; issue 13 item 4): ``--num_jpegs``
ImageNet-shaped JPEGs (500x375, quality 90, smooth colour fields plus grain,
about ImageNet's 110 kB mean file size) generated into one ArrayRecord file
and read per example as ``tfds.data_source`` does (record read, PIL decode),
then random-resized crop + flip to 224x224 (``pipeline``'s own
``train_batch``). It measures images/s, and images/s per core, for:
  * the limits: JPEG decode alone, and decode + crop + flip, one core;
  * before: the in-process thread pool (``train_iterator(workers=0)``),
    1 and 2 threads;
  * after: grain worker processes (``train_iterator(workers=N)``,
    :mod:`kdrobust.data.grain_loader`), 1 and 2 workers.
``--smoke`` runs both sections with tiny sizes (tests/benchmarks_smoke_test.py).

Prepares the CIFAR-10 python archive (default: the shared real subset) into a
temporary data_dir, then measures, best of ``--repeats``:
  * preparation (archive -> ArrayRecord) and the one-time decode of the split;
  * train_iterator examples/s: augmentation on/off, prefetch thread on/off;
  * the same with a consumer that spends ``--consumer_ms`` per step outside the
    GIL (a stand-in for a jitted train step), to show the prefetch overlap;
  * eval_iterator examples/s; and a 64x64 synthetic set for the crop cost.
Falls back to ``synthetic:32x32x3:10`` if the archive is missing.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import sys
import tempfile
import time

import numpy as np

import kdrobust.data as kd
from kdrobust.data import augment as aug_lib
from kdrobust.data import catalog
from kdrobust.data import pipeline
from kdrobust.data import prepare
from kdrobust.data import tfds_source

DEFAULT_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "data", "cifar-10-python-subset.tar.gz")  # docs/data.md
SOLO = dict(process_index=0, process_count=1)


def train_rate(name, data_dir, batch_size, steps, *, augment=True,
               prefetch_size=2, consumer_ms=0.0) -> float:
  """Examples/s over ``steps`` batches after 5 warm-up batches."""
  it = kd.train_iterator(name, data_dir=data_dir, batch_size=batch_size, seed=0,
                         augment=augment, prefetch_size=prefetch_size, **SOLO)
  for _ in range(5):
    next(it)
  t = time.perf_counter()
  for _ in range(steps):
    next(it)
    if consumer_ms:
      time.sleep(consumer_ms / 1e3)
  dt = time.perf_counter() - t
  it.close()
  return steps * batch_size / dt


def eval_rate(name, data_dir, batch_size) -> float:
  """Examples/s of one pass over the test split."""
  t = time.perf_counter()
  n = sum(int(b["mask"].sum()) for b in kd.eval_iterator(
      name, data_dir=data_dir, batch_size=batch_size, **SOLO))
  return n / (time.perf_counter() - t)


def best(fn, repeats):
  return max(fn() for _ in range(repeats))


# ----------------------------------------------------------------------------
# The ImageNet path on generated JPEGs.
# ----------------------------------------------------------------------------
def natural_jpeg(rng: np.random.Generator, width: int = 500, height: int = 375,
                 quality: int = 90) -> bytes:
  """A JPEG of a smooth random colour field with sensor-like grain."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  low = rng.integers(0, 256, (int(rng.integers(3, 10)), int(rng.integers(4, 13)), 3))
  field = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((width, height),
                                                                  Image.BICUBIC), np.float32)
  img = np.clip(field + rng.normal(0, 18, field.shape), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def write_jpeg_records(path: str, n: int, seed: int = 0) -> float:
  """``n`` records ``label (2 bytes) + JPEG`` in one ArrayRecord file; mean JPEG kB."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  w = array_record_module.ArrayRecordWriter(path, "group_size:1")
  total = 0
  for i in range(n):
    jpeg = natural_jpeg(rng)
    total += len(jpeg)
    w.write(int(i % 1000).to_bytes(2, "little") + jpeg)
  w.close()
  return total / n / 1e3


class JpegRecords:
  """Random access to the generated records, decoded as ``tfds.data_source`` items.

  Picklable (only the path travels): each grain worker opens its own reader.
  """

  def __init__(self, path: str):
    self.path, self._src = path, None

  def __getstate__(self):
    return {"path": self.path, "_src": None}

  def __call__(self):  # the ``source=`` factory of grain_loader
    return self

  def _open(self):
    if self._src is None:
      ards = importlib.import_module("array_record.python.array_record_data_source")
      self._src = ards.ArrayRecordDataSource([self.path])
    return self._src

  def __len__(self):
    return len(self._open())

  def __getitem__(self, i):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    rec = self._open()[int(i)]
    img = np.asarray(Image.open(io.BytesIO(rec[2:])).convert("RGB"))
    return {"image": img, "label": int.from_bytes(rec[:2], "little")}


def _cpu_seconds() -> float:
  """CPU seconds (user + system) of this process and its live children (grain workers)."""
  try:
    import psutil  # pylint: disable=g-import-not-at-top
  except ImportError:
    return float("nan")
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for c in me.children(recursive=True):
    try:
      total += sum(c.cpu_times()[:2])
    except psutil.Error:
      pass
  return total


def _rate(it, batch_size, steps, warmup=2):
  """(images/s wall-clock, images per CPU-second of this process and its workers)."""
  for _ in range(warmup):
    next(it)
  t, c = time.perf_counter(), _cpu_seconds()
  for _ in range(steps):
    b = next(it)
    assert b["image"].dtype == np.uint8
  n = steps * batch_size
  return n / (time.perf_counter() - t), n / max(_cpu_seconds() - c, 1e-9)


def imagenet_section(a, out_dir: str) -> dict:
  """images/s of the ImageNet path: limits, thread pool (before), grain workers (after)."""
  from kdrobust.data import grain_loader  # pylint: disable=g-import-not-at-top
  path = os.path.join(out_dir, "jpegs.array_record")
  res = {"num_jpegs": a.num_jpegs, "jpeg_kB": write_jpeg_records(path, a.num_jpegs),
         "cpu_count": os.cpu_count(), "batch_size": a.inet_batch, "steps": a.inet_steps}
  src = JpegRecords(path)
  spec = catalog.spec("imagenet2012")
  n = min(len(src), 4 * a.inet_batch)
  rng = np.random.default_rng(0)
  t, c = time.perf_counter(), time.process_time()
  for i in range(n):
    src[i]
  res["limit_decode_per_core"] = n / (time.perf_counter() - t)
  res["limit_decode_per_cpu_s"] = n / (time.process_time() - c)
  params = aug_lib.inception_crop_params(rng, n)
  t, c = time.perf_counter(), time.process_time()
  for i in range(n):
    aug_lib.inception_crop_flip(src[i]["image"], params["u"][i], params["flip"][i], 224)
  res["limit_decode_crop_flip_per_core"] = n / (time.perf_counter() - t)
  res["limit_decode_crop_flip_per_cpu_s"] = n / (time.process_time() - c)
  kw = dict(batch_size=a.inet_batch, seed=0, augment=True, lo=0, hi=a.inet_batch)

  def before(threads):
    batches = pipeline._train_batches  # pylint: disable=protected-access
    it = pipeline.prefetch(batches(src, spec, start_step=0, threads=threads, **kw), 2)
    try:
      return _rate(it, a.inet_batch, a.inet_steps)
    finally:
      it.close()

  def after(workers):
    it = grain_loader.train_batches("imagenet2012", None, start_step=0, workers=workers,
                                    threads=1, prefetch=2, source=src, **kw)
    return _rate(it, a.inet_batch, a.inet_steps, warmup=workers + 1)

  # Interleaved (before, after, before, after, ...) so that the machine's load
  # drifts over both alike; best of --repeats.
  runs = {}
  for _ in range(a.repeats):
    for count in a.counts:
      for label, fn in (("before_threads", before), ("after_workers", after)):
        runs.setdefault(f"{label}{count}", []).append((count, fn(count)))
  for key, rs in runs.items():
    count = rs[0][0]
    res[key] = max(r[1][0] for r in rs)
    res[key + "_per_core"] = res[key] / count
    res[key + "_per_cpu_s"] = max(r[1][1] for r in rs)
  return res


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--source", default=DEFAULT_SOURCE)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--consumer_ms", type=float, default=5.0)
  p.add_argument("--json", default=None)
  p.add_argument("--section", default="all", choices=("all", "cifar", "imagenet"))
  p.add_argument("--num_jpegs", type=int, default=512)
  p.add_argument("--inet_batch", type=int, default=32)
  p.add_argument("--inet_steps", type=int, default=12)
  p.add_argument("--counts", default="1,2", help="thread / worker counts to measure")
  p.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
  a = p.parse_args(argv)
  a.counts = [int(c) for c in a.counts.split(",")]
  if a.smoke:
    a.source, a.steps, a.repeats, a.batch_size = "", 3, 1, 16
    a.num_jpegs, a.inet_batch, a.inet_steps, a.counts = 8, 4, 2, [1]
  res = {}
  if a.section in ("all", "imagenet"):
    with tempfile.TemporaryDirectory() as d:
      res["imagenet"] = imagenet_section(a, d)
  if a.section in ("all", "cifar"):
    res["cifar"] = cifar_section(a)
  for sec, r in res.items():
    print(f"== {sec}")
    for k, v in r.items():
      print(f"{k:>34}: {v:,.1f}" if isinstance(v, float) else f"{k:>34}: {v}")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(res, f, indent=1)
  return res


def cifar_section(a) -> dict:
  """The CIFAR-shape measurements (module docstring)."""
  res = {"batch_size": a.batch_size, "steps": a.steps}
  with tempfile.TemporaryDirectory() as data_dir:
    if a.source and os.path.exists(a.source):
      name = "cifar10"
      t = time.perf_counter()
      prepare.main(["cifar10", "--source", a.source, "--data_dir", data_dir])
      res["prepare_s"] = time.perf_counter() - t
      i = kd.info(name, data_dir)
      res["num_train"], res["num_test"] = i.num_train, i.num_test
      t = time.perf_counter()
      tfds_source.load_arrays(name, data_dir, "train")
      res["decode_train_s"] = time.perf_counter() - t
      res["decode_examples_per_s"] = i.num_train / res["decode_train_s"]
    else:
      print(f"{a.source} not found: falling back to synthetic data.", file=sys.stderr)
      name = "synthetic:32x32x3:10"
    res["dataset"] = name
    run = lambda **kw: best(lambda: train_rate(name, data_dir, a.batch_size,
                                               a.steps, **kw), a.repeats)
    res["train_aug_prefetch"] = run()
    res["train_aug_no_prefetch"] = run(prefetch_size=0)
    res["train_noaug_prefetch"] = run(augment=False)
    step_only = a.batch_size / (a.consumer_ms / 1e3)
    res["consumer_ms"] = a.consumer_ms
    res["consumer_bound"] = step_only
    res["with_consumer_prefetch"] = run(consumer_ms=a.consumer_ms)
    res["with_consumer_no_prefetch"] = run(consumer_ms=a.consumer_ms, prefetch_size=0)
    res["eval"] = best(lambda: eval_rate(name, data_dir, a.batch_size), a.repeats)
    res["synthetic_64x64_train_aug"] = best(lambda: train_rate(
        "synthetic:64x64x3:200", None, a.batch_size, max(a.steps // 3, 1)), a.repeats)
  return res


if __name__ == "__main__":
  main()

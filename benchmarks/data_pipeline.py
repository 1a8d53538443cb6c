"""Throughput of kdrobust.data's train iterator (CIFAR shape, batch 128, augmented).

  python benchmarks/data_pipeline.py [--source cifar-10-python(-subset).tar.gz]
      [--batch_size 128] [--steps 300] [--repeats 3] [--json out.json]

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
import json
import os
import sys
import tempfile
import time

import kdrobust.data as kd
from kdrobust.data import prepare
from kdrobust.data import tfds_source

DEFAULT_SOURCE = "/work/shared/data/cifar10-subset/cifar-10-python-subset.tar.gz"
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


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--source", default=DEFAULT_SOURCE)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--consumer_ms", type=float, default=5.0)
  p.add_argument("--json", default=None)
  a = p.parse_args(argv)
  res = {"batch_size": a.batch_size, "steps": a.steps}
  with tempfile.TemporaryDirectory() as data_dir:
    if os.path.exists(a.source):
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
        "synthetic:64x64x3:200", None, a.batch_size, a.steps // 3), a.repeats)
  for k, v in res.items():
    print(f"{k:>28}: {v:,.1f}" if isinstance(v, float) else f"{k:>28}: {v}")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(res, f, indent=1)
  return res


if __name__ == "__main__":
  main()

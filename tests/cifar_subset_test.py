"""``python -m kdrobust.data.cifar_subset`` on a tiny fake CIFAR-10 python archive.

The fake archive has the official layout and the official pickles' form (Python 2
pickles with bytes keys and a ``filenames`` list), 12 random images per batch file.
Checks: the first ``per_batch`` images and labels of every batch, in order; the
layout kdrobust's CIFAR reader reads; the same bytes on a rebuild; one-line errors
before anything is written. Runtime: about 3 s.
"""

import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from kdrobust.data import builders
from kdrobust.data import cifar_subset

N = 12  # images per fake batch file


def _fake_archive(path, *, drop=()):
  """A CIFAR-10-python-shaped .tar.gz; returns {batch: (data, labels)}."""
  rng = np.random.default_rng(0)
  batches = {}
  with tarfile.open(path, "w:gz") as tar:
    def add(name, blob):
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
    meta = {b"num_cases_per_batch": N, b"label_names": [b"c%d" % i for i in range(10)],
            b"num_vis": 3072}
    add("batches.meta", pickle.dumps(meta, protocol=2))
    for b in cifar_subset.BATCHES:
      data = rng.integers(0, 256, (N, 3072), dtype=np.uint8)
      labels = rng.integers(0, 10, N).tolist()
      batches[b] = (data, labels)
      if b in drop:
        continue
      add(b, pickle.dumps({b"batch_label": b"training batch", b"labels": labels,
                           b"data": data, b"filenames": [b"x.png"] * N}, protocol=2))
  return batches


def test_keeps_the_first_images_of_every_batch_in_order(tmp_path):
  src, out = str(tmp_path / "full.tar.gz"), str(tmp_path / "sub.tar.gz")
  full = _fake_archive(src)
  r = cifar_subset.build(src, out, per_batch=5)
  assert (r["num_train"], r["num_test"]) == (25, 5)
  got, meta = cifar_subset.read_batches(out)
  for b in cifar_subset.BATCHES:
    np.testing.assert_array_equal(got[b][0], full[b][0][:5])  # exact (uint8)
    assert got[b][1] == full[b][1][:5]
  assert pickle.loads(meta, encoding="bytes")[b"num_cases_per_batch"] == N  # copied as is
  with tarfile.open(out) as tar:
    names = sorted(tar.getnames())
    d = pickle.loads(tar.extractfile("cifar-10-batches-py/test_batch").read())
  assert names == sorted(["cifar-10-batches-py"] + [
      f"cifar-10-batches-py/{n}" for n in cifar_subset.BATCHES + ("batches.meta",)])
  assert set(d) == {"batch_label", "labels", "data"} and d["batch_label"] == "test_batch"
  want = {b: (full[b][0][:5], full[b][1][:5]) for b in cifar_subset.BATCHES}
  assert r["content_digest"] == cifar_subset.content_digest(want)
  assert r["class_counts"]["test_batch"] == np.bincount(full["test_batch"][1][:5],
                                                        minlength=10).tolist()
  # kdrobust's CIFAR-10 reader (what `prepare cifar10 --source` uses) reads it.
  ex = builders.read_cifar(out, 10)
  assert ex["train"]["image"].shape == (25, 32, 32, 3) and ex["names"][0] == "c0"
  np.testing.assert_array_equal(ex["test"]["label"], full["test_batch"][1][:5])
  np.testing.assert_array_equal(ex["train"]["image"][0, 0, 0],
                                full["data_batch_1"][0][0, [0, 1024, 2048]])  # RGB of pixel 0


def test_rebuild_gives_the_same_bytes(tmp_path):
  src = str(tmp_path / "full.tar.gz")
  _fake_archive(src)
  a = cifar_subset.build(src, str(tmp_path / "a.tar.gz"), per_batch=N)
  b = cifar_subset.build(src, str(tmp_path / "b.tar.gz"), per_batch=N)
  assert a["sha256"] == b["sha256"]
  with open(a["path"], "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == a["sha256"]
  # The whole batch kept: the same images as the source, in a subset archive.
  c = cifar_subset.build(a["path"], str(tmp_path / "c.tar.gz"), per_batch=N)
  assert c["content_digest"] == a["content_digest"] and c["sha256"] == a["sha256"]


def test_bad_input_is_one_line_before_writing(tmp_path, capsys):
  src, out = str(tmp_path / "full.tar.gz"), str(tmp_path / "sub.tar.gz")
  _fake_archive(src)
  bad = str(tmp_path / "no_test.tar.gz")
  _fake_archive(bad, drop=("test_batch",))
  for argv, msg in (
      (["--source", str(tmp_path / "nope.tar.gz")], "does not exist"),
      (["--source", bad], "lacks cifar-10-batches-py/{test_batch}"),
      (["--source", src, "--per_batch", str(N + 1)], f"--per_batch must be in [1, {N}]"),
      (["--source", src, "--per_batch", "0"], "--per_batch must be in"),
      (["--source", src, "--out", str(tmp_path / "no" / "x.tar.gz")], "does not exist"),
  ):
    assert cifar_subset.main(argv + (["--out", out] if "--out" not in argv else [])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err
    assert not os.path.exists(out)
  assert cifar_subset.main(["--source", src, "--out", out, "--per_batch", "3"]) == 0
  assert "15 training and 3 test images" in capsys.readouterr().out
  assert cifar_subset.main(["--source", src, "--out", out]) == 2
  assert "--overwrite" in capsys.readouterr().err

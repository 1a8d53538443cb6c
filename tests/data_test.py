"""Tests of kdrobust.data: preparation, batch contract, determinism, resume,
multi-process slicing and eval padding. Tiny data only (CPU, a few seconds)."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
import time
import zipfile

import numpy as np
import pytest

import kdrobust.data as kd
from kdrobust.data import augment
from kdrobust.data import catalog
from kdrobust.data import pipeline
from kdrobust.data import prepare
from kdrobust.data import synthetic

SYN = "synthetic:16x16x3:4"
SOLO = dict(process_index=0, process_count=1)


def take(it, n):
  """The next n batches of an iterator, then close it."""
  out = [next(it) for _ in range(n)]
  it.close()
  return out


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


# --- Fake source files -------------------------------------------------------


def _cifar_rows(rng, n):
  return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def write_fake_cifar10(path, rng, per_batch=20, num_batches=2, num_test=20):
  """A cifar-10-python.tar.gz look-alike: {'data', 'labels'} pickles."""
  files = {}
  for i in range(num_batches):
    files[f"data_batch_{i + 1}"] = {b"data": _cifar_rows(rng, per_batch),
                                    b"labels": rng.integers(0, 10, per_batch).tolist()}
  files["test_batch"] = {b"data": _cifar_rows(rng, num_test),
                         b"labels": rng.integers(0, 10, num_test).tolist()}
  files["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
  with tarfile.open(path, "w:gz") as tar:
    for name, d in files.items():
      data = pickle.dumps(d, protocol=2)
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return files


def write_fake_cifar100(folder, rng, n_train=12, n_test=6):
  os.makedirs(folder)
  for split, n in (("train", n_train), ("test", n_test)):
    d = {b"data": _cifar_rows(rng, n),
         b"fine_labels": rng.integers(0, 100, n).tolist(),
         b"coarse_labels": rng.integers(0, 20, n).tolist()}
    with open(os.path.join(folder, split), "wb") as f:
      pickle.dump(d, f, protocol=2)


def _jpeg(array):
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="JPEG")
  return buf.getvalue()


def write_fake_tiny_imagenet(path, rng):
  """tiny-imagenet-200.zip look-alike: 200 wnids, 2 classes with images."""
  wnids = [f"n{i:08d}" for i in range(200)]
  with zipfile.ZipFile(path, "w") as z:
    root = "tiny-imagenet-200/"
    z.writestr(root + "wnids.txt", "\n".join(wnids) + "\n")
    for w in wnids[3:5]:
      for k in range(2):
        img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        z.writestr(f"{root}train/{w}/images/{w}_{k}.JPEG", _jpeg(img))
      z.writestr(f"{root}train/{w}/{w}_boxes.txt", "")
    gray = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    z.writestr(root + "val/images/val_0.JPEG", _jpeg(gray))
    z.writestr(root + "val/images/val_1.JPEG",
               _jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    z.writestr(root + "val/val_annotations.txt",
               f"val_0.JPEG\t{wnids[4]}\t0\t0\t63\t63\n"
               f"val_1.JPEG\t{wnids[3]}\t0\t0\t63\t63\n")
    z.writestr(root + "test/images/test_0.JPEG", _jpeg(gray))


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
  """A tiny fake CIFAR-10 prepared through the CLI: 40 train, 20 test."""
  root = tmp_path_factory.mktemp("cifar")
  archive = root / "cifar-10-python.tar.gz"
  files = write_fake_cifar10(archive, np.random.default_rng(0))
  data_dir = str(root / "tfds")
  assert prepare.main(["cifar10", "--source", str(archive),
                       "--data_dir", data_dir]) == 0
  return data_dir, files


# --- Catalog -----------------------------------------------------------------


def test_import_is_cheap():
  code = ("import sys, kdrobust.data; print(sorted(m for m in "
          "('tensorflow_datasets', 'tensorflow', 'jax') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True).stdout
  assert out.strip() == "[]"


def test_unknown_name_lists_valid_names():
  for fn in (lambda: kd.info("cifar11", None),
             lambda: kd.train_iterator("cifar11", data_dir=None, batch_size=8,
                                       seed=0, **SOLO)):
    with pytest.raises(ValueError) as e:
      fn()
    for name in ("cifar10", "cifar100", "svhn_cropped", "imagenet2012",
                 "tiny_imagenet", "digits", "synthetic"):
      assert name in str(e.value)
  assert set(kd.available()) >= {"cifar10", "cifar100", "svhn_cropped",
                                 "imagenet2012", "tiny_imagenet", "digits"}


@pytest.mark.parametrize("call", ["info", "train", "eval", "steps"])
def test_missing_dataset_fails_fast_with_command(tmp_path, call):
  d = str(tmp_path / "empty")
  fns = {
      "info": lambda: kd.info("cifar10", d),
      "train": lambda: kd.train_iterator("cifar10", data_dir=d, batch_size=8,
                                         seed=0, **SOLO),
      "eval": lambda: kd.eval_iterator("cifar10", data_dir=d, batch_size=8, **SOLO),
      "steps": lambda: kd.steps_per_epoch("cifar10", d, 8),
  }
  t = time.perf_counter()
  with pytest.raises(kd.DatasetNotFoundError) as e:
    fns[call]()
  assert time.perf_counter() - t < 1.0
  assert isinstance(e.value, FileNotFoundError)
  assert (f"python -m kdrobust.data.prepare cifar10 --source "
          f"/path/to/cifar-10-python.tar.gz --data_dir {d}") in str(e.value)


def test_prepare_cli_errors(tmp_path, capsys):
  # Bad input: one line on stderr, exit status 2 (kdrobust.cli).
  assert prepare.main(["cifar11", "--data_dir", str(tmp_path)]) == 2
  assert "cifar10" in capsys.readouterr().err
  assert prepare.main(["cifar10", "--data_dir", str(tmp_path)]) == 2
  assert "--source" in capsys.readouterr().err
  assert prepare.main(["tiny_imagenet", "--download", "--data_dir", str(tmp_path)]) == 2
  assert "tiny-imagenet-200.zip" in capsys.readouterr().err


@pytest.mark.skipif("tensorflow" in sys.modules or
                    __import__("importlib").util.find_spec("tensorflow") is not None,
                    reason="TensorFlow installed")
def test_download_without_tensorflow_says_so(tmp_path, capsys):
  assert prepare.main(["cifar10", "--download", "--data_dir", str(tmp_path)]) == 2
  assert "TensorFlow" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "cifar10")


# --- Offline preparation -----------------------------------------------------


def test_cifar10_prepared_from_python_archive(cifar_dir):
  data_dir, files = cifar_dir
  i = kd.info("cifar10", data_dir)
  assert i == kd.DatasetInfo("cifar10", 10, (32, 32, 3), 40, 20, "train", "test")
  assert kd.steps_per_epoch("cifar10", data_dir, 16) == 2
  import tensorflow_datasets as tfds
  ds = tfds.data_source("cifar10", split="test", data_dir=data_dir, download=False)
  assert len(ds) == 20
  test = files["test_batch"]
  want = {bytes(r): int(l) for r, l in zip(test[b"data"], test[b"labels"])}
  for k in range(len(ds)):
    ex = ds[k]
    row = ex["image"].transpose(2, 0, 1).reshape(-1)  # back to CHW rows
    assert want[bytes(row)] == ex["label"]
  assert ds.dataset_info.features["label"].names[:2] == ["c0", "c1"]


def test_prepare_twice_is_a_no_op(cifar_dir, capsys):
  data_dir, _ = cifar_dir
  assert prepare.main(["cifar10", "--source", "/nonexistent", "--data_dir", data_dir]) == 0
  assert "already prepared" in capsys.readouterr().out


def test_tfrecord_dataset_is_rejected_with_command(tmp_path):
  os.makedirs(tmp_path / "cifar10" / "3.0.2")
  (tmp_path / "cifar10" / "3.0.2" / "dataset_info.json").write_text(
      '{"name": "cifar10", "splits": [{"name": "train", "shardLengths": ["5"]}]}')
  with pytest.raises(kd.DatasetNotFoundError, match="ArrayRecord") as e:
    kd.info("cifar10", str(tmp_path))
  assert "python -m kdrobust.data.prepare cifar10" in str(e.value)


def test_cifar100_prepared_from_folder(tmp_path):
  write_fake_cifar100(str(tmp_path / "cifar-100-python"), np.random.default_rng(1))
  d = str(tmp_path / "tfds")
  prepare.main(["cifar100", "--source", str(tmp_path), "--data_dir", d])
  assert kd.info("cifar100", d).num_classes == 100
  assert (kd.info("cifar100", d).num_train, kd.info("cifar100", d).num_test) == (12, 6)
  b = next(iter(kd.eval_iterator("cifar100", data_dir=d, batch_size=8, **SOLO)))
  assert b["image"].shape == (8, 32, 32, 3) and b["mask"].sum() == 6


def test_digits_builds_exactly(tmp_path):
  d = str(tmp_path)
  prepare.main(["digits", "--data_dir", d])
  i = kd.info("digits", d)
  assert (i.num_classes, i.image_shape, i.num_train, i.num_test) == (
      10, (8, 8, 1), 1437, 360)
  batches = list(kd.eval_iterator("digits", data_dir=d, batch_size=400,
                                  image_dtype="float32", **SOLO))
  (b,) = batches
  x = b["image"][b["mask"]]
  assert x.shape == (360, 8, 8, 1) and x.dtype == np.float32
  # Exactly v / 16 for the sklearn values: the multiset of test images matches.
  from kdrobust.data import builders
  v, y = builders.digits_split()["test"]
  want = sorted((bytes((v[k] / 16).astype(np.float32)), int(y[k])) for k in range(360))
  got = sorted((bytes(x[k, ..., 0]), int(b["label"][k])) for k in range(360))
  assert got == want
  assert np.bincount(b["label"][b["mask"]], minlength=10).min() >= 35  # stratified
  # No augmentation for 8x8: augmented training images are dataset images.
  t = next(kd.train_iterator("digits", data_dir=d, batch_size=32, seed=0,
                             image_dtype="float32", **SOLO))
  assert t["image"].shape == (32, 8, 8, 1)
  assert set(map(bytes, t["image"][..., 0])) <= {k[0] for k in want} | set(
      bytes((vv / 16).astype(np.float32)) for vv in builders.digits_split()["train"][0])


def test_tiny_imagenet_from_zip(tmp_path):
  write_fake_tiny_imagenet(tmp_path / "tiny-imagenet-200.zip", np.random.default_rng(2))
  d = str(tmp_path / "tfds")
  prepare.main(["tiny_imagenet", "--source", str(tmp_path / "tiny-imagenet-200.zip"),
                "--data_dir", d])
  i = kd.info("tiny_imagenet", d)
  assert (i.num_classes, i.image_shape, i.num_train, i.num_test, i.test_split) == (
      200, (64, 64, 3), 4, 2, "validation")
  (b,) = list(kd.eval_iterator("tiny_imagenet", data_dir=d, batch_size=2, **SOLO))
  assert b["image"].shape == (2, 64, 64, 3) and sorted(b["label"]) == [3, 4]
  t = next(kd.train_iterator("tiny_imagenet", data_dir=d, batch_size=4, seed=0, **SOLO))
  assert sorted(t["label"]) == [3, 3, 4, 4]


def test_svhn_from_mat_files(tmp_path):
  import scipy.io
  rng = np.random.default_rng(3)
  for split, n in (("train", 6), ("test", 3)):
    scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {
        "X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
        "y": np.array([[10], [1], [2], [10], [5], [9]][:n], np.uint8)})
  d = str(tmp_path / "tfds")
  prepare.main(["svhn_cropped", "--source", str(tmp_path), "--data_dir", d])
  assert (kd.info("svhn_cropped", d).num_train, kd.info("svhn_cropped", d).num_test) == (6, 3)
  (b,) = list(kd.eval_iterator("svhn_cropped", data_dir=d, batch_size=4, **SOLO))
  assert sorted(b["label"][b["mask"]]) == [0, 1, 2]


# --- Batch contract, determinism, resume, processes ----------------------------


def check_train_batch(b, n, shape):
  assert set(b) == {"image", "label"}
  assert b["image"].shape == (n,) + shape and b["image"].dtype == np.uint8
  assert b["label"].shape == (n,) and b["label"].dtype == np.int32


def test_train_contract_on_prepared_cifar(cifar_dir):
  data_dir, _ = cifar_dir
  for b in take(kd.train_iterator("cifar10", data_dir=data_dir, batch_size=16,
                                  seed=0, **SOLO), 5):  # 2.5 epochs
    check_train_batch(b, 16, (32, 32, 3))
  # Without augmentation the first epoch holds 32 distinct training images.
  seen = take(kd.train_iterator("cifar10", data_dir=data_dir, batch_size=16, seed=0,
                                augment=False, **SOLO), 2)
  rows = {bytes(x) for b in seen for x in b["image"]}
  assert len(rows) == 32


def test_synthetic_contract_and_signal():
  i = kd.info(SYN, None)
  assert (i.num_classes, i.image_shape, i.num_train, i.num_test) == (4, (16, 16, 3), 512, 128)
  assert kd.steps_per_epoch(SYN, None, 64) == 8
  b = next(kd.train_iterator(SYN, data_dir=None, batch_size=32, seed=1, **SOLO))
  check_train_batch(b, 32, (16, 16, 3))
  # Learnable: nearest class mean (fit on train) classifies the test split.
  data = synthetic.make(512, 128, (16, 16, 3), 4, 0)
  tr, te = data["train"], data["test"]
  means = np.stack([tr["image"][tr["label"] == k].mean(0) for k in range(4)])
  d = ((te["image"][:, None].astype(np.float32) - means[None]) ** 2).sum((2, 3, 4))
  assert (d.argmin(1) == te["label"]).mean() > 0.9
  np.testing.assert_array_equal(synthetic.make(8, 4, (8, 8, 1), 3, 5)["train"]["image"],
                                synthetic.make(8, 4, (8, 8, 1), 3, 5)["train"]["image"])


def test_deterministic_per_seed():
  run = lambda seed: take(kd.train_iterator(SYN, data_dir=None, batch_size=32,
                                            seed=seed, **SOLO), 3)
  assert_batches_equal(run(7), run(7))
  a, b = run(7), run(8)
  assert not np.array_equal(a[0]["image"], b[0]["image"])


@pytest.mark.parametrize("start", [3, 8, 13])
def test_resume_equals_uninterrupted(start):
  # 512 examples, global batch 64: 8 steps per epoch; cross epoch boundaries.
  kw = dict(data_dir=None, batch_size=64, seed=3, **SOLO)
  full = take(kd.train_iterator(SYN, **kw), start + 4)
  resumed = take(kd.train_iterator(SYN, start_step=start, **kw), 4)
  assert resumed[0]["image"].dtype == np.uint8  # the stream that travels to the device
  assert_batches_equal(full[start:], resumed)


def test_resume_on_prepared_cifar(cifar_dir):
  data_dir, _ = cifar_dir
  kw = dict(data_dir=data_dir, batch_size=16, seed=5, **SOLO)
  full = take(kd.train_iterator("cifar10", **kw), 6)
  assert_batches_equal(full[3:], take(kd.train_iterator("cifar10", start_step=3, **kw), 3))


def test_epochs_are_reshuffled_and_complete():
  kw = dict(data_dir=None, batch_size=64, seed=0, augment=False, **SOLO)
  batches = take(kd.train_iterator(SYN, **kw), 16)
  epoch = [np.concatenate([b["image"] for b in batches[e * 8:(e + 1) * 8]])
           for e in range(2)]
  key = lambda x: sorted(bytes(r) for r in x)
  assert key(epoch[0]) == key(epoch[1])  # both epochs see every example once
  assert not np.array_equal(epoch[0], epoch[1])  # in a different order
  assert len(set(key(epoch[0]))) == 512


@pytest.mark.parametrize("augment_on", [True, False])
def test_two_processes_form_the_global_batch(augment_on):
  kw = dict(data_dir=None, batch_size=32, seed=4, start_step=6, augment=augment_on)
  glob = take(kd.train_iterator(SYN, process_index=0, process_count=1, **kw), 3)
  p0 = take(kd.train_iterator(SYN, process_index=0, process_count=2, **kw), 3)
  p1 = take(kd.train_iterator(SYN, process_index=1, process_count=2, **kw), 3)
  for g, a, b in zip(glob, p0, p1):
    assert a["image"].shape[0] == b["image"].shape[0] == 16
    for k in g:
      np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), g[k])
    if not augment_on:
      assert not {bytes(x) for x in a["image"]} & {bytes(x) for x in b["image"]}
  with pytest.raises(ValueError, match="divisible"):
    kd.train_iterator(SYN, data_dir=None, batch_size=30, seed=0, process_index=0,
                      process_count=4)


def test_process_defaults_come_from_jax():
  assert pipeline.resolve_process(None, None) == (0, 1)
  b = next(kd.train_iterator(SYN, data_dir=None, batch_size=8, seed=0))
  assert b["image"].shape == (8, 16, 16, 3)
  with pytest.raises(ValueError):
    pipeline.resolve_process(2, 2)


# --- Eval padding --------------------------------------------------------------


@pytest.mark.parametrize("num_examples,batch", [(None, 48), (100, 32), (64, 32), (5, 8)])
def test_eval_counts_every_example_once(num_examples, batch):
  n = 128 if num_examples is None else num_examples
  test = synthetic.load(SYN, "test")
  batches = list(kd.eval_iterator(SYN, data_dir=None, batch_size=batch,
                                  num_examples=num_examples, **SOLO))
  assert len(batches) == -(-n // batch)
  image = np.concatenate([b["image"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  label = np.concatenate([b["label"] for b in batches])
  assert mask.dtype == bool and mask.sum() == n and mask[:n].all()
  assert image.dtype == np.uint8
  np.testing.assert_array_equal(image[:n], test["image"][:n])
  np.testing.assert_array_equal(label[:n], test["label"][:n])
  assert not image[n:].any() and not label[n:].any()


def test_eval_multi_process_same_batch_count_and_union():
  kw = dict(data_dir=None, batch_size=32, num_examples=70)
  per = [list(kd.eval_iterator(SYN, process_index=p, process_count=4, **kw))
         for p in range(4)]
  assert {len(x) for x in per} == {3}
  glob = list(kd.eval_iterator(SYN, process_index=0, process_count=1, **kw))
  for k, g in enumerate(glob):
    for key in g:
      np.testing.assert_array_equal(np.concatenate([per[p][k][key] for p in range(4)]),
                                    g[key])
  assert sum(b["mask"].sum() for x in per for b in x) == 70


def test_eval_on_prepared_cifar(cifar_dir):
  data_dir, _ = cifar_dir
  batches = list(kd.eval_iterator("cifar10", data_dir=data_dir, batch_size=16, **SOLO))
  assert [b["mask"].sum() for b in batches] == [16, 4]
  assert all(b["image"].shape == (16, 32, 32, 3) for b in batches)


# --- tfds.testing.mock_data ----------------------------------------------------


@pytest.fixture
def mock_tfds(monkeypatch):
  """tfds.testing.mock_data plus a stub of the on-disk metadata lookup."""
  import tensorflow_datasets as tfds

  def run(name, num_examples, splits):
    monkeypatch.setattr(catalog, "read_prepared", lambda n, d: {
        "version": catalog.SPECS[name].version, "path": "/mock",
        "splits": {s: num_examples for s in splits}})
    return tfds.testing.mock_data(num_examples=num_examples)
  return run


def test_mock_cifar10_pipeline(mock_tfds, tmp_path):
  d = str(tmp_path)
  with mock_tfds("cifar10", 24, ("train", "test")):
    assert kd.info("cifar10", d).num_train == 24
    batches = take(kd.train_iterator("cifar10", data_dir=d, batch_size=8, seed=0,
                                     **SOLO), 4)
    for b in batches:
      check_train_batch(b, 8, (32, 32, 3))
    again = take(kd.train_iterator("cifar10", data_dir=d, batch_size=8, seed=0,
                                   start_step=2, **SOLO), 2)
    assert_batches_equal(batches[2:], again)
    ev = list(kd.eval_iterator("cifar10", data_dir=d, batch_size=10, **SOLO))
    assert [b["mask"].sum() for b in ev] == [10, 10, 4]


def test_mock_imagenet_streaming(mock_tfds, tmp_path):
  d = str(tmp_path)
  with mock_tfds("imagenet2012", 6, ("train", "validation")):
    (a,) = take(kd.train_iterator("imagenet2012", data_dir=d, batch_size=4, seed=0,
                                  process_index=1, process_count=2, threads=2), 1)
    check_train_batch(a, 2, (224, 224, 3))
    (g,) = take(kd.train_iterator("imagenet2012", data_dir=d, batch_size=4, seed=0,
                                  threads=2, **SOLO), 1)
    np.testing.assert_array_equal(g["image"][2:], a["image"])
    ev = list(kd.eval_iterator("imagenet2012", data_dir=d, batch_size=4, **SOLO))
    assert [b["mask"].sum() for b in ev] == [4, 2]
    assert ev[0]["image"].shape == (4, 224, 224, 3) and not ev[1]["image"][2:].any()


# --- Augmentations -------------------------------------------------------------


def test_pad_crop_flip():
  x = np.random.default_rng(0).integers(1, 256, (3, 8, 8, 2), dtype=np.uint8)
  p = {"oy": np.array([4, 0, 8]), "ox": np.array([4, 4, 4]),
       "flip": np.array([False, True, False])}
  y = augment.pad_crop_flip(x, p, pad=4)
  np.testing.assert_array_equal(y[0], x[0])
  np.testing.assert_array_equal(y[1, 4:], x[1, :4, ::-1])
  assert not y[1, :4].any()
  np.testing.assert_array_equal(y[2, :4], x[2, 4:])


def test_inception_crop_box_in_bounds():
  rng = np.random.default_rng(0)
  for h, w in [(17, 47), (224, 224), (5, 300), (375, 500)]:
    for _ in range(50):
      top, left, ch, cw = augment.inception_crop_box(h, w, rng.random((10, 4)))
      assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
      assert ch > 0 and cw > 0
  y = augment.resize_center_crop(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
  assert y.shape == (224, 224, 3)


# --- uint8 batches, the device conversion, grain workers (issues 11 and 13) -----


def test_uint8_default_float32_option_and_device_conversion_agree_bitwise():
  """uint8 batches; image_dtype='float32' is their host conversion; the device's equals it.

  Tolerance: 0 (bitwise, compared as uint32 views), for levels 255 and the
  digits' 16. A device ``u / 255`` (XLA: ``u * (1/255)``) would fail here.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from kdrobust.data import device  # pylint: disable=g-import-not-at-top
  kw = dict(data_dir=None, batch_size=32, seed=2, start_step=5, **SOLO)
  u8 = take(kd.train_iterator(SYN, **kw), 2)
  f32 = take(kd.train_iterator(SYN, image_dtype="float32", **kw), 2)
  for a, b in zip(u8, f32):
    assert a["image"].dtype == np.uint8 and b["image"].dtype == np.float32
    np.testing.assert_array_equal(augment.to_float(a["image"]), b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  ev = next(kd.eval_iterator(SYN, data_dir=None, batch_size=48, image_dtype="float32",
                             **SOLO))
  assert ev["image"].dtype == np.float32 and 0.0 <= ev["image"].min() <= ev["image"].max() <= 1
  every = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
  for levels in (255, 16):
    got = np.asarray(jax.jit(lambda x, lv=levels: device.to_float(x, lv))(every))
    want = augment.to_float(every, levels)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
  x = np.full((2, 2), 0.5, np.float32)
  assert device.to_float(x) is x  # floats pass through
  with pytest.raises(ValueError, match="uint8 or floating"):
    device.to_float(np.zeros((2,), np.int32))


def test_bad_image_dtype_or_workers_is_refused_before_loading():
  with pytest.raises(ValueError, match="valid: uint8, float32"):
    kd.train_iterator(SYN, data_dir=None, batch_size=8, seed=0, image_dtype="float16", **SOLO)
  with pytest.raises(ValueError, match="valid: uint8, float32"):
    kd.eval_iterator(SYN, data_dir=None, batch_size=8, image_dtype="f32", **SOLO)
  with pytest.raises(ValueError, match="workers must be >= 0"):
    kd.train_iterator(SYN, data_dir=None, batch_size=8, seed=0, workers=-1, **SOLO)


def test_grain_workers_equal_the_in_process_stream_resume_and_slices():
  """workers=N (grain processes) yields the in-process batches: from step 0, resumed, sliced.

  Tolerance: 0 (uint8 equality). Global batch 32 over 512 examples (16 steps
  per epoch); steps 14-17 cross an epoch boundary.
  """
  kw = dict(data_dir=None, batch_size=32, seed=6)
  want = take(kd.train_iterator(SYN, **SOLO, **kw), 18)
  got = kd.train_iterator(SYN, workers=2, start_step=14, **SOLO, **kw)
  assert_batches_equal(want[14:18], [next(got) for _ in range(4)])  # resumed, 2 workers
  del got
  # Process 1 of 2 (one worker) takes the second half of each global batch.
  part = kd.train_iterator(SYN, workers=1, start_step=3, process_index=1, process_count=2, **kw)
  for s in range(3, 5):
    b = next(part)
    for k in ("image", "label"):
      np.testing.assert_array_equal(b[k], want[s][k][16:])

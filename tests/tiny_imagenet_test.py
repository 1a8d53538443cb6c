"""Tiny ImageNet builder: class order, class names, lossless grayscale, teacher check.

A fake ``tiny-imagenet-200.zip`` (200 wnids listed in a shuffled, non-sorted
order; images for 3 classes; one grayscale JPEG in train and one in
validation) is prepared offline, as ``tiny_imagenet`` (labels = sorted wnids,
torchvision ``ImageFolder``'s order) and ``tiny_imagenet_wnids`` (labels =
``wnids.txt`` line order). Pixel checks are exact (tolerance 0): every stored
image must decode to ``PIL.Image.open(jpeg).convert('RGB')``, which is what
torchvision's ``pil_loader`` gives.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import zipfile

import ml_collections as mlc
import numpy as np
import pytest
from PIL import Image

import kdrobust.data as kd
from kdrobust import config_lib
from kdrobust import teachers as teachers_lib
from kdrobust import train
from kdrobust.data import catalog
from kdrobust.data import prepare

ROOT = "tiny-imagenet-200/"


def _jpeg(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="JPEG")  # PIL's default quality 75
  return buf.getvalue()


def _smooth(rng, shape) -> np.ndarray:
  """A smooth random image (JPEG-friendly, so a q75 re-encode is off by a few levels)."""
  base = rng.integers(0, 256, (8, 8) + shape[2:], dtype=np.uint8)
  img = np.kron(base, np.ones((8, 8) + (1,) * (len(shape) - 2), np.uint8))
  return np.clip(img.astype(int) + rng.integers(-20, 21, shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
  """The fake zip and {member: (wnid, jpeg bytes)} of its labelled images."""
  rng = np.random.default_rng(0)
  wnids = [f"n{int(v):08d}" for v in rng.choice(10**8, 200, replace=False)]
  assert wnids != sorted(wnids)
  # The classes with images: their sorted index differs from their line index.
  chosen = [w for w in wnids if wnids.index(w) != sorted(wnids).index(w)][:3]
  files = {}
  for w in chosen:
    for k in range(2):
      files[f"train/{w}/images/{w}_{k}.JPEG"] = (w, _jpeg(_smooth(rng, (64, 64, 3))))
  files[f"train/{chosen[0]}/images/{chosen[0]}_9.JPEG"] = (
      chosen[0], _jpeg(_smooth(rng, (64, 64))))  # grayscale (mode L)
  ann = []
  for i, w in enumerate(chosen):
    img = _smooth(rng, (64, 64)) if i == 1 else _smooth(rng, (64, 64, 3))
    files[f"val/images/val_{i}.JPEG"] = (w, _jpeg(img))
    ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63\n")
  path = tmp_path_factory.mktemp("tiny") / "tiny-imagenet-200.zip"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(ROOT + "wnids.txt", "\n".join(wnids) + "\n")
    for name, (_, data) in files.items():
      z.writestr(ROOT + name, data)
    z.writestr(ROOT + "val/val_annotations.txt", "".join(ann))
    z.writestr(ROOT + "test/images/test_0.JPEG", _jpeg(_smooth(rng, (64, 64))))
  return {"zip": str(path), "wnids": wnids, "files": files,
          "data_dir": str(path.parent / "tfds")}


@pytest.fixture(scope="module")
def prepared(fake):
  for name in ("tiny_imagenet", "tiny_imagenet_wnids"):
    assert prepare.main([name, "--source", fake["zip"], "--data_dir", fake["data_dir"]]) == 0
  return fake


def _examples(name, data_dir, split):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  src = tfds.data_source(f"{name}:2.0.0", split=split, data_dir=data_dir, download=False)
  out = {}
  for i in range(len(src)):
    ex = src[i]
    key = ex["id"].decode() if isinstance(ex["id"], bytes) else str(ex["id"])
    out[key] = (np.asarray(ex["image"]), int(ex["label"]))
  return out


@pytest.mark.parametrize("name,order", [("tiny_imagenet", "sorted"),
                                        ("tiny_imagenet_wnids", "wnids")])
def test_labels_follow_class_order_and_names_are_stored(prepared, name, order):
  wnids = prepared["wnids"]
  names = sorted(wnids) if order == "sorted" else wnids
  info = kd.info(name, prepared["data_dir"])
  assert info.class_names == tuple(names)
  assert (info.num_classes, info.num_train, info.num_test) == (200, 7, 3)
  seen = 0
  for split, prefix in (("train", "train/"), ("validation", "val/")):
    got = _examples(name, prepared["data_dir"], split)
    for member, (wnid, _) in prepared["files"].items():
      if member.startswith(prefix):
        assert got[member.rsplit("/", 1)[-1]][1] == names.index(wnid), member
        seen += 1
  assert seen == 10
  # The pipeline yields the same labels (sorted order differs from line order here).
  (b,) = list(kd.eval_iterator(name, data_dir=prepared["data_dir"], batch_size=4,
                               process_index=0, process_count=1))
  want = sorted(names.index(w) for m, (w, _) in prepared["files"].items()
                if m.startswith("val/"))
  assert sorted(b["label"][b["mask"]].tolist()) == want


def test_pixels_equal_pil_convert_rgb_exactly(prepared):
  """Grayscale JPEGs stored losslessly; RGB JPEGs byte for byte (tolerance: 0 levels)."""
  got = {}
  for split in ("train", "validation"):
    got.update(_examples("tiny_imagenet", prepared["data_dir"], split))
  gray = 0
  for member, (_, data) in prepared["files"].items():
    src = Image.open(io.BytesIO(data))
    gray += src.mode == "L"
    want = np.asarray(src.convert("RGB"))
    img = got[member.rsplit("/", 1)[-1]][0]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, want, err_msg=member)
  assert gray == 2
  # The old way (convert, then JPEG q75) is measurably off on these images.
  gray_member = next(m for m, (_, d) in prepared["files"].items()
                     if Image.open(io.BytesIO(d)).mode == "L")
  rgb = Image.open(io.BytesIO(prepared["files"][gray_member][1])).convert("RGB")
  old = np.asarray(Image.open(io.BytesIO(_jpeg(np.asarray(rgb)))))
  assert np.abs(old.astype(int) - np.asarray(rgb, int)).max() > 0


def _run_teacher(path, class_names, dataset="tiny_imagenet"):
  """A kdrobust run directory as far as the pre-compute checks read it (model.json)."""
  os.makedirs(path, exist_ok=True)
  meta = {"model": {"name": "small_cnn"}, "num_classes": 200, "image_shape": [64, 64, 3],
          "dataset": dataset}
  if class_names is not None:
    meta["class_names"] = list(class_names)
  with open(os.path.join(path, "model.json"), "w") as f:
    json.dump(meta, f)
  return str(path)


def _config(data_dir, teacher_path, dataset="tiny_imagenet"):
  c = config_lib.base_config()
  c.data.name, c.data.data_dir = dataset, data_dir
  c.method = config_lib.method_config("kd")
  c.teachers = mlc.ConfigDict({"t": config_lib.teacher_config(teacher_path)})
  return c


def test_teacher_with_other_class_order_is_refused(prepared, tmp_path):
  wnids, d = prepared["wnids"], prepared["data_dir"]
  line_order = _run_teacher(tmp_path / "wnids_order", wnids)
  with pytest.raises(teachers_lib.TeacherError) as e:
    train.validate(_config(d, line_order))
  msg = str(e.value)
  k = next(i for i, (a, b) in enumerate(zip(wnids, sorted(wnids))) if a != b)
  assert f"label {k} is {wnids[k]!r} for the teacher" in msg, msg
  assert f"but {sorted(wnids)[k]!r} for the dataset" in msg, msg
  assert "tiny_imagenet_wnids" in msg and "same classes, other order" in msg
  # The same teacher fits the wnids.txt-order dataset; a sorted one fits tiny_imagenet.
  train.validate(_config(d, line_order, "tiny_imagenet_wnids"))
  train.validate(_config(d, _run_teacher(tmp_path / "sorted", sorted(wnids))))
  with pytest.raises(teachers_lib.TeacherError, match="for the teacher"):
    train.validate(_config(d, _run_teacher(tmp_path / "s2", sorted(wnids)),
                           "tiny_imagenet_wnids"))


def test_converted_and_torch_teachers_declare_class_names(prepared, tmp_path):
  wnids, d = prepared["wnids"], prepared["data_dir"]
  info = kd.info("tiny_imagenet", d)
  conv = tmp_path / "converted"
  conv.mkdir()
  (conv / "teacher.json").write_text(json.dumps({"num_classes": 200, "class_names": wnids}))
  with pytest.raises(teachers_lib.TeacherError, match="another class order"):
    teachers_lib.check_compatible("t", config_lib.teacher_config(str(conv)), info)
  pt = tmp_path / "t.pt"
  pt.write_bytes(b"")
  names_file = tmp_path / "classes.txt"
  names_file.write_text("\n".join(wnids) + "\n")
  tc = config_lib.teacher_config(str(pt), model="small_cnn", num_classes=200)
  teachers_lib.check_compatible("t", tc, info)  # records nothing: accepted
  tc.class_names = str(names_file)
  with pytest.raises(teachers_lib.TeacherError, match="another class order"):
    teachers_lib.check_compatible("t", tc, info)
  names_file.write_text("\n".join(sorted(wnids)) + "\n")  # the dataset's (sorted) order
  teachers_lib.check_compatible("t", tc, info)


def test_teacher_without_class_names_still_works(prepared, tmp_path, caplog):
  d = prepared["data_dir"]
  with caplog.at_level(logging.WARNING):
    train.validate(_config(d, _run_teacher(tmp_path / "old", None)))
  assert "tiny_imagenet_wnids" in caplog.text  # pre-2.0.0 runs: warned, not refused
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    train.validate(_config(d, _run_teacher(tmp_path / "other", None, "synthetic")))
  assert "class names" not in caplog.text


def test_stale_version_refused_and_rebuilt_next_to_it(prepared, tmp_path):
  d = str(tmp_path / "tfds")
  shutil.copytree(os.path.join(prepared["data_dir"], "tiny_imagenet", "2.0.0"),
                  os.path.join(d, "tiny_imagenet", "1.0.0"))
  with pytest.raises(catalog.DatasetNotFoundError, match="older kdrobust builder"):
    kd.info("tiny_imagenet", d)
  prepare.main(["tiny_imagenet", "--source", prepared["zip"], "--data_dir", d])
  assert catalog.read_prepared("tiny_imagenet", d)["version"] == "2.0.0"
  assert kd.info("tiny_imagenet", d).class_names == tuple(sorted(prepared["wnids"]))


def test_wnids_txt_must_list_200_distinct_wnids():
  from kdrobust.data import builders  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="200 distinct"):
    builders.tiny_class_names(["n1", "n1"] + [f"n{i}" for i in range(2, 200)], "sorted")
  with pytest.raises(ValueError, match="sorted, wnids"):
    builders.tiny_class_names([f"n{i}" for i in range(200)], "alphabetical")


def test_run_records_class_names_and_is_refused_as_teacher_of_other_order(prepared, tmp_path):
  """A 2-step run on tiny_imagenet_wnids writes its class order to model.json."""
  d, wnids = prepared["data_dir"], prepared["wnids"]
  c = config_lib.base_config()
  c.data.name, c.data.data_dir = "tiny_imagenet_wnids", d
  c.data.batch_size = c.data.eval_batch_size = 4
  c.model.name, c.model.kwargs = "tiny_cnn", {"widths": (4, 4)}
  c.total_steps, c.teacher_eval_examples, c.num_devices = 2, 0, 1
  c.eval.num_examples, c.eval.attacks, c.eval.every_epochs = 4, {}, 0
  run = str(tmp_path / "run")
  train.train_and_evaluate(c, run)
  with open(os.path.join(run, "model.json")) as f:
    assert json.load(f)["class_names"] == wnids
  train.validate(_config(d, run, "tiny_imagenet_wnids"))
  with pytest.raises(teachers_lib.TeacherError, match="another class order"):
    train.validate(_config(d, run))

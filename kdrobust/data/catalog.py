"""What datasets exist, where they live on disk, and how to prepare them.

Pure Python (no TFDS import): ``info`` answers from the prepared dataset's
``dataset_info.json`` so a missing dataset fails in microseconds with the
exact ``python -m kdrobust.data.prepare ...`` command to run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

SYNTHETIC_PREFIX = "synthetic"
SYNTHETIC_EXAMPLE = "synthetic:32x32x3:10"
SYNTHETIC_NUM_TRAIN = 512
SYNTHETIC_NUM_TEST = 128


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is known but not prepared (as ArrayRecord) in ``data_dir``."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a training loop needs to know about a prepared dataset."""
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int
  train_split: str
  test_split: str
  # The label names in label order (the prepared ClassLabel's names), or None
  # where the dataset records none. Metadata: left out of == and repr.
  class_names: tuple[str, ...] | None = dataclasses.field(
      default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class Spec:
  """Static facts about one dataset name.

  Attributes:
    name: TFDS name.
    num_classes: number of labels.
    image_shape: (H, W, C) of the batches the iterators yield.
    train_split / test_split: TFDS split names.
    version: the version our offline builder writes (the catalog's where the
      catalog has the dataset).
    in_memory: decode the whole split once into uint8 numpy (small datasets);
      otherwise decode per batch (ImageNet).
    train_aug: 'pad_crop_flip' | 'inception_crop_flip' | 'none'.
    eval_view: 'identity' | 'resize_center_crop'.
    levels: stored uint8 value u maps to round(u * levels / 255) / levels
      (255: plain u / 255; 16 for digits, stored as round(v * 255 / 16)).
    source_hint: what ``--source`` takes, or None if no source is needed.
    needs_tf: preparing goes through the TFDS catalog builder (TensorFlow).
    min_version: older prepared versions are refused (their labels or
      pixels differ), with the reason ``stale_reason``.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  train_split: str
  test_split: str
  version: str
  in_memory: bool
  train_aug: str
  eval_view: str = "identity"
  levels: int = 255
  source_hint: str | None = None
  needs_tf: bool = False
  min_version: str | None = None
  stale_reason: str = ""


_TINY_STALE = ("labels in wnids.txt order, no class names, grayscale images "
               "re-encoded as lossy JPEG")

SPECS: dict[str, Spec] = {
    s.name: s for s in [
        Spec("cifar10", 10, (32, 32, 3), "train", "test", "3.0.2", True,
             "pad_crop_flip",
             source_hint="/path/to/cifar-10-python.tar.gz"),
        Spec("cifar100", 100, (32, 32, 3), "train", "test", "3.0.2", True,
             "pad_crop_flip",
             source_hint="/path/to/cifar-100-python.tar.gz"),
        Spec("svhn_cropped", 10, (32, 32, 3), "train", "test", "3.1.0", True,
             "pad_crop_flip",
             source_hint="/path/to/folder_with_train_32x32.mat_and_test_32x32.mat"),
        Spec("imagenet2012", 1000, (224, 224, 3), "train", "validation",
             "5.1.0", False, "inception_crop_flip", "resize_center_crop",
             source_hint="/path/to/folder_with_ILSVRC2012_img_train.tar_and_val.tar",
             needs_tf=True),
        # Labels = sorted wnids (torchvision ImageFolder's order).
        Spec("tiny_imagenet", 200, (64, 64, 3), "train", "validation",
             "2.0.0", True, "pad_crop_flip",
             source_hint="/path/to/tiny-imagenet-200.zip",
             min_version="2.0.0", stale_reason=_TINY_STALE),
        # The same images, labels in wnids.txt line order.
        Spec("tiny_imagenet_wnids", 200, (64, 64, 3), "train", "validation",
             "2.0.0", True, "pad_crop_flip",
             source_hint="/path/to/tiny-imagenet-200.zip"),
        Spec("digits", 10, (8, 8, 1), "train", "test", "1.0.0", True, "none",
             levels=16),
    ]
}

_SYNTHETIC_RE = re.compile(r"^synthetic:(\d+)x(\d+)x(\d+):(\d+)$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


def available() -> list[str]:
  """Dataset names: the TFDS ones, then an example synthetic name.

  Any ``synthetic:<H>x<W>x<C>:<classes>`` name works, not only the example.
  """
  return list(SPECS) + [SYNTHETIC_EXAMPLE]


def is_synthetic(name: str) -> bool:
  """Whether ``name`` selects the in-process synthetic dataset."""
  return name == SYNTHETIC_PREFIX or name.startswith(SYNTHETIC_PREFIX + ":")


def synthetic_spec(name: str) -> Spec:
  """Parses ``synthetic:HxWxC:K`` into a Spec (bare ``synthetic`` = example)."""
  if name == SYNTHETIC_PREFIX:
    name = SYNTHETIC_EXAMPLE
  m = _SYNTHETIC_RE.match(name)
  if not m:
    raise ValueError(
        f"Bad synthetic dataset name {name!r}: expected "
        f"'synthetic:<H>x<W>x<C>:<classes>', e.g. {SYNTHETIC_EXAMPLE!r}.")
  h, w, c, k = (int(g) for g in m.groups())
  aug = "pad_crop_flip" if min(h, w) >= 16 else "none"
  return Spec(name, k, (h, w, c), "train", "test", "0.0.0", True, aug)


def spec(name: str) -> Spec:
  """The Spec of ``name``; ValueError listing the valid names if unknown."""
  if is_synthetic(name):
    return synthetic_spec(name)
  if name not in SPECS:
    raise ValueError(
        f"Unknown dataset {name!r}. Valid names: {', '.join(SPECS)}, or "
        f"'synthetic:<H>x<W>x<C>:<classes>' (e.g. {SYNTHETIC_EXAMPLE!r}).")
  return SPECS[name]


def resolve_data_dir(data_dir: str | None) -> str:
  """``data_dir``, else $TFDS_DATA_DIR, else TFDS's ~/tensorflow_datasets."""
  d = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return os.path.abspath(os.path.expanduser(d))


def prepare_command(name: str, data_dir: str | None) -> str:
  """The exact shell command that prepares ``name`` into ``data_dir``."""
  s = spec(name)
  d = resolve_data_dir(data_dir)
  base = f"python -m kdrobust.data.prepare {name}"
  cmd = f"{base} --data_dir {d}"
  if s.source_hint is not None:
    cmd = f"{base} --source {s.source_hint} --data_dir {d}"
  if s.needs_tf:
    cmd += "  # needs TensorFlow once, to prepare; never to train"
  return cmd


def _version_key(v: str) -> tuple[int, ...]:
  return tuple(int(p) for p in v.split("."))


def find_prepared(name: str, data_dir: str | None) -> str | None:
  """Path of the newest complete ``<data_dir>/<name>/<x.y.z>/``, or None."""
  root = os.path.join(resolve_data_dir(data_dir), name)
  try:
    versions = [v for v in os.listdir(root) if _VERSION_RE.match(v)]
  except (FileNotFoundError, NotADirectoryError):
    return None
  for v in sorted(versions, key=_version_key, reverse=True):
    path = os.path.join(root, v)
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
      return path
  return None


def is_stale(name: str, path: str) -> bool:
  """Whether the prepared ``<name>/<version>`` at ``path`` predates min_version."""
  s = spec(name)
  return bool(s.min_version) and (
      _version_key(os.path.basename(path)) < _version_key(s.min_version))


def read_class_names(path: str, feature: str = "label") -> tuple[str, ...] | None:
  """The ClassLabel names TFDS stored in ``path/<feature>.labels.txt``, or None."""
  try:
    with open(os.path.join(path, f"{feature}.labels.txt")) as f:
      names = tuple(n.strip() for n in f.read().split("\n") if n.strip())
  except FileNotFoundError:
    return None
  return names or None


def read_prepared(name: str, data_dir: str | None) -> dict:
  """{'version', 'path', 'splits': {split: num_examples}, 'class_names'}.

  ``class_names``: the label names in label order, or None if not recorded.

  Raises:
    DatasetNotFoundError: not prepared, prepared by a builder older than the
      spec's ``min_version``, or in a format that cannot be read without
      TensorFlow (message includes the prepare command).
  """
  path = find_prepared(name, data_dir)
  if path is None:
    d = resolve_data_dir(data_dir)
    raise DatasetNotFoundError(
        f"Dataset {name!r} is not prepared in {d} (no {name}/<version>/"
        f"dataset_info.json there; downloads are never attempted). Prepare it "
        f"with:\n  {prepare_command(name, data_dir)}")
  if is_stale(name, path):
    raise DatasetNotFoundError(
        f"Dataset {name!r} at {path} was prepared by an older kdrobust builder "
        f"({spec(name).stale_reason}); this kdrobust reads {name} "
        f">= {spec(name).min_version}. Prepare it again (the old folder is left "
        f"alone; delete it when done) with:\n  {prepare_command(name, data_dir)}")
  with open(os.path.join(path, "dataset_info.json")) as f:
    meta = json.load(f)
  fmt = meta.get("fileFormat", "tfrecord")
  if fmt != "array_record":
    raise DatasetNotFoundError(
        f"Dataset {name!r} at {path} is stored as {fmt!r}, which needs "
        f"TensorFlow to read. Delete that folder and re-prepare it as "
        f"ArrayRecord with:\n  "
        f"{prepare_command(name, data_dir)}")
  splits = {s["name"]: sum(int(n) for n in s.get("shardLengths", []))
            for s in meta.get("splits", [])}
  return {"version": os.path.basename(path), "path": path, "splits": splits,
          "class_names": read_class_names(path)}


def info(name: str, data_dir: str | None = None) -> DatasetInfo:
  """DatasetInfo of ``name``; counts come from the prepared files.

  Raises:
    ValueError: unknown name (the message lists the valid names).
    DatasetNotFoundError: not prepared (the message has the prepare command).
  """
  s = spec(name)
  if is_synthetic(name):
    return DatasetInfo(s.name, s.num_classes, s.image_shape,
                       SYNTHETIC_NUM_TRAIN, SYNTHETIC_NUM_TEST, "train", "test")
  prepared = read_prepared(name, data_dir)
  splits = prepared["splits"]
  for split in (s.train_split, s.test_split):
    if split not in splits:
      raise DatasetNotFoundError(
          f"Dataset {name!r} in {resolve_data_dir(data_dir)} has no split "
          f"{split!r} (has {sorted(splits)}). Re-prepare it with:\n  "
          f"{prepare_command(name, data_dir)}")
  return DatasetInfo(s.name, s.num_classes, s.image_shape,
                     splits[s.train_split], splits[s.test_split],
                     s.train_split, s.test_split, prepared.get("class_names"))

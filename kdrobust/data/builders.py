"""TFDS builders that prepare datasets offline, from files the user already has.

They write ArrayRecord (readable by ``tfds.data_source`` without TensorFlow)
and never touch the network:

* ``cifar10`` / ``cifar100`` (3.0.2, the catalog's names, versions and
  features) from the *python* archives ``cifar-1{0,00}-python.tar.gz`` or
  their extracted folders;
* ``svhn_cropped`` (3.1.0, as the catalog) from ``{train,test[,extra]}_32x32.mat``;
* ``tiny_imagenet`` (2.0.0) from ``tiny-imagenet-200.zip`` or its folder:
  200 classes, label = index of the wnid in *sorted* order (torchvision
  ``ImageFolder``'s, as the papers' teachers), the wnids stored as class
  names; ``train`` and the labelled ``validation`` split (the unlabelled
  ``test`` images are skipped); RGB JPEGs kept byte for byte, grayscale ones
  converted with PIL's ``convert('RGB')`` and stored losslessly as PNG;
* ``tiny_imagenet_wnids`` (2.0.0): the same with labels in ``wnids.txt``
  line order (what ``tiny_imagenet`` 1.0.0 had);
* ``digits`` (1.0.0): scikit-learn's bundled 8x8 digits, a stratified
  1,437 / 360 train/test split with ``random_state=0``. Pixel values
  v in 0..16 are stored as uint8 ``u = round(v * 255 / 16)`` (0 -> 0,
  16 -> 255); the pipeline maps them back to exactly ``v / 16``.

The classes skip TFDS registration (``cifar10`` etc. are taken by the catalog);
reading goes through the files, so ``tfds.data_source('cifar10',
data_dir=D, download=False)`` reads what these write.
Imports TFDS at module level: import this module only to prepare data.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import tempfile
import zipfile

import numpy as np
import tensorflow_datasets as tfds

DIGITS_NUM_TEST = 360
DIGITS_SPLIT_SEED = 0
TINY_IMAGENET_NUM_CLASSES = 200


class _SafeUnpickler(pickle.Unpickler):
  """Unpickles the CIFAR batches: dicts, lists, bytes and numpy arrays only."""
  _ALLOWED = {
      ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "_reconstruct"),
      ("numpy.core.multiarray", "scalar"),
      ("numpy._core.multiarray", "scalar"),
      ("numpy", "ndarray"),
      ("numpy", "dtype"),
      ("numpy.core.numeric", "_frombuffer"),
      ("numpy._core.numeric", "_frombuffer"),
      ("_codecs", "encode"),
  }

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(
          f"Refusing to unpickle {module}.{name} from a CIFAR batch file.")
    return super().find_class(module, name)


def _unpickle(data: bytes) -> dict:
  """A CIFAR python batch as a dict with str keys."""
  d = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
  return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _read_files(source: str, wanted) -> dict[str, bytes]:
  """{basename: bytes} of the regular files whose basename ``wanted`` accepts.

  ``source`` is a tar archive (any compression) or a folder (searched
  recursively). macOS ``._*`` resource files are ignored.
  """
  ok = lambda n: wanted(n) and not n.startswith("._")
  out = {}
  if os.path.isdir(source):
    for root, _, files in os.walk(source):
      for n in files:
        if ok(n):
          with open(os.path.join(root, n), "rb") as f:
            out[n] = f.read()
    return out
  with tarfile.open(source) as tar:
    for m in tar:
      n = os.path.basename(m.name)
      if m.isfile() and ok(n):
        out[n] = tar.extractfile(m).read()
  return out


def _nhwc(flat: np.ndarray) -> np.ndarray:
  """[N, 3072] CHW-flattened CIFAR rows -> uint8 [N, 32, 32, 3]."""
  return np.asarray(flat, np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_cifar(source: str, num_classes: int) -> dict:
  """{'train'|'test': {'image', 'label'[, 'coarse_label']}, 'names', ...}.

  Reads every ``data_batch_*`` present (CIFAR-10) so subsets work.
  """
  if not os.path.exists(source):
    raise FileNotFoundError(f"--source {source} does not exist.")
  if num_classes == 10:
    files = _read_files(source, lambda n: n.startswith("data_batch_")
                        or n in ("test_batch", "batches.meta"))
    train = sorted(n for n in files if n.startswith("data_batch_"))
    parts = {"train": train, "test": ["test_batch"]}
    meta, names_key, label_key = "batches.meta", "label_names", "labels"
  else:
    files = _read_files(source, lambda n: n in ("train", "test", "meta"))
    parts = {"train": ["train"], "test": ["test"]}
    meta, names_key, label_key = "meta", "fine_label_names", "fine_labels"
  missing = [n for ns in parts.values() for n in ns if n not in files]
  if not parts["train"] or missing:
    raise FileNotFoundError(
        f"{source} is not a CIFAR-{num_classes} python archive or folder "
        f"(missing {missing or 'data_batch_*'}).")
  out = {}
  for split, names in parts.items():
    batches = [_unpickle(files[n]) for n in names]
    ex = {"image": np.concatenate([_nhwc(b["data"]) for b in batches]),
          "label": np.concatenate([np.asarray(b[label_key]) for b in batches])}
    if num_classes == 100:
      ex["coarse_label"] = np.concatenate(
          [np.asarray(b["coarse_labels"]) for b in batches])
    out[split] = ex
  m = _unpickle(files[meta]) if meta in files else {}
  out["names"] = [s.decode() for s in m.get(names_key, [])] or None
  out["coarse_names"] = [s.decode() for s in m.get("coarse_label_names", [])] or None
  return out


class _OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base: takes ``source`` (path) in the constructor; writes ArrayRecord."""

  def __init__(self, *, source: str | None = None, **kwargs):
    self._source = source
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _generate_examples(self, examples):  # pytype: disable=signature-mismatch
    yield from examples

  # TFDS prints "Downloading and preparing dataset ..." and "Dataset ... downloaded and
  # prepared ..." around every build. These builders download nothing (they read
  # ``source`` or scikit-learn), and ``python -m kdrobust.data.prepare`` prints what it
  # built, so both lines are dropped.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


class _Cifar(_OfflineBuilder, skip_registration=True):
  """CIFAR from the python archive, with the catalog's features."""
  NUM_CLASSES = 10
  VERSION = tfds.core.Version("3.0.2")

  def __init__(self, *, source: str | None = None, **kwargs):
    # Read first: the label names in the archive go into the features.
    self._data = read_cifar(source, self.NUM_CLASSES) if source else None
    super().__init__(source=source, **kwargs)

  def _features(self, data=None):
    names = (data or {}).get("names")
    label = (tfds.features.ClassLabel(names=names) if names
             else tfds.features.ClassLabel(num_classes=self.NUM_CLASSES))
    f = {"id": tfds.features.Text(),
         "image": tfds.features.Image(shape=(32, 32, 3)),
         "label": label}
    if self.NUM_CLASSES == 100:
      coarse = (data or {}).get("coarse_names")
      f["coarse_label"] = (tfds.features.ClassLabel(names=coarse) if coarse
                           else tfds.features.ClassLabel(num_classes=20))
    return tfds.features.FeaturesDict(f)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=self._features(self._data),
        supervised_keys=("image", "label"),
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        description="CIFAR prepared offline from the python archive by kdrobust.")

  def _split_generators(self, dl_manager):
    del dl_manager
    if self._data is None:
      raise FileNotFoundError("CIFAR needs --source (the python archive or folder).")
    return {split: self._generate_examples(self._examples(split, self._data[split]))
            for split in ("train", "test")}

  def _examples(self, split, ex):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    for i in range(len(ex["label"])):
      key = f"{split}_{i:05d}"
      out = {"id": key, "image": Image.fromarray(ex["image"][i]),
             "label": int(ex["label"][i])}
      if "coarse_label" in ex:
        out["coarse_label"] = int(ex["coarse_label"][i])
      yield key, out


class Cifar10(_Cifar, skip_registration=True):
  name = "cifar10"
  NUM_CLASSES = 10


class Cifar100(_Cifar, skip_registration=True):
  name = "cifar100"
  NUM_CLASSES = 100


class SvhnCropped(_OfflineBuilder, skip_registration=True):
  """SVHN cropped digits from the ``*_32x32.mat`` files (label 10 -> 0)."""
  name = "svhn_cropped"
  VERSION = tfds.core.Version("3.1.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(32, 32, 3)),
            "label": tfds.features.ClassLabel(num_classes=10)}),
        supervised_keys=("image", "label"),
        homepage="http://ufldl.stanford.edu/housenumbers/")

  def _split_generators(self, dl_manager):
    del dl_manager
    src = self._source or ""
    gens = {}
    for split in ("train", "test", "extra"):
      path = os.path.join(src, f"{split}_32x32.mat")
      if os.path.isfile(path):
        gens[split] = self._generate_examples(self._examples(path))
      elif split != "extra":
        raise FileNotFoundError(f"SVHN: {path} not found (--source must be the "
                                "folder holding train_32x32.mat and test_32x32.mat).")
    return gens

  def _examples(self, path):
    import scipy.io  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    mat = scipy.io.loadmat(path)
    x = np.asarray(mat["X"], np.uint8).transpose(3, 0, 1, 2)
    y = np.asarray(mat["y"]).reshape(-1) % 10
    for i in range(len(y)):
      yield i, {"image": Image.fromarray(x[i]), "label": int(y[i])}


def _tiny_reader(source: str):
  """(list_names, read_bytes) over the Tiny ImageNet zip or folder.

  Names are paths relative to the dataset root (the folder holding
  ``wnids.txt``), with '/' separators.
  """
  if os.path.isdir(source):
    root = source
    if not os.path.isfile(os.path.join(root, "wnids.txt")):
      root = os.path.join(source, "tiny-imagenet-200")
    names = [os.path.relpath(os.path.join(r, f), root).replace(os.sep, "/")
             for r, _, fs in os.walk(root) for f in fs]

    def read(name):
      with open(os.path.join(root, name), "rb") as f:
        return f.read()
    return names, read
  zf = zipfile.ZipFile(source)
  wnids = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == "wnids.txt"]
  if not wnids:
    raise FileNotFoundError(f"{source}: no wnids.txt, not tiny-imagenet-200.zip.")
  prefix = min(wnids, key=len)[:-len("wnids.txt")]
  names = [n[len(prefix):] for n in zf.namelist()
           if n.startswith(prefix) and not n.endswith("/")]
  return names, lambda name: zf.read(prefix + name)


CLASS_ORDERS = ("sorted", "wnids")


def tiny_class_names(wnids: list[str], class_order: str) -> list[str]:
  """The wnids in label order: ``sorted`` (ImageFolder's) or as in wnids.txt.

  ``sorted`` is the order ``torchvision.datasets.ImageFolder`` gives (its
  ``find_classes`` sorts the folder names with Python's ``sorted``), which is
  what the papers' Tiny ImageNet teachers were trained with; ``wnids`` keeps
  the line order of ``wnids.txt`` (kdrobust's tiny_imagenet 1.0.0).
  """
  if class_order not in CLASS_ORDERS:
    raise ValueError(f"Unknown Tiny ImageNet class order {class_order!r}; valid: "
                     f"{', '.join(CLASS_ORDERS)}.")
  if len(set(wnids)) != len(wnids) or len(wnids) != TINY_IMAGENET_NUM_CLASSES:
    raise ValueError(f"wnids.txt lists {len(wnids)} wnids ({len(set(wnids))} distinct); "
                     f"Tiny ImageNet has {TINY_IMAGENET_NUM_CLASSES} distinct ones.")
  return sorted(wnids) if class_order == "sorted" else list(wnids)


def _lossless_rgb(data: bytes) -> bytes:
  """RGB image bytes whose PIL decoding is exactly ``Image.open(data).convert('RGB')``.

  RGB JPEGs are kept as they are (no re-encoding: decoding them gives the
  pixels torchvision's ``pil_loader`` gives). Anything else (the 1.8 %
  grayscale JPEGs of Tiny ImageNet, or CMYK) is converted with PIL's
  ``convert('RGB')`` and stored as PNG, losslessly. (kdrobust 1.0.0 stored
  them as JPEG at quality 75: up to 17 levels off.)
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.open(io.BytesIO(data))
  if img.mode == "RGB" and img.format == "JPEG":
    return data
  buf = io.BytesIO()
  img.convert("RGB").save(buf, format="PNG")
  return buf.getvalue()


class TinyImagenet(_OfflineBuilder, skip_registration=True):
  """Tiny ImageNet (200 classes, 64x64): train and labelled validation.

  Labels index the wnids in sorted order (``CLASS_ORDER='sorted'``), as
  torchvision's ``ImageFolder`` numbers them; the wnids are stored as the
  label's ClassLabel names (``label.labels.txt``), so a teacher that records
  another class order is refused (:func:`kdrobust.teachers.check_compatible`).
  Images: RGB JPEGs byte for byte, the rest PNG of PIL's ``convert('RGB')``.
  """
  name = "tiny_imagenet"
  CLASS_ORDER = "sorted"
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "2.0.0": "Labels follow the sorted wnids (torchvision ImageFolder's order); "
               "class names stored; grayscale images stored losslessly (PNG).",
      "1.0.0": "Labels in wnids.txt order; grayscale images re-encoded as JPEG q75.",
  }

  def __init__(self, *, source: str | None = None, **kwargs):
    # Read wnids.txt first: the class names go into the features.
    self._names = None
    if source:
      if not os.path.exists(source):
        raise FileNotFoundError(f"--source {source} does not exist.")
      self._reader = _tiny_reader(source)
      wnids = self._reader[1]("wnids.txt").decode().split()
      self._names = tiny_class_names(wnids, self.CLASS_ORDER)
    super().__init__(source=source, **kwargs)

  def _info(self):
    label = (tfds.features.ClassLabel(names=self._names) if self._names
             else tfds.features.ClassLabel(num_classes=TINY_IMAGENET_NUM_CLASSES))
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            # 'png' only names how arrays would be encoded: we pass bytes, RGB
            # JPEGs as they are and the converted images as PNG.
            "image": tfds.features.Image(shape=(64, 64, 3), encoding_format="png"),
            "label": label}),
        supervised_keys=("image", "label"),
        homepage="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        description=f"Tiny ImageNet prepared offline by kdrobust; labels in "
                    f"{self.CLASS_ORDER} wnid order.")

  def _split_generators(self, dl_manager):
    del dl_manager
    if not self._names:
      raise FileNotFoundError("Tiny ImageNet needs --source (tiny-imagenet-200.zip "
                              "or its folder).")
    names, read = self._reader
    index = {w: i for i, w in enumerate(self._names)}

    def label(wnid, where):
      if wnid not in index:
        raise ValueError(f"{where}: wnid {wnid!r} is not in wnids.txt.")
      return index[wnid]
    train = sorted((n, label(n.split("/")[1], n)) for n in names
                   if n.startswith("train/") and "/images/" in n
                   and n.lower().endswith(".jpeg"))
    ann = read("val/val_annotations.txt").decode().splitlines()
    val = sorted((f"val/images/{line.split()[0]}",
                  label(line.split()[1], "val/val_annotations.txt"))
                 for line in ann if line.strip())
    return {"train": self._generate_examples(self._examples(train, read)),
            "validation": self._generate_examples(self._examples(val, read))}

  def _examples(self, items, read):
    for name, label in items:
      key = name.rsplit("/", 1)[-1]
      yield key, {"id": key, "image": _lossless_rgb(read(name)), "label": label}


class TinyImagenetWnids(TinyImagenet, skip_registration=True):
  """Tiny ImageNet with labels in ``wnids.txt`` line order (kdrobust 1.0.0's)."""
  name = "tiny_imagenet_wnids"
  CLASS_ORDER = "wnids"


def digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{'train'|'test': (v uint8[N,8,8] in 0..16, labels)}: 1,437 / 360."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  d = load_digits()
  idx = np.arange(len(d.target))
  tr, te = train_test_split(idx, test_size=DIGITS_NUM_TEST, stratify=d.target,
                            random_state=DIGITS_SPLIT_SEED)
  v = np.asarray(d.images, np.uint8)
  return {"train": (v[np.sort(tr)], d.target[np.sort(tr)]),
          "test": (v[np.sort(te)], d.target[np.sort(te)])}


def digits_to_uint8(v: np.ndarray) -> np.ndarray:
  """0..16 -> 0..255 as ``round(v * 255 / 16)`` (injective, 16 -> 255)."""
  return ((v.astype(np.int32) * 255 + 8) // 16).astype(np.uint8)


class Digits(_OfflineBuilder, skip_registration=True):
  """scikit-learn's 8x8 digits, bundled with the package (no source needed)."""
  name = "digits"
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=10)}),
        supervised_keys=("image", "label"),
        description="sklearn.datasets.load_digits; pixel v stored as "
        "round(v*255/16).")

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(self._examples(split, v, y))
            for split, (v, y) in digits_split().items()}

  def _examples(self, split, v, y):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    u = digits_to_uint8(v)
    for i in range(len(y)):
      yield f"{split}_{i:04d}", {"image": Image.fromarray(u[i]),
                                 "label": int(y[i])}


BUILDERS = {b.name: b for b in (Cifar10, Cifar100, SvhnCropped, TinyImagenet,
                                TinyImagenetWnids, Digits)}


def prepare(name: str, source: str | None, data_dir: str) -> str:
  """Builds ``name`` offline into ``data_dir``; returns the dataset folder."""
  builder = BUILDERS[name](source=source, data_dir=data_dir)
  with tempfile.TemporaryDirectory() as scratch:  # No data_dir/downloads left.
    builder.download_and_prepare(
        download_dir=scratch,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return os.fspath(builder.data_dir)

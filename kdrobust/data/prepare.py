"""Prepare a dataset as TFDS ArrayRecord, offline from files you already have.

  python -m kdrobust.data.prepare cifar10 --source cifar-10-python.tar.gz --data_dir D
  python -m kdrobust.data.prepare cifar100 --source cifar-100-python.tar.gz --data_dir D
  python -m kdrobust.data.prepare svhn_cropped --source <dir of *_32x32.mat> --data_dir D
  python -m kdrobust.data.prepare tiny_imagenet --source tiny-imagenet-200.zip --data_dir D
  python -m kdrobust.data.prepare tiny_imagenet_wnids --source tiny-imagenet-200.zip --data_dir D
  python -m kdrobust.data.prepare digits --data_dir D          # bundled with scikit-learn
  python -m kdrobust.data.prepare cifar10 --download --data_dir D   # needs TensorFlow
  python -m kdrobust.data.prepare imagenet2012 --source <dir of ILSVRC2012 tars> --data_dir D

``--source`` takes an archive or its extracted folder. ``tiny_imagenet``
numbers the classes by sorted wnid (torchvision ``ImageFolder``'s order, the
papers' teachers'); ``tiny_imagenet_wnids`` by ``wnids.txt`` line order.
``--download`` (and imagenet2012) go through the TFDS catalog builders, which
need TensorFlow; they still write ArrayRecord so training reads them without
TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tarfile
import zipfile

from kdrobust import cli
from kdrobust.data import catalog

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def _parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(
      prog="python -m kdrobust.data.prepare",
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("name", help=f"one of: {', '.join(catalog.SPECS)}")
  p.add_argument("--source", default=None,
                 help="archive or folder you already have (see above)")
  p.add_argument("--data_dir", default=None,
                 help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  p.add_argument("--download", action="store_true",
                 help="download through the TFDS catalog builder (needs TensorFlow)")
  return p


def prepare_with_catalog(name: str, data_dir: str, manual_dir: str | None) -> str:
  """TFDS's own builder (downloads, or ImageNet's manual dir); needs TensorFlow."""
  if importlib.util.find_spec("tensorflow") is None:
    raise SystemExit(
        f"Preparing {name!r} with --download uses the TFDS catalog builder, which "
        "needs TensorFlow (pip install tensorflow-cpu, or the [tf] extra of "
        "kdrobust); training never needs it. Without TensorFlow prepare offline "
        f"instead:\n  {catalog.prepare_command(name, data_dir)}")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return str(builder.data_dir)


def prepare(name: str, *, source: str | None, data_dir: str | None,
            download: bool = False) -> catalog.DatasetInfo:
  """Prepares ``name`` into ``data_dir`` and returns its DatasetInfo."""
  s = catalog.spec(name)
  if catalog.is_synthetic(name):
    raise SystemExit("Synthetic datasets are generated in memory: nothing to prepare.")
  d = catalog.resolve_data_dir(data_dir)
  done = catalog.find_prepared(name, d)
  if done and catalog.is_stale(name, done):
    print(f"{done} was prepared by an older kdrobust builder "
          f"({s.stale_reason}); preparing {name} {s.version} next to it.")
    done = None
  if done:
    try:
      i = catalog.info(name, d)
    except catalog.DatasetNotFoundError as e:
      raise SystemExit(str(e)) from None
    print(f"{name} is already prepared at {done} (delete it to rebuild).")
    return i
  if s.needs_tf or (download and s.source_hint and not source):
    if name.startswith("tiny_imagenet"):
      raise SystemExit(f"Tiny ImageNet is not in the TFDS catalog: download "
                       f"{TINY_IMAGENET_URL} yourself, then\n  "
                       f"{catalog.prepare_command(name, d)}")
    prepare_with_catalog(name, d, source)
  else:
    if s.source_hint and not source:
      raise SystemExit(f"{name} needs --source:\n  {catalog.prepare_command(name, d)}"
                       f"\nor, with TensorFlow and network, --download.")
    _check_source(name, source)
    from kdrobust.data import builders  # pylint: disable=g-import-not-at-top
    # A failed build (a corrupt or truncated archive) leaves nothing behind.
    created = [p for p in (d, os.path.join(d, name)) if not os.path.exists(p)]
    try:
      builders.prepare(name, source, d)
    except BaseException:
      for path in reversed(created):
        shutil.rmtree(path, ignore_errors=True)
      raise
  return catalog.info(name, d)


def _check_source(name: str, source: str | None) -> None:
  """``--source`` exists and, if a file, is an archive of the right kind (header check)."""
  if source is None:
    return
  if not os.path.exists(source):
    raise cli.UserError(f"--source {source} does not exist",
                        f"Pass the archive or folder: {catalog.spec(name).source_hint or ''}")
  if os.path.isdir(source):
    return
  zip_kind = name.startswith("tiny_imagenet")
  ok = zipfile.is_zipfile(source) if zip_kind else tarfile.is_tarfile(source)
  if not ok:
    raise cli.UserError(
        f"--source {source} is not a {'zip' if zip_kind else 'tar'} archive (corrupt, "
        "truncated or another file)", "Download it again, or pass its extracted folder")


def _check_data_dir(data_dir: str | None) -> None:
  if data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise cli.UserError(f"--data_dir {data_dir} is a file", "Pass a directory")


def main(argv: list[str] | None = None) -> int:
  """CLI entry point; ``argv`` excludes the program name. Bad input: one line, exit 2
  (:mod:`kdrobust.cli`)."""
  return cli.run(_main, argv)


def _main(argv: list[str]) -> int:
  args = _parser().parse_args(argv)
  catalog.spec(args.name)  # unknown name: ValueError listing the valid ones
  _check_data_dir(args.data_dir)
  i = prepare(args.name, source=args.source, data_dir=args.data_dir,
              download=args.download)
  print(f"Prepared {i.name} in {catalog.find_prepared(i.name, args.data_dir)}: "
        f"{i.train_split}={i.num_train}, {i.test_split}={i.num_test}, "
        f"{i.num_classes} classes, images {i.image_shape}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())

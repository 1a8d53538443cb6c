"""``python -m kdrobust.data.cifar_subset``: the CIFAR-10 subset archive, from the official one.

The subset behind ``configs/cifar10_subset_pgd_at.py`` and
``configs/subset_distill.py`` keeps the first ``--per_batch`` images (default
1,017) of each of the six batch files of the official CIFAR-10 python archive
(``cifar-10-python.tar.gz``, https://www.cs.toronto.edu/~kriz/cifar.html), in
file order, with their true labels: 5 x 1,017 = 5,085 training and 1,017 test
images. Nothing is selected by class or by difficulty, so the class counts
vary per batch (83 to 120 at 1,017). The output has the official layout
(``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``), so
``python -m kdrobust.data.prepare cifar10 --source <out> --data_dir
data/cifar10_subset`` reads it as it reads the full archive. ``docs/data.md`` documents the subset.

Each batch file is a pickled dict ``{'batch_label': <file name>, 'labels':
[int] * n, 'data': uint8 array (n, 3072)}`` (rows channel-major: 1,024 red,
then green, then blue values, each a row-major 32x32 image); ``batches.meta``
is copied byte for byte. Member times, owners and the tar format (GNU) are
fixed, so the uncompressed tar depends only on the images (and on numpy's
pickling of an array): rebuilt from the shipped subset itself, it is that
archive's tar byte for byte (:data:`SUBSET_TAR_SHA256`). The gzip bytes
depend on the zlib build, so compare :func:`content_digest` (the images and
labels alone, the same on every machine; :data:`SUBSET_DIGEST` for the
subset) rather than the archive's sha256.

  python -m kdrobust.data.cifar_subset --source cifar-10-python.tar.gz \\
      --out cifar-10-python-subset.tar.gz
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import pickle
import sys
import tarfile
from typing import Sequence

import numpy as np

from kdrobust import cli

DIR = "cifar-10-batches-py"
BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
           "test_batch")
META = "batches.meta"
PER_BATCH = 1017  # the shipped subset: 5,085 training and 1,017 test images
FULL_BATCH = 10000  # images per official batch file
NUM_CLASSES = 10
MTIME = 1767225600  # 2026-01-01T00:00:00Z, the members' fixed modification time
# content_digest of the subset at PER_BATCH (and of any rebuild of it).
SUBSET_DIGEST = "b7fd5282620189d42f25e1b337b12a55ff427492209ab39e19b267eb645961d5"
# sha256 of the uncompressed tar of the subset (gzip -dc cifar-10-python-subset.tar.gz).
SUBSET_TAR_SHA256 = "2a100df8ef27850408badec47f461db2ac25abb5a23b5d9cc0328cf2f9e81766"


class SubsetError(ValueError):
  """Bad input to the subset builder (one line, before anything is written)."""


def read_batches(source: str) -> tuple[dict[str, tuple[np.ndarray, list[int]]], bytes]:
  """``({batch: (data uint8 (N, 3072), labels)}, batches.meta bytes)`` of a CIFAR-10 archive."""
  if not os.path.isfile(source):
    raise SubsetError(f"--source {source!r} does not exist: download cifar-10-python.tar.gz "
                      "from https://www.cs.toronto.edu/~kriz/cifar.html.")
  out: dict[str, tuple[np.ndarray, list[int]]] = {}
  with tarfile.open(source, "r:*") as tar:
    names = {m.name: m for m in tar.getmembers() if m.isfile()}
    missing = [n for n in BATCHES + (META,) if f"{DIR}/{n}" not in names]
    if missing:
      raise SubsetError(f"{source} is not the CIFAR-10 python archive: it lacks {DIR}/"
                        f"{{{', '.join(missing)}}} (expected {', '.join(BATCHES + (META,))}).")
    meta = tar.extractfile(names[f"{DIR}/{META}"]).read()
    for b in BATCHES:
      d = pickle.loads(tar.extractfile(names[f"{DIR}/{b}"]).read(), encoding="bytes")
      d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
      data = np.asarray(d["data"], np.uint8)
      labels = [int(v) for v in d["labels"]]
      if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != len(labels):
        raise SubsetError(f"{source}: {b} holds data {data.shape} and {len(labels)} labels, "
                          "not (N, 3072) and N labels.")
      out[b] = (data, labels)
  return out, meta


def subset(batches: dict[str, tuple[np.ndarray, list[int]]], per_batch: int = PER_BATCH
           ) -> dict[str, tuple[np.ndarray, list[int]]]:
  """The first ``per_batch`` images of every batch file, in file order."""
  smallest = min(d.shape[0] for d, _ in batches.values())
  if not 1 <= per_batch <= smallest:
    raise SubsetError(f"--per_batch must be in [1, {smallest}] (images per batch file), got "
                      f"{per_batch}.")
  return {b: (np.ascontiguousarray(d[:per_batch]), list(l[:per_batch]))
          for b, (d, l) in batches.items()}


def content_digest(batches: dict[str, tuple[np.ndarray, list[int]]]) -> str:
  """sha256 over every batch's name, image bytes and labels (in :data:`BATCHES` order).

  Independent of pickle, numpy and zlib versions: two archives with the same
  images and labels have the same digest.
  """
  h = hashlib.sha256()
  for b in BATCHES:
    data, labels = batches[b]
    h.update(b.encode())
    h.update(np.ascontiguousarray(data, np.uint8).tobytes())
    h.update(np.asarray(labels, np.int64).tobytes())
  return h.hexdigest()


def class_counts(batches: dict[str, tuple[np.ndarray, list[int]]]) -> dict[str, list[int]]:
  """Images per class in every batch."""
  return {b: np.bincount(np.asarray(l, np.int64), minlength=NUM_CLASSES).tolist()
          for b, (_, l) in batches.items()}


def _member(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
  info = tarfile.TarInfo(name)
  info.size, info.mtime, info.uid, info.gid = size, MTIME, 0, 0
  info.uname = info.gname = "root"
  if directory:
    info.type, info.mode = tarfile.DIRTYPE, 0o755
  else:
    info.mode = 0o644
  return info


def write_archive(path: str, batches: dict[str, tuple[np.ndarray, list[int]]], meta: bytes
                  ) -> str:
  """Write the official layout to ``path`` (.tar.gz) with fixed metadata; returns its sha256."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
    tar.addfile(_member(DIR, 0, directory=True))
    tar.addfile(_member(f"{DIR}/{META}", len(meta)), io.BytesIO(meta))
    for b in BATCHES:
      data, labels = batches[b]
      blob = pickle.dumps({"batch_label": b, "labels": [int(v) for v in labels],
                           "data": np.ascontiguousarray(data, np.uint8)}, protocol=4)
      tar.addfile(_member(f"{DIR}/{b}", len(blob)), io.BytesIO(blob))
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=6) as gz:
      gz.write(buf.getvalue())
  os.replace(tmp, path)
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def build(source: str, out: str, *, per_batch: int = PER_BATCH, overwrite: bool = False
          ) -> dict:
  """Read ``source``, keep the first ``per_batch`` images per batch, write ``out``.

  Returns ``{'path', 'sha256', 'content_digest', 'num_train', 'num_test',
  'class_counts'}``. Every input is checked before anything is written.
  """
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{out} exists: pass --overwrite to replace it.")
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise SubsetError(f"--out {out!r}: the folder {parent} does not exist.")
  batches, meta = read_batches(source)
  sub = subset(batches, per_batch)
  sha = write_archive(out, sub, meta)
  return {"path": out, "sha256": sha, "content_digest": content_digest(sub),
          "num_train": sum(sub[b][0].shape[0] for b in BATCHES[:-1]),
          "num_test": sub["test_batch"][0].shape[0], "class_counts": class_counts(sub)}


def main(argv: Sequence[str] | None = None) -> int:
  """The CLI (one-line errors, exit status 2: :mod:`kdrobust.cli`)."""
  return cli.run(_main, argv)


def _main(argv: Sequence[str]) -> int:
  p = cli.ArgumentParser(prog="python -m kdrobust.data.cifar_subset",
                         description="The CIFAR-10 subset archive: the first N images of "
                         "each batch file of the official cifar-10-python.tar.gz.")
  p.add_argument("--source", required=True, help="The official cifar-10-python.tar.gz.")
  p.add_argument("--out", default="cifar-10-python-subset.tar.gz", help="The archive to write.")
  p.add_argument("--per_batch", type=int, default=PER_BATCH,
                 help=f"Images kept per batch file (default {PER_BATCH}).")
  p.add_argument("--overwrite", action="store_true", help="Replace an existing --out.")
  args = p.parse_args(argv)
  r = build(args.source, args.out, per_batch=args.per_batch, overwrite=args.overwrite)
  counts = [c for b in BATCHES for c in r["class_counts"][b]]
  print(f"Wrote {r['path']}: {r['num_train']} training and {r['num_test']} test images "
        f"(class counts per batch {min(counts)} to {max(counts)}).")
  print(f"sha256 {r['sha256']}")
  same = (" (the subset kdrobust documents)" if r["content_digest"] == SUBSET_DIGEST
          else "")
  print(f"content digest {r['content_digest']}{same}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Convert a PyTorch (RobustBench-layout) teacher into a kdrobust converted-teacher directory.

Usage::

  python -m kdrobust.teachers.convert --arch wrn34_10 --input model.pt \\
      --output OUT_DIR --num_classes 10 [--mean M M M --std S S S | --dataset cifar10] \\
      [--variant standard|dm|kuangliu|wong] [--depth D --width W] [--activation swish] \\
      [--model_kwargs '{"depth": 10}'] [--allow_pickle]

``OUT_DIR`` then holds

* ``variables.npz``: the Flax variables as a flat, uncompressed numpy ``.npz``
  (keys ``params/<module path>/<leaf>`` and ``batch_stats/...``, all float32);
* ``teacher.json``: ``format`` (``kdrobust-converted-teacher/1``), ``arch``,
  ``num_classes``, ``model_kwargs`` (the exact kwargs for
  ``kdrobust.models.get``; normalisation included), ``normalization_source``
  (``state_dict`` buffers, ``kwargs`` or ``none``), ``source`` (absolute input
  path), ``source_sha256``, ``layout``, ``dropped_keys`` (e.g. RobustBench's
  unused ``sub_block1``), ``num_params``, ``variables_file``,
  ``variables_sha256``, library versions and, with ``--class_names``, the
  ``class_names`` in label order (checked against the dataset's).

:func:`load_converted` reads it back without torch. Only the converter needs
torch. Mean/std: DeepMind-layout checkpoints carry them as buffers and they
are used automatically; for other layouts pass ``--mean/--std`` (or
``--dataset``) exactly as the source model normalised its inputs (RobustBench
TRADES/LTD ``WideResNet`` teachers take raw [0, 1] pixels: pass nothing).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from kdrobust import cli

FORMAT = "kdrobust-converted-teacher/1"
VARIABLES_FILE = "variables.npz"
META_FILE = "teacher.json"


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
  """Hex sha256 of a file's bytes."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while True:
      b = f.read(chunk)
      if not b:
        break
      h.update(b)
  return h.hexdigest()


def save_variables(variables, path: str) -> None:
  """Write ``variables`` as a flat ``.npz`` (keys joined with '/')."""
  flat = traverse_util.flatten_dict(jax.device_get(dict(variables)), sep="/")
  with open(path, "wb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in flat.items()})


def load_variables(path: str) -> dict:
  """Read a ``.npz`` written by :func:`save_variables` back into nested dicts."""
  with np.load(path, allow_pickle=False) as z:
    flat = {k: z[k] for k in z.files}
  return traverse_util.unflatten_dict(flat, sep="/")


def _jsonable_kw(kw: dict) -> dict:
  def conv(v):
    return [conv(x) for x in v] if isinstance(v, (tuple, list)) else v
  return {k: conv(v) for k, v in kw.items()}


def _model_kw_from_json(kw: dict) -> dict:
  """JSON lists back to (nested) tuples, as the model attributes are declared."""
  def conv(v):
    return tuple(conv(x) for x in v) if isinstance(v, list) else v
  return {k: conv(v) for k, v in kw.items()}


def convert_file(input_path: str, output_dir: str, arch: str, num_classes: int | None,
                 *, allow_pickle: bool = False, class_names: Sequence[str] | None = None,
                 **model_kw) -> dict:
  """Convert ``input_path`` and write ``output_dir``; returns the teacher.json dict.

  ``class_names`` (label order) are recorded as ``class_names`` and checked
  against the dataset's before training (``kdrobust.teachers.check_class_order``).
  """
  from kdrobust.teachers import torch_io  # pylint: disable=g-import-not-at-top
  sd = torch_io.load_torch_state_dict(input_path, allow_pickle=allow_pickle)
  res = torch_io.convert_state_dict(sd, arch, num_classes, **model_kw)
  if class_names and len(class_names) != res.num_classes:
    raise ValueError(f"{len(class_names)} class names for a {res.num_classes}-class teacher.")
  os.makedirs(output_dir, exist_ok=True)
  var_path = os.path.join(output_dir, VARIABLES_FILE)
  save_variables(res.variables, var_path)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    torch_version = torch.__version__
  except ImportError:  # pragma: no cover
    torch_version = None
  import flax  # pylint: disable=g-import-not-at-top
  meta = {
      "format": FORMAT,
      "arch": arch,
      "num_classes": res.num_classes,
      "model_kwargs": _jsonable_kw(res.model_kw),
      "normalization_source": res.normalization_source,
      "layout": torch_io.layout_for(arch, res.model_kw).name,
      "source": os.path.abspath(input_path),
      "source_sha256": sha256_file(input_path),
      "dropped_keys": res.dropped_keys,
      "num_params": int(sum(np.size(x) for x in jax.tree.leaves(res.variables["params"]))),
      "variables_file": VARIABLES_FILE,
      "variables_sha256": sha256_file(var_path),
      "converted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
      "versions": {"jax": jax.__version__, "flax": flax.__version__, "torch": torch_version},
  }
  if class_names:
    meta["class_names"] = [str(n) for n in class_names]
  from kdrobust import fileio  # pylint: disable=g-import-not-at-top
  fileio.write_json(os.path.join(output_dir, META_FILE), meta)  # atomic
  return meta


def load_converted(path: str, *, dtype: str | None = None, verify: bool = True):
  """Load a converted-teacher directory: returns ``(module, variables)``.

  ``dtype`` overrides the compute dtype (parameters stay float32). With
  ``verify`` the variables file's sha256 is checked against ``teacher.json``
  and the variable tree must match the module exactly (names, shapes).
  """
  from kdrobust import models  # pylint: disable=g-import-not-at-top
  from kdrobust.teachers import torch_io  # pylint: disable=g-import-not-at-top
  with open(os.path.join(path, META_FILE)) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path}: unknown converted-teacher format {meta.get('format')!r}.")
  kw = _model_kw_from_json(meta["model_kwargs"])
  if dtype is not None:
    kw["dtype"] = dtype
  module = models.get(meta["arch"], num_classes=int(meta["num_classes"]), **kw)
  var_path = os.path.join(path, meta.get("variables_file", VARIABLES_FILE))
  if verify and sha256_file(var_path) != meta["variables_sha256"]:
    raise ValueError(f"{var_path}: sha256 differs from teacher.json (file changed?).")
  variables = load_variables(var_path)
  # Input shape: RobustBench teachers are 32x32x3; an optional "image_shape" says otherwise.
  h, _, ch = meta.get("image_shape", (32, 32, 3))
  expected = traverse_util.flatten_dict(
      dict(torch_io.abstract_variables(module, image_size=int(h), channels=int(ch))), sep="/")
  got = traverse_util.flatten_dict(variables, sep="/")
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  bad = sorted(k for k in set(expected) & set(got) if expected[k].shape != got[k].shape)
  if missing or unexpected or bad:
    raise ValueError(f"{path}: variables do not match {meta['arch']} {kw}: missing {missing[:10]}, "
                     f"unexpected {unexpected[:10]}, shape mismatches {bad[:10]}.")
  variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), variables)
  return module, variables


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
  p = cli.ArgumentParser(
      prog="python -m kdrobust.teachers.convert",
      description="Convert a PyTorch RobustBench-layout teacher to Flax variables "
      "(variables.npz + teacher.json).")
  p.add_argument("--arch", required=True, help="kdrobust.models registry name, e.g. wrn34_10.")
  p.add_argument("--input", required=True, help="PyTorch .pt/.pth checkpoint.")
  p.add_argument("--output", required=True, help="Output directory.")
  p.add_argument("--num_classes", type=int, default=None,
                 help="Number of classes (default: read from the classifier weight).")
  p.add_argument("--mean", type=float, nargs="+", default=None)
  p.add_argument("--std", type=float, nargs="+", default=None)
  p.add_argument("--dataset", default=None,
                 help="Take mean/std from kdrobust.models.DATASET_STATS[dataset].")
  p.add_argument("--variant", default=None,
                 help="Layout variant: wrn* 'standard'|'dm'; preact_resnet18 "
                 "'standard'|'kuangliu'|'wong'|'dm'.")
  p.add_argument("--activation", default=None, help="relu | swish | silu.")
  p.add_argument("--depth", type=int, default=None, help="WRN depth (arch 'wrn').")
  p.add_argument("--width", type=int, default=None, help="WRN width (arch 'wrn').")
  p.add_argument("--model_kwargs", default=None, help="Extra model kwargs as a JSON object.")
  p.add_argument("--class_names", default=None,
                 help="File with the teacher's class names, one a line, in label order "
                 "(e.g. an ImageFolder-trained Tiny ImageNet teacher: the sorted wnids).")
  p.add_argument("--allow_pickle", action="store_true",
                 help="Allow torch.load(weights_only=False) (trusted files only).")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """CLI entry point; returns the process exit status (2: bad input, one line on stderr,
  :mod:`kdrobust.cli`)."""
  return cli.run(_main, argv)


def _check_args(args) -> dict[str, Any]:
  """Every flag and path before torch is imported; returns the parsed ``--model_kwargs``."""
  from kdrobust import models  # pylint: disable=g-import-not-at-top
  from kdrobust.models.layers import DATASET_STATS  # pylint: disable=g-import-not-at-top
  if args.arch not in models.available():
    raise cli.UserError(f"Unknown --arch {args.arch!r}{_arch_did_you_mean(args.arch)}",
                        f"valid: {', '.join(models.available())}")
  if not os.path.isfile(args.input):
    raise cli.UserError(f"--input {args.input} "
                        + ("is a directory" if os.path.isdir(args.input) else "does not exist"),
                        "Pass the PyTorch .pt/.pth file")
  if os.path.exists(args.output) and not os.path.isdir(args.output):
    raise cli.UserError(f"--output {args.output} is a file", "Pass a directory")
  if args.num_classes is not None and args.num_classes < 1:
    raise cli.UserError(f"--num_classes must be >= 1, got {args.num_classes}",
                        "or leave it out (read from the classifier weight)")
  if args.dataset is not None and args.dataset not in DATASET_STATS:
    raise cli.UserError(f"Unknown --dataset {args.dataset!r} for mean/std",
                        f"valid: {', '.join(sorted(DATASET_STATS))}, or pass --mean/--std")
  for name in ("mean", "std"):
    v = getattr(args, name)
    if v is not None and len(v) not in (1, 3):
      raise cli.UserError(f"--{name} takes 1 or 3 values (per channel), got {len(v)}")
  if args.std is not None and any(not x > 0 for x in args.std):
    raise cli.UserError(f"--std must be > 0, got {args.std}")
  if args.class_names and not os.path.isfile(args.class_names):
    raise cli.UserError(f"--class_names {args.class_names} does not exist",
                        "Pass a text file with one class name a line")
  if not args.model_kwargs:
    return {}
  try:
    kw = json.loads(args.model_kwargs)
  except ValueError as e:
    raise cli.UserError(f"--model_kwargs is not valid JSON ({e})",
                        "Pass a JSON object, e.g. --model_kwargs '{\"depth\": 10}'") from None
  if not isinstance(kw, dict):
    raise cli.UserError(f"--model_kwargs must be a JSON object, got {type(kw).__name__}",
                        "e.g. --model_kwargs '{\"depth\": 10}'")
  return kw


def _arch_did_you_mean(name: str) -> str:
  """"; did you mean 'x'?" for the closest registered model name, or ""."""
  from kdrobust import config_lib  # pylint: disable=g-import-not-at-top
  from kdrobust import models  # pylint: disable=g-import-not-at-top
  return config_lib.did_you_mean(name, models.available(), prefix="; did you mean ")


def _main(argv: Sequence[str]) -> int:
  args = _parse(argv)
  kw: dict[str, Any] = _model_kw_from_json(_check_args(args))
  for name in ("variant", "activation", "depth", "width"):
    if getattr(args, name) is not None:
      kw[name] = getattr(args, name)
  if args.dataset is not None:
    if args.mean is not None or args.std is not None:
      raise cli.UserError("Give either --dataset or --mean/--std, not both.")
    from kdrobust.models.layers import DATASET_STATS  # pylint: disable=g-import-not-at-top
    kw["mean"], kw["std"] = DATASET_STATS[args.dataset]
  elif (args.mean is None) != (args.std is None):
    raise cli.UserError("--mean and --std go together.")
  elif args.mean is not None:
    kw["mean"], kw["std"] = tuple(args.mean), tuple(args.std)
  names = None
  if args.class_names:
    with open(args.class_names) as f:
      names = [line.strip() for line in f if line.strip()]
  # A failed conversion (torch_io.ConversionError, a ValueError) is one line, exit 2.
  meta = convert_file(args.input, args.output, args.arch, args.num_classes,
                      allow_pickle=args.allow_pickle, class_names=names, **kw)
  print(f"Wrote {os.path.join(args.output, VARIABLES_FILE)} ({meta['num_params']:,} params, "
        f"{meta['num_classes']} classes, layout {meta['layout']}, normalisation from "
        f"{meta['normalization_source']}"
        + (f", dropped {len(meta['dropped_keys'])} unused keys" if meta["dropped_keys"] else "")
        + ").")
  return 0


if __name__ == "__main__":
  sys.exit(main())

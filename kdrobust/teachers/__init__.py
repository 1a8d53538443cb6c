"""Frozen teachers: load, check against the data, evaluate.

A teacher is data, not state: its variables are never in the optimizer, never
updated, never checkpointed with the student; it always runs in inference mode
(:func:`kdrobust.train_step.teacher_logits_fn`) and is replicated across
devices. Sources (``config.teachers.<name>.path``):

* a kdrobust run directory (its best checkpoint by robust accuracy, else the
  latest; ``which='latest'`` or a step number to choose);
* a converted-teacher directory written by ``python -m kdrobust.teachers.convert``
  (holds ``teacher.json``);
* a PyTorch ``.pt``/``.pth`` state_dict in a RobustBench layout, converted on
  the fly (``model`` names the architecture, ``kwargs`` its options).

A teacher whose number of classes or input shape does not fit the data is
refused with a clear error before any training compute, and so is one that
records its class names in another order than the dataset's
(:func:`check_compatible`; a teacher that records none is not checked).

Compute dtype (``config.teachers.<name>.dtype``, :func:`resolve_dtype`):
``'auto'`` (the default) runs a frozen teacher in bfloat16 on GPUs and TPUs,
where its forwards and input gradients (about 90 % of a distillation step's
FLOPs with a WRN-34-10 teacher) then use the bf16 tensor cores, and in
float32 on CPU, where XLA's bf16 convolutions are slower than float32 ones.
Parameters stay float32 and the logits are float32 (the models cast them;
:func:`kdrobust.train_step.teacher_logits_fn` again). ``'float32'`` or
``'bfloat16'`` force a choice. The resolved dtype is ``Teacher.dtype`` and
is logged. Agreement of a converted teacher's bf16 logits with its float32
ones on real CIFAR-10 images: ``tests/teachers_dtype_test.py`` (argmax and
KL bounds stated there).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class TeacherError(ValueError):
  """A teacher cannot be used with this run."""


TEACHER_DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(dtype: str = "auto", backend: str | None = None) -> str:
  """``'auto'``: ``'bfloat16'`` on GPU/TPU, ``'float32'`` on CPU; else ``dtype`` itself.

  ``backend`` defaults to ``jax.default_backend()``. An unknown name raises a
  one-line :class:`TeacherError` listing the valid ones.
  """
  if dtype not in TEACHER_DTYPES:
    raise TeacherError(f"Unknown teacher dtype {dtype!r}; valid: {', '.join(TEACHER_DTYPES)}.")
  if dtype != "auto":
    return dtype
  backend = backend or jax.default_backend()
  return "float32" if backend == "cpu" else "bfloat16"


@dataclasses.dataclass(frozen=True)
class Teacher:
  name: str
  module: Any  # flax.linen.Module
  variables: Any
  num_classes: int
  source: str
  dtype: str = "float32"  # the resolved compute dtype (resolve_dtype)


def _kind(path: str) -> str:
  if not path:
    raise TeacherError("Teacher path is empty: set config.teachers.<name>.path.")
  if not os.path.exists(path):
    raise TeacherError(f"Teacher path {path!r} does not exist.")
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, "model.json")):
      return "run"
    if os.path.exists(os.path.join(path, "teacher.json")):
      return "converted"
    raise TeacherError(f"{path!r} is neither a kdrobust run directory (model.json) nor a "
                       "converted teacher (teacher.json).")
  if path.endswith((".pt", ".pth")):
    return "torch"
  raise TeacherError(f"Unsupported teacher file {path!r}: expected a kdrobust run directory, "
                     "a converted-teacher directory or a PyTorch .pt/.pth state_dict.")


def declared_num_classes(tc) -> int | None:
  """Number of classes a teacher declares without loading weights (None: unknown)."""
  kind = _kind(tc.path)
  if kind == "run":
    with open(os.path.join(tc.path, "model.json")) as f:
      return int(json.load(f)["num_classes"])
  if kind == "converted":
    with open(os.path.join(tc.path, "teacher.json")) as f:
      return int(json.load(f)["num_classes"])
  return int(tc.num_classes) or None


def _names(value, where: str) -> tuple[str, ...] | None:
  """A class-name list, or the lines of the file a string names; None if empty."""
  if not value:
    return None
  if isinstance(value, str):
    if not os.path.isfile(value):
      raise TeacherError(f"{where}: class-names file {value!r} does not exist.")
    with open(value) as f:
      value = [line.strip() for line in f if line.strip()]
  return tuple(str(v) for v in value) or None


def declared_class_names(tc) -> tuple[str, ...] | None:
  """Class names, in label order, a teacher records (None: it records none).

  * a kdrobust run: ``model.json``'s ``class_names`` (the prepared dataset's
    ClassLabel names at training time);
  * a converted teacher: ``teacher.json``'s ``class_names`` (``convert
    --class_names FILE``);
  * a ``.pt`` file: ``config.teachers.<name>.class_names`` if the entry has
    one (a list, or a file with one name per line).
  """
  kind = _kind(tc.path)
  if kind in ("run", "converted"):
    meta = "model.json" if kind == "run" else "teacher.json"
    with open(os.path.join(tc.path, meta)) as f:
      return _names(json.load(f).get("class_names"), os.path.join(tc.path, meta))
  return _names(tc.get("class_names"), f"teacher {tc.path!r}")


def _order_kind(names) -> str:
  return "sorted" if list(names) == sorted(names) else "not sorted"


def check_class_order(name: str, tc, info) -> None:
  """Refuse a teacher whose recorded class order differs from the dataset's.

  Label ``k`` must mean the same class for teacher and student, else the
  teacher's soft labels are scrambled (e.g. a Tiny ImageNet teacher trained
  with torchvision's ``ImageFolder``, labels = sorted wnids, on data labelled
  in ``wnids.txt`` order). Compares the names the teacher records
  (:func:`declared_class_names`) with ``info.class_names``; skipped where
  either records none. A run teacher trained on ``tiny_imagenet`` before the
  dataset recorded class names (1.0.0: ``wnids.txt`` order) gets a warning.
  """
  want = getattr(info, "class_names", None)
  have = declared_class_names(tc)
  if have is None:
    if want and _kind(tc.path) == "run":
      with open(os.path.join(tc.path, "model.json")) as f:
        dataset = json.load(f).get("dataset")
      if dataset == "tiny_imagenet":
        logging.warning(
            "Teacher %r (%s) records no class names: if it was trained on tiny_imagenet "
            "1.0.0 its labels follow wnids.txt order, while %r numbers the classes %s. "
            "Use data.name='tiny_imagenet_wnids' for wnids.txt order.",
            name, tc.path, info.name, _order_kind(want))
    return
  if not want or tuple(have) == tuple(want):
    return
  k = next((i for i, (a, b) in enumerate(zip(have, want)) if a != b), min(len(have), len(want)))
  at = lambda names: repr(names[k]) if k < len(names) else "(none)"
  same_set = sorted(have) == sorted(want)
  raise TeacherError(
      f"Teacher {name!r} ({tc.path}) records another class order than dataset {info.name!r}: "
      f"label {k} is {at(have)} for the teacher ({_order_kind(have)}) but {at(want)} for the "
      f"dataset ({_order_kind(want)})"
      + ("; same classes, other order" if same_set else "; the class sets differ")
      + ". Its soft labels would be scrambled. Use a dataset numbered in the teacher's order "
      "(Tiny ImageNet: data.name='tiny_imagenet' = sorted wnids, torchvision ImageFolder's; "
      "'tiny_imagenet_wnids' = wnids.txt order) or a teacher trained on this order.")


def check_compatible(name: str, tc, info) -> None:
  """Cheap pre-compute check of teacher ``name`` against the dataset ``info``.

  The compute dtype's name, number of classes, then class order (:func:`check_class_order`).
  """
  resolve_dtype(tc.get("dtype", "auto"), backend="cpu")  # a name check only
  n = declared_num_classes(tc)
  if n is not None and n != info.num_classes:
    raise TeacherError(
        f"Teacher {name!r} ({tc.path}) predicts {n} classes but dataset {info.name!r} has "
        f"{info.num_classes}: a teacher must be trained on the student's label set.")
  check_class_order(name, tc, info)


def check_against_data(teacher: Teacher, info) -> None:
  """Refuse a loaded teacher whose outputs do not fit the data's inputs and classes."""
  x = jax.ShapeDtypeStruct((2,) + tuple(info.image_shape), jnp.float32)
  try:
    out = jax.eval_shape(lambda v, x: teacher.module.apply(v, x, train=False),
                         teacher.variables, x)
  except Exception as e:  # pylint: disable=broad-except
    raise TeacherError(f"Teacher {teacher.name!r} cannot run on {info.name!r} inputs of shape "
                       f"{tuple(info.image_shape)}: {type(e).__name__}: {e}") from e
  if out.shape != (2, info.num_classes):
    raise TeacherError(f"Teacher {teacher.name!r} outputs {out.shape[-1]} logits but dataset "
                       f"{info.name!r} has {info.num_classes} classes.")


def load(name: str, tc, mesh=None) -> Teacher:
  """Load teacher ``name`` from its config entry (see the module docstring).

  ``mesh``: the variables are placed replicated on it (``P()``), in any
  process count (kdrobust.train passes its mesh; every process calls this):
  a run's checkpoint is restored straight onto that sharding by Orbax,
  converted and ``.pt`` weights are read on the host and placed. Without a
  mesh: a run's on this process's first device (``jax.local_devices()[0]``),
  the others' as read (uncommitted).
  """
  kind = _kind(tc.path)
  dtype = resolve_dtype(tc.get("dtype", "auto"))
  logging.info("Teacher %r computes in %s (config dtype %r, backend %s).", name, dtype,
               tc.get("dtype", "auto"), jax.default_backend())
  if mesh is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  else:
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  t = _load(name, tc, kind, dtype, sharding)
  if mesh is not None and kind != "run":  # host arrays -> placed (a run's restore placed them)
    t = dataclasses.replace(t, variables=jax.device_put(
        jax.tree.map(np.asarray, t.variables), sharding))
  return dataclasses.replace(t, dtype=dtype)


def _load(name: str, tc, kind: str, dtype: str, sharding) -> Teacher:
  if kind == "run":
    return _load_run(name, tc, dtype, sharding)
  if kind == "converted":
    from kdrobust.teachers import convert  # pylint: disable=g-import-not-at-top
    module, variables = convert.load_converted(tc.path, dtype=dtype)
    with open(os.path.join(tc.path, "teacher.json")) as f:
      n = int(json.load(f)["num_classes"])
    return Teacher(name, module, variables, n, f"converted:{os.path.abspath(tc.path)}")
  from kdrobust import models  # pylint: disable=g-import-not-at-top
  from kdrobust.teachers import torch_io  # pylint: disable=g-import-not-at-top
  if not tc.model:
    raise TeacherError(f"Teacher {name!r} is a PyTorch file: set config.teachers.{name}.model "
                       f"to its architecture (one of {', '.join(models.available())}).")
  kw = dict(tc.get("kwargs", {}) or {})
  sd = torch_io.load_torch_state_dict(tc.path)
  # Normalisation buffers in the state_dict (DeepMind models) are adopted.
  res = torch_io.convert_state_dict(sd, tc.model, int(tc.num_classes) or None, **kw)
  module = models.get(tc.model, num_classes=res.num_classes, dtype=dtype, **res.model_kw)
  return Teacher(name, module, res.variables, res.num_classes, f"torch:{os.path.abspath(tc.path)}")


def _load_run(name: str, tc, dtype: str, sharding) -> Teacher:
  import ml_collections as mlc  # pylint: disable=g-import-not-at-top
  from kdrobust import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from kdrobust import train  # pylint: disable=g-import-not-at-top
  with open(os.path.join(tc.path, "model.json")) as f:
    spec = json.load(f)
  ckpt = ckpt_lib.Checkpointer(os.path.join(tc.path, "checkpoints"), enable_async=False)
  which = tc.get("which", "best")
  if which == "best":
    step = ckpt.best_step() or ckpt.latest_intact_step()  # never a corrupt one
  elif which == "latest":
    step = ckpt.latest_intact_step()
  else:
    step = int(which)
  if step is None:
    raise TeacherError(f"Teacher run {tc.path!r} has no checkpoint yet.")
  try:
    raw = ckpt.restore_raw_placed(step, sharding)  # any device count at save time
  finally:
    ckpt.close()
  model_cfg = mlc.ConfigDict(spec["model"])
  model_cfg.dtype = dtype
  module = train.build_model(model_cfg, spec["num_classes"], spec["dataset"])
  # The model the run evaluated and ranked: its SWA/EMA average when it took one
  # (config.weight_averaging), else the student as trained.
  from kdrobust import weight_averaging as wa_lib  # pylint: disable=g-import-not-at-top
  variables, used = wa_lib.select_variables(raw, "auto")
  return Teacher(name, module, variables, int(spec["num_classes"]),
                 f"run:{os.path.abspath(tc.path)}@{step}"
                 + (" (averaged weights)" if used == "averaged" else ""))

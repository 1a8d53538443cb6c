"""PyTorch state_dict <-> Flax variables for the kdrobust model zoo.

Torch is optional: it is imported only by :func:`load_torch_state_dict` (and
only to read a ``.pt``/``.pth`` file); the conversion itself works on numpy
arrays (torch tensors are accepted and converted).

Supported layouts (``arch`` is a ``kdrobust.models`` registry name; the layout
follows from ``arch`` and the ``variant`` model kwarg):

==================================  ===========================================
arch / variant                      PyTorch source layout
==================================  ===========================================
``resnet18/34/50``                  kuangliu / RobustBench ``ResNet`` (``linear``,
                                    ``shortcut.0/1``)
``resnet{18,34,50}_imagenet``       torchvision ``ResNet`` (``fc``, ``downsample.0/1``)
``preact_resnet18`` standard        RobustBench ``PreActResNet(PreActBlockV2,
                                    bn_before_fc=True)``
``preact_resnet18`` kuangliu/wong   kuangliu ``PreActResNet`` / RobustBench
                                    ``PreActResNet(PreActBlock)``
``preact_resnet18`` dm              RobustBench ``DMPreActResNet``
``wrn*`` standard                   RobustBench ``WideResNet`` (TRADES code; an
                                    unused ``sub_block1`` is checked and dropped)
``wrn*`` dm                         RobustBench ``DMWideResNet``
``mobilenet_v2``                    kuangliu ``MobileNetV2``
==================================  ===========================================

Mapping rules: conv ``weight`` (out, in/groups, kh, kw) -> ``kernel``
(kh, kw, in/groups, out); linear ``weight`` (out, in) -> ``kernel`` (in, out);
BN ``weight``/``bias``/``running_mean``/``running_var`` -> ``scale``/``bias``
and ``batch_stats`` ``mean``/``var``; ``num_batches_tracked`` is ignored.
Normalisation buffers (``mean``/``std`` of DeepMind models, ``mu``/``sigma`` of
RobustBench wrappers) become the model's ``mean``/``std`` kwargs.

The conversion is strict: every Flax leaf must be found with the right shape
and every state_dict entry must be used (or be one of the ignorable entries
above), otherwise :class:`ConversionError` lists the missing, unexpected and
mis-shaped keys.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from kdrobust import models

# Top-level wrappers around a state_dict, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "state", "last")
# Prefixes stripped from every key that has them (DataParallel, torch.compile).
_STRIP_PREFIXES = ("module.", "_orig_mod.")
_NORM_BUFFERS = (("mean", "std"), ("mu", "sigma"))
_MAX_LISTED = 20


class ConversionError(ValueError):
  """The state_dict does not match the requested architecture."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """How Flax module paths map to PyTorch key prefixes for one source layout."""
  name: str
  rules: tuple[tuple[str, str], ...]
  head: str  # torch name of the classifier layer.
  droppable_prefix: str | None = None  # unused torch submodule (checked, then dropped).
  droppable_twin: str | None = None  # the used submodule it must mirror.


_SHORTCUT_SEQ = ((r"/shortcut_conv$", "/shortcut.0"), (r"/shortcut_bn$", "/shortcut.1"))
LAYOUTS: dict[str, Layout] = {
    "kuangliu_resnet": Layout(
        "kuangliu_resnet",
        ((r"^layer(\d+)_(\d+)/", r"layer\1.\2/"),) + _SHORTCUT_SEQ + ((r"^head$", "linear"),),
        "linear"),
    "torchvision_resnet": Layout(
        "torchvision_resnet",
        ((r"^layer(\d+)_(\d+)/", r"layer\1.\2/"), (r"/shortcut_conv$", "/downsample.0"),
         (r"/shortcut_bn$", "/downsample.1"), (r"^head$", "fc")),
        "fc"),
    "preact_resnet": Layout(
        "preact_resnet",
        ((r"^layer(\d+)_(\d+)/", r"layer\1.\2/"), (r"/shortcut_conv$", "/shortcut.0"),
         (r"^head$", "linear")),
        "linear"),
    "dm_preact_resnet": Layout(
        "dm_preact_resnet",
        ((r"^layer_(\d+)_(\d+)/", r"layer_\1.\2/"), (r"^head$", "logits")),
        "logits"),
    "wide_resnet": Layout(
        "wide_resnet",
        ((r"^block(\d+)_(\d+)/", r"block\1.layer.\2/"), (r"^head$", "fc")),
        "fc", droppable_prefix="sub_block1.", droppable_twin="block1."),
    "dm_wide_resnet": Layout(
        "dm_wide_resnet",
        ((r"^layer_(\d+)_block_(\d+)/", r"layer.\1.block.\2/"), (r"^head$", "logits")),
        "logits"),
    "kuangliu_mobilenet_v2": Layout(
        "kuangliu_mobilenet_v2",
        ((r"^layers_(\d+)/", r"layers.\1/"),) + _SHORTCUT_SEQ + ((r"^head$", "linear"),),
        "linear"),
}


def layout_for(arch: str, model_kw: Mapping[str, Any] | None = None) -> Layout:
  """The PyTorch source layout of registry model ``arch`` with kwargs ``model_kw``."""
  model_kw = dict(model_kw or {})
  variant = model_kw.get("variant", "standard")
  if re.fullmatch(r"resnet(18|34|50)", arch):
    return LAYOUTS["kuangliu_resnet"]
  if re.fullmatch(r"resnet(18|34|50)_imagenet", arch):
    return LAYOUTS["torchvision_resnet"]
  if arch == "preact_resnet18":
    return LAYOUTS["dm_preact_resnet" if variant == "dm" else "preact_resnet"]
  if arch == "wrn" or re.fullmatch(r"wrn\d+_\d+", arch):
    return LAYOUTS["dm_wide_resnet" if variant == "dm" else "wide_resnet"]
  if arch == "mobilenet_v2":
    return LAYOUTS["kuangliu_mobilenet_v2"]
  raise ConversionError(
      f"No PyTorch layout for arch {arch!r}. Convertible: resnet18/34/50, "
      "resnet18/34/50_imagenet, preact_resnet18, wrn, wrn28_10, wrn34_10, wrn34_20, "
      "wrn70_16, mobilenet_v2.")


# --------------------------------------------------------------------------
# Reading files.
# --------------------------------------------------------------------------

def _is_tensor(v) -> bool:
  return hasattr(v, "shape") and hasattr(v, "dtype")


def to_numpy(v) -> np.ndarray:
  """A torch tensor or array-like as a numpy array (bf16/fp16 widened to float32)."""
  if hasattr(v, "detach"):  # torch.Tensor, without importing torch.
    v = v.detach().cpu()
    if v.is_floating_point():
      v = v.float()
    return v.numpy()
  return np.asarray(v)


def unwrap_state_dict(obj: Any) -> dict[str, Any]:
  """Find the state_dict inside a loaded checkpoint object and clean its keys.

  Handles ``{'state_dict': ...}`` / ``{'model_state_dict': ...}`` /
  ``{'model': ...}`` (also ``'net'``, ``'state'``, RobustBench's ``'last'``),
  a pickled ``nn.Module``, ``module.`` (DataParallel) and ``_orig_mod.``
  (torch.compile) key prefixes, and a ``model.`` prefix shared by all keys.
  Non-tensor entries next to the tensors (epoch counters, ...) are dropped.
  """
  for _ in range(4):
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
      obj = obj.state_dict()
      continue
    if not isinstance(obj, Mapping):
      raise ConversionError(f"Checkpoint holds a {type(obj).__name__}, not a state_dict.")
    if obj and all(_is_tensor(v) for v in obj.values()):
      break
    inner = next((obj[k] for k in _WRAPPER_KEYS
                  if k in obj and (isinstance(obj[k], Mapping) or hasattr(obj[k], "state_dict"))),
                 None)
    if inner is None:
      tensors = {k: v for k, v in obj.items() if _is_tensor(v)}
      if not tensors:
        raise ConversionError(
            f"No state_dict found in the checkpoint (top-level keys: {sorted(map(str, obj))[:20]}).")
      obj = tensors
      break
    obj = inner
  sd = {}
  for k, v in obj.items():
    if not _is_tensor(v):
      continue
    for p in _STRIP_PREFIXES:
      while k.startswith(p):
        k = k[len(p):]
    sd[k] = v
  if sd and all(k.startswith("model.") for k in sd):
    sd = {k[len("model."):]: v for k, v in sd.items()}
  return sd


def load_torch_state_dict(path: str, *, allow_pickle: bool = False) -> dict[str, np.ndarray]:
  """Load a PyTorch ``.pt``/``.pth`` checkpoint as a flat ``{key: np.ndarray}`` dict.

  Uses ``torch.load(..., weights_only=True)``; checkpoints that pickle other
  Python objects (argparse namespaces, whole modules) need
  ``allow_pickle=True``, which executes the file's pickle: only for trusted
  files. See :func:`unwrap_state_dict` for the wrappers and prefixes handled.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("Reading PyTorch checkpoints needs torch (pip install torch; "
                      "CPU wheels suffice). Converted teachers load without it.") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    text = str(e)
    # Only a readable pickle of extra Python objects earns the --allow_pickle hint; a
    # corrupt or truncated file (zip reader errors, unknown pickle opcodes) does not.
    pickles_objects = "global" in text.lower() and "Unsupported operand" not in text
    if not pickles_objects:
      detail = (text.rsplit("error:", 1)[-1] if "error:" in text else text).strip()
      detail = detail.splitlines()[0].split(". ")[0][:120] if detail else ""
      raise ConversionError(
          f"{path} is not a readable PyTorch checkpoint: corrupt, truncated or not written by "
          f"torch.save ({type(e).__name__}: {detail}). Download or copy it again.") from e
    if not allow_pickle:
      raise ConversionError(
          f"torch.load({path!r}, weights_only=True) failed ({type(e).__name__}: "
          f"{text.splitlines()[0] if text else ''}). If the file is trusted and pickles "
          "extra Python objects, pass allow_pickle=True (--allow_pickle).") from e
    obj = torch.load(path, map_location="cpu", weights_only=False)
  return {k: to_numpy(v) for k, v in unwrap_state_dict(obj).items()}


# --------------------------------------------------------------------------
# Conversion.
# --------------------------------------------------------------------------

def normalization_from_state_dict(
    state_dict: Mapping[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
  """``(mean, std)`` from ``mean``/``std`` or ``mu``/``sigma`` buffers, or None."""
  for m, s in _NORM_BUFFERS:
    if m in state_dict and s in state_dict:
      mean = tuple(float(x) for x in to_numpy(state_dict[m]).reshape(-1))
      std = tuple(float(x) for x in to_numpy(state_dict[s]).reshape(-1))
      return mean, std
  return None


def _torch_prefix(layout: Layout, module_path: tuple[str, ...]) -> str:
  s = "/".join(module_path)
  for pat, rep in layout.rules:
    s = re.sub(pat, rep, s)
  return s.replace("/", ".")


def _torch_leaf(collection: str, leaf: str) -> str:
  if collection == "batch_stats":
    return {"mean": "running_mean", "var": "running_var"}[leaf]
  return {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]


def _to_flax_array(leaf: str, collection: str, w: np.ndarray) -> np.ndarray:
  if collection == "params" and leaf == "kernel":
    if w.ndim == 4:
      return np.transpose(w, (2, 3, 1, 0))
    if w.ndim == 2:
      return w.T
  return w


def _to_torch_array(leaf: str, collection: str, w: np.ndarray) -> np.ndarray:
  if collection == "params" and leaf == "kernel":
    if w.ndim == 4:
      return np.transpose(w, (3, 2, 0, 1))
    if w.ndim == 2:
      return w.T
  return w


def abstract_variables(module, image_size: int = 32, channels: int = 3):
  """Shapes/dtypes of ``module``'s variables (``jax.eval_shape``, no real init)."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def _fmt(keys, title):
  keys = sorted(keys)
  more = f" ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
  return f"  {title} ({len(keys)}): " + ", ".join(keys[:_MAX_LISTED]) + more


@dataclasses.dataclass
class ConversionResult:
  """What :func:`convert_state_dict` produced."""
  module: Any
  variables: dict
  model_kw: dict
  num_classes: int
  dropped_keys: list[str]
  normalization_source: str  # 'state_dict', 'kwargs' or 'none'.


def convert_state_dict(state_dict: Mapping[str, Any], arch: str, num_classes: int | None,
                       *, adopt_normalization: bool = True, **model_kw) -> ConversionResult:
  """Convert a (cleaned or raw) PyTorch state_dict into Flax variables for ``arch``.

  ``num_classes=None`` reads it from the classifier weight. If the state_dict
  holds normalisation buffers and ``mean``/``std`` are not in ``model_kw``,
  they are adopted (``adopt_normalization=True``) or an error is raised; if
  both are given they must agree (to 1e-6).
  """
  sd = {k: to_numpy(v) for k, v in unwrap_state_dict(dict(state_dict)).items()}
  if model_kw.get("head_slots", 0):
    raise ConversionError("PyTorch teachers have no DARHT slots: convert with head_slots=0.")
  layout = layout_for(arch, model_kw)
  head_w = sd.get(f"{layout.head}.weight")
  if num_classes is None:
    if head_w is None:
      raise ConversionError(f"num_classes not given and no {layout.head}.weight in the state_dict.")
    num_classes = int(head_w.shape[0])

  # Normalisation buffers.
  norm = normalization_from_state_dict(sd)
  consumed = set()
  source = "kwargs" if model_kw.get("mean") is not None else "none"
  if norm is not None:
    for m, s in _NORM_BUFFERS:
      if m in sd and s in sd:
        consumed |= {m, s}
        break
    if "mean" not in model_kw and "std" not in model_kw:
      if not adopt_normalization:
        raise ConversionError(
            f"The state_dict carries normalisation buffers mean={norm[0]}, std={norm[1]}: pass "
            "mean=..., std=... (see normalization_from_state_dict) so the Flax model applies them.")
      model_kw["mean"], model_kw["std"] = norm
      source = "state_dict"
    else:
      given = (model_kw.get("mean"), model_kw.get("std"))
      if given[0] is None or given[1] is None or not (
          np.allclose(given[0], norm[0], atol=1e-6) and np.allclose(given[1], norm[1], atol=1e-6)):
        raise ConversionError(
            f"mean/std {given} disagree with the state_dict's normalisation buffers "
            f"mean={norm[0]}, std={norm[1]}.")
      model_kw["mean"], model_kw["std"] = tuple(given[0]), tuple(given[1])
      source = "state_dict"
  if model_kw.get("mean") is not None:
    model_kw["mean"] = tuple(float(v) for v in model_kw["mean"])
    model_kw["std"] = tuple(float(v) for v in model_kw["std"])

  module = models.get(arch, num_classes=num_classes, **model_kw)
  abstract = abstract_variables(module)
  flat = traverse_util.flatten_dict(dict(abstract))
  out, missing, bad_shape = {}, [], []
  for path, a in flat.items():
    collection, *mods, leaf = path
    key = f"{_torch_prefix(layout, tuple(mods))}.{_torch_leaf(collection, leaf)}"
    if key not in sd:
      missing.append(key)
      continue
    consumed.add(key)
    w = _to_flax_array(leaf, collection, sd[key])
    if tuple(w.shape) != tuple(a.shape):
      bad_shape.append(f"{key}: torch {tuple(sd[key].shape)} -> flax {tuple(w.shape)}, "
                       f"expected {tuple(a.shape)} at {'/'.join(path)}")
      continue
    out[path] = np.asarray(w, dtype=a.dtype)

  dropped, unexpected = [], []
  for k in sd:
    if k in consumed:
      continue
    if k.endswith("num_batches_tracked"):
      continue
    if layout.droppable_prefix and k.startswith(layout.droppable_prefix):
      twin = layout.droppable_twin + k[len(layout.droppable_prefix):]
      if twin in sd and sd[twin].shape == sd[k].shape:
        dropped.append(k)
        continue
    unexpected.append(k)
  if missing or unexpected or bad_shape:
    lines = [f"State dict does not match {arch} ({layout.name} layout, "
             f"kwargs {model_kw}, num_classes {num_classes}):"]
    if missing:
      lines.append(_fmt(missing, "missing keys"))
    if unexpected:
      lines.append(_fmt(unexpected, "unexpected keys"))
    if bad_shape:
      lines.append(_fmt(bad_shape, "shape mismatches"))
    raise ConversionError("\n".join(lines))
  variables = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in out.items()})
  return ConversionResult(module, variables, dict(model_kw), num_classes, sorted(dropped), source)


def torch_to_flax(state_dict: Mapping[str, Any], arch: str, num_classes: int | None,
                  **model_kw) -> dict:
  """Strictly convert ``state_dict`` into Flax ``variables`` for registry model ``arch``.

  ``model_kw`` are the model kwargs the Flax module will be built with
  (``variant``, ``depth``/``width`` for ``wrn``, ``activation``, ``mean``/``std``).
  A state_dict with normalisation buffers needs matching ``mean``/``std`` here
  (otherwise the returned variables would silently go with an un-normalised
  model); :func:`convert_state_dict` adopts them instead and also returns the
  module and the final kwargs.
  """
  return convert_state_dict(state_dict, arch, num_classes, adopt_normalization=False,
                            **model_kw).variables


def flax_to_torch(variables: Mapping[str, Any], arch: str, **model_kw) -> dict[str, np.ndarray]:
  """Inverse mapping: Flax ``variables`` -> a numpy state_dict in the PyTorch layout.

  For the Flax -> PyTorch-twin parity checks (docs/evaluation.md). BN
  ``num_batches_tracked`` and normalisation buffers are not produced.
  """
  layout = layout_for(arch, model_kw)
  sd = {}
  for path, w in traverse_util.flatten_dict(dict(variables)).items():
    collection, *mods, leaf = path
    if collection not in ("params", "batch_stats"):
      continue
    key = f"{_torch_prefix(layout, tuple(mods))}.{_torch_leaf(collection, leaf)}"
    sd[key] = _to_torch_array(leaf, collection, np.asarray(w))
  return sd


def expected_torch_shapes(arch: str, num_classes: int, **model_kw) -> dict[str, tuple[int, ...]]:
  """``{torch key: shape}`` a state_dict must provide for ``arch`` (no weights built).

  Excludes ``num_batches_tracked``, normalisation buffers and droppable
  submodules. Handy to check a layout against a model built on torch's
  ``meta`` device, or to see what a failing checkpoint should contain.
  """
  layout = layout_for(arch, model_kw)
  module = models.get(arch, num_classes=num_classes, **model_kw)
  out = {}
  for path, a in traverse_util.flatten_dict(dict(abstract_variables(module))).items():
    collection, *mods, leaf = path
    key = f"{_torch_prefix(layout, tuple(mods))}.{_torch_leaf(collection, leaf)}"
    shape = tuple(a.shape)
    if collection == "params" and leaf == "kernel":
      shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    out[key] = shape
  return out

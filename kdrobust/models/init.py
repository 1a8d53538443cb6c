"""Parameter initialisation schemes: Flax's defaults or PyTorch's (``config.model.init``).

The official students of the robust-distillation papers (ResNet-18, MobileNetV2,
PreActResNet-18 of kuangliu/pytorch-cifar, DARHT's ``*_std`` slot-head models)
are ``torch.nn`` modules that keep PyTorch's default initialisation
(docs/fidelity.md erratum E12). Flax's default (``lecun_normal``: variance ``1/fan_in``)
has 3x the weight variance of PyTorch's (``1/(3 fan_in)``), and Flax biases start
at zero. ``init='torch'`` re-draws a Flax parameter tree as ``torch.nn`` would:

* ``nn.Conv2d`` / ``nn.Linear`` weight: ``kaiming_uniform_(w, a=sqrt(5))``, i.e.
  gain ``sqrt(2 / (1 + a^2)) = sqrt(1/3)``, ``bound = gain * sqrt(3 / fan_in)``::

      w ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)),   Var(w) = 1 / (3 fan_in)

  with ``fan_in = (in_channels / groups) * kh * kw`` (conv) or ``in_features``
  (linear) [torch 2.13: nn/modules/conv.py ``_ConvNd.reset_parameters``,
  nn/modules/linear.py ``Linear.reset_parameters``, nn/init.py
  ``_calculate_fan_in_and_fan_out``, ``kaiming_uniform_``].
* their bias: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (same ``fan_in``).
* ``BatchNorm`` / ``LayerNorm``: weight 1, bias 0 -- Flax's defaults already,
  left untouched.

In Flax a conv kernel is HWIO with ``I = in_channels / groups`` already (depthwise
convs included) and a dense kernel is ``(in, out)``, so for both
``fan_in = prod(kernel.shape[:-1])``. A kernel of any other rank has no single
layout (a ``DenseGeneral`` kernel and a 1-D conv kernel are both 3-D), so it is
refused with its path instead of guessed.

**Transformers.** Flax's ``MultiHeadDotProductAttention`` (the ViT of the zoo) is
initialised as ``torch.nn.MultiheadAttention(E, H)`` initialises itself
[torch 2.13: nn/modules/activation.py ``MultiheadAttention._reset_parameters``]:
the packed ``in_proj_weight`` of shape ``(3E, E)`` gets ``xavier_uniform_``, so
each of the query/key/value kernels is ``U(-b, b)`` with
``b = sqrt(6 / (E + 3E))`` (separate ``q/k/v_proj_weight`` with
``b = sqrt(6 / (kdim + E))`` when the input widths differ from ``E``), every
projection bias is 0, and the output projection is a default ``nn.Linear``
weight (fan_in ``E``) with bias 0. So for a ViT, ``'torch'`` means "the same
network built from ``torch.nn.Conv2d``/``Linear``/``MultiheadAttention``/
``LayerNorm`` with no custom init". It is *not* timm's or torchvision's ViT init
(truncated normals, zero heads), and the class token and position embeddings,
which are not ``torch.nn`` layers, keep the model's own initialisers. No paper's
official student is a ViT (DARHT's ViTs are pretrained teachers).

**WideResNets: ``init='wrn'``.** The official WideResNets (TRADES' ``wideresnet.py``
and the copies in ARD, IAD, RSLAD, AdaAD, MTARD, ...) re-initialise themselves after
construction [C:TRADES@6e8e11b:models/wideresnet.py:74-82]: every conv weight
``normal(0, sqrt(2 / (kh * kw * out_channels)))`` (He's fan-out normal), BatchNorm
weight 1 / bias 0, linear bias 0 (the linear weight keeps ``torch.nn``'s default).
``init='wrn'`` draws exactly that, for a WRN trained from scratch as TRADES/PGD-AT
train theirs (the distillation papers' WRNs are pretrained teachers).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

# Valid values of ``config.model.init``.
INITS = ("flax", "torch", "wrn")

# Child names of a Flax ``MultiHeadDotProductAttention`` parameter dict.
_MHA_KEYS = ("query", "key", "value", "out")


def check_init(name: str) -> str:
  """``name`` if it is a valid ``config.model.init``; otherwise a ValueError listing them."""
  if name not in INITS:
    raise ValueError(f"Unknown config.model.init {name!r}; valid: "
                     f"{', '.join(repr(i) for i in INITS)}.")
  return name


def apply_init(name: str, params: Any, key: jax.Array) -> Any:
  """``params`` re-initialised by scheme ``name`` (``'flax'`` returns them unchanged)."""
  name = check_init(name)
  if name == "flax":
    return params
  return torch_default_init(params, key, scheme=name)


def torch_default_init(params: Any, key: jax.Array, scheme: str = "torch") -> Any:
  """``params`` (a Flax params tree) with PyTorch's default initialisation.

  Pure: returns a new tree of the same structure, shapes and dtypes. Every
  ``{'kernel', 'bias'?}`` dict (``nn.Conv``, ``nn.Dense``) is re-drawn from
  ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, ``fan_in = prod(kernel.shape[:-1])``;
  every ``MultiHeadDotProductAttention`` dict as ``torch.nn.MultiheadAttention``
  (module docstring); every other leaf (norm scales and biases, class tokens,
  position embeddings) is returned unchanged. The uniform leaves are slices of
  one flat ``U(0, 1)`` draw laid out in sorted-path order (so the result does
  not depend on dict order), each mapped to ``-b + 2 b u``: one RNG op, which XLA
  compiles ~8x faster on CPU than one draw per leaf (ResNet-18: 7 s vs 56 s).

  ``scheme='wrn'``: the official WideResNets' own re-initialisation instead
  (module docstring): conv kernels from a second flat ``N(0, 1)`` draw scaled
  by ``sqrt(2 / (kh kw out))``, dense biases 0.

  Args:
    params: the ``'params'`` collection of ``model.init(...)`` (a nested dict).
    key: a PRNG key.
    scheme: ``'torch'`` or ``'wrn'``.

  Returns:
    The re-initialised params.

  Raises:
    ValueError: a kernel whose layout is not known (rank other than 2 or 4
      outside an attention block), or a bias that does not match its kernel.
  """
  if scheme not in ("torch", "wrn"):
    raise ValueError(f"Unknown initialisation scheme {scheme!r}; valid: 'torch', 'wrn'.")
  rules: dict[tuple[str, ...], tuple[str, float]] = {}
  _collect(params, (), rules, scheme)
  shapes: dict[tuple[str, ...], tuple[int, ...]] = {}
  _map_with_path(lambda path, leaf: shapes.setdefault(path, tuple(leaf.shape)), params, ())
  offsets, totals = {}, {"uniform": 0, "normal": 0}
  for path in sorted(p for p, (kind, _) in rules.items() if kind in totals):
    kind = rules[path][0]
    offsets[path] = totals[kind]
    totals[kind] += math.prod(shapes[path])
  u = jax.random.uniform(key, (totals["uniform"],), jnp.float32) if totals["uniform"] else None
  z = (jax.random.normal(jax.random.fold_in(key, 1), (totals["normal"],), jnp.float32)
       if totals["normal"] else None)

  def redraw(path, leaf):
    if path not in rules:
      return leaf
    kind, bound = rules[path]
    if kind == "zeros":
      return jnp.zeros_like(leaf)
    o = offsets[path]
    if kind == "normal":
      return (bound * z[o:o + leaf.size].reshape(leaf.shape)).astype(leaf.dtype)
    w = u[o:o + leaf.size].reshape(leaf.shape)
    return (2.0 * bound * w - bound).astype(leaf.dtype)

  return _map_with_path(redraw, params, ())


def _collect(tree: Any, path: tuple[str, ...], rules: dict, scheme: str = "torch") -> None:
  """Fill ``rules[path] = ('uniform', bound) | ('normal', std) | ('zeros', 0.)`` per leaf."""
  if not _is_dict(tree):
    return
  if _is_mha(tree):
    _collect_mha(tree, path, rules)
    return
  if "kernel" in tree and not _is_dict(tree["kernel"]):
    kernel = tree["kernel"]
    where = "/".join(path + ("kernel",))
    extra = sorted(set(tree) - {"kernel", "bias"})
    if extra:
      raise ValueError(f"init='torch': {where} has parameters {extra} next to its kernel; "
                       "only conv/dense layers ({'kernel', 'bias'}) are known.")
    if kernel.ndim not in (2, 4):
      raise ValueError(
          f"init='torch': {where} has shape {tuple(kernel.shape)}; only dense (in, out) and "
          "2-D conv (kh, kw, in/groups, out) kernels have a known fan_in. Add a rule for "
          "this layer to kdrobust/models/init.py.")
    fan_in = math.prod(kernel.shape[:-1])
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    rules[path + ("kernel",)] = ("uniform", bound)
    if scheme == "wrn" and kernel.ndim == 4:  # n = kh * kw * out_channels
      rules[path + ("kernel",)] = ("normal", math.sqrt(2.0 / math.prod(
          (kernel.shape[0], kernel.shape[1], kernel.shape[3]))))
    if "bias" in tree:
      _check_bias(tree["bias"], (kernel.shape[-1],), path)
      rules[path + ("bias",)] = (("zeros", 0.0) if scheme == "wrn" and kernel.ndim == 2
                                 else ("uniform", bound))
    return
  for k in tree:
    _collect(tree[k], path + (str(k),), rules, scheme)


def _collect_mha(tree: Any, path: tuple[str, ...], rules: dict) -> None:
  """``torch.nn.MultiheadAttention._reset_parameters`` on a Flax attention dict."""
  q, k, v, o = (tree[n]["kernel"] for n in _MHA_KEYS)  # (in, H, D) x 3, (H, D, E_out)
  if any(w.ndim != 3 for w in (q, k, v, o)):
    raise ValueError(f"init='torch': {'/'.join(path)} is not a multi-head attention "
                     "block with (in, heads, head_dim) kernels.")
  embed = q.shape[1] * q.shape[2]  # torch's embed_dim = num_heads * head_dim
  packed = q.shape[0] == k.shape[0] == v.shape[0] == embed
  for name, w in (("query", q), ("key", k), ("value", v)):
    # Packed (3E, E): fan_in E, fan_out 3E; separate (E, kdim): fan_in kdim, fan_out E.
    bound = math.sqrt(6.0 / (4 * embed)) if packed else math.sqrt(6.0 / (w.shape[0] + embed))
    rules[path + (name, "kernel")] = ("uniform", bound)
  out_fan_in = o.shape[0] * o.shape[1]
  rules[path + ("out", "kernel")] = ("uniform", 1.0 / math.sqrt(out_fan_in))
  for name in _MHA_KEYS:
    sub = tree[name]
    extra = sorted(set(sub) - {"kernel", "bias"})
    if extra:
      raise ValueError(f"init='torch': {'/'.join(path + (name,))} has unexpected "
                       f"parameters {extra}.")
    if "bias" in sub:
      want = (o.shape[-1],) if name == "out" else tuple(sub["kernel"].shape[1:])
      _check_bias(sub["bias"], want, path + (name,))
      rules[path + (name, "bias")] = ("zeros", 0.0)


def _check_bias(bias, want: tuple[int, ...], path: tuple[str, ...]) -> None:
  if tuple(bias.shape) != tuple(want):
    raise ValueError(f"init='torch': {'/'.join(path + ('bias',))} has shape "
                     f"{tuple(bias.shape)}, expected {tuple(want)} for its kernel.")


def _is_mha(tree: Any) -> bool:
  return all(n in tree and _is_dict(tree[n]) and "kernel" in tree[n] for n in _MHA_KEYS)


def _is_dict(x: Any) -> bool:
  return hasattr(x, "keys") and hasattr(x, "__getitem__")


def _map_with_path(fn, tree: Any, path: tuple[str, ...]) -> Any:
  """``fn(path, leaf)`` over a nested dict, rebuilding it with the same container type."""
  if _is_dict(tree):
    items = {k: _map_with_path(fn, tree[k], path + (str(k),)) for k in tree}
    return items if isinstance(tree, dict) else type(tree)(items)
  return fn(path, tree)

"""Identical networks on both sides: PyTorch twins, converted to Flax by kdrobust's converter.

The PyTorch side is ``tests/torch_twins.py`` (the RobustBench / kuangliu
state_dict layouts, random weights and BN statistics from
``torch_twins.randomize_``); the JAX side is the ``kdrobust.models`` network
that ``kdrobust.teachers.torch_io.convert_state_dict`` builds from that very
state_dict (the code path of ``python -m kdrobust.teachers.convert``). No
normalisation on either side: the official AdaAD student and the
RobustBench TRADES-style WRN teachers take raw [0, 1] pixels.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable

import numpy as np

NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class NetSpec:
  label: str  # e.g. "ResNet-18"
  arch: str  # kdrobust.models registry name
  model_kw: tuple  # extra kdrobust kwargs as (key, value) pairs (hashable)
  make_twin: Callable[[], Any]  # -> torch.nn.Module (CPU, float32)


def student_spec(smoke: bool) -> NetSpec:
  import torch_twins as tt  # pylint: disable=g-import-not-at-top
  if smoke:
    return NetSpec("ResNet-18 code, smoke size (2 stages of 1 block, width 8)", "resnet18",
                   (("stage_sizes", (1, 1)), ("width", 8)),
                   lambda: tt.TResNet("basic", (1, 1), NUM_CLASSES, width=8))
  return NetSpec("ResNet-18", "resnet18", (), lambda: tt.TResNet("basic", (2, 2, 2, 2),
                                                                NUM_CLASSES))


def teacher_spec(smoke: bool) -> NetSpec:
  import torch_twins as tt  # pylint: disable=g-import-not-at-top
  if smoke:
    return NetSpec("WRN-10-1 (smoke)", "wrn", (("depth", 10), ("width", 1)),
                   lambda: tt.TWideResNet(10, 1, NUM_CLASSES))
  return NetSpec("WRN-34-10", "wrn34_10", (), lambda: tt.TWideResNet(34, 10, NUM_CLASSES))


@dataclasses.dataclass
class Pair:
  """One network on both sides with identical weights."""
  spec: NetSpec
  model_kw: dict  # the kdrobust kwargs the converter settled on
  variables: Any  # Flax variables (float32)
  twin: Any  # torch module, CPU, float32, eval mode

  def module(self, dtype: str = "float32"):
    from kdrobust import models  # pylint: disable=g-import-not-at-top
    return models.get(self.spec.arch, num_classes=NUM_CLASSES, dtype=dtype, **self.model_kw)

  def torch_copy(self, device):
    return copy.deepcopy(self.twin).to(device)

  @property
  def num_params(self) -> int:
    return int(sum(p.numel() for p in self.twin.parameters()))


def build_pair(spec: NetSpec, seed: int, image_size: int = 32) -> Pair:
  """Random twin (``torch_twins.randomize_``), converted by ``torch_io.convert_state_dict``."""
  import torch_twins as tt  # pylint: disable=g-import-not-at-top
  from kdrobust.teachers import torch_io  # pylint: disable=g-import-not-at-top
  twin = tt.randomize_(spec.make_twin(), seed=seed, image_size=image_size)
  res = torch_io.convert_state_dict(twin.state_dict(), spec.arch, NUM_CLASSES,
                                    **dict(spec.model_kw))
  return Pair(spec, dict(res.model_kw), res.variables, twin)


def cost_flops(lowered_or_compiled) -> float | None:
  """``flops`` of an XLA cost analysis (dict or one-element list), or None."""
  try:
    ca = lowered_or_compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  return float(ca["flops"])


def torch_flops(fn: Callable[[], Any]) -> float | None:
  """FLOPs of ``fn()`` from ``torch.utils.flop_counter``'s formulas (2 per multiply-add).

  A plain dispatch mode over ``flop_counter.flop_registry``: ``FlopCounterMode``
  itself also tracks modules with hooks that ``torch.autograd.grad`` rejects
  (the attack's input gradients).
  """
  try:
    # pylint: disable-next=g-import-not-at-top
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None

  class _Count(TorchDispatchMode):
    total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
      kwargs = kwargs or {}
      out = func(*args, **kwargs)
      f = flop_registry.get(func._overloadpacket)  # pylint: disable=protected-access
      if f is not None:
        self.total += int(f(*args, **kwargs, out_val=out))
      return out

  counter = _Count()
  with counter:
    fn()
  return float(counter.total)


def to_nchw(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def to_nhwc(x) -> np.ndarray:
  if hasattr(x, "detach"):
    x = x.detach()
    if x.dtype not in (x.new_zeros(()).float().dtype, x.new_zeros(()).double().dtype):
      x = x.float()  # bf16 / fp16 have no numpy dtype
    x = x.cpu().numpy()
  return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


def images(n: int, size: int, seed: int) -> np.ndarray:
  """``n`` uniform random NHWC float32 images in [0, 1]."""
  return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)

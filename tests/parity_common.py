"""Shared harness of the step-parity tests: one kdrobust train step vs a PyTorch transcription.

Every ``parity_*_test.py`` compares kdrobust's jitted train step with a
PyTorch transcription of the official training step (written in the test from
the official code, never copied) on one batch, with identical weights and an
injected attack start:

* :class:`TorchNet` is a small batch-norm network (conv-BN-ReLU x2, average
  pool, linear head; optional DARHT slot head) and :class:`FlaxNet` its twin
  built from kdrobust's own layers (``kdrobust.models.layers.BatchNorm``,
  ``conv``, ``classifier_head``), so the test exercises the library's
  PyTorch-compatible batch norm;
* :func:`flax_variables` copies a torch net's parameters and running
  statistics into Flax variables (float64);
* :func:`run_kdrobust` runs ``n`` steps of ``kdrobust.train_step.make_train_step``
  (jitted, float64 via ``jax.enable_x64``) with ``kdrobust.train.make_optimizer``
  (SGD, momentum, coupled weight decay) and the attack's random start replaced
  by the injected noise (``projected.random_init(..., noise=...)``);
* :func:`torch_sgd` is ``torch.optim.SGD(lr, momentum, weight_decay)``;
* :func:`assert_same_state` compares parameters, running statistics (and the
  ``num_batches_tracked``-free BN state) with a stated tolerance.

Everything runs in float64 on both sides: PGD takes the *sign* of input
gradients, so in float32 a gradient component within rounding of zero can
flip a pixel by ``2 * step`` and make the comparison meaningless; in float64
the two steps agree to rounding (the tolerances below).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import torch
from torch import nn as tnn
import torch.nn.functional as F

from kdrobust import train as train_lib
from kdrobust import train_step as step_lib
from kdrobust.attacks import projected
from kdrobust.models import layers
from kdrobust.state import TrainState

C = 10  # classes (elemmean reductions divide by C: keep the CIFAR-10 count)
B = 8  # batch
HW = 8  # image side
EPS, STEP = 8 / 255, 2 / 255

# Tolerances (float64 on both sides). Parameters and statistics: absolute
# 1e-9 on values of order 1e-1..1; losses: relative 1e-9.
ATOL = 1e-9
RTOL = 1e-9


# ---------------------------------------------------------------- the networks

class TorchNet(tnn.Module):
  """conv3x3(3->w1)-BN-ReLU, conv3x3 s2(w1->w2)-BN-ReLU, avg pool, linear (bias).

  ``slots = K > 0`` adds DARHT's head: ``linear1: w2 -> K*C``, ``linear2: K*C -> C``
  (``forward_slots`` returns the K x C slot logits and the prediction).
  """

  def __init__(self, widths=(4, 8), num_classes=C, slots=0, seed=0):
    super().__init__()
    torch.manual_seed(seed)
    w1, w2 = widths
    self.conv1 = tnn.Conv2d(3, w1, 3, 1, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(w1)
    self.conv2 = tnn.Conv2d(w1, w2, 3, 2, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(w2)
    self.slots = slots
    if slots:
      self.linear1 = tnn.Linear(w2, slots * num_classes)
      self.linear2 = tnn.Linear(slots * num_classes, num_classes)
    else:
      self.linear = tnn.Linear(w2, num_classes)
    with torch.no_grad():  # non-trivial BN affine parameters and running statistics
      g = torch.Generator().manual_seed(seed + 1)
      for bn in (self.bn1, self.bn2):
        bn.weight.copy_(1 + 0.2 * torch.randn(bn.weight.shape, generator=g))
        bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=g))
        bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=g))
        bn.running_var.copy_(1 + 0.3 * torch.rand(bn.running_var.shape, generator=g))
    self.double()

  def features(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    return out.mean(dim=(2, 3))

  def forward(self, x):
    f = self.features(x)
    if self.slots:
      return self.linear2(self.linear1(f))
    return self.linear(f)

  def forward_slots(self, x):
    z = self.linear1(self.features(x))
    return z.view(z.shape[0], self.slots, -1), self.linear2(z)


class FlaxNet(nn.Module):
  """The Flax twin of :class:`TorchNet`, from kdrobust's layers."""
  widths: Sequence[int] = (4, 8)
  num_classes: int = C
  head_slots: int = 0

  @nn.compact
  def __call__(self, x, train: bool = False):
    dt = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    for i, w in enumerate(self.widths):
      x = layers.conv(w, 3, stride=1 if i == 0 else 2, dtype=dt, name=f"conv{i + 1}")(x)
      x = nn.relu(layers.batch_norm(train, dt, f"bn{i + 1}")(x))
    x = jnp.mean(x, axis=(1, 2))
    return layers.classifier_head(self, x, self.num_classes, self.head_slots, dt)


def flax_variables(net: TorchNet) -> dict:
  """``{'params', 'batch_stats'}`` of :class:`FlaxNet` holding ``net``'s values (float64)."""
  t = lambda a: np.asarray(a.detach().cpu().numpy(), np.float64)
  params, stats = {}, {}
  for i in (1, 2):
    params[f"conv{i}"] = {"kernel": t(getattr(net, f"conv{i}").weight).transpose(2, 3, 1, 0)}
    bn = getattr(net, f"bn{i}")
    params[f"bn{i}"] = {"scale": t(bn.weight), "bias": t(bn.bias)}
    stats[f"bn{i}"] = {"mean": t(bn.running_mean), "var": t(bn.running_var)}
  dense = lambda lin: {"kernel": t(lin.weight).T, "bias": t(lin.bias)}
  if net.slots:
    params["slots"] = dense(net.linear1)
    params["head"] = dense(net.linear2)
  else:
    params["head"] = dense(net.linear)
  return {"params": params, "batch_stats": stats}


def batch(seed: int = 0, n: int = B, num_classes: int = C):
  """A float64 NHWC batch in [0, 1] with some pixels at the bounds, and labels."""
  r = np.random.RandomState(seed)
  x = r.uniform(-0.1, 1.1, (n, HW, HW, 3)).clip(0, 1)
  y = r.randint(0, num_classes, n)
  return x, y


def nchw(x) -> torch.Tensor:
  return torch.tensor(np.asarray(x, np.float64)).permute(0, 3, 1, 2).contiguous()


def nhwc(t: torch.Tensor) -> np.ndarray:
  return t.detach().permute(0, 2, 3, 1).cpu().numpy()


def uniform_noise(seed: int, shape=(B, HW, HW, 3)) -> np.ndarray:
  """``U[-1, 1]`` noise (L-inf uniform starts use ``x + eps * u``)."""
  return np.random.RandomState(1000 + seed).uniform(-1, 1, shape)


def normal_noise(seed: int, shape=(B, HW, HW, 3)) -> np.ndarray:
  """``N(0, 1)`` noise (gaussian starts use ``x + 0.001 * n``)."""
  return np.random.RandomState(2000 + seed).randn(*shape)


# ---------------------------------------------------------------- PyTorch side

def torch_pgd(objective, x: torch.Tensor, start: torch.Tensor, *, steps: int, step: float = STEP,
              eps: float = EPS) -> torch.Tensor:
  """The official codes' sign-gradient loop (ARD/IAD/KDIGA ``AttackPGD``, RSLAD, MTARD).

  ``x_{k+1} = clamp(min(max(x_k + step sign(grad objective(x_k)), x - eps), x + eps), 0, 1)``,
  starting from ``start`` exactly as given (the caller clamps it or not, as its code does).
  The network's mode (``train()``/``eval()``) is the caller's.
  """
  xa = start
  for _ in range(steps):
    xa.requires_grad_()
    with torch.enable_grad():
      loss = objective(xa)
    g = torch.autograd.grad(loss, [xa])[0]
    xa = xa.detach() + step * torch.sign(g.detach())
    xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0.0, 1.0)
  return xa


def torch_sgd(model: tnn.Module, lr: float, momentum: float = 0.9,
              weight_decay: float = 2e-4) -> torch.optim.SGD:
  return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                         weight_decay=weight_decay)


# ---------------------------------------------------------------- kdrobust side

@contextlib.contextmanager
def injected_starts(noises: Sequence[np.ndarray]):
  """Replace the attacks' random draws by ``noises``, one per call of ``random_init`` in order.

  The start *formula* (clip or not, ``eps * u`` or ``0.001 * n``) stays the
  library's, so the test also checks it. Calls happen at trace time; a
  method that draws more starts than given fails loudly.
  """
  orig = projected.random_init
  queue = list(noises)

  def fake(key, x, eps, **kw):
    if not queue:
      raise AssertionError("the step drew more attack starts than were injected")
    return orig(key, x, eps, noise=jnp.asarray(queue.pop(0), x.dtype), **kw)

  projected.random_init = fake
  try:
    yield queue
  finally:
    projected.random_init = orig


def optim_config(lr: float, weight_decay: float, momentum: float = 0.9):
  return mlc.ConfigDict({"lr": lr, "momentum": momentum, "nesterov": False,
                         "weight_decay": weight_decay, "schedule": "constant",
                         "decay_epochs": (), "decay_factor": 0.1, "warmup_epochs": 0.0})


def run_kdrobust(method, student: FlaxNet, s_vars: dict, teachers: Sequence[tuple[nn.Module, dict]],
                 batches: Sequence[tuple[np.ndarray, np.ndarray]], noises: Sequence[Sequence[np.ndarray]],
                 *, lr: float, weight_decay: float, momentum: float = 0.9, epoch: int = 1,
                 num_epochs: int = 200):
  """Run ``len(batches)`` kdrobust train steps in float64; returns ``(state, [metrics])``.

  ``noises[i]`` are the attack-start draws of step ``i`` (see
  :func:`injected_starts`); ``epoch`` is the 1-indexed epoch of the first step
  (one step per epoch: step ``i`` runs in epoch ``epoch + i``).
  The step is traced once per batch (the injected noise is a constant of the
  trace), under ``jax.enable_x64``.
  """
  with jax.enable_x64(True):
    tx = train_lib.make_optimizer(optim_config(lr, weight_decay, momentum),
                                  optax_constant(lr))
    to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
    s_vars = to64(s_vars)
    state = TrainState.create(s_vars["params"], s_vars["batch_stats"], tx,
                              method.init_state(C))
    state = state.replace(step=jnp.asarray(epoch - 1, jnp.int32))
    t_vars = tuple(to64(v) for _, v in teachers)
    out = []
    for (x, y), draws in zip(batches, noises):
      step = step_lib.make_train_step(
          apply_fn=student.apply, method=method, tx=tx,
          teacher_apply_fns=[m.apply for m, _ in teachers], num_classes=C,
          num_epochs=num_epochs, steps_per_epoch=1, seed=0, jit=False)
      with injected_starts(draws) as left:
        b = {"image": jnp.asarray(x, jnp.float64), "label": jnp.asarray(y, jnp.int32)}
        state, metrics = jax.jit(step)(state, t_vars, b)
        assert not left, f"{len(left)} injected attack start(s) were not used"
      out.append(jax.tree.map(np.asarray, metrics))
    state = jax.tree.map(np.asarray, state)
  return state, out


def optax_constant(lr):
  import optax  # pylint: disable=g-import-not-at-top
  return optax.constant_schedule(lr)


def assert_same_state(state, torch_net: TorchNet, *, atol: float = ATOL, what: str = ""):
  """Parameters and running statistics of a kdrobust state equal ``torch_net``'s (``atol``)."""
  ref = flax_variables(torch_net)
  got = {"params": state.params, "batch_stats": state.batch_stats}
  flat_ref = dict(jax.tree_util.tree_flatten_with_path(ref)[0])
  flat_got = dict(jax.tree_util.tree_flatten_with_path(got)[0])
  assert flat_ref.keys() == flat_got.keys(), (what, flat_ref.keys() ^ flat_got.keys())
  for path, r in flat_ref.items():
    np.testing.assert_allclose(np.asarray(flat_got[path]), r, rtol=0, atol=atol,
                               err_msg=f"{what}: {jax.tree_util.keystr(path)}")


def assert_close(a, b, *, rtol: float = RTOL, what: str = ""):
  np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                             rtol=rtol, atol=0, err_msg=what)


def teacher_pair(seed: int = 7, widths=(6, 8)) -> tuple[TorchNet, tuple[FlaxNet, dict]]:
  """A frozen teacher: the torch net (eval mode, no grad) and its kdrobust twin."""
  t = TorchNet(widths=widths, seed=seed).eval()
  for p in t.parameters():
    p.requires_grad_(False)
  return t, (FlaxNet(widths=widths), flax_variables(t))


def student_pair(seed: int = 0, slots: int = 0) -> tuple[TorchNet, FlaxNet, dict]:
  s = TorchNet(seed=seed, slots=slots).train()
  return s, FlaxNet(head_slots=slots), flax_variables(s)


def bn_train_forward_count(net: TorchNet) -> int:
  """``num_batches_tracked`` of the first BN: how many train-mode forwards ran."""
  return int(net.bn1.num_batches_tracked)



ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_recipe(config_file: str, arg: str = "", **attack_overrides):
  """``(method, weight_decay, config)`` of ``configs/<config_file>:<arg>`` as shipped.

  ``attack_overrides`` (e.g. ``steps=3``) shrink the inner attack for speed;
  everything else is the config's, so the parity test proves the shipped recipe.
  """
  from kdrobust import methods  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      f"parity_cfg_{config_file.replace('.', '_')}", os.path.join(ROOT, "configs", config_file))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(arg or None)
  m = c.method.to_dict()
  m["attack"] = dict(m["attack"], **attack_overrides)
  return methods.from_config(m), c.optim.weight_decay, c

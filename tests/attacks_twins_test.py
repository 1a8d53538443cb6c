"""Tiny JAX/PyTorch twin models shared by the attack parity tests (docs/evaluation.md).

The same architecture, conv(3->8, 3x3, pad 1)-ReLU-flatten-dense(512->10) on
8x8x3 inputs, exists as a plain-JAX function (NHWC) and a torch module (NCHW)
with identical weights. The JAX side flattens in (c, h, w) order so the dense
weights need no permutation. Other attack test modules import this one.
The tests here are the conversion-parity layer (logits and input gradients).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # 2 shared CPU cores: avoid oversubscription

H = W = 8
C_IN = 3
C_HID = 8
N_CLASSES = 10


@contextlib.contextmanager
def x64():
  """Enable float64 in JAX for the block, restoring the previous setting."""
  prev = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", prev)


def make_weights(seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
  """Random float64 weights (numpy); ``scale`` sharpens the logits."""
  rng = np.random.default_rng(seed)
  return {
      "conv_w": rng.normal(0, 0.5, (C_HID, C_IN, 3, 3)) * scale,  # torch OIHW
      "conv_b": rng.normal(0, 0.1, (C_HID,)),
      "fc_w": rng.normal(0, 1.0 / np.sqrt(C_HID * H * W), (N_CLASSES, C_HID * H * W)) * scale,
      "fc_b": rng.normal(0, 0.1, (N_CLASSES,)),
  }


def jax_model(weights: dict[str, np.ndarray], dtype=jnp.float32):
  """Plain-JAX twin: ``x [B, 8, 8, 3] -> logits [B, 10]`` in ``dtype``."""
  kw = jnp.asarray(weights["conv_w"].transpose(2, 3, 1, 0), dtype)  # HWIO
  kb = jnp.asarray(weights["conv_b"], dtype)
  fw = jnp.asarray(weights["fc_w"].T, dtype)
  fb = jnp.asarray(weights["fc_b"], dtype)

  def logits_fn(x):
    x = jnp.asarray(x, dtype)
    h = jax.lax.conv_general_dilated(
        x, kw, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST)
    h = jax.nn.relu(h + kb)
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)
    return jnp.dot(h, fw, precision=jax.lax.Precision.HIGHEST) + fb

  return logits_fn


class TorchTwin(torch.nn.Module):
  """The torch twin (NCHW input)."""

  def __init__(self, weights, dtype):
    super().__init__()
    self.conv = torch.nn.Conv2d(C_IN, C_HID, 3, padding=1)
    self.fc = torch.nn.Linear(C_HID * H * W, N_CLASSES)
    self.to(dtype)
    with torch.no_grad():
      self.conv.weight.copy_(torch.tensor(weights["conv_w"]))
      self.conv.bias.copy_(torch.tensor(weights["conv_b"]))
      self.fc.weight.copy_(torch.tensor(weights["fc_w"]))
      self.fc.bias.copy_(torch.tensor(weights["fc_b"]))
    self.eval()

  def forward(self, x):
    return self.fc(torch.relu(self.conv(x)).flatten(1))


def torch_model(weights, dtype=None):
  return TorchTwin(weights, dtype or torch.float64)


def to_nchw(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))


def to_nhwc(x) -> np.ndarray:
  if hasattr(x, "detach"):
    x = x.detach().cpu().numpy()
  return np.ascontiguousarray(np.asarray(x).transpose(0, 2, 3, 1))


def make_data(n: int, seed: int = 1, weights=None, correct_only: bool = True):
  """Random images in [0,1] (NHWC float64) labelled by the twin (clean-correct)."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.0, 1.0, (n, H, W, C_IN))
  if weights is not None and correct_only:
    with x64():
      y = np.asarray(jnp.argmax(jax_model(weights, jnp.float64)(x), -1))
  else:
    y = rng.integers(0, N_CLASSES, n)
  return x, y


# ---------------------------------------------------------------------------
# Layer B: the twins agree (logits, CE input gradients).
# ---------------------------------------------------------------------------


def test_twins_logits_and_gradients_agree_float64():
  w = make_weights(3)
  x, y = make_data(6, seed=2, weights=w)
  with x64():
    f = jax_model(w, jnp.float64)
    zj = np.asarray(f(x))
    gj = np.asarray(jax.grad(lambda u: jnp.sum(jax.nn.log_softmax(f(u))[
        jnp.arange(6), y]))(jnp.asarray(x)))
  m = torch_model(w)
  xt = torch.tensor(to_nchw(x), requires_grad=True)
  zt = m(xt)
  torch.log_softmax(zt, -1)[torch.arange(6), torch.tensor(y)].sum().backward()
  np.testing.assert_allclose(zj, zt.detach().numpy(), rtol=0, atol=1e-12)
  np.testing.assert_allclose(gj, to_nhwc(xt.grad), rtol=0, atol=1e-12)


def test_twins_logits_agree_float32():
  w = make_weights(4)
  x, _ = make_data(5, seed=3)
  zj = np.asarray(jax_model(w)(x.astype(np.float32)))
  zt = torch_model(w, torch.float32)(torch.tensor(to_nchw(x), dtype=torch.float32))
  np.testing.assert_allclose(zj, zt.detach().numpy(), rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------
# A small model trained on real data: scikit-learn digits (8x8x1 in [0,1]).
# ---------------------------------------------------------------------------


def digits_data():
  """``(x_train, y_train, x_test, y_test)``: digits as NHWC float32 in [0, 1], fixed split."""
  from sklearn.datasets import load_digits
  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)[..., None]
  y = d.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(y))
  x, y = x[perm], y[perm]
  return x[:1300], y[:1300], x[1300:], y[1300:]


def digits_init(seed: int = 0, c1: int = 16, c2: int = 32) -> dict[str, np.ndarray]:
  """He-initialised weights of conv(1->c1)-ReLU-conv(c1->c2, stride 2)-ReLU-dense(10).

  JAX layouts (conv kernels HWIO, dense ``[in, out]`` with inputs in (c, h, w) order).
  """
  rng = np.random.default_rng(seed)
  return {
      "c1_w": rng.normal(0, np.sqrt(2 / 9), (3, 3, 1, c1)).astype(np.float32),
      "c1_b": np.zeros(c1, np.float32),
      "c2_w": rng.normal(0, np.sqrt(2 / (9 * c1)), (3, 3, c1, c2)).astype(np.float32),
      "c2_b": np.zeros(c2, np.float32),
      "fc_w": rng.normal(0, np.sqrt(1 / (16 * c2)), (16 * c2, 10)).astype(np.float32),
      "fc_b": np.zeros(10, np.float32),
  }


def digits_apply(p, x):
  """The digits CNN in plain JAX (NHWC in, HWIO kernels, (c, h, w) flatten)."""
  dn = ("NHWC", "HWIO", "NHWC")
  hp = jax.lax.Precision.HIGHEST
  h = jax.lax.conv_general_dilated(x, p["c1_w"], (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=dn, precision=hp) + p["c1_b"]
  h = jax.nn.relu(h)
  h = jax.lax.conv_general_dilated(h, p["c2_w"], (2, 2), ((1, 1), (1, 1)),
                                   dimension_numbers=dn, precision=hp) + p["c2_b"]
  h = jax.nn.relu(h)
  h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)
  return jnp.dot(h, p["fc_w"], precision=hp) + p["fc_b"]


def digits_logits_fn(p):
  """``Partial(digits_apply, params)``: parameters stay traced arguments."""
  return jax.tree_util.Partial(digits_apply, {k: jnp.asarray(v) for k, v in p.items()})


def train_digits(x, y, *, epochs: int = 30, eps: float = 0.1, seed: int = 0,
                 lr: float = 0.05, batch: int = 64, c1: int = 16, c2: int = 32):
  """FGSM-RS adversarial training (step 1.25 eps) with SGD+momentum; a few seconds on CPU.

  ``c1``, ``c2``: the CNN's widths (:func:`digits_init`).
  """
  p = {k: jnp.asarray(v) for k, v in digits_init(seed, c1, c2).items()}
  mom = jax.tree_util.tree_map(jnp.zeros_like, p)

  def loss_fn(p, xb, yb):
    z = digits_apply(p, xb)
    return -jnp.mean(jax.nn.log_softmax(z)[jnp.arange(xb.shape[0]), yb])

  @jax.jit
  def step(p, mom, xb, yb, key):
    d = jax.random.uniform(key, xb.shape, minval=-eps, maxval=eps)
    g = jax.grad(lambda u: loss_fn(p, u, yb))(jnp.clip(xb + d, 0, 1))
    xa = jnp.clip(xb + jnp.clip(d + 1.25 * eps * jnp.sign(g), -eps, eps), 0, 1)
    gp = jax.grad(loss_fn)(p, xa, yb)
    mom = jax.tree_util.tree_map(lambda m, g: 0.9 * m + g, mom, gp)
    p = jax.tree_util.tree_map(lambda w, m: w - lr * m, p, mom)
    return p, mom

  rng = np.random.default_rng(seed)
  key = jax.random.PRNGKey(seed)
  n = (len(y) // batch) * batch
  for ep in range(epochs):
    perm = rng.permutation(len(y))[:n].reshape(-1, batch)
    for i, idx in enumerate(perm):
      p, mom = step(p, mom, x[idx], y[idx], jax.random.fold_in(key, ep * 1000 + i))
  return {k: np.asarray(v) for k, v in p.items()}


class TorchDigits(torch.nn.Module):
  """Torch twin of :func:`digits_apply` (NCHW input)."""

  def __init__(self, p):
    super().__init__()
    c1, c2 = p["c1_w"].shape[-1], p["c2_w"].shape[-1]
    self.c1 = torch.nn.Conv2d(1, c1, 3, padding=1)
    self.c2 = torch.nn.Conv2d(c1, c2, 3, stride=2, padding=1)
    self.fc = torch.nn.Linear(16 * c2, 10)
    with torch.no_grad():
      self.c1.weight.copy_(torch.tensor(p["c1_w"].transpose(3, 2, 0, 1)))
      self.c2.weight.copy_(torch.tensor(p["c2_w"].transpose(3, 2, 0, 1)))
      self.fc.weight.copy_(torch.tensor(p["fc_w"].T))
      for name, mod in (("c1", self.c1), ("c2", self.c2), ("fc", self.fc)):
        mod.bias.copy_(torch.tensor(p[name + "_b"]))
    self.eval()

  def forward(self, x):
    h = torch.relu(self.c2(torch.relu(self.c1(x))))
    return self.fc(h.flatten(1))

"""Tests for the model zoo: registry, parameter counts, forwards, DARHT slots, bf16.

CPU-cheap by design: parameter counts use ``jax.eval_shape`` (no real init of
the big nets); forwards run on small depth/width instances of the same code
paths with variables filled from numpy (a real ``init`` only for tiny nets).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from kdrobust import models
from kdrobust.models import vit as vit_lib

ZOO = ("resnet18", "resnet34", "resnet50", "resnet18_imagenet", "resnet34_imagenet",
       "resnet50_imagenet", "preact_resnet18", "wrn", "wrn28_10", "wrn34_10", "wrn34_20",
       "wrn70_16", "mobilenet_v2", "vit_ti", "vit_s", "vit_b")

CIFAR10 = models.DATASET_STATS["cifar10"]


def _abstract(module, size=32):
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)


def _count(name, num_classes=10, size=32, **kw):
  v = _abstract(models.get(name, num_classes=num_classes, **kw), size)
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v["params"]))


def _random_variables(module, size=32, seed=0):
  """Variables with the module's exact structure, filled from numpy (fast, no init)."""
  rng = np.random.default_rng(seed)
  out = {}
  for path, a in traverse_util.flatten_dict(dict(_abstract(module, size))).items():
    leaf = path[-1]
    if leaf in ("scale", "var"):
      v = rng.uniform(0.8, 1.2, a.shape)
    elif leaf in ("bias", "mean"):
      v = rng.normal(0.0, 0.05, a.shape)
    elif leaf == "kernel":
      if len(a.shape) == 3:  # attention: (in, heads, dim) or, for 'out', (heads, dim, out).
        fan_in = a.shape[0] * a.shape[1] if path[-2] == "out" else a.shape[0]
      else:
        fan_in = int(np.prod(a.shape[:-1]))
      v = rng.normal(0.0, fan_in ** -0.5, a.shape)
    else:
      v = rng.normal(0.0, 0.02, a.shape)
    out[path] = jnp.asarray(v, a.dtype)
  return traverse_util.unflatten_dict(out)


def _images(n=2, size=32, seed=1):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=(n, size, size, 3)), jnp.float32)


def test_registry_lists_the_zoo():
  names = models.available()
  for name in ZOO:
    assert name in names
  with pytest.raises(ValueError, match="valid models"):
    models.get("resnet19", num_classes=10)


# Well-known parameter counts (torchvision / kuangliu / RobustBench / timm).
PARAM_COUNTS = [
    ("resnet18", {}, 10, 32, 11_173_962),
    ("resnet34", {}, 10, 32, 21_282_122),
    ("resnet50", {}, 10, 32, 23_520_842),
    ("resnet18_imagenet", {}, 1000, 224, 11_689_512),
    ("resnet50_imagenet", {}, 1000, 224, 25_557_032),
    ("preact_resnet18", {"variant": "kuangliu"}, 10, 32, 11_171_146),
    ("preact_resnet18", {}, 10, 32, 11_172_170),  # + final BN (1024).
    ("preact_resnet18", {"variant": "dm"}, 10, 32, 12_548_426),  # 3x3 shortcuts.
    ("wrn28_10", {}, 10, 32, 36_479_194),
    ("wrn34_10", {}, 10, 32, 46_160_474),
    ("wrn34_10", {}, 100, 32, 46_218_164),
    ("wrn34_20", {}, 10, 32, 184_531_674),
    ("wrn70_16", {"variant": "dm"}, 10, 32, 266_796_506),
    ("wrn", {"depth": 16, "width": 4}, 10, 32, 2_748_890),
    ("mobilenet_v2", {}, 10, 32, 2_296_922),
    ("vit_ti", {"patch_size": 16, "image_size": 224}, 1000, 224, 5_717_416),
    ("vit_b", {"patch_size": 16, "image_size": 224}, 1000, 224, 86_567_656),
]


def test_param_counts():
  got = {(n, str(kw), c): _count(n, c, s, **kw) for n, kw, c, s, _ in PARAM_COUNTS}
  want = {(n, str(kw), c): p for n, kw, c, _, p in PARAM_COUNTS}
  assert got == want
  assert _count("resnet18") == 11_173_962  # The CIFAR ResNet-18 anchor, exactly.


# Small instances of every code path (same modules, reduced width/depth).
SMALL = [
    ("resnet18", {"width": 4}),
    ("resnet50_imagenet", {"width": 4, "stage_sizes": (1, 1, 2, 1)}),
    ("preact_resnet18", {"width": 4}),
    ("preact_resnet18", {"width": 4, "variant": "wong"}),
    ("preact_resnet18", {"width": 4, "variant": "dm"}),
    ("wrn", {"depth": 10, "width": 1}),
    ("wrn", {"depth": 10, "width": 1, "variant": "dm"}),
    ("mobilenet_v2", {"cfg": ((1, 8, 1, 1), (2, 8, 1, 2), (2, 16, 2, 2))}),
]


@pytest.mark.parametrize("name,kw", SMALL, ids=lambda v: str(v))
def test_small_forward_train_and_eval(name, kw):
  m = models.get(name, num_classes=5, mean=CIFAR10[0], std=CIFAR10[1], **kw)
  v = _random_variables(m)
  x = _images()
  step = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))
  logits, upd = step(v, x)
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), v["batch_stats"], upd["batch_stats"])
  assert all(jax.tree.leaves(changed)), "train=True must update every BN's running stats"
  # (train=False forwards of every family are checked against PyTorch in convert_test.py.)


def test_vit_forward():
  m = vit_lib.ViT(num_classes=5, width=32, depth=2, num_heads=4, patch_size=8, image_size=16)
  v = _random_variables(m, 16)
  assert set(v) == {"params"}
  assert v["params"]["pos_embedding"].shape == (1, 5, 32)  # 4 patches + class token.
  assert v["params"]["cls_token"].shape == (1, 1, 32)
  fwd = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))
  out, state = fwd(v, _images(size=16))
  assert out.shape == (2, 5) and out.dtype == jnp.float32
  assert not state  # No BN: nothing to update.
  with pytest.raises(ValueError, match="16x16"):
    m.apply(v, _images(size=32), train=False)


def test_vit_resize_inputs_is_torch_bilinear_resize():
  torch = pytest.importorskip("torch")
  x = _images(size=8)
  m = vit_lib.ViT(num_classes=5, width=32, depth=1, num_heads=4, patch_size=8, image_size=24,
                  resize_inputs=True)
  v = _random_variables(m, 24)
  # What the model sees after resizing: the patch embedding of torch's resize equals ours.
  ref = torch.nn.functional.interpolate(torch.from_numpy(np.array(x)).permute(0, 3, 1, 2),
                                        size=(24, 24), mode="bilinear", align_corners=False)
  ref = jnp.asarray(ref.permute(0, 2, 3, 1).numpy())
  plain = vit_lib.ViT(num_classes=5, width=32, depth=1, num_heads=4, patch_size=8,
                      image_size=24)
  # Tolerance: float32 interpolation weights, then a 1-block ViT.
  np.testing.assert_allclose(np.asarray(m.apply(v, x, train=False)),
                             np.asarray(plain.apply(v, ref, train=False)), atol=1e-5)
  with pytest.raises(ValueError, match="resize_inputs"):
    plain.apply(v, x, train=False)


def test_normalisation_is_inside_the_model():
  kw = {"depth": 10, "width": 1}
  plain = models.get("wrn", num_classes=3, **kw)
  normed = models.get("wrn", num_classes=3, mean=CIFAR10[0], std=CIFAR10[1], **kw)
  v = _random_variables(plain)
  x = _images()
  xn = (x - jnp.asarray(CIFAR10[0])) / jnp.asarray(CIFAR10[1])
  np.testing.assert_allclose(normed.apply(v, x, train=False), plain.apply(v, xn, train=False),
                             atol=1e-5)


# One instance of every backbone class / variant (small where a kwarg allows it).
BACKBONES = [
    ("resnet18", {}, 512), ("resnet50_imagenet", {"width": 8}, 256),
    ("preact_resnet18", {"width": 8}, 64), ("preact_resnet18", {"variant": "dm"}, 512),
    ("wrn", {"depth": 10, "width": 2}, 128), ("wrn", {"depth": 10, "variant": "dm"}, 640),
    ("mobilenet_v2", {}, 1280), ("vit_ti", {"patch_size": 8}, 192),
]


@pytest.mark.parametrize("name,kw,feat", BACKBONES, ids=lambda v: str(v))
def test_head_slots_structure(name, kw, feat):
  """Every backbone uses the shared classifier head: slots (K*C) then head (C)."""
  k, c = 3, 7
  base = _abstract(models.get(name, num_classes=c, **kw))["params"]
  v = _abstract(models.get(name, num_classes=c, head_slots=k, **kw))["params"]
  assert "slots" not in base and base["head"]["kernel"].shape == (feat, c)
  assert v["slots"]["kernel"].shape == (feat, k * c)
  assert v["head"]["kernel"].shape == (k * c, c)


def test_head_slots_sow_and_logits():
  m = models.get("wrn", num_classes=4, depth=10, width=1, head_slots=3)
  v = _random_variables(m)
  x = _images()
  logits, state = m.apply(v, x, train=False, mutable=["intermediates"])
  slots = state["intermediates"]["teacher_slots"][0]
  assert slots.shape == (2, 3, 4) and slots.dtype == jnp.float32
  head = v["params"]["head"]
  np.testing.assert_allclose(logits, slots.reshape(2, 12) @ head["kernel"] + head["bias"],
                             atol=1e-5)
  feats = state["intermediates"]["features"][0]
  s = v["params"]["slots"]
  np.testing.assert_allclose(slots.reshape(2, 12), feats @ s["kernel"] + s["bias"], atol=1e-5)


BF16_TOL = 0.05  # max |logit_bf16 - logit_fp32| <= BF16_TOL * max(1, max |logit_fp32|).


@pytest.mark.parametrize("make,size", [
    (lambda **kw: models.get("wrn", num_classes=10, depth=10, width=2, variant="dm", **kw), 32),
    (lambda **kw: vit_lib.ViT(num_classes=10, width=64, depth=2, num_heads=4, patch_size=8,
                              image_size=16, **kw), 16),
], ids=["wrn10_2_dm", "vit_small"])
def test_bf16_compute_fp32_params(make, size):
  m32 = make(mean=CIFAR10[0], std=CIFAR10[1])
  m16 = make(mean=CIFAR10[0], std=CIFAR10[1], dtype="bfloat16")
  v = _random_variables(m32, size)
  x = _images(4, size)
  # Parameters (and BN statistics) of a bf16-compute model are created float32.
  abstract16 = _abstract(m16, size)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(abstract16))
  l32 = jax.jit(lambda v, x: m32.apply(v, x, train=False))(v, x)
  l16 = jax.jit(lambda v, x: m16.apply(v, x, train=False))(v, x)
  assert l16.dtype == jnp.float32
  scale = max(1.0, float(jnp.max(jnp.abs(l32))))
  assert float(jnp.max(jnp.abs(l16 - l32))) <= BF16_TOL * scale


def test_bad_options_raise():
  with pytest.raises(ValueError, match="variant"):
    _abstract(models.get("wrn28_10", num_classes=10, variant="ltd"))
  with pytest.raises(ValueError, match="6n"):
    _abstract(models.get("wrn", num_classes=10, depth=12))
  with pytest.raises(ValueError, match="activation"):
    _abstract(models.get("wrn", num_classes=10, depth=10, width=1, activation="tanh"))

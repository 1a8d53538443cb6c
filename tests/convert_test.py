"""PyTorch -> Flax teacher conversion: logit parity against PyTorch twins, strictness, CLI.

Each case builds a PyTorch twin (``tests/torch_twins.py``, same state_dict
keys as the published RobustBench / kuangliu / torchvision layouts) with
random weights and BN statistics, saves its state_dict, converts it both
directly (``load_torch_state_dict`` + ``torch_to_flax``) and through the CLI
(``kdrobust.teachers.convert.main`` then ``load_converted``), and requires
max |logit difference| <= 1e-4 in fp32. Small depth/width instances of the
same code paths keep it CPU-cheap; ResNet-18 runs at full size.
Full-size layouts (WRN-34-10 with sub_block1, WRN-70-16 DM, MobileNetV2, ...) are checked
key-by-key and shape-by-shape against twins built on torch's meta device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="torch is needed for the PyTorch->Flax conversion tests (pip install .[test])")

import torch_twins as tt  # noqa: E402  (tests/ is on sys.path under pytest)

from kdrobust import models  # noqa: E402
from kdrobust.teachers import convert  # noqa: E402
from kdrobust.teachers import torch_io  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
TOL = 1e-4
CIFAR10 = models.DATASET_STATS["cifar10"]
CIFAR100 = models.DATASET_STATS["cifar100"]

# All MobileNetV2 block kinds: t=1, stride-2, projected and identity stride-1 shortcuts.
SHORT_MBV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 1))

# (id, arch, model kwargs for the converter, twin factory, how the file is saved)
CASES = [
    ("resnet18_full", "resnet18", {}, lambda: tt.TResNet(), "plain"),
    ("resnet50_w8_shallow", "resnet50", {"width": 8, "stage_sizes": (1, 1, 2, 1)},
     lambda: tt.TResNet("bottleneck", (1, 1, 2, 1), width=8), "dataparallel"),
    ("resnet18_imagenet_w8", "resnet18_imagenet", {"width": 8},
     lambda: tt.TResNet(width=8, imagenet=True), "plain"),
    ("preact_standard_w8", "preact_resnet18", {"width": 8, "mean": CIFAR10[0], "std": CIFAR10[1]},
     lambda: tt.TPreActResNet(width=8, bn_before_fc=True, mean=CIFAR10[0], std=CIFAR10[1]),
     "drop_norm"),  # Like RobustBench wrappers: mu/sigma in code, not in the file.
    ("preact_kuangliu_w8", "preact_resnet18", {"width": 8, "variant": "kuangliu"},
     lambda: tt.TPreActResNet(width=8), "model_state_dict"),
    ("preact_wong_w8", "preact_resnet18", {"width": 8, "variant": "wong"},
     lambda: tt.TPreActResNet(width=8, from_preact=False), "plain"),
    ("preact_dm_w8", "preact_resnet18", {"width": 8, "variant": "dm"},
     lambda: tt.TDMPreActResNet(width=8), "plain"),
    ("wrn10_2_standard", "wrn", {"depth": 10, "width": 2},
     lambda: tt.TWideResNet(10, 2), "plain"),
    ("wrn10_2_sub_block1", "wrn", {"depth": 10, "width": 2},
     lambda: tt.TWideResNet(10, 2, sub_block1=True), "state_dict"),
    ("wrn10_2_dm_swish_c100", "wrn", {"depth": 10, "width": 2, "variant": "dm"},
     lambda: tt.TDMWideResNet(num_classes=100, depth=10, width=2, mean=CIFAR100[0],
                              std=CIFAR100[1]), "plain"),
    ("mobilenet_v2_short", "mobilenet_v2", {"cfg": SHORT_MBV2},
     lambda: tt.TMobileNetV2(cfg=SHORT_MBV2), "plain"),
]


def _save(twin, path, how):
  sd = twin.state_dict()
  if how == "drop_norm":
    sd = {k: v for k, v in sd.items() if k not in ("mu", "sigma")}
  if how == "dataparallel":
    obj = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 99}
  elif how == "model_state_dict":
    obj = {"model_state_dict": sd, "optimizer_state_dict": {}}
  elif how in ("state_dict", "drop_norm"):
    obj = {"state_dict": sd}
  else:
    obj = sd
  torch.save(obj, path)


def _images(n=2, size=32, seed=0):
  return np.random.default_rng(seed).uniform(size=(n, 3, size, size)).astype(np.float32)


def _torch_logits(twin, x):
  with torch.no_grad():
    return twin(torch.from_numpy(x)).numpy()


def _nhwc(x):
  return jnp.asarray(x.transpose(0, 2, 3, 1))


def _cli_args(arch, kw, inp, out, num_classes):
  args = ["--arch", arch, "--input", str(inp), "--output", str(out),
          "--num_classes", str(num_classes)]
  kw = dict(kw)
  if "mean" in kw:
    args += ["--mean", *map(str, kw.pop("mean")), "--std", *map(str, kw.pop("std"))]
  if "variant" in kw:
    args += ["--variant", kw.pop("variant")]
  if kw:
    args += ["--model_kwargs", json.dumps(kw)]
  return args


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_logit_parity_direct_and_cli(case, tmp_path):
  _, arch, kw, factory, how = case
  twin = tt.randomize_(factory())
  num_classes = twin.state_dict()[torch_io.layout_for(arch, kw).head + ".weight"].shape[0]
  path = tmp_path / "model.pt"
  _save(twin, path, how)
  x = _images()
  ref = _torch_logits(twin, x)
  assert np.abs(ref).max() > 0.1  # Non-degenerate logits.

  # Direct: load + strict conversion (+ normalisation buffers where the layout has them).
  sd = torch_io.load_torch_state_dict(str(path))
  direct_kw = dict(kw)
  norm = torch_io.normalization_from_state_dict(sd)
  if norm is not None:
    direct_kw["mean"], direct_kw["std"] = norm
  variables = torch_io.torch_to_flax(sd, arch, num_classes, **direct_kw)
  module = models.get(arch, num_classes=num_classes, **direct_kw)
  fwd = jax.jit(lambda m_vars, x: module.apply(m_vars, x, train=False))
  direct = np.asarray(fwd(variables, _nhwc(x)))
  assert direct.dtype == np.float32
  assert np.abs(direct - ref).max() <= TOL, np.abs(direct - ref).max()

  # CLI path: convert.main -> variables.npz + teacher.json -> load_converted.
  out = tmp_path / "converted"
  assert convert.main(_cli_args(arch, kw, path, out, num_classes)) == 0
  module2, variables2 = convert.load_converted(str(out))
  assert module2 == module
  assert jax.tree.structure(variables2) == jax.tree.structure(variables)
  cli = np.asarray(fwd(variables2, _nhwc(x)))
  assert np.abs(cli - ref).max() <= TOL, np.abs(cli - ref).max()
  meta = json.loads((out / "teacher.json").read_text())
  assert meta["arch"] == arch and meta["num_classes"] == num_classes
  assert meta["source_sha256"] == convert.sha256_file(str(path))
  assert meta["normalization_source"] == ("state_dict" if norm is not None else
                                          "kwargs" if "mean" in kw else "none")
  assert bool(meta["dropped_keys"]) == ("sub_block1" in case[0])


def test_input_gradient_parity_dm_wrn():
  """CE input gradients agree too (attacks see the same model), DM padding included."""
  twin = tt.randomize_(tt.TDMWideResNet(depth=10, width=2))
  res = torch_io.convert_state_dict(twin.state_dict(), "wrn", 10, depth=10, width=2,
                                    variant="dm")
  x = _images(3, seed=3)
  y = np.array([1, 4, 7])
  xt = torch.from_numpy(x).requires_grad_(True)
  torch.nn.functional.cross_entropy(twin(xt), torch.from_numpy(y), reduction="sum").backward()
  g_t = xt.grad.numpy().transpose(0, 2, 3, 1)

  def loss(xx):
    logits = res.module.apply(res.variables, xx, train=False)
    return -jnp.sum(jax.nn.log_softmax(logits)[jnp.arange(3), y])

  g_j = np.asarray(jax.jit(jax.grad(loss))(_nhwc(x)))
  for a, b in zip(g_j.reshape(3, -1), g_t.reshape(3, -1)):
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.9999


# Full-size layouts: keys and shapes only (twins on the meta device, no memory).
FULL = [
    ("wrn34_10", {}, lambda: tt.TWideResNet(34, 10, sub_block1=True)),  # Zhang2019 TRADES.
    ("wrn34_20", {}, lambda: tt.TWideResNet(34, 20)),  # Chen2021LTD_WRN34_20 (CIFAR-10).
    ("wrn28_10", {"variant": "dm", "activation": "silu"},
     lambda: tt.TDMWideResNet(depth=28, width=10, act="silu")),  # Wang2023Better_WRN-28-10.
    ("wrn70_16", {"variant": "dm"}, lambda: tt.TDMWideResNet(depth=70, width=16)),  # Gowal2020.
    ("preact_resnet18", {"variant": "dm"}, lambda: tt.TDMPreActResNet()),
    ("preact_resnet18", {}, lambda: tt.TPreActResNet(bn_before_fc=True)),
    ("resnet50_imagenet", {}, lambda: tt.TResNet("bottleneck", (3, 4, 6, 3), 1000, imagenet=True)),
    ("resnet50", {}, lambda: tt.TResNet("bottleneck", (3, 4, 6, 3))),
    ("mobilenet_v2", {}, lambda: tt.TMobileNetV2()),
]


@pytest.mark.parametrize("arch,kw,factory", FULL, ids=[f[0] + str(f[1]) for f in FULL])
def test_full_size_layout_keys_and_shapes(arch, kw, factory):
  with torch.device("meta"):
    twin = factory()
  got = {k: tuple(v.shape) for k, v in twin.state_dict().items()
         if not k.endswith("num_batches_tracked") and not k.startswith("sub_block1.")
         and k not in ("mean", "std", "mu", "sigma")}
  num_classes = got[torch_io.layout_for(arch, kw).head + ".weight"][0]
  assert torch_io.expected_torch_shapes(arch, num_classes, **kw) == got


# ------------------------------------------------------------------ strictness and loading

def _small_wrn_sd(**kw):
  return {k: v.numpy() for k, v in tt.TWideResNet(10, 1, **kw).state_dict().items()}


def test_strict_missing_unexpected_and_shape_errors():
  sd = _small_wrn_sd()
  bad = dict(sd)
  del bad["block2.layer.0.conv1.weight"]
  bad["block9.layer.0.conv1.weight"] = np.zeros((1,), np.float32)
  with pytest.raises(torch_io.ConversionError) as e:
    torch_io.torch_to_flax(bad, "wrn", 10, depth=10, width=1)
  msg = str(e.value)
  assert "missing keys (1): block2.layer.0.conv1.weight" in msg
  assert "unexpected keys (1): block9.layer.0.conv1.weight" in msg
  with pytest.raises(torch_io.ConversionError, match="shape mismatches.*fc.weight"):
    torch_io.torch_to_flax(sd, "wrn", 7, depth=10, width=1)
  # Wrong layout: a standard WRN state_dict is not a DM one.
  with pytest.raises(torch_io.ConversionError, match="missing keys"):
    torch_io.torch_to_flax(sd, "wrn", 10, depth=10, width=1, variant="dm")
  # num_classes=None reads it from the classifier.
  v = torch_io.torch_to_flax(sd, "wrn", None, depth=10, width=1)
  assert v["params"]["head"]["kernel"].shape == (64, 10)


def test_sub_block1_is_checked_before_dropping():
  sd = _small_wrn_sd(sub_block1=True)
  res = torch_io.convert_state_dict(sd, "wrn", 10, depth=10, width=1)
  assert res.dropped_keys and all(k.startswith("sub_block1.") for k in res.dropped_keys)
  sd["sub_block1.layer.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
  with pytest.raises(torch_io.ConversionError, match="unexpected keys.*sub_block1"):
    torch_io.convert_state_dict(sd, "wrn", 10, depth=10, width=1)


def test_normalisation_buffers():
  sd = {k: v.numpy() for k, v in tt.TDMWideResNet(depth=10, width=1).state_dict().items()}
  kw = {"depth": 10, "width": 1, "variant": "dm"}
  # torch_to_flax refuses to silently drop the buffers...
  with pytest.raises(torch_io.ConversionError, match="normalisation buffers"):
    torch_io.torch_to_flax(sd, "wrn", 10, **kw)
  # ... accepts matching mean/std, rejects different ones.
  torch_io.torch_to_flax(sd, "wrn", 10, mean=CIFAR10[0], std=CIFAR10[1], **kw)
  with pytest.raises(torch_io.ConversionError, match="disagree"):
    torch_io.torch_to_flax(sd, "wrn", 10, mean=CIFAR100[0], std=CIFAR100[1], **kw)
  # convert_state_dict adopts them.
  res = torch_io.convert_state_dict(sd, "wrn", 10, **kw)
  assert res.model_kw["mean"] == pytest.approx(CIFAR10[0]) and res.normalization_source == "state_dict"


def test_load_wrappers_prefixes_and_pickle(tmp_path):
  twin = tt.TWideResNet(10, 1)
  sd = twin.state_dict()
  p = tmp_path / "wrapped.pth"
  torch.save({"model": {f"module._orig_mod.{k}": v for k, v in sd.items()},
              "args": argparse.Namespace(lr=0.1)}, p)
  with pytest.raises(torch_io.ConversionError, match="allow_pickle"):
    torch_io.load_torch_state_dict(str(p))
  got = torch_io.load_torch_state_dict(str(p), allow_pickle=True)
  assert sorted(got) == sorted(sd)
  assert all(isinstance(v, np.ndarray) for v in got.values())
  # RobustBench's 'last' wrapper and a shared 'model.' prefix.
  torch.save({"last": {f"model.{k}": v for k, v in sd.items()}, "best": {}}, p)
  assert sorted(torch_io.load_torch_state_dict(str(p))) == sorted(sd)


def test_flax_to_torch_roundtrip():
  twin = tt.randomize_(tt.TPreActResNet(width=4, from_preact=False))
  sd = {k: v.numpy() for k, v in twin.state_dict().items()}
  v = torch_io.torch_to_flax(sd, "preact_resnet18", 10, width=4, variant="wong")
  back = torch_io.flax_to_torch(v, "preact_resnet18", width=4, variant="wong")
  assert sorted(back) == sorted(k for k in sd if not k.endswith("num_batches_tracked"))
  for k, w in back.items():
    np.testing.assert_array_equal(w, sd[k])


def test_cli_subprocess_and_unsupported_arch(tmp_path):
  twin = tt.randomize_(tt.TDMWideResNet(depth=10, width=1))
  path = tmp_path / "dm.pt"
  torch.save(twin.state_dict(), path)
  out = tmp_path / "out"
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(models.__file__))))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]),
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "kdrobust.teachers.convert", "--arch", "wrn",
                      "--input", str(path), "--output", str(out), "--variant", "dm",
                      "--model_kwargs", '{"depth": 10, "width": 1}'],
                     capture_output=True, text=True, env=env, timeout=120, check=False)
  assert r.returncode == 0, r.stderr
  assert "normalisation from state_dict" in r.stdout
  module, variables = convert.load_converted(str(out))
  x = _images()
  got = np.asarray(module.apply(variables, _nhwc(x), train=False))
  assert np.abs(got - _torch_logits(twin, x)).max() <= TOL
  meta = json.loads((out / "teacher.json").read_text())
  assert meta["num_classes"] == 10 and meta["model_kwargs"]["mean"] == pytest.approx(CIFAR10[0])
  # bf16 override at load time keeps float32 variables.
  m16, v16 = convert.load_converted(str(out), dtype="bfloat16")
  assert m16.dtype == "bfloat16" and all(a.dtype == jnp.float32 for a in jax.tree.leaves(v16))
  # Failures are reported, not crashed on.
  assert convert.main(["--arch", "wrn", "--input", str(path), "--output", str(out)]) == 2
  with pytest.raises(torch_io.ConversionError, match="No PyTorch layout"):
    torch_io.layout_for("vit_b")

"""``config.model.init='torch'``: PyTorch's default initialisation, checked against ``torch.nn``.

Statistical checks of a sample ``w`` of ``n`` values claimed to be
``U(-b, b)`` with ``b = 1/sqrt(fan_in)`` (``_check_uniform``), each with its
tolerance:

* support: ``max |w| <= b (1 + 1e-6)`` and ``max |w| >= b (1 - 8/n)``
  (``P(max |w| < b (1 - 8/n)) = (1 - 8/n)^n <= e^-8``);
* second moment: ``|mean(w^2) / (b^2/3) - 1| <= 5 sqrt(0.8/n)`` (5 standard
  errors: ``Var(w^2) = 4 b^4 / 45``);
* mean: ``|mean(w)| <= 5 b / sqrt(3n)``;

plus a two-sample Kolmogorov-Smirnov test between our draws and ``torch.nn``'s
draws for the same layer shape (``p > 1e-3``). The bounds are computed by
``torch.nn.init._calculate_fan_in_and_fan_out`` on the torch layer, never by
the code under test. ``test_checks_reject_fan_out`` shows that the checks reject
the classic mistake (``fan_out`` for ``fan_in``). Whole models are checked leaf
by leaf against a fresh ``torch.nn`` twin mapped through the teacher converter.
"""

from __future__ import annotations

import functools
import math

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util
from scipy import stats

torch = pytest.importorskip("torch", reason="torch is the reference for init='torch'")
from torch import nn as tnn  # noqa: E402

import torch_twins as tt  # noqa: E402  (tests/ is on sys.path under pytest)

from kdrobust import config_lib  # noqa: E402
from kdrobust import methods as methods_lib  # noqa: E402
from kdrobust import models  # noqa: E402
from kdrobust import train  # noqa: E402
from kdrobust.models import init as init_lib  # noqa: E402
from kdrobust.models import vit as vit_lib  # noqa: E402
from kdrobust.teachers import torch_io  # noqa: E402

KS_P_MIN = 1e-3


def _check_uniform(w, bound: float, what: str = "") -> None:
  """Assert ``w`` looks like ``n`` i.i.d. draws of ``U(-bound, bound)`` (tolerances above)."""
  w = np.asarray(w, np.float64).ravel()
  n = w.size
  top = np.abs(w).max()
  assert top <= bound * (1 + 1e-6), f"{what}: max |w| {top:.6g} > bound {bound:.6g}"
  assert top >= bound * (1 - 8 / n), f"{what}: max |w| {top:.6g} << bound {bound:.6g} (n={n})"
  ratio = np.mean(w ** 2) / (bound ** 2 / 3)
  assert abs(ratio - 1) <= 5 * math.sqrt(0.8 / n), (
      f"{what}: E[w^2] / (1/(3 fan_in)) = {ratio:.4f}, tolerance {5 * math.sqrt(0.8 / n):.4f}")
  assert abs(w.mean()) <= 5 * bound / math.sqrt(3 * n), f"{what}: mean {w.mean():.3g}"


def _torch_bound(weight) -> float:
  fan_in, _ = tnn.init._calculate_fan_in_and_fan_out(weight)  # pylint: disable=protected-access
  return 1.0 / math.sqrt(fan_in)


def _to_flax_layout(w: np.ndarray) -> np.ndarray:
  """torch OIHW -> Flax HWIO; torch (out, in) -> Flax (in, out)."""
  return w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T


# (id, torch layer factory). Flax twins are built from the torch layer's attributes.
LAYERS = [
    ("conv3x3_bias", lambda: tnn.Conv2d(16, 32, 3, bias=True)),
    ("conv3x3_grouped", lambda: tnn.Conv2d(16, 32, 3, groups=4, bias=True)),
    ("conv3x3_depthwise", lambda: tnn.Conv2d(96, 96, 3, groups=96, bias=True)),
    ("conv1x1", lambda: tnn.Conv2d(64, 128, 1, bias=False)),
    ("conv7x7_stem", lambda: tnn.Conv2d(3, 64, 7, bias=False)),
    ("linear_bias", lambda: tnn.Linear(256, 100)),
    ("linear_wide_bias", lambda: tnn.Linear(64, 4096)),  # 4096 bias draws for the KS test
]


_torch_init = jax.jit(init_lib.torch_default_init)


def _init_both(module, x, seed: int = 0):
  """``(flax_params, torch_default_init(flax_params))``, each one jitted program."""
  params = jax.jit(lambda: module.init(jax.random.key(seed), x, train=False)["params"])()
  return params, _torch_init(params, jax.random.key(seed + 1))


def _filled(module, x, seed: int = 0):
  """Params with the module's exact structure, every leaf N(0, 0.5) from numpy (no init compile)."""
  rng = np.random.default_rng(seed)
  abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False)["params"])
  return jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape), a.dtype), abstract)


def _flax_twin(layer):
  """The Flax layer ``layer`` mirrors, and an input for its ``init``."""
  if isinstance(layer, tnn.Conv2d):
    mod = fnn.Conv(layer.out_channels, layer.kernel_size, feature_group_count=layer.groups,
                   use_bias=layer.bias is not None, padding="VALID")
    x = jnp.zeros((1,) + tuple(layer.kernel_size) + (layer.in_channels,))
  else:
    mod = fnn.Dense(layer.out_features, use_bias=layer.bias is not None)
    x = jnp.zeros((1, layer.in_features))
  return mod, x


@pytest.mark.parametrize("case", LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_draws_match_torch(case):
  _, factory = case
  torch.manual_seed(0)
  layer = factory()
  bound = _torch_bound(layer.weight)
  mod, x = _flax_twin(layer)  # Flax's own layout (HWIO, I = in/groups), from eval_shape.
  abstract = jax.eval_shape(lambda: mod.init(jax.random.key(0), x)["params"])
  params = {"layer": jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), abstract)}
  out = _torch_init(params, jax.random.key(1))["layer"]
  tw = _to_flax_layout(layer.weight.detach().numpy())
  assert out["kernel"].shape == tw.shape and out["kernel"].dtype == jnp.float32
  _check_uniform(tw, bound, "torch weight")  # The checks hold for torch's own draws.
  _check_uniform(out["kernel"], bound, "our kernel")
  p = stats.ks_2samp(np.asarray(out["kernel"]).ravel(), tw.ravel()).pvalue
  assert p > KS_P_MIN, f"KS p-value {p:.2g} (ours vs torch.nn)"
  if layer.bias is None:
    assert "bias" not in out
    return
  tb = layer.bias.detach().numpy()
  _check_uniform(tb, bound, "torch bias")
  _check_uniform(out["bias"], bound, "our bias")
  if tb.size >= 1000:
    p = stats.ks_2samp(np.asarray(out["bias"]), tb).pvalue
    assert p > KS_P_MIN, f"bias KS p-value {p:.2g}"


def test_checks_reject_fan_out():
  """The statistics above are not vacuous: fan_out instead of fan_in fails them."""
  layer = tnn.Conv2d(16, 32, 3)  # fan_in 144, fan_out 288
  _, fan_out = tnn.init._calculate_fan_in_and_fan_out(layer.weight)  # pylint: disable=protected-access
  wrong = jax.random.uniform(jax.random.key(0), (3, 3, 16, 32), minval=-1, maxval=1) / fan_out ** 0.5
  with pytest.raises(AssertionError):
    _check_uniform(wrong, _torch_bound(layer.weight))
  tw = _to_flax_layout(layer.weight.detach().numpy())
  assert stats.ks_2samp(np.asarray(wrong).ravel(), tw.ravel()).pvalue < 1e-6


def test_batchnorm_and_layernorm_match_torch_defaults():
  """Norm layers: torch weight 1 / bias 0 == Flax's init, and init='torch' leaves them alone."""
  bn, ln = tnn.BatchNorm2d(8), tnn.LayerNorm(8)

  class Net(fnn.Module):

    @fnn.compact
    def __call__(self, x, train: bool = False):
      del train
      x = models.layers.BatchNorm(use_running_average=True, name="bn")(x)
      return fnn.LayerNorm(name="ln")(x)
  params, out = _init_both(Net(), jnp.zeros((1, 8)))
  jax.tree.map(np.testing.assert_array_equal, out, params)
  for name, t in (("bn", bn), ("ln", ln)):
    np.testing.assert_array_equal(out[name]["scale"], t.weight.detach().numpy())
    np.testing.assert_array_equal(out[name]["bias"], t.bias.detach().numpy())


def _bound_state_dict(twin):
  """The twin's state_dict with each conv/linear weight and bias filled with its torch bound."""
  sd = {k: v.detach().clone() for k, v in twin.state_dict().items()}
  n = 0
  for name, m in twin.named_modules():
    if isinstance(m, (tnn.Conv2d, tnn.Linear)):
      b = _torch_bound(m.weight)
      sd[f"{name}.weight"].fill_(b)
      if m.bias is not None:
        sd[f"{name}.bias"].fill_(b)
      n += 1
  return sd, n


SHORT_MBV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 1))  # every block kind, depthwise convs
MODELS = [
    ("resnet18_w8", "resnet18", {"width": 8}, lambda: tt.TResNet(width=8)),
    ("preact_kuangliu_w8", "preact_resnet18", {"width": 8, "variant": "kuangliu"},
     lambda: tt.TPreActResNet(width=8)),
    ("wrn10_2", "wrn", {"depth": 10, "width": 2}, lambda: tt.TWideResNet(10, 2)),
    ("mobilenet_v2_short", "mobilenet_v2", {"cfg": SHORT_MBV2},
     lambda: tt.TMobileNetV2(cfg=SHORT_MBV2)),
]


@pytest.mark.parametrize("case", MODELS, ids=[c[0] for c in MODELS])
def test_whole_model_matches_torch_twin_leaf_by_leaf(case):
  """Every conv/linear leaf ~ U(+-torch bound of that layer); every other leaf as Flax made it.

  The torch layer -> Flax leaf mapping is the teacher converter's
  (``torch_io.torch_to_flax``), independent of the code under test: the
  converted twin, with each conv/linear weight and bias replaced by its torch
  bound and the norm layers as torch made them (1 / 0), is the input.
  """
  _, arch, kw, factory = case
  torch.manual_seed(0)
  twin = factory()
  sd, n_layers = _bound_state_dict(twin)
  params = torch_io.torch_to_flax({k: v.numpy() for k, v in sd.items()}, arch, 10, **kw)["params"]
  params = jax.tree.map(jnp.asarray, params)
  bounds = traverse_util.flatten_dict(params)
  ours = traverse_util.flatten_dict(_torch_init(params, jax.random.key(1)))
  module = models.get(arch, num_classes=10, **kw)
  abstract = traverse_util.flatten_dict(jax.eval_shape(
      lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]))
  assert set(ours) == set(bounds) == set(abstract)
  redrawn = 0
  for path, w in ours.items():
    assert w.shape == abstract[path].shape and w.dtype == abstract[path].dtype, path
    if path[-1] == "kernel" or (path[-1] == "bias" and (path[:-1] + ("kernel",)) in ours):
      b = np.asarray(bounds[path])
      assert np.all(b == b.flat[0]), path
      _check_uniform(w, float(b.flat[0]), "/".join(path))
      redrawn += path[-1] == "kernel"
    else:  # norm scales / biases: untouched (torch's 1 / 0).
      assert path[-1] in ("scale", "bias"), path
      np.testing.assert_array_equal(w, bounds[path], err_msg="/".join(path))
  assert redrawn == n_layers


def test_darht_slot_head_and_small_cnn():
  """tiny_cnn with DARHT's 3-slot head == Conv2d x3 (no bias) + Linear(64, 3C) + Linear(3C, C)."""
  c, k = 10, 3
  torch.manual_seed(0)
  twins = {"Conv_0": tnn.Conv2d(3, 16, 3, bias=False), "Conv_1": tnn.Conv2d(16, 32, 3, bias=False),
           "Conv_2": tnn.Conv2d(32, 64, 3, bias=False), "slots": tnn.Linear(64, k * c),
           "head": tnn.Linear(k * c, c)}
  module = models.get("tiny_cnn", num_classes=c, head_slots=k)
  params = _filled(module, jnp.zeros((1, 8, 8, 3)))
  out = _torch_init(params, jax.random.key(2))
  for name, t in twins.items():
    assert out[name]["kernel"].shape == _to_flax_layout(t.weight.detach().numpy()).shape, name
    _check_uniform(out[name]["kernel"], _torch_bound(t.weight), name)
    if t.bias is not None:
      _check_uniform(out[name]["bias"], _torch_bound(t.weight), name + "/bias")
  for name in ("BatchNorm_0", "BatchNorm_1", "BatchNorm_2"):
    jax.tree.map(np.testing.assert_array_equal, out[name], params[name])


def test_vit_is_torch_nn_multihead_attention_and_linear():
  """ViT: conv/linear by the rule, attention as torch.nn.MultiheadAttention, tokens untouched."""
  width, heads, mlp = 64, 4, 256
  module = vit_lib.ViT(num_classes=10, width=width, depth=2, num_heads=heads, patch_size=4,
                       image_size=16)
  params = _filled(module, jnp.zeros((1, 16, 16, 3)))
  out = _torch_init(params, jax.random.key(4))
  torch.manual_seed(0)
  t_patch, t_attn = tnn.Conv2d(3, width, 4, stride=4), tnn.MultiheadAttention(width, heads)
  t_fc1, t_fc2, t_head = tnn.Linear(width, mlp), tnn.Linear(mlp, width), tnn.Linear(width, 10)
  _check_uniform(out["patch_embed"]["kernel"], _torch_bound(t_patch.weight), "patch_embed")
  _check_uniform(out["patch_embed"]["bias"], _torch_bound(t_patch.weight), "patch_embed/bias")
  _check_uniform(out["head"]["kernel"], _torch_bound(t_head.weight), "head")
  in_proj = t_attn.in_proj_weight.detach().numpy()  # (3E, E), xavier_uniform_
  xavier = math.sqrt(6.0 / (width + 3 * width))
  _check_uniform(in_proj, xavier, "torch in_proj")
  assert not t_attn.in_proj_bias.detach().numpy().any()
  assert not t_attn.out_proj.bias.detach().numpy().any()
  for i in range(2):
    blk = out[f"block{i}"]
    qkv = np.concatenate([np.asarray(blk["attn"][n]["kernel"]).ravel()
                          for n in ("query", "key", "value")])
    _check_uniform(qkv, xavier, f"block{i} qkv")
    assert stats.ks_2samp(qkv, in_proj.ravel()).pvalue > KS_P_MIN
    o = np.asarray(blk["attn"]["out"]["kernel"])
    _check_uniform(o, _torch_bound(t_attn.out_proj.weight), f"block{i} out")
    assert stats.ks_2samp(o.ravel(), t_attn.out_proj.weight.detach().numpy().ravel()
                          ).pvalue > KS_P_MIN
    for n in ("query", "key", "value", "out"):
      assert not np.asarray(blk["attn"][n]["bias"]).any(), n
    for name, t in (("mlp_fc1", t_fc1), ("mlp_fc2", t_fc2)):
      _check_uniform(blk[name]["kernel"], _torch_bound(t.weight), f"block{i}/{name}")
      _check_uniform(blk[name]["bias"], _torch_bound(t.weight), f"block{i}/{name}/bias")
    for ln in ("ln1", "ln2"):
      jax.tree.map(np.testing.assert_array_equal, blk[ln], params[f"block{i}"][ln])
  for name in ("cls_token", "pos_embedding"):  # not torch.nn layers: the model's own init
    np.testing.assert_array_equal(out[name], params[name])


def test_create_state_flax_unchanged_and_torch_redrawn():
  module = models.get("tiny_cnn", num_classes=10)
  method = methods_lib.from_config(config_lib.method_config("natural"))
  make = functools.partial(train.create_state, module, optax.sgd(0.1), method, 10, (8, 8, 3))

  @jax.jit  # One program (shared RNG work) instead of three compiles of Flax's init.
  def states(seed):
    ref = module.init({"params": jax.random.PRNGKey(seed), "dropout": jax.random.PRNGKey(seed + 1)},
                      jnp.zeros((1, 8, 8, 3)), train=False)
    return make(seed, init="flax"), ref, make(seed, init="torch")

  flax_state, ref, torch_state = states(0)
  jax.tree.map(np.testing.assert_array_equal, flax_state.params, ref["params"])
  jax.tree.map(np.testing.assert_array_equal, torch_state.batch_stats, ref["batch_stats"])
  for i in range(3):
    bn = f"BatchNorm_{i}"
    jax.tree.map(np.testing.assert_array_equal, torch_state.params[bn], ref["params"][bn])
    np.testing.assert_array_equal(torch_state.params[bn]["scale"], 1.0)
    np.testing.assert_array_equal(torch_state.params[bn]["bias"], 0.0)
  assert not np.allclose(torch_state.params["Conv_0"]["kernel"], ref["params"]["Conv_0"]["kernel"])
  _check_uniform(torch_state.params["Conv_1"]["kernel"], 1 / math.sqrt(9 * 16), "Conv_1")
  # Flax's lecun_normal has 3x PyTorch's variance (docs/fidelity.md, erratum E12).
  k = np.asarray(ref["params"]["Conv_1"]["kernel"])
  assert 2.5 < np.mean(k ** 2) * (3 * 9 * 16) < 3.5
  _, _, other_seed = states(1)
  assert not np.allclose(other_seed.params["Conv_1"]["kernel"], torch_state.params["Conv_1"]["kernel"])


def test_pure_jittable_and_keeps_input():
  params = {"a": {"kernel": jnp.ones((3, 3, 2, 4)), "bias": jnp.ones((4,))},
            "n": {"scale": jnp.full((4,), 2.0), "bias": jnp.full((4,), 3.0)}}
  out = jax.jit(init_lib.torch_default_init)(params, jax.random.key(0))
  np.testing.assert_array_equal(params["a"]["kernel"], 1.0)  # input not mutated
  np.testing.assert_array_equal(out["n"]["scale"], 2.0)
  np.testing.assert_array_equal(out["n"]["bias"], 3.0)
  assert np.abs(out["a"]["kernel"]).max() <= 1 / math.sqrt(18) * (1 + 1e-6)
  assert init_lib.apply_init("flax", params, jax.random.key(0)) is params


def test_bad_inputs_are_clear_errors():
  with pytest.raises(ValueError, match=r"model\.init 'pytorch'.*'flax', 'torch', 'wrn'"):
    init_lib.check_init("pytorch")
  cfg = config_lib.base_config()
  cfg.model.init = "kaiming"
  with pytest.raises(ValueError, match=r"'flax', 'torch'"):
    train.validate(cfg)  # before any data or compute
  with pytest.raises(ValueError, match=r"x/kernel has shape \(3, 4, 5\)"):
    init_lib.torch_default_init({"x": {"kernel": jnp.zeros((3, 4, 5))}}, jax.random.key(0))
  with pytest.raises(ValueError, match=r"x/bias has shape \(3,\), expected \(5,\)"):
    init_lib.torch_default_init({"x": {"kernel": jnp.zeros((4, 5)), "bias": jnp.zeros((3,))}},
                                jax.random.key(0))


def test_wrn_scheme_is_the_official_wideresnet_reinit():
  """init='wrn': conv N(0, 2/(kh kw out)), linear bias 0 [C:TRADES@6e8e11b:models/wideresnet.py:74-82].

  Each conv kernel's sample variance is within 5 standard errors of
  ``2 / (kh kw out)`` (``Var(w^2) = 2 s^4`` for a normal), its mean within 5
  standard errors of 0, and a KS test against torch's own ``normal_`` draw of
  the same shape has ``p > 1e-3``; the head's bias is exactly 0 and its kernel
  keeps ``torch.nn.Linear``'s uniform bound.
  """
  from kdrobust import models as models_lib  # pylint: disable=g-import-not-at-top
  model = models_lib.get("wrn", num_classes=10, depth=10, width=2)
  v = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  params = init_lib.apply_init("wrn", v["params"], jax.random.PRNGKey(1))
  flat = traverse_util.flatten_dict(params, sep="/")
  convs = [(k, np.asarray(w)) for k, w in flat.items() if k.endswith("kernel") and w.ndim == 4]
  assert len(convs) >= 8
  for k, w in convs:
    kh, kw, _, out = w.shape
    var = 2.0 / (kh * kw * out)
    n = w.size
    assert abs(np.mean(w ** 2) / var - 1) <= 5 * math.sqrt(2.0 / n), k
    assert abs(np.mean(w)) <= 5 * math.sqrt(var / n), k
  k, w = max(convs, key=lambda kv: kv[1].size)
  ref = torch.empty(w.shape[::-1]).normal_(0, math.sqrt(2.0 / (w.shape[0] * w.shape[1] * w.shape[3])))
  assert stats.ks_2samp(w.ravel(), ref.numpy().ravel()).pvalue > 1e-3, k
  dense = {k: np.asarray(a) for k, a in flat.items() if k.startswith("head/")}
  np.testing.assert_array_equal(dense["head/bias"], 0.0)
  bound = 1 / math.sqrt(dense["head/kernel"].shape[0])
  assert np.abs(dense["head/kernel"]).max() <= bound * (1 + 1e-6)
  # 'torch' differs: uniform convs with the fan-in bound.
  t = traverse_util.flatten_dict(init_lib.apply_init("torch", v["params"], jax.random.PRNGKey(1)),
                                 sep="/")
  assert np.abs(np.asarray(t[k])).max() <= 1 / math.sqrt(np.prod(w.shape[:-1])) * (1 + 1e-6)

"""bfloat16 models keep their stem in float32 (``kdrobust.models.layers.stem_dtype``).

In a bf16 model the input normalisation and the first layer compute in
float32 and the rest in bfloat16, so small input perturbations (APGD's halved
steps, FAB's moves) are not rounded away before the first layer. float32
and float64 models are unchanged. Checked on the jaxpr: the dtype of every
convolution's output, in order.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdrobust import models
from kdrobust.models import layers

# (name, kwargs): one model of every family, as small as it comes.
FAMILIES = [("resnet18", {}), ("preact_resnet18", {}), ("mobilenet_v2", {}),
            ("small_cnn", {}), ("wrn", {"depth": 10, "width": 1}),
            ("vit_ti", {"image_size": 32, "patch_size": 8})]


def _conv_dtypes(name, kw, dtype):
  m = models.get(name, num_classes=10, dtype=dtype, **kw)
  x = jnp.full((2, 32, 32, 3), 0.5, jnp.float32)
  v = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x, train=False))
  jaxpr = jax.make_jaxpr(lambda v, x: m.apply(v, x, train=False))(v, x)
  out = []

  def walk(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        out.append(str(eqn.outvars[0].aval.dtype))
      for sub in jax.core.jaxprs_in_params(eqn.params):
        walk(sub)
  walk(jaxpr.jaxpr)
  return out, m.apply


@pytest.mark.parametrize("name,kw", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_bf16_model_has_a_float32_stem_and_bf16_body(name, kw):
  dts, _ = _conv_dtypes(name, kw, "bfloat16")
  assert dts[0] == "float32", dts[:3]
  if len(dts) > 1:  # ViT has one convolution (the patch embedding)
    assert set(dts[1:]) == {"bfloat16"}, dts


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_full_precision_models_are_unchanged(dtype):
  assert layers.stem_dtype(dtype) == layers.compute_dtype(dtype)
  if dtype == "float32":
    dts, _ = _conv_dtypes("resnet18", {}, dtype)
    assert set(dts) == {"float32"}


def test_small_perturbation_survives_in_the_stem():
  """A 0.5/255 input change reaches the first layer intact in the float32 stem (bf16 would round
  most of it away near 1: spacing 2^-8)."""
  x = jnp.full((1, 8, 8, 3), 0.9, jnp.float32)
  d = 0.5 / 255
  stem = layers.Normalize(None, None, layers.stem_dtype("bfloat16"))
  diff = np.asarray(stem.apply({}, x + d) - stem.apply({}, x))
  np.testing.assert_allclose(diff, d, atol=1e-7)  # float32 rounding at 0.9: 6e-8
  bf = layers.Normalize(None, None, "bfloat16")
  lost = np.asarray(bf.apply({}, x + d).astype(jnp.float32) - bf.apply({}, x).astype(jnp.float32))
  assert np.abs(lost - d).max() > 0.5 * d  # the cast alone: the step is not representable

"""FAB / FAB-T: the box-constrained projections and the attack against pyautoattack.

FAB runs in float32 only (the reference casts its inputs), so the run parity
is float32: identical success flags, and |d adv| <= 1e-4 at worst with a
median <= 1e-6 (float32 rounding of the conv sums, amplified over 100
iterations of the minimum-norm iteration). The projections are pure
functions of their inputs and are checked in float64 against the reference
run in float64 (1e-9), and in float32 against the float64 reference (both
implementations sit within ~1e-5 of it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attacks_twins_test import (jax_model, make_data, make_weights, to_nchw, to_nhwc,
                                torch_model, x64)
from kdrobust.attacks import fab as fab_lib

torch = pytest.importorskip("torch")
fab_proj = pytest.importorskip("pyautoattack.fab_projections")
fab_pt = pytest.importorskip("pyautoattack.fab_pt")

N = 16


def _hyperplanes(seed, n=48, d=40, dtype=np.float64):
  """Random (t, w, b) with box-violating and degenerate cases mixed in."""
  rng = np.random.default_rng(seed)
  t = rng.uniform(0, 1, (n, d))
  t[:, :8] = np.round(t[:, :8])  # points on the faces of the box
  w = rng.normal(size=(n, d))
  w[:, 8:12] = 0.0  # zero weights stay put
  w[:4, 12:20] *= 1e-10  # tiny weights (L2 masks |w| < 1e-8)
  scale = rng.choice([0.01, 1.0, 30.0, 1e4], n)  # feasible .. infeasible targets
  b = np.sum(w * t, 1) + rng.normal(size=n) * scale
  return t.astype(dtype), w.astype(dtype), b.astype(dtype)


@pytest.mark.parametrize("name", ["linf", "l2"])
def test_projections_match_reference(name):
  ref = getattr(fab_proj, f"projection_{name}")
  ours = getattr(fab_lib, f"projection_{name}")
  for seed in range(3):
    t, w, b = _hyperplanes(seed)
    d_ref = ref(torch.tensor(t), torch.tensor(w), torch.tensor(b)).numpy()
    with x64():
      d64 = np.asarray(ours(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
    np.testing.assert_allclose(d64, d_ref, rtol=0, atol=1e-9)
    t32, w32, b32 = (v.astype(np.float32) for v in (t, w, b))
    d32 = np.asarray(ours(jnp.asarray(t32), jnp.asarray(w32), jnp.asarray(b32)))
    assert np.abs(d32 - d_ref).max() <= 1e-4 * max(1.0, np.abs(d_ref).max())
    # The projection lands on the hyperplane where feasible and inside the box.
    assert np.all(t + d64 >= -1e-12) and np.all(t + d64 <= 1 + 1e-12)
    assert np.all(d64[w == 0] == 0)


def test_projection_linf_is_minimal_on_an_interior_case():
  # One active coordinate: the L-inf-minimal step spreads evenly (lambda = c / sum |w|).
  t = np.full((1, 4), 0.5)
  w = np.array([[1.0, -1.0, 2.0, 0.0]])
  b = np.array([1.0 + 0.1])  # <w, t> = 1.0, need +0.1
  with x64():
    d = np.asarray(fab_lib.projection_linf(jnp.asarray(t), jnp.asarray(w), jnp.asarray(b)))
  np.testing.assert_allclose(d, [[0.025, -0.025, 0.025, 0.0]], atol=1e-12)
  np.testing.assert_allclose(np.sum(w * (t + d)), b, atol=1e-12)


def test_argsort_rows_is_a_stable_argsort():
  rng = np.random.default_rng(0)
  a = np.round(rng.uniform(0, 1, (7, 33)), 1).astype(np.float32)  # many ties
  np.testing.assert_array_equal(np.asarray(fab_lib.argsort_rows(jnp.asarray(a))),
                                np.argsort(a, axis=1, kind="stable"))


@pytest.fixture(scope="module")
def twins32():
  w = make_weights(0, scale=3.0)
  x, y = make_data(N, seed=5, weights=w)
  return jax_model(w), x.astype(np.float32), y, torch_model(w, torch.float32)


@pytest.mark.parametrize("norm,eps,targeted", [("Linf", 0.02, True), ("L2", 0.2, True),
                                               ("Linf", 0.02, False)])
def test_fab_matches_reference_float32(twins32, norm, eps, targeted):
  f, x, y, model = twins32
  n_targets = 3
  ref = fab_pt.FABAttack_PT(model, norm=norm, n_restarts=1, n_iter=100, eps=eps,
                            targeted=targeted, n_target_classes=n_targets, device="cpu")
  adv_ref = to_nhwc(ref.perturb(torch.tensor(to_nchw(x)), torch.tensor(y).long()))
  fooled_ref = np.abs(adv_ref - x).reshape(N, -1).max(1) > 0
  adv, fooled = fab_lib.fab_rounds(f, x, y, 0, eps=eps, norm=norm, targeted=targeted,
                                   n_iter=100, n_restarts=1, n_target_classes=n_targets,
                                   buckets=1)
  np.testing.assert_array_equal(fooled, fooled_ref)
  assert 0 < fooled.sum() < N
  dx = np.abs(adv - adv_ref).reshape(N, -1).max(1)
  assert dx.max() <= 1e-4 and np.median(dx) <= 1e-6, dx
  # Properties: inside the ball and the box, misclassified where changed.
  d = (adv - x).reshape(N, -1).astype(np.float64)
  size = np.abs(d).max(1) if norm == "Linf" else np.sqrt((d ** 2).sum(1))
  assert size.max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
  assert np.all(np.argmax(np.asarray(jax.jit(f)(adv)), -1)[fooled] != y[fooled])
  np.testing.assert_array_equal(adv[~fooled], x[~fooled])


def test_fab_restarts_are_deterministic_per_key(twins32):
  f, x, y, _ = twins32
  kw = dict(eps=0.02, norm="Linf", targeted=False, n_iter=10, n_restarts=2, buckets=1)
  a, fa = fab_lib.fab_rounds(f, x, y, 7, **kw)  # restart 1 uses a random start
  b, fb = fab_lib.fab_rounds(f, x, y, 7, **kw)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(fa, fb)
  assert np.abs(a - x).reshape(N, -1).max(1).max() <= 0.02 + 1e-6

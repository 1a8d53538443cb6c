"""APGD / APGD-T: schedule, quirks, float64 parity with pyautoattack, properties, tracing.

Parity (docs/evaluation.md, "How the attacks are checked"; the reference
``fra31/auto-attack@a392200 autoattack/autopgd_base.py``): the tiny twin models in
float64, the same numpy start
``x_init`` injected into ``APGDAttack.attack_single_run`` and into
:func:`apgd_single_run`. Tolerances:

* ``x_best`` and ``x_best_adv``: max |dx| <= 1e-9 (float64); ``acc`` identical.
* ``loss_best``: <= 1e-6 relative.
* L2 + DLR only: points that end misclassified may sit on DLR's plateau
  (true class 3rd: ``L = 1 - 1e-12/(z_pi1 - z_pi3)``), whose gradient is a
  catastrophic cancellation (relative error ~1e-4 even in float64); the L2
  step follows that direction, so those points are compared at 1e-3 and the
  points that stay robust at 1e-9. L-inf only uses the sign: exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attacks_twins_test import (jax_model, make_data, make_weights, to_nchw, to_nhwc,
                                torch_model, x64)
from kdrobust.attacks import apgd as apgd_lib

torch = pytest.importorskip("torch")
pyaa = pytest.importorskip("pyautoattack.autopgd_base")
torch.set_num_threads(1)

N = 16
EPS = {"Linf": 0.01, "L2": 0.1}  # mid-range robustness of the twin (about half survive)


def test_derived_integers_and_checkpoints():
  assert apgd_lib.apgd_params(100) == (22, 6, 3)
  assert apgd_lib.schedule_summary(100) == [21, 40, 56, 69, 79, 86, 92, 98]
  assert apgd_lib.schedule_summary(50) == [10, 20, 29, 37, 44]
  assert apgd_lib.schedule_summary(20) == [3, 6, 8, 9] + list(range(10, 20))
  assert apgd_lib.schedule_summary(10) == list(range(1, 10))
  is_check, window = apgd_lib.checkpoint_schedule(100)
  assert window[21] == 22 and window[40] == 19 and window[98] == 6
  assert window[~is_check].max() == 0


def test_oscillation_count_reads_the_zero_last_row_at_the_first_check():
  # n_iter = 10: first check at i = 1 with k = 2, so c = 1 compares L[0] > L[-1] = 0.
  ls = jnp.zeros((10, 3), jnp.float32)
  ls = ls.at[0].set(jnp.array([0.5, -0.5, 0.5])).at[1].set(jnp.array([0.6, -0.4, 0.4]))
  cnt = apgd_lib.oscillation_count(ls, 1, 2)
  # CE-like positive start counts as an increase; a negative (DLR) start does not.
  np.testing.assert_array_equal(np.asarray(cnt), [2.0, 1.0, 1.0])
  # Window [i-k+1, i] only.
  ls2 = jnp.arange(10.0)[:, None] * jnp.ones((1, 2))
  np.testing.assert_array_equal(np.asarray(apgd_lib.oscillation_count(ls2, 7, 3)), [3, 3])


def _reference_run(model, x, y, x0, *, n_iter, norm, eps, loss, y_target=None):
  if loss == "dlr-targeted":
    atk = pyaa.APGDAttack_targeted(model, n_iter=n_iter, norm=norm, eps=eps, device="cpu")
    atk.y_target = torch.tensor(y_target)
  else:
    atk = pyaa.APGDAttack(model, n_iter=n_iter, norm=norm, eps=eps, loss=loss, device="cpu")
  xt = torch.tensor(to_nchw(x))
  atk.init_hyperparam(xt)
  xb, acc, lb, xba = atk.attack_single_run(xt, torch.tensor(y), x_init=torch.tensor(to_nchw(x0)))
  return to_nhwc(xb), acc.numpy(), lb.numpy(), to_nhwc(xba)


def _start(x, eps, norm, seed=0):
  rng = np.random.default_rng(seed)
  if norm == "Linf":
    t = rng.uniform(-1, 1, x.shape)
    n = np.abs(t).reshape(len(x), -1).max(1)
  else:
    t = rng.normal(size=x.shape)
    n = np.sqrt((t ** 2).reshape(len(x), -1).sum(1))
  return x + eps * t / (n[:, None, None, None] + 1e-12)


CASES = [(norm, loss, n_iter) for norm in ("Linf", "L2") for loss in ("ce", "dlr")
         for n_iter in (10, 20, 100)]


@pytest.fixture(scope="module")
def twins():
  w = make_weights(0, scale=3.0)
  x, y = make_data(N, seed=5, weights=w)
  return w, x, y, torch_model(w)


@pytest.mark.parametrize("norm,loss,n_iter", CASES)
def test_apgd_matches_reference_float64(twins, norm, loss, n_iter):
  w, x, y, model = twins
  eps = EPS[norm]
  x0 = _start(x, eps, norm)
  xb_r, acc_r, lb_r, xba_r = _reference_run(model, x, y, x0, n_iter=n_iter, norm=norm,
                                            eps=eps, loss=loss)
  with x64():
    run = apgd_lib.apgd_single_run(jax_model(w, jnp.float64), x, y, x0, eps=eps,
                                   n_iter=n_iter, norm=norm, loss=loss)
    xb, acc, lb, xba = (np.asarray(v) for v in run[:4])
  assert xb.dtype == np.float64
  np.testing.assert_array_equal(acc, acc_r)
  tol = np.full(N, 1e-9)
  if norm == "L2" and loss == "dlr":
    tol[~acc_r] = 1e-3  # the DLR plateau (module docstring)
  dxb = np.abs(xb - xb_r).reshape(N, -1).max(1)
  dxa = np.abs(xba - xba_r).reshape(N, -1).max(1)
  assert np.all(dxb <= tol), (dxb.max(), np.flatnonzero(dxb > tol))
  assert np.all(dxa <= tol), dxa.max()
  if not (norm == "L2" and loss == "dlr"):
    np.testing.assert_allclose(lb, lb_r, rtol=1e-6, atol=1e-9)
  assert 0 < acc_r.sum() < N  # the case exercises both outcomes


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_apgd_targeted_matches_reference_float64(twins, norm):
  w, x, y, model = twins
  eps = EPS[norm]
  x0 = _start(x, eps, norm, seed=1)
  with x64():
    f = jax_model(w, jnp.float64)
    yt = np.asarray(apgd_lib.ranked_targets(f(x), 3))  # the 3rd most likely class
    run = apgd_lib.apgd_single_run(f, x, y, x0, eps=eps, n_iter=100, norm=norm,
                                   loss="dlr-targeted", y_target=yt)
    xb, acc, lb, xba = (np.asarray(v) for v in run[:4])
  xb_r, acc_r, lb_r, xba_r = _reference_run(model, x, y, x0, n_iter=100, norm=norm,
                                            eps=eps, loss="dlr-targeted", y_target=yt)
  np.testing.assert_array_equal(acc, acc_r)
  assert np.abs(xb - xb_r).max() <= 1e-9
  assert np.abs(xba - xba_r).max() <= 1e-9
  np.testing.assert_allclose(lb, lb_r, rtol=1e-6, atol=1e-9)
  # The reference's own target choice agrees with ours (no ties here).
  zs = model(torch.tensor(to_nchw(x))).sort(dim=1)[1][:, -3].numpy()
  np.testing.assert_array_equal(zs, yt)


def test_host_and_device_loops_agree(twins):
  w, x, y, _ = twins
  x0 = _start(x, 0.01, "Linf", seed=2)
  f = jax_model(w)
  xs = x.astype(np.float32)
  a = apgd_lib.apgd_single_run(f, xs, y, x0, eps=0.01, n_iter=20, loss="dlr", loop="host")
  b = apgd_lib.apgd_single_run(f, xs, y, x0, eps=0.01, n_iter=20, loss="dlr", loop="device")
  for u, v in zip(a, b):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# ---------------------------------------------------------------------------
# Properties of the host-level attacks.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm,eps", [("linf", 0.02), ("l2", 0.2)])
def test_apgd_and_apgd_t_stay_in_ball_and_box_and_are_deterministic(twins, norm, eps):
  w, x, y, _ = twins
  f = jax_model(w)
  xs = x.astype(np.float32)
  for attack in (apgd_lib.apgd, apgd_lib.apgd_targeted):
    kw = dict(n_target_classes=3) if attack is apgd_lib.apgd_targeted else {}
    xa = attack(f, xs, y, 3, eps=eps, norm=norm, n_iter=10, buckets=1, **kw)
    d = (xa - xs).reshape(N, -1).astype(np.float64)
    size = np.abs(d).max(1) if norm == "linf" else np.sqrt((d ** 2).sum(1))
    assert size.max() <= eps + 1e-6
    assert xa.min() >= 0.0 and xa.max() <= 1.0
    fooled = np.argmax(np.asarray(jax.jit(f)(xa)), -1) != y
    assert fooled.any() and not fooled.all()  # it attacks (the loss goes up)
    np.testing.assert_array_equal(xa[~fooled], xs[~fooled])  # clean where not fooled
    xb = attack(f, xs, y, 3, eps=eps, norm=norm, n_iter=10, buckets=1, **kw)
    np.testing.assert_array_equal(xa, xb)  # deterministic per key


def test_no_retrace_across_batches_and_epsilons(twins):
  w, x, y, _ = twins
  f = jax_model(w)
  xs = x.astype(np.float32)
  kw = dict(n_iter=5, batch_size=8, buckets=1)
  apgd_lib.apgd(f, xs[:8], y[:8], 0, eps=0.01, **kw)
  before = dict(apgd_lib.TRACES)
  apgd_lib.apgd(f, xs[8:], y[8:], 1, eps=0.02, **kw)  # new batch, new eps, new key
  apgd_lib.apgd(f, xs, y, 2, eps=0.03, **kw)  # two chunks of the same shape
  assert dict(apgd_lib.TRACES) == before
  assert before["apgd_step"] >= 1


def test_eot_averages_identical_gradients_for_a_deterministic_model(twins):
  w, x, y, _ = twins
  f = jax_model(w)
  xs = x.astype(np.float32)
  x0 = _start(xs, 0.01, "Linf", seed=3)
  a = apgd_lib.apgd_single_run(f, xs, y, x0, eps=0.01, n_iter=10)
  b = apgd_lib.apgd_single_run(f, xs, y, x0, eps=0.01, n_iter=10, eot_iter=4)
  np.testing.assert_array_equal(np.asarray(a.acc), np.asarray(b.acc))
  np.testing.assert_allclose(np.asarray(a.x_best_adv), np.asarray(b.x_best_adv), atol=1e-6)

"""AutoAttack stages under their PRODUCTION randomness and schedules (issue 10, item 1).

The parity tests (``attacks_{apgd,fab,square}_test.py``) inject the
reference's random draws into the kernels. Here nothing is injected: each
stage runs through its production driver (``apgd_rounds``, ``fab_rounds``,
``square_batches``, ``autoattack``) with its own ``jax.random`` keys, and the
test observes what the kernels are actually given, through spies on the
module's own jitted pieces (``apgd._apgd_step_jit``, ``apgd.run_rounds``,
``fab._fab_init_jit``) and through models that record their inputs
(``jax.debug.callback``). The reference ``pyautoattack`` 0.2.0 runs on the
same model and inputs with its own torch RNG, observed the same way (wrapped
methods, a recording model). Properties compared (``fra31/auto-attack@a392200``
``autoattack/autopgd_base.py``, ``fab_pt.py``, ``square.py``, ``autoattack.py``):

* start points: APGD L-inf ``x + eps t / max|t|``, ``t ~ U[-1, 1)`` (on the
  eps-sphere, then clipped), APGD L2 ``x + eps t / ||t||``, ``t ~ N(0, I)``;
  FAB the same at radius ``eps / 2`` from restart 1 on and exactly ``x`` in
  restart 0 (so FAB-T, one restart, never starts at random); Square L-inf
  vertical stripes ``x +- eps``, Square L2 a tile grid rescaled to ``eps``;
* the per-iteration Square draws: the side schedule, the window position
  ``floor(U (h - s))`` and the signs shared by the batch (L-inf), the windows
  and the rescaling onto the sphere (L2), and the ``KeySource`` draws themselves;
* no key reuse: draws differ across rows, iterations, restarts, target
  rounds, chunks, stages and seeds, and are identical for the same seed;
* the target of round ``r`` of APGD-T / FAB-T: the ``(2 + r // restarts)``-th
  largest clean logit, round by round as the reference;
* the bookkeeping: each round attacks exactly the points still robust;
* the device loop (``lax.fori_loop``, off CPU) bit-identical to the host loop
  (the CPU default) for APGD (targeted DLR, CE with EoT) and FAB (FAB-T, FAB);
* the 'rand' cascade: every one of the ``eot_iter = 20`` gradient samples of
  every step gets its own key, the step follows their average, and a run makes
  as many forward passes as the reference's.

Statistics state their tolerances next to the assertion; every run is
seeded, so the tests are deterministic. Tolerances are about 5 standard
errors of the statistic under the correct distribution (a planted bug moves
a statistic far more). A linear model on 8x8x3 inputs (its torch twin for the
reference), 32 points that it provably classifies correctly under every
attack at ``EPS`` (so every round attacks every point); about a minute of
CPU time. The last test guards a fixed defect: the randomized APGD-T target pass
reused the key of step 1.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from pyautoattack.fab_pt import FABAttack_PT
from pyautoattack.square import SquareAttack

from kdrobust.attacks import apgd as apgd_lib
from kdrobust.attacks import autoattack as aa_lib
from kdrobust.attacks import fab as fab_lib
from kdrobust.attacks import square as sq

torch.set_num_threads(1)

H = W = 8
C = 3
D = H * W * C
K = 10
N = 32
EPS = {"linf": 0.01, "l2": 0.1}  # every point is provably robust at these radii
REF_NORM = {"linf": "Linf", "l2": "L2"}


# ---------------------------------------------------------------------------
# The model (JAX and torch, same weights) and the data.
# ---------------------------------------------------------------------------

_rng = np.random.default_rng(0)
W_LIN = _rng.normal(0.0, 0.05, (D, K)).astype(np.float32)
B_LIN = _rng.normal(0.0, 0.05, (K,)).astype(np.float32)
_WJ = jnp.asarray(W_LIN)
_BJ = jnp.asarray(B_LIN)


def linear(x):
  """``flatten_hwc(x - 0.5) @ W + b``: the JAX model (NHWC)."""
  return jnp.dot((x - 0.5).reshape(x.shape[0], -1), _WJ,
                 precision=jax.lax.Precision.HIGHEST) + _BJ


class TorchLinear(torch.nn.Module):
  """The same model for NCHW torch inputs (flattened in h, w, c order)."""

  def __init__(self):
    super().__init__()
    self.w = torch.tensor(W_LIN)
    self.b = torch.tensor(B_LIN)

  def forward(self, x):
    return (x - 0.5).permute(0, 2, 3, 1).reshape(x.shape[0], -1) @ self.w + self.b


class TorchRecorder(torch.nn.Module):
  """Wraps a torch model and keeps a copy of every input (NHWC numpy)."""

  def __init__(self, inner):
    super().__init__()
    self.inner = inner
    self.calls = []

  def forward(self, x):
    self.calls.append(x.detach().permute(0, 2, 3, 1).numpy().copy())
    return self.inner(x)


def clean_logits(x):
  """The model's logits in float64 (numpy)."""
  return (x.reshape(x.shape[0], -1).astype(np.float64) - 0.5) @ W_LIN + B_LIN


def _provable_margin(x, y, norm):
  """``min_j z_y - z_j - eps ||W_y - W_j||_q``: > 0 means no attack can succeed."""
  z = clean_logits(x)
  dw = W_LIN[:, y].T[:, :, None] - W_LIN[None, :, :]  # [n, D, K]
  q = np.abs(dw).sum(1) if norm == "linf" else np.sqrt((dw ** 2).sum(1))
  m = z[np.arange(len(y)), y][:, None] - z - EPS[norm] * q
  m[np.arange(len(y)), y] = np.inf
  return m.min(1)


def _make_data():
  rng = np.random.default_rng(1)
  x = rng.uniform(0.1, 0.9, (400, H, W, C)).astype(np.float32)
  y = np.argmax(clean_logits(x), -1)
  ok = (_provable_margin(x, y, "linf") > 1e-3) & (_provable_margin(x, y, "l2") > 1e-3)
  ok &= np.diff(np.sort(clean_logits(x), -1), axis=-1).min(-1) > 1e-4  # no near ties
  idx = np.flatnonzero(ok)[:2 * N]
  assert idx.size == 2 * N
  return x[idx], y[idx].astype(np.int32)


# Interior points ([0.1, 0.9]: no start is clipped) that no attack can fool at EPS.
X, Y = (a[:N] for a in _make_data())
X2, Y2 = (a[N:] for a in _make_data())


def _nchw(x):
  return torch.tensor(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


# ---------------------------------------------------------------------------
# Statistics.
# ---------------------------------------------------------------------------


def ks_2samp(a, b) -> float:
  """Two-sample Kolmogorov-Smirnov distance ``sup |F_a - F_b|``."""
  a = np.sort(np.ravel(a))
  b = np.sort(np.ravel(b))
  v = np.concatenate([a, b])
  return float(np.max(np.abs(np.searchsorted(a, v, "right") / a.size
                             - np.searchsorted(b, v, "right") / b.size)))


def ks_uniform(a, lo, hi) -> float:
  """KS distance between the sample ``a`` and ``U[lo, hi]``."""
  a = np.sort(np.ravel(a))
  f = np.clip((a - lo) / (hi - lo), 0, 1)
  n = a.size
  return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


def kurtosis(a) -> float:
  m = np.ravel(a) - np.mean(a)
  return float(np.mean(m ** 4) / np.mean(m ** 2) ** 2)


def row_corr(a, b) -> np.ndarray:
  """Pearson correlation of matching rows of ``a [n, ...]`` and ``b [n, ...]``."""
  a = a.reshape(a.shape[0], -1) - a.reshape(a.shape[0], -1).mean(1, keepdims=True)
  b = b.reshape(b.shape[0], -1) - b.reshape(b.shape[0], -1).mean(1, keepdims=True)
  return (a * b).sum(1) / np.sqrt((a ** 2).sum(1) * (b ** 2).sum(1))


def max_offdiag_corr(a) -> float:
  """Largest |correlation| between two different rows of ``a [n, ...]``."""
  a = a.reshape(a.shape[0], -1)
  c = np.corrcoef(a)
  np.fill_diagonal(c, 0.0)
  return float(np.abs(c).max())


# Correlation of two independent 192-dim noise vectors: sd 1/sqrt(192) = 0.072.
CORR_TOL = 0.45  # > 6 sd; a reused key gives 1.0


def _lp(d, norm):
  d = d.reshape(d.shape[0], -1).astype(np.float64)
  return np.abs(d).max(1) if norm == "linf" else np.sqrt((d ** 2).sum(1))


# ---------------------------------------------------------------------------
# Spies on kdrobust's production path (host loop: the CPU default).
# ---------------------------------------------------------------------------


class ApgdSpy:
  """Records every APGD run: chunk rows, round, clipped start, target, success.

  ``run_rounds`` is wrapped to see each chunk (its ``valid`` mask, round index
  and key) and ``_apgd_step_jit`` to see the state the kernel starts from
  (``x_adv`` at step 0, after clipping) and its targets.
  """

  def __init__(self, monkeypatch):
    self.runs = []
    step0 = apgd_lib._apgd_step_jit
    rounds0 = apgd_lib.run_rounds

    def step(i, s, c, **kw):
      if int(i) == 0:
        yt = None if c.y_target is None else np.asarray(c.y_target)
        self.runs.append(dict(x=np.asarray(c.x), y=np.asarray(c.y), y_target=yt,
                              x0=np.asarray(s["x_adv"])))
      return step0(i, s, c, **kw)

    def rounds(kernel, *a, **kw):
      def spied(xb, yb, valid, r, key):
        out = kernel(xb, yb, valid, r, key)
        run = self.runs[-1]
        nv = int(np.sum(np.asarray(valid)))
        run.update(valid=np.asarray(valid), round=int(r), nv=nv,
                   key=np.asarray(jax.random.key_data(key)), success=np.asarray(out[1]))
        return out
      return rounds0(spied, *a, **kw)

    monkeypatch.setattr(apgd_lib, "_apgd_step_jit", step)
    monkeypatch.setattr(apgd_lib, "run_rounds", rounds)


def _ref_apgd_runs(atk, rec):
  """Wrap the reference attack's ``attack_single_run``: record x, target, start."""
  runs = []
  orig = atk.attack_single_run

  def wrapped(x, y, x_init=None):
    n0 = len(rec.calls)
    out = orig(x, y, x_init)
    yt = getattr(atk, "y_target", None)
    runs.append(dict(x=x.permute(0, 2, 3, 1).numpy().copy(), y=y.numpy().copy(),
                     y_target=None if yt is None else yt.numpy().copy(),
                     x0=rec.calls[n0], acc=out[1].numpy().copy()))
    return out

  atk.attack_single_run = wrapped
  return runs


def _assert_resolve_loop_host():
  # The spies see the host-driven path, which is what production uses on CPU.
  assert jax.default_backend() == "cpu"
  assert apgd_lib.resolve_loop("auto") == "host"


# ---------------------------------------------------------------------------
# APGD / APGD-T: start points.
# ---------------------------------------------------------------------------


def _check_start_geometry(u_kd, u_ref, norm, radius_tol=1e-4):
  """``u = (x0 - x) / radius`` per row ``[n, D]`` for kdrobust and the reference."""
  for u in (u_kd, u_ref):
    size = _lp(u, norm)
    # On the sphere: max|u| = 1 (L-inf), ||u||_2 = 1 (L2), float32 rounding only.
    assert np.abs(size - 1.0).max() <= radius_tol, size
  if norm == "linf":
    # t ~ U[-1, 1) normalised by max|t| (max|t| ~ 1 - 1/193): coordinates ~ U[-1, 1].
    # n = 18432 coordinates: KS sd ~ 0.004; tolerance 0.03.
    assert ks_uniform(u_kd, -1, 1) <= 0.03
    assert ks_uniform(u_ref, -1, 1) <= 0.03
  else:
    # t ~ N(0, I) normalised: sqrt(D) u ~ N(0, 1) per coordinate; kurtosis 3
    # (uniform draws would give 1.8, sign draws 1.0); sd of the estimate ~0.04.
    for u in (u_kd, u_ref):
      assert abs(kurtosis(u) - 3.0) <= 0.25
  # kdrobust vs the reference (each with its own RNG): two-sample KS, sd ~ 0.006.
  assert ks_2samp(u_kd, u_ref) <= 0.04
  assert abs(np.mean(u_kd)) <= 0.02 and abs(np.mean(u_ref)) <= 0.02


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_start_points_match_the_reference(monkeypatch, norm):
  _assert_resolve_loop_host()
  eps = EPS[norm]
  spy = ApgdSpy(monkeypatch)
  n_restarts = 3
  apgd_lib.apgd(linear, X, Y, 0, eps=eps, norm=norm, n_iter=1, n_restarts=n_restarts,
                buckets=1)
  # Nothing is fooled, so every restart attacks every point (one chunk each).
  assert [r["round"] for r in spy.runs] == list(range(n_restarts))
  assert all(r["nv"] == N and not r["success"].any() for r in spy.runs)
  u_kd = np.stack([(r["x0"] - r["x"]) / eps for r in spy.runs])  # [R, N, H, W, C]

  rec = TorchRecorder(TorchLinear())
  atk = APGDAttack(rec, n_iter=1, norm=REF_NORM[norm], n_restarts=n_restarts, eps=eps,
                   seed=0, loss="ce", device="cpu")
  ref_runs = _ref_apgd_runs(atk, rec)
  atk.perturb(_nchw(X), torch.tensor(Y, dtype=torch.long))
  assert len(ref_runs) == n_restarts
  u_ref = np.stack([(r["x0"] - r["x"]) / eps for r in ref_runs])

  _check_start_geometry(u_kd.reshape(-1, D), u_ref.reshape(-1, D), norm)
  # Fresh draws for every restart and every row (the reference's stream is one
  # torch generator; ours a key per round and chunk).
  for u in (u_kd, u_ref):
    for a in range(n_restarts):
      assert max_offdiag_corr(u[a]) <= CORR_TOL
      for b in range(a):
        assert np.abs(row_corr(u[a], u[b])).max() <= CORR_TOL


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_start_is_clipped_to_the_box(monkeypatch, norm):
  """Images at 0 and at 1: the start is clipped; half the coordinates sit on the face."""
  eps = EPS[norm]
  x = np.concatenate([np.zeros((N // 2, H, W, C), np.float32),
                      np.ones((N // 2, H, W, C), np.float32)])
  y = np.argmax(np.asarray(linear(x)), -1).astype(np.int32)
  spy = ApgdSpy(monkeypatch)
  apgd_lib.apgd(linear, x, y, 0, eps=eps, norm=norm, n_iter=1, buckets=1)
  rec = TorchRecorder(TorchLinear())
  atk = APGDAttack(rec, n_iter=1, norm=REF_NORM[norm], n_restarts=1, eps=eps, seed=0,
                   loss="ce", device="cpu")
  ref_runs = _ref_apgd_runs(atk, rec)
  atk.perturb(_nchw(x), torch.tensor(y, dtype=torch.long))
  for run in (spy.runs[0], ref_runs[0]):
    x0, xc = run["x0"], run["x"]
    assert x0.min() >= 0.0 and x0.max() <= 1.0
    on_face = np.mean(x0 == xc)  # clipped back onto the face: about half (n = 6144)
    assert 0.47 <= on_face <= 0.53, on_face
    assert _lp(x0 - xc, norm).max() <= eps * (1 + 1e-5)


def test_apgd_draws_differ_across_chunks_rounds_stages_and_seeds(monkeypatch):
  """Key derivation: a key per (stage, round, chunk); same seed, same draws."""
  eps = EPS["linf"]
  # Point 32 repeats point 0, in the second chunk (batch_size 32).
  x = np.concatenate([X, X2])
  y = np.concatenate([Y, Y2])
  x[N], y[N] = x[0], y[0]
  spy = ApgdSpy(monkeypatch)
  kw = dict(eps=eps, norm="linf", n_iter=1, batch_size=N, buckets=1)
  apgd_lib.apgd_targeted(linear, x, y, 5, n_target_classes=2, n_restarts=2, **kw)
  runs = spy.runs
  assert [(r["round"], r["nv"]) for r in runs] == [(r, N) for r in range(4) for _ in range(2)]
  keys = {tuple(r["key"].ravel()) for r in runs}
  assert len(keys) == len(runs)  # a distinct key per (round, chunk)
  u = [(r["x0"] - r["x"]) / eps for r in runs]
  for i in range(len(u)):
    for j in range(i):
      assert np.abs(row_corr(u[i], u[j])).max() <= CORR_TOL, (i, j)
  # The same image in two chunks gets two different starts.
  assert abs(row_corr(u[0][:1], u[1][:1])[0]) <= CORR_TOL
  # Same seed: the same draws; another seed: other draws.
  spy.runs = []
  apgd_lib.apgd_targeted(linear, x, y, 5, n_target_classes=2, n_restarts=2, **kw)
  for a, b in zip(runs, spy.runs):
    np.testing.assert_array_equal(a["x0"], b["x0"])
  spy.runs = []
  apgd_lib.apgd_targeted(linear, x, y, 6, n_target_classes=2, n_restarts=2, **kw)
  assert np.abs(row_corr(u[0], (spy.runs[0]["x0"] - x[:N]) / eps)).max() <= CORR_TOL
  # AutoAttack: APGD-CE (stage 0) and APGD-T (stage 1) draw from different keys.
  spy.runs = []
  res = aa_lib.autoattack(linear, X, Y, eps=eps, version="custom",
                          attacks=["apgd-ce", "apgd-t"], seed=0, buckets=1, checks=False,
                          config_overrides=dict(n_iter=1, apgd_targets=2))
  assert res.robust.all() and len(spy.runs) == 3  # ce, then targets 2 and 3
  ce, t2, t3 = ((r["x0"] - r["x"]) / eps for r in spy.runs)
  for a, b in ((ce, t2), (ce, t3), (t2, t3)):
    assert np.abs(row_corr(a, b)).max() <= CORR_TOL


# ---------------------------------------------------------------------------
# Targets of APGD-T and FAB-T.
# ---------------------------------------------------------------------------


def _clean_rank(x, k):
  """Index of the ``k``-th largest clean logit (float64 logits: no ties here)."""
  return np.argsort(clean_logits(x), -1)[:, -k]


def test_clean_logits_have_no_near_ties():
  z = np.sort(clean_logits(X), -1)
  # Gaps > 1e-4 while float32 logits err by < 1e-6: float32 and float64 ranks agree.
  assert np.diff(z, axis=-1).min() > 1e-4


@pytest.mark.parametrize("n_targets,n_restarts", [(9, 1), (3, 2)])
def test_apgd_t_targets_follow_the_clean_ranks_like_the_reference(monkeypatch, n_targets,
                                                                  n_restarts):
  eps = EPS["linf"]
  spy = ApgdSpy(monkeypatch)
  apgd_lib.apgd_targeted(linear, X, Y, 0, eps=eps, n_iter=1, n_target_classes=n_targets,
                         n_restarts=n_restarts, buckets=1)
  rec = TorchRecorder(TorchLinear())
  atk = APGDAttack_targeted(rec, n_iter=1, norm="Linf", n_restarts=n_restarts, eps=eps,
                            seed=0, device="cpu", n_target_classes=n_targets)
  ref_runs = _ref_apgd_runs(atk, rec)
  atk.perturb(_nchw(X), torch.tensor(Y, dtype=torch.long))
  # Round r: target rank 2 + r // n_restarts, target-major like the reference.
  ranks = [2 + r // n_restarts for r in range(n_targets * n_restarts)]
  assert [r["round"] for r in spy.runs] == list(range(len(ranks)))
  assert len(ref_runs) == len(ranks)
  for k, run, ref in zip(ranks, spy.runs, ref_runs):
    assert run["nv"] == N and ref["x"].shape[0] == N  # nothing fooled: all attacked
    np.testing.assert_array_equal(run["y_target"], _clean_rank(X, k))
    np.testing.assert_array_equal(run["y_target"], ref["y_target"])
  if n_targets == 9:  # 10 classes: the 9 targets are every class but y, once each
    tg = np.stack([r["y_target"] for r in spy.runs], 1)
    assert np.all(np.sort(np.concatenate([tg, Y[:, None]], 1), 1) == np.arange(K))


def test_apgd_t_rounds_attack_exactly_the_points_still_robust(monkeypatch):
  """Bookkeeping: round r + 1 attacks the points of round r its run did not fool."""
  rng = np.random.default_rng(3)
  x = rng.uniform(0.1, 0.9, (N, H, W, C)).astype(np.float32)
  y = np.argmax(np.asarray(linear(x)), -1).astype(np.int32)
  y[:3] = (y[:3] + 1) % K  # three clean errors: never attacked
  spy = ApgdSpy(monkeypatch)
  xa = apgd_lib.apgd_targeted(linear, x, y, 0, eps=0.01, n_iter=10, n_target_classes=4,
                              buckets=1)
  attacked = [np.flatnonzero((x[:, None] == r["x"][r["valid"]][None]).all((2, 3, 4)).any(1))
              for r in spy.runs]
  np.testing.assert_array_equal(attacked[0], np.arange(3, N))
  fooled_total = np.zeros(N, bool)
  for i, run in enumerate(spy.runs):
    # The run's rows are the points, in index order.
    np.testing.assert_array_equal(run["x"][:run["nv"]], x[attacked[i]])
    fooled = attacked[i][run["success"][:run["nv"]]]
    fooled_total[fooled] = True
    if i + 1 < len(spy.runs):
      np.testing.assert_array_equal(attacked[i + 1], np.setdiff1d(attacked[i], fooled))
  assert 0 < fooled_total.sum() < N - 3  # the check is not vacuous
  pred = np.argmax(np.asarray(linear(xa)), -1)
  np.testing.assert_array_equal(pred[3:] != y[3:], fooled_total[3:])
  np.testing.assert_array_equal(xa[~fooled_total], x[~fooled_total])


def _fab_spy(monkeypatch):
  runs = []
  init0 = fab_lib._fab_init_jit

  def init(fn, x, y, x_start, target_class, *, targeted):
    c, s = init0(fn, x, y, x_start, target_class, targeted=targeted)
    runs.append(dict(x=np.asarray(x), x_start=np.asarray(x_start), rank=int(target_class),
                     y_t=np.asarray(c.y_t)))
    return c, s

  monkeypatch.setattr(fab_lib, "_fab_init_jit", init)
  return runs


def _ref_fab_runs(atk):
  """Record the start and target of each reference FAB run (first linearisation)."""
  runs = []
  orig_run = atk.attack_single_run
  orig_t = atk.get_diff_logits_grads_batch_targeted
  orig_u = atk.get_diff_logits_grads_batch

  def run(x, y=None, use_rand_start=False, is_targeted=False):
    runs.append(dict(x=x.permute(0, 2, 3, 1).numpy().copy(), rand=use_rand_start))
    return orig_run(x, y, use_rand_start, is_targeted)

  def first(imgs, la_target=None):
    if "x_start" not in runs[-1]:
      runs[-1]["x_start"] = imgs.permute(0, 2, 3, 1).numpy().copy()
      runs[-1]["y_t"] = None if la_target is None else la_target.numpy().copy()

  def grads_t(imgs, la, la_target):
    first(imgs, la_target)
    return orig_t(imgs, la, la_target)

  def grads_u(imgs, la):
    first(imgs)
    return orig_u(imgs, la)

  atk.attack_single_run = run
  atk.get_diff_logits_grads_batch_targeted = grads_t
  atk.get_diff_logits_grads_batch = grads_u
  return runs


@pytest.mark.parametrize("n_targets,n_restarts", [(9, 1), (2, 2)])
def test_fab_t_targets_and_starts_like_the_reference(monkeypatch, n_targets, n_restarts):
  _assert_resolve_loop_host()
  eps = EPS["linf"]
  runs = _fab_spy(monkeypatch)
  _, fooled = fab_lib.fab_rounds(linear, X, Y, 0, eps=eps, norm="linf", targeted=True,
                                 n_iter=1, n_restarts=n_restarts,
                                 n_target_classes=n_targets, buckets=1)
  assert not fooled.any()
  atk = FABAttack_PT(TorchLinear(), norm="Linf", n_restarts=n_restarts, n_iter=1, eps=eps,
                     seed=0, targeted=True, device="cpu", n_target_classes=n_targets)
  ref = _ref_fab_runs(atk)
  atk.perturb(_nchw(X), torch.tensor(Y, dtype=torch.long))
  n_rounds = n_targets * n_restarts
  assert len(runs) == len(ref) == n_rounds
  for r, (run, rr) in enumerate(zip(runs, ref)):
    k, restart = 2 + r // n_restarts, r % n_restarts
    assert run["rank"] == k
    np.testing.assert_array_equal(run["y_t"], _clean_rank(X, k))
    np.testing.assert_array_equal(run["y_t"], rr["y_t"])
    assert rr["rand"] == (restart > 0)
    for s, x in ((run["x_start"], run["x"]), (rr["x_start"], rr["x"])):
      if restart == 0:  # AutoAttack's FAB-T: no random start
        np.testing.assert_array_equal(s, x)
      else:  # radius eps / 2 (no clipping at these points)
        assert np.abs(_lp(s - x, "linf") - eps / 2).max() <= 1e-6


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_random_starts_match_the_reference(monkeypatch, norm):
  """Untargeted FAB (version 'plus'): restart 0 at x, then x + (eps/2) t/||t||_p."""
  eps = EPS[norm]
  runs = _fab_spy(monkeypatch)
  n_restarts = 4
  fab_lib.fab_rounds(linear, X, Y, 0, eps=eps, norm=norm, targeted=False, n_iter=1,
                     n_restarts=n_restarts, buckets=1)
  atk = FABAttack_PT(TorchLinear(), norm=REF_NORM[norm], n_restarts=n_restarts, n_iter=1,
                     eps=eps, seed=0, targeted=False, device="cpu")
  ref = _ref_fab_runs(atk)
  atk.perturb(_nchw(X), torch.tensor(Y, dtype=torch.long))
  assert len(runs) == len(ref) == n_restarts
  for rs in (runs, ref):
    np.testing.assert_array_equal(rs[0]["x_start"], rs[0]["x"])
  u_kd = np.stack([(r["x_start"] - r["x"]) / (eps / 2) for r in runs[1:]])
  u_ref = np.stack([(r["x_start"] - r["x"]) / (eps / 2) for r in ref[1:]])
  _check_start_geometry(u_kd.reshape(-1, D), u_ref.reshape(-1, D), norm, radius_tol=2e-4)
  for u in (u_kd, u_ref):
    for a in range(n_restarts - 1):
      assert max_offdiag_corr(u[a]) <= CORR_TOL
      for b in range(a):
        assert np.abs(row_corr(u[a], u[b])).max() <= CORR_TOL


# ---------------------------------------------------------------------------
# Device loop == host loop (bit-identical, same key).
# ---------------------------------------------------------------------------


NOISE = 0.1
RAND_CALLS = []  # (input, key data) of every call of rand_model, in order


def noisy_linear(x, key):
  """A randomized model for EoT: logits + N(0, NOISE^2) noise drawn from ``key``
  (through an RngBitGenerator key: threefry normals compile slowly on CPU)."""
  return linear(x) + NOISE * jax.random.normal(apgd_lib.bulk_key(key), (x.shape[0], K),
                                               x.dtype)


def rand_model(x, key):
  """``noisy_linear`` that records its input and key (one module-level function, so
  the tests that use it share its compiled kernels)."""
  jax.debug.callback(lambda v, k: RAND_CALLS.append((np.asarray(v), np.asarray(k))), x,
                     jax.random.key_data(key))
  return noisy_linear(x, key)


W_MIX = np.random.default_rng(7).normal(0.0, 1.0, (K, K)).astype(np.float32)


def tanh_net(x):
  """A small nonlinear model (FAB solves a linear model exactly in one or two steps,
  after which more iterations change nothing)."""
  h = jnp.tanh(8.0 * linear(x))
  return jnp.dot(h, jnp.asarray(W_MIX), precision=jax.lax.Precision.HIGHEST)


def _device_data():
  rng = np.random.default_rng(4)
  x = rng.uniform(0.0, 1.0, (N, H, W, C)).astype(np.float32)
  return x, np.argmax(np.asarray(linear(x)), -1).astype(np.int32)


@pytest.mark.parametrize("case", ["apgd-t-linf", "apgd-ce-eot-linf", "fab-t-linf", "fab-l2"])
def test_device_loop_equals_host_loop(case):
  """``loop='device'`` (one fused ``lax.fori_loop`` per chunk, the GPU/TPU default) and
  ``loop='host'`` (the CPU default) give bit-identical results for the same key,
  random starts, targets, restarts and EoT keys included. (The configurations
  share the host kernels of the other tests.)"""
  x, _ = _device_data()
  attack, norm = case.rsplit("-", 1)
  eps = {"linf": 0.02, "l2": 0.2}[norm]
  kw = dict(eps=eps, norm=norm, n_iter=10, buckets=1)
  if attack == "apgd-t":
    fn, run = linear, apgd_lib.apgd_rounds
    kw.update(loss="dlr-targeted", n_target_classes=2, n_restarts=2)
  elif attack == "apgd-ce-eot":  # the 'rand' version's APGD-CE
    fn, run = rand_model, apgd_lib.apgd_rounds
    kw.update(loss="ce", eot_iter=20, randomized=True, n_iter=3)
  else:
    fn, run = tanh_net, fab_lib.fab_rounds
    tgt = attack == "fab-t"
    kw.update(targeted=tgt, n_restarts=1 if tgt else 2, n_target_classes=3)
  y = np.argmax(np.asarray(jax.jit(fn)(x, jax.random.PRNGKey(0)) if fn is rand_model
                          else jax.jit(fn)(x)), -1).astype(np.int32)
  a = run(fn, x, y, 3, loop="host", **kw)
  b = run(fn, x, y, 3, loop="device", **kw)
  assert 0 < a[1].sum() < N  # some points fooled, some not: a real run
  for u, v in zip(a, b):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
  if run is fab_lib.fab_rounds:
    # The whole single run, radii included (the best point of the last steps counts).
    one = dict(eps=eps, norm=norm, n_iter=10, target_class=2 if kw["targeted"] else None)
    a = fab_lib.fab_single_run(fn, x, y, loop="host", **one)
    b = fab_lib.fab_single_run(fn, x, y, loop="device", **one)
    for u, v in zip(a, b):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    short = fab_lib.fab_single_run(fn, x, y, loop="host", **dict(one, n_iter=9))
    assert not np.array_equal(np.asarray(short.radius), np.asarray(a.radius))  # step 10 counts


# ---------------------------------------------------------------------------
# Square: the initialisation and the per-iteration draws.
# ---------------------------------------------------------------------------

SQ_Q = 300  # iterations: sides 7 (it <= 10), 5 (<= 50), 4 (<= 200), 3 (L-inf)
SQ_EPS = {"linf": 0.05, "l2": 0.3}
SQ_LOGITS = np.linspace(0.0, 1.0, K).astype(np.float32)  # margin 1/9 > 0, never changes


def _sq_data():
  rng = np.random.default_rng(5)
  x = rng.uniform(0.35, 0.65, (N, H, W, C)).astype(np.float32)  # no [0, 1] clipping
  x[16] = x[0]  # the same image in the second chunk (batch_size 16)
  return x, np.full((N,), K - 1, np.int32)


def recording_constant_model(calls):
  """Logits independent of the input (margin fixed > 0: Square never accepts a
  candidate, so ``x_best`` stays the initialisation and every query shows one draw);
  every query is recorded, in order."""
  const = jnp.asarray(SQ_LOGITS)

  def fn(x):
    jax.debug.callback(lambda v: calls.append(np.asarray(v)), x, ordered=True)
    return jnp.broadcast_to(const, (x.shape[0], K)) + 0.0 * jnp.sum(x)

  return fn


class TorchConstant(torch.nn.Module):
  def forward(self, x):
    return torch.tensor(SQ_LOGITS).expand(x.shape[0], K) + 0.0 * x.sum()


def _square_runs_kd(norm, n_restarts=2):
  """Production ``square_batches``: 2 chunks x ``n_restarts``; per run (init, candidates)."""
  x, y = _sq_data()
  calls = []
  xa, fooled = sq.square_batches(recording_constant_model(calls), x, y, 0, eps=SQ_EPS[norm],
                                 norm=norm, n_queries=SQ_Q, n_restarts=n_restarts,
                                 batch_size=16, buckets=1)
  assert not fooled.any()
  per = SQ_Q + 2  # init, SQ_Q candidates, the final argmax re-check
  assert len(calls) == 2 * n_restarts * per
  runs = []
  for ci in range(2):
    for r in range(n_restarts):
      c = calls[(ci * n_restarts + r) * per:(ci * n_restarts + r + 1) * per]
      runs.append(dict(chunk=ci, restart=r, x=x[16 * ci:16 * ci + 16], init=c[0],
                       cands=np.stack(c[1:SQ_Q + 1])))
  return runs


def _square_runs_ref(norm, n_restarts=2):
  x, y = _sq_data()
  rec = TorchRecorder(TorchConstant())
  atk = SquareAttack(rec, norm=REF_NORM[norm], n_queries=SQ_Q, eps=SQ_EPS[norm], p_init=0.8,
                     n_restarts=n_restarts, seed=0, resc_schedule=False, device="cpu")
  atk.perturb(_nchw(x[:16]), torch.tensor(y[:16], dtype=torch.long))
  per = SQ_Q + 2  # init, candidates, perturb's re-check; one clean pass first
  assert len(rec.calls) == 1 + n_restarts * per
  return [dict(x=x[:16], init=rec.calls[1 + r * per],
               cands=np.stack(rec.calls[2 + r * per:2 + r * per + SQ_Q]))
          for r in range(n_restarts)]


def _linf_windows(run, eps):
  """Per candidate: ``(s, vh, vw, signs[C])`` read off the changed cells.

  With ``x_best`` fixed at the stripes ``I``, a candidate is ``I`` outside the
  window and ``x + eps * sign_c`` inside it; a window cell differs from ``I``
  in at least one of the 16 x 3 (image, channel) stripes (prob. 1 - 2^-16).
  """
  x, init = run["x"], run["init"]
  out = []
  for cand in run["cands"]:
    changed = (np.abs(cand - init) > eps / 2).any(axis=(0, 3))
    rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
    vh, vw = rows[0], cols[0]
    s = rows[-1] - vh + 1
    assert cols[-1] - vw + 1 == s and changed.sum() == s * s  # a full square
    d = (cand[:, vh:vh + s, vw:vw + s] - x[:, vh:vh + s, vw:vw + s]) / eps
    sg = np.sign(d[0, 0, 0])
    # One sign per channel, shared by every image of the batch (AutoAttack's choice).
    assert np.abs(d - sg).max() <= 1e-4
    out.append((s, vh, vw, sg))
  return out


def _chi2_crit(df, p=1e-4):
  """Upper ``p`` quantile of chi-square(df) (Wilson-Hilferty)."""
  z = 3.719  # standard normal upper 1e-4 quantile
  return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _check_positions_uniform(wins, h):
  """Per side ``s`` with ``h - s >= 2``: ``(vh, vw)`` uniform on ``{0..h-s-1}^2`` (chi-square,
  p = 1e-4), the top offset ``h - s - 1`` drawn, never ``h - s``."""
  chi2, df = 0.0, 0
  for s in sorted({w[0] for w in wins}):
    pos = np.array([(w[1], w[2]) for w in wins if w[0] == s])
    m = h - s
    assert pos.min() >= 0 and pos.max() <= m - 1  # floor(U (h - s)): h - s never drawn
    if m < 2:
      continue
    assert pos.max() == m - 1 or len(pos) < 10 * m
    counts = np.bincount(pos[:, 0] * m + pos[:, 1], minlength=m * m)
    e = len(pos) / (m * m)
    chi2 += float(((counts - e) ** 2 / e).sum())
    df += m * m - 1
  assert chi2 <= _chi2_crit(df), (chi2, df)


def _check_linf_stripes(run, eps):
  d0 = (run["init"] - run["x"]) / eps  # [B, H, W, C]
  assert np.abs(np.abs(d0) - 1).max() <= 1e-4  # x +- eps exactly
  np.testing.assert_array_equal(np.sign(d0), np.broadcast_to(np.sign(d0[:, :1]), d0.shape))
  st = np.sign(d0[:, 0])  # [B, W, C]
  assert 0.37 <= np.mean(st > 0) <= 0.63  # n = 384 signs, sd 0.026
  b = st.shape[0]
  flat = st.reshape(b, -1)
  # Every image and every column gets its own signs.
  assert len({tuple(r) for r in flat}) == b
  assert len({tuple(st[:, j].ravel()) for j in range(W)}) == W
  return st


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_draws_match_the_reference(norm):
  """Square L-inf/L2 under its production keys vs the reference under torch's."""
  eps = SQ_EPS[norm]
  kd = _square_runs_kd(norm)
  ref = _square_runs_ref(norm)
  sides = sq.side_schedule(SQ_Q, H, W, p_init=0.8, norm=norm)
  if norm == "linf":
    for run in kd + ref:
      _check_linf_stripes(run, eps)
    wins_kd = [_linf_windows(r, eps) for r in kd]
    wins_ref = [_linf_windows(r, eps) for r in ref]
    for wins in wins_kd + wins_ref:
      np.testing.assert_array_equal([w[0] for w in wins], sides)  # the p schedule
    for wins in (sum(wins_kd, []), sum(wins_ref, [])):
      _check_positions_uniform(wins, H)
      sg = np.stack([w[3] for w in wins])
      assert 0.42 <= np.mean(sg > 0) <= 0.58  # n = 3600 / 1800 signs
    # Fresh draws every iteration: a draw equal to the previous one (same side)
    # has probability <= 1/72; allow 0.1.
    for wins in wins_kd + wins_ref:
      same = [a[0] == b[0] and a[1:3] == b[1:3] and np.array_equal(a[3], b[3])
              for a, b in zip(wins[1:], wins[:-1]) if a[0] < H - 1]
      assert np.mean(same) <= 0.1
    # Chunks and restarts draw from different keys (the duplicated image too).
    inits = [np.sign(r["init"] - r["x"])[:, 0] for r in kd]
    for i in range(len(kd)):
      for j in range(i):
        assert np.mean(inits[i] == inits[j]) <= 0.65  # 6144 signs: 0.5 +- 0.006
        assert not all(a[1:3] == b[1:3] for a, b in zip(wins_kd[i][11:], wins_kd[j][11:]))
  else:
    _check_square_l2(kd, ref, eps, sides)


def _check_square_l2(kd, ref, eps, sides):
  tiles = sq.l2_init_tiles(H, W)
  support = np.zeros((H, W), bool)
  for vh, vw, s0 in tiles:
    support[vh:vh + s0, vw:vw + s0] = True
  for run in kd + ref:
    d0 = run["init"] - run["x"]
    np.testing.assert_allclose(_lp(d0, "l2"), eps, rtol=1e-5)  # ||delta||_2 = eps
    np.testing.assert_array_equal((d0 != 0).any(axis=(0, 3)), support)  # the tile grid
    # 8x8: 1x1 tiles, eta(1) = -1: every supported value is +-eps/sqrt(#cells).
    mag = eps / math.sqrt(support.sum() * C)
    assert np.abs(np.abs(d0[:, support]) - mag).max() <= 1e-5
    sg = np.sign(d0[:, support])  # [B, cells, C]
    assert 0.44 <= np.mean(sg > 0) <= 0.56  # n = 2352, sd 0.01
    assert len({tuple(r.ravel()) for r in sg}) == sg.shape[0]  # a sign per image
  rates = []
  for run in kd + ref:
    x, cands = run["x"], run["cands"]
    d = cands - x[None]
    # Every candidate is rescaled onto the sphere (no clipping at these points).
    np.testing.assert_allclose(_lp(d.reshape(-1, H, W, C), "l2"), eps, rtol=1e-4)
    zero = (d == 0).all(axis=(1, 4)) & support[None]  # [Q, H, W]: cells of W2 \ W1
    nonempty = []
    for it, z in enumerate(zero):
      if not z.any():
        nonempty.append(False)
        continue
      nonempty.append(True)
      rows, cols = np.flatnonzero(z.any(1)), np.flatnonzero(z.any(0))
      # Inside one s x s window, never on the last row/column (offset h - s not drawn).
      assert rows[-1] - rows[0] < sides[it] and cols[-1] - cols[0] < sides[it]
      assert rows[-1] <= H - 2 and cols[-1] <= W - 2
    rates.append(np.mean(nonempty[11:]))
    # Fresh windows every iteration: the zeroed set rarely repeats.
    rep = [np.array_equal(a, b) for a, b, ne in zip(zero[12:], zero[11:-1], nonempty[12:]) if ne]
    assert np.mean(rep) <= 0.2
  # W2 not covered by W1: the same rate in kdrobust and the reference (n = 289 each,
  # sd <= 0.03 per run).
  assert abs(np.mean(rates[:len(kd)]) - np.mean(rates[len(kd):])) <= 0.12, rates
  assert min(rates) >= 0.5


def test_square_key_source_draws():
  """The production ``KeySource``: shapes as the reference draws them (L-inf signs
  ``[C]`` shared by the batch, L2 signs ``[B, C]`` per image), fair signs, uniforms in
  [0, 1), fresh every iteration and independent within one. The kernel reads a
  source through the same code whether it is a ``KeySource`` or the injected
  ``ArraySource`` of the parity tests."""
  key = apgd_lib.derive_key(jax.random.PRNGKey(0), 0, 0)
  ks = sq.KeySource(key)
  b, q = 16, 200
  n_tiles = len(sq.l2_init_tiles(H, W))
  stripes, tile_signs, tile_coins = ks.init(b, W, C, n_tiles, jnp.float32)
  steps = {}
  for nm in ("linf", "l2"):
    # A loop, not vmap: RngBitGenerator draws are not vmap-invariant.
    step_at = jax.jit(lambda it, nm=nm: ks.step(it, b, C, nm, jnp.float32))
    draws = [step_at(jnp.int32(it)) for it in range(q)]
    steps[nm] = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *draws)
  assert steps["linf"].signs.shape == (q, C) and steps["l2"].signs.shape == (q, b, C)
  for arr in (stripes, tile_signs, steps["linf"].signs, steps["l2"].signs):
    assert set(np.unique(np.asarray(arr))) == {-1.0, 1.0}
  l2s = np.asarray(steps["l2"].signs)
  # L2: a sign per image and channel (each image's 600 signs differ), fair coins.
  assert len({tuple(l2s[:, i].ravel()) for i in range(b)}) == b
  assert 0.48 <= np.mean(l2s > 0) <= 0.52  # n = 9600, sd 0.005
  st_ = np.asarray(stripes)  # [B, W, C]: a sign per image, column and channel
  assert len({tuple(r.ravel()) for r in st_}) == b
  assert 0.4 <= np.mean(st_ > 0) <= 0.6  # n = 384, sd 0.026
  assert np.asarray(tile_coins).shape == (n_tiles,) and len(np.unique(tile_coins)) == n_tiles
  for st in steps.values():
    us = []
    for u in (st.u_h, st.u_w, st.u_h2, st.u_w2, st.coin):
      u = np.asarray(u)
      assert u.min() >= 0 and u.max() < 1 and len(np.unique(u)) == q  # fresh per step
      us.append(u)
    assert ks_uniform(np.concatenate(us), 0, 1) <= 0.07  # n = 1000: 5 sd
    # The five uniforms of a step are independent draws (not one reused).
    assert not np.array_equal(np.asarray(st.u_h), np.asarray(st.u_w))
    assert not np.array_equal(np.asarray(st.u_h), np.asarray(st.u_h2))


# ---------------------------------------------------------------------------
# The randomized path: version='rand' (APGD-CE, APGD-DLR with EoT over 20 samples).
# ---------------------------------------------------------------------------


class TorchNoisy(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.inner = TorchLinear()

  def forward(self, x):
    z = self.inner(x)
    return z + NOISE * torch.randn_like(z)


def test_rand_version_gives_every_eot_sample_its_own_key(monkeypatch):
  eps = EPS["linf"]
  n_iter = 2
  RAND_CALLS.clear()
  calls = RAND_CALLS
  steps = []
  step0 = apgd_lib._apgd_step_jit

  def step(i, s, c, **kw):
    out = step0(i, s, c, **kw)
    if int(i) == 0:
      steps.append(dict(x=np.asarray(c.x), y=np.asarray(c.y), x0=np.asarray(s["x_adv"]),
                        x1=np.asarray(out["x_adv"]), n_calls=len(calls)))
    return out

  monkeypatch.setattr(apgd_lib, "_apgd_step_jit", step)
  res = aa_lib.autoattack(rand_model, X, Y, eps=eps, version="rand",
                          randomized=True, seed=0, buckets=1,
                          config_overrides=dict(n_iter=n_iter))
  assert res.config.eot_iter == 20 and res.config.attacks == ("apgd-ce", "apgd-dlr")
  assert list(res.stage_accuracy) == ["apgd-ce", "apgd-dlr"]
  eot = 20
  per_run = eot * (n_iter + 1)  # EoT samples at the start and after each step
  # First-batch forward, clean pass, then per stage one APGD run and one re-check.
  assert len(calls) == 2 + 2 * (per_run + 1)
  keys = np.stack([k.ravel() for _, k in calls])
  assert len({tuple(k) for k in keys}) == len(calls)  # no key is ever reused
  # The first step follows the sign of the AVERAGE of the 20 gradients at x0.
  st = steps[0]
  at_x0 = [k for v, k in calls if v.shape == st["x0"].shape and np.array_equal(v, st["x0"])]
  assert len(at_x0) == eot

  @jax.jit
  def ce_grad(u, k):
    return jax.grad(lambda v: jnp.sum(-jax.nn.log_softmax(
        noisy_linear(v, jax.random.wrap_key_data(k)))[jnp.arange(N), st["y"]]))(u)

  # One sample at a time (RngBitGenerator draws are not vmap-invariant).
  g = np.stack([np.asarray(ce_grad(jnp.asarray(st["x0"]), jnp.asarray(k)), np.float64)
                for k in at_x0])
  g_avg = g.mean(0)
  big = np.abs(g_avg) > 1e-3 * np.abs(g_avg).max()
  step_dir = (st["x1"] - st["x"]) / eps  # L-inf, eta = 2 eps, first step: x + eps sign(g)
  np.testing.assert_array_equal(np.sign(g_avg)[big], np.round(step_dir)[big])
  # Not vacuous: every single sample's sign differs from the average's somewhere,
  # so a step that used one sample (first, last, ...) would fail the check above.
  assert (np.sign(g)[:, big] != np.sign(g_avg)[big]).sum(1).min() >= 5

  # The reference's 'rand' APGD: the same number of forward passes per run.
  rec = TorchRecorder(TorchNoisy())
  torch.manual_seed(0)
  ref = AutoAttack(rec, norm="Linf", eps=eps, version="rand", seed=0, device="cpu")
  assert ref.apgd.eot_iter == eot and ref.attacks_to_run == ["apgd-ce", "apgd-dlr"]
  ref.apgd.n_iter = n_iter
  counts = []
  orig = ref.apgd.attack_single_run

  def counted(x, y, x_init=None):
    n0 = len(rec.calls)
    out = orig(x, y, x_init)
    counts.append(len(rec.calls) - n0)
    return out

  ref.apgd.attack_single_run = counted
  ref.run_standard_evaluation(_nchw(X), torch.tensor(Y, dtype=torch.long), batch_size=N)
  assert counts and all(c == per_run for c in counts), counts


def test_randomized_apgd_t_target_pass_has_its_own_key():
  RAND_CALLS.clear()
  apgd_lib.apgd_rounds(rand_model, X, Y, 0, eps=EPS["linf"], norm="linf",
                       loss="dlr-targeted", n_iter=3, n_target_classes=1, randomized=True,
                       eot_iter=1, buckets=1)
  keys = [tuple(k.ravel()) for _, k in RAND_CALLS]
  assert len(keys) == 1 + 3 + 1  # the target pass, the start, 3 steps
  assert len(set(keys)) == len(keys)

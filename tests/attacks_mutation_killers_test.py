"""Mutation testing of ``kdrobust/attacks/`` (issue 10): the machinery, and the tests it asked for.

``tests/mutation/run_mutants.py`` plants realistic bugs, one at a time, in a
temporary copy of the package and runs the tests that should fail (see its
docstring and docs/evaluation.md, "Mutation testing"). This file holds:

* the machinery's own checks: every mutant still applies to the current
  source (a cheap in-process check), and a subprocess run of the script on
  a few mutants whose killers are fast, plus a no-op mutant that must
  *survive* (so the machinery can report a survivor) and a stale one that
  must be reported as not applied;
* the killers written for mutants the other attack tests did not kill
  (production randomness, round schedules, bookkeeping). They observe the
  production drivers through spies on the modules' own jitted pieces
  (``apgd._apgd_prepare``, ``fab._fab_prepare``), which the host loop (the
  CPU default, requested explicitly here) calls once per chunk.

Model: a fixed random linear map on 8x8x3 inputs (compiles in well under a
second). Statistical tolerances are stated at each assertion.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
from pyautoattack import fab_projections, fab_pt

from attacks_twins_test import (jax_model, make_data, make_weights, to_nchw, to_nhwc,
                                torch_model)
from kdrobust.attacks import apgd as apgd_lib
from kdrobust.attacks import fab as fab_lib
from kdrobust.attacks import square as sq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "mutation", "run_mutants.py")
_spec = importlib.util.spec_from_file_location("run_mutants", SCRIPT)
run_mutants = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("run_mutants", run_mutants)  # dataclasses look the module up
_spec.loader.exec_module(run_mutants)

H = W = 8
C = 3
D = H * W * C
K = 10
N = 16
_rng = np.random.default_rng(11)
_W = jnp.asarray(_rng.normal(0.0, 0.05, (D, K)).astype(np.float32))
_B = jnp.asarray(_rng.normal(0.0, 0.3, (K,)).astype(np.float32))


def linear(x):
  """``flatten(x) @ W + b``."""
  return jnp.dot(x.reshape(x.shape[0], -1), _W, precision=jax.lax.Precision.HIGHEST) + _B


def _data(n=N, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(0.05, 0.95, (n, H, W, C)).astype(np.float32)
  y = np.argmax(np.asarray(linear(x)), -1).astype(np.int32)
  return x, y


def _lp(d, norm):
  d = np.asarray(d, np.float64).reshape(d.shape[0], -1)
  return np.abs(d).max(1) if norm == "linf" else np.sqrt((d ** 2).sum(1))


def _spy(monkeypatch, module, name):
  """Wrap ``module.name``: record ``(args, numpy outputs)`` of every call."""
  calls = []
  orig = getattr(module, name)

  def wrapper(*args, **kw):
    out = orig(*args, **kw)
    calls.append((args, jax.tree_util.tree_map(np.asarray, out)))
    return out

  monkeypatch.setattr(module, name, wrapper)
  return calls


# ---------------------------------------------------------------------------
# The machinery.
# ---------------------------------------------------------------------------


def test_every_mutant_applies_to_the_current_source():
  assert len(run_mutants.MUTANTS) >= 12
  assert run_mutants.check_all_apply() == []
  for m in run_mutants.MUTANTS:  # every selection names an existing test file
    for t in m.tests:
      assert os.path.exists(os.path.join(REPO, t.split("::")[0])), (m.name, t)


# Fast killers (< 1 s each once imported): the subset CI runs through the script.
CI_SUBSET = ("apgd-checkpoint-off-by-one", "square-p-schedule")


def test_script_kills_a_subset_and_reports_survivors_and_stale_mutants(tmp_path):
  out = tmp_path / "report.json"
  p = subprocess.run([sys.executable, SCRIPT, "--only", ",".join(CI_SUBSET), "--json",
                      str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  report = json.loads(out.read_text())
  base = report["baseline"]
  # The copy was imported (not the working tree) and the selection passed unmutated.
  assert base["passed"] and "kdrobust_mutants_" in base["imported_from"], base
  by_name = {e["name"]: e for e in report["mutants"]}
  assert list(by_name) == list(CI_SUBSET)
  for name in CI_SUBSET:
    e = by_name[name]
    expected = run_mutants.MUTANTS[[m.name for m in run_mutants.MUTANTS].index(name)].tests[0]
    assert e["status"] == "killed" and e["killed_by"] == "FAILED " + expected, e
  # A no-op change survives; a mutant whose text is gone is reported, not skipped.
  M = run_mutants.Mutant
  noop = M("noop", run_mutants.APGD, "from __future__ import annotations\n",
           "from __future__ import annotations  # no-op\n", "nothing",
           run_mutants.MUTANTS[0].tests)
  stale = M("stale", run_mutants.APGD, "this text is not in apgd.py", "", "nothing",
            run_mutants.MUTANTS[0].tests)
  rep = run_mutants.run([noop, stale], baseline=False, log=lambda *a: None)
  assert [e["status"] for e in rep["mutants"]] == ["survived", "not-applied"]
  assert not rep["ok"]


# ---------------------------------------------------------------------------
# APGD: production random starts, per round and chunk.
# ---------------------------------------------------------------------------


def test_apgd_random_starts(monkeypatch):
  """Starts on the eps-sphere, U[-1,1]-shaped, fresh for every round, chunk and seed."""
  x, y = _data()
  eps = 1e-3  # small: few or no points fooled, so most rounds attack every point
  calls = _spy(monkeypatch, apgd_lib, "_apgd_prepare")
  kw = dict(eps=eps, n_iter=2, n_restarts=3, batch_size=8, buckets=1, loop="host")
  apgd_lib.apgd(linear, x, y, 3, **kw)
  assert len(calls) >= 4
  noise = []
  for args, (x_init, _, _) in calls:
    xb = np.asarray(args[1])
    u = (x_init - xb) / eps  # before the kernel's clip to [0, 1]
    # L-inf: max|u| = 1 per row (float32 rounding: 1e-3 relative at eps=1e-3).
    np.testing.assert_allclose(_lp(u, "linf"), 1.0, rtol=0, atol=2e-3)
    noise.append(u.reshape(u.shape[0], -1))
  allu = np.concatenate(noise)
  # t / max|t| with t ~ U[-1, 1): coordinates ~ U[-1, 1]. n >= 6144 coordinates:
  # sd(mean) <= 0.0074, sd(fraction) <= 0.0064; tolerances ~6 sd.
  assert abs(allu.mean()) <= 0.045
  assert abs(np.mean(allu > 0) - 0.5) <= 0.04
  assert abs(np.mean(np.abs(allu) > 0.5) - 0.5) <= 0.04
  # Every (round, chunk) draws fresh noise: no two calls share a row's draw.
  for i in range(len(noise)):
    assert np.abs(np.diff(noise[i], axis=0)).max() > 0.1  # rows differ within a call
    for j in range(i):
      same = np.mean(np.isclose(noise[i], noise[j], atol=1e-3))
      assert same < 0.05, (i, j, same)  # independent: ~1e-3 of coordinates close
  # Another seed, other starts.
  first = noise[0]
  calls.clear()
  apgd_lib.apgd(linear, x, y, 4, **kw)
  args, (x_init, _, _) = calls[0]
  other = ((x_init - np.asarray(args[1])) / eps).reshape(first.shape)
  assert np.mean(np.isclose(other, first, atol=1e-3)) < 0.05


def test_apgd_t_rounds_target_ranks_two_to_ten(monkeypatch):
  """Round r of APGD-T targets the (2 + r // n_restarts)-th largest clean logit."""
  x, y = _data()
  z = np.asarray(linear(x), np.float64)
  order = np.argsort(z, -1)
  assert np.diff(np.sort(z, -1), axis=-1).min() > 1e-4  # no ties: ranks well defined
  for n_targets, n_restarts in ((9, 1), (2, 2)):
    calls = _spy(monkeypatch, apgd_lib, "_apgd_prepare")
    apgd_lib.apgd_targeted(linear, x, y, 0, eps=1e-4, n_iter=1, n_target_classes=n_targets,
                           n_restarts=n_restarts, buckets=1, loop="host")
    rounds = [int(args[2]) for args, _ in calls]
    assert rounds == list(range(n_targets * n_restarts))  # nothing fooled at eps=1e-4
    for r, (args, (_, y_target, _)) in zip(rounds, calls):
      np.testing.assert_array_equal(np.asarray(args[1]), x)
      np.testing.assert_array_equal(y_target, order[:, -(2 + r // n_restarts)])


def test_rounds_write_results_to_their_own_points():
  """Compacted, chunked rounds write each result back to its own point, and only there."""
  x, y = _data(24, seed=1)
  eps = 0.02  # about half of the active points are fooled
  active = np.arange(24) % 3 != 0  # a subset: chunk rows != point indices
  for attack in ("apgd", "fab"):
    if attack == "apgd":
      x_adv, fooled, _ = apgd_lib.apgd_rounds(linear, x, y, 0, eps=eps, n_iter=5,
                                              n_restarts=2, active=active, batch_size=4,
                                              buckets=1)
    else:
      x_adv, fooled = fab_lib.fab_rounds(linear, x, y, 0, eps=eps, n_iter=5,
                                         n_target_classes=2, active=active, batch_size=4,
                                         buckets=1)
    assert 0 < fooled.sum() < active.sum(), attack  # not vacuous
    assert not fooled[~active].any()
    np.testing.assert_array_equal(x_adv[~fooled], x[~fooled])
    assert _lp(x_adv - x, "linf").max() <= eps + 1e-6  # another point's image is far away
    pred = np.argmax(np.asarray(linear(x_adv)), -1)
    np.testing.assert_array_equal(pred[active] != y[active], fooled[active])


# ---------------------------------------------------------------------------
# FAB: targets and starts per round.
# ---------------------------------------------------------------------------


def test_fab_rounds_targets_and_starts(monkeypatch):
  """FAB-T: round r has rank 2 + r and starts at x; FAB: restarts >= 1 on the eps/2 sphere."""
  x, y = _data()
  eps = 0.02
  calls = _spy(monkeypatch, fab_lib, "_fab_prepare")
  fab_lib.fab_rounds(linear, x, y, 0, eps=1e-4, targeted=True, n_iter=1,
                     n_target_classes=4, buckets=1, loop="host")
  assert [int(tc) for _, (_, tc) in calls] == [2, 3, 4, 5]
  for args, (x_start, _) in calls:
    np.testing.assert_array_equal(x_start, np.asarray(args[0]))
  calls.clear()
  fab_lib.fab_rounds(linear, x, y, 0, eps=eps, targeted=False, n_iter=1, n_restarts=3,
                     buckets=1, loop="host")
  assert len(calls) == 3
  np.testing.assert_array_equal(calls[0][1][0], np.asarray(calls[0][0][0]))
  us = []
  for args, (x_start, _) in calls[1:]:
    r = _lp(x_start - np.asarray(args[0]), "linf")
    # Radius eps/2 (clipping to [0.05, 0.95]-valued images never bites at 0.01).
    np.testing.assert_allclose(r, eps / 2, rtol=1e-4)
    us.append(((x_start - np.asarray(args[0])) / (eps / 2)).reshape(len(r), -1))
  assert np.mean(np.isclose(us[0], us[1], atol=1e-3)) < 0.05  # fresh draws per restart


def test_fab_projections_on_interior_points():
  """Interior points with a near hyperplane: no box constraint binds, so the step
  is the unconstrained minimiser (L2: ``-(c / ||w||^2) w``; L-inf: ``-(c / ||w||_1)
  sign(w)``), and both equal the reference's. The parity test's hyperplanes all
  have points on the box faces, where this branch is never taken."""
  ref = fab_projections
  rng = np.random.default_rng(0)
  t = rng.uniform(0.3, 0.7, (16, 40))
  w = rng.normal(size=(16, 40))
  c = rng.uniform(-0.05, 0.05, 16)  # <w, t> - b: |step| <= 0.05 * 40 / ||w||^2 << 0.3
  b = np.sum(w * t, 1) - c
  tj, wj, bj = (jnp.asarray(v, jnp.float32) for v in (t, w, b))
  d2 = np.asarray(fab_lib.projection_l2(tj, wj, bj), np.float64)
  np.testing.assert_allclose(d2, -(c / np.sum(w ** 2, 1))[:, None] * w, rtol=0, atol=1e-6)
  di = np.asarray(fab_lib.projection_linf(tj, wj, bj), np.float64)
  np.testing.assert_allclose(di, -(c / np.abs(w).sum(1))[:, None] * np.sign(w), rtol=0,
                             atol=1e-6)
  tt, wt, bt = (torch.tensor(v) for v in (t, w, b))
  np.testing.assert_allclose(d2, ref.projection_l2(tt, wt, bt).numpy(), rtol=0, atol=1e-6)
  np.testing.assert_allclose(di, ref.projection_linf(tt, wt, bt).numpy(), rtol=0, atol=1e-6)


def test_fab_from_a_random_start_matches_the_reference(monkeypatch):
  """Untargeted FAB from an injected random start (restarts >= 1 of version 'plus').

  From a random start ``x1 != x0``, ``a1 / (a1 + a2)`` is about 1/2, so the
  ``alpha_max = 0.1`` cap binds (from ``x0`` it never does: ``d1 = d2``).
  Same float32 start on both sides; tolerance as the FAB parity test
  (float32): same found/not-found flags, max |d adv| <= 1e-4.
  """
  w = make_weights(0, scale=3.0)  # the twins of the FAB parity test (conv-ReLU-dense)
  x, y = make_data(12, seed=5, weights=w)
  x = x.astype(np.float32)
  for norm, eps in (("Linf", 0.02), ("L2", 0.2)):
    g = torch.Generator().manual_seed(1)
    u = torch.rand(to_nchw(x).shape, generator=g) if norm == "Linf" else torch.randn(
        to_nchw(x).shape, generator=g)
    name = "rand" if norm == "Linf" else "randn"
    real = getattr(torch, name)

    def fake(*shape, _u=u, _real=real, **kw):  # the start's draw only
      if len(shape) == 1 and isinstance(shape[0], torch.Size) and shape[0] == _u.shape:
        return _u.clone()
      return _real(*shape, **kw)

    monkeypatch.setattr(torch, name, fake)
    atk = fab_pt.FABAttack_PT(torch_model(w, torch.float32), norm=norm, n_restarts=1,
                              n_iter=20, eps=eps, device="cpu")
    xt = torch.tensor(to_nchw(x))
    adv_ref = to_nhwc(atk.attack_single_run(xt, torch.tensor(y).long(), use_rand_start=True))
    monkeypatch.undo()
    # The reference's start, computed as it does (float32), in NHWC.
    tn = 2 * u - 1 if norm == "Linf" else u
    nrm = (tn.reshape(len(x), -1).abs().max(1)[0] if norm == "Linf"
           else (tn ** 2).reshape(len(x), -1).sum(-1).sqrt())
    x1 = (xt + eps * tn / nrm.view(-1, 1, 1, 1) * 0.5).clamp(0.0, 1.0)
    run = fab_lib.fab_single_run(jax_model(w), x, y, eps=eps, x_start=to_nhwc(x1),
                                 n_iter=20, norm=norm.lower())
    found = np.asarray(run.radius) < 1e10
    found_ref = np.abs(adv_ref - x).reshape(len(x), -1).max(1) > 0
    np.testing.assert_array_equal(found, found_ref)
    assert found.sum() >= len(x) // 2, norm  # not vacuous
    assert np.abs(np.asarray(run.adv) - adv_ref).max() <= 1e-4, norm


# ---------------------------------------------------------------------------
# Square: the production key source keeps drawing.
# ---------------------------------------------------------------------------


def test_square_keeps_searching():
  """KeySource draws new windows and signs every iteration, so the margin keeps falling."""
  src = sq.KeySource(jax.random.PRNGKey(0))
  d0, d1 = src.step(0, 4, C, "linf", jnp.float32), src.step(1, 4, C, "linf", jnp.float32)
  assert not np.allclose(np.asarray(d0.u_h), np.asarray(d1.u_h))
  x, y = _data(N, seed=2)
  kw = dict(eps=0.01, norm="linf")
  m1 = np.asarray(sq.square_single_run(linear, x, y, 5, n_queries=1, **kw).margin)
  run = sq.square_single_run(linear, x, y, 5, n_queries=200, **kw)
  m200 = np.asarray(run.margin)
  alive = m1 > 0
  assert alive.sum() >= N // 2
  # The same key: iteration 0 is shared, later queries must keep improving. With
  # a frozen draw every later candidate repeats the first and nothing moves.
  assert np.mean(m200[alive] < m1[alive] - 1e-4) >= 0.75
  assert np.all(np.asarray(run.n_queries)[m200 > 0] == 201)  # the initial query + 200


# ---------------------------------------------------------------------------
# EoT: eot_iter independent draws of a randomized model.
# ---------------------------------------------------------------------------


def noisy(x, key):
  """A randomized model: the input plus N(0, 0.2^2) noise drawn from ``key``
  (through ``bulk_key``: threefry normals compile slowly on CPU)."""
  return linear(x + 0.2 * jax.random.normal(apgd_lib.bulk_key(key), x.shape, x.dtype))


def test_eot_averages_independent_draws():
  """The EoT gradient's variance over keys falls like 1 / eot_iter (ratio ~1/8 here)."""
  x, y = _data(4, seed=3)
  fn = apgd_lib.as_logits_fn(noisy)

  def grad(key, eot):
    return apgd_lib._loss_grad(fn, jnp.asarray(x), jnp.asarray(y), None, key, loss="ce",
                               eot_iter=eot, randomized=True)[0]

  keys = jax.random.split(jax.random.PRNGKey(0), 16)
  g1 = np.asarray(jax.jit(jax.vmap(lambda k: grad(k, 1)))(keys))
  g8 = np.asarray(jax.jit(jax.vmap(lambda k: grad(k, 8)))(keys))
  ratio = g8.var(0).mean() / g1.var(0).mean()
  # Independent draws: E[ratio] = 1/8 (16 keys x 768 coordinates: the estimate is
  # within ~0.05; measured 0.11); one draw repeated 8 times: ratio = 1.
  assert ratio < 0.3, ratio
  # Same mean (unbiased): |mean difference| small relative to the spread.
  assert np.abs(g8.mean(0) - g1.mean(0)).mean() < 0.5 * np.sqrt(g1.var(0)).mean()

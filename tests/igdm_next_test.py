"""IGDM on top of the single-teacher methods of issue 12 (kdrobust.methods.igdm.NEXT_BASES).

The wrapped bases run a jitted train step (the tiny batch-norm model of
methods_test.py, 2-step attacks) at an epoch boundary, from a method state
with non-zero per-epoch sums, so the base's epoch-boundary update fires
inside the step. With ``alpha = 0`` the wrapped step must equal the base's
step exactly (loss, parameters, optimizer state, method state, the base's
metrics; IGDM's two extra forwards only move the batch-norm running
statistics), for the bases of :data:`EXACT`; with ``alpha = 2`` ABSLD adds
``alpha (e / E) L_IGDM``, finite and positive; the rest are traced.
Runtime: 5 step compilations and 2 traces, 25 s of CPU time on the 2-core
development machine (68 s wall while its load average was 7).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from kdrobust import methods
from kdrobust.methods import igdm
from kdrobust.methods.base import has_epoch_update
import methods_test as mt

EPOCH = 150  # of 200: the ramp weight is alpha * 0.75


def _state_with_sums(method, seed=1):
  """A fresh train state (at epoch EPOCH, a boundary) whose method state is non-trivial.

  Every leaf gets ``+ U[0.5, 1.5)`` per entry: ABSLD's temperatures and CE
  sums, Fair-*'s class weights, kappa sums and counts all differ per class,
  so the epoch-boundary update changes the state.
  """
  state, t_vars, step = mt._setup(method, num_epochs=200, steps_per_epoch=1)
  leaves, tree = jax.tree.flatten(state.method_state)
  keys = jax.random.split(jax.random.PRNGKey(seed), max(len(leaves), 1))
  leaves = [a + jax.random.uniform(k, a.shape, a.dtype, 0.5, 1.5)
            for a, k in zip(leaves, keys)]
  state = state.replace(method_state=jax.tree.unflatten(tree, leaves))
  return mt._at_epoch(state, EPOCH), t_vars, step


def _run(method):
  state, t_vars, step = _state_with_sums(method)
  before = mt._copy(state.method_state)
  new, metrics = step(state, t_vars, mt._batch())
  return before, mt._copy(new), {k: np.asarray(v) for k, v in metrics.items()}


# Compilation dominates this file, so each structure of the new bases is
# compiled once: Fair-ARD (a Perturbed (x', kappa) from a train-mode attack,
# epoch-boundary class weights) and CGARD (a Perturbed with a dict aux, no
# state) against their base step (EXACT); ABSLD (a plain x', epoch-boundary
# temperatures) with alpha > 0 (RAMPED). Fair-IAD and Fair-RSLAD share
# Fair-ARD's machinery; their wrapped step is traced, not compiled (TRACED).
EXACT = ("fair_ard", "cgard")
RAMPED = ("absld",)
TRACED = ("fair_iad", "fair_rslad")


def test_every_new_base_is_tested():
  assert sorted(EXACT + RAMPED + TRACED) == sorted(igdm.NEXT_BASES)


@pytest.mark.parametrize("name", EXACT)
def test_alpha_zero_equals_the_base_step(name):
  base = mt._method(name)
  wrapped = igdm.wrap(base, alpha=0.0)
  assert wrapped.name == f"igdm_{name}" and wrapped.attack == base.attack
  assert has_epoch_update(wrapped) == has_epoch_update(base)
  s0, b_new, b_m = _run(base)
  _, w_new, w_m = _run(wrapped)
  assert np.isfinite(w_m["loss"]) and np.isfinite(w_m["igdm"]) and w_m["igdm"] > 0
  assert w_m["igdm_weight"] == 0.0
  # Exact (no tolerance): the same base loss on the same logits, plus 0 * L_IGDM.
  assert w_m["loss"] == b_m["loss"] and w_m["base_loss"] == b_m["loss"]
  for k, v in b_m.items():
    np.testing.assert_array_equal(w_m[k], v, err_msg=k)
  for field in ("step", "params", "opt_state", "method_state"):
    jax.tree.map(np.testing.assert_array_equal, getattr(w_new, field), getattr(b_new, field))
  # S(x + d) and S(x - d) ran in train mode: two more running-statistic updates.
  assert any(bool(np.any(a != b)) for a, b in zip(jax.tree.leaves(w_new.batch_stats),
                                                  jax.tree.leaves(b_new.batch_stats)))
  if has_epoch_update(base):  # the boundary update ran (and was not IGDM's no-op)
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), s0, w_new.method_state)
    assert any(jax.tree.leaves(changed)), name


@pytest.mark.parametrize("name", RAMPED)
def test_igdm_step_adds_the_ramped_term(name):
  """``L = L_base + alpha (e / E) L_IGDM``, finite, with ABSLD's temperature update."""
  s0, new, m = _run(mt._method(name, igdm_alpha=2.0))
  assert np.isfinite(m["loss"]) and m["igdm"] > 0
  np.testing.assert_allclose(m["igdm_weight"], 2.0 * EPOCH / 200, rtol=1e-6)
  np.testing.assert_allclose(m["loss"], m["base_loss"] + m["igdm_weight"] * m["igdm"],
                             rtol=1e-6)
  # The boundary update moved every temperature by at most the rate 0.1 (the
  # class with the largest CE gap by exactly 0.1).
  for k in ("tau_adv", "tau_nat"):
    delta = np.abs(new.method_state[k] - s0[k])
    np.testing.assert_allclose(delta.max(), 0.1, rtol=1e-5)


@pytest.mark.parametrize("name", TRACED)
def test_wrapped_step_traces(name):
  """The wrapped step builds (traced, not compiled): state kept, IGDM metrics present."""
  method = mt._method(name, igdm_alpha=2.0)
  assert has_epoch_update(method)
  state, t_vars, step = _state_with_sums(method)
  new, metrics = jax.eval_shape(step, state, t_vars, mt._batch())
  same = jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype),
                      new.method_state, state.method_state)
  assert all(jax.tree.leaves(same))
  assert {"loss", "base_loss", "igdm", "igdm_weight", "kappa"} <= set(metrics)


@pytest.mark.parametrize("name,match", [
    ("b_mtard", "single-teacher bases; 'b_mtard' takes 2-2 teachers; supported"),
    ("fair_mtard", "single-teacher bases; 'fair_mtard' takes 2-2"),
    ("mtard", "single-teacher bases"),
    ("darht", "single-teacher bases; 'darht' takes 1-any"),
    ("saad", "already carries IGDM's term"),
    ("kd", "not defined for method 'kd'; supported base methods: pgd_at"),
])
def test_refused_bases(name, match):
  with pytest.raises(ValueError, match=match):
    methods.make(name, igdm={"alpha": 1.0})


def test_epoch_update_only_where_the_base_has_one():
  assert not has_epoch_update(methods.make("ard", igdm={"alpha": 1.0}))
  assert not has_epoch_update(methods.make("cgard", igdm={"alpha": 1.0}))
  assert has_epoch_update(methods.make("fair_iad", igdm={"alpha": 1.0}))
  assert set(igdm.SUPPORTED) == set(igdm.PAPER_BASES) | set(igdm.NEXT_BASES)

"""The methods published since the founding papers (issue 12, part 1): SAAD, B-MTARD, CGARD.

Their defining properties, on methods_test.py's tiny 2-conv model (8x8x3
inputs, batch 8, 2-step inner attacks): one jitted step each (finite loss,
student moved, teacher bit-identical), the terms that vanish when the student
is the teacher, and hand-computed B-MTARD temperatures and weights and SAAD
weights. The jitted steps reuse methods_test.py's compiled-step cache (same
settings), so in a whole-suite run they cost no extra compilation. Step
parity with the official codes (or, for CGARD, the preprint's equations):
parity_saad_test.py, parity_b_mtard_test.py, parity_cgard_test.py.
Runtime: 32 s of CPU (user) time alone, imports and the three step compiles
included (2-core machine at load 8); about 12 s in a whole-suite run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdrobust import methods
from kdrobust.methods import b_mtard, mtard, saad
import methods_test as mt

NEW = ("saad", "b_mtard", "cgard")


def test_registered():
  assert set(NEW) <= set(methods.available())
  assert methods.get_class("b_mtard").teachers == (2, 2)
  assert methods.get_class("saad").teachers == methods.get_class("cgard").teachers == (1, 1)


@pytest.mark.parametrize("name", NEW)
def test_one_step_finite_teacher_untouched(name):
  method = mt._method(name)  # pylint: disable=protected-access
  state, t_vars, step = mt._setup(method)  # pylint: disable=protected-access
  state = mt._at_epoch(state, 150)  # pylint: disable=protected-access
  before_params = mt._copy(state.params)  # pylint: disable=protected-access
  before_teachers = mt._copy(t_vars)  # pylint: disable=protected-access
  new_state, metrics = step(state, t_vars, mt._batch())  # pylint: disable=protected-access
  assert np.isfinite(float(metrics["loss"])), metrics
  assert int(new_state.nonfinite) == 0
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))),
                                       before_params, new_state.params))
  assert any(moved), f"{name}: student parameters did not change"
  same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, np.asarray(b))),
                                      before_teachers, t_vars))
  assert all(same), f"{name}: teacher variables changed"
  if name == "b_mtard":  # one temperature moved by 0.001 (the other clipped at 1)
    taus = sorted(float(new_state.method_state[k]) for k in ("tau_adv", "tau_nat"))
    np.testing.assert_allclose(taus, [1.0, 1.001], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,kw,keys", [
    # SAAD with the clean term on: every term and the total vanish.
    ("saad", {"clean_weight": 0.5}, ("kl_adv", "igdm", "kl_clean", "loss")),
    # B-MTARD at tau = 1 with the exact KL (log_eps = 0), both teachers = the student.
    ("b_mtard", {"log_eps": 0.0}, ("kl_adv", "kl_nat", "loss")),
    # CGARD: L_adv compares T and S at the same point; L_col (T at x_T'') does not vanish.
    ("cgard", {}, ("kl_adv",)),
])
def test_terms_vanish_when_student_is_teacher(name, kw, keys):
  method = mt._method(name, **kw)  # pylint: disable=protected-access
  s_vars = mt._init(mt.Tiny(use_bn=False), 100)  # pylint: disable=protected-access
  n = type(method).teachers[0]
  loss, metrics = mt._loss_only(method, s_vars, (s_vars,) * n, mt._batch())  # pylint: disable=protected-access
  metrics = dict(metrics, loss=loss)
  for k in keys:
    assert abs(float(metrics[k])) <= 1e-6, (k, float(metrics[k]))
  if name == "cgard":
    assert float(metrics["kl_col"]) > 1e-6  # a genuinely different teacher point


# ---------------------------------------------------------------------------
# B-MTARD: temperatures and weights by hand (docs/fidelity.md, B-MTARD).
# ---------------------------------------------------------------------------
def test_b_mtard_temperatures_by_hand():
  f = lambda *a, **k: [float(v) for v in b_mtard.temperature_update(*a, **k)]
  # Adversarial teacher twice as uncertain: sharpen it, soften the natural one.
  np.testing.assert_allclose(f(1.5, 1.5, 0.2, 0.1, 0.001), [1.499, 1.501], atol=1e-12)
  np.testing.assert_allclose(f(1.5, 1.5, 0.1, 0.2, 0.001), [1.501, 1.499], atol=1e-12)
  # Clipped to [1, 10]; equal entropies leave both; a zero entropy leaves both.
  assert f(1.0, 10.0, 0.2, 0.1, 0.001) == [1.0, 10.0]
  assert f(2.0, 3.0, 0.1, 0.1, 0.001) == [2.0, 3.0]
  assert f(2.0, 3.0, 0.0, 0.1, 0.001) == [2.0, 3.0]
  # The rates: x0.1 at the end of epochs 215, 260, 285 (1-indexed).
  rates = [float(mtard.weight_lr_at(e, 0.001, (215, 260, 285), 0.1))
           for e in (1, 215, 216, 261, 286)]
  np.testing.assert_allclose(rates, [1e-3, 1e-3, 1e-4, 1e-5, 1e-6], rtol=1e-6)


def test_b_mtard_entropy_by_hand():
  z = jnp.log(jnp.asarray([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]))
  p = np.array([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
  want = -np.mean(p * np.log(p + 1e-5))  # the code's torch.mean over B*C (sign flipped)
  np.testing.assert_allclose(float(b_mtard.soft_label_entropy(z, 1.0)), want, rtol=1e-6)
  # Temperature 2 on the first row: softmax(log p / 2) = sqrt(p) / sum sqrt(p).
  q = np.sqrt(p[0]) / np.sqrt(p[0]).sum()
  np.testing.assert_allclose(float(b_mtard.soft_label_entropy(z[:1], 2.0)),
                             -np.mean(q * np.log(q + 1e-5)), rtol=1e-6)


def test_b_mtard_loss_balance_by_hand():
  f = lambda *a: [float(v) for v in b_mtard.loss_balance_update(*a)]
  # L / L0 = (2, 1): targets r / (r_a + r_n) = (2/3, 1/3).
  w = f(0.5, 0.5, 2.0, 1.0, 1.0, 1.0, 0.025)
  np.testing.assert_allclose(w, [0.5 + 0.025 * (2 / 3 - 0.5), 0.5 + 0.025 * (1 / 3 - 0.5)],
                             rtol=1e-6)
  # Equal to MTARD's rule with b = 1 when the weights sum to 1 (A10).
  w_adv, w_nat = mtard.mtard_weight_update(0.5, 2.0, 1.0, 1.0, 1.0, 0.025, b=1.0)
  np.testing.assert_allclose(w, [float(w_adv), float(w_nat)], rtol=1e-6)
  # A step past 0: clamped at 0, then renormalised to sum 1.
  np.testing.assert_allclose(f(0.1, 0.9, 2.0, 1.0, 1.0, 1.0, 2.0), [1.0, 0.0], atol=1e-7)
  # First batch (L = L0): both weights stay at 0.5.
  assert f(0.5, 0.5, 3.0, 7.0, 3.0, 7.0, 0.025) == [0.5, 0.5]


# ---------------------------------------------------------------------------
# SAAD: entropies and weights by hand (docs/fidelity.md, SAAD; HongsinLee/saad@295121c saad.py).
# ---------------------------------------------------------------------------
def test_saad_entropy_and_weights_by_hand():
  z = jnp.log(jnp.asarray([[0.5, 0.25, 0.25]]))
  np.testing.assert_allclose(float(saad.renyi_entropy(z, 1.0)[0]),
                             -(0.5 * np.log(0.5) + 0.5 * np.log(0.25)), rtol=1e-6)
  np.testing.assert_allclose(float(saad.renyi_entropy(z, 2.0)[0]), -np.log(0.375), rtol=1e-6)
  h = jnp.asarray([0.1, 0.5, 1.0, 2.0, 0.5])
  mask = jnp.asarray([False, True, True, True, True])  # row 0 is padding
  w, wn = saad.saad_weights(h, mask, scale=5.0)
  np.testing.assert_allclose(np.asarray(w), [0, 0, 2.5, 7.5, 0], atol=1e-6)
  np.testing.assert_allclose(np.asarray(wn), [0, 0, 1 / 3, 1, 0], atol=1e-6)
  w_mean, _ = saad.saad_weights(h, mask, scale=5.0, normalization="mean")
  np.testing.assert_allclose(np.asarray(w_mean), np.asarray(w) / 2.5, atol=1e-6)


def test_bad_settings_fail_early():
  with pytest.raises(ValueError, match="valid: \\('none', 'mean'\\)"):
    methods.make("saad", weight_normalization="batch")
  with pytest.raises(ValueError, match="valid: \\('eval', 'batch'\\)"):
    methods.make("cgard", attack={"bn_mode": "train"})
  with pytest.raises(ValueError, match="has no hyperparameter"):
    methods.make("b_mtard", temperature=2.0)

"""Closed forms and invariances of the per-example losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdrobust import losses


def test_kl_matches_closed_form_and_is_zero_on_equal_inputs():
  s = jnp.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
  t = jnp.array([[0.5, 1.0, 3.0], [1.0, -1.0, 0.0]])
  p = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
  q = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
  want = (p * (np.log(p) - np.log(q))).sum(-1)
  np.testing.assert_allclose(losses.kl(s, t), want, rtol=1e-6)
  np.testing.assert_allclose(losses.kl(t, t), 0.0, atol=1e-7)


def test_kl_temperature_divides_logits():
  s, t = jnp.array([[1.0, 3.0]]), jnp.array([[2.0, -1.0]])
  np.testing.assert_allclose(losses.kl(s, t, temperature=4.0), losses.kl(s / 4, t / 4), rtol=1e-6)


def test_xent_int_and_probability_labels_agree():
  z = jnp.array([[2.0, 1.0, 0.1], [0.3, 0.2, 5.0]])
  y = jnp.array([0, 2])
  want = -np.log(np.exp(z) / np.exp(z).sum(-1, keepdims=True))[np.arange(2), y]
  np.testing.assert_allclose(losses.xent(z, y), want, rtol=1e-5)  # float32
  np.testing.assert_allclose(losses.xent(z, jax.nn.one_hot(y, 3)), want, rtol=1e-5)


def test_margin_masks_true_class_with_minus_inf():
  # All other logits negative: multiplying by a zero mask would wrongly give 0 (torchattacks'
  # CW f; docs/evaluation.md, "How the attacks are checked").
  z = jnp.array([[-5.0, -3.0, 2.0]])
  np.testing.assert_allclose(losses.margin(z, jnp.array([2])), [-5.0])
  np.testing.assert_allclose(losses.margin(z, jnp.array([0])), [7.0])
  # kappa clamps: -max(z_y - max_other + kappa, 0)
  np.testing.assert_allclose(losses.margin(z, jnp.array([2]), kappa=50.0), [-55.0])
  np.testing.assert_allclose(losses.margin(z, jnp.array([0]), kappa=5.0), [0.0])


def test_dlr_closed_form_and_scale_invariance():
  z = jnp.array([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 1.0, 4.0]])
  y = jnp.array([0, 1])
  # Example 0: correct, -(3-1)/(3-0.5); example 1: wrong, -(2-4)/(4-1).
  np.testing.assert_allclose(losses.dlr(z, y), [-2 / 2.5, 2 / 3], rtol=1e-6)
  np.testing.assert_allclose(losses.dlr(10 * z, y), losses.dlr(z, y), rtol=1e-5)
  np.testing.assert_allclose(losses.dlr_targeted(z, y, jnp.array([1, 3])),
                             [-(3 - 1) / (3 - (0.5 - 1) / 2), -(2 - 4) / (4 - (1 + 0) / 2)], rtol=1e-6)


@pytest.mark.parametrize("reduction,want", [("sum", 6.0), ("batchmean", 3.0), ("elemmean", 0.75)])
def test_reduce_respects_mask(reduction, want):
  v = jnp.array([2.0, 4.0, 100.0])
  m = jnp.array([True, True, False])
  np.testing.assert_allclose(losses.reduce(v, m, reduction=reduction, num_classes=4), want)


def test_reduce_rejects_unknown_reduction():
  with pytest.raises(ValueError, match="valid"):
    losses.reduce(jnp.ones(2), reduction="median")


def test_gradients_finite_at_extreme_logits():
  z = jnp.array([[1e4, -1e4, 0.0]])
  for f in (lambda z: losses.kl(z, -z), lambda z: losses.xent(z, jnp.array([1])),
            lambda z: losses.dlr(z, jnp.array([1]))):
    g = jax.grad(lambda z: jnp.sum(f(z)))(z)
    assert np.all(np.isfinite(g))

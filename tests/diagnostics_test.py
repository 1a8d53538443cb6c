"""Input-gradient agreement (IGDM's GD/GC) and KDIGA's local-linearity measure."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kdrobust import diagnostics
from kdrobust import losses

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
EPS = 8 / 255


def _net(key, d=4 * 4 * 3, h=16, c=5, scale=1.0):
  k1, k2 = jax.random.split(key)
  w1 = jax.random.normal(k1, (d, h)) * scale / np.sqrt(d)
  w2 = jax.random.normal(k2, (h, c)) * scale / np.sqrt(h)
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w1) @ w2


def _data(n=6, c=5):
  kx, ky = jax.random.split(jax.random.PRNGKey(9))
  return jax.random.uniform(kx, (n, 4, 4, 3)), jax.random.randint(ky, (n,), 0, c)


def test_gd_zero_gc_one_when_student_is_teacher():
  f = _net(jax.random.PRNGKey(0))
  x, y = _data()
  out = jax.jit(lambda x, y: diagnostics.gradient_agreement(f, f, x, y),
                compiler_options=FAST)(x, y)
  assert float(out["gd"]) <= 1e-7
  np.testing.assert_allclose(float(out["gc"]), 1.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(diagnostics.gradient_distance(f, f, x, y)), 0, atol=1e-7)
  np.testing.assert_allclose(np.asarray(diagnostics.gradient_cosine(f, f, x, y)), 1, atol=1e-6)


def test_gd_gc_of_different_networks():
  f, g = _net(jax.random.PRNGKey(0)), _net(jax.random.PRNGKey(1))
  x, y = _data()
  out = diagnostics.gradient_agreement(f, g, x, y)
  gf = diagnostics.input_gradients(f, x, y).reshape(6, -1)
  gg = diagnostics.input_gradients(g, x, y).reshape(6, -1)
  np.testing.assert_allclose(np.asarray(out["gd_per_example"]),
                             np.linalg.norm(np.asarray(gf - gg), axis=-1), rtol=1e-5)
  norms = np.linalg.norm(gf, axis=-1) * np.linalg.norm(gg, axis=-1)
  cos = np.sum(np.asarray(gf * gg), -1) / norms
  np.testing.assert_allclose(np.asarray(out["gc_per_example"]), cos, rtol=1e-5, atol=1e-6)
  assert float(out["gd"]) > 0 and float(out["gc"]) < 1
  # Gradients are per example: one example's gradient does not depend on the batch.
  g1 = diagnostics.input_gradients(f, x[:1], y[:1])
  np.testing.assert_allclose(np.asarray(g1[0]), np.asarray(gf[0]).reshape(4, 4, 3), rtol=1e-5)


def test_local_linearity_of_a_linear_model():
  w = jax.random.normal(jax.random.PRNGKey(2), (48, 5))
  linear = lambda x: x.reshape(x.shape[0], -1) @ w
  x, y = _data()
  ll = functools.partial(diagnostics.local_linearity, eps=EPS, steps=10)
  run = jax.jit(lambda f, loss: ll(f, x, y, jax.random.PRNGKey(0), loss_fn=loss),
                static_argnums=(0, 1), compiler_options=FAST)
  # A loss that is linear in x (a logit of a linear model): exactly linear, gamma = 0.
  logit_loss = lambda z, y: jnp.take_along_axis(z, y[:, None], -1)[:, 0]
  assert float(jnp.max(run(linear, logit_loss))) <= 1e-5
  # CE of a linear model: only the curvature of log-sum-exp remains. Its
  # remainder is at most max_t Var_p(dz)/2 <= range(dz)^2 / 8, with the logit
  # change dz = 0.1 W^T d and range(dz) <= 0.1 eps max_{c,c'} ||w_c - w_c'||_1.
  small = lambda x: linear(x) * 0.1
  gamma_small = run(small, losses.xent)
  wd = np.abs(np.asarray(w)[:, :, None] - np.asarray(w)[:, None, :]).sum(0).max()
  bound = (0.1 * EPS * wd) ** 2 / 8
  assert 0 < float(jnp.max(gamma_small)) <= bound
  # A strongly nonlinear network is much less locally linear.
  g = _net(jax.random.PRNGKey(3), scale=30.0)
  assert float(jnp.mean(run(g, losses.xent))) > 10 * float(jnp.mean(gamma_small))


def test_local_linearity_stays_in_the_ball_and_is_maximised():
  g = _net(jax.random.PRNGKey(3), scale=10.0)
  x, y = _data()
  key = jax.random.PRNGKey(0)
  zero = diagnostics.local_linearity(g, x, y, key, eps=EPS, steps=0)
  many = diagnostics.local_linearity(g, x, y, key, eps=EPS, steps=20)
  assert np.all(np.asarray(many) >= np.asarray(zero) - 1e-7)
  assert float(jnp.mean(many)) > float(jnp.mean(zero))

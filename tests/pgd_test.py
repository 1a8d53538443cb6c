"""Properties of the PGD core used in training and of FGSM/PGD for evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdrobust import losses
from kdrobust.attacks import projected as pgd_lib

EPS = 8 / 255


def _linear(key, d=12, c=4):
  w = jax.random.normal(key, (d, c))
  return w, (lambda x: x.reshape(x.shape[0], -1) @ w)


@pytest.mark.parametrize("norm,init", [("linf", "uniform"), ("linf", "gaussian"),
                                       ("l2", "uniform"), ("linf", "none"),
                                       ("linf", "uniform_unclipped")])
def test_inner_attack_stays_in_ball_and_box(norm, init):
  kx, kw = jax.random.split(jax.random.PRNGKey(0))
  x = jax.random.uniform(kx, (16, 2, 2, 3))
  _, f = _linear(kw)
  y = jnp.arange(16) % 4
  eps = EPS if norm == "linf" else 0.5
  xa = pgd_lib.pgd_inner(lambda u: losses.xent(f(u), y), x, jax.random.PRNGKey(1),
                         eps=eps, step_size=eps / 4, steps=7, norm=norm, init=init)
  d = (xa - x).reshape(16, -1)
  size = jnp.abs(d).max(-1) if norm == "linf" else jnp.linalg.norm(d, axis=-1)
  assert float(size.max()) <= eps + 1e-6
  assert float(xa.min()) >= 0.0 and float(xa.max()) <= 1.0


def test_pgd_reaches_the_linf_optimum_of_a_linear_model():
  # For a linear model the margin z_j - z_y is maximised at x + eps*sign(w_j - w_y)
  # (interior points: no box constraint active).
  w, f = _linear(jax.random.PRNGKey(2), d=12, c=2)
  x = jnp.full((3, 2, 2, 3), 0.5)
  y = jnp.zeros(3, jnp.int32)
  obj = lambda u: f(u)[:, 1] - f(u)[:, 0]
  xa = pgd_lib.pgd_inner(obj, x, jax.random.PRNGKey(0), eps=EPS, step_size=EPS / 4, steps=10)
  want = x + EPS * jnp.sign(w[:, 1] - w[:, 0]).reshape(1, 2, 2, 3)
  np.testing.assert_allclose(xa, want, atol=1e-6)
  del y


def test_fgsm_is_one_signed_step_of_size_eps():
  w, f = _linear(jax.random.PRNGKey(3), d=12, c=3)
  x = jnp.full((2, 2, 2, 3), 0.5)
  y = jnp.array([0, 1])
  xa = pgd_lib.fgsm(f, x, y, eps=EPS)
  g = jax.grad(lambda u: jnp.sum(losses.xent(f(u), y)))(x)
  np.testing.assert_allclose(xa, jnp.clip(x + EPS * jnp.sign(g), 0, 1), atol=1e-7)


def test_pgd_deterministic_per_key_and_key_matters():
  kx, kw = jax.random.split(jax.random.PRNGKey(4))
  x = jax.random.uniform(kx, (8, 2, 2, 3))
  _, f = _linear(kw)
  y = jnp.arange(8) % 4
  run = jax.jit(lambda k: pgd_lib.pgd(f, x, y, k, eps=EPS, step_size=EPS / 4, steps=3))
  a, b, c = run(jax.random.PRNGKey(7)), run(jax.random.PRNGKey(7)), run(jax.random.PRNGKey(8))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_pgd_returns_a_successful_iterate_for_every_broken_point():
  kx, kw = jax.random.split(jax.random.PRNGKey(5))
  x = jax.random.uniform(kx, (32, 2, 2, 3))
  _, f = _linear(kw)
  y = jnp.argmax(f(x), -1)  # all clean-correct
  xa = pgd_lib.pgd(f, x, y, 0, eps=0.2, step_size=0.05, steps=10, restarts=2)
  assert float(jnp.abs(xa - x).max()) <= 0.2 + 1e-6
  broken = np.asarray(jnp.argmax(f(xa), -1) != y)
  assert broken.any()  # the attack works on this model
  # Any-iterate success is never worse than last-iterate success.
  last = pgd_lib.pgd_inner(lambda u: losses.xent(f(u), y), x, jax.random.split(jax.random.PRNGKey(0), 2)[0],
                           eps=0.2, step_size=0.05, steps=10)
  assert broken.sum() >= int(jnp.sum(jnp.argmax(f(last), -1) != y))


def test_eps_is_traced_no_recompile():
  _, f = _linear(jax.random.PRNGKey(6))
  x = jnp.full((2, 2, 2, 3), 0.5)
  y = jnp.array([0, 1])
  traces = []

  @jax.jit
  def run(eps):
    traces.append(1)
    return pgd_lib.pgd(f, x, y, 0, eps=eps, step_size=eps / 4, steps=2)

  run(jnp.float32(0.01))
  run(jnp.float32(0.03))
  assert len(traces) == 1


def test_unknown_norm_and_loss_are_refused():
  _, f = _linear(jax.random.PRNGKey(0))
  x, y = jnp.zeros((1, 2, 2, 3)), jnp.zeros(1, jnp.int32)
  with pytest.raises(ValueError, match="valid"):
    pgd_lib.pgd(f, x, y, 0, eps=0.1, step_size=0.1, steps=1, norm="l7")
  with pytest.raises(ValueError, match="valid"):
    pgd_lib.pgd(f, x, y, 0, eps=0.1, step_size=0.1, steps=1, loss="hinge")


def test_unclipped_uniform_start_leaves_the_box_and_the_clipped_one_does_not():
  """ARD's official start is x + U[-eps, eps], no clamp before the first forward.

  ``goldblum/AdversariallyRobustDistillation@779ade3:main.py:70-78``; docs/fidelity.md E2.
  """
  x = jnp.concatenate([jnp.zeros((64, 2, 2, 3)), jnp.ones((64, 2, 2, 3))])
  key = jax.random.PRNGKey(3)
  raw = pgd_lib.random_init(key, x, EPS, init="uniform_unclipped")
  clipped = pgd_lib.random_init(key, x, EPS, init="uniform")
  assert float(raw.min()) < -EPS / 2 and float(raw.max()) > 1 + EPS / 2
  assert float(jnp.abs(raw - x).max()) <= EPS + 1e-7
  np.testing.assert_array_equal(np.asarray(clipped), np.clip(np.asarray(raw), 0, 1))


class _Counter:
  """A stateful objective holder: ``batch_stats`` counts forwards (a stand-in for BN statistics)."""
  threads_state = True

  def __init__(self):
    self.batch_stats = {"n": jnp.zeros((), jnp.int32)}

  def __call__(self, u):
    self.batch_stats = {"n": self.batch_stats["n"] + 1}
    return jnp.sum(u.reshape(u.shape[0], -1), -1)


@pytest.mark.parametrize("unroll", [1, 3])
def test_stateful_attack_threads_state_through_every_step(unroll):
  """With ``stateful``, each of the K steps sees the state the previous forward left."""
  s = _Counter()
  x = jnp.full((2, 2, 2, 3), 0.5)
  xa = jax.jit(lambda x: (pgd_lib.pgd_inner(s, x, jax.random.PRNGKey(0), eps=EPS,
                                            step_size=EPS / 4, steps=5, init="none",
                                            stateful=s, unroll=unroll), s.batch_stats))(x)
  assert int(xa[1]["n"]) == 5
  np.testing.assert_allclose(np.asarray(xa[0]), 0.5 + EPS, rtol=1e-6)  # 5 steps of eps/4, projected
  # A plain function as ``stateful`` is ignored (no state to thread).
  pgd_lib.pgd_inner(lambda u: jnp.sum(u, (1, 2, 3)), x, jax.random.PRNGKey(0), eps=EPS,
                    step_size=EPS / 4, steps=2, init="none", stateful=lambda u: u)

"""The pure loss functions and inner attacks, reused from plain JAX (no Flax, no kdrobust objects).

The model is a dict of arrays plus a function, as another JAX project would
have it; every objective is differentiated under ``jax.jit``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdrobust.methods import adaad, ard, darht, iad, igdm, kd, kdiga, mtard, rslad

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
C = 5
B = 6
EPS = 8 / 255
ATTACK = dict(eps=EPS, step_size=2 / 255, steps=2)


def init(key, d=4 * 4 * 3, h=16, c=C, slots=0):
  k1, k2, k3 = jax.random.split(key, 3)
  p = {"w1": jax.random.normal(k1, (d, h)) / np.sqrt(d), "b1": jnp.zeros(h),
       "w2": jax.random.normal(k2, (h, c)) / np.sqrt(h), "b2": jnp.zeros(c)}
  if slots:
    p["ws"] = jax.random.normal(k3, (h, slots * c)) / np.sqrt(h)
  return p


def features(p, x):
  return jnp.tanh(x.reshape(x.shape[0], -1) @ p["w1"] + p["b1"])


def apply(p, x):
  return features(p, x) @ p["w2"] + p["b2"]


def slots(p, x):
  return (features(p, x) @ p["ws"]).reshape(x.shape[0], -1, C)


def _data():
  kx, ky = jax.random.split(jax.random.PRNGKey(5))
  return jax.random.uniform(kx, (B, 4, 4, 3)), jax.random.randint(ky, (B,), 0, C)


S = init(jax.random.PRNGKey(0), slots=2)
T = init(jax.random.PRNGKey(1))
T2 = init(jax.random.PRNGKey(2))
KEY = jax.random.PRNGKey(3)


def objective_kd(p, x, y):
  return kd.kd_loss(apply(p, x), apply(T, x), y, alpha=0.5, temperature=4.0)[0]


def objective_ard(p, x, y):
  xa = ard.ce_inner(lambda u: apply(p, u), x, y, KEY, **ATTACK)
  return ard.ard_loss(apply(p, xa), apply(p, x), apply(T, x), y, alpha=0.9,
                      temperature=1.0, reduction="batchmean")[0]


def objective_iad(p, x, y):
  xa = ard.ce_inner(lambda u: apply(p, u), x, y, KEY, **ATTACK)
  w = iad.iad_weights(apply(T, xa), y, 0.1)
  s_clean = apply(p, x)
  return iad.iad_loss(apply(p, xa), s_clean, s_clean, apply(T, x), w, y, True)[0]


def objective_rslad(p, x, y):
  t = apply(T, x)
  xa = rslad.rslad_inner(lambda u: apply(p, u), t, x, KEY, **ATTACK)
  return rslad.rslad_loss(apply(p, xa), apply(p, x), t)[0]


def objective_mtard(p, x, y):
  xa = ard.ce_inner(lambda u: apply(p, u), x, y, KEY, init="gaussian", **ATTACK)
  l_adv = kd.distill_kl(apply(p, xa), apply(T, xa))
  l_nat = kd.distill_kl(apply(p, x), apply(T2, x))
  w_adv, w_nat = mtard.mtard_weight_update(0.5, l_adv, l_nat, 1.0, 1.0, 0.025)
  return w_adv * l_adv + w_nat * l_nat


def objective_kdiga(p, x, y):
  ga = kdiga.kdiga_gradient_term(lambda u: apply(p, u), lambda u: apply(T, u), x, y, 0.5)
  return kd.kd_loss(apply(p, x), apply(T, x), y)[0] + ga


def objective_adaad(p, x, y):
  xa = adaad.adaad_inner(lambda u: apply(p, u), lambda u: apply(T, u), x, KEY, **ATTACK)
  return adaad.adaad_loss(apply(p, xa), apply(T, xa), reduction="batchmean")[0]


def objective_igdm(p, x, y):
  xa = adaad.adaad_inner(lambda u: apply(p, u), lambda u: apply(T, u), x, KEY, **ATTACK)
  xp, xm = igdm.igdm_points(x, xa)
  base = adaad.adaad_loss(apply(p, xa), apply(T, xa))[0]
  return base + 10.0 * igdm.igdm_loss(apply(p, xp), apply(p, xm), apply(T, xp), apply(T, xm))


def objective_darht(p, x, y):
  xa = ard.ce_inner(lambda u: apply(p, u), x, y, KEY, init="gaussian", **ATTACK)
  kd_loss, w, _ = darht.darht_kd_loss(slots(p, xa), [apply(T, xa), apply(T2, xa)], y)
  ce = kdiga.mean_ce(apply(p, xa), y)
  return ce + kd_loss + 0.0 * jnp.sum(w)


OBJECTIVES = {name[len("objective_"):]: fn for name, fn in globals().items()
              if name.startswith("objective_")}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_pure_objective_under_jit_and_grad(name):
  x, y = _data()
  f = jax.jit(jax.value_and_grad(OBJECTIVES[name]), compiler_options=FAST)
  value, grad = f(S, x, y)
  assert np.isfinite(float(value))
  leaves = jax.tree.leaves(grad)
  assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
  assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0
  # A few plain gradient steps decrease the objective (same attack key).
  p = S
  for _ in range(5):
    _, g = f(p, x, y)
    p = jax.tree.map(lambda a, b: a - 0.05 * b, p, g)
  assert float(f(p, x, y)[0]) < float(value)


def test_inner_attacks_stay_in_the_ball():
  x, y = _data()

  @functools.partial(jax.jit, compiler_options=FAST)
  def attacks(x):
    s = lambda u: apply(S, u)
    t = lambda u: apply(T, u)
    return (ard.ce_inner(s, x, y, KEY, **ATTACK),
            rslad.rslad_inner(s, t(x), x, KEY, **ATTACK),
            adaad.adaad_inner(s, t, x, KEY, **ATTACK))

  for xa in attacks(x):
    assert float(jnp.abs(xa - x).max()) <= EPS + 1e-6
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1
    assert float(jnp.abs(xa - x).max()) > EPS / 2


def test_attacks_are_not_differentiated_through():
  # The inner attacks return stop_gradient(x'): the outer gradient ignores them.
  x, y = _data()
  g = jax.grad(lambda z: jnp.sum(ard.ce_inner(lambda u: apply(S, u), z, y, KEY, **ATTACK)))(x)
  np.testing.assert_array_equal(np.asarray(g), 0.0)

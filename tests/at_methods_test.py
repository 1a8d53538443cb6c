"""PGD-AT and TRADES on hand-computed cases; the method registry's errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdrobust import methods
from kdrobust.methods.base import Ctx, TrainForward


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


W = np.array([[1.0, -0.5, 0.2], [0.3, 0.8, -1.0], [-0.7, 0.1, 0.4], [0.2, 0.2, 0.9]], np.float32)


def apply_fn(variables, x, train=False, mutable=(), rngs=None):
  """A linear model without batch norm, with the Flax ``apply`` signature."""
  del train, rngs
  logits = x.reshape(x.shape[0], -1) @ variables["params"]["w"]
  return (logits, {}) if mutable else logits


def _ctx(x, y):
  variables = {"params": {"w": jnp.asarray(W)}}
  return Ctx(x=x, y=y, mask=jnp.ones(y.shape, bool), key=jax.random.PRNGKey(0),
             epoch=jnp.float32(1), num_epochs=10, num_classes=3,
             student_inner=lambda u: apply_fn(variables, u)), variables


X = np.array([[[[0.2], [0.9]], [[0.4], [0.1]]], [[[0.6], [0.3]], [[0.5], [0.8]]]], np.float32)
XA = np.clip(X + np.array([1, -1, 1, -1], np.float32).reshape(1, 2, 2, 1) * 0.03, 0, 1)
Y = np.array([0, 2])


def test_pgd_at_outer_loss_is_mean_ce_on_adversarial_inputs():
  ctx, v = _ctx(jnp.asarray(X), jnp.asarray(Y))
  out = methods.make("pgd_at").loss(ctx, TrainForward(apply_fn, v["params"], {}), jnp.asarray(XA), {})
  p = _softmax(XA.reshape(2, -1) @ W)
  np.testing.assert_allclose(out.loss, -np.log(p[np.arange(2), Y]).mean(), rtol=1e-5)


def test_trades_outer_loss_hand_computed():
  ctx, v = _ctx(jnp.asarray(X), jnp.asarray(Y))
  student = TrainForward(apply_fn, v["params"], {})
  out = methods.make("trades", beta=6.0).loss(ctx, student, jnp.asarray(XA), {})
  p, q = _softmax(X.reshape(2, -1) @ W), _softmax(XA.reshape(2, -1) @ W)
  ce = -np.log(p[np.arange(2), Y]).mean()
  kl = (p * (np.log(p) - np.log(q))).sum(-1).mean()
  np.testing.assert_allclose(out.loss, ce + 6.0 * kl, rtol=1e-5)
  assert student.calls == 3  # official order: clean, adversarial, clean again


def test_trades_inner_attack_increases_the_kl_and_stays_in_ball():
  ctx, _ = _ctx(jnp.asarray(X), jnp.asarray(Y))
  m = methods.make("trades", attack={"eps": 0.05, "step_size": 0.01, "steps": 5})
  xa = m.perturb(ctx)
  from kdrobust import losses
  clean = ctx.student_inner(ctx.x)
  assert float(jnp.abs(xa - ctx.x).max()) <= 0.05 + 1e-6
  assert float(losses.kl(ctx.student_inner(xa), clean).sum()) > 1e-4


def test_train_forward_threads_batch_norm_statistics_in_order():
  import flax.linen as nn

  class BN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.BatchNorm(use_running_average=not train, momentum=0.5)(x.reshape(x.shape[0], -1))

  m = BN()
  v = m.init(jax.random.PRNGKey(0), jnp.zeros((2, 4)))
  f = TrainForward(m.apply, v["params"], v["batch_stats"])
  f(jnp.ones((2, 4)))
  f(3 * jnp.ones((2, 4)))
  # mean_0 = 0 -> 0.5*0 + 0.5*1 = 0.5 -> 0.5*0.5 + 0.5*3 = 1.75
  np.testing.assert_allclose(f.batch_stats["BatchNorm_0"]["mean"], 1.75)
  assert f.calls == 2


def test_registry_errors_list_valid_names():
  with pytest.raises(ValueError, match="valid methods: .*pgd_at"):
    methods.make("nope")
  with pytest.raises(ValueError, match="no hyperparameter.*beta"):
    methods.make("pgd_at", beta=1.0)
  with pytest.raises(ValueError, match="inner-attack field"):
    methods.make("pgd_at", attack={"epsilon": 0.1})
  assert {"natural", "pgd_at", "trades"} <= set(methods.available())


def test_inner_attack_bn_mode_is_configurable():
  import flax.linen as nn
  import optax
  from kdrobust import train_step

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      h = nn.Conv(4, (3, 3))(x)
      h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
      return nn.Dense(3)(jnp.mean(nn.relu(h), axis=(1, 2)))

  net = Net()
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 4, 4, 1))
  v = net.init(jax.random.PRNGKey(1), x)
  from kdrobust.state import TrainState
  tx = optax.sgd(0.1)
  batch = {"image": x, "label": jnp.arange(8) % 3}
  params = {}
  for mode in ("eval", "batch"):
    m = methods.make("pgd_at", attack={"eps": 0.1, "step_size": 0.05, "steps": 2, "bn_mode": mode})
    fresh = jax.tree.map(jnp.array, v)  # the step donates its state
    st = TrainState.create(fresh["params"], fresh["batch_stats"], tx, {})
    step = train_step.make_train_step(apply_fn=net.apply, method=m, tx=tx, num_classes=3,
                                      num_epochs=1, steps_per_epoch=1, seed=0)
    new, _ = step(st, (), batch)
    params[mode] = new.params
  diff = max(float(jnp.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(params["eval"]), jax.tree.leaves(params["batch"])))
  assert diff > 0  # the attack saw different statistics
  with pytest.raises(ValueError, match="bn_mode"):
    methods.make("pgd_at", attack={"bn_mode": "training"})

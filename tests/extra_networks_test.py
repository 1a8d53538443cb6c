"""Extra trainable networks (issue 12; PeerAiD's peer): state, checkpoints, resume, config.

* a PeerAiD step trains the peer with its own optimizer (own learning rate) and
  both networks' statistics; a non-finite step keeps both networks' states;
* the peer's parameters, optimizer state and BN statistics are checkpointed,
  and a run resumed mid-epoch from the checkpoint continues bit-identically;
* a checkpoint written before ``TrainState.extra`` existed (the old
  ``flax.struct`` TrainState) restores into the new state for a method without
  extra networks, whose pytree keeps the old structure, and trains on with its
  frozen teacher bit-identical;
* ``kdrobust.train``: ``config.extra_networks`` overrides, refusals with the
  valid values, and ``create_state`` drawing the peer independently.

Tiny conv-BN model on 8x8x3, batch 8, 2-step attacks, compiled at XLA
optimisation level 0: about 20 s of CPU (25-35 s wall on the loaded 2-core machine).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdrobust import checkpoint as ckpt_lib
from kdrobust import config_lib
from kdrobust import methods
from kdrobust import train as train_lib
from kdrobust import train_step as step_lib
from kdrobust.state import TrainState

C, B, SHAPE = 10, 8, (8, 8, 3)
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
SPE = 2  # steps per epoch
LR, PEER_LR = 0.1, 0.03


class Tiny(nn.Module):
  width: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    for w in (self.width, 8):
      x = nn.Conv(w, (3, 3), strides=2, use_bias=False)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    return nn.Dense(C)(jnp.mean(x, axis=(1, 2)))


def _init(model, seed):
  # Eager: its per-op compilations are paid once per shape (one Tiny everywhere).
  v = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + SHAPE), train=False)
  return v["params"], v["batch_stats"]


def _batch(seed=0):
  r = np.random.RandomState(seed)
  return {"image": jnp.asarray(r.uniform(0, 1, (B,) + SHAPE), jnp.float32),
          "label": jnp.asarray(r.randint(0, C, B), jnp.int32), "mask": jnp.ones((B,), bool)}


def _np(tree):
  return jax.tree.map(lambda a: np.array(a, copy=True), tree)


def _leaves_equal(a, b) -> bool:
  la, lb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
  return ([p for p, _ in la] == [p for p, _ in lb]
          and all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(la, lb)))


_PEER = {}


def _peeraid():
  """A fresh PeerAiD state (peer: another draw of Tiny, its own SGD) and the jitted step."""
  method = methods.make("peeraid", attack={"steps": 2})
  tx = optax.chain(optax.add_decayed_weights(2e-4), optax.sgd(LR, momentum=0.9))
  tx_peer = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(PEER_LR, momentum=0.9))
  student, peer = Tiny(), Tiny()
  state = TrainState.create(*_init(student, 0), tx, method.init_state(C),
                            extra={"peer": (*_init(peer, 1), tx_peer)})
  if "step" not in _PEER:
    step = step_lib.make_train_step(
        apply_fn=student.apply, method=method, tx=tx, num_classes=C, num_epochs=10,
        steps_per_epoch=SPE, seed=0, jit=False,
        extra_networks={"peer": step_lib.ExtraNetwork(peer.apply, tx_peer,
                                                      optax.constant_schedule(PEER_LR))})
    _PEER["step"] = jax.jit(step, compiler_options=FAST)
  return state, _PEER["step"], tx_peer


def test_peer_is_trained_with_its_own_optimizer():
  state, step, tx_peer = _peeraid()
  before = _np(state)
  new, metrics = step(state, (), _batch(0))
  assert np.isfinite(float(metrics["loss"])) and int(new.nonfinite) == 0
  assert float(metrics["lr/peer"]) == pytest.approx(PEER_LR)
  assert float(metrics["grad_norm/peer"]) > 0
  e0, e1 = before.extra["peer"], new.extra["peer"]
  for part in ("params", "batch_stats", "opt_state"):
    assert not _leaves_equal(e0[part], e1[part]), f"the peer's {part} did not move"
  assert not _leaves_equal(before.params, new.params), "the student did not move"
  # The peer's update is its own tx applied to its gradient: recompute it from the
  # first momentum step (trace = grad + wd * theta; update = -lr * trace).
  trace = jax.tree.leaves(e1["opt_state"][1][0].trace)
  p0, p1 = jax.tree.leaves(e0["params"]), jax.tree.leaves(e1["params"])
  for a, b, t in zip(p0, p1, trace):
    np.testing.assert_allclose(np.asarray(b), a - PEER_LR * np.asarray(t), rtol=0, atol=1e-7)
  # A non-finite step keeps every network's state (and counts the rejection).
  bad = dict(_batch(1), image=jnp.full((B,) + SHAPE, jnp.nan))
  kept, _ = step(new, (), bad)
  assert int(kept.nonfinite) == 1
  assert _leaves_equal(_np(kept).replace(nonfinite=new.nonfinite, step=new.step), _np(new))


def test_resume_mid_run_is_bit_identical(tmp_path):
  """4 steps straight == 1 step, checkpoint, restore into a fresh state, 3 steps."""
  state, step, _ = _peeraid()
  batches = [_batch(i) for i in range(4)]
  straight = state
  for b in batches:
    straight, _ = step(straight, (), b)
  part, _ = step(state, (), batches[0])
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "ck"), enable_async=False)
  ckpt.save(1, part, {"step": 1})
  ckpt.wait()
  fresh, _, _ = _peeraid()
  restored, meta = ckpt.restore(1, ckpt_lib.abstract_like(fresh))
  ckpt.close()
  assert meta["step"] == 1 and sorted(restored.extra) == ["peer"]
  assert _leaves_equal(restored, part), "the peer's (or student's) state did not round-trip"
  for b in batches[1:]:  # mid-epoch resume (SPE = 2), then an epoch boundary
    restored, _ = step(restored, (), b)
  assert _leaves_equal(restored, straight)


@flax.struct.dataclass
class OldTrainState:
  """The TrainState as written before ``extra`` existed (checkpoint format)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  method_state: Any
  nonfinite: jax.Array


def test_old_checkpoint_restores_and_trains_for_other_methods(tmp_path):
  method = methods.make("rslad", attack={"steps": 2})
  tx = optax.sgd(LR, momentum=0.9)
  student, teacher = Tiny(), Tiny()
  params, stats = _init(student, 0)
  t_vars = ({"params": _init(teacher, 5)[0], "batch_stats": _init(teacher, 5)[1]},)
  old = OldTrainState(step=jnp.asarray(3, jnp.int32), params=params, batch_stats=stats,
                      opt_state=tx.init(params), method_state={},
                      nonfinite=jnp.zeros((), jnp.int32))
  new = TrainState.create(params, stats, tx, method.init_state(C))
  # Without extra networks the pytree is the old one, key path for key path.
  old_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(old)[0]]
  assert [p for p, _ in jax.tree_util.tree_flatten_with_path(new)[0]] == old_paths
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "ck"), enable_async=False)
  ckpt.save(3, old, {"step": 3})
  ckpt.wait()
  restored, _ = ckpt.restore(3, ckpt_lib.abstract_like(new))
  ckpt.close()
  assert isinstance(restored, TrainState) and restored.extra == {}
  assert int(restored.step) == 3 and _leaves_equal(restored.params, params)
  step = jax.jit(step_lib.make_train_step(
      apply_fn=student.apply, method=method, tx=tx, teacher_apply_fns=[teacher.apply],
      num_classes=C, num_epochs=10, steps_per_epoch=SPE, seed=0, jit=False),
      compiler_options=FAST)
  before_t = _np(t_vars)
  out, metrics = step(restored, t_vars, _batch(0))
  assert np.isfinite(float(metrics["loss"])) and out.extra == {}
  assert not _leaves_equal(out.params, params)
  assert _leaves_equal(t_vars, before_t), "the frozen teacher changed"


def _config(method="peeraid", **extra_networks):
  c = config_lib.base_config()
  c.method = config_lib.method_config(method)
  c.model.name = "tiny_cnn"
  if extra_networks:
    c.extra_networks = extra_networks
  return c


def test_extra_network_configs_and_create_state():
  method = methods.make("peeraid")
  c = _config(peer={"optim": {"lr": 0.02}})
  (model_cfg, optim_cfg), = train_lib.extra_network_configs(c, method).values()
  assert model_cfg.to_dict() == c.model.to_dict()  # missing: the student's
  assert optim_cfg.lr == 0.02 and optim_cfg.momentum == c.optim.momentum
  extras = train_lib.build_extra_networks(c, method, 10, "digits", steps_per_epoch=5)
  assert float(extras["peer"][2](0)) == pytest.approx(0.02)  # its own schedule
  tx = train_lib.make_optimizer(c.optim, train_lib.make_schedule(c.optim, 5, c.num_epochs))
  # create_state on the test's Tiny (its ops are compiled already) with the built peer's tx.
  model, extras = Tiny(), {"peer": (Tiny(),) + extras["peer"][1:]}
  state = train_lib.create_state(model, tx, method, C, SHAPE, seed=0, extras=extras)
  alone = train_lib.create_state(model, tx, method, C, SHAPE, seed=0)
  assert _leaves_equal(state.params, alone.params)  # the student's draw is unchanged
  peer = state.extra["peer"]
  assert (jax.tree_util.tree_structure(peer["params"])
          == jax.tree_util.tree_structure(state.params))
  assert not _leaves_equal(peer["params"], state.params), "the peer is a copy of the student"
  assert alone.extra == {}


@pytest.mark.parametrize("method,extra,msg", [
    ("rslad", {"peer": {}}, "does not train; valid: none"),
    ("peeraid", {"friend": {}}, "valid: ['peer']"),
    ("peeraid", {"peer": {"model": {"nme": "x"}}}, "valid: ['dtype'"),
    ("peeraid", {"peer": {"teacher": {}}}, "valid: ['model', 'optim']"),
    ("peeraid", {"peer": {"model": {"name": "nope"}}}, "valid models:"),
])
def test_bad_extra_network_configs_are_refused(method, extra, msg):
  c = _config(method, **extra)
  with pytest.raises(ValueError) as e:
    train_lib.extra_network_configs(c, methods.from_config(c.method))
  assert msg in str(e.value)


def test_step_refuses_missing_extra_networks():
  with pytest.raises(ValueError, match="trains the extra network"):
    step_lib.make_train_step(apply_fn=Tiny().apply, method=methods.make("peeraid"),
                             tx=optax.sgd(0.1), num_classes=C, num_epochs=1,
                             steps_per_epoch=1, seed=0)

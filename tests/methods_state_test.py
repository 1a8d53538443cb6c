"""Method state across epochs and per-step attack signals (issue 12): ABSLD and the Fair-* family.

* each method runs a jitted step (finite loss, student moves, teacher bit-identical);
* the distillation terms vanish when the student is the teacher;
* ABSLD's temperature update and Fair-ARD's class weights against hand (NumPy) values;
* the epoch-boundary update runs exactly at the first step of each later epoch;
* resume exactness with method state: a TrainState saved and restored (checkpointer)
  mid-epoch and at a boundary continues bit-identically;
* the opt-in PGD signal: the per-step correctness equals evaluating every iterate,
  and the default (no-signal) path is the plain loop (its jaxpr equals a reference).

Tiny conv-BN model on 8x8x3, batch 8, 2-step attacks, compiled at XLA
optimisation level 0: about 35 s of CPU on 2 cores.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdrobust import checkpoint as ckpt_lib
from kdrobust import losses
from kdrobust import methods
from kdrobust import train_step as step_lib
from kdrobust.attacks import projected
from kdrobust.methods import Ctx, TrainForward
from kdrobust.methods import absld, fair_ard
from kdrobust.methods.base import InnerStudent, epoch_boundary, has_epoch_update
from kdrobust.state import TrainState

C, B, SHAPE = 10, 8, (8, 8, 3)
NEW = ("absld", "fair_ard", "fair_iad", "fair_rslad", "fair_mtard")
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class Tiny(nn.Module):
  use_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    for w in (4, 8):
      x = nn.Conv(w, (3, 3), strides=2, use_bias=not self.use_bn)(x)
      if self.use_bn:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    return nn.Dense(C)(jnp.mean(x, axis=(1, 2)))


def _init(model, seed):
  v = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + SHAPE), train=False)
  return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def _batch(seed=0):
  kx, ky = jax.random.split(jax.random.PRNGKey(seed))
  return {"image": jax.random.uniform(kx, (B,) + SHAPE),
          "label": jax.random.randint(ky, (B,), 0, C), "mask": jnp.ones((B,), bool)}


def _method(name, **kw):
  kw.setdefault("attack", {"steps": 2})
  return methods.make(name, **kw)


def _n_teachers(method):
  return type(method).teachers[0]


_STEPS = {}


def _setup(method, steps_per_epoch=2):
  n = _n_teachers(method)
  t_vars = tuple(_init(Tiny(), 100 + i) for i in range(n))
  s_vars = _init(Tiny(), 0)
  tx = optax.sgd(0.1, momentum=0.9)
  state = TrainState.create(s_vars["params"], s_vars["batch_stats"], tx, method.init_state(C))
  key = (method, steps_per_epoch)
  if key not in _STEPS:
    step = step_lib.make_train_step(apply_fn=Tiny().apply, method=method, tx=tx,
                                    teacher_apply_fns=[Tiny().apply] * n, num_classes=C,
                                    num_epochs=200, steps_per_epoch=steps_per_epoch, seed=0,
                                    jit=False)
    _STEPS[key] = jax.jit(step, compiler_options=FAST)
  return state, t_vars, _STEPS[key]


def _np(tree):
  return jax.tree.map(lambda a: np.array(a, copy=True), tree)


def test_registry_lists_the_new_methods():
  assert set(NEW) <= set(methods.available())
  with pytest.raises(ValueError, match="valid"):
    methods.make("fair_ard", kappa_mean="median")
  with pytest.raises(ValueError, match="valid"):
    methods.make("fair_mtard", nat_target="both")


# methods_test.py::test_one_step runs every registered method (these five too);
# here the two whose compiled steps the boundary and resume tests below reuse.
@pytest.mark.parametrize("name", ["absld", "fair_rslad"])
def test_one_jitted_step(name):
  method = _method(name)
  assert has_epoch_update(method)
  state, t_vars, step = _setup(method)
  before_t, before_p = _np(t_vars), _np(state.params)
  new, metrics = step(state, t_vars, _batch())
  assert np.isfinite(float(metrics["loss"])) and int(new.nonfinite) == 0
  assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))),
                                          before_p, new.params)))
  assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, np.asarray(b))),
                                          before_t, t_vars))), "teacher changed"
  # The state keeps its structure and dtypes (lax.cond of the boundary needs it).
  assert jax.tree.map(lambda a: a.dtype, _np(new.method_state)) == \
      jax.tree.map(lambda a: a.dtype, _np(state.method_state))
  # The per-epoch sums moved by exactly this batch.
  y = np.asarray(_batch()["label"])
  counts = np.bincount(y, minlength=C)
  ms = _np(new.method_state)
  if name == "absld":
    assert np.all((ms["ce_adv"] > 0) == (counts > 0)) and np.all(ms["tau_adv"] == 1)
  else:
    np.testing.assert_array_equal(ms["count"], counts)
    assert np.all(ms["kappa_sum"] <= 2 * counts) and np.all(ms["class_w"] == 1)


def _loss_only(method, s_vars, t_vars, batch, state, epoch=150):
  model = Tiny(use_bn=False)
  teachers = tuple(step_lib.teacher_logits_fn(model.apply, v) for v in t_vars)
  ctx = Ctx(x=batch["image"], y=batch["label"], mask=batch["mask"], key=jax.random.PRNGKey(0),
            epoch=jnp.float32(epoch), num_epochs=200, num_classes=C,
            student_inner=InnerStudent(model.apply, s_vars, method.attack.bn_mode),
            teachers=teachers, state=state)
  x_adv = method.perturb(ctx)
  student = TrainForward(model.apply, s_vars["params"], {})
  return method.loss(ctx, student, x_adv, state)


@pytest.mark.parametrize("name,kw,keys", [
    ("absld", {}, ("kl_nat",)),  # tau = 1 at the start: q_nat = p_T(x) = p_S(x)
    ("fair_ard", {"attack": {"steps": 1, "eps": 0.0}}, ("kl",)),
    ("fair_iad", {"attack": {"steps": 1, "eps": 0.0}}, ("kl", "introspection")),
    ("fair_rslad", {"attack": {"steps": 1, "eps": 0.0}}, ("kl_adv", "kl_clean")),
    ("fair_mtard", {"attack": {"steps": 1, "eps": 0.0}}, ("kl_adv", "kl_nat")),
])
def test_terms_vanish_when_student_is_teacher(name, kw, keys):
  # No batch norm: the train-mode student equals the inference-mode teacher;
  # eps = 0 makes x' = x; log_eps = 0 is the exact KL.
  if name != "fair_ard" and name != "fair_iad":
    kw = dict(kw, log_eps=0.0)
  method = _method(name, **kw)
  v = _init(Tiny(use_bn=False), 100)
  state = method.init_state(C)
  # Non-trivial class weights: still zero.
  if "class_w" in state:
    state = dict(state, class_w=jnp.linspace(5 / 6, 5 / 2, C))
  # Eager (no jit): faster than compiling for one call.
  loss, m = _loss_only(method, v, (v,) * _n_teachers(method), _batch(), state)[:2]
  for k in keys:
    assert abs(float(m[k])) <= 1e-6, (k, float(m[k]))
  if name != "absld":
    assert abs(float(loss)) <= 1e-6


# ------------------------------------------------------------ hand-computed state updates

def test_absld_temperature_update_by_hand():
  m = _method("absld")
  ce_adv = np.array([5., 1, 2, 3, 4, 4, 4, 4, 4, 9])
  ce_nat = np.full(C, 2.0)  # no gap: unchanged (the code would give NaN)
  tau = np.linspace(0.6, 4.9, C)
  state = {"tau_adv": jnp.asarray(tau, jnp.float32), "tau_nat": jnp.asarray(tau, jnp.float32),
           "ce_adv": jnp.asarray(ce_adv, jnp.float32), "ce_nat": jnp.asarray(ce_nat, jnp.float32)}
  for epoch, lr in ((1, 0.1), (214, 0.1), (215, 0.01), (259, 0.01), (260, 1e-3), (285, 1e-4)):
    out = _np(jax.jit(m.epoch_update)(state, jnp.int32(epoch)))
    gap = ce_adv - ce_adv.mean()
    want = np.clip(tau - lr * gap / np.abs(gap).max(), 0.5, 5.0)
    np.testing.assert_allclose(out["tau_adv"], want, rtol=0, atol=1e-6, err_msg=str(epoch))
    np.testing.assert_array_equal(out["tau_nat"], np.float32(tau))
    assert not out["ce_adv"].any() and not out["ce_nat"].any()
  # Clipping at both bounds, and the largest gap moves by exactly lr.
  low = _np(m.epoch_update(dict(state, tau_adv=jnp.full(C, 0.55)), jnp.int32(1)))["tau_adv"]
  assert low[9] == np.float32(0.5) and abs(low[1] - 0.55 - 0.1 * 3.0 / 5.0) < 1e-6


def test_absld_soft_label_modes():
  z = jnp.asarray(np.random.default_rng(0).normal(size=(4, C)) * 3)
  y = jnp.asarray([0, 1, 2, 1])
  ta, tn = jnp.linspace(0.5, 5, C), jnp.linspace(1, 2, C)
  a, n = absld.tempered_targets(z, y, ta, tn, "separate")
  np.testing.assert_allclose(a, z / np.asarray(ta)[np.asarray(y)][:, None], rtol=1e-6)
  np.testing.assert_allclose(n, z / np.asarray(tn)[np.asarray(y)][:, None], rtol=1e-6)
  pa, pn = absld.tempered_targets(z, y, ta, tn, "product")
  prod = (np.asarray(ta) * np.asarray(tn))[np.asarray(y)][:, None]
  np.testing.assert_allclose(pa, z / prod, rtol=1e-6)
  np.testing.assert_array_equal(pa, pn)
  with pytest.raises(ValueError, match="valid"):
    methods.make("absld", temperature_mode="sum")


def _np_weights(kbar, beta=2.0, eps=1e-5):
  r = (1 / (kbar + eps)) ** beta
  return np.clip(r * len(kbar) / r.sum(), 5 / 6, 5 / 2)


def test_fair_class_weights_by_hand():
  m = _method("fair_ard")
  kappa_sum = np.array([10., 20, 30, 40, 50, 5, 60, 70, 80, 0])
  count = np.array([10., 10, 10, 10, 10, 5, 10, 10, 10, 5])
  state = {"class_w": jnp.ones(C), "kappa_sum": jnp.asarray(kappa_sum),
           "count": jnp.asarray(count)}
  out = _np(m.epoch_update(state, jnp.int32(3)))
  np.testing.assert_allclose(out["class_w"], _np_weights(kappa_sum / count), rtol=1e-5)
  assert not out["kappa_sum"].any() and not out["count"].any()
  # The code's N / C divisor: a different kbar (here unbalanced) gives other weights.
  bal = _np(_method("fair_ard", kappa_mean="balanced").epoch_update(state, jnp.int32(3)))
  np.testing.assert_allclose(bal["class_w"], _np_weights(kappa_sum / (count.sum() / C)),
                             rtol=1e-5)
  # A concrete case with nothing clipped, by hand: kbar = (1.1, 1, ..., 1), beta = 2:
  # w_0 = 10 (1/1.21) / (9 + 1/1.21) = 0.8410, w_c = 10 / (9 + 1/1.21) = 1.0177.
  w = _np(fair_ard.class_weights(jnp.asarray([1.1] + [1.0] * 9), kappa_eps=0.0))
  assert abs(w[0] - 0.84104) < 1e-4 and abs(w[1] - 1.01766) < 1e-4
  # Fair-RSLAD's code (no +1e-5): a class that never survives a step gets a NaN weight
  # (inf * C / inf), the others 0 clipped to 5/6, as in torch.
  w = _np(fair_ard.class_weights(jnp.asarray([0.0] + [1.0] * 9), kappa_eps=0.0))
  assert np.isnan(w[0]) and np.all(w[1:] == np.float32(5 / 6))
  # And clipped: kbar = (1, 2, ..., 2) gives 3.08 and 0.77 before the clip.
  w = _np(fair_ard.class_weights(jnp.asarray([1.0] + [2.0] * 9)))
  assert w[0] == np.float32(5 / 2) and w[1] == np.float32(5 / 6)


# ------------------------------------------------------------ the epoch boundary in the step

def test_epoch_boundary_is_a_pure_function_of_the_step():
  m = _method("fair_ard")
  s = {"class_w": jnp.ones(C), "kappa_sum": jnp.arange(C, dtype=jnp.float32) + 1,
       "count": jnp.ones(C)}
  for step, spe, fires in ((0, 3, False), (1, 3, False), (3, 3, True), (4, 3, False),
                           (6, 3, True), (1, 1, True)):
    out = _np(epoch_boundary(m, s, jnp.int32(step), spe))
    assert bool(np.all(out["count"] == 0)) == fires, (step, spe)


def test_fair_step_updates_weights_at_the_boundary_only():
  method = _method("fair_rslad")
  state, t_vars, step = _setup(method, steps_per_epoch=2)
  s1, _ = step(state, t_vars, _batch(0))
  s2, _ = step(s1, t_vars, _batch(1))
  ms2 = _np(s2.method_state)
  assert np.all(ms2["class_w"] == 1), "weights moved inside an epoch"
  s3, m3 = step(s2, t_vars, _batch(2))
  ms3 = _np(s3.method_state)
  kbar = ms2["kappa_sum"] / np.maximum(ms2["count"], 1)
  np.testing.assert_allclose(ms3["class_w"], _np_weights(kbar), rtol=1e-5)
  np.testing.assert_array_equal(ms3["count"], np.bincount(np.asarray(_batch(2)["label"]),
                                                          minlength=C))
  assert float(m3["class_w_max"]) == pytest.approx(float(ms3["class_w"].max()))


def test_resume_is_exact_with_method_state(tmp_path):
  """4 steps in one go == save/restore after step 1 (mid-epoch) and after step 2 (boundary)."""
  method = _method("absld")
  state, t_vars, step = _setup(method, steps_per_epoch=2)
  batches = [_batch(i) for i in range(4)]
  ref = state
  for b in batches:
    ref, _ = step(ref, t_vars, b)
  ck = ckpt_lib.Checkpointer(os.path.join(tmp_path, "ck"), enable_async=False)
  s = state
  for i, b in enumerate(batches):
    s, _ = step(s, t_vars, b)
    if i in (0, 1):
      ck.save(i + 1, s, {"step": i + 1})
      ck.wait()
      abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), s)
      s, _ = ck.restore(i + 1, abstract)
  same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), _np(ref), _np(s)))
  assert all(same)
  # The temperatures did move at the boundary (step 2), so the check is not vacuous.
  assert not np.all(_np(ref.method_state)["tau_adv"] == 1)


# ------------------------------------------------------------ the attack's per-step signal

def _objective(model, v, y):
  def f(u):
    logits = model.apply(v, u, train=False)
    return losses.xent(logits, y), logits
  return f


def test_signal_equals_evaluating_every_iterate():
  model, v, b = Tiny(), _init(Tiny(), 0), _batch(3)
  x, y = b["image"], b["label"]
  x0 = projected.random_init(jax.random.PRNGKey(1), x, 0.3)
  kw = dict(eps=0.3, step_size=0.1, norm="linf")
  f = _objective(model, v, y)
  x_adv, sig = jax.jit(lambda x0: projected.maximize(
      f, x, x0, steps=4, signal=lambda lg: jnp.argmax(lg, -1) == y, **kw),
                       compiler_options=FAST)(x0)
  assert sig.shape == (4, B)

  @jax.jit
  def iterates(x0):  # iterate k = the plain loop run for k steps from the same start
    xs = [projected.maximize(lambda u: f(u)[0], x, x0, steps=k, **kw) for k in range(5)]
    return [jnp.argmax(f(xk)[1], -1) == y for xk in xs[:4]], xs[4]

  right, x_last = iterates(x0)
  for k in range(4):
    np.testing.assert_array_equal(np.asarray(sig[k]), np.asarray(right[k]), err_msg=str(k))
  np.testing.assert_array_equal(x_adv, x_last)
  assert 0 < int(sig.sum()) < sig.size, "degenerate case: every iterate right or every one wrong"


def _reference_maximize(objective, x, x_init, *, eps, step_size, steps):
  """The plain L-inf loop as it was before the signal option (written here, not imported)."""
  grad_fn = jax.grad(lambda u: jnp.sum(objective(u)))

  def body(_, xa):
    g = grad_fn(xa)
    return projected.project(xa + step_size * projected.ascent_direction(g, "linf"), x, eps,
                             "linf", (0.0, 1.0))

  return jax.lax.stop_gradient(jax.lax.fori_loop(0, steps, body, x_init, unroll=1))


def test_default_path_is_the_plain_loop():
  model, v, b = Tiny(), _init(Tiny(), 0), _batch(0)
  obj = lambda u: losses.xent(model.apply(v, u, train=False), b["label"])
  kw = dict(eps=8 / 255, step_size=2 / 255, steps=3)
  got = jax.make_jaxpr(lambda x: projected.maximize(obj, x, x, **kw))(b["image"])
  ref = jax.make_jaxpr(lambda x: _reference_maximize(obj, x, x, **kw))(b["image"])
  assert str(got) == str(ref)
  assert "argmax" not in str(got)
  sig = jax.make_jaxpr(lambda x: projected.maximize(
      lambda u: (obj(u), model.apply(v, u, train=False)), x, x,
      signal=lambda lg: jnp.argmax(lg, -1) == b["label"], **kw))(b["image"])
  assert "argmax" in str(sig)

"""The distillation methods: one jitted train step each, plus their defining properties.

Everything runs on a tiny 2-conv model with batch norm on 8x8x3 inputs,
batch 8, with 2-step inner attacks, so the whole file stays well under two
minutes on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kdrobust import losses
from kdrobust import methods
from kdrobust import train_step as step_lib
from kdrobust.methods import Ctx, TrainForward
from kdrobust.methods import adaad, darht, igdm, kd, kdiga, mtard, rslad
from kdrobust.state import TrainState

C = 10
B = 8
SHAPE = (8, 8, 3)
ATTACK = {"steps": 2, "unroll": 1}


class Tiny(nn.Module):
  """conv-BN-ReLU x2, global average pool, (optional DARHT slots), dense head."""
  num_classes: int = C
  head_slots: int = 0
  use_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    for w in (4, 8):
      x = nn.Conv(w, (3, 3), strides=2, use_bias=not self.use_bn)(x)
      if self.use_bn:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      x = nn.relu(x)
    x = jnp.mean(x, axis=(1, 2))
    if self.head_slots:
      z = nn.Dense(self.head_slots * self.num_classes, name="slots")(x)
      self.sow("intermediates", "teacher_slots",
               z.reshape(z.shape[0], self.head_slots, self.num_classes))
      x = z
    return nn.Dense(self.num_classes, name="head")(x)


def _init(model, seed):
  v = model.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + SHAPE), train=False)
  return {"params": v["params"], **({"batch_stats": v["batch_stats"]}
                                    if "batch_stats" in v else {})}


def _batch(seed=0):
  kx, ky = jax.random.split(jax.random.PRNGKey(seed))
  return {"image": jax.random.uniform(kx, (B,) + SHAPE),
          "label": jax.random.randint(ky, (B,), 0, C),
          "mask": jnp.ones((B,), bool)}


def _n_teachers(method):
  lo, hi = type(method).teachers
  return 2 if (hi is None or hi >= 2) else lo


def _method(name, igdm_alpha=None, **kw):
  kw.setdefault("attack", dict(ATTACK))
  if igdm_alpha is not None:
    return methods.make(name, igdm={"alpha": igdm_alpha}, **kw)
  return methods.make(name, **kw)


# XLA:CPU compile time dominates these tests; the semantics do not depend on
# backend optimisation, so the steps are compiled at optimisation level 0.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
_STEPS = {}


def _setup(method, *, num_epochs=200, steps_per_epoch=1):
  """Student/teacher variables, a fresh state and the jitted step (cached per setting).

  The step is ``make_train_step(..., jit=False)`` jitted here exactly as
  ``make_train_step`` does (state donated), plus the fast compiler options.
  """
  n = _n_teachers(method)
  slots = n if method.name == "darht" else 0
  student = Tiny(head_slots=slots)
  teacher = Tiny()
  t_vars = tuple(_init(teacher, 100 + i) for i in range(n))
  s_vars = _init(student, 0)
  tx = optax.sgd(0.1)
  # Extra trainable networks (PeerAiD's peer): another draw of the student's model.
  names = step_lib.extra_network_names(method)
  extra = {}
  for i, name in enumerate(names):
    e = _init(student, 50 + i)
    extra[name] = (e["params"], e.get("batch_stats", {}), tx)
  state = TrainState.create(s_vars["params"], s_vars.get("batch_stats", {}), tx,
                            method.init_state(C), extra=extra)
  key = (method, num_epochs, steps_per_epoch)
  if key not in _STEPS:
    step = step_lib.make_train_step(
        apply_fn=student.apply, method=method, tx=tx,
        teacher_apply_fns=[teacher.apply] * n, num_classes=C,
        num_epochs=num_epochs, steps_per_epoch=steps_per_epoch, seed=0, jit=False,
        extra_networks={name: step_lib.ExtraNetwork(student.apply, tx) for name in names})
    _STEPS[key] = jax.jit(step, donate_argnums=(0,), compiler_options=FAST)
  return state, t_vars, _STEPS[key]


def _at_epoch(state, epoch, steps_per_epoch=1):
  """A copy of ``state`` (the step donates its input) placed at the 1-indexed ``epoch``."""
  state = jax.tree.map(jnp.array, state)
  return state.replace(step=jnp.asarray((epoch - 1) * steps_per_epoch, jnp.int32))


def _copy(tree):
  return jax.tree.map(lambda a: np.array(a, copy=True), tree)


ALL = methods.available()
WRAPPED = ["pgd_at", "trades", "ard", "iad", "rslad", "adaad"]
CASES = [(n, None) for n in ALL] + [(n, 2.0) for n in WRAPPED]


def test_registry_lists_the_distillation_methods():
  for name in ("kd", "ard", "iad", "rslad", "mtard", "kdiga", "kdiga_ard",
               "adaad", "adaiad", "darht"):
    assert name in ALL
  for name in ALL:
    lo, hi = methods.get_class(name).teachers
    assert lo >= 0 and (hi is None or hi >= lo)


@pytest.mark.parametrize("name,igdm_alpha", CASES,
                         ids=[n if a is None else f"igdm_{n}" for n, a in CASES])
def test_one_step(name, igdm_alpha):
  """One step through ``parallel.make_mesh()`` with the batch sharded, as ``train.py`` runs it.

  On the mesh because a mesh with ``Explicit`` axes (``jax.make_mesh``'s
  default) turned Fair-ARD's ``class_w[y]`` gather into a ``ShardingTypeError``
  that an unsharded step cannot show.
  """
  from kdrobust import parallel  # pylint: disable=g-import-not-at-top
  method = _method(name, igdm_alpha)
  # Epoch 150 of 200: IAD's second term on, DARHT in its KD-only phase.
  state, t_vars, _ = _setup(method)
  mesh = parallel.make_mesh()
  if ("mesh", method) not in _STEPS:
    n = _n_teachers(method)
    names = step_lib.extra_network_names(method)
    student, teacher, tx = Tiny(head_slots=n if name == "darht" else 0), Tiny(), optax.sgd(0.1)
    step = step_lib.make_train_step(
        apply_fn=student.apply, method=method, tx=tx, teacher_apply_fns=[teacher.apply] * n,
        num_classes=C, num_epochs=200, steps_per_epoch=1, seed=0, jit=False,
        extra_networks={nm: step_lib.ExtraNetwork(student.apply, tx) for nm in names})
    rep = parallel.replicated(mesh)
    _STEPS[("mesh", method)] = jax.jit(step, out_shardings=(rep, rep), compiler_options=FAST)
  state = parallel.replicate(mesh, _at_epoch(state, 150))
  before_params = _copy(state.params)
  t_vars = parallel.replicate(mesh, t_vars)
  before_teachers = _copy(t_vars)
  batch = parallel.global_batch(mesh, {k: np.asarray(v) for k, v in _batch().items()})
  new_state, metrics = _STEPS[("mesh", method)](state, t_vars, batch)
  assert np.isfinite(float(metrics["loss"])), metrics
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))),
                                         before_params, new_state.params))
  assert any(changed), f"{name}: student parameters did not change"
  same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, np.asarray(b))),
                                      before_teachers, t_vars))
  assert all(same), f"{name}: teacher variables changed"
  assert int(new_state.nonfinite) == 0


# ---------------------------------------------------------------------------
# Zero when the student equals the teacher (no batch norm, so train mode and
# inference mode coincide).
# ---------------------------------------------------------------------------
def _loss_only(method, s_vars, t_vars, batch, epoch=150, num_epochs=200):
  """``perturb`` then ``loss`` (no gradient), built as ``make_train_step`` builds them."""
  model = Tiny(use_bn="batch_stats" in s_vars)
  teachers = tuple(step_lib.teacher_logits_fn(model.apply, v) for v in t_vars)

  @functools.partial(jax.jit, compiler_options=FAST)
  def run(s_vars, batch):
    ctx = Ctx(x=batch["image"], y=batch["label"], mask=batch["mask"],
              key=jax.random.PRNGKey(0), epoch=jnp.float32(epoch),
              num_epochs=num_epochs, num_classes=C,
              student_inner=lambda u: model.apply(s_vars, u, train=False),
              teachers=teachers)
    x_adv = method.perturb(ctx)
    student = TrainForward(model.apply, s_vars["params"], s_vars.get("batch_stats", {}))
    out = method.loss(ctx, student, x_adv, method.init_state(C))
    return out.loss, out.metrics

  return run(s_vars, batch)


@pytest.mark.parametrize("name,kw,keys", [
    ("kd", {"alpha": 1.0}, ("kl", "loss")),
    # RSLAD's adversarial term compares T(x) with S(x'), which differ even when
    # S = T; only its clean term is a student-teacher discrepancy at one point.
    ("rslad", {}, ("kl_clean",)),
    # AdaAD (both terms on) + IGDM: every term and the total vanish.
    ("adaad", {"alpha": 0.5, "igdm_alpha": 5.0}, ("kl_adv", "kl_clean", "igdm", "loss")),
])
def test_terms_vanish_when_student_is_teacher(name, kw, keys):
  # No batch norm, so the train-mode student equals the inference-mode teacher.
  method = _method(name, **kw)
  t_vars = (_init(Tiny(use_bn=False), 100),)
  loss, metrics = _loss_only(method, t_vars[0], t_vars, _batch())
  metrics = dict(metrics, loss=loss)
  for k in keys:
    assert abs(float(metrics[k])) <= 1e-6, (k, float(metrics[k]))


def test_pure_losses_vanish_on_identical_logits():
  z = jnp.asarray(np.random.default_rng(0).normal(size=(B, C)) * 3, jnp.float32)
  y = jnp.arange(B) % C

  @functools.partial(jax.jit, compiler_options=FAST)
  def values(z):
    return (kd.kd_loss(z, z, y, alpha=1.0, temperature=4.0)[0],
            rslad.rslad_loss(z, z * 0.5, z * 0.5)[0],
            rslad.rslad_loss(z, z, z)[0],
            adaad.adaad_loss(z, z, z, z, alpha=0.3)[0],
            igdm.igdm_loss(z, -z, z, -z))

  kd_zero, rslad_nonzero, rslad_zero, adaad_zero, igdm_zero = values(z)
  assert abs(float(rslad_nonzero)) > 0
  for v in (kd_zero, rslad_zero, adaad_zero, igdm_zero):
    assert abs(float(v)) <= 1e-6


# ---------------------------------------------------------------------------
# KDIGA: the gradient term against finite differences of its own definition.
# ---------------------------------------------------------------------------
def _mlp(params, x):
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"])
  return h @ params["w2"] + params["b2"]


def test_kdiga_gradient_term_matches_finite_differences():
  with jax.enable_x64(True):
    rng = np.random.default_rng(0)
    d, h, c, b = 6, 5, 3, 4
    p = {"w1": rng.normal(size=(d, h)), "b1": rng.normal(size=(h,)) * 0.1,
         "w2": rng.normal(size=(h, c)), "b2": np.zeros((c,))}
    pt = {k: a * 0.7 + 0.1 for k, a in p.items()}
    v = {k: rng.normal(size=a.shape) for k, a in p.items()}
    x = rng.uniform(size=(b, d))
    y = np.arange(b) % c
    gamma = 0.5

    e_x, e_p = 1e-6, 1e-5
    basis = e_x * np.eye(x.size).reshape((x.size,) + x.shape)
    ce = lambda u: kdiga.mean_ce(_mlp(p, u), y)
    term = lambda q, r: kdiga.kdiga_gradient_term(lambda u: _mlp(q, u), lambda u: _mlp(r, u),
                                                  x, y, gamma)

    @functools.partial(jax.jit, compiler_options=FAST)
    def check(p, pt, v):
      g = kdiga.input_gradient(lambda u: _mlp(p, u), x, y)
      g_t = kdiga.input_gradient(lambda u: _mlp(pt, u), x, y)
      fd = jax.vmap(lambda dx: (ce(x + dx) - ce(x - dx)) / (2 * e_x))(basis)
      value, grad = jax.value_and_grad(term)(p, pt)
      shift = lambda sign: jax.tree.map(lambda a, u: a + sign * e_p * u, p, v)
      fd_dir = (term(shift(1.0), pt) - term(shift(-1.0), pt)) / (2 * e_p)
      along = sum(jnp.sum(gi * vi) for gi, vi in zip(jax.tree.leaves(grad), jax.tree.leaves(v)))
      same_value, same_grad = jax.value_and_grad(term)(p, p)
      return g, g_t, fd.reshape(x.shape), value, along, fd_dir, same_value, same_grad

    g, g_t, fd, value, along, fd_dir, same_value, same_grad = check(p, pt, v)
    # G_S is the gradient of the batch-mean CE: central differences agree.
    np.testing.assert_allclose(np.asarray(g), np.asarray(fd), rtol=1e-6, atol=1e-9)
    # Term value = (gamma/B) ||G_S - G_T||_F by its definition.
    want = gamma / b * np.linalg.norm(np.asarray(g - g_t).ravel())
    np.testing.assert_allclose(float(value), want, rtol=1e-10)
    # Double back-prop: d term / d theta along a random direction vs central differences.
    np.testing.assert_allclose(float(along), float(fd_dir), rtol=1e-6)
    # Zero (and a finite zero gradient) when student == teacher.
    assert abs(float(same_value)) <= 1e-12
    assert all(np.all(np.isfinite(a)) for a in jax.tree.leaves(same_grad))


def _ctx(model, s_vars, t_vars, batch, epoch, num_epochs=200):
  teachers = tuple(step_lib.teacher_logits_fn(Tiny().apply, v) for v in t_vars)
  return Ctx(x=batch["image"], y=batch["label"], mask=batch["mask"],
             key=jax.random.PRNGKey(0), epoch=jnp.float32(epoch),
             num_epochs=num_epochs, num_classes=C,
             student_inner=lambda u: model.apply(s_vars, u, train=False),
             teachers=teachers)


# Train-mode student forwards per step in the official codes (docs/fidelity.md, each
# method's section: each one moves the batch-norm running statistics once).
FORWARDS = [
    ("kd", None, 150, 1), ("ard", None, 150, 2), ("iad", None, 60, 2),
    ("iad", None, 61, 3), ("rslad", None, 150, 2), ("mtard", None, 150, 2),
    ("kdiga", None, 150, 2), ("kdiga_ard", None, 150, 3), ("adaad", None, 150, 2),
    ("adaiad", None, 60, 3), ("adaiad", None, 61, 4), ("darht", None, 150, 1),
    ("pgd_at", 1.0, 150, 3), ("trades", 1.0, 150, 5), ("adaad", 1.0, 150, 4),
]


@pytest.mark.parametrize("name,igdm_alpha,epoch,want", FORWARDS)
def test_number_of_train_mode_forwards(name, igdm_alpha, epoch, want):
  # Only traced (eval_shape), never compiled. Counts every TrainForward call,
  # including those inside lax.cond (IAD before `begin` still traces the
  # forward, but its batch statistics are only threaded when the term is on).
  method = _method(name, igdm_alpha)
  n = _n_teachers(method)
  model = Tiny(head_slots=n if name == "darht" else 0)
  s_vars = _init(model, 0)
  t_vars = tuple(_init(Tiny(), 100 + i) for i in range(n))
  calls = []

  def run(s_vars, batch):
    ctx = _ctx(model, s_vars, t_vars, batch, epoch)
    student = TrainForward(model.apply, s_vars["params"], s_vars["batch_stats"])
    out = method.loss(ctx, student, batch["image"] * 0.99, method.init_state(C))
    calls.append(student.calls)
    return out.loss

  jax.eval_shape(run, s_vars, _batch())
  assert calls == [want if name not in ("iad", "adaiad") or epoch > 60 else want + 1]


def test_iad_before_begin_threads_no_extra_statistics():
  method = _method("iad")
  model = Tiny()
  s_vars = _init(model, 0)
  t_vars = (_init(Tiny(), 100),)
  batch = _batch()
  x_adv = batch["image"] * 0.99

  def stats(epoch):
    ctx = dataclasses.replace(_ctx(model, s_vars, t_vars, batch, 0), epoch=epoch)
    student = TrainForward(model.apply, s_vars["params"], s_vars["batch_stats"])
    method.loss(ctx, student, x_adv, {})
    return student.batch_stats

  def ref(n_clean):
    student = TrainForward(model.apply, s_vars["params"], s_vars["batch_stats"])
    student(x_adv)
    for _ in range(n_clean):
      student(batch["image"])
    return student.batch_stats

  @functools.partial(jax.jit, compiler_options=FAST)
  def run():
    return stats(jnp.float32(60)), stats(jnp.float32(61)), ref(1), ref(2)

  off, on, ref_off, ref_on = run()
  for got, want in ((off, ref_off), (on, ref_on)):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(jax.tree.leaves(ref_off)[0], jax.tree.leaves(ref_on)[0])


def test_kdiga_gradient_forward_threads_batch_stats():
  method = _method("kdiga")
  model = Tiny()
  v = _init(model, 0)
  t_vars = (_init(Tiny(), 1),)
  batch = _batch()

  @functools.partial(jax.jit, compiler_options=FAST)
  def run(v):
    student = TrainForward(model.apply, v["params"], v["batch_stats"])
    out = method.loss(_ctx(model, v, t_vars, batch, 1), student, None, {})
    return out, student.batch_stats

  out, got = run(v)
  # Running statistics after two train-mode forwards on the same batch.
  ref = TrainForward(model.apply, v["params"], v["batch_stats"])
  ref(batch["image"])
  ref(batch["image"])
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert np.isfinite(float(out.loss)) and float(out.metrics["gradient_alignment"]) > 0


# ---------------------------------------------------------------------------
# AdaAD: the inner attack increases the teacher-student KL.
# ---------------------------------------------------------------------------
def test_adaad_inner_attack_increases_kl():
  model = Tiny()
  sv, tv = _init(model, 0), _init(model, 1)
  s_fn = lambda u: model.apply(sv, u, train=False)
  t_fn = lambda u: model.apply(tv, u, train=False)
  x = _batch()["image"]
  kl = lambda u: losses.kl(s_fn(u), t_fn(u))

  @functools.partial(jax.jit, compiler_options=FAST)
  def run(x):
    xa = adaad.adaad_inner(s_fn, t_fn, x, jax.random.PRNGKey(0), eps=8 / 255,
                           step_size=2 / 255, steps=3)
    return xa, kl(x), kl(xa)

  xa, kl_clean, kl_adv = run(x)
  assert float(jnp.abs(xa - x).max()) <= 8 / 255 + 1e-6
  assert float(jnp.sum(kl_adv)) > float(jnp.sum(kl_clean))
  assert float(jnp.mean(kl_adv > kl_clean)) >= 0.75


# ---------------------------------------------------------------------------
# MTARD: the weight update against hand-computed values.
# ---------------------------------------------------------------------------
def test_mtard_weight_update_by_hand():
  @functools.partial(jax.jit, compiler_options=FAST)
  def values(epochs):
    w = mtard.mtard_weight_update(jnp.float32(0.6), jnp.float32(0.5), jnp.float32(0.2),
                                  jnp.float32(1.0), jnp.float32(0.8), 0.025)
    lr = jax.vmap(lambda e: mtard.weight_lr_at(e, 0.025, (215, 260, 285), 0.1))(epochs)
    return w, lr

  (w_adv, w_nat), lr = values(jnp.array([1.0, 215.0, 216.0, 261.0, 300.0]))
  r_a, r_n = 0.5 / 1.0, 0.2 / 0.8
  want = 0.6 - 0.025 * (0.6 - r_n / (r_a + r_n))
  np.testing.assert_allclose(float(w_nat), want, rtol=1e-6)
  np.testing.assert_allclose(float(w_adv), 1 - want, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(lr), [0.025, 0.025, 0.0025, 0.00025, 0.000025],
                             rtol=1e-5)


def test_mtard_state_over_two_steps():
  method = _method("mtard")
  state, t_vars, step = _setup(method)
  state, m1 = step(state, t_vars, _batch(0))
  # First batch: its losses become the reference, so the weights stay 0.5/0.5.
  np.testing.assert_allclose(float(m1["w_nat"]), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(state.method_state["init_adv"]), float(m1["kl_adv"]), rtol=1e-6)
  np.testing.assert_allclose(float(state.method_state["init_nat"]), float(m1["kl_nat"]), rtol=1e-6)
  np.testing.assert_allclose(float(m1["loss"]), 0.5 * float(m1["kl_adv"] + m1["kl_nat"]), rtol=1e-5)
  state, m2 = step(state, t_vars, _batch(1))
  r_a = float(m2["kl_adv"]) / float(m1["kl_adv"])
  r_n = float(m2["kl_nat"]) / float(m1["kl_nat"])
  want = 0.5 - 0.025 * (0.5 - r_n / (r_a + r_n))
  np.testing.assert_allclose(float(m2["w_nat"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(state.method_state["w_nat"]), want, rtol=1e-5)
  np.testing.assert_allclose(float(m2["loss"]),
                             (1 - want) * float(m2["kl_adv"]) + want * float(m2["kl_nat"]),
                             rtol=1e-5)


# ---------------------------------------------------------------------------
# DARHT: weighting, curriculum, batch skipping.
# ---------------------------------------------------------------------------
def _np_kl(t, s):
  pt = np.exp(t - t.max(-1, keepdims=True)); pt /= pt.sum(-1, keepdims=True)
  ls = s - s.max(-1, keepdims=True); ls = ls - np.log(np.exp(ls).sum(-1, keepdims=True))
  return np.sum(pt * (np.log(pt) - ls), -1)


def _np_ce(t, y):
  lt = t - t.max(-1, keepdims=True); lt = lt - np.log(np.exp(lt).sum(-1, keepdims=True))
  return -lt[np.arange(len(y)), y]


def test_darht_weighting_by_hand():
  rng = np.random.default_rng(3)
  slots = rng.normal(size=(B, 3, C)).astype(np.float32)
  ts = [rng.normal(size=(B, C)).astype(np.float32) * (i + 1) for i in range(3)]
  y = np.arange(B) % C
  kd, w, kls = jax.jit(darht.darht_kd_loss, compiler_options=FAST)(slots, ts, y)
  w_np = np.array([np.exp(-_np_ce(t, y).mean()) for t in ts])
  kl_np = np.array([_np_kl(t, slots[:, i]).mean() for i, t in enumerate(ts)])
  np.testing.assert_allclose(np.asarray(w), w_np, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(kls), kl_np, rtol=1e-5)
  np.testing.assert_allclose(float(kd), float(np.sum(w_np * kl_np)), rtol=1e-5)


def test_darht_mse_option_is_torch_mse_loss():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(4)
  slots = rng.normal(size=(B, 2, C)).astype(np.float32)
  ts = [rng.normal(size=(B, C)).astype(np.float32) * (i + 2) for i in range(2)]
  y = np.arange(B) % C
  kd, w, mses = darht.darht_kd_loss(slots, ts, y, kd_loss="mse")
  # The released code: nn.MSELoss()(std_knowledge.view(-1, K, C)[:, i, :], tch_output).
  ref = [float(torch.nn.MSELoss()(torch.from_numpy(slots[:, i]), torch.from_numpy(t)))
         for i, t in enumerate(ts)]
  np.testing.assert_allclose(np.asarray(mses), ref, rtol=1e-5)
  np.testing.assert_allclose(float(kd), float(np.sum(np.asarray(w) * np.asarray(ref))), rtol=1e-5)
  with pytest.raises(ValueError, match="kl, mse"):
    darht.DARHT(kd_loss="l1")


@pytest.mark.parametrize("epoch,ce_on,kd_on", [(1, 1, 0), (50, 1, 0), (51, 1, 1),
                                                (118, 1, 1), (119, 0, 1)])
def test_darht_curriculum(epoch, ce_on, kd_on):
  use_ce, use_kd = darht.darht_phase(jnp.float32(epoch))
  assert (bool(use_ce), bool(use_kd)) == (bool(ce_on), bool(kd_on))


def test_darht_step_phases_weights_and_skip():
  method = _method("darht")
  state, t_vars, step = _setup(method)
  batch = _batch()
  _, m = step(_at_epoch(state, 1), t_vars, batch)
  assert float(m["kd_on"]) == 0 and float(m["ce_on"]) == 1
  np.testing.assert_allclose(float(m["loss"]), float(m["ce"]), rtol=1e-6)
  assert float(m["darht_w_0"]) == 0.0
  _, m = step(_at_epoch(state, 80), t_vars, batch)
  assert float(m["kd_on"]) == 1 and float(m["ce_on"]) == 1
  np.testing.assert_allclose(float(m["loss"]), float(m["ce"] + m["kd"]), rtol=1e-5)
  # The weights are exp(-CE) of each teacher on the batch the student saw.
  for i in range(2):
    assert 0 < float(m[f"darht_w_{i}"]) <= 1
  np.testing.assert_allclose(
      float(m["kd"]), sum(float(m[f"darht_w_{i}"] * m[f"darht_kl_{i}"]) for i in range(2)),
      rtol=1e-5)
  if float(m["adversarial_batch"]) == 0:  # clean batch: check the weights themselves
    teacher = Tiny()
    for i in range(2):
      t = teacher.apply(t_vars[i], batch["image"], train=False)
      want = np.exp(-_np_ce(np.asarray(t), np.asarray(batch["label"])).mean())
      np.testing.assert_allclose(float(m[f"darht_w_{i}"]), want, rtol=1e-5)
  # Skip: a student whose CE exceeds 8 (scaled head, labels = its least likely
  # class) leaves the state untouched.
  params = jax.tree.map(jnp.array, state.params)
  params["head"]["kernel"] = params["head"]["kernel"] * 1000.0
  student = Tiny(head_slots=2)
  logits = student.apply({"params": params, "batch_stats": state.batch_stats},
                         batch["image"], train=False)
  bad = dict(batch, label=jnp.argmin(logits, axis=-1))
  big = state.replace(params=params)
  before = _copy(big.params)
  for epoch in (1, 150):
    new_state, m = step(_at_epoch(big, epoch), t_vars, bad)
    assert float(m["ce"]) > 8 and float(m["skipped"]) == 1.0
    same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.array_equal(a, np.asarray(b))),
                                        before, new_state.params))
    assert all(same)
    assert int(new_state.step) == int(_at_epoch(big, epoch).step) + 1


def test_darht_mixes_clean_and_adversarial_batches():
  method = _method("darht")
  state, t_vars, step = _setup(method)
  seen = set()
  batch = _batch()
  for _ in range(8):
    state, m = step(state, t_vars, batch)
    seen.add(float(m["adversarial_batch"]))
  assert seen == {0.0, 1.0}


# ---------------------------------------------------------------------------
# IAD: the introspection term only from `begin`.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["iad", "adaiad"])
def test_iad_second_term_starts_at_begin(name):
  method = _method(name)
  assert method.begin == 60
  state, t_vars, step = _setup(method)
  batch = _batch()
  _, m_off = step(_at_epoch(state, 60), t_vars, batch)  # 0-indexed epoch 59 < 60
  assert float(m_off["introspection_active"]) == 0.0
  assert float(m_off["introspection"]) == 0.0
  np.testing.assert_allclose(float(m_off["loss"]),
                             method.temperature**2 * float(m_off["kl"]), rtol=1e-5)
  _, m_on = step(_at_epoch(state, 61), t_vars, batch)  # 0-indexed epoch 60 >= 60
  assert float(m_on["introspection_active"]) == 1.0
  assert float(m_on["introspection"]) > 0.0
  np.testing.assert_allclose(
      float(m_on["loss"]),
      method.temperature**2 * float(m_on["kl"]) + float(m_on["introspection"]), rtol=1e-5)


# ---------------------------------------------------------------------------
# IGDM: wrapping rules and the ramp.
# ---------------------------------------------------------------------------
def test_igdm_wrap_rules():
  m = methods.make("pgd_at", igdm={"alpha": 3.0})
  assert type(m).teachers == (1, 1) and m.name == "igdm_pgd_at"
  assert m.attack == m.base.attack
  assert methods.make("ard", igdm={"alpha": 0.0}).name == "ard"  # alpha 0: no wrap
  for bad in ("kd", "mtard", "darht", "kdiga", "natural"):
    with pytest.raises(ValueError, match="IGDM"):
      methods.make(bad, igdm={"alpha": 1.0})
  with pytest.raises(ValueError, match="Unknown IGDM option"):
    methods.make("ard", igdm={"alpha": 1.0, "delta": 2.0})
  hash(m)  # static argument of jit


def test_igdm_ramp():
  method = _method("pgd_at", igdm_alpha=2.0)
  state, t_vars, step = _setup(method)
  batch = _batch()
  for epoch in (1, 100, 200):
    _, m = step(_at_epoch(state, epoch), t_vars, batch)
    np.testing.assert_allclose(float(m["igdm_weight"]), 2.0 * epoch / 200, rtol=1e-6)
    np.testing.assert_allclose(float(m["loss"]),
                               float(m["base_loss"] + m["igdm_weight"] * m["igdm"]),
                               rtol=1e-5)
    assert float(m["igdm"]) > 0


def test_igdm_points_are_not_clipped_below():
  x = jnp.zeros((1, 2, 2, 3))
  xa = jnp.full((1, 2, 2, 3), 0.03)
  xp, xm = igdm.igdm_points(x, xa)
  np.testing.assert_allclose(xp, xa)
  np.testing.assert_allclose(xm, -0.03, rtol=1e-6)

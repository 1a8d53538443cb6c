"""Step parity: ABSLD vs a PyTorch transcription of the official step, across an epoch boundary.

Transcribed (not copied) from ``zhaoshiji123/ABSLD@7407c3a``
``resnet18_absld_cifar10.py`` (the training loop and the temperature update)
and ``absld_loss.py`` (``absld_inner_loss``):

    z = T(x)                                     (eval, no grad)
    t_adv = z.detach(); t_nat = z.detach()       (ONE storage: the code's aliasing, A1)
    for i: t_adv[i] /= tau_adv[y_i]; t_nat[i] /= tau_nat[y_i]     (in place)
    S.eval(); x_0 = x + 0.001 n
    x_{k+1} = clamp(min(max(x_k + a sign(grad sum KL(softmax(t_adv) || softmax(S(x_k)))),
                            x - eps), x + eps), 0, 1)
    S.train(); adv = S(x_K); nat = S(x)                            (two train-mode forwards)
    L_adv[y_i] += CE(adv_i, y_i); L_nat[y_i] += CE(nat_i, y_i)    (no grad)
    kl(a, b) = -a b + log(b + 1e-5) b
    loss = 5/6 mean(kl(log(softmax(adv)), softmax(t_adv)))
           + 1/6 mean(kl(log(softmax(nat)), softmax(t_nat)))
    SGD(lr 0.1, momentum 0.9, weight_decay 2e-4).step()
    end of epoch e: if e in (215, 260, 285): rate *= 0.1
                    tau_k = clamp(tau_k - rate (L_k - mean L_k) / max |L_k - mean L_k|, 0.5, 5)

``temperature_mode='separate'`` is the same step with ``.clone()``-d soft labels.
Two steps with one step per epoch, so the temperature update after epoch 1
feeds step 2 (kdrobust applies it at the start of step 2,
``kdrobust.methods.base.epoch_boundary``). The kdrobust method is the shipped
config's (``configs/cifar_absld.py:protocol=...``) with the attack shortened.
Tolerances: :mod:`parity_common` (float64, ``1e-9``). About 22 s of CPU on 2 cores.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import parity_common as pc
from kdrobust import train as train_lib
from kdrobust import train_step as step_lib
from kdrobust.state import TrainState

STEPS, LR = 5, 0.1
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@contextlib.contextmanager
def _nesterov(on: bool):
  orig = pc.optim_config

  def cfg(lr, weight_decay, momentum=0.9):
    c = orig(lr, weight_decay, momentum)
    c.nesterov = on
    return c

  pc.optim_config = cfg
  try:
    yield
  finally:
    pc.optim_config = orig


def run_steps(method, student, s_vars, teachers, batches, noises, *, lr, weight_decay,
              epoch=1, num_epochs=300, nesterov=False):
  """``parity_common.run_kdrobust`` (one step per epoch, float64) with Nesterov SGD
  as an option and the fast compiler options; returns ``(state, [metrics])``."""
  with jax.enable_x64(True), _nesterov(nesterov):
    tx = train_lib.make_optimizer(pc.optim_config(lr, weight_decay), pc.optax_constant(lr))
    to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
    s_vars = to64(s_vars)
    state = TrainState.create(s_vars["params"], s_vars["batch_stats"], tx,
                              method.init_state(pc.C))
    state = state.replace(step=jnp.asarray(epoch - 1, jnp.int32))
    t_vars = tuple(to64(v) for _, v in teachers)
    out = []
    for (x, y), draws in zip(batches, noises):
      # A new function per batch: the injected start is a constant of its trace.
      step = step_lib.make_train_step(
          apply_fn=student.apply, method=method, tx=tx,
          teacher_apply_fns=[m.apply for m, _ in teachers], num_classes=pc.C,
          num_epochs=num_epochs, steps_per_epoch=1, seed=0, jit=False)
      with pc.injected_starts(draws) as left:
        b = {"image": jnp.asarray(x, jnp.float64), "label": jnp.asarray(y, jnp.int32)}
        state, metrics = jax.jit(step, compiler_options=FAST)(state, t_vars, b)
        assert not left, f"{len(left)} injected attack start(s) were not used"
      out.append(jax.tree.map(np.asarray, metrics))
    state = jax.tree.map(np.asarray, state)
  return state, out


def torch_absld_step(s, t, opt, x, y, n, temps, *, steps, mode):
  """One official ABSLD step; ``temps`` holds ``adv``, ``nat`` (tau) and the CE sums."""
  x, y, n = pc.nchw(x), torch.tensor(y), pc.nchw(n)
  with torch.no_grad():
    z = t(x).detach()
    t_adv = z.detach()
    t_nat = z.detach()
    if mode == "separate":
      t_adv, t_nat = t_adv.clone(), t_nat.clone()
    for i in range(len(y)):
      t_adv[i] = t_adv[i] / temps["adv"][y[i]]
      t_nat[i] = t_nat[i] / temps["nat"][y[i]]
  s.eval()
  target = F.softmax(t_adv, dim=1)
  objective = lambda u: torch.sum(F.kl_div(F.log_softmax(s(u), dim=1), target, reduction="none"))
  xa = pc.torch_pgd(objective, x, x.detach() + 0.001 * n, steps=steps)
  s.train()
  opt.zero_grad()
  adv = s(torch.clamp(xa, 0.0, 1.0).detach())
  nat = s(x)
  with torch.no_grad():
    ce_a = F.cross_entropy(adv.detach(), y, reduction="none")
    ce_n = F.cross_entropy(nat.detach(), y, reduction="none")
    for i in range(len(y)):
      temps["ce_adv"][y[i]] += ce_a[i]
      temps["ce_nat"][y[i]] += ce_n[i]
  kl = lambda a, b: -a * b + torch.log(b + 1e-5) * b
  l1 = torch.mean(kl(torch.log(F.softmax(adv, dim=1)), F.softmax(t_adv.detach(), dim=1)))
  l2 = torch.mean(kl(torch.log(F.softmax(nat, dim=1)), F.softmax(t_nat.detach(), dim=1)))
  loss = 5.0 / 6.0 * l1 + 1.0 / 6.0 * l2
  loss.backward()
  opt.step()
  return float(loss.detach())


def torch_epoch_end(temps, epoch, rate):
  """The code's end of epoch: the rate decay check, then both temperature updates."""
  if epoch in (215, 260, 285):
    rate *= 0.1
  for k in ("adv", "nat"):
    gap = temps["ce_" + k] - torch.mean(temps["ce_" + k])
    temps[k] = torch.clamp(temps[k] - rate * gap / torch.max(torch.abs(gap)), 0.5, 5)
    temps["ce_" + k] = torch.zeros_like(temps["ce_" + k])
  return rate


BATCHES = [pc.batch(0), pc.batch(1)]
NOISES = [[pc.normal_noise(0)], [pc.normal_noise(1)]]
_RUNS = {}


def kdrobust_run(protocol):
  if protocol not in _RUNS:
    method, wd, cfg = pc.config_recipe("cifar_absld.py", f"protocol={protocol}", steps=STEPS)
    assert wd == 2e-4 and not cfg.optim.nesterov and cfg.optim.lr == LR
    s_t, s_f, s_vars = pc.student_pair()
    _, teacher = pc.teacher_pair()
    _RUNS[protocol] = (method,) + run_steps(method, s_f, s_vars, [teacher], BATCHES, NOISES,
                                            lr=LR, weight_decay=wd)
  return _RUNS[protocol]


def torch_run(mode, update=True):
  s_t, _, _ = pc.student_pair()
  t_t, _ = pc.teacher_pair()
  opt = pc.torch_sgd(s_t, LR, weight_decay=2e-4)
  f64 = lambda v: torch.full((pc.C,), v, dtype=torch.float64)
  temps = {"adv": f64(1.0), "nat": f64(1.0), "ce_adv": f64(0.0), "ce_nat": f64(0.0)}
  rate, losses = 0.1, []
  for epoch, ((x, y), n) in enumerate(zip(BATCHES, NOISES), start=1):
    losses.append(torch_absld_step(s_t, t_t, opt, x, y, n[0], temps, steps=STEPS, mode=mode))
    if epoch == 1 and update:
      rate = torch_epoch_end(temps, epoch, rate)
  return s_t, losses, temps


def assert_matches(state, metrics, s_t, losses, temps, what):
  for i, (m, l) in enumerate(zip(metrics, losses)):
    pc.assert_close(m["loss"], l, what=f"{what}: loss of step {i}")
  pc.assert_same_state(state, s_t, what=what)
  ms = state.method_state
  # After step 2: the temperatures of the boundary after epoch 1, epoch 2's CE sums.
  for k in ("tau_adv", "tau_nat", "ce_adv", "ce_nat"):
    ref = temps[k.replace("tau_", "")].numpy()
    np.testing.assert_allclose(ms[k], ref, rtol=0, atol=1e-9, err_msg=f"{what}: {k}")


@pytest.mark.parametrize("protocol,mode", [("official", "product"), ("kdrobust", "separate")])
def test_absld_steps_match_the_code(protocol, mode):
  method, state, metrics = kdrobust_run(protocol)
  assert method.temperature_mode == mode
  s_t, losses, temps = torch_run(mode)
  assert_matches(state, metrics, s_t, losses, temps, f"ABSLD {protocol}")
  assert not np.all(state.method_state["tau_adv"] == 1), "the boundary update did not move tau"
  assert pc.bn_train_forward_count(s_t) == 2 * 2  # S(x'), S(x) per step; eval-mode attack


@pytest.mark.parametrize("variant", ["other_mode", "no_update"])
def test_the_check_can_fail(variant):
  """The released product on the separate run, or no temperature update, does not match."""
  _, state, metrics = kdrobust_run("kdrobust")
  s_t, losses, temps = (torch_run("product") if variant == "other_mode"
                        else torch_run("separate", update=False))
  with pytest.raises(AssertionError):
    assert_matches(state, metrics, s_t, losses, temps, variant)

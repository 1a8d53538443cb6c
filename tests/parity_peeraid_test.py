"""Step parity: PeerAiD vs a PyTorch transcription of the official step (student AND peer).

Transcribed (not copied) from ``jaewonalive/PeerAiD@cd12e92`` ``main.py:333-404``
(``train_kd``) and ``attack_function.py:59-84`` (``LinfPeerAttack``):

    zero_grad(student_opt); zero_grad(peer_opt)
    P.eval();  p0 = P(x)                       (no grad);  P.train()
    S.eval()
    x_0 = x + 0.001 n                          (not clamped)
    x_{k+1} = clamp(min(max(x_k + a sign(grad sum KL(softmax(p0) || softmax(S(x_k)))), x - eps),
                        x + eps), 0, 1)        (K steps; KLDivLoss(reduce=False), summed)
    S.train()
    a  = P(x')                                  (peer, train mode)
    s1 = S(x')                                  (student, train mode; NOT detached)
    L_peer = g1 CE(a, y) + g2 tr^2 KLDivLoss()(log_softmax(a/tr), softmax(s1/tr))
    a_hat = a.clone().detach()
    s2 = S(x');  s0 = S(x)                      (two more student train-mode forwards)
    L_stu = l1 CE(s2, y) + l2 T^2 KLDivLoss()(log_softmax(s2/T), softmax(a_hat/T))
                         + l3 T^2 KLDivLoss()(log_softmax(s2/T), softmax(s0/T))
    (L_peer + L_stu).backward();  peer_opt.step();  student_opt.step()

``KLDivLoss()`` is the default ``reduction='mean'`` (over B*C). Both networks
are the harness's conv-BN net (different weights), float64 on both sides;
the kdrobust method is built from the shipped config
(``configs/cifar_peeraid.py``) with the attack shortened to ``STEPS`` steps,
and the peer's optimizer from the config's ``extra_networks.peer`` through
``kdrobust.train.extra_network_configs``. Two steps (momentum, threaded
statistics). Compared: both networks' parameters and running statistics
(``1e-9`` absolute), both losses (``1e-9`` relative), the train-mode forward
counts (student 3, peer 1 per step). Planted deviations (detaching where the
code does not, updating the networks one after the other, one student
forward at x', the peer in train mode for the attack target) are detected.
About 20 s of CPU (three compiled kdrobust variants; 30 s wall on the loaded 2-core machine).
"""

from __future__ import annotations

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdrobust import methods
from kdrobust import train as train_lib
from kdrobust import train_step as step_lib
from kdrobust.state import TrainState
import parity_common as pc

pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides:UserWarning")

STEPS = 5
CONFIG = "cifar_peeraid.py"
# XLA:CPU compile time dominates; the semantics do not depend on backend optimisation.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
NOISE = [pc.normal_noise(0)]  # the same injected start at both steps: one trace
BATCHES = [pc.batch(0), pc.batch(1)]


def recipe():
  """``(method, student optim, peer optim, config)`` as shipped (attack shortened)."""
  method, _, c = pc.config_recipe(CONFIG, "", steps=STEPS)
  peer_optim = train_lib.extra_network_configs(c, method)["peer"][1]
  return method, c.optim, peer_optim, c


def torch_nets():
  s = pc.TorchNet(seed=0).train()
  p = pc.TorchNet(seed=3).train()
  return s, p


def torch_peeraid_step(s, p, opt_s, opt_p, x, y, n, m, *, detach_s1=False, detach_s0=False,
                       sequential=False, one_adv_forward=False, peer_target_train=False):
  """One official PeerAiD step; returns ``(loss_peer, loss_student)``.

  The keyword flags are planted deviations (the tests check they are detected;
  ``detach_s1`` and ``detach_s0`` are also the method's non-default options).
  """
  x, n = pc.nchw(x), pc.nchw(n)
  y = torch.tensor(np.asarray(y), dtype=torch.long)
  T, tr = m.temperature, m.peer_temperature
  opt_s.zero_grad()
  opt_p.zero_grad()
  if not peer_target_train:
    p.eval()
  with torch.no_grad():
    p0 = p(x)
  p.train()
  s.eval()
  target = F.softmax(p0, dim=1)
  objective = lambda u: torch.sum(F.kl_div(F.log_softmax(s(u), dim=1), target,
                                           reduction="none"))
  xa = pc.torch_pgd(objective, x, x.detach() + 0.001 * n, steps=STEPS).detach()
  s.train()
  kl_mean = lambda logit, tgt, t: F.kl_div(F.log_softmax(logit / t, dim=1),
                                           F.softmax(tgt / t, dim=1), reduction="mean")
  a = p(xa)
  s1 = s(xa)
  loss_peer = (F.cross_entropy(a, y) * m.gamma1
               + kl_mean(a, s1.detach() if detach_s1 else s1, tr) * m.gamma2 * tr * tr)
  if sequential:  # planted: the peer steps first, the student then reads the updated peer
    loss_peer.backward()
    opt_p.step()
    a_hat = p(xa).detach()
  else:
    a_hat = a.clone().detach()
  s2 = s1 if one_adv_forward else s(xa)
  s0 = s(x)
  loss_student = (F.cross_entropy(s2, y) * m.lambda1
                  + kl_mean(s2, a_hat, T) * (m.lambda2 * T * T)
                  + kl_mean(s2, s0.detach() if detach_s0 else s0, T) * (m.lambda3 * T * T))
  if sequential:
    loss_student.backward()
    opt_s.step()
  else:
    (loss_peer + loss_student).backward()
    opt_p.step()
    opt_s.step()
  return float(loss_peer.detach()), float(loss_student.detach())


def torch_run(**variant):
  m, s_optim, p_optim, _ = recipe()
  s, p = torch_nets()
  opt_s = pc.torch_sgd(s, s_optim.lr, s_optim.momentum, s_optim.weight_decay)
  opt_p = pc.torch_sgd(p, p_optim.lr, p_optim.momentum, p_optim.weight_decay)
  losses = [torch_peeraid_step(s, p, opt_s, opt_p, x, y, NOISE[0], m, **variant)
            for x, y in BATCHES]
  return s, p, losses


@functools.lru_cache(maxsize=None)
def kdrobust_run(**overrides):
  """Two kdrobust steps of the shipped method (``overrides`` replace its fields)."""
  m, s_optim, p_optim, c = recipe()
  m = dataclasses.replace(m, **overrides)
  s, p = torch_nets()
  s_vars, p_vars = pc.flax_variables(s), pc.flax_variables(p)
  net = pc.FlaxNet()
  with jax.enable_x64(True):
    to64 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), t)
    s_vars, p_vars = to64(s_vars), to64(p_vars)
    tx_s = train_lib.make_optimizer(pc.optim_config(s_optim.lr, s_optim.weight_decay,
                                                    s_optim.momentum),
                                    pc.optax_constant(s_optim.lr))
    tx_p = train_lib.make_optimizer(pc.optim_config(p_optim.lr, p_optim.weight_decay,
                                                    p_optim.momentum),
                                    pc.optax_constant(p_optim.lr))
    state = TrainState.create(s_vars["params"], s_vars["batch_stats"], tx_s, {},
                              extra={"peer": (p_vars["params"], p_vars["batch_stats"], tx_p)})
    step = step_lib.make_train_step(
        apply_fn=net.apply, method=m, tx=tx_s, num_classes=pc.C, num_epochs=c.num_epochs,
        steps_per_epoch=1, seed=0, jit=False,
        extra_networks={"peer": step_lib.ExtraNetwork(net.apply, tx_p)})
    step = jax.jit(step, compiler_options=FAST)
    out = []
    with pc.injected_starts(NOISE * len(BATCHES)) as left:
      for x, y in BATCHES:
        b = {"image": jnp.asarray(x, jnp.float64), "label": jnp.asarray(y, jnp.int32)}
        state, metrics = step(state, (), b)
        out.append(jax.tree.map(np.asarray, metrics))
      # One trace (the same injected start for both steps): one draw consumed.
      assert len(left) == len(BATCHES) - 1, len(left)
    state = jax.tree.map(np.asarray, state)
  return state, out


def assert_matches(state, metrics, s, p, losses, what):
  for i, (mt, (lp, ls)) in enumerate(zip(metrics, losses)):
    pc.assert_close(mt["loss_peer"], lp, what=f"{what}: peer loss of step {i}")
    pc.assert_close(mt["loss_student"], ls, what=f"{what}: student loss of step {i}")
    pc.assert_close(mt["loss"], lp + ls, what=f"{what}: total loss of step {i}")
  peer = types.SimpleNamespace(params=state.extra["peer"]["params"],
                               batch_stats=state.extra["peer"]["batch_stats"])
  pc.assert_same_state(peer, p, what=f"{what}: peer")
  pc.assert_same_state(state, s, what=f"{what}: student")


def test_config_is_the_readme_command():
  m, s_optim, p_optim, c = recipe()
  assert (m.temperature, m.gamma1, m.gamma2, m.peer_temperature, m.lambda1, m.lambda2,
          m.lambda3) == (5.0, 1.0, 0.1, 1.0, 0.0, 1.0, 1.0)
  assert m.reduction == "elemmean" and m.attack.init == "gaussian"
  assert m.attack.bn_mode == "eval" and m.peer_loss_trains_student and m.clean_target_grad
  for o in (s_optim, p_optim):
    assert (o.lr, o.momentum, o.weight_decay, o.nesterov) == (0.1, 0.9, 2e-4, False)
    assert tuple(o.decay_epochs) == (214, 259, 284) and o.schedule == "piecewise"
  assert c.num_epochs == 300 and c.data.batch_size == 128 and not c.teachers
  c100 = pc.config_recipe(CONFIG, "dataset=cifar100")[0]
  assert c100.gamma2 == 1.0


@pytest.mark.parametrize("adv_forwards", ["two", "shared"])
def test_peeraid_step_matches_official(adv_forwards):
  state, metrics = kdrobust_run(adv_forwards=adv_forwards)
  s, p, losses = torch_run()
  assert_matches(state, metrics, s, p, losses, f"PeerAiD ({adv_forwards})")
  # Train-mode forwards per step: the student 3 (x', x', x), the peer 1 (x').
  assert pc.bn_train_forward_count(s) == 3 * len(BATCHES)
  assert pc.bn_train_forward_count(p) == 1 * len(BATCHES)


def test_detached_option_matches_detached_transcription():
  """The non-default reading (each network trained by its own loss) is what it says."""
  state, metrics = kdrobust_run(peer_loss_trains_student=False, clean_target_grad=False)
  s, p, losses = torch_run(detach_s1=True, detach_s0=True)
  assert_matches(state, metrics, s, p, losses, "PeerAiD detached targets")


@pytest.mark.parametrize("variant", [
    dict(detach_s1=True),          # A6: the student's gradient from the peer's loss dropped
    dict(detach_s0=True),          # the l3 target detached
    dict(sequential=True),         # the peer updated first, the student reading the new peer
    dict(one_adv_forward=True),    # one student forward at x': other running statistics
    dict(peer_target_train=True),  # the attack target from the peer in train mode
])
def test_planted_deviations_are_detected(variant):
  """The comparison can fail: each deviation from the official step is caught."""
  state, metrics = kdrobust_run(adv_forwards="two")
  s, p, losses = torch_run(**variant)
  with pytest.raises(AssertionError):
    assert_matches(state, metrics, s, p, losses, f"planted {variant}")

"""Step parity: IAD-I (official and IGDM protocols) and IAD-II vs PyTorch transcriptions.

Transcribed (not copied) from ``ZFancy/IAD@a8091a8`` ``IAD-I.py`` and
``IAD-II.py`` (``AttackPGD.forward``, ``train``). ``KL_none`` is
``nn.KLDivLoss(reduce=False)`` summed over classes, ``e`` the 0-indexed epoch,
``B = len(outputs)``; the student is in ``train()`` mode for the whole step
(``net.train()``), the teacher(s) in ``eval()`` mode. IAD-I::

    t_out = T(x)
    outputs, x' = AttackPGD(x, y)   # x + U[-eps, eps] unclamped, K sum-CE steps of 2/255,
                                    # train mode; outputs = S(x')
    S(x').detach()                  # basicop: only moves the running statistics (E10)
    guide = T(x')
    if e >= begin:
      w_i = softmax(guide)_i[y_i] ** beta   (.item(): constants)
      loss = a tau^2 (1/B) sum KL_none(outputs / tau, t_out / tau)
             + a (1/B) sum KL_none(outputs, S(x)) (1 - w) + (1 - a) XENT(S(x), y)
    else:
      loss = a tau^2 (1/B) sum KL_none(outputs / tau, t_out / tau) + (1 - a) XENT(S(x), y)

IGDM protocol: IGDM's code (Xavaitron/VLM_Distillation@a22ed64 ICLR_IGDM/) has
no IAD script; kdrobust's ``protocol=igdm`` is IAD-I's step with IGDM's
``attacks.PGD`` (``model.eval()``, start ``clamp(x + U[-eps, eps], 0, 1)``,
projection ``clamp(x + clamp(x_k - x, -eps, eps), 0, 1)``, then
``model.train()``) and ``outputs = S(x')``, without E10's extra forward (the
config's choice, see docs/fidelity.md, IAD section).

IAD-II (adversarial teacher T, natural teacher N, both on x')::

    outputs, x' = AttackPGD(x, y); t_out = T(x'); n_out = N(x'); guide = T(x')
    w = 1; from e >= begin: w_i = softmax(guide)_i[y_i] ** beta (.item())
    loss = (1 - a1 - a2) XENT(outputs, y)
           + a1 tau^2 ((1/B) sum KL_none(outputs / tau, t_out / tau) w
                       + [e >= begin] (1/B) sum KL_none(outputs, S(x)) (1 - w))
           + a2 tau^2 (1/B) sum KL_none(outputs / tau, n_out / tau)

SGD(lr, momentum 0.9, weight_decay 2e-4). Each case runs two steps on two
batches in consecutive epochs: ``(begin - 1, begin)`` (0-indexed), so one
step before and one after ``begin``, or both after. The kdrobust methods are
built from ``configs/cifar_iad.py`` (attack steps shrunk to ``STEPS``).
float64 on both sides; tolerances of :mod:`parity_common` (absolute 1e-9 on
parameters and statistics, relative 1e-9 on losses).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from kdrobust import methods
import parity_common as pc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 5  # attack steps (the recipe's 10, shrunk: the loop is the same)
LR = 0.1


def method_from_config(arg: str, **override):
  """``(method, weight decay)`` of ``configs/cifar_iad.py:<arg>``, attack steps = ``STEPS``."""
  spec = importlib.util.spec_from_file_location(
      "parity_cfg_cifar_iad", os.path.join(ROOT, "configs", "cifar_iad.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(arg)
  m = c.method.to_dict()
  m["attack"] = dict(m["attack"], steps=STEPS)
  m.update(override)
  return methods.from_config(m), c.optim.weight_decay


# ---------------------------------------------------------------- PyTorch side

def attack_pgd_train(s, x, y, u, *, step, eps=pc.EPS):
  """IAD's ``AttackPGD.forward`` (train mode, unclamped start): ``(S(x_K), x_K)``."""
  s.train()
  xa = pc.torch_pgd(lambda v: F.cross_entropy(s(v), y, reduction="sum"), x,
                    x.detach() + eps * u, steps=STEPS, step=step, eps=eps)
  return s(xa), xa


def igdm_pgd(s, x, y, u, *, step, eps=pc.EPS):
  """IGDM's ``attacks.PGD`` (eval mode, clamped start, mean CE), then ``train()``."""
  s.eval()
  xa = torch.clamp(x + eps * u, 0, 1).detach()
  for _ in range(STEPS):
    xa.requires_grad = True
    cost = F.cross_entropy(s(xa), y)
    g = torch.autograd.grad(cost, xa)[0]
    xa = xa.detach() + step * g.sign()
    delta = torch.clamp(xa - x, min=-eps, max=eps)
    xa = torch.clamp(x + delta, min=0, max=1).detach()
  s.train()
  return xa


def kl_rows(s_logits, t_logits):
  """``KLDivLoss(reduce=False)(log_softmax(s), softmax(t)).sum(dim=1)``."""
  return F.kl_div(F.log_softmax(s_logits, dim=1), F.softmax(t_logits, dim=1),
                  reduction="none").sum(dim=1)


def reliability(guide, y, beta):
  """The code's ``Alpha``: ones, then ``softmax(guide)[pp][y[pp]] ** beta`` via ``.item()``."""
  w = torch.ones(len(y), dtype=guide.dtype)
  p = F.softmax(guide, dim=1)
  for pp in range(len(y)):
    w[pp] = p[pp][y[pp].item()].pow(beta).item()
  return w


def torch_iad1_step(s, t, opt, x, y, u, epoch, *, protocol, alpha=1.0, tau=1.0,
                    beta=0.1, begin=60, step=2 / 255):
  """One IAD-I step at 0-indexed ``epoch``; returns the loss."""
  x, y, u = pc.nchw(x), torch.tensor(y), pc.nchw(u)
  s.train()
  opt.zero_grad()
  t_out = t(x)
  if protocol == "official":
    outputs, xa = attack_pgd_train(s, x, y, u, step=step)
    s(xa).detach()  # basicop (E10)
  else:
    xa = igdm_pgd(s, x, y, u, step=step)
    outputs = s(xa)
  guide = t(xa)
  n = len(outputs)
  kd = alpha * tau * tau * (1 / n) * torch.sum(kl_rows(outputs / tau, t_out / tau))
  if epoch >= begin:
    w = reliability(guide, y, beta)
    loss = (kd + alpha * (1 / n) * torch.sum(kl_rows(outputs, s(x)).mul(1 - w))
            + (1.0 - alpha) * F.cross_entropy(s(x), y))
  else:
    loss = kd + (1.0 - alpha) * F.cross_entropy(s(x), y)
  loss.backward()
  opt.step()
  return float(loss.detach())


def torch_iad2_step(s, t, nat, opt, x, y, u, epoch, *, alpha1=0.5, alpha2=0.25, tau=1.0,
                    beta=0.1, begin=40, step=2 / 255):
  """One IAD-II step at 0-indexed ``epoch``; returns the loss."""
  x, y, u = pc.nchw(x), torch.tensor(y), pc.nchw(u)
  s.train()
  opt.zero_grad()
  outputs, xa = attack_pgd_train(s, x, y, u, step=step)
  t_out = t(xa)
  n_out = nat(xa)
  w = torch.ones(len(y), dtype=outputs.dtype)
  guide = t(xa)
  n = len(outputs)
  ce = (1 - alpha1 - alpha2) * F.cross_entropy(outputs, y)
  kl_n = alpha2 * tau * tau * (1 / n) * torch.sum(kl_rows(outputs / tau, n_out / tau))
  if epoch >= begin:
    w = reliability(guide, y, beta)
    loss = ce + alpha1 * tau * tau * (
        (1 / n) * torch.sum(kl_rows(outputs / tau, t_out / tau).mul(w))
        + (1 / n) * torch.sum(kl_rows(outputs, s(x)).mul(1 - w))) + kl_n
  else:
    loss = ce + alpha1 * tau * tau * (1 / n) * torch.sum(kl_rows(outputs / tau, t_out / tau)) + kl_n
  loss.backward()
  opt.step()
  return float(loss.detach())


# ---------------------------------------------------------------- the comparison

BATCHES = [pc.batch(0), pc.batch(1)]  # two steps: momentum and threaded statistics too
NOISES = [[pc.uniform_noise(0)], [pc.uniform_noise(1)]]

# case: (config arg, kdrobust overrides, torch settings, first 1-indexed epoch,
#        student train-mode forwards of the two steps)
CASES = {
    # 0-indexed epochs 59 (before begin = 60) and 60 (after).
    "iad_official": ("protocol=official", {}, dict(protocol="official"), 60,
                     (STEPS + 3, STEPS + 4)),
    "iad_igdm": ("protocol=igdm", {}, dict(protocol="igdm"), 60, (2, 3)),
    # alpha < 1: the CE term on S(x) carries a gradient (0-indexed epochs 99, 100).
    "iad_official_alpha_half": ("protocol=official", {"alpha": 0.5},
                                dict(protocol="official", alpha=0.5), 100,
                                (STEPS + 4, STEPS + 4)),
    # IAD-II: 0-indexed epochs 39 (before begin = 40) and 40 (after).
    "iad2_official": ("method=iad2,protocol=official", {}, {}, 40, (STEPS + 1, STEPS + 2)),
}


@functools.lru_cache(maxsize=None)
def _kdrobust(case):
  """kdrobust's two steps (jitted, float64), cached for the planted-bug check."""
  arg, override, _, epoch, _ = CASES[case]
  method, wd = method_from_config(arg, **override)
  assert wd == 2e-4
  _, s_f, s_vars = pc.student_pair()
  teachers = [pc.teacher_pair()[1]]
  if method.name == "iad2":
    teachers.append(pc.teacher_pair(seed=8, widths=(5, 8))[1])
  return pc.run_kdrobust(method, s_f, s_vars, teachers, BATCHES, NOISES, lr=LR,
                         weight_decay=wd, epoch=epoch)


def _compare(case, **plant):
  arg, _, tset, epoch, forwards = CASES[case]
  state, metrics = _kdrobust(case)
  s_t, _, _ = pc.student_pair()
  t_t, _ = pc.teacher_pair()
  opt = pc.torch_sgd(s_t, LR, weight_decay=2e-4)  # IAD-I.py:224, IAD-II.py:230
  losses = []
  for i, ((x, y), n) in enumerate(zip(BATCHES, NOISES)):
    e = epoch - 1 + i  # the code's 0-indexed epoch
    if "iad2" in arg:
      nat = pc.teacher_pair(seed=8, widths=(5, 8))[0]
      losses.append(torch_iad2_step(s_t, t_t, nat, opt, x, y, n[0], e, **dict(tset, **plant)))
    else:
      losses.append(torch_iad1_step(s_t, t_t, opt, x, y, n[0], e, **dict(tset, **plant)))
  for i, (m, l) in enumerate(zip(metrics, losses)):
    pc.assert_close(m["loss"], l, what=f"{case}: loss of step {i}")
  pc.assert_same_state(state, s_t, what=case)
  assert pc.bn_train_forward_count(s_t) == sum(forwards)


@pytest.mark.parametrize("case", sorted(CASES))
def test_iad_step_matches_official(case):
  _compare(case)


def test_introspection_starts_at_begin():
  """The straddling cases really cover both branches (kdrobust's own metrics)."""
  _, metrics = _kdrobust("iad_official")
  assert [float(m["introspection_active"]) for m in metrics] == [0.0, 1.0]
  assert float(metrics[1]["introspection"]) > 0


@pytest.mark.parametrize("case,plant", [
    ("iad_official", {"begin": 59}),  # the term one epoch early
    ("iad_official", {"beta": 0.2}),  # other reliability weights
    ("iad_igdm", {"protocol": "official"}),  # a train-mode attack and E10's forward
])
def test_the_comparison_can_fail(case, plant):
  with pytest.raises(AssertionError):
    _compare(case, **plant)

"""Step parity: natural training, PGD-AT and TRADES vs PyTorch transcriptions of the official steps.

Each ``torch_*_step`` below is written from the official code (read, not
copied) and runs on :class:`parity_common.TorchNet`; kdrobust's jitted step
runs on its Flax twin with the same weights, batches and injected attack
starts, for two steps (momentum and threaded statistics). Parameters, BN
running statistics and each step's loss must agree to float64 rounding
(``parity_common.ATOL`` = 1e-9 absolute on parameters and statistics,
``RTOL`` = 1e-9 relative on losses), and the number of train-mode forwards
(``num_batches_tracked``) must be the official one.

Sources:

* natural: ``boyellow/AdaAD@9e5c6e5 main.py:291,302-305,386-387``
  (``Plain_Clean``, the standard step);
* PGD-AT official: the same file's ``Plain_Madry`` (``main.py:307-324``) with
  ``AT_helper.py:51-85`` (``Madry_PGD``);
* PGD-AT IGDM protocol: ``Xavaitron/VLM_Distillation@a22ed64
  ICLR_IGDM/attacks.py:93-120`` (``PGD``) in the training loop of its ARD
  scripts (``ard_cifar100.py:119-145``); IGDM's code has no PGD-AT script;
* TRADES: ``yaodongyu/TRADES@6e8e11b trades.py:17-84``,
  ``train_trades_cifar10.py:73-90``; the variant bundled in IGDM's code,
  ``ICLR_IGDM/core/utils/trades.py:21-91``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from kdrobust import methods
import parity_common as pc

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
STEPS = 10  # attack steps (the recipes' K)
LR = 0.1


# ---------------------------------------------------------------- transcriptions

def torch_natural_step(s, opt, x, y):
  """``Plain_Clean``: train mode, one forward, mean CE, SGD step; returns the loss."""
  x, y = pc.nchw(x), torch.tensor(y)
  s.train()
  out = s(x)
  loss = F.cross_entropy(out, y)
  opt.zero_grad()
  loss.backward()
  opt.step()
  return float(loss.detach())


def torch_plain_madry_step(s, opt, x, y, n, *, steps, eps=pc.EPS, step=pc.STEP,
                           mixture_alpha=None):
  """``Plain_Madry`` with ``Madry_PGD`` (``BN_eval=True``, ``random_init=True``)."""
  x, y, n = pc.nchw(x), torch.tensor(y), pc.nchw(n)
  s.train()  # train(): net.train() at the epoch start
  s.eval()  # Madry_PGD: BN_eval
  xa = torch.clamp(x.detach() + 0.001 * n, 0.0, 1.0)
  for _ in range(steps):
    xa.requires_grad_()
    with torch.enable_grad():
      loss_i = F.cross_entropy(s(xa), y)  # nn.CrossEntropyLoss(): mean
    g = torch.autograd.grad(loss_i, [xa])[0]
    xa = xa.detach() + step * torch.sign(g.detach())
    xa = torch.min(torch.max(xa, x - eps), x + eps)
    xa = torch.clamp(xa, 0.0, 1.0)
  s.train()  # end of Madry_PGD, and again in the loop
  opt.zero_grad()
  adv_loss = F.cross_entropy(s(xa), y)
  ori_loss = F.cross_entropy(s(x), y)  # ori_outputs: a train-mode forward
  if mixture_alpha is None:  # the README's runs (no --mixture)
    loss = adv_loss
  else:  # --mixture, had args.mixture_alpha been defined
    loss = mixture_alpha * ori_loss + (1 - mixture_alpha) * adv_loss
  loss.backward()
  opt.step()
  return float(loss.detach())


def torch_igdm_pgd_at_step(s, opt, x, y, u, *, steps, eps=pc.EPS, alpha=2 / 225):
  """IGDM's ``attacks.PGD`` (eval mode) then one train-mode CE forward on x'."""
  x, y, u = pc.nchw(x), torch.tensor(y), pc.nchw(u)
  s.train()
  opt.zero_grad()
  s.eval()  # PGD: model.eval()
  xa = torch.clamp(x + eps * u, min=0, max=1).detach()  # uniform_(-eps, eps) as eps * u
  for _ in range(steps):
    xa.requires_grad = True
    cost = F.cross_entropy(s(xa), y)
    g = torch.autograd.grad(cost, xa, retain_graph=False, create_graph=False)[0]
    xa = xa.detach() + alpha * g.sign()
    delta = torch.clamp(xa - x, min=-eps, max=eps)
    xa = torch.clamp(x + delta, min=0, max=1).detach()
  s.train()
  loss = F.cross_entropy(s(xa), y)
  loss.backward()
  opt.step()
  return float(loss.detach())


def torch_trades_step(s, opt, x, y, n, *, steps, eps, step, beta, variant="official"):
  """``trades_loss`` (official) or IGDM's bundled ``core/utils/trades.py`` (``'igdm_core'``)."""
  x, y, n = pc.nchw(x), torch.tensor(y), pc.nchw(n)
  s.train()
  opt.zero_grad()
  s.eval()
  bsz = len(x)
  xa = x.detach() + 0.001 * n
  if variant == "igdm_core":
    p_nat = F.softmax(s(x), dim=1)  # once, in eval mode, before the loop
  for _ in range(steps):
    xa.requires_grad_()
    with torch.enable_grad():
      target = p_nat if variant == "igdm_core" else F.softmax(s(x), dim=1)
      loss_kl = F.kl_div(F.log_softmax(s(xa), dim=1), target, reduction="sum")
    g = torch.autograd.grad(loss_kl, [xa])[0]
    xa = xa.detach() + step * torch.sign(g.detach())
    xa = torch.min(torch.max(xa, x - eps), x + eps)
    xa = torch.clamp(xa, 0.0, 1.0)
  s.train()
  xa = torch.clamp(xa, 0.0, 1.0).detach()
  opt.zero_grad()
  logits = s(x)
  loss_natural = F.cross_entropy(logits, y)
  if variant == "igdm_core":
    logits_adv = s(xa)
    target = F.softmax(logits, dim=1)
  else:  # arguments evaluate left to right: S(x'), then S(x) again
    logits_adv = s(xa)
    target = F.softmax(s(x), dim=1)
  loss_robust = (1.0 / bsz) * F.kl_div(F.log_softmax(logits_adv, dim=1), target,
                                       reduction="sum")
  loss = loss_natural + beta * loss_robust
  loss.backward()
  opt.step()
  return float(loss.detach())


# ---------------------------------------------------------------- helpers

def load_config(name, arg=None):
  """``configs/<name>.py``'s ``get_config(arg)``, the module loaded by path."""
  spec = importlib.util.spec_from_file_location(f"parity_at_{name}",
                                                os.path.join(CONFIGS, name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def from_config(name, arg=None, **changes):
  """``(method, weight decay)`` of a shipped config, with method fields ``changes``."""
  config = load_config(name, arg)
  method = methods.from_config(config.method)
  return dataclasses.replace(method, **changes), config.optim.weight_decay


def compare(method, torch_step, noise_fn, *, wd, n_steps=2, forwards_per_step):
  """Run both sides for ``n_steps`` and assert parity (see the module docstring)."""
  s_t, s_f, s_vars = pc.student_pair()
  batches = [pc.batch(i) for i in range(n_steps)]
  noises = [[noise_fn(i)] if noise_fn else [] for i in range(n_steps)]
  state, metrics = pc.run_kdrobust(method, s_f, s_vars, [], batches, noises, lr=LR,
                                   weight_decay=wd)
  opt = pc.torch_sgd(s_t, LR, weight_decay=wd)
  losses = [torch_step(s_t, opt, x, y, *n) for (x, y), n in zip(batches, noises)]
  for i, (m, l) in enumerate(zip(metrics, losses)):
    pc.assert_close(m["loss"], l, what=f"loss of step {i}")
  pc.assert_same_state(state, s_t, what=type(method).__name__)
  if forwards_per_step is not None:
    assert pc.bn_train_forward_count(s_t) == n_steps * forwards_per_step
  return state, s_t


# ---------------------------------------------------------------- natural

def test_natural_step_matches_plain_clean():
  method, wd = from_config("cifar_natural")
  assert wd == 5e-4
  compare(method, torch_natural_step, None, wd=wd, forwards_per_step=1)


# ---------------------------------------------------------------- PGD-AT

def _madry(mixture_alpha=None, steps=STEPS):
  return lambda s, o, x, y, n: torch_plain_madry_step(s, o, x, y, n, steps=steps,
                                                      mixture_alpha=mixture_alpha)


def test_pgd_at_official_step_matches_plain_madry():
  method, wd = from_config("cifar10_pgd_at", "protocol=official")
  assert (method.attack.init, method.attack.bn_mode, method.extra_clean_forward, wd) == (
      "gaussian_clamped", "eval", True, 5e-4)
  compare(method, _madry(), pc.normal_noise, wd=wd, forwards_per_step=2)


def test_pgd_at_mixture_matches_plain_madry_mixture():
  """``--mixture`` (the clean forward then carries gradient), had ``mixture_alpha`` been defined."""
  method, wd = from_config("cifar10_pgd_at", "protocol=official", mixture_alpha=0.3)
  compare(method, _madry(mixture_alpha=0.3), pc.normal_noise, wd=wd, n_steps=1,
          forwards_per_step=2)


def test_pgd_at_igdm_step_matches_igdm_pgd():
  """IGDM's attacks.PGD at the config's step (2/255; ``attack.step_size=2/225`` is the typo)."""
  method, wd = from_config("cifar10_pgd_at", "protocol=igdm")
  assert (method.attack.init, method.attack.bn_mode, method.extra_clean_forward, wd) == (
      "uniform", "eval", False, 2e-4)
  step = method.attack.step_size
  torch_step = lambda s, o, x, y, u: torch_igdm_pgd_at_step(s, o, x, y, u, steps=STEPS,
                                                            alpha=step)
  compare(method, torch_step, pc.uniform_noise, wd=wd, forwards_per_step=1)


@pytest.mark.parametrize("change", ["no_extra_forward", "unclamped_start"])
def test_plain_madry_parity_fails_without_its_start_or_extra_forward(change):
  """The check can fail: Madry's one-forward step or an unclamped start is not ``Plain_Madry``."""
  method, wd = from_config("cifar10_pgd_at", "protocol=official")
  attack = dataclasses.replace(method.attack, steps=3)
  if change == "no_extra_forward":
    method = dataclasses.replace(method, attack=attack, extra_clean_forward=False)
  else:
    method = dataclasses.replace(method, attack=dataclasses.replace(attack, init="gaussian"))
  with pytest.raises(AssertionError):
    compare(method, _madry(steps=3), pc.normal_noise, wd=wd, n_steps=1,
            forwards_per_step=None)


# ---------------------------------------------------------------- TRADES

def _trades(method, variant="official", steps=STEPS):
  a = method.attack
  return lambda s, o, x, y, n: torch_trades_step(s, o, x, y, n, steps=steps, eps=a.eps,
                                                 step=a.step_size, beta=method.beta,
                                                 variant=variant)


@pytest.mark.parametrize("protocol", ["official", "igdm"])
def test_trades_step_matches_official(protocol):
  method, wd = from_config("cifar10_trades", f"protocol={protocol}")
  assert (method.attack.init, method.attack.bn_mode, method.beta, wd) == (
      "gaussian", "eval", 6.0, 2e-4)
  compare(method, _trades(method), pc.normal_noise, wd=wd,
          n_steps=2 if protocol == "official" else 1, forwards_per_step=3)


def test_trades_two_forward_variant_matches_igdm_bundled_trades():
  """``second_clean_forward=False`` = ``ICLR_IGDM/core/utils/trades.py`` (x, x' in train mode)."""
  method, wd = from_config("cifar10_trades", "protocol=igdm", second_clean_forward=False)
  compare(method, _trades(method, "igdm_core"), pc.normal_noise, wd=wd, n_steps=1,
          forwards_per_step=2)


def test_trades_parity_fails_without_the_third_forward():
  """The check can fail: two train-mode forwards are not the official three."""
  method, wd = from_config("cifar10_trades", "protocol=official", second_clean_forward=False)
  method = dataclasses.replace(method, attack=dataclasses.replace(method.attack, steps=3))
  with pytest.raises(AssertionError):
    compare(method, _trades(method, steps=3), pc.normal_noise, wd=wd, n_steps=1,
            forwards_per_step=None)

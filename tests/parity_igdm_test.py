"""Step parity: IGDM on ARD, RSLAD and AdaAD vs PyTorch transcriptions of IGDM's code.

Transcribed (not copied) from ``Xavaitron/VLM_Distillation@a22ed64``
``ICLR_IGDM/`` (``ard_IGDM_cifar100.py``, ``rslad_IGDM_cifar100.py``,
``adaad_IGDM_cifar100.py``, ``attacks.py PGD``, ``rslad_loss.py
rslad_inner_loss_xadv, adaad_inner_loss``), the IGDM protocol: every attack
runs the student in ``eval()`` mode, every loss forward in ``train()`` mode,
``t`` is the 1-indexed epoch, ``d = x' - x``, ``P = x + beta d``:

ARD+IGDM (3 student forwards)::

    x' = attacks.PGD: x_0 = clamp(x + U[-eps, eps]); K steps of
         x + clamp(x_k + a sign(grad meanCE(S(x_k), y)) - x, -eps, eps), clamped to [0, 1]
         (a = 2/225, the code's default, a typo for 2/255)
    S(P), S(x), S(x - beta d)                       (the ARD script scales both points by beta)
    loss = KL_bm(T(x) || S(P)) + alpha (t/200) KL_bm(T(P) - T(x - beta d) || S(P) - S(x - beta d))
           + 0 CE(S(x), y)

RSLAD+IGDM (4 student forwards)::

    x' = rslad_inner_loss_xadv: x_0 = x + 0.001 N; K steps on sum KL(T(x) || S(x_k)); then,
         in train mode, S(x')
    S(P), S(x), S(x - gamma d)
    kl(a, b) = -a b + b log(b + 1e-5) element-wise, a = log softmax(S), b = softmax(T(x))
    loss = 5/6 * 10 mean_{B x C} kl(S(x')) + 1/6 * 10 mean_{B x C} kl(S(x))
           + alpha (t/300) KL_bm(T(P) - T(x - gamma d) || S(P) - S(x - gamma d))

AdaAD+IGDM (4 student forwards)::

    x' = adaad_inner_loss: x_0 = x + 0.001 N; K steps on sum KL(T(x_k) || S(x_k)) (gradient
         through both)
    S(P), S(x), S(x - gamma d), S(x')
    loss = (1/B) sum KL(T(x') || S(x')) + 0 (1/B) sum KL(T(x) || S(x))
           + alpha (t/200) KL_bm(T(P) - T(x - gamma d) || S(P) - S(x - gamma d))

then ``loss.backward(); SGD(lr 0.1, momentum 0.9, weight_decay args.wd = 2e-4).step()``.
``KL_bm`` = ``nn.KLDivLoss(reduction='batchmean')(log_softmax(s), softmax(t))``.
The networks have C = 100 classes (the scripts are CIFAR-100's: RSLAD's ``10 *
mean`` is ``batchmean / 10`` only there). Tolerances: see :mod:`parity_common`
(float64 on both sides).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from kdrobust import methods
from kdrobust.methods import igdm
import parity_common as pc

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
C100 = 100
EPOCH = 151  # 1-indexed; t/E = 0.755 (ARD, AdaAD), 0.503.. (RSLAD): not exact in float32
STEPS = 5    # inner attack steps (the configs' 10, shrunk for time)


def load_config(base):
  """``configs/cifar_<base>.py:protocol=igdm,dataset=cifar100,teacher=bdm,igdm=1``."""
  spec = importlib.util.spec_from_file_location(f"parity_igdm_{base}",
                                                os.path.join(CONFIGS, f"cifar_{base}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config("protocol=igdm,dataset=cifar100,teacher=bdm,igdm=1")


def shipped(base, **igdm_fields):
  """The IGDM-wrapped method, lr, weight decay and epochs of the shipped IGDM-protocol config."""
  c = load_config(base)
  m = methods.from_config(c.method)
  m = dataclasses.replace(m, attack=dataclasses.replace(m.attack, steps=STEPS), **igdm_fields)
  m = dataclasses.replace(m, base=dataclasses.replace(m.base, attack=m.attack))
  return m, float(c.optim.lr), float(c.optim.weight_decay), int(c.num_epochs)


# ---------------------------------------------------------------- PyTorch side

def _kl_bm(s_logits, t_logits):
  return F.kl_div(F.log_softmax(s_logits, dim=1), F.softmax(t_logits, dim=1),
                  reduction="batchmean")


def torch_pgd_ce(s, x, y, u, *, eps, a, steps):
  """``attacks.PGD`` (eval mode, clamped uniform start, mean CE)."""
  s.eval()
  adv = torch.clamp(x + eps * u, 0, 1).detach()
  for _ in range(steps):
    adv.requires_grad = True
    cost = F.cross_entropy(s(adv), y)
    g = torch.autograd.grad(cost, adv)[0]
    adv = adv.detach() + a * g.sign()
    delta = torch.clamp(adv - x, min=-eps, max=eps)
    adv = torch.clamp(x + delta, min=0, max=1).detach()
  s.train()
  return adv


def torch_pgd_kl(s, target_fn, x, n, *, eps, a, steps):
  """The gaussian-start KL attacks (``rslad_inner_loss_xadv``, ``adaad_inner_loss``), eval mode.

  ``target_fn(x_k)`` are the target logits (RSLAD: the fixed ``T(x)``;
  AdaAD: ``T(x_k)``, differentiated too).
  """
  s.eval()
  xa = x.detach() + 0.001 * n
  for _ in range(steps):
    xa.requires_grad_()
    with torch.enable_grad():
      loss = F.kl_div(F.log_softmax(s(xa), dim=1), F.softmax(target_fn(xa), dim=1),
                      reduction="sum")
    g = torch.autograd.grad(loss, [xa])[0]
    xa = xa.detach() + a * torch.sign(g.detach())
    xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0.0, 1.0)
  s.train()
  return torch.clamp(xa, 0.0, 1.0).detach()


def torch_igdm_step(base, s, t, opt, x, y, noise, *, alpha, beta, gamma, epoch, eps, a, steps):
  """One step of IGDM's ``<base>_IGDM_cifar100.py``; returns the loss."""
  x, y, noise = pc.nchw(x), torch.tensor(y), pc.nchw(noise)
  s.train()
  if base == "ard":
    opt.zero_grad()
    x_adv = torch_pgd_ce(s, x, y, noise, eps=eps, a=a, steps=steps)
    gamma = beta  # ard_IGDM_cifar100.py: X - args.beta * delta
  elif base == "rslad":
    with torch.no_grad():
      t_x = t(x)
    x_adv = torch_pgd_kl(s, lambda _: t_x, x, noise, eps=eps, a=a, steps=steps)
    opt.zero_grad()
    adv_logits = s(x_adv)
  else:
    x_adv = torch_pgd_kl(s, t, x, noise, eps=eps, a=a, steps=steps)
    opt.zero_grad()
  with torch.no_grad():
    delta = x_adv - x
    t_plus = t(x + beta * delta)
    t_x = t(x)
    t_minus = t(x - gamma * delta)
  s_plus = s(x + beta * delta)
  s_x = s(x)
  s_minus = s(x - gamma * delta)
  l_igdm = _kl_bm(s_plus - s_minus, (t_plus - t_minus).detach())
  if base == "ard":
    loss = (_kl_bm(s_plus, t_x) + alpha * (epoch / 200) * l_igdm
            + (1.0 - 1) * F.cross_entropy(s_x, y))
  elif base == "rslad":
    def kl_loss(a_, b_):
      return -a_ * b_ + torch.log(b_ + 1e-5) * b_
    kl1 = 10 * torch.mean(kl_loss(torch.log(F.softmax(adv_logits, dim=1)), F.softmax(t_x, dim=1)))
    kl2 = 10 * torch.mean(kl_loss(torch.log(F.softmax(s_x, dim=1)), F.softmax(t_x, dim=1)))
    loss = 5.0 / 6.0 * kl1 + 1.0 / 6.0 * kl2 + alpha * (epoch / 300) * l_igdm
  else:
    adv_out = s(x_adv)
    with torch.no_grad():
      t_adv = t(x_adv)
    n = len(adv_out)
    kl1 = (1 / n) * torch.sum(F.kl_div(F.log_softmax(adv_out, dim=1), F.softmax(t_adv, dim=1),
                                       reduction="none"))
    kl2 = (1 / n) * torch.sum(F.kl_div(F.log_softmax(s_x, dim=1), F.softmax(t_x, dim=1),
                                       reduction="none"))
    loss = 1 * kl1 + (1 - 1) * kl2 + alpha * (epoch / 200) * l_igdm
  loss.backward()
  opt.step()
  return float(loss.detach())


# ---------------------------------------------------------------- the comparison

FORWARDS = {"ard": 3, "rslad": 4, "adaad": 4}  # train-mode student forwards per step


def nets():
  s_t = pc.TorchNet(seed=0, num_classes=C100).train()
  t_t = pc.TorchNet(widths=(6, 8), seed=7, num_classes=C100).eval()
  for p in t_t.parameters():
    p.requires_grad_(False)
  return (s_t, pc.FlaxNet(num_classes=C100), pc.flax_variables(s_t),
          t_t, (pc.FlaxNet(widths=(6, 8), num_classes=C100), pc.flax_variables(t_t)))


def run_both(base, method, lr, wd, num_epochs, n_steps=2):
  s_t, s_f, s_vars, t_t, teacher = nets()
  batches = [pc.batch(i, num_classes=C100) for i in range(n_steps)]
  draw = pc.uniform_noise if base == "ard" else pc.normal_noise
  noises = [[draw(i)] for i in range(n_steps)]
  state, metrics = pc.run_kdrobust(method, s_f, s_vars, [teacher], batches, noises, lr=lr,
                                   weight_decay=wd, epoch=EPOCH, num_epochs=num_epochs)
  opt = pc.torch_sgd(s_t, lr, weight_decay=wd)
  a = method.attack
  losses = [torch_igdm_step(base, s_t, t_t, opt, x, y, n[0], alpha=method.alpha,
                            beta=method.beta, gamma=method.gamma, epoch=EPOCH + i,
                            eps=a.eps, a=a.step_size, steps=a.steps)
            for i, ((x, y), n) in enumerate(zip(batches, noises))]
  return state, metrics, losses, s_t


def check(base, method, lr, wd, num_epochs, n_steps=2):
  state, metrics, losses, s_t = run_both(base, method, lr, wd, num_epochs, n_steps)
  for i, (m, l) in enumerate(zip(metrics, losses)):
    pc.assert_close(m["loss"], l, what=f"loss of step {i}")
    pc.assert_close(m["igdm_weight"], method.alpha * (EPOCH + i) / num_epochs,
                    what="ramp alpha t / E")
  pc.assert_same_state(state, s_t, what=f"IGDM+{base}")
  assert pc.bn_train_forward_count(s_t) == n_steps * FORWARDS[base]


@pytest.mark.parametrize("base", sorted(FORWARDS))
def test_igdm_step_matches_code(base):
  """The shipped IGDM-protocol recipe (beta = gamma = 1) against the script, two steps."""
  method, lr, wd, num_epochs = shipped(base)
  assert (method.beta, method.gamma) == (1.0, 1.0)
  check(base, method, lr, wd, num_epochs)


# beta != gamma where the script has both; the ARD script scales both points by beta.
SCALES = {"ard": (0.6, 0.6), "rslad": (0.5, 1.5), "adaad": (1.5, 0.5)}


@pytest.mark.parametrize("base", sorted(SCALES))
def test_igdm_beta_gamma_match_code(base):
  """``x + beta d`` and ``x - gamma d`` as the scripts scale them (one step)."""
  beta, gamma = SCALES[base]
  method, lr, wd, num_epochs = shipped(base, beta=beta, gamma=gamma)
  check(base, method, lr, wd, num_epochs, n_steps=1)


def test_shipped_igdm_recipes():
  """The configs run IGDM's code: eval-mode attacks, its starts, steps, wd 2e-4, E, alpha."""
  want = {  # base: (init, step, wd, epochs, IGDM alpha of RN-18 / C-100 / BDM-AT (App. B.2))
      "ard": ("uniform", 2 / 225, 2e-4, 200, 100.0),
      "rslad": ("gaussian", 2 / 255, 2e-4, 300, 10.0),
      "adaad": ("gaussian", 2 / 255, 2e-4, 200, 70.0),
  }
  for base, (init, step, wd, epochs, alpha) in want.items():
    c = load_config(base)
    m = methods.from_config(c.method)
    assert isinstance(m, igdm.IGDM) and m.base.name == base
    assert (m.attack.bn_mode, m.attack.init, m.attack.steps, m.attack.eps) == (
        "eval", init, 10, 8 / 255), base
    pc.assert_close(m.attack.step_size, step, what=f"{base} step")
    assert (float(c.optim.weight_decay), int(c.num_epochs), m.alpha, m.beta, m.gamma) == (
        wd, epochs, alpha, 1.0, 1.0), base


def test_pair_first_order_fails(monkeypatch):
  """The check can fail: AdaAD+IGDM with the IGDM pair first (not the code order) moves BN."""
  monkeypatch.delitem(igdm.CODE_ORDER, "adaad")
  method, lr, wd, num_epochs = shipped("adaad")
  state, metrics, losses, s_t = run_both("adaad", method, lr, wd, num_epochs, n_steps=1)
  pc.assert_close(metrics[0]["loss"], losses[0], what="same first loss")  # BN order only
  with pytest.raises(AssertionError):
    pc.assert_same_state(state, s_t, what="pair-first order")


def test_igdm_options_are_checked():
  with pytest.raises(ValueError, match="valid: \\['alpha', 'beta', 'gamma'\\]"):
    methods.make("ard", igdm={"alpha": 1.0, "delta": 2.0})
  m = methods.make("rslad", igdm={"alpha": 1.0, "beta": 0.5, "gamma": 2.0})
  assert (m.beta, m.gamma) == (0.5, 2.0)

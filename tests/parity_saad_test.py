"""Step parity: SAAD (official protocol) vs a PyTorch transcription of the official step.

Transcribed (not copied) from ``HongsinLee/saad@295121c`` ``attacks.py``
(``saad_inner_loss``), ``saad.py:48-86`` (the training loop) and ``utils.py``
(``samplewise_kl_div``, ``samplewise_renyi_entropy``):

    t0 = T(x)                                          (eval, no grad)
    S.eval();  g = grad_x sum_i T(x)[i, y_i]           (teacher eval, graph not kept)
    x_0 = x + 0.001 n                                  (not clamped)
    z~(u) = T(x).detach() with z~[i, y_i] += lambda <g_i, u_i - x_i>      (differentiable in u)
    x_{k+1} = clamp(min(max(x_k + a sign(grad sum KL(softmax(z~(x_k)) || softmax(S(x_k)))),
                        x - eps), x + eps), 0, 1)
    S.train();  d = x' - x;  t+ = T(x'),  t- = T(x - d)   (no grad, x - d not clipped)
    s+ = S(x'),  s- = S(x - d),  s0 = S(x)             (three train-mode forwards)
    H = -sum p log(p + 1e-12), p = softmax(t+);  w = max(0, 5 (H - min H));  w~ = minmax(w)
    L = mean_i[ w (KL(t+ || s+) + a_ig (e/E) KL(t+ - t- || s+ - s-)) + beta (1 - w~) KL(t0 || s0) ]
    SGD(lr, momentum 0.9, weight_decay 2e-4).step()

with ``main.sh``'s ``beta = 0``, ``gamma = 1`` and ``igdm_alpha = 1``. The
kdrobust method comes from ``configs/cifar_saad.py`` (attack shortened to
``STEPS`` steps, the config's weight decay). Two steps, in epochs 60 and 61
of 200 (the IGDM ramp moves between them). A second case (one step) turns
the clean term on (``clean_weight = 0.5``) and uses Renyi order 2 on both sides.
Tolerances: :mod:`parity_common` (float64 both sides: parameters and
statistics ``1e-9`` absolute, losses ``1e-9`` relative).
Runtime: 28 s of CPU (user) time alone, imports included (2-core machine at load 8).
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F

import parity_common as pc

STEPS, LR = 5, 0.1
FIRST_EPOCH = 60
OFFICIAL_WEIGHT_DECAY = 2e-4


def _renyi(logits, gamma, eps=1e-12):
  p = F.softmax(logits, dim=1)
  if abs(gamma - 1.0) < 1e-6:
    return -(p * torch.log(p + eps)).sum(dim=1)
  return torch.log((p ** gamma).sum(dim=1) + eps) / (1.0 - gamma)


def _kl_per(student_logits, teacher_logits):
  with torch.no_grad():
    p = F.softmax(teacher_logits, dim=1)
  return F.kl_div(F.log_softmax(student_logits, dim=1), p, reduction="none").sum(dim=1)


def torch_saad_step(s, t, opt, x, y, n, *, epoch, epochs, steps, beta=0.0, gamma=1.0,
                    igdm_alpha=1.0, lam=1.0, detach_target=False, clean_first=False,
                    zero_indexed_ramp=False):
  """One official SAAD step; the keyword flags plant deviations."""
  x, y, n = pc.nchw(x), torch.tensor(y), pc.nchw(n)
  s.train()
  with torch.no_grad():
    t_clean = t(x)
  # saad_inner_loss
  s.eval()
  x_temp = x.detach().clone().requires_grad_(True)
  t_logits = t(x_temp)
  b = t_logits.shape[0]
  g = torch.autograd.grad(t_logits[torch.arange(b), y].sum(), x_temp)[0]
  xa = x.detach() + 0.001 * n
  for _ in range(steps):
    xa.requires_grad_()
    with torch.enable_grad():
      corr = torch.einsum("bchw,bchw->b", g, xa - x)
      if detach_target:
        corr = corr.detach()
      target = t_logits.detach().clone()
      target[torch.arange(b), y] += lam * corr
      loss = torch.nn.KLDivLoss(reduction="sum")(F.log_softmax(s(xa), dim=1),
                                                 F.softmax(target, dim=1))
    grad = torch.autograd.grad(loss, [xa])[0]
    xa = xa.detach() + pc.STEP * torch.sign(grad.detach())
    xa = torch.min(torch.max(xa, x - pc.EPS), x + pc.EPS).clamp(0.0, 1.0)
  s.train()
  xa = xa.detach()
  opt.zero_grad()
  with torch.no_grad():
    delta = xa - x
    t_plus, t_minus = t(xa), t(x - delta)
  if clean_first:
    s_clean = s(x)
  s_plus = s(xa)
  s_minus = s(x - delta)
  if not clean_first:
    s_clean = s(x)
  ent = _renyi(t_plus, gamma)
  kl_adv = _kl_per(s_plus, t_plus)
  kl_clean = _kl_per(s_clean, t_clean)
  ramp = (epoch - 1 if zero_indexed_ramp else epoch) / epochs
  ig = igdm_alpha * ramp * _kl_per(s_plus - s_minus, t_plus - t_minus)
  w = torch.clamp(5 * (ent - ent.min().item()), min=0.0)
  w_norm = (w - w.min()) / (w.max() - w.min() + 1e-8)
  loss = (w * (kl_adv + ig) + beta * (1 - w_norm) * kl_clean).mean()
  loss.backward()
  opt.step()
  return {"loss": loss.item(), "kl_adv": kl_adv.mean().item(), "weight_mean": w.mean().item(),
          "entropy": ent.mean().item()}


CASES = {"official": {}, "clean_renyi2": dict(clean_weight=0.5, renyi_order=2.0)}
TORCH_KW = {"official": {}, "clean_renyi2": dict(beta=0.5, gamma=2.0)}
N_STEPS = {"official": 2, "clean_renyi2": 1}  # each step is one XLA compile: keep the file fast


@functools.lru_cache(maxsize=None)
def kdrobust_run(case: str):
  method, wd, cfg = pc.config_recipe("cifar_saad.py", "", steps=STEPS)
  method = dataclasses.replace(method, **CASES[case])
  _, s_f, s_vars = pc.student_pair()
  _, teacher = pc.teacher_pair()
  seeds = range(N_STEPS[case])
  state, metrics = pc.run_kdrobust(
      method, s_f, s_vars, [teacher], [pc.batch(i) for i in seeds],
      [[pc.normal_noise(i)] for i in seeds], lr=LR, weight_decay=wd,
      epoch=FIRST_EPOCH, num_epochs=cfg.num_epochs)
  return state, metrics, method, wd, cfg.num_epochs


def torch_run(case, epochs, **variant):
  s_t, _, _ = pc.student_pair()
  t_t, _ = pc.teacher_pair()
  opt = pc.torch_sgd(s_t, LR, weight_decay=OFFICIAL_WEIGHT_DECAY)
  out = []
  for i, seed in enumerate(range(N_STEPS[case])):
    x, y = pc.batch(seed)
    out.append(torch_saad_step(s_t, t_t, opt, x, y, pc.normal_noise(seed),
                               epoch=FIRST_EPOCH + i, epochs=epochs, steps=STEPS,
                               **{**TORCH_KW[case], **variant}))
  return s_t, out


def assert_matches(state, metrics, s_t, ref, what):
  for i, (m, r) in enumerate(zip(metrics, ref)):
    for k in ("loss", "kl_adv", "weight_mean", "entropy"):
      pc.assert_close(m[k], r[k], what=f"{what}: {k} of step {i}")
  pc.assert_same_state(state, s_t, what=what)


@pytest.mark.parametrize("case", sorted(CASES))
def test_saad_steps_match_official(case):
  state, metrics, method, wd, epochs = kdrobust_run(case)
  assert method.attack.bn_mode == "eval" and method.attack.init == "gaussian"
  assert wd == OFFICIAL_WEIGHT_DECAY, "config weight decay != the code's"
  assert (method.entropy_scale, method.lambda_inner, method.ig_alpha) == (5.0, 1.0, 1.0)
  s_t, ref = torch_run(case, epochs)
  assert_matches(state, metrics, s_t, ref, f"SAAD {case}")
  assert pc.bn_train_forward_count(s_t) == 3 * N_STEPS[case]  # S(x'), S(x - d), S(x) per step
  assert min(r["weight_mean"] for r in ref) > 0  # the weights are exercised


@pytest.mark.parametrize("variant", [
    dict(detach_target=True),       # inner target detached: another attack direction
    dict(clean_first=True),         # S(x) before S(x'): other batch statistics
    dict(zero_indexed_ramp=True),   # IGDM ramp (e - 1)/E
    dict(igdm_alpha=0.0),           # the IGDM term dropped
])
def test_planted_deviations_are_detected(variant):
  """The comparison can fail: each deviation from the official step is caught."""
  state, metrics, _, _, epochs = kdrobust_run("official")
  s_t, ref = torch_run("official", epochs, **variant)
  with pytest.raises(AssertionError):
    assert_matches(state, metrics, s_t, ref, f"planted {variant}")

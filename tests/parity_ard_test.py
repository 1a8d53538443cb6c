"""Step parity: ARD (official and IGDM protocols) vs a PyTorch transcription of the official step.

Transcribed (not copied) from ``goldblum/AdversariallyRobustDistillation@779ade3
main.py`` (``AttackPGD.forward``, ``train``): the student network is in
``train()`` mode for the whole step, so each of the K attack forwards and the
final forward at x' use batch statistics and update the running statistics:

    x_0 = x + U[-eps, eps]                     (no clamp before the first step)
    x_{k+1} = clamp(min(max(x_k + a sign(grad_x sum_i CE(S(x_k)_i, y_i)), x - eps), x + eps), 0, 1)
    outputs = S(x_K)                           (train mode, with grad)
    teacher_outputs = T(x)                     (eval mode)
    basic_outputs = S(x)                       (train mode)
    loss = alpha tau^2 KLDivLoss()(log_softmax(outputs / tau), softmax(teacher_outputs / tau))
           + (1 - alpha) CE(basic_outputs, y)
    SGD(lr, momentum 0.9, weight_decay 2e-4).step()

IGDM's re-run (``protocol=igdm``, ``ard_cifar100.py`` + ``attacks.py``) attacks
in ``eval()`` mode from a clamped uniform start, ``tau = 1``, ``batchmean``.
Tolerances: see :mod:`parity_common` (float64 both sides).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdrobust import methods
import parity_common as pc


def torch_ard_step(s, t, opt, x, y, u, *, tau, alpha, reduction, attack_mode, clamp_start,
                   steps, eps=pc.EPS, step=pc.STEP):
  """One official ARD step on torch nets; returns the loss."""
  x, y, u = pc.nchw(x), torch.tensor(y), pc.nchw(u)
  s.train() if attack_mode == "train" else s.eval()
  xa = x.detach() + eps * u
  if clamp_start:
    xa = torch.clamp(xa, 0.0, 1.0)
  for _ in range(steps):
    xa.requires_grad_()
    with torch.enable_grad():
      loss = F.cross_entropy(s(xa), y, reduction="sum")
    g = torch.autograd.grad(loss, [xa])[0]
    xa = xa.detach() + step * torch.sign(g.detach())
    xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0.0, 1.0)
  s.train()
  opt.zero_grad()
  outputs = s(xa)
  with torch.no_grad():
    t_out = t(x)
  basic = s(x)
  logp = F.log_softmax(outputs / tau, dim=1)
  q = F.softmax(t_out / tau, dim=1)
  kl = F.kl_div(logp, q, reduction="mean" if reduction == "elemmean" else "batchmean")
  loss = alpha * tau * tau * kl + (1 - alpha) * F.cross_entropy(basic, y)
  loss.backward()
  opt.step()
  return float(loss.detach())


PROTOCOLS = {
    # protocol: (method hyperparameters, torch settings, weight decay)
    "official": (dict(temperature=30.0, alpha=1.0, reduction="elemmean",
                      attack={"bn_mode": "train", "init": "uniform_unclipped"}),
                 dict(tau=30.0, alpha=1.0, reduction="elemmean", attack_mode="train",
                      clamp_start=False), 2e-4),
    "igdm": (dict(temperature=1.0, alpha=1.0, reduction="batchmean",
                  attack={"bn_mode": "eval", "init": "uniform"}),
             dict(tau=1.0, alpha=1.0, reduction="batchmean", attack_mode="eval",
                  clamp_start=True), 2e-4),
    # alpha < 1 exercises the CE term on S(x) (the official code's other branch).
    "official_alpha_half": (dict(temperature=30.0, alpha=0.5, reduction="elemmean",
                                 attack={"bn_mode": "train", "init": "uniform_unclipped"}),
                            dict(tau=30.0, alpha=0.5, reduction="elemmean",
                                 attack_mode="train", clamp_start=False), 2e-4),
}


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_ard_step_matches_official(protocol):
  hp, tset, wd = PROTOCOLS[protocol]
  steps, lr = 10, 0.1
  hp = dict(hp, attack=dict(hp["attack"], steps=steps))
  method = methods.make("ard", **hp)
  s_t, s_f, s_vars = pc.student_pair()
  t_t, teacher = pc.teacher_pair()
  batches = [pc.batch(0), pc.batch(1)]  # two steps: momentum and threaded statistics too
  noises = [[pc.uniform_noise(0)], [pc.uniform_noise(1)]]
  state, metrics = pc.run_kdrobust(method, s_f, s_vars, [teacher], batches, noises,
                                   lr=lr, weight_decay=wd)
  opt = pc.torch_sgd(s_t, lr, weight_decay=wd)
  losses = [torch_ard_step(s_t, t_t, opt, x, y, n[0], steps=steps, **tset)
            for (x, y), n in zip(batches, noises)]
  for i, (m, l) in enumerate(zip(metrics, losses)):
    pc.assert_close(m["loss"], l, what=f"loss of step {i}")
  pc.assert_same_state(state, s_t, what=f"ARD {protocol}")
  # The official step runs K + 2 train-mode forwards in train-mode attacks, 2 otherwise.
  want = 2 * ((steps + 2) if tset["attack_mode"] == "train" else 2)
  assert pc.bn_train_forward_count(s_t) == want


def test_eval_mode_attack_differs_from_the_official_train_mode():
  """The check can fail: attacking in eval mode does not reproduce the official statistics."""
  hp, tset, wd = PROTOCOLS["official"]
  method = methods.make("ard", **dict(hp, attack=dict(hp["attack"], bn_mode="eval", steps=3)))
  s_t, s_f, s_vars = pc.student_pair()
  t_t, teacher = pc.teacher_pair()
  state, _ = pc.run_kdrobust(method, s_f, s_vars, [teacher], [pc.batch(0)],
                             [[pc.uniform_noise(0)]], lr=0.1, weight_decay=wd)
  torch_ard_step(s_t, t_t, pc.torch_sgd(s_t, 0.1, weight_decay=wd), *pc.batch(0),
                 pc.uniform_noise(0), steps=3, **tset)
  with pytest.raises(AssertionError):
    pc.assert_same_state(state, s_t, what="eval-mode attack")

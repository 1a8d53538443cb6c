"""Step parity: ARD (official and IGDM protocols) vs PyTorch transcriptions of each code's step.

Official: transcribed (not copied) from ``goldblum/AdversariallyRobustDistillation@779ade3
main.py`` (``AttackPGD.forward``, ``train``). The student network is in
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

IGDM protocol: ``Xavaitron/VLM_Distillation@a22ed64 ICLR_IGDM/ard_cifar100.py``
with ``attacks.PGD``: the attack runs in ``eval()`` mode from ``clamp(x + U)``
with step ``2/225`` on the mean CE; then ``S(x)`` and ``S(x')`` in train mode
(in that order), ``tau = 1``, ``batchmean``.

The kdrobust side is built from ``configs/cifar_ard.py`` as shipped (attack
steps shrunk). Tolerances: :mod:`parity_common` (float64 both sides).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import parity_common as pc

pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")


def torch_ard_step(s, t, opt, x, y, u, *, tau, alpha, reduction, attack_mode, clamp_start,
                   steps, clean_first, step, eps=pc.EPS):
  """One official (or IGDM) ARD step on torch nets; returns the loss."""
  x, y, u = pc.nchw(x), torch.tensor(y), pc.nchw(u)
  s.train() if attack_mode == "train" else s.eval()
  xa = x.detach() + eps * u
  if clamp_start:
    xa = torch.clamp(xa, 0.0, 1.0)
  xa = pc.torch_pgd(lambda v: F.cross_entropy(s(v), y, reduction="sum"), x, xa, steps=steps,
                    step=step, eps=eps)
  s.train()
  opt.zero_grad()
  if clean_first:
    basic = s(x)
    outputs = s(xa)
  else:
    outputs = s(xa)
    basic = None
  with torch.no_grad():
    t_out = t(x)
  if basic is None:
    basic = s(x)
  logp = F.log_softmax(outputs / tau, dim=1)
  q = F.softmax(t_out / tau, dim=1)
  kl = F.kl_div(logp, q, reduction="mean" if reduction == "elemmean" else "batchmean")
  loss = alpha * tau * tau * kl + (1 - alpha) * F.cross_entropy(basic, y)
  loss.backward()
  opt.step()
  return float(loss.detach())


OFFICIAL = dict(tau=30.0, alpha=1.0, reduction="elemmean", attack_mode="train",
                clamp_start=False, clean_first=False, step=2 / 255)
IGDM = dict(tau=1.0, alpha=1.0, reduction="batchmean", attack_mode="eval",
            clamp_start=True, clean_first=True, step=2 / 225)
CASES = {
    # config arg: (torch settings, extra method overrides)
    "protocol=official": (OFFICIAL, {}),
    "protocol=igdm": (IGDM, {}),
    # alpha < 1 exercises the CE term on S(x) (the code's other branch).
    "protocol=official,alpha=0.5": (dict(OFFICIAL, alpha=0.5), {"alpha": 0.5}),
}


def _run(arg, tset, overrides, steps):
  from kdrobust import methods  # pylint: disable=g-import-not-at-top
  base_arg = arg.split(",alpha")[0]
  method, wd, _ = pc.config_recipe("cifar_ard.py", base_arg, steps=steps)
  if overrides:
    import dataclasses  # pylint: disable=g-import-not-at-top
    method = dataclasses.replace(method, **overrides)
  assert isinstance(method, methods.get_class("ard")) and wd == 2e-4
  s_t, s_f, s_vars = pc.student_pair()
  t_t, teacher = pc.teacher_pair()
  batches = [pc.batch(0), pc.batch(1)]  # two steps: momentum and threaded statistics too
  noises = [[pc.uniform_noise(0)], [pc.uniform_noise(1)]]
  state, metrics = pc.run_kdrobust(method, s_f, s_vars, [teacher], batches, noises,
                                   lr=0.1, weight_decay=wd)
  opt = pc.torch_sgd(s_t, 0.1, weight_decay=wd)
  losses = [torch_ard_step(s_t, t_t, opt, x, y, n[0], steps=steps, **tset)
            for (x, y), n in zip(batches, noises)]
  return state, metrics, losses, s_t


@pytest.mark.parametrize("arg", sorted(CASES))
def test_ard_step_matches_the_code(arg):
  tset, overrides = CASES[arg]
  steps = 10
  state, metrics, losses, s_t = _run(arg, tset, overrides, steps)
  for i, (m, l) in enumerate(zip(metrics, losses)):
    pc.assert_close(m["loss"], l, what=f"loss of step {i}")
  pc.assert_same_state(state, s_t, what=f"ARD {arg}")
  # K + 2 train-mode forwards per step with a train-mode attack, 2 otherwise.
  want = 2 * ((steps + 2) if tset["attack_mode"] == "train" else 2)
  assert pc.bn_train_forward_count(s_t) == want


@pytest.mark.parametrize("what", ["eval_attack", "clean_first"])
def test_the_check_can_fail(what):
  """Attacking in eval mode, or another forward order, does not reproduce the official step."""
  tset = dict(OFFICIAL, attack_mode="eval") if what == "eval_attack" else dict(
      OFFICIAL, clean_first=True)
  state, _, _, s_t = _run("protocol=official", tset, {}, 3)
  with pytest.raises(AssertionError):
    pc.assert_same_state(state, s_t, what=what)

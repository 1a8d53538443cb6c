"""Step parity: CGARD vs a PyTorch transcription of the preprint's equations.

CGARD has **no released code**: the reference below is written from the
preprint (Li et al., "Collaboratively Guided Adversarial Robust Distillation
with Teacher-Favorable Examples", section 2.2 eqs. 7-11, section 2.3 eqs.
12-13, section 3.1), with kdrobust's choices where the text is silent
(student in eval mode during the search, no feasibility check of the start,
``batchmean`` KLs; docs/fidelity.md, CGARD):

    ce0 = CE(T(x), y) per example                          (no grad)
    S.eval();  xs = x + 0.001 n_s;  xt = x + 0.001 n_t        (separate draws, not clamped)
    K times, both gradients at the current pair:
      D = sum_i (KL(p_S(xs) || p_T(xt)) + KL(p_T(xt) || p_S(xs))) / 2
      xs <- clamp(min(max(xs + a sign(dD/dxs), x - eps), x + eps), 0, 1)
      xt~ = clamp(min(max(xt + a sign(dD/dxt), x - eps), x + eps), 0, 1)
      xt <- xt~ where CE(T(xt~), y) <= ce0, else x
    S.train();  s = S(xs);  L = 0.3 KL_bm(T(xt) || s) + 0.7 KL_bm(T(xs) || s)
    SGD(lr, momentum 0.9, weight_decay 2e-4).step()

The kdrobust method is built from ``configs/cifar_cgard.py`` (attack
shortened to ``STEPS`` steps, the config's weight decay); two steps.
Tolerances: :mod:`parity_common` (float64 both sides). Runtime: 20 s of CPU
(user) time alone, imports included (2-core machine at load 8).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import parity_common as pc

STEPS, LR = 5, 0.1
PAPER_WEIGHT_DECAY = 2e-4


def _proj(u, x):
  return torch.min(torch.max(u, x - pc.EPS), x + pc.EPS).clamp(0.0, 1.0)


def torch_cgard_step(s, t, opt, x, y, n_s, n_t, *, steps, alpha=0.7, feasibility=True,
                     reset_to_previous=False, student_grad_only=False):
  """One CGARD step from the equations; the keyword flags plant deviations."""
  x, y, n_s, n_t = pc.nchw(x), torch.tensor(y), pc.nchw(n_s), pc.nchw(n_t)
  s.eval()
  with torch.no_grad():
    ce0 = F.cross_entropy(t(x), y, reduction="none")
  xs, xt = x + 0.001 * n_s, x + 0.001 * n_t
  for _ in range(steps):
    xs, xt = xs.detach().requires_grad_(), xt.detach().requires_grad_()
    with torch.enable_grad():
      ls, lt = F.log_softmax(s(xs), dim=1), F.log_softmax(t(xt), dim=1)
      d = 0.5 * ((ls.exp() * (ls - lt)).sum() + (lt.exp() * (lt - ls)).sum())
    gs, gt = torch.autograd.grad(d, [xs, xt])
    if student_grad_only:  # the teacher point moved by the student's input gradient
      gt = gs
    xs = _proj(xs.detach() + pc.STEP * torch.sign(gs), x)
    cand = _proj(xt.detach() + pc.STEP * torch.sign(gt), x)
    if feasibility:
      with torch.no_grad():
        ok = (F.cross_entropy(t(cand), y, reduction="none") <= ce0)[:, None, None, None]
      xt = torch.where(ok, cand, xt.detach() if reset_to_previous else x)
    else:
      xt = cand
  s.train()
  opt.zero_grad()
  s_adv = s(xs.detach())
  with torch.no_grad():
    t_col, t_adv = t(xt), t(xs)
  kl = torch.nn.KLDivLoss(reduction="batchmean")
  l_col = kl(F.log_softmax(s_adv, dim=1), F.softmax(t_col, dim=1))
  l_adv = kl(F.log_softmax(s_adv, dim=1), F.softmax(t_adv, dim=1))
  loss = (1 - alpha) * l_col + alpha * l_adv
  loss.backward()
  opt.step()
  moved = (xt != x).flatten(1).any(dim=1).double().mean().item()
  return {"loss": loss.item(), "kl_col": l_col.item(), "kl_adv": l_adv.item(),
          "teacher_point_moved": moved}


BATCHES = [pc.batch(0), pc.batch(1)]
# Two starts per step, in the order the method draws them: student, then teacher.
NOISES = [[pc.normal_noise(i), pc.normal_noise(100 + i)] for i in range(2)]


@functools.lru_cache(maxsize=None)
def kdrobust_run():
  method, wd, cfg = pc.config_recipe("cifar_cgard.py", "", steps=STEPS)
  _, s_f, s_vars = pc.student_pair()
  _, teacher = pc.teacher_pair()
  state, metrics = pc.run_kdrobust(method, s_f, s_vars, [teacher], BATCHES, NOISES, lr=LR,
                                   weight_decay=wd, epoch=1, num_epochs=cfg.num_epochs)
  return state, metrics, method, wd


def torch_run(**variant):
  s_t, _, _ = pc.student_pair()
  t_t, _ = pc.teacher_pair()
  opt = pc.torch_sgd(s_t, LR, weight_decay=PAPER_WEIGHT_DECAY)
  ref = [torch_cgard_step(s_t, t_t, opt, x, y, n[0], n[1], steps=STEPS, **variant)
         for (x, y), n in zip(BATCHES, NOISES)]
  return s_t, ref


def assert_matches(state, metrics, s_t, ref, what):
  for i, (m, r) in enumerate(zip(metrics, ref)):
    for k in ("loss", "kl_col", "kl_adv"):
      pc.assert_close(m[k], r[k], what=f"{what}: {k} of step {i}")
    np.testing.assert_equal(float(m["teacher_point_moved"]), r["teacher_point_moved"],
                            err_msg=f"{what}: teacher points moved, step {i}")
  pc.assert_same_state(state, s_t, what=what)


def test_cgard_steps_match_the_equations():
  state, metrics, method, wd = kdrobust_run()
  assert method.attack.bn_mode == "eval" and method.attack.init == "gaussian"
  assert (method.alpha, method.reduction, method.feasibility) == (0.7, "batchmean", True)
  assert wd == PAPER_WEIGHT_DECAY
  s_t, ref = torch_run()
  # The constraint is exercised: some teacher points end feasible, some were reset.
  assert all(0 < r["teacher_point_moved"] < 1 for r in ref), ref
  assert_matches(state, metrics, s_t, ref, "CGARD")
  assert pc.bn_train_forward_count(s_t) == 1 * 2  # S(x_S') per step


@pytest.mark.parametrize("variant", [
    dict(reset_to_previous=True),   # infeasible candidates fall back to x_T''^k, not x
    dict(feasibility=False),        # unconstrained joint search
    dict(student_grad_only=True),   # x_T'' moved by the student's gradient (one shared direction)
    dict(alpha=0.3),                # the two terms' weights swapped
])
def test_planted_deviations_are_detected(variant):
  """The comparison can fail: each deviation from the equations is caught."""
  state, metrics, _, _ = kdrobust_run()
  s_t, ref = torch_run(**variant)
  with pytest.raises(AssertionError):
    assert_matches(state, metrics, s_t, ref, f"planted {variant}")

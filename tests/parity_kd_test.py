"""Step parity: KD (KDIGA's code's ``distill_method='kd'`` baseline) vs a PyTorch transcription.

Transcribed (not copied) from ``RulinShao/AdversariallyRobustDistillation@12e774f
main.py`` (``train``, ``kd`` branch): student in ``train()`` mode, teacher in
``eval()`` mode, clean inputs only::

    t_out = T(x); basic = S(x)
    loss = a tau^2 KLDivLoss()(log_softmax(basic / tau), softmax(t_out / tau))
           + (1 - a) CrossEntropyLoss()(basic, y)
    SGD(lr, momentum 0.9, weight_decay 2e-4).step()

``nn.KLDivLoss()`` is PyTorch's default ``'mean'`` reduction (sum / (B C),
kdrobust's ``elemmean``). The kdrobust method is built from
``configs/cifar_kd.py`` (``protocol=official``, the only one); two steps on two
batches; float64 on both sides, tolerances of :mod:`parity_common` (absolute
1e-9 on parameters and statistics, relative 1e-9 on losses).
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

pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR = 0.1
BATCHES = [pc.batch(0), pc.batch(1)]


def method_from_config(arg: str):
  spec = importlib.util.spec_from_file_location(
      "parity_cfg_cifar_kd", os.path.join(ROOT, "configs", "cifar_kd.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config(arg)
  return methods.from_config(c.method), c.optim.weight_decay


def torch_kd_step(s, t, opt, x, y, *, alpha=0.5, tau=1.0, reduction="mean"):
  x, y = pc.nchw(x), torch.tensor(y)
  s.train()
  opt.zero_grad()
  t_out = t(x)
  basic = s(x)
  kl = F.kl_div(F.log_softmax(basic / tau, dim=1), F.softmax(t_out / tau, dim=1),
                reduction=reduction)
  loss = alpha * tau * tau * kl + (1.0 - alpha) * F.cross_entropy(basic, y)
  loss.backward()
  opt.step()
  return float(loss.detach())


# config arg -> the official code's --temp (its --alpha stays 0.5)
CASES = {"protocol=official": 1.0, "protocol=official,temperature=4": 4.0}


@functools.lru_cache(maxsize=None)
def _kdrobust(arg):
  method, wd = method_from_config(arg)
  assert method.name == "kd" and wd == 2e-4
  _, s_f, s_vars = pc.student_pair()
  _, teacher = pc.teacher_pair()
  return pc.run_kdrobust(method, s_f, s_vars, [teacher], BATCHES, [[], []], lr=LR,
                         weight_decay=wd)


def _compare(arg, **plant):
  state, metrics = _kdrobust(arg)
  s_t, _, _ = pc.student_pair()
  t_t, _ = pc.teacher_pair()
  opt = pc.torch_sgd(s_t, LR, weight_decay=2e-4)  # main.py:290
  losses = [torch_kd_step(s_t, t_t, opt, x, y, **dict({"tau": CASES[arg]}, **plant))
            for x, y in BATCHES]
  for i, (m, l) in enumerate(zip(metrics, losses)):
    pc.assert_close(m["loss"], l, what=f"kd {arg}: loss of step {i}")
  pc.assert_same_state(state, s_t, what=f"kd {arg}")
  assert pc.bn_train_forward_count(s_t) == 2  # one train-mode forward per step


@pytest.mark.parametrize("arg", sorted(CASES))
def test_kd_step_matches_official(arg):
  _compare(arg)


@pytest.mark.parametrize("plant", [{"reduction": "batchmean"}, {"alpha": 0.6}])
def test_the_comparison_can_fail(plant):
  with pytest.raises(AssertionError):
    _compare("protocol=official", **plant)

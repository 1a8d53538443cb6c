"""Step parity: RSLAD (official and IGDM protocols) vs a PyTorch transcription of the official step.

Transcribed (not copied) from ``zibojia/RSLAD@c40e04f`` ``rslad_loss.py``
(``rslad_inner_loss``) and ``resnet18_rslad_cifar10.py`` /
``resnet18_rslad_cifar100.py`` (the training loop):

    t = T(x)                                      (eval, no grad)
    S.eval()
    x_0 = x + 0.001 n,  n ~ N(0, I)                (not clamped)
    x_{k+1} = clamp(min(max(x_k + a sign(grad sum KL(softmax(t) || softmax(S(x_k)))), x - eps),
                        x + eps), 0, 1)             (K steps; exact KLDivLoss, summed)
    S.train();  adv = S(clamp(x_K, 0, 1));  nat = S(x)          (two train-mode forwards)
    kl(a, b) = -a b + b log(b + 1e-5)             (element-wise, b = softmax(t))
    CIFAR-10:  L = 5/6 mean(kl(log_softmax(adv), b)) + 1/6 mean(kl(log_softmax(nat), b))
    CIFAR-100: the same with log(softmax(.)) and each mean multiplied by 10
    SGD(lr, momentum 0.9, weight_decay 2e-4).step()

The IGDM protocol's base RSLAD (``Xavaitron/VLM_Distillation@a22ed64
ICLR_IGDM/rslad_cifar100.py``) runs exactly the CIFAR-100 step (weight decay
``args.wd`` = 2e-4). Each kdrobust method is built from the shipped config
(``configs/cifar_rslad.py:protocol=...,dataset=...``) with the attack shortened
to ``STEPS`` steps, and the weight decay is the config's, so the test proves
the recipe. Two steps (momentum, threaded statistics), 100-class nets for
CIFAR-100 (the x10 depends on C). Tolerances: :mod:`parity_common` (float64
on both sides: parameters and statistics ``1e-9`` absolute, losses ``1e-9``
relative).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from kdrobust import methods
import parity_common as pc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, LR = 10, 0.1
CLASSES = {"cifar10": 10, "cifar100": 100}

# (protocol, dataset) -> the official code's weight decay and which script's step.
CASES = {
    ("official", "cifar10"): dict(weight_decay=2e-4, cifar100=False),
    ("official", "cifar100"): dict(weight_decay=2e-4, cifar100=True),
}
# Settings whose official step is one of CASES' (same script step, same weight
# decay): the config must build the same method and weight decay, so the
# parity run of the case covers them (one run per distinct step keeps the
# file fast). IGDM's rslad_cifar100.py = RSLAD's CIFAR-100 step, wd args.wd = 2e-4.
SAME_STEP = {("igdm", "cifar100"): ("official", "cifar100")}


def load_config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(f"parity_rslad_{name}",
                                                os.path.join(ROOT, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def nets(num_classes: int):
  """Student (train mode) and frozen teacher, torch and kdrobust twins."""
  s_t = pc.TorchNet(num_classes=num_classes, seed=0).train()
  t_t = pc.TorchNet(widths=(6, 8), num_classes=num_classes, seed=7).eval()
  for p in t_t.parameters():
    p.requires_grad_(False)
  teacher = (pc.FlaxNet(widths=(6, 8), num_classes=num_classes), pc.flax_variables(t_t))
  return s_t, pc.FlaxNet(num_classes=num_classes), pc.flax_variables(s_t), t_t, teacher


def torch_rslad_step(s, t, opt, x, y, n, *, steps, cifar100, log_eps=1e-5,
                     nat_first=False, attack_mode="eval"):
  """One official RSLAD step on torch nets; returns the loss.

  ``nat_first`` and ``attack_mode='train'`` are planted deviations (the test
  checks that they are detected).
  """
  del y  # RSLAD uses no labels
  x, n = pc.nchw(x), pc.nchw(n)
  with torch.no_grad():
    t_logits = t(x)
  s.train() if attack_mode == "train" else s.eval()
  target = F.softmax(t_logits, dim=1)
  objective = lambda u: torch.sum(F.kl_div(F.log_softmax(s(u), dim=1), target, reduction="none"))
  xa = pc.torch_pgd(objective, x, x.detach() + 0.001 * n, steps=steps)
  s.train()
  xa = torch.clamp(xa, 0.0, 1.0).detach()
  opt.zero_grad()
  if nat_first:
    nat = s(x)
    adv = s(xa)
  else:
    adv = s(xa)
    nat = s(x)
  b = F.softmax(t_logits.detach(), dim=1)
  kl = lambda a: -a * b + torch.log(b + log_eps) * b
  if cifar100:
    l1 = 10 * torch.mean(kl(torch.log(F.softmax(adv, dim=1))))
    l2 = 10 * torch.mean(kl(torch.log(F.softmax(nat, dim=1))))
  else:
    l1 = torch.mean(kl(F.log_softmax(adv, dim=1)))
    l2 = torch.mean(kl(F.log_softmax(nat, dim=1)))
  loss = 5 / 6.0 * l1 + 1 / 6.0 * l2
  loss.backward()
  opt.step()
  return float(loss.detach())


def batches(num_classes):
  return [pc.batch(0, num_classes=num_classes), pc.batch(1, num_classes=num_classes)]


NOISES = [[pc.normal_noise(0)], [pc.normal_noise(1)]]


@functools.lru_cache(maxsize=None)
def kdrobust_run(protocol: str, dataset: str):
  """Two kdrobust steps of the config's method; returns ``(state, metrics, method, wd)``."""
  cfg = load_config("cifar_rslad", f"protocol={protocol},dataset={dataset}")
  method = methods.from_config(cfg.method)
  method = dataclasses.replace(method, attack=dataclasses.replace(method.attack, steps=STEPS))
  wd = float(cfg.optim.weight_decay)
  c = CLASSES[dataset]
  _, s_f, s_vars, _, teacher = nets(c)
  state, metrics = pc.run_kdrobust(method, s_f, s_vars, [teacher], batches(c), NOISES,
                                   lr=LR, weight_decay=wd, num_epochs=cfg.num_epochs)
  return state, metrics, method, wd


def torch_run(protocol, dataset, **variant):
  """Two official steps from the same initial weights; returns ``(student, losses)``."""
  case = CASES[(protocol, dataset)]
  c = CLASSES[dataset]
  s_t, _, _, t_t, _ = nets(c)
  opt = pc.torch_sgd(s_t, LR, weight_decay=case["weight_decay"])
  losses = [torch_rslad_step(s_t, t_t, opt, x, y, n[0], steps=STEPS, cifar100=case["cifar100"],
                             **variant)
            for (x, y), n in zip(batches(c), NOISES)]
  return s_t, losses


def assert_matches(state, metrics, s_t, losses, what):
  for i, (m, l) in enumerate(zip(metrics, losses)):
    pc.assert_close(m["loss"], l, what=f"{what}: loss of step {i}")
  pc.assert_same_state(state, s_t, what=what)


@pytest.mark.parametrize("protocol,dataset", sorted(CASES))
def test_rslad_step_matches_official(protocol, dataset):
  state, metrics, method, wd = kdrobust_run(protocol, dataset)
  assert method.attack.bn_mode == "eval" and method.attack.init == "gaussian"
  assert wd == CASES[(protocol, dataset)]["weight_decay"], "config weight decay != the code's"
  s_t, losses = torch_run(protocol, dataset)
  assert_matches(state, metrics, s_t, losses, f"RSLAD {protocol} {dataset}")
  # Two train-mode forwards per step (S(x'), S(x)); the attack runs in eval mode.
  assert pc.bn_train_forward_count(s_t) == 2 * 2


@pytest.mark.parametrize("setting,case", sorted(SAME_STEP.items()))
def test_other_protocols_build_a_tested_step(setting, case):
  """The IGDM protocol's RSLAD step is RSLAD's own: same method, same weight decay."""
  cfgs = [load_config("cifar_rslad", f"protocol={p},dataset={d}") for p, d in (setting, case)]
  built = [methods.from_config(c.method) for c in cfgs]
  assert built[0] == built[1], (setting, built)
  assert [float(c.optim.weight_decay) for c in cfgs] == [CASES[case]["weight_decay"]] * 2


@pytest.mark.parametrize("variant", [
    dict(nat_first=True),        # S(x) before S(x'): other running statistics
    dict(log_eps=0.0),           # the exact KL: other loss value (same gradient)
    dict(attack_mode="train"),   # a train-mode attack: other x' and statistics
])
def test_planted_deviations_are_detected(variant):
  """The comparison can fail: each deviation from the official step is caught."""
  state, metrics, _, _ = kdrobust_run("official", "cifar10")
  s_t, losses = torch_run("official", "cifar10", **variant)
  with pytest.raises(AssertionError):
    assert_matches(state, metrics, s_t, losses, f"planted {variant}")


def test_cifar100_scale_is_detected():
  """The CIFAR-100 x10 matters: the CIFAR-10 reduction on 100 classes does not match."""
  state, metrics, _, _ = kdrobust_run("official", "cifar100")
  s_t, _, _, t_t, _ = nets(100)
  opt = pc.torch_sgd(s_t, LR, weight_decay=2e-4)
  losses = [torch_rslad_step(s_t, t_t, opt, x, y, n[0], steps=STEPS, cifar100=False)
            for (x, y), n in zip(batches(100), NOISES)]
  with pytest.raises(AssertionError):
    assert_matches(state, metrics, s_t, losses, "CIFAR-100 without x10")

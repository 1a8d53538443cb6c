"""Step parity: AdaAD and AdaIAD (official and IGDM protocols) vs PyTorch transcriptions.

Transcribed (not copied) from ``boyellow/AdaAD@9e5c6e5`` ``AT_helper.py``
(``adaad_inner_loss``) and ``main.py`` (``train``, branches ``AdaAD`` and
``AdaAD_with_IAD1``):

    S.eval(); T.eval()
    x_0 = x + 0.001 n                                   (not clamped)
    x_{k+1} = clamp(min(max(x_k + a sign(grad sum KL(softmax(T(x_k)) || softmax(S(x_k)))),
                            x - eps), x + eps), 0, 1)   (gradient through BOTH nets)
    S.train()
    AdaAD:   ori = S(x); adv = S(x'); t_ori = T(x); t_adv = T(x')   (no grad)
             CIFAR-10:  kl = nn.KLDivLoss()  (mean over B*C)
             CIFAR-100: kl = (1/B) sum KLDivLoss(reduce=False)
             L = AdaAD_alpha kl(adv, t_adv) + (1 - AdaAD_alpha) kl(ori, t_ori)
    AdaIAD:  ori = S(x); adv = S(x'); guide = t = T(x')
             epoch >= IAD_begin (0-indexed loop):
               Alpha_i = softmax(guide)_i[y_i]^beta   (.item())
               L = a tau^2 (1/B) sum KL(adv/tau, t/tau) + a (1/B) sum (1 - Alpha) KL(adv, S(x))
                   + (1 - a) CE(S(x), y)
             else: L = a tau^2 (1/B) sum KL(adv/tau, t/tau) + (1 - a) CE(S(x), y)
    SGD(lr, momentum 0.9, weight_decay 5e-4).step()

The IGDM protocol's base AdaAD (``Xavaitron/VLM_Distillation@a22ed64
ICLR_IGDM/adaad_cifar100.py``) runs the same step with the ``(1/B) sum``
reduction (docs/fidelity.md, erratum E4; also ``HongsinLee/saad adaad.py``) and weight decay
5e-4 (hard-coded there); it has no CIFAR-10 script, so IGDM's CIFAR-10 setting
is that step on 10 classes. Settings with the step of a tested case
(``SAME_STEP``) must build the same method and weight decay. ``--mixture`` is
read only in ``main.py``'s ``Plain_Madry`` branch: the AdaAD step with
``--mixture`` is the AdaAD step, mixed by ``--AdaAD_alpha`` (the
``alpha_mixture`` case).

Each kdrobust method is built from ``configs/cifar_adaad.py`` (attack shortened
to ``STEPS`` steps, the config's weight decay). Two steps per case (momentum,
threaded statistics); AdaIAD's two steps run in epochs 60 and 61 (1-indexed),
the last without and the first with its introspection term. 100-class nets
for CIFAR-100. Tolerances: :mod:`parity_common` (float64 on both sides).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os

import pytest
import torch
from torch import nn as tnn
import torch.nn.functional as F

from kdrobust import methods
import parity_common as pc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, LR = 10, 0.1
CLASSES = {"cifar10": 10, "cifar100": 100}
OFFICIAL_WEIGHT_DECAY = 5e-4  # main.py --weight_decay; adaad_cifar100.py hard-codes it too

# name -> (config arg, method overrides, torch step settings, first epoch (1-indexed)).
CASES = {
    "adaad-official-cifar10": ("protocol=official,dataset=cifar10", {},
                               dict(method="adaad", reduction="elemmean"), 1),
    "adaad-igdm-cifar100": ("protocol=igdm,dataset=cifar100", {},
                            dict(method="adaad", reduction="batchmean"), 1),
    # --AdaAD_alpha 0.5 (with or without --mixture, which the AdaAD branch never reads).
    "adaad-alpha_mixture-cifar10": ("protocol=official,dataset=cifar10",
                                    {"alpha": 0.5},
                                    dict(method="adaad", reduction="elemmean", alpha=0.5), 1),
    # AdaIAD over epochs 60 (term off) and 61 (term on).
    "adaiad-official-cifar10": ("protocol=official,method=adaiad,dataset=cifar10", {},
                                dict(method="adaiad"), 60),
}

# Settings whose official step is a CASES one (one run per distinct step keeps
# the file fast): the config must build the same method and weight decay.
# AdaAD's CIFAR-100 step = IGDM's adaad_cifar100.py step (batchmean, 5e-4);
# IGDM on CIFAR-10 = that step on 10 classes (batchmean does not see C);
# AdaIAD's step is the same under both protocols and on both datasets.
_ADAIAD = "protocol=official,method=adaiad,dataset=cifar10"
SAME_STEP = {
    "protocol=official,dataset=cifar100": "protocol=igdm,dataset=cifar100",
    "protocol=igdm,dataset=cifar10": "protocol=igdm,dataset=cifar100",
    "protocol=official,method=adaiad,dataset=cifar100": _ADAIAD,
    "protocol=igdm,method=adaiad,dataset=cifar10": _ADAIAD,
    "protocol=igdm,method=adaiad,dataset=cifar100": _ADAIAD,
}


def load_config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(f"parity_adaad_{name}",
                                                os.path.join(ROOT, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def classes(case: str) -> int:
  return CLASSES[case.rsplit("-", 1)[1]]


def nets(num_classes: int):
  """Student (train mode) and frozen teacher, torch and kdrobust twins."""
  s_t = pc.TorchNet(num_classes=num_classes, seed=0).train()
  t_t = pc.TorchNet(widths=(6, 8), num_classes=num_classes, seed=7).eval()
  for p in t_t.parameters():
    p.requires_grad_(False)
  teacher = (pc.FlaxNet(widths=(6, 8), num_classes=num_classes), pc.flax_variables(t_t))
  return s_t, pc.FlaxNet(num_classes=num_classes), pc.flax_variables(s_t), t_t, teacher


def torch_adaad_inner(s, t, x, n, *, steps, eps=pc.EPS, step=pc.STEP, attack_mode="eval",
                      detach_teacher=False):
  """``adaad_inner_loss``: KL(T(x') || S(x')) summed, gradient through both nets.

  ``attack_mode='train'`` and ``detach_teacher`` plant deviations.
  """
  s.train() if attack_mode == "train" else s.eval()
  t.eval()
  crit = tnn.KLDivLoss(reduction="none")
  xa = x.detach() + 0.001 * n
  for _ in range(steps):
    xa.requires_grad_()
    with torch.enable_grad():
      t_out = t(xa.detach() if detach_teacher else xa)
      loss = torch.sum(crit(F.log_softmax(s(xa), dim=1), F.softmax(t_out, dim=1)))
    g = torch.autograd.grad(loss, [xa])[0]
    xa = xa.detach() + step * torch.sign(g.detach())
    xa = torch.min(torch.max(xa, x - eps), x + eps)
    xa = torch.clamp(xa, 0.0, 1.0)
  s.train()
  return torch.clamp(xa, 0.0, 1.0).detach()


def kl_red(student_logits, teacher_logits, reduction):
  if reduction == "elemmean":  # nn.KLDivLoss() (reduction='mean'), main.py:342-345
    return tnn.KLDivLoss(reduction="mean")(F.log_softmax(student_logits, dim=1),
                                           F.softmax(teacher_logits, dim=1))
  return (1 / len(student_logits)) * torch.sum(tnn.KLDivLoss(reduction="none")(
      F.log_softmax(student_logits, dim=1), F.softmax(teacher_logits, dim=1)))


def torch_adaad_step(s, t, opt, x, y, n, epoch0, *, steps, reduction, alpha=1.0,
                     adv_first=False, **attack):
  """One official AdaAD step (``main.py`` branch ``AdaAD``); returns the loss."""
  del y, epoch0
  x, n = pc.nchw(x), pc.nchw(n)
  xa = torch_adaad_inner(s, t, x, n, steps=steps, **attack)
  s.train()
  opt.zero_grad()
  if adv_first:
    adv = s(xa)
    ori = s(x)
  else:
    ori = s(x)
    adv = s(xa)
  with torch.no_grad():
    t.eval()
    t_ori, t_adv = t(x), t(xa)
  loss = alpha * kl_red(adv, t_adv, reduction) + (1 - alpha) * kl_red(ori, t_ori, reduction)
  loss.backward()
  opt.step()
  return float(loss.detach())


def torch_adaiad_step(s, t, opt, x, y, n, epoch0, *, steps, temp=30.0, begin=60, a=1.0,
                      beta=0.1, **attack):
  """One official AdaIAD step (``main.py`` branch ``AdaAD_with_IAD1``); ``epoch0`` 0-indexed."""
  x, y, n = pc.nchw(x), torch.tensor(y), pc.nchw(n)
  opt.zero_grad()
  xa = torch_adaad_inner(s, t, x, n, steps=steps, **attack)
  s.train()
  ori = s(x)  # only for the code's accuracy print; moves the running statistics
  del ori
  adv = s(xa)
  alpha_w = torch.ones(len(x), dtype=torch.float64)
  guide = t(xa)
  teacher_outputs = t(xa)
  kl = tnn.KLDivLoss(reduction="none")
  xent = tnn.CrossEntropyLoss()
  b = len(adv)
  first = a * temp * temp * (1 / b) * torch.sum(
      kl(F.log_softmax(adv / temp, dim=1), F.softmax(teacher_outputs / temp, dim=1)).sum(dim=1))
  if epoch0 >= begin:
    for pp in range(b):
      alpha_w[pp] = F.softmax(guide, dim=1)[pp][y[pp].item()].pow(beta).item()
    intro = a * (1 / b) * torch.sum(
        kl(F.log_softmax(adv, dim=1), F.softmax(s(x), dim=1)).sum(dim=1).mul(1 - alpha_w))
    loss = first + intro + (1.0 - a) * xent(s(x), y)
  else:
    loss = first + (1.0 - a) * xent(s(x), y)
  loss.backward()
  opt.step()
  return float(loss.detach())


STEP_FNS = {"adaad": torch_adaad_step, "adaiad": torch_adaiad_step}


def batches(num_classes):
  return [pc.batch(0, num_classes=num_classes), pc.batch(1, num_classes=num_classes)]


NOISES = [[pc.normal_noise(0)], [pc.normal_noise(1)]]


@functools.lru_cache(maxsize=None)
def kdrobust_run(case: str):
  """Two kdrobust steps of the config's method; returns ``(state, metrics, method, wd)``."""
  arg, overrides, _, first_epoch = CASES[case]
  cfg = load_config("cifar_adaad", arg)
  method = methods.from_config(cfg.method)
  method = dataclasses.replace(method, attack=dataclasses.replace(method.attack, steps=STEPS),
                               **overrides)
  wd = float(cfg.optim.weight_decay)
  c = classes(case)
  _, s_f, s_vars, _, teacher = nets(c)
  state, metrics = pc.run_kdrobust(method, s_f, s_vars, [teacher], batches(c), NOISES,
                                   lr=LR, weight_decay=wd, epoch=first_epoch,
                                   num_epochs=cfg.num_epochs)
  return state, metrics, method, wd


def torch_run(case: str, **variant):
  """Two official steps from the same initial weights; returns ``(student, losses)``."""
  _, _, tset, first_epoch = CASES[case]
  tset = dict(tset, **variant)
  step_fn = STEP_FNS[tset.pop("method")]
  c = classes(case)
  s_t, _, _, t_t, _ = nets(c)
  opt = pc.torch_sgd(s_t, LR, weight_decay=OFFICIAL_WEIGHT_DECAY)
  losses = [step_fn(s_t, t_t, opt, x, y, n[0], first_epoch - 1 + i, steps=STEPS, **tset)
            for i, ((x, y), n) in enumerate(zip(batches(c), NOISES))]
  return s_t, losses


def assert_matches(state, metrics, s_t, losses, what):
  for i, (m, l) in enumerate(zip(metrics, losses)):
    pc.assert_close(m["loss"], l, what=f"{what}: loss of step {i}")
  pc.assert_same_state(state, s_t, what=what)


@pytest.mark.parametrize("case", sorted(CASES))
def test_step_matches_official(case):
  state, metrics, method, wd = kdrobust_run(case)
  assert method.attack.bn_mode == "eval" and method.attack.init == "gaussian"
  assert wd == OFFICIAL_WEIGHT_DECAY, "config weight decay != the code's"
  s_t, losses = torch_run(case)
  assert_matches(state, metrics, s_t, losses, case)
  if method.name == "adaiad":
    # 3 train-mode forwards before begin (S(x), S(x'), S(x) for the CE), 4 after.
    assert pc.bn_train_forward_count(s_t) == 3 + 4
    assert [float(m["introspection_active"]) for m in metrics] == [0.0, 1.0]
  else:
    assert pc.bn_train_forward_count(s_t) == 2 * 2  # S(x), S(x')


@pytest.mark.parametrize("setting,tested", sorted(SAME_STEP.items()))
def test_other_settings_build_a_tested_step(setting, tested):
  cfgs = [load_config("cifar_adaad", a) for a in (setting, tested)]
  built = [methods.from_config(c.method) for c in cfgs]
  assert built[0] == built[1], (setting, built)
  assert [float(c.optim.weight_decay) for c in cfgs] == [OFFICIAL_WEIGHT_DECAY] * 2


@pytest.mark.parametrize("case,variant", [
    ("adaad-official-cifar10", dict(detach_teacher=True)),   # student-only attack gradient
    ("adaad-official-cifar10", dict(attack_mode="train")),   # train-mode attack
    ("adaad-official-cifar10", dict(adv_first=True)),        # S(x') before S(x)
    ("adaad-official-cifar10", dict(reduction="batchmean")),  # CIFAR-10 needs elemmean
    ("adaad-igdm-cifar100", dict(reduction="elemmean")),     # E4: IGDM needs batchmean
    ("adaiad-official-cifar10", dict(begin=59)),             # the term one epoch early
    ("adaiad-official-cifar10", dict(temp=1.0)),             # tau = 1 instead of --temp 30
])
def test_planted_deviations_are_detected(case, variant):
  """The comparison can fail: each deviation from the official step is caught."""
  state, metrics, _, _ = kdrobust_run(case)
  s_t, losses = torch_run(case, **variant)
  with pytest.raises(AssertionError):
    assert_matches(state, metrics, s_t, losses, f"planted {variant}")


def test_mixture_is_pgd_at_not_adaad():
  """main.py's ``--mixture`` acts only in ``Plain_Madry`` (PGD-AT's ``mixture_alpha``).

  The AdaAD branch mixes by ``--AdaAD_alpha`` (``alpha``, the
  ``adaad-alpha_mixture-cifar10`` case); AdaAD has no inert ``mixture`` field.
  """
  with pytest.raises(ValueError, match="mixture"):
    methods.make("adaad", mixture=True)
  assert "mixture_alpha" in methods.default_hparams("pgd_at")

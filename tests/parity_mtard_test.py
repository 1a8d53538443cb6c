"""Step parity: MTARD (official protocol) vs a PyTorch transcription of the official step.

Transcribed (not copied) from ``zhaoshiji123/MTARD@6480a1b`` ``mtard/mtard_loss.py``
(``mtard_inner_loss_ce``) and ``mtard/mtard_resnet18_cifar10.py`` /
``mtard_resnet18_cifar100.py`` (the training loop), with the weights' state
carried across steps:

    t_nat = T_nat(x)                                  (eval, no grad)
    S.eval()
    x_0 = x + 0.001 n                                 (not clamped)
    x_{k+1} = clamp(min(max(x_k + a sign(grad CE_mean(S(x_k), y)), x - eps), x + eps), 0, 1)
    S.train();  adv = S(clamp(x_K, 0, 1));  t_adv = T_adv(x') (no grad);  nat = S(x)
    kl(a, b) = -a b + b log(b + 1e-5)
    L_adv = s mean(kl(log_softmax(adv), softmax(t_adv)))
    L_nat = s mean(kl(log_softmax(nat), softmax(t_nat)))
                                                      (s = 1 on CIFAR-10, 10 on CIFAR-100)
    first batch of the run: L_adv^0, L_nat^0 = L_adv.item(), L_nat.item()
    r_a = (L_adv / L_adv^0)^1,  r_n = (L_nat / L_nat^0)^1
    w_nat <- w_nat - lr_w (w_nat - r_n / (r_a + r_n));  w_adv = 1 - w_nat      (start 0.5 / 0.5)
    (w_adv L_adv + w_nat L_nat).backward();  SGD(lr, momentum 0.9, weight_decay 2e-4).step()
    end of epochs 215, 260, 285: lr *= 0.1 and lr_w *= 0.1   (lr_w = 0.025)

Two steps: the first records ``L^0`` (weights stay 0.5), the second moves
the weights. The CIFAR-100 case runs its two steps in epochs 215 and 216, so
``lr_w`` decays between them (the optimizer's own lr decay belongs to the
config's schedule: both sides keep the lr constant here). The kdrobust method
is built from ``configs/cifar_mtard.py`` (attack shortened to ``STEPS``
steps, the config's weight decay). Teacher 0 = ``T_adv``, teacher 1 =
``T_nat``. Tolerances: :mod:`parity_common` (float64 both sides; the weights
``w_nat`` and the two loss terms also ``1e-9`` relative).
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
# dataset -> the epoch of the first step (the CIFAR-100 case straddles the lr_w decay).
FIRST_EPOCH = {"cifar10": 1, "cifar100": 215}
OFFICIAL_WEIGHT_DECAY = 2e-4
DECAY_EPOCHS = (215, 260, 285)


def load_config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(f"parity_mtard_{name}",
                                                os.path.join(ROOT, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def frozen(net):
  for p in net.parameters():
    p.requires_grad_(False)
  return net.eval()


def nets(num_classes: int):
  """Student (train mode), T_adv and T_nat (frozen): torch nets and kdrobust twins."""
  s_t = pc.TorchNet(num_classes=num_classes, seed=0).train()
  t_adv = frozen(pc.TorchNet(widths=(6, 8), num_classes=num_classes, seed=7))
  t_nat = frozen(pc.TorchNet(widths=(5, 6), num_classes=num_classes, seed=11))
  teachers = [(pc.FlaxNet(widths=(6, 8), num_classes=num_classes), pc.flax_variables(t_adv)),
              (pc.FlaxNet(widths=(5, 6), num_classes=num_classes), pc.flax_variables(t_nat))]
  return s_t, pc.FlaxNet(num_classes=num_classes), pc.flax_variables(s_t), t_adv, t_nat, teachers


class OfficialMTARD:
  """The official loop's state (``weight``, ``init_loss_*``, ``weight_learn_rate``) and step.

  ``log_eps``, ``decay_weight_lr`` and ``weights_after_loss`` plant deviations
  (the test checks that they are detected).
  """

  def __init__(self, s, t_adv, t_nat, *, cifar100, log_eps=1e-5, decay_weight_lr=True,
               weights_after_loss=False):
    self.s, self.t_adv, self.t_nat = s, t_adv, t_nat
    self.opt = pc.torch_sgd(s, LR, weight_decay=OFFICIAL_WEIGHT_DECAY)
    self.scale = 10.0 if cifar100 else 1.0
    self.log_eps, self.decay_weight_lr = log_eps, decay_weight_lr
    self.weights_after_loss = weights_after_loss
    self.weight = {"adv_loss": 1 / 2.0, "nat_loss": 1 / 2.0}
    self.init_loss_nat = self.init_loss_adv = None
    self.weight_learn_rate = 0.025

  def step(self, x, y, n, *, steps):
    s = self.s
    x, y, n = pc.nchw(x), torch.tensor(y), pc.nchw(n)
    s.train()
    self.opt.zero_grad()
    with torch.no_grad():
      t_nat_logits = self.t_nat(x)
    s.eval()
    xa = pc.torch_pgd(lambda u: F.cross_entropy(s(u), y), x, x.detach() + 0.001 * n, steps=steps)
    s.train()
    xa = torch.clamp(xa, 0.0, 1.0).detach()
    self.opt.zero_grad()
    s_adv = s(xa)
    with torch.no_grad():
      t_adv_logits = self.t_adv(xa)
    s.train()
    s_nat = s(x)
    kl = lambda a, b: -a * b + torch.log(b + self.log_eps) * b
    l1 = self.scale * torch.mean(kl(F.log_softmax(s_adv, dim=1), F.softmax(t_adv_logits, dim=1)))
    l2 = self.scale * torch.mean(kl(F.log_softmax(s_nat, dim=1), F.softmax(t_nat_logits, dim=1)))
    if self.init_loss_nat is None:
      self.init_loss_nat = l2.item()
    if self.init_loss_adv is None:
      self.init_loss_adv = l1.item()
    r_a = (l1.item() / self.init_loss_adv) ** 1
    r_n = (l2.item() / self.init_loss_nat) ** 1
    old = dict(self.weight)
    w = self.weight
    w["nat_loss"] = w["nat_loss"] - self.weight_learn_rate * (w["nat_loss"] - r_n / (r_a + r_n))
    w["adv_loss"] = 1 - w["nat_loss"]
    use = old if self.weights_after_loss else w
    total = use["adv_loss"] * l1 + use["nat_loss"] * l2
    total.backward()
    self.opt.step()
    return {"loss": total.item(), "kl_adv": l1.item(), "kl_nat": l2.item(),
            "w_nat": w["nat_loss"]}

  def end_of_epoch(self, epoch):
    if epoch in DECAY_EPOCHS and self.decay_weight_lr:
      self.weight_learn_rate *= 0.1


def batches(num_classes):
  return [pc.batch(0, num_classes=num_classes), pc.batch(1, num_classes=num_classes)]


NOISES = [[pc.normal_noise(0)], [pc.normal_noise(1)]]


@functools.lru_cache(maxsize=None)
def kdrobust_run(dataset: str):
  """Two kdrobust steps of the config's method; returns ``(state, metrics, method, wd)``."""
  cfg = load_config("cifar_mtard", f"dataset={dataset}")
  method = methods.from_config(cfg.method)
  method = dataclasses.replace(method, attack=dataclasses.replace(method.attack, steps=STEPS))
  wd = float(cfg.optim.weight_decay)
  c = CLASSES[dataset]
  _, s_f, s_vars, _, _, teachers = nets(c)
  state, metrics = pc.run_kdrobust(method, s_f, s_vars, teachers, batches(c), NOISES,
                                   lr=LR, weight_decay=wd, epoch=FIRST_EPOCH[dataset],
                                   num_epochs=cfg.num_epochs)
  return state, metrics, method, wd


def torch_run(dataset, **variant):
  """Two official steps (one per epoch) from the same initial weights."""
  c = CLASSES[dataset]
  s_t, _, _, t_adv, t_nat, _ = nets(c)
  off = OfficialMTARD(s_t, t_adv, t_nat, cifar100=dataset == "cifar100", **variant)
  out = []
  for i, ((x, y), n) in enumerate(zip(batches(c), NOISES)):
    out.append(off.step(x, y, n[0], steps=STEPS))
    off.end_of_epoch(FIRST_EPOCH[dataset] + i)
  return s_t, out


def assert_matches(state, metrics, s_t, ref, what):
  for i, (m, r) in enumerate(zip(metrics, ref)):
    for k in ("loss", "kl_adv", "kl_nat", "w_nat"):
      pc.assert_close(m[k], r[k], what=f"{what}: {k} of step {i}")
  pc.assert_same_state(state, s_t, what=what)


@pytest.mark.parametrize("dataset", sorted(CLASSES))
def test_mtard_steps_match_official(dataset):
  state, metrics, method, wd = kdrobust_run(dataset)
  assert method.attack.bn_mode == "eval" and method.attack.init == "gaussian"
  assert wd == OFFICIAL_WEIGHT_DECAY, "config weight decay != the code's"
  s_t, ref = torch_run(dataset)
  assert ref[0]["w_nat"] == 0.5 and ref[1]["w_nat"] != 0.5  # the update is exercised
  assert_matches(state, metrics, s_t, ref, f"MTARD {dataset}")
  pc.assert_close(state.method_state["w_nat"], ref[1]["w_nat"], what="carried w_nat")
  pc.assert_close(state.method_state["init_adv"], ref[0]["kl_adv"], what="carried L_adv^0")
  pc.assert_close(state.method_state["init_nat"], ref[0]["kl_nat"], what="carried L_nat^0")
  want_lr_w = [0.025 * 0.1 ** sum(e > m for m in DECAY_EPOCHS)
               for e in (FIRST_EPOCH[dataset], FIRST_EPOCH[dataset] + 1)]
  pc.assert_close([m["weight_lr"] for m in metrics], want_lr_w, what="lr_w")
  assert pc.bn_train_forward_count(s_t) == 2 * 2  # S(x'), S(x) per step


@pytest.mark.parametrize("dataset,variant", [
    ("cifar10", dict(log_eps=0.0)),               # exact KL: other loss ratios, other weights
    ("cifar10", dict(weights_after_loss=True)),   # the loss with last step's weights
    ("cifar100", dict(decay_weight_lr=False)),    # lr_w not decayed after epoch 215
])
def test_planted_deviations_are_detected(dataset, variant):
  """The comparison can fail: each deviation from the official step is caught."""
  state, metrics, _, _ = kdrobust_run(dataset)
  s_t, ref = torch_run(dataset, **variant)
  with pytest.raises(AssertionError):
    assert_matches(state, metrics, s_t, ref, f"planted {variant}")

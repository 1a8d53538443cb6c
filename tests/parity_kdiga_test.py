"""Step parity: KDIGA (kdiga, kdiga_rs, kdiga_ard) and its code's ARD baseline vs PyTorch.

Transcribed (not copied) from ``RulinShao/AdversariallyRobustDistillation@12e774f
main.py`` (``AttackPGD.forward``, ``train``). ``XENT`` is the batch-mean CE,
``KLDiv`` PyTorch's default ``nn.KLDivLoss()`` (sum / (B C)), ``||.||`` the
2-norm of the whole ``B x C x H x W`` tensor, ``B = inputs.shape[0]``; every
student forward is in ``train()`` mode, the teacher in ``eval()`` mode.

``kdiga`` (``kdiga_rs``: first ``x <- x + U[-8/255, 8/255]``, not clamped)::

    basic = S(x); t_out = T(x)
    t_grad = grad_x XENT(T(x), y)
    s_grad = grad_x XENT(S(x), y)              (create_graph: double back-prop)
    loss = a tau^2 KLDiv(log_softmax(basic / tau), softmax(t_out / tau))
           + (1 - a) XENT(basic, y) + (gamma / B) ||s_grad - t_grad||

``kdiga_ard``: the train-mode attack of ARD's ``AttackPGD`` (start
``x + U[-eps, eps]`` unclamped, K steps of ``16/255/10``, sum CE), then::

    outputs = S(x_K); t_grad, s_grad at the clean x as above
    loss = a tau^2 KLDiv(log_softmax(outputs / tau), softmax(T(x_K) / tau))
           + (1 - a) XENT(S(x), y) + (gamma / B) ||s_grad - t_grad||

``ard`` (the code's ARD baseline, kdrobust ``ard`` with ``teacher_input='adv'``):
the same attack, ``outputs = S(x_K)``, ``T(x)`` (unused), ``basic = S(x)``,
``loss = a tau^2 KLDiv(outputs, T(x_K)) + (1 - a) XENT(basic, y)``.

SGD(lr, momentum 0.9, weight_decay 2e-4). The kdrobust methods are built from
``configs/cifar_kdiga.py`` (the shipped official recipe; attack steps shrunk to
``STEPS``); two steps on two batches; float64 on both sides, tolerances of
:mod:`parity_common` (absolute 1e-9 on parameters and statistics, relative
1e-9 on losses).
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

# nn.KLDivLoss()'s default reduction ('mean' = sum / (B C)) is what the code runs.
pytestmark = pytest.mark.filterwarnings("ignore:reduction. 'mean' divides")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 5  # attack steps (the recipe's 10, shrunk: the loop is the same)
LR = 0.1
KDIGA_STEP = 16 / 255 / 10  # main.py:38
NOISE_EPS = 8.0 / 255  # main.py:173


def config(name: str, arg: str | None = None):
  """``configs/<name>.py`` built with ``arg``, loaded by path as ml_collections does."""
  spec = importlib.util.spec_from_file_location(f"parity_cfg_{name}",
                                                os.path.join(ROOT, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def method_from_config(name: str, arg: str | None, steps: int = STEPS, **override):
  """``(method, weight decay)`` of a config, with the attack's steps set to ``steps``."""
  c = config(name, arg)
  m = c.method.to_dict()
  m["attack"] = dict(m["attack"], steps=steps)
  m.update(override)
  return methods.from_config(m), c.optim.weight_decay


# ---------------------------------------------------------------- PyTorch side

def torch_attack(s, x, y, u, *, steps, step, eps=pc.EPS):
  """``AttackPGD.forward`` with ``s`` in train mode: returns ``(S(x_K), x_K)``."""
  s.train()
  xa = pc.torch_pgd(lambda v: F.cross_entropy(s(v), y, reduction="sum"), x,
                    x.detach() + eps * u, steps=steps, step=step, eps=eps)  # no clamp at the start
  return s(xa), xa


def input_gradients(s, t, x, y):
  """``(s_grad, t_grad)`` as the code computes them (``s_grad`` keeps its graph)."""
  xg = x.detach().requires_grad_()
  t_grad = torch.autograd.grad(F.cross_entropy(t(xg), y), xg)[0]
  xg.grad = None
  s_grad = torch.autograd.grad(F.cross_entropy(s(xg), y), xg, create_graph=True)[0]
  return s_grad, t_grad


def kl_elemmean(s_logits, t_logits, tau):
  return F.kl_div(F.log_softmax(s_logits / tau, dim=1), F.softmax(t_logits / tau, dim=1),
                  reduction="mean")


def torch_step(variant, s, t, opt, x, y, draws, *, alpha=0.5, tau=1.0, gamma=0.5):
  """One official step of ``distill_method = variant``; returns the loss."""
  x, y = pc.nchw(x), torch.tensor(y)
  draws = [pc.nchw(d) for d in draws]
  s.train()
  opt.zero_grad()
  if variant in ("kdiga", "kdiga_rs"):
    if variant == "kdiga_rs":
      x = x + NOISE_EPS * draws[0]
    basic = s(x)
    t_out = t(x)
    s_grad, t_grad = input_gradients(s, t, x, y)
    loss = (alpha * tau * tau * kl_elemmean(basic, t_out, tau)
            + (1.0 - alpha) * F.cross_entropy(basic, y)
            + gamma / x.shape[0] * (s_grad - t_grad).norm(2))
  elif variant == "kdiga_ard":
    outputs, xa = torch_attack(s, x, y, draws[0], steps=STEPS, step=KDIGA_STEP)
    s_grad, t_grad = input_gradients(s, t, x, y)
    loss = (alpha * tau * tau * kl_elemmean(outputs, t(xa), tau)
            + (1.0 - alpha) * F.cross_entropy(s(x), y)
            + gamma / x.shape[0] * (s_grad - t_grad.detach()).norm(2))
  elif variant == "ard":
    outputs, xa = torch_attack(s, x, y, draws[0], steps=STEPS, step=KDIGA_STEP)
    t(x)  # teacher_outputs: computed, unused
    basic = s(x)
    loss = (alpha * tau * tau * kl_elemmean(outputs, t(xa), tau)
            + (1.0 - alpha) * F.cross_entropy(basic, y))
  else:
    raise ValueError(variant)
  loss.backward()
  opt.step()
  return float(loss.detach())


# ---------------------------------------------------------------- the comparison

# variant: (kdrobust method, weight decay, student train-mode forwards per step)
def _method(variant):
  if variant == "ard":  # the code's ARD baseline: no config of its own
    return methods.make("ard", teacher_input="adv", temperature=1.0, alpha=0.5,
                        reduction="elemmean",
                        attack={"bn_mode": "train", "init": "uniform_unclipped",
                                "step_size": KDIGA_STEP, "steps": STEPS}), 2e-4, STEPS + 2
  method, wd = method_from_config("cifar_kdiga", f"variant={variant}")
  assert method.name == variant
  return method, wd, {"kdiga": 2, "kdiga_rs": 2, "kdiga_ard": STEPS + 3}[variant]


def _noises(variant):
  return [[pc.uniform_noise(i)] if variant != "kdiga" else [] for i in range(2)]


BATCHES = [pc.batch(0), pc.batch(1)]  # two steps: momentum and threaded statistics too


@functools.lru_cache(maxsize=None)
def _kdrobust(variant):
  """kdrobust's two steps (jitted, float64), cached for the planted-bug check."""
  method, wd, n = _method(variant)
  _, s_f, s_vars = pc.student_pair()
  _, teacher = pc.teacher_pair()
  state, metrics = pc.run_kdrobust(method, s_f, s_vars, [teacher], BATCHES, _noises(variant),
                                   lr=LR, weight_decay=wd)
  return state, metrics, n


def _compare(variant, **plant):
  state, metrics, n_forwards = _kdrobust(variant)
  s_t, _, _ = pc.student_pair()
  t_t, _ = pc.teacher_pair()
  opt = pc.torch_sgd(s_t, LR, weight_decay=2e-4)  # main.py:290
  losses = [torch_step(variant, s_t, t_t, opt, x, y, n, **plant)
            for (x, y), n in zip(BATCHES, _noises(variant))]
  for i, (m, l) in enumerate(zip(metrics, losses)):
    pc.assert_close(m["loss"], l, what=f"{variant}: loss of step {i}")
  pc.assert_same_state(state, s_t, what=variant)
  assert pc.bn_train_forward_count(s_t) == 2 * n_forwards


@pytest.mark.parametrize("variant", ["kdiga", "kdiga_rs", "kdiga_ard"])
def test_kdiga_step_matches_official(variant):
  _compare(variant)


def test_kdiga_code_ard_baseline_matches():
  """The code's ``ard`` branch: ARD with the teacher on x' and KDIGA's step 1.6/255."""
  _compare("ard")


@pytest.mark.parametrize("plant", [{"gamma": 0.5 * pc.B}, {"alpha": 0.4}])
def test_the_comparison_can_fail(plant):
  """A wrong gamma normalisation (no 1/B) or alpha on the official side is detected."""
  with pytest.raises(AssertionError):
    _compare("kdiga", **plant)

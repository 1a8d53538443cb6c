"""Step parity: DARHT vs a PyTorch transcription of the official training step.

Transcribed (not copied) from ``bayesomicslab/DARHT@5c0a1ff``
``DARHT_CIFAR_100_stateful_MWU.py`` (``train``, ``cal_kd_loss``) and
``earlystop.py`` (``mtard_inner_loss_ce``). ``e`` is the code's 0-indexed
epoch (``for epoch in range(start_epoch, args.epochs)``):

    model.train()
    data_flag = random.choice([0, 1])                  (the coin, injected here)
    if data_flag == 1:                                  mtard_inner_loss_ce, model.eval():
        x_0 = x + 0.001 N(0, I)                         (no clamp before the first step)
        x_{k+1} = clamp(min(max(x_k + 0.003 sign(grad meanCE(S(x_k), y)), x - eps), x + eps), 0, 1)
        model.train(); x~ = clamp(x_K, 0, 1)            (eps = 0.031, K = 10)
    else: x~ = x
    optimizer.zero_grad()
    out, z = model(x~)                                  (train mode; z = linear1 output, B x K*C)
    ce = CE_mean(out, y)
    if ce > 8: continue                                 (no backward, no step; the forward
                                                         has moved the running statistics)
    for teacher k: t_k = T_k(x~) (no grad)
        D_k = KLDivLoss(batchmean)(log_softmax(z.view(-1, K, C)[:, k]), softmax(t_k))
              or MSELoss()(z.view(-1, K, C)[:, k], t_k)            (--kd_loss mse)
        w_k = exp(-CE_mean(t_k, y).item())                          (a constant)
    kd = sum_k w_k D_k
    loss = ce (e < 50) | ce + kd (50 <= e < 118) | kd (e >= 118)
    loss.backward(); SGD(lr 0.1, momentum 0.9, weight_decay 5e-4).step()

``optimizer.zero_grad()`` is transcribed as ``zero_grad(set_to_none=False)``,
the default of the PyTorch 1.x the authors ran (their ``__pycache__`` holds
CPython 3.6-3.9 files; PyTorch 2.0 changed the default to ``set_to_none=True``).
It matters in the KD-only phase (e >= 118), where the prediction head
``linear2`` gets no gradient: with zeroed gradients SGD still applies weight
decay and momentum to it (as optax does with a zero gradient); with PyTorch 2's
``None`` gradients SGD would skip it and freeze the head.

The code keeps ``D_k`` and ``w_k`` in float32 CPU tensors (``torch.zeros(K)``,
``torch.tensor([...])``): a dtype artefact of running in float32; the
transcription runs the same formulas in float64 (tolerances: see
:mod:`parity_common`). The ViT teachers' resize + normalise is the teachers'
business (kdrobust's ``vit_b(resize_inputs=True)``), not the step's.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdrobust import methods
from kdrobust.methods import darht
import parity_common as pc

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
DARHT_EPS, DARHT_STEP = 0.031, 0.003


def load_config(name, arg):
  spec = importlib.util.spec_from_file_location(f"parity_darht_{name}",
                                                os.path.join(CONFIGS, name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def shipped():
  """Method, lr and weight decay of ``configs/cifar_darht.py`` (defaults: the released script)."""
  c = load_config("cifar_darht", "teachers=public")
  return methods.from_config(c.method), float(c.optim.lr), float(c.optim.weight_decay)


# ---------------------------------------------------------------- PyTorch side

def torch_darht_step(s, teachers, opt, x, y, n, *, coin, epoch0, kd_loss="kl", steps=10,
                     eps=DARHT_EPS, step=DARHT_STEP):
  """One official DARHT step; returns the loss, or ``None`` when the batch is skipped."""
  x, y, n = pc.nchw(x), torch.tensor(y), pc.nchw(n)
  s.train()
  if coin:
    s.eval()
    xa = x.detach() + 0.001 * n
    for _ in range(steps):
      xa.requires_grad_()
      with torch.enable_grad():
        loss_ce = F.cross_entropy(s(xa), y)  # the model's first output (the prediction)
      g = torch.autograd.grad(loss_ce, [xa])[0]
      xa = xa.detach() + step * torch.sign(g.detach())
      xa = torch.min(torch.max(xa, x - eps), x + eps).clamp(0.0, 1.0)
    s.train()
    xt = xa.clamp(0.0, 1.0).detach()
  else:
    xt = x
  opt.zero_grad(set_to_none=False)  # torch 1.x's zero_grad(), see the module docstring
  z, out = s.forward_slots(xt)
  ce = F.cross_entropy(out, y)
  if ce.item() > 8:
    return None
  if epoch0 < 50:
    loss = ce
  else:
    per, tch_loss = [], []
    for k, t in enumerate(teachers):
      with torch.no_grad():
        t_out = t(xt)
      if kd_loss == "mse":
        per.append(F.mse_loss(z[:, k, :], t_out))
      else:
        per.append(F.kl_div(F.log_softmax(z[:, k, :], dim=1), F.softmax(t_out, dim=1),
                            reduction="batchmean"))
      tch_loss.append(F.cross_entropy(t_out, y).item())
    w = torch.exp(-1 * torch.tensor(tch_loss, dtype=torch.float64))
    kd = sum(w[k] * per[k] for k in range(len(teachers)))
    loss = ce + kd if epoch0 < 118 else kd
  loss.backward()
  opt.step()
  return float(loss.detach())


# ---------------------------------------------------------------- kdrobust side

@contextlib.contextmanager
def injected_coins(coins):
  """Replace :func:`darht.draw_coin` by the given outcomes, one per traced step."""
  orig = darht.draw_coin
  queue = list(coins)

  def fake(key, p_adv):
    del key, p_adv
    if not queue:
      raise AssertionError("the step drew more coins than were injected")
    return jnp.asarray(bool(queue.pop(0)))

  darht.draw_coin = fake
  try:
    yield queue
  finally:
    darht.draw_coin = orig


def setup(head_scale=1.0):
  s_t, s_f, _ = pc.student_pair(slots=2)
  if head_scale != 1.0:
    with torch.no_grad():
      s_t.linear2.weight.mul_(head_scale)
  s_vars = pc.flax_variables(s_t)
  pairs = [pc.teacher_pair(seed=7, widths=(6, 8)), pc.teacher_pair(seed=11, widths=(4, 6))]
  return s_t, s_f, s_vars, [t for t, _ in pairs], [f for _, f in pairs]


def run_both(method, lr, wd, start_epoch, coins, kd_loss="kl", steps=10, batches=None,
             head_scale=1.0):
  method = dataclasses.replace(method, kd_loss=kd_loss,
                               attack=dataclasses.replace(method.attack, steps=steps))
  s_t, s_f, s_vars, t_torch, t_flax = setup(head_scale)
  batches = batches or [pc.batch(0), pc.batch(1)]
  noises = [[pc.normal_noise(i)] for i in range(len(batches))]
  with injected_coins(coins):
    state, metrics = pc.run_kdrobust(method, s_f, s_vars, t_flax, batches, noises,
                                     lr=lr, weight_decay=wd, epoch=start_epoch)
  opt = pc.torch_sgd(s_t, lr, weight_decay=wd)
  losses = [torch_darht_step(s_t, t_torch, opt, x, y, n[0], coin=c, epoch0=start_epoch - 1 + i,
                             kd_loss=kd_loss, steps=steps)
            for i, ((x, y), n, c) in enumerate(zip(batches, noises, coins))]
  return state, metrics, losses, s_t


# Two steps each (one step per epoch; ``start`` is the 1-indexed epoch of the
# first, the code's 0-indexed e = start - 1): every curriculum phase and both
# phase boundaries, both coin outcomes, both KD losses.
CASES = {
    "ce_only": (1, (1, 0), "kl"),           # e = 0, 1: CE
    "ce_to_ce_kd": (50, (0, 1), "kl"),      # e = 49: CE; e = 50: CE + KD
    "ce_kd_to_kd": (118, (1, 0), "kl"),     # e = 117: CE + KD; e = 118: KD only
    "mse_ce_kd_to_kd": (118, (0, 1), "mse"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_darht_step_matches_official(case):
  start, coins, kd_loss = CASES[case]
  method, lr, wd = shipped()
  state, metrics, losses, s_t = run_both(method, lr, wd, start, coins, kd_loss)
  for i, (m, l, c) in enumerate(zip(metrics, losses, coins)):
    assert l is not None and float(m["skipped"]) == 0.0
    pc.assert_close(m["loss"], l, what=f"loss of step {i}")
    assert float(m["adversarial_batch"]) == float(c)
    e = start - 1 + i
    assert float(m["ce_on"]) == float(e < 118) and float(m["kd_on"]) == float(e >= 50)
  pc.assert_same_state(state, s_t, what=f"DARHT {case}")
  assert pc.bn_train_forward_count(s_t) == 2  # one train-mode forward per step; eval attack


def test_darht_shipped_recipe():
  """The config is the released script's: p = 0.5, eps 0.031, step 0.003, 10 steps, eval attack."""
  method, lr, wd = shipped()
  assert (method.p_adv, method.kd_start_epoch, method.ce_stop_epoch,
          method.ce_skip_threshold, method.kd_loss) == (0.5, 50, 118, 8.0, "kl")
  a = method.attack
  assert (a.eps, a.step_size, a.steps, a.init, a.bn_mode) == (
      DARHT_EPS, DARHT_STEP, 10, "gaussian", "eval")
  assert (lr, wd) == (0.1, 5e-4)


def test_coin_is_fair():
  """``draw_coin`` with p = 0.5: 2000 keys give 50 % +- 3.5 % (> 4.4 sigma) attacks."""
  keys = jax.random.split(jax.random.PRNGKey(0), 2000)
  frac = float(jnp.mean(jax.vmap(lambda k: darht.draw_coin(k, 0.5))(keys)))
  assert abs(frac - 0.5) < 0.035, frac


def _skip_batches(s_t):
  """Batch 0 with CE > 8 (a large head, labels the student rejects); batch 1 with CE < 8."""
  (x0, _), (x1, _) = pc.batch(0), pc.batch(1)
  probe = copy.deepcopy(s_t).train()
  with torch.no_grad():
    y0 = probe(pc.nchw(x0)).argmin(1).numpy()
    y1 = probe(pc.nchw(x1)).argmax(1).numpy()
  return [(x0, y0), (x1, y1)]


@functools.lru_cache(maxsize=1)
def _skip_run():
  method, lr, wd = shipped()
  s_t, *_ = setup(head_scale=300.0)
  batches = _skip_batches(s_t)
  # e = 116, 117: CE + KD, so every parameter has had a gradient when the step runs.
  return run_both(method, lr, wd, 117, (0, 0), steps=2, batches=batches, head_scale=300.0)


def test_darht_ce_skip_matches_official_parameters():
  """A batch with CE > 8 leaves parameters and momentum untouched; the next one trains."""
  state, metrics, losses, s_t = _skip_run()
  assert losses[0] is None and float(metrics[0]["skipped"]) == 1.0
  assert losses[1] is not None and float(metrics[1]["skipped"]) == 0.0
  pc.assert_close(metrics[1]["loss"], losses[1], what="loss after the skipped batch")
  got = dict(jax.tree_util.tree_flatten_with_path(state.params)[0])
  for path, r in jax.tree_util.tree_flatten_with_path(pc.flax_variables(s_t)["params"])[0]:
    np.testing.assert_allclose(np.asarray(got[path]), r, rtol=0, atol=pc.ATOL,
                               err_msg=jax.tree_util.keystr(path))


def test_darht_ce_skip_matches_official_running_statistics():
  state, _, _, s_t = _skip_run()
  pc.assert_same_state(state, s_t, what="DARHT skipped batch")


def test_wrong_phase_boundary_fails():
  """The check can fail: KD switched on one epoch late (kd_start_epoch 51) differs at e = 50."""
  method, lr, wd = shipped()
  bad = dataclasses.replace(method, kd_start_epoch=51)
  state, metrics, losses, s_t = run_both(bad, lr, wd, 51, (0,), batches=[pc.batch(0)])
  with pytest.raises(AssertionError):
    pc.assert_close(metrics[0]["loss"], losses[0], what="late KD")
  with pytest.raises(AssertionError):
    pc.assert_same_state(state, s_t, what="late KD")


def test_train_mode_attack_is_refused():
  with pytest.raises(ValueError, match="bn_mode"):
    methods.make("darht", attack={"bn_mode": "train"})

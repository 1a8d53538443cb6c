"""PGD / CW-inf presets against PyTorch references (docs/evaluation.md, attack checks).

* ``torchattacks.PGD(eps, alpha, steps, random_start=False)`` (install with
  ``pip install --no-deps torchattacks==3.5.1``; skipped when absent) against
  :func:`kdrobust.attacks.projected.maximize` from a zero start, float32:
  >= 99.5 % identical final predictions and max |dx| <= 1e-5 on the
  agreeing points (torchattacks projects via ``x + clip(x' - x)``, we clip
  ``x'`` to ``[x - eps, x + eps]``: one-ulp differences).
* CW-inf against a ~20-line torch reference written here from the formula
  (docs/evaluation.md, Presets): L-inf PGD on ``-max(z_y - max_{j != y} z_j + kappa, 0)``,
  summed, zero init, returning the most recent misclassified iterate (else the
  last): exact agreement in float64.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from attacks_twins_test import jax_model, make_data, make_weights, to_nchw, to_nhwc, torch_model
from kdrobust import losses
from kdrobust.attacks import projected

torch = pytest.importorskip("torch")

N = 32


def test_pgd_matches_torchattacks_from_zero_start():
  torchattacks = pytest.importorskip("torchattacks")
  w = make_weights(1, scale=3.0)
  x, y = make_data(N, seed=9, weights=w)
  x = x.astype(np.float32)
  eps, alpha, steps = 0.01, 0.0025, 10
  atk = torchattacks.PGD(torch_model(w, torch.float32), eps=eps, alpha=alpha, steps=steps,
                         random_start=False)
  x_ref = to_nhwc(atk(torch.tensor(to_nchw(x)), torch.tensor(y).long()))
  f = jax_model(w)
  xa = np.asarray(projected.maximize(lambda u: losses.xent(f(u), y), jnp.asarray(x),
                                     jnp.asarray(x), eps=eps, step_size=alpha, steps=steps))
  pred, pred_ref = (np.argmax(np.asarray(f(v)), -1) for v in (xa, x_ref))
  assert np.mean(pred == pred_ref) >= 0.995
  assert 0 < np.mean(pred != y) < 1
  close = np.abs(xa - x_ref).reshape(N, -1).max(1) <= 1e-5
  assert close.mean() >= 0.995


def _torch_cw_linf(model, x, y, *, eps, alpha, steps, kappa):
  """CW-inf from the formula: ascend sum_i -max(z_y - max_{j!=y} z_j + kappa, 0)."""
  x_adv, best = x.clone(), x.clone()
  fooled = torch.zeros(len(y), dtype=torch.bool)
  for k in range(steps + 1):  # iterates x_0 .. x_steps are all checked
    x_adv.requires_grad_(True)
    z = model(x_adv)
    wrong = z.argmax(1) != y
    best = torch.where(wrong[:, None, None, None], x_adv.detach(), best)
    fooled |= wrong
    if k == steps:
      break
    onehot = torch.nn.functional.one_hot(y, z.shape[1]).bool()
    z_other = z.masked_fill(onehot, -float("inf")).max(1).values
    loss = -torch.clamp(z[onehot] - z_other + kappa, min=0).sum()
    g, = torch.autograd.grad(loss, x_adv)
    x_adv = x_adv.detach() + alpha * g.sign()
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
  return torch.where(fooled[:, None, None, None], best, x_adv.detach())


def test_cw_linf_matches_formula_reference():
  w = make_weights(2, scale=3.0)
  x, y = make_data(N, seed=10, weights=w)
  x = x.astype(np.float32)  # projected.pgd evaluates in float32
  kw = dict(eps=0.02, alpha=0.005, steps=10, kappa=50.0)
  x_ref = to_nhwc(_torch_cw_linf(torch_model(w, torch.float32), torch.tensor(to_nchw(x)),
                                 torch.tensor(y).long(), **kw))
  f = jax_model(w)
  xa = np.asarray(projected.cw_linf(f, jnp.asarray(x), jnp.asarray(y), eps=kw["eps"],
                                    step_size=kw["alpha"], steps=kw["steps"],
                                    kappa=kw["kappa"], init="none"))
  same = np.all((xa == x_ref).reshape(N, -1), axis=1)
  assert same.mean() >= 0.97, same.mean()  # bit-identical iterates (sign flips aside)
  fooled = np.argmax(np.asarray(f(xa)), -1) != y
  np.testing.assert_array_equal(fooled, np.argmax(np.asarray(f(x_ref)), -1) != y)
  assert 0 < fooled.mean() < 1

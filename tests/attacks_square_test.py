"""Square Attack: schedule, pattern, parity with pyautoattack under injected randomness.

The reference's ``random_choice`` / ``random_int`` (and, for L2, the
``torch.rand([1])`` transpose coin of ``eta``) are monkeypatched to read
the same numpy draws that :class:`ArraySource` feeds the JAX kernel
(``fra31/auto-attack@a392200 autoattack/square.py``, as pyautoattack 0.2.0 ships
it; docs/evaluation.md, "How the attacks are checked"). Tolerances, float64 twins:

* L-inf: ``x_best`` identical (max |dx| = 0), margins to 1e-12, identical
  query counts.
* L2: max |dx| <= 1e-6 (the reference builds each new window in a float32
  buffer whose sums we cannot order identically), identical query counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attacks_twins_test import (C_IN, H, W, jax_model, make_data, make_weights, to_nchw,
                                to_nhwc, torch_model, x64)
from kdrobust.attacks import square as sq

torch = pytest.importorskip("torch")
ref_square = pytest.importorskip("pyautoattack.square")

N = 12


def test_side_schedule_matches_the_cifar_table():
  sides = sq.side_schedule(5000, 32, 32)
  expect = {0: 29, 10: 29, 11: 20, 50: 20, 51: 14, 200: 14, 201: 10, 500: 10, 501: 7,
            1000: 7, 1001: 5, 2000: 5, 2001: 4, 4000: 4, 4001: 3, 4999: 3}
  for it, s in expect.items():
    assert sides[it] == s, (it, sides[it], s)
  l2 = sq.side_schedule(5000, 32, 32, norm="l2")
  assert np.all(l2 % 2 == 1) and l2.min() >= 3


def test_p_selection_matches_reference():
  atk = ref_square.SquareAttack(lambda x: x, p_init=0.8, n_queries=5000, eps=0.1,
                                resc_schedule=False)
  for it in [0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001, 4000,
             4001, 6000, 6001, 8000, 8001, 9999]:
    assert sq.p_selection(it, 0.8, 5000) == atk.p_selection(it)


@pytest.mark.parametrize("s", [1, 2, 3, 5, 7, 8])
def test_eta_pattern_matches_reference(s):
  atk = ref_square.SquareAttack(lambda x: x, norm="L2", eps=0.1, device="cpu")
  with torch.random.fork_rng():
    torch.manual_seed(0)
    while True:  # find a draw without the transpose
      state = torch.random.get_rng_state()
      if torch.rand([1]).item() <= 0.5:
        break
    torch.random.set_rng_state(state)
    ref = atk.eta(s).numpy()
  np.testing.assert_allclose(sq.eta_pattern(s), ref, rtol=0, atol=1e-7)


def _draws(norm, n_queries, seed=7):
  g = np.random.default_rng(seed)
  tiles = sq.l2_init_tiles(H, W)
  t = max(len(tiles), 1)
  return dict(
      stripes=g.choice([-1.0, 1.0], (N, W, C_IN)),
      tile_signs=g.choice([-1.0, 1.0], (t, N, C_IN)), tile_coins=g.random(t),
      u_h=g.random(n_queries), u_w=g.random(n_queries), u_h2=g.random(n_queries),
      u_w2=g.random(n_queries), coin=g.random(n_queries),
      signs=g.choice([-1.0, 1.0], (n_queries, C_IN) if norm == "Linf"
                     else (n_queries, N, C_IN))), len(tiles)


class _Feed:
  """The reference's random calls, answered from the same numpy draws (float32 like torch.rand)."""

  def __init__(self, src, norm, n_tiles):
    self.src, self.norm, self.n_tiles = src, norm, n_tiles
    self.it, self.ints, self.tile, self.init_done = -1, 0, 0, False

  def random_choice(self, shape):
    shape = list(shape)
    if self.norm == "Linf":
      if not self.init_done:
        self.init_done = True  # [B, c, 1, w] stripes
        return torch.tensor(self.src["stripes"].transpose(0, 2, 1)[:, :, None, :],
                            dtype=torch.float32)
      return torch.tensor(self.src["signs"][self.it], dtype=torch.float32).view(C_IN, 1, 1)
    if self.tile < self.n_tiles:  # L2 init tiles, then one [n_active, c] draw per iteration
      rows = self.src["tile_signs"][self.tile][:shape[0]]
      self.tile += 1
    else:
      rows = self.src["signs"][self.it][:shape[0]]
    return torch.tensor(rows, dtype=torch.float32).view(shape[0], C_IN, 1, 1)

  def random_int(self, low=0, high=1, shape=(1,)):
    k = self.ints % (2 if self.norm == "Linf" else 4)
    if k == 0:
      self.it += 1
    self.ints += 1
    u = self.src[("u_h", "u_w", "u_h2", "u_w2")[k]][self.it]
    return (low + (high - low) * torch.tensor([u], dtype=torch.float32)).long()

  def coin(self):
    if self.it < 0:  # init tiles
      return self.src["tile_coins"][self.tile]
    return self.src["coin"][self.it]


@pytest.mark.parametrize("norm,eps,n_queries", [("Linf", 0.03, 300), ("L2", 0.3, 200)])
def test_square_matches_reference_with_injected_draws(monkeypatch, norm, eps, n_queries):
  w = make_weights(0, scale=3.0)
  x, y = make_data(N, seed=5, weights=w)
  src, n_tiles = _draws(norm, n_queries)
  feed = _Feed(src, norm, n_tiles)
  atk = ref_square.SquareAttack(torch_model(w), norm=norm, n_queries=n_queries, eps=eps,
                                p_init=0.8, device="cpu", resc_schedule=False)
  monkeypatch.setattr(atk, "random_choice", feed.random_choice)
  monkeypatch.setattr(atk, "random_int", feed.random_int)
  real_rand = torch.rand

  def fake_rand(*shape, **kw):
    if len(shape) == 1 and list(shape[0]) == [1]:
      return torch.tensor([feed.coin()], dtype=torch.float32)
    return real_rand(*shape, **kw)

  monkeypatch.setattr(torch, "rand", fake_rand)
  xt = torch.tensor(to_nchw(x))
  atk.init_hyperparam(xt)
  nq_ref, xb_ref = atk.attack_single_run(xt, torch.tensor(y).long())
  monkeypatch.setattr(torch, "rand", real_rand)
  xb_ref = to_nhwc(xb_ref)
  with x64():
    f = jax_model(w, jnp.float64)
    source = sq.ArraySource(**{k: jnp.asarray(v) for k, v in src.items()})
    run = sq.square_single_run(f, x, y, source, eps=eps, norm=norm, n_queries=n_queries)
    xb, margin, nq = (np.asarray(v) for v in run)
    margin_ref = np.asarray(sq.square_margin(f(xb_ref), jnp.asarray(y)))
  np.testing.assert_array_equal(nq, nq_ref.numpy())
  dx = np.abs(xb - xb_ref).max()
  if norm == "Linf":
    assert dx == 0.0
    np.testing.assert_allclose(margin, margin_ref, rtol=0, atol=1e-12)
  else:
    assert dx <= 1e-6, dx
    np.testing.assert_array_equal(margin <= 0, margin_ref <= 0)
  broken = margin <= 0
  assert 0 < broken.sum() < N


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.3)])
def test_square_properties(norm, eps):
  w = make_weights(0, scale=3.0)
  x, y = make_data(N, seed=6, weights=w)
  x = x.astype(np.float32)
  f = jax_model(w)
  kw = dict(eps=eps, norm=norm, n_queries=150, batch_size=8, buckets=1)
  xa, fooled = sq.square_batches(f, x, y, 3, **kw)
  d = (xa - x).reshape(N, -1).astype(np.float64)
  size = np.abs(d).max(1) if norm == "linf" else np.sqrt((d ** 2).sum(1))
  assert size.max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
  assert fooled.any() and not fooled.all()
  assert np.all(np.argmax(np.asarray(jax.jit(f)(xa)), -1)[fooled] != y[fooled])
  np.testing.assert_array_equal(xa[~fooled], x[~fooled])
  xb, _ = sq.square_batches(f, x, y, 3, **kw)
  np.testing.assert_array_equal(xa, xb)  # deterministic per key
  xc, _ = sq.square_batches(f, x, y, 4, **kw)
  assert not np.array_equal(xa, xc)  # and the key matters

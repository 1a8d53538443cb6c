"""Square Attack (Andriushchenko et al., ECCV 2020), score-based, as AutoAttack runs it.

Reference: ``square.py`` of ``fra31/auto-attack`` ``a392200`` (=
``pyautoattack==0.2.0``) with AutoAttack's settings (``loss='margin'``,
``p_init=0.8``, ``resc_schedule=False``); reference behaviour: docs/evaluation.md.
L-inf and L2 (L1 is not implemented).

The margin ``m(x') = z_y - max_{j != y} z_j`` is minimised; a point is broken
when ``m <= 0``. One run (:func:`square_single_run`) is a jitted
``lax.while_loop`` that stops when no valid point has ``m > 0`` or after
``n_queries`` iterations. Every iteration:

* side ``s = round(sqrt(p(it) h w))`` from the static p-schedule
  (``p_init / 2^j`` on the brackets (10, 50], (50, 200], ..., Python rounding;
  L2: ``s >= 3`` and odd), clipped to ``min(h, w)``;
* one square position ``(vh, vw) = floor(U (h - s))`` and the signs are
  **shared by the whole batch** (AutoAttack's simplification; outcomes depend
  on the batch composition, P12); offset ``h - s`` is never drawn (quirk);
* L-inf: the square is set to ``x +- eps`` per channel (one sign per channel),
  then clipped to the ball and to [0, 1];
  L2: window 1 gets ``eta(s) * sign(image, channel)`` plus its old content
  normalised, rescaled to per-channel norm
  ``sqrt(max(eps^2 - ||delta||^2, 0)/c + ||delta|_{W1 u W2}||^2)``; window 2 is
  zeroed; ``delta`` is rescaled to ``||delta||_2 = eps`` and clipped to [0, 1];
* accept the candidate where its margin is strictly lower or ``<= 0``.

Initialisation: L-inf vertical stripes (one sign per image, channel and
column: ``x +- eps``); L2 a grid of ``eta(h // 5)`` tiles with a sign per
image and channel, rescaled to ``||delta||_2 = eps``.

Randomness goes through a *random source*: :class:`KeySource` (``jax.random``,
the default) or :class:`ArraySource` (pre-drawn arrays, e.g. the numpy draws a
test feeds a monkeypatched reference). Per-image draws of the reference have
one row per *active* image (the reference compacts the batch); the kernel
gives the ``k``-th active image row ``k``, so injected draws reproduce the
reference exactly, and padding never shifts them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kdrobust.attacks.apgd import (DEFAULT_BATCH, DEFAULT_BUCKETS, TRACES, _pad_rows,
                                   as_logits_fn, bcast, bulk_key, chunks, derive_key,
                                   mesh_size, predict, put_rows, resolve_buckets)
from kdrobust.attacks.projected import as_key, canonical_norm
from kdrobust.attacks._precision import with_precision

Array = jax.Array


# ---------------------------------------------------------------------------
# Static schedule and the L2 pattern eta(s), computed on the host.
# ---------------------------------------------------------------------------


def p_selection(it: int, p_init: float = 0.8, n_queries: int = 5000,
                rescale: bool = False) -> float:
  """AutoAttack's p schedule: ``p_init`` halved after 10, 50, 200, 500, 1000, 2000,
  4000, 6000 and 8000 iterations (``rescale`` maps ``it`` to a 10000-query scale)."""
  if rescale:
    it = int(it / n_queries * 10000)
  bounds = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
  j = sum(1 for bnd in bounds if it > bnd)
  return p_init / (2 ** j)


def side_schedule(n_queries: int, h: int, w: int, *, p_init: float = 0.8,
                  norm: str = "linf") -> np.ndarray:
  """Square side per iteration: ``round(sqrt(p h w))`` (Python rounding) clipped.

  L-inf: ``max(., 1)``; L2: ``max(., 3)``, made odd. Both ``<= min(h, w)``.
  """
  out = np.empty(n_queries, np.int32)
  for it in range(n_queries):
    p = p_selection(it, p_init, n_queries)
    if norm == "linf":
      s = max(int(round(math.sqrt(p * h * w))), 1)
    else:
      s = max(int(round(math.sqrt(p * h * w))), 3)
      if s % 2 == 0:
        s += 1
    out[it] = min(s, min(h, w))
  return out


def _eta_rectangles(x: int, y: int) -> np.ndarray:
  """Nested rectangles weighted ``1/(n+1)^2``, L2-normalised (float32 like the reference)."""
  delta = np.zeros((x, y), np.float32)
  xc, yc = x // 2 + 1, y // 2 + 1
  c0, c1 = xc - 1, yc - 1
  for n in range(max(xc, yc)):
    delta[max(c0, 0):min(c0 + 2 * n + 1, x), max(c1, 0):min(c1 + 2 * n + 1, y)] += (
        np.float32(1.0) / np.float32(n + 1) ** 2)
    c0 -= 1
    c1 -= 1
  return delta / np.sqrt(np.sum(delta ** 2, dtype=np.float32))


def eta_pattern(s: int) -> np.ndarray:
  """Square's L2 pattern ``eta(s)`` (before the random transpose), float32 ``[s, s]``.

  Upper ``s // 2`` rows: nested rectangles; lower rows: the same, negated;
  normalised to unit L2 norm.
  """
  delta = np.zeros((s, s), np.float32)
  if s // 2 > 0:
    delta[:s // 2] = _eta_rectangles(s // 2, s)
  delta[s // 2:] = -_eta_rectangles(s - s // 2, s)
  return delta / np.sqrt(np.sum(delta ** 2, dtype=np.float32))


def _pattern_table(sides: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
  """``(table [K, 2, S, S], index_of_side [S+1], S)``: eta(s) and its transpose, zero-padded."""
  uniq = sorted(set(int(s) for s in sides))
  smax = max(uniq)
  table = np.zeros((len(uniq), 2, smax, smax), np.float32)
  index = np.zeros(smax + 1, np.int32)
  for k, s in enumerate(uniq):
    e = eta_pattern(s)
    table[k, 0, :s, :s] = e
    table[k, 1, :s, :s] = e.T
    index[s] = k
  return table, index, smax


def l2_init_tiles(h: int, w: int) -> list[tuple[int, int, int]]:
  """The reference's L2 init grid: ``(vh, vw, s0)`` per tile, in drawing order.

  ``s0 = h // 5``, first offset ``(h - 5 s0) // 2``, ``h // s0`` by
  ``w // s0`` tiles. Tiles that fall off the image still consume draws.
  """
  s0 = h // 5
  sp = (h - s0 * 5) // 2
  tiles = []
  vh = sp
  for _ in range(h // s0):
    vw = sp
    for _ in range(w // s0):
      tiles.append((vh, vw, s0))
      vw += s0
    vh += s0
  return tiles


# ---------------------------------------------------------------------------
# Random sources.
# ---------------------------------------------------------------------------


class StepDraws(NamedTuple):
  """One iteration's draws. ``u_*`` are uniforms in [0, 1) (positions are
  ``floor(u (h - s))``); ``signs`` is ``[C]`` (L-inf, shared) or ``[B, C]``
  (L2, row ``k`` for the ``k``-th active image); ``coin`` is the uniform of the
  L2 transpose test ``coin > 0.5``."""
  u_h: Array
  u_w: Array
  u_h2: Array
  u_w2: Array
  signs: Array
  coin: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KeySource:
  """Draws everything from ``jax.random`` (``fold_in(key, it)`` per iteration)."""
  key: Array

  def init(self, b: int, w: int, c: int, n_tiles: int, dtype):
    k0 = jax.random.fold_in(bulk_key(self.key), 0x7FFFFFFF)
    k1, k2, k3 = (jax.random.fold_in(k0, j) for j in range(3))
    stripes = jax.random.rademacher(k1, (b, w, c)).astype(dtype)
    tile_signs = jax.random.rademacher(k2, (max(n_tiles, 1), b, c)).astype(dtype)
    tile_coins = jax.random.uniform(k3, (max(n_tiles, 1),))
    return stripes, tile_signs, tile_coins

  def step(self, it, b: int, c: int, norm: str, dtype) -> StepDraws:
    k0 = jax.random.fold_in(bulk_key(self.key), it)
    k = (k0, jax.random.fold_in(k0, 1))
    u = jax.random.uniform(k[0], (5,))
    shape = (c,) if norm == "linf" else (b, c)
    signs = jax.random.rademacher(k[1], shape).astype(dtype)
    return StepDraws(u[0], u[1], u[2], u[3], signs, u[4])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ArraySource:
  """Pre-drawn randomness (for parity tests with injected draws).

  ``stripes [B, W, C]`` (L-inf init signs, NHWC version of the reference's
  ``[B, C, 1, W]``); ``tile_signs [T, B, C]`` and ``tile_coins [T]`` (L2 init,
  one per tile of :func:`l2_init_tiles`); per iteration ``u_h, u_w, u_h2, u_w2,
  coin [n_queries]`` and ``signs [n_queries, C]`` (L-inf) or
  ``[n_queries, B, C]`` (L2). Rows of per-image arrays are consumed by the
  active images in order (row ``k`` -> ``k``-th active image).
  """
  stripes: Array
  tile_signs: Array
  tile_coins: Array
  u_h: Array
  u_w: Array
  u_h2: Array
  u_w2: Array
  signs: Array
  coin: Array

  def init(self, b, w, c, n_tiles, dtype):
    return (self.stripes.astype(dtype), self.tile_signs.astype(dtype), self.tile_coins)

  def step(self, it, b, c, norm, dtype) -> StepDraws:
    return StepDraws(self.u_h[it], self.u_w[it], self.u_h2[it], self.u_w2[it],
                     self.signs[it].astype(dtype), self.coin[it])


# ---------------------------------------------------------------------------
# The attack.
# ---------------------------------------------------------------------------


class SquareRun(NamedTuple):
  """``x_best``; ``margin`` (``<= 0``: broken); ``n_queries`` used per image."""
  x_best: Array
  margin: Array
  n_queries: Array


def square_margin(logits: Array, y: Array) -> Array:
  """``z_y - max_{j != y} z_j`` (the true logit masked with ``-inf``)."""
  oh = jax.nn.one_hot(y, logits.shape[-1], dtype=bool)
  z_y = jnp.sum(jnp.where(oh, logits, 0.0), axis=-1)
  return z_y - jnp.max(jnp.where(oh, -jnp.inf, logits), axis=-1)


def _window(vh, vw, s, h, w):
  """Boolean ``[h, w]`` mask of the square ``[vh, vh+s) x [vw, vw+s)``."""
  hh = jnp.arange(h)[:, None]
  ww = jnp.arange(w)[None, :]
  return (hh >= vh) & (hh < vh + s) & (ww >= vw) & (ww < vw + s)


def _rank_rows(rows: Array, active: Array) -> Array:
  """Give the ``k``-th active image row ``k`` of ``rows`` ([B, ...]); inactive get row 0."""
  rank = jnp.clip(jnp.cumsum(active.astype(jnp.int32)) - 1, 0, None)
  return jnp.take(rows, rank, axis=0)


def _spatial_norm(v: Array) -> Array:
  """Per (image, channel) L2 norm over h, w: ``[B, 1, 1, C]``."""
  return jnp.sqrt(jnp.sum(v ** 2, axis=(1, 2), keepdims=True))


def _square_core(fn, x, y, valid, source, eps, *, n_queries, p_init, norm):
  TRACES["square"] += 1
  dtype = x.dtype
  b, h, w, c = x.shape
  eps = jnp.asarray(eps, dtype)
  sides = side_schedule(n_queries, h, w, p_init=p_init, norm=norm)
  sides_j = jnp.asarray(sides)
  tiles = l2_init_tiles(h, w) if norm == "l2" else []
  stripes, tile_signs, tile_coins = source.init(b, w, c, len(tiles), dtype)
  if norm == "l2":
    table, index, smax = _pattern_table(sides)
    table_j = jnp.asarray(table, dtype)
    index_j = jnp.asarray(index)

  # Initialisation.
  if norm == "linf":
    signs0 = _rank_rows(stripes, valid)  # [B, W, C]
    x_best = jnp.clip(x + _f32(eps * signs0[:, None, :, :]), 0.0, 1.0)
  else:
    delta = jnp.zeros_like(x)
    for t, (vh, vw, s0) in enumerate(tiles):
      e = jnp.asarray(eta_pattern(s0), dtype)
      e = jnp.where(tile_coins[t] > 0.5, e.T, e)
      sg = _rank_rows(tile_signs[t], valid)  # [B, C]
      hi, wi = min(vh + s0, h), min(vw + s0, w)
      if hi <= vh or wi <= vw:
        continue  # off the image: draws consumed, nothing written (as the reference)
      patch = e[:hi - vh, :wi - vw][None, :, :, None] * sg[:, None, None, :]
      delta = delta.at[:, vh:hi, vw:wi, :].add(patch)
    x_best = jnp.clip(x + delta / (bcast(_l2(delta), x) + 1e-12) * eps, 0.0, 1.0)
  margin = square_margin(fn(x_best), y)
  margin = jnp.where(valid, margin, -1.0)  # padding never counts as active
  loss = margin
  nq = jnp.ones((b,), dtype)

  def cond(carry):
    it, _, margin, _, _ = carry
    return (it < n_queries) & jnp.any(margin > 0.0)

  def body(carry):
    it, x_best, margin, loss, nq = carry
    active = margin > 0.0
    s = sides_j[it]
    dr = source.step(it, b, c, norm, dtype)
    vh = jnp.floor(dr.u_h * (h - s)).astype(jnp.int32)
    vw = jnp.floor(dr.u_w * (w - s)).astype(jnp.int32)
    win = _window(vh, vw, s, h, w)[None, :, :, None]
    if norm == "linf":
      new = jnp.where(win, _f32(2.0 * eps * dr.signs[None, None, None, :]), 0.0)
      x_new = jnp.clip(jnp.minimum(jnp.maximum(x_best + new, x - eps), x + eps), 0.0, 1.0)
    else:
      vh2 = jnp.floor(dr.u_h2 * (h - s)).astype(jnp.int32)
      vw2 = jnp.floor(dr.u_w2 * (w - s)).astype(jnp.int32)
      win2 = _window(vh2, vw2, s, h, w)[None, :, :, None]
      delta = x_best - x
      nw1 = _spatial_norm(jnp.where(win, delta, 0.0))
      n_img = bcast(_l2(delta), x)
      nws = _spatial_norm(jnp.where(win | win2, delta, 0.0))
      pat = table_j[index_j[s], (dr.coin > 0.5).astype(jnp.int32)]  # [S, S]
      hh = jnp.clip(jnp.arange(h) - vh, 0, smax - 1)
      ww = jnp.clip(jnp.arange(w) - vw, 0, smax - 1)
      canvas = pat[hh[:, None], ww[None, :]][None, :, :, None]
      sg = _rank_rows(dr.signs, active)[:, None, None, :]  # [B, 1, 1, C]
      new = canvas * sg
      # The reference builds the window in a float32 buffer: the sum, its
      # normalisation and eps^2 are float32 (no-ops when x is float32).
      new = jnp.where(win, new + delta / (1e-12 + nw1), 0.0).astype(jnp.float32)
      new = (new / (1e-12 + _spatial_norm(new))).astype(dtype)
      eps32 = eps.astype(jnp.float32)
      new = new * jnp.sqrt(jnp.maximum((eps32 * eps32).astype(dtype) - n_img ** 2, 0.0) / c
                           + nws ** 2)
      delta = jnp.where(win2, 0.0, delta)
      delta = jnp.where(win, new, delta)
      x_new = jnp.clip(x + delta / (bcast(_l2(delta), x) + 1e-12) * eps, 0.0, 1.0)

    m_new = square_margin(fn(x_new), y)
    improved = active & (m_new < loss)
    loss = jnp.where(improved, m_new, loss)
    accept = improved | (active & (m_new <= 0.0))
    margin = jnp.where(accept, m_new, margin)
    x_best = jnp.where(bcast(accept, x), x_new, x_best)
    nq = jnp.where(active, nq + 1, nq)
    return it + 1, x_best, margin, loss, nq

  init = (jnp.asarray(0, jnp.int32), x_best, margin, loss, nq)
  _, x_best, margin, _, nq = jax.lax.while_loop(cond, body, init)
  return SquareRun(x_best, margin, nq)


def _f32(v):
  """Round through float32, as the reference's float32 random tensors do (no-op in float32)."""
  return v.astype(jnp.float32).astype(v.dtype)


def _l2(v):
  return jnp.sqrt(jnp.sum(v.reshape(v.shape[0], -1) ** 2, axis=-1))


_STATIC = ("n_queries", "p_init", "norm")
_square_core_jit = jax.jit(_square_core, static_argnames=_STATIC)


@with_precision
def square_single_run(logits_fn, x, y, source=0, *, eps, norm: str = "linf",
                      n_queries: int = 5000, p_init: float = 0.8,
                      valid=None) -> SquareRun:
  """One Square run (the reference's ``attack_single_run``), jitted.

  ``source``: a PRNG key or int seed (-> :class:`KeySource`) or an
  :class:`ArraySource`. ``valid`` masks padding rows. Runs in ``x``'s dtype.
  """
  norm = canonical_norm(norm)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  if not isinstance(source, (KeySource, ArraySource)):
    source = KeySource(as_key(source))
  valid = jnp.ones(x.shape[0], bool) if valid is None else jnp.asarray(valid, bool)
  return _square_core_jit(as_logits_fn(logits_fn), x, jnp.asarray(y), valid, source,
                          jnp.asarray(eps, x.dtype), n_queries=n_queries,
                          p_init=p_init, norm=norm)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _square_chunk(fn, x, y, valid, key, eps, *, n_queries, p_init, norm):
  """Run, then the reference ``perturb``'s argmax re-check."""
  run = _square_core(fn, x, y, valid, KeySource(key), eps, n_queries=n_queries,
                     p_init=p_init, norm=norm)
  fooled = valid & (jnp.argmax(fn(run.x_best), -1) != y)
  return run.x_best, fooled


@with_precision
def square_batches(logits_fn, x, y, key=0, *, eps, norm: str = "linf",
                   n_queries: int = 5000, p_init: float = 0.8,
                   n_restarts: int = 1, active=None,
                   batch_size: int | None = None, progress=None,
                   buckets: int | None = DEFAULT_BUCKETS, mesh=None):
  """Host driver shared by :func:`square` and AutoAttack.

  The ``active`` points, in index order, are cut into chunks of
  ``batch_size`` (as AutoAttack's batches, which Square's shared draws depend
  on); within a chunk each restart runs on the images not yet fooled (a
  mask, no re-batching). Returns ``(x_adv, fooled)`` as numpy arrays.
  ``mesh`` (``apgd.attack_mesh``) splits each batch's rows over its devices;
  the padded batch is then a multiple of the device count, so with a
  ``batch_size`` that is not, the shared draws (and outcomes) differ from a
  one-device run's.
  """
  norm = canonical_norm(norm)
  fn = as_logits_fn(logits_fn)
  x = np.asarray(x)
  if not np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float32)
  y = np.asarray(y)
  n = x.shape[0]
  active = np.ones(n, bool) if active is None else np.asarray(active, bool)
  idx = np.flatnonzero(active)
  bs = min(batch_size or DEFAULT_BATCH, n)
  x_adv = np.array(x, copy=True)
  fooled = np.zeros(n, bool)
  eps_a = jnp.asarray(eps, jnp.dtype(x.dtype))
  key = as_key(key)
  done = 0
  for ci, (sel, size) in enumerate(chunks(idx, bs, resolve_buckets(buckets),
                                          mesh_size(mesh))):
    nv = sel.size
    xb = put_rows(_pad_rows(x[sel], size), mesh)
    yb = put_rows(_pad_rows(y[sel], size), mesh)
    todo = np.arange(size) < nv
    for r in range(n_restarts):
      if not todo.any():
        break
      adv, fb = _square_chunk(fn, xb, yb, put_rows(todo, mesh),
                              derive_key(key, ci, r),
                              eps_a, n_queries=n_queries, p_init=p_init, norm=norm)
      fb = np.asarray(fb) & todo
      hit = np.flatnonzero(fb[:nv])
      x_adv[sel[hit]] = np.asarray(adv)[hit]
      fooled[sel[hit]] = True
      todo = todo & ~fb
    done += nv
    if progress is not None:
      progress(done, idx.size)
  return x_adv, fooled


@with_precision
def square(logits_fn, x, y, key=0, *, eps, norm: str = "linf",
           n_queries: int = 5000, p_init: float = 0.8, n_restarts: int = 1,
           batch_size: int | None = None) -> np.ndarray:
  """Square Attack as the reference's ``perturb``: returns ``x_adv`` (numpy).

  Only clean-correct points are attacked; a point gets the run's ``x_best``
  where that is misclassified, else keeps its clean value.
  """
  x = np.asarray(x)
  y = np.asarray(y)
  ok = predict(logits_fn, x, batch_size=batch_size) == y
  x_adv, _ = square_batches(logits_fn, x, y, key, eps=eps, norm=norm,
                            n_queries=n_queries, p_init=p_init,
                            n_restarts=n_restarts, active=ok,
                            batch_size=batch_size)
  return x_adv


__all__ = ["SquareRun", "KeySource", "ArraySource", "StepDraws", "square",
           "square_single_run", "square_batches", "square_margin", "p_selection",
           "side_schedule", "eta_pattern", "l2_init_tiles"]


from kdrobust.attacks._callable import make_callable  # noqa: E402

make_callable(__name__, square)

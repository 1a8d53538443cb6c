"""FAB and FAB-T (Croce & Hein, ICML 2020): the minimum-norm attack of AutoAttack.

Reference: ``fab_base.py``, ``fab_pt.py`` and ``fab_projections.py`` of
``fra31/auto-attack`` ``a392200`` (= ``pyautoattack==0.2.0``); checked
against it as docs/evaluation.md describes. L-inf and L2 (AutoAttack's L1 is not implemented).

One run (:func:`fab_single_run`) is ``n_iter`` jitted iterations (one
``lax.fori_loop``, or host-driven steps on CPU: ``apgd.resolve_loop``) on
the points correctly classified at ``x0``; no early stop:

    linearise at x1:   f_l = z_l - z_y,  g_l = grad_x f_l     (targeted: l = t only)
    l* = argmin_l |f_l| / (||g_l||_q + 1e-12)                 (q dual to p)
    hyperplane {v: <w, v> = b},  w = g_l*,  b = <w, x1> - f_l*
    d1 = Proj_p(x1 -> hyperplane, box),  d2 = Proj_p(x0 -> hyperplane, box)
    alpha = clip( ||d1||_p / (||d1||_p + ||d2||_p), 0, alpha_max )   (norms >= 1e-8)
    x1 <- clip_[0,1]( (1 - alpha)(x1 + eta d1) + alpha (x0 + eta d2) )
    if argmax f(x1) != y:  keep x1 if ||x1 - x0||_p is the smallest so far,
                           then x1 <- x0 + beta (x1 - x0)

A point counts as broken only if the best point found is misclassified
*and* ``||adv - x0||_p <= eps`` (the reference's ``perturb``). FAB-T uses the
``k``-th most likely clean class as target, ``k = 2 .. n_target_classes+1``,
with no random start (one restart); untargeted FAB (AutoAttack 'plus') uses
the full Jacobian (one backward pass per class) and random starts of radius
``eps/2`` from its second restart on.

The box-constrained hyperplane projections (:func:`projection_linf`,
:func:`projection_l2`) follow the reference's algorithm step by step:
sort the breakpoints, cumulative sums, then a ``ceil(log2 d)``-step
bisection, vectorised over rows. Like the reference, FAB runs in float32.
The host drivers (:func:`fab_rounds`) schedule targets and restarts as
rounds over all still-robust points (``apgd.run_rounds``).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kdrobust.attacks.apgd import (DEFAULT_BATCH, DEFAULT_BUCKETS, TRACES,
                                   as_logits_fn, bcast, bulk_key, lp_norm, predict,
                                   ranked_targets, resolve_loop, run_rounds, sharded_kernel)
from kdrobust.attacks.projected import as_key, canonical_norm
from kdrobust.attacks._precision import with_precision

Array = jax.Array


# ---------------------------------------------------------------------------
# Projections onto {v : <w, v> = b} intersected with the box (rows of [N, D]).
# ---------------------------------------------------------------------------


def _bisect(pred_at, n_rows: int, d: int, ub0: int):
  """``ceil(log2 d)`` bisection steps on integer positions, as the reference.

  ``pred_at(idx [N]) -> bool [N]``; ``lb`` moves up where true, ``ub`` down
  where false. Returns ``lb`` as int32.
  """
  def body(_, lu):
    lb, ub = lu
    mid = jnp.floor((lb + ub) / 2)
    c = pred_at(mid.astype(jnp.int32))
    return jnp.where(c, mid, lb), jnp.where(c, ub, mid)

  lb = jnp.zeros((n_rows,), jnp.float32)
  ub = jnp.full((n_rows,), float(ub0), jnp.float32)
  lb, _ = jax.lax.fori_loop(0, int(math.ceil(math.log2(d))), body, (lb, ub))
  return lb.astype(jnp.int32)


_PAIRWISE_MAX_D = 128


@jax.jit
def argsort_rows(a: Array) -> Array:
  """Stable ascending ``argsort`` along the last axis of ``a [N, D]``.

  XLA:CPU's comparator sort is ~40x slower than numpy on small rows, so on
  CPU with ``D <= 128`` the permutation is built from pairwise ranks
  (``rank_i = #{j: a_j < a_i} + #{j < i: a_j = a_i}``, then scattered): the
  same stable order, in O(D^2) vectorised work. Elsewhere ``jnp.argsort``.
  """
  n, d = a.shape
  if jax.default_backend() != "cpu" or d > _PAIRWISE_MAX_D:
    return jnp.argsort(a, axis=-1)
  ai = a[:, :, None]
  aj = a[:, None, :]
  idx = jnp.arange(d)
  earlier = idx[None, :] < idx[:, None]  # [i, j]: j < i
  rank = jnp.sum((aj < ai) | ((aj == ai) & earlier[None]), axis=-1)
  rows = jnp.broadcast_to(jnp.arange(n)[:, None], (n, d))
  perm = jnp.zeros((n, d), jnp.int32).at[rows, rank].set(
      jnp.broadcast_to(idx.astype(jnp.int32), (n, d)))
  return perm


def _take(a: Array, idx: Array) -> Array:
  """``a[n, idx[n]]`` for ``a [N, D]``, ``idx [N]``."""
  return jnp.take_along_axis(a, idx[:, None], axis=1)[:, 0]


@jax.jit
def projection_linf(t: Array, w: Array, b: Array) -> Array:
  """Minimal-L-inf step ``d`` with ``<w, t + d> = b`` and ``t + d`` in [0,1]^D.

  Orient so ``<w, t> - b >= 0``. Coordinate ``i`` moves towards the box face
  ``a_i = [w_i < 0]`` by ``min(lambda, p_i)``, ``p_i`` its distance to that
  face; the smallest ``lambda >= 0`` with ``sum_i |w_i| min(lambda, p_i) =
  <w, t> - b`` is found over the sorted ``p`` (cumulative sums + bisection).
  If even saturating every coordinate is not enough, ``d = a - t`` (all
  coordinates at the face). Coordinates with ``w_i = 0`` stay put.
  """
  sign = jnp.where(jnp.sum(w * t, axis=1) - b >= 0, 1, -1).astype(w.dtype)
  w = w * sign[:, None]
  b = b * sign
  a = (w < 0).astype(w.dtype)
  nz = (w != 0).astype(w.dtype)
  d = (a - t) * nz
  p = a - t * (2 * a - 1)
  indp = argsort_rows(p)
  b = b - jnp.sum(w * t, axis=1)
  b0 = jnp.sum(w * d, axis=1)
  indp2 = jnp.flip(indp, axis=1)
  ws = jnp.take_along_axis(w, indp2, axis=1)
  bs2 = -ws * jnp.take_along_axis(d, indp2, axis=1)
  s = jnp.cumsum(jnp.abs(ws), axis=1)
  sb = jnp.cumsum(bs2, axis=1) + b0[:, None]
  n, dim = w.shape
  b2 = sb[:, -1] - s[:, -1] * _take(p, indp[:, 0])
  c_l = b - b2 > 0
  c2 = (b - b0 > 0) & ~c_l

  def pred_at(k):
    indcurr = _take(indp, dim - 1 - k)
    return b - (_take(sb, k) - _take(s, k) * _take(p, indcurr)) > 0

  lb = _bisect(pred_at, n, dim, dim - 1)
  lmbd_l = jnp.maximum((b - sb[:, -1]) / (-s[:, -1]), 0)[:, None]
  d_l = (2 * a - 1) * lmbd_l
  lmbd_2 = jnp.maximum((b - _take(sb, lb)) / (-_take(s, lb)), 0)[:, None]
  d_2 = jnp.minimum(lmbd_2, d) * a + jnp.maximum(-lmbd_2, d) * (1 - a)
  d = jnp.where(c_l[:, None], d_l, jnp.where(c2[:, None], d_2, d))
  return d * nz


@jax.jit
def projection_l2(t: Array, w: Array, b: Array) -> Array:
  """Minimal-L2 step ``d`` with ``<w, t + d> = b`` and ``t + d`` in [0,1]^D.

  Orient so ``c = <w, t> - b >= 0``; then ``d_i = clip(-gamma w_i, box)`` with
  ``gamma >= 0`` solving ``<w, d> = -c``. ``r_i`` is the ``gamma`` at which
  coordinate ``i`` hits the box; the piecewise-linear equation is solved
  over the sorted ``r`` (cumulative sums + bisection). Without box
  violation ``d = -(c / ||w||^2) w``; if infeasible every coordinate
  saturates. Coordinates with ``|w_i| <= 1e-8`` stay put.
  """
  c = jnp.sum(w * t, axis=1) - b
  ind2 = jnp.where(c >= 0, 1, -1).astype(w.dtype)
  w = w * ind2[:, None]
  c = c * ind2
  small = jnp.abs(w) < 1e-8
  big = (jnp.abs(w) > 1e-8).astype(w.dtype)
  r = jnp.clip(jnp.maximum(t / w, (t - 1) / w), -1e12, 1e12)
  r = jnp.where(small, 1e12, r)
  r = jnp.where(r == -1e12, 1e12, r)
  indr = argsort_rows(r)
  rs = jnp.take_along_axis(r, indr, axis=1)
  rs2 = jnp.concatenate([rs[:, 1:], jnp.zeros_like(rs[:, :1])], axis=1)
  rs = jnp.where(rs == 1e12, 0.0, rs)
  rs2 = jnp.where(rs2 == 1e12, 0.0, rs2)
  w3s = jnp.take_along_axis(w ** 2, indr, axis=1)
  w5 = jnp.sum(w3s, axis=1, keepdims=True)
  ws = w5 - jnp.cumsum(w3s, axis=1)
  d = -(r * w) * big
  s = jnp.concatenate([-w5 * rs[:, :1],
                       jnp.cumsum((-rs2 + rs) * ws, axis=1) - w5 * rs[:, :1]], axis=1)
  c4 = s[:, 0] + c < 0
  c3 = jnp.sum(d * w, axis=1) + c > 0
  c2 = ~(c4 | c3)
  n, dim = w.shape
  lb = _bisect(lambda k: _take(s, k) + c > 0, n, dim, dim - 1)
  d_4 = -(c / w5[:, 0])[:, None] * w
  ws_lb = _take(ws, lb)
  alpha = (_take(s, lb) + c) / ws_lb + _take(rs, lb)
  alpha = jnp.where(ws_lb == 0, 0.0, alpha)[:, None]
  c5 = (alpha > r).astype(w.dtype)
  d_2 = d * c5 - alpha * w * (1 - c5)
  d = jnp.where(c4[:, None], d_4, jnp.where(c2[:, None], d_2, d))
  return d * big


_PROJ = {"linf": projection_linf, "l2": projection_l2}


def _dual_norm(g: Array, norm: str) -> Array:
  """``||g||_q`` over the last axis: L-inf -> L1, L2 -> L2."""
  if norm == "linf":
    return jnp.sum(jnp.abs(g), axis=-1)
  return jnp.sqrt(jnp.sum(g ** 2, axis=-1))


def _row_norm(d: Array, norm: str) -> Array:
  if norm == "linf":
    return jnp.max(jnp.abs(d), axis=-1)
  return jnp.sqrt(jnp.sum(d ** 2, axis=-1))


# ---------------------------------------------------------------------------
# The attack.
# ---------------------------------------------------------------------------


class FabRun(NamedTuple):
  """``adv``: best point (clean ``x`` where nothing was found); ``success``:
  misclassified and within ``eps``; ``radius``: ``||adv - x||_p`` (1e10 when
  nothing was found)."""
  adv: Array
  success: Array
  radius: Array


def _diff_logits_grads(fn, x1, y, y_t, targeted):
  """``(df [B, K], dg [B, K, D])``: ``f_l = z_l - z_y`` and its input gradient.

  Targeted: ``K = 1``, ``l = t`` (one backward pass of ``sum(z_t - z_y)``).
  Untargeted: every class (``C`` backward passes); ``f_y`` is set to 1e10.
  """
  b = x1.shape[0]
  if targeted:
    def obj(u):
      z = fn(u)
      dz = -(_take(z, y) - _take(z, y_t))
      return jnp.sum(dz), dz
    g, dz = jax.grad(obj, has_aux=True)(x1)
    return dz[:, None], g.reshape(b, 1, -1)
  z, vjp = jax.vjp(fn, x1)
  n_cls = z.shape[-1]
  cts = jnp.broadcast_to(jnp.eye(n_cls, dtype=z.dtype)[:, None, :], (n_cls, b, n_cls))
  g2 = jax.vmap(lambda ct: vjp(ct)[0])(cts)  # [C, B, ...]
  g2 = jnp.swapaxes(g2.reshape(n_cls, b, -1), 0, 1)  # [B, C, D]
  df = z - _take(z, y)[:, None]
  dg = g2 - jnp.take_along_axis(g2, y[:, None, None], axis=1)
  df = jnp.where(jax.nn.one_hot(y, n_cls, dtype=bool), 1e10, df)
  return df, dg


class FabConsts(NamedTuple):
  """Loop-invariant inputs of a FAB run (a pytree)."""
  fn: object
  x: Array
  y: Array
  y_t: Array
  ok: Array


def _fab_init(fn, x, y, x_start, target_class, *, targeted):
  """Clean correctness, the target ``y_t`` and the loop state ``(x1, adv, best_norm)``."""
  TRACES["fab_init"] += 1
  z0 = fn(x)
  ok = jnp.argmax(z0, -1) == y
  y_t = ranked_targets(z0, target_class) if targeted else y
  state = (x_start, x, jnp.full((x.shape[0],), 1e10, x.dtype))
  return FabConsts(fn, x, y, y_t, ok), state


def _fab_step(i, carry, c: FabConsts, *, norm, targeted, alpha_max, eta, beta):
  """One FAB iteration (see the module docstring)."""
  del i
  TRACES["fab_step"] += 1
  fn, x, y = c.fn, c.x, c.y
  b = x.shape[0]
  x1, adv, res2 = carry
  df, dg = _diff_logits_grads(fn, x1, y, c.y_t, targeted)
  dist1 = jnp.abs(df) / (1e-12 + _dual_norm(dg, norm))
  ind = jnp.argmin(dist1, axis=1)
  dg2 = jnp.take_along_axis(dg, ind[:, None, None], axis=1)[:, 0]
  bb = -_take(df, ind) + jnp.sum(dg2 * x1.reshape(b, -1), axis=-1)
  d3 = _PROJ[norm](jnp.concatenate([x1.reshape(b, -1), x.reshape(b, -1)], 0),
                   jnp.concatenate([dg2, dg2], 0), jnp.concatenate([bb, bb], 0))
  d1 = d3[:b].reshape(x.shape)
  d2 = d3[b:].reshape(x.shape)
  a0 = jnp.maximum(_row_norm(d3, norm), 1e-8)
  a1 = bcast(a0[:b], x)
  a2 = bcast(a0[b:], x)
  alpha = jnp.minimum(jnp.maximum(a1 / (a1 + a2), 0.0), alpha_max)
  x1 = jnp.clip((x1 + eta * d1) * (1 - alpha) + (x + d2 * eta) * alpha, 0.0, 1.0)
  is_adv = jnp.argmax(fn(x1), -1) != y
  t = lp_norm(x1 - x, norm)
  better = is_adv & (t < res2)
  adv = jnp.where(bcast(better, x), x1, adv)
  res2 = jnp.where(better, t, res2)
  x1 = jnp.where(bcast(is_adv, x), x + (x1 - x) * beta, x1)
  return x1, adv, res2


def _fab_finish(c: FabConsts, carry, eps, *, norm) -> FabRun:
  """The best point where found, and the reference ``perturb``'s success test:
  misclassified (fresh forward pass) and ``||adv - x||_p <= eps``."""
  TRACES["fab_finish"] += 1
  _, adv, res2 = carry
  x = c.x
  found = c.ok & (res2 < 1e10)
  adv_c = jnp.where(bcast(found, x), adv, x)
  still = jnp.argmax(c.fn(adv_c), -1) == c.y
  radius = lp_norm(x - adv_c, norm)
  success = ~(still | (radius > jnp.asarray(eps, x.dtype)))
  return FabRun(adv_c, success, jnp.where(found, res2, 1e10))


def _fab_core(fn, x, y, x_start, target_class, eps, *, n_iter, norm, targeted,
              alpha_max, eta, beta) -> FabRun:
  """One FAB run in a single ``lax.fori_loop``."""
  c, s = _fab_init(fn, x, y, x_start, target_class, targeted=targeted)
  body = functools.partial(_fab_step, c=c, norm=norm, targeted=targeted,
                           alpha_max=alpha_max, eta=eta, beta=beta)
  return _fab_finish(c, jax.lax.fori_loop(0, n_iter, body, s), eps, norm=norm)


_STATIC = ("n_iter", "norm", "targeted", "alpha_max", "eta", "beta")
_STEP_STATIC = ("norm", "targeted", "alpha_max", "eta", "beta")
_fab_core_jit = jax.jit(_fab_core, static_argnames=_STATIC)
_fab_init_jit = jax.jit(_fab_init, static_argnames=("targeted",))
_fab_step_jit = jax.jit(_fab_step, static_argnames=_STEP_STATIC)
_fab_finish_jit = jax.jit(_fab_finish, static_argnames=("norm",))


def _fab_host(fn, x, y, x_start, target_class, eps, *, n_iter, norm, targeted,
              alpha_max, eta, beta) -> FabRun:
  """The same run with one jitted step per iteration (see ``apgd.resolve_loop``)."""
  c, s = _fab_init_jit(fn, x, y, x_start, target_class, targeted=targeted)
  for i in range(n_iter):
    s = _fab_step_jit(jnp.asarray(i, jnp.int32), s, c, norm=norm, targeted=targeted,
                      alpha_max=alpha_max, eta=eta, beta=beta)
  return _fab_finish_jit(c, s, eps, norm=norm)


def fab_random_start(key: Array, x: Array, eps, norm: str) -> Array:
  """FAB's restart point: ``clip_[0,1](x + (eps/2) t / ||t||_p)``.

  ``t ~ U[-1, 1)`` for L-inf, ``N(0, I)`` for L2 (radius ``min(1e10, eps)/2``).
  """
  eps = jnp.asarray(eps, x.dtype)
  key = bulk_key(key)
  if norm == "linf":
    t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  else:
    t = jax.random.normal(key, x.shape, x.dtype)
  r = bcast(jnp.minimum(jnp.asarray(1e10, x.dtype), eps), x)
  return jnp.clip(x + r * t / bcast(lp_norm(t, norm), x) * 0.5, 0.0, 1.0)


@with_precision
def fab_single_run(logits_fn, x, y, *, eps, target_class: int | None = None,
                   x_start=None, n_iter: int = 100, norm: str = "linf",
                   alpha_max: float = 0.1, eta: float = 1.05,
                   beta: float = 0.9, loop: str = "auto") -> FabRun:
  """One FAB run (jitted). ``target_class=k`` targets the ``k``-th most likely clean class.

  ``x_start`` defaults to ``x`` (no random start, as FAB-T in AutoAttack).
  Like the reference, FAB runs in float32. ``loop``: see ``apgd.resolve_loop``.
  """
  norm = canonical_norm(norm)
  x = jnp.asarray(x, jnp.float32)
  x_start = x if x_start is None else jnp.asarray(x_start, jnp.float32)
  tc = jnp.asarray(0 if target_class is None else target_class, jnp.int32)
  run = _fab_core_jit if resolve_loop(loop) == "device" else _fab_host
  return run(as_logits_fn(logits_fn), x, jnp.asarray(y), x_start, tc,
             jnp.asarray(eps, jnp.float32), n_iter=n_iter, norm=norm,
             targeted=target_class is not None, alpha_max=alpha_max, eta=eta,
             beta=beta)


@functools.partial(jax.jit, static_argnames=("norm",))
def _fab_prepare(x, round_idx, key, eps, n_restarts, *, norm):
  """Start point and target rank of one chunk: round ``r`` = (target ``2 + r // R``,
  restart ``r % R``; random start from restart 1 on)."""
  TRACES["fab_prepare"] += 1
  restart = round_idx % n_restarts
  x_start = jnp.where(restart > 0, fab_random_start(key, x, eps, norm), x)
  return x_start, 2 + round_idx // n_restarts


def sharded_fab_core(mesh, **static):
  """``_fab_core(fn, x, y, x_start, target_class, eps)`` with the rows split over ``mesh``.

  Per device, no collectives (``apgd.sharded_kernel``); ``static``: ``_fab_core``'s
  ``n_iter, norm, targeted, alpha_max, eta, beta``.
  """
  return sharded_kernel(_fab_core, mesh, (False, True, True, True, False, False), **static)


@with_precision
def fab_rounds(logits_fn, x, y, key=0, *, eps, norm: str = "linf",
               targeted: bool = True, n_iter: int = 100, n_restarts: int = 1,
               n_target_classes: int = 9, alpha_max: float = 0.1,
               eta: float = 1.05, beta: float = 0.9, active=None,
               batch_size: int | None = None, progress=None, loop: str = "auto",
               buckets: int | None = DEFAULT_BUCKETS, mesh=None):
  """Host driver shared by :func:`fab`, :func:`fab_targeted` and AutoAttack.

  Returns ``(x_adv, fooled)`` (numpy); ``x_adv`` is clean where not fooled.
  ``batch_size`` is the chunk size; ``mesh`` splits chunks over devices
  (``apgd.run_rounds``).
  """
  norm = canonical_norm(norm)
  fn = as_logits_fn(logits_fn)
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  n = x.shape[0]
  active = np.ones(n, bool) if active is None else np.asarray(active, bool)
  bs = min(batch_size or DEFAULT_BATCH, n)
  eps_a = jnp.asarray(eps, jnp.float32)
  n_rounds = n_restarts * (n_target_classes if targeted else 1)

  run = _fab_core_jit if resolve_loop(loop) == "device" else _fab_host
  n_res = jnp.asarray(n_restarts, jnp.int32)

  def kernel(xb, yb, valid, r, k):
    del valid
    x_start, tc = _fab_prepare(xb, r, k, eps_a, n_res, norm=norm)
    if mesh is not None:  # the start is drawn globally; each device runs its rows
      core = sharded_fab_core(mesh, n_iter=n_iter, norm=norm, targeted=targeted,
                              alpha_max=alpha_max, eta=eta, beta=beta)
      res = core(fn, xb, yb, x_start, tc, eps_a)
      return res.adv, res.success, res.radius
    res = run(fn, xb, yb, x_start, tc, eps_a, n_iter=n_iter, norm=norm,
              targeted=targeted, alpha_max=alpha_max, eta=eta, beta=beta)
    return res.adv, res.success, res.radius

  x_adv, fooled, _ = run_rounds(kernel, x, y, active, n_rounds=n_rounds,
                                key=as_key(key), batch_size=bs, buckets=buckets,
                                progress=progress, mesh=mesh)
  return x_adv, fooled


@with_precision
def fab_targeted(logits_fn, x, y, key=0, *, eps, norm: str = "linf",
                 n_iter: int = 100, n_target_classes: int = 9,
                 n_restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9, batch_size: int | None = None) -> np.ndarray:
  """FAB-T as in AutoAttack standard: targets ranked 2 .. n_target_classes + 1.

  Returns ``x_adv`` (numpy): the minimal-norm adversarial point found where
  it lies within ``eps``, the clean point elsewhere.
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  ok = predict(logits_fn, x, batch_size=batch_size) == y
  x_adv, _ = fab_rounds(logits_fn, x, y, key, eps=eps, norm=norm, targeted=True,
                        n_iter=n_iter, n_restarts=n_restarts,
                        n_target_classes=n_target_classes, alpha_max=alpha_max,
                        eta=eta, beta=beta, active=ok, batch_size=batch_size)
  return x_adv


@with_precision
def fab(logits_fn, x, y, key=0, *, eps, norm: str = "linf", n_iter: int = 100,
        n_restarts: int = 5, alpha_max: float = 0.1, eta: float = 1.05,
        beta: float = 0.9, batch_size: int | None = None) -> np.ndarray:
  """Untargeted FAB (AutoAttack 'plus'): full Jacobian, random starts after restart 0."""
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  ok = predict(logits_fn, x, batch_size=batch_size) == y
  x_adv, _ = fab_rounds(logits_fn, x, y, key, eps=eps, norm=norm, targeted=False,
                        n_iter=n_iter, n_restarts=n_restarts, alpha_max=alpha_max,
                        eta=eta, beta=beta, active=ok, batch_size=batch_size)
  return x_adv


__all__ = ["FabRun", "fab", "fab_targeted", "fab_single_run", "fab_rounds",
           "fab_random_start", "projection_linf", "projection_l2"]

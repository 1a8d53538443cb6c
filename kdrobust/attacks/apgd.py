"""APGD and APGD-T (Croce & Hein, ICML 2020), exactly as AutoAttack runs them.

Reference: ``fra31/auto-attack`` at ``a392200`` = ``pyautoattack==0.2.0``
(``autopgd_base.py``); how it is checked: docs/evaluation.md.

One single run (:func:`apgd_single_run`) is a jitted init plus ``n_iter``
jitted steps, driven by one ``lax.fori_loop`` (``loop='device'``, the default
off CPU) or by the host, one dispatch per step with every state array staying
on the device (``loop='host'``, the default on CPU: :func:`resolve_loop`);
every per-example quantity is an array:

    x_0 = clip_[0,1](x_init),  eta_0 = 2 eps (per example),  g_0 = grad L(x_0)
    for i = 0 .. n_iter-1:
      a = 1 if i == 0 else 0.75,   Delta = x_i - x_{i-1}
      z = P( x_i + eta * dir(g_i) )
      x_{i+1} = P( x_i + a (z - x_i) + (1 - a) Delta )
      (L_{i+1}, g_{i+1}) at x_{i+1};  keep the best-loss point (strict >) and
      the most recent misclassified iterate
      at a checkpoint (a host-side table, see checkpoint_schedule):
        reduce = [#{increases in the last k steps} <= rho k]
                 or [not reduced_last and L_best_last >= L_best]
        where reduce: eta /= 2, x_{i+1} = x_best, g_{i+1} = g_best

with ``P`` = ball then box clipping for L-inf, and "rescale into the ball,
then clip to the box" for L2, and ``dir = sign`` (L-inf) or ``g / ||g||_2``.
Every quirk of the reference is kept (docs/evaluation.md): the ``<=`` in the
oscillation test and its wrap-around read of ``loss_steps[-1]`` at the first
checkpoint, ``x_{i-1}`` not reset after a restart-from-best, per-example step
sizes, strict ``>`` for the best loss, a misclassified random start counting,
momentum 0.75 from ``i = 1``. Like the reference, the step sizes and the
``loss_steps`` buffer are float32 even when the run is float64. The schedule
tables are arguments padded to a multiple of 100 iterations, so ``n_iter``
= 10, 20 or 100 share one compilation.

Randomness: :func:`random_start` (L-inf: ``x + eps t / max|t|``,
``t ~ U[-1,1)``, a point on the eps-sphere; L2: ``x + eps t / ||t||_2``,
``t ~ N(0, I)``) is the only random draw; the kernel takes ``x_init``
explicitly so tests can inject the reference's start.

The host-level :func:`apgd` / :func:`apgd_targeted` reproduce the reference's
``perturb``: restarts (and targets) each run on the points still robust,
starting from the clean point. Points are compacted on the host between
rounds and re-batched into chunks of ``batch_size`` rows, a smaller last
chunk padded (with a mask) to one of a few fixed sizes (:func:`bucket_size`),
so the compiled kernels serve every round, batch and epsilon (``eps`` is
traced) without recompiling. Rounds run
"target-major" over all still-robust points instead of the reference's
"batch-major" order; every run is per-example independent, so only the
assignment of random numbers differs (docs/evaluation.md).

This module also holds the small shared helpers the other attacks use
(``as_logits_fn``, ``run_rounds``, ``predict``, ``derive_key``, ``bulk_key``).
"""

from __future__ import annotations

import collections
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kdrobust import losses
from kdrobust.attacks.projected import as_key, canonical_norm
from kdrobust.attacks._precision import with_precision

Array = jax.Array
LogitsFn = Callable[..., Array]
APGD_LOSSES = ("ce", "dlr", "dlr-targeted")
DEFAULT_BATCH = 250  # AutoAttack's run_standard_evaluation default.
DEFAULT_BUCKETS = 8  # padded chunk shapes per kernel on CPU (see bucket_size)
ACCELERATOR_BUCKETS = 2  # on GPU/TPU, where each shape costs seconds to compile
# Trace counters of the jitted kernels (tests assert that nothing retraces).
TRACES: collections.Counter = collections.Counter()


# ---------------------------------------------------------------------------
# Shared helpers (used by fab.py, square.py, autoattack.py, transfer.py).
# ---------------------------------------------------------------------------


def as_logits_fn(logits_fn: LogitsFn) -> jax.tree_util.Partial:
  """Wrap ``logits_fn`` as a ``jax.tree_util.Partial`` so it can be a jit argument.

  A ``Partial(apply_fn, params)`` passed by the caller keeps ``params`` as
  traced leaves (no constants baked into the executable, one compilation
  per ``apply_fn``); any other callable becomes a leaf-less ``Partial`` whose
  identity keys the jit cache.
  """
  if isinstance(logits_fn, jax.tree_util.Partial):
    return logits_fn
  return jax.tree_util.Partial(logits_fn)


def call_logits(fn, x: Array, key: Array | None, randomized: bool) -> Array:
  """``fn(x, key)`` for a randomized model (EoT), ``fn(x)`` otherwise."""
  return fn(x, key) if randomized else fn(x)


def bcast(v: Array, like: Array) -> Array:
  """Reshape a per-example vector ``[B]`` to broadcast against ``like`` ``[B, ...]``."""
  return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def l2_norm(v: Array) -> Array:
  """Per-example ``||v||_2`` over all non-batch axes, shape ``[B]``."""
  return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=-1))


def linf_norm(v: Array) -> Array:
  """Per-example ``||v||_inf``, shape ``[B]``."""
  return jnp.max(jnp.abs(v.reshape(v.shape[0], -1)), axis=-1)


def lp_norm(v: Array, norm: str) -> Array:
  return linf_norm(v) if norm == "linf" else l2_norm(v)


def normalize(v: Array, norm: str) -> Array:
  """``v / (||v||_p + 1e-12)`` per example (the reference's ``normalize``)."""
  return v / (bcast(lp_norm(v, norm), v) + 1e-12)


def ranked_targets(clean_logits: Array, target_class) -> Array:
  """The ``target_class``-th largest logit's index (``sort(z)[:, -k]``).

  ``target_class`` is 2 for the runner-up class. Ties are resolved by
  ``jnp.argsort``'s stable order (torch's sort is not stable, P14).
  """
  order = jnp.argsort(clean_logits, axis=-1)
  col = clean_logits.shape[-1] - jnp.asarray(target_class, jnp.int32)
  idx = jnp.broadcast_to(col, (clean_logits.shape[0], 1))
  return jnp.take_along_axis(order, idx, axis=-1)[:, 0]


def bulk_key(key: Array) -> Array:
  """An ``unsafe_rbg`` key (XLA's RngBitGenerator) derived from any PRNG key, inside jit.

  Bulk draws (random starts, Square's per-iteration draws) use it: threefry
  draws compile slowly on CPU (~2 s per shape on a loaded 2-core machine)
  while RngBitGenerator compiles in ~0.3 s. Deterministic per key.
  """
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  d = key.reshape(-1).astype(jnp.uint32)
  while d.size < 4:
    d = jnp.concatenate([d, d ^ jnp.uint32(0x5BD1E995)])
  return jax.random.wrap_key_data(d[:4], impl="unsafe_rbg")


@jax.jit
def _fold(key, data):
  for j in range(data.shape[0]):
    key = jax.random.fold_in(key, data[j])
  return key


def derive_key(key, *ints: int) -> Array:
  """``fold_in(key, i1, i2, ...)`` (up to 4 ints) in one compiled call.

  Host drivers derive every round/chunk key through this single executable
  instead of eager ``fold_in`` calls, each of which would compile (~0.1-0.5 s
  on a loaded CPU).
  """
  data = np.zeros(4, np.int32)
  data[:len(ints)] = ints
  data[3] = len(ints)
  return _fold(key, data)


@functools.partial(jax.jit, static_argnames=("randomized",))
def _predict(fn, x, key, randomized=False):
  return jnp.argmax(call_logits(fn, x, key, randomized), axis=-1)


def resolve_buckets(buckets: int | None) -> int:
  """``None``: :data:`DEFAULT_BUCKETS` (8) on CPU, :data:`ACCELERATOR_BUCKETS` (2) elsewhere.

  On an accelerator a compilation costs seconds (minutes for AutoAttack's six
  kernel families x 8 shapes), a padded row microseconds; on CPU the reverse.
  """
  if buckets is None:
    return DEFAULT_BUCKETS if jax.default_backend() == "cpu" else ACCELERATOR_BUCKETS
  if int(buckets) < 1:
    raise ValueError(f"buckets must be >= 1 (or None for the backend's default), got {buckets}.")
  return int(buckets)


def attack_mesh(devices=None):
  """A 1-D mesh (axis ``'rows'``) over ``devices`` for sharding attack chunks, or None.

  ``devices``: ``None``/``'all'`` = every local device, an int = the first
  that many, or a sequence of devices. One device gives ``None`` (no
  sharding, plain arrays). The attack kernels are per-example, so a chunk's
  rows split over the mesh need no collectives.
  """
  if devices is None or devices == "all":
    devs = jax.local_devices()
  elif isinstance(devices, int):
    avail = jax.local_devices()
    if not 1 <= devices <= len(avail):
      raise ValueError(f"devices={devices}: between 1 and {len(avail)} local devices.")
    devs = avail[:devices]
  else:
    devs = list(devices)
  if len(devs) <= 1:
    return None
  return jax.sharding.Mesh(np.asarray(devs), ("rows",))


def mesh_size(mesh) -> int:
  return 1 if mesh is None else int(mesh.devices.size)


def put_rows(a: np.ndarray, mesh=None) -> Array:
  """``a`` on the device(s): its leading (row) axis split over ``mesh`` if given."""
  if mesh is None:
    return jnp.asarray(a)
  spec = jax.sharding.PartitionSpec("rows", *([None] * (np.ndim(a) - 1)))
  return jax.device_put(a, jax.sharding.NamedSharding(mesh, spec))


_SHARDED: dict = {}


def sharded_kernel(core, mesh, row_args: tuple[bool, ...], **static):
  """``jit(shard_map(core))``: each device runs ``core`` on its own rows, no collectives.

  ``row_args[i]`` says whether positional argument ``i`` is split by rows
  (``P('rows')``) or replicated (``P()``: the logits function and its
  parameters, eps, tables, keys); every output is split by rows. ``static``
  are ``core``'s static keyword arguments. Cached per (core, mesh, layout,
  statics), so a chunk never retraces. For the per-example kernels (APGD
  and FAB runs) the rows of a device give the same numbers as the same rows
  of a one-device chunk; random draws happen outside, in the (global)
  prepare kernels, so they do not depend on the device count.
  """
  key = (core, mesh, row_args, tuple(sorted(static.items())))
  fn = _SHARDED.get(key)
  if fn is None:
    rows, rep = jax.sharding.PartitionSpec("rows"), jax.sharding.PartitionSpec()
    fn = jax.jit(jax.shard_map(functools.partial(core, **static), mesh=mesh,
                               in_specs=tuple(rows if r else rep for r in row_args),
                               out_specs=rows, check_vma=False))
    _SHARDED[key] = fn
  return fn


def _pad_rows(a: np.ndarray, n: int) -> np.ndarray:
  """Pad ``a`` to ``n`` rows by repeating its first row (valid numbers, masked out)."""
  if a.shape[0] == n:
    return a
  reps = np.repeat(a[:1], n - a.shape[0], axis=0)
  return np.concatenate([a, reps], axis=0)


@with_precision
def predict(logits_fn: LogitsFn, x, *, batch_size: int | None = None,
            key=None, randomized: bool = False, buckets: int | None = DEFAULT_BUCKETS,
            mesh=None) -> np.ndarray:
  """Batched argmax predictions as a numpy array (fixed padded chunk shape).

  Chunks of ``batch_size`` rows (default ``min(250, N)``), a smaller one
  padded to a :func:`bucket_size` shape of ``batch_size``, so AutoAttack's
  re-checks of ever fewer robust points reuse a few shapes. ``mesh``
  (:func:`attack_mesh`) splits every chunk's rows over its devices.
  """
  fn = as_logits_fn(logits_fn)
  x = np.asarray(x)
  n = x.shape[0]
  bs = int(batch_size) if batch_size else min(DEFAULT_BATCH, n)
  key = as_key(0 if key is None else key)
  out = np.empty((n,), np.int64)
  for c, (sel, size) in enumerate(chunks(np.arange(n), bs, resolve_buckets(buckets),
                                         mesh_size(mesh))):
    pred = _predict(fn, put_rows(_pad_rows(x[sel], size), mesh), derive_key(key, c),
                    randomized=randomized)
    out[sel] = np.asarray(pred)[:sel.size]
  return out


def bucket_size(n: int, batch_size: int, buckets: int = DEFAULT_BUCKETS,
                multiple: int = 1) -> int:
  """Padded row count for a chunk of ``n <= batch_size`` rows.

  The shapes are ``ceil(k batch_size / buckets)`` rounded up to a multiple of
  8 (capped at ``batch_size``), ``k = 1 .. buckets``: at most ``buckets``
  compilations per kernel, at most ``batch_size / buckets`` padded rows.
  ``buckets=1`` gives one fixed shape. ``multiple`` (the number of devices a
  chunk is split over) rounds every size up to a multiple of it.
  """
  up = lambda v: -(-v // multiple) * multiple
  if buckets <= 1 or n >= batch_size:
    return up(batch_size)
  for k in range(1, buckets + 1):
    size = min(batch_size, -(-int(math.ceil(k * batch_size / buckets)) // 8) * 8)
    if n <= size:
      return up(size)
  return up(batch_size)


def chunks(idx: np.ndarray, batch_size: int, buckets: int = DEFAULT_BUCKETS,
           multiple: int = 1):
  """Cut ``idx`` into ``(rows, padded_size)`` chunks of at most ``batch_size`` rows."""
  for start in range(0, idx.size, batch_size):
    sel = idx[start:start + batch_size]
    yield sel, bucket_size(sel.size, batch_size, buckets, multiple)


def run_rounds(kernel, x: np.ndarray, y: np.ndarray, active: np.ndarray, *,
               n_rounds: int, key: Array, batch_size: int, buckets: int | None = DEFAULT_BUCKETS,
               progress: Callable[[int, int], None] | None = None, mesh=None):
  """Run ``n_rounds`` rounds of a per-example-independent attack with compaction.

  Round ``r`` attacks the points that are ``active`` and not yet fooled, in
  index order, in chunks of at most ``batch_size`` rows, each padded (by
  repeating a row, masked out) to one of the :func:`bucket_size` shapes.
  ``kernel(xb, yb, valid, r, key) -> (adv, success, aux)`` runs one chunk;
  where ``success`` the point is fooled and ``adv`` stored.
  ``progress(done, total_estimate)`` is called after every chunk. ``mesh``
  (:func:`attack_mesh`) splits each chunk's rows over its devices (padded
  sizes rounded up to a multiple of the device count); the kernels are
  per-example, so the split needs no collectives. Returns
  ``(x_adv, fooled, aux_list)``.
  """
  buckets = resolve_buckets(buckets)
  multiple = mesh_size(mesh)
  x_adv = np.array(x, copy=True)
  fooled = np.zeros(x.shape[0], bool)
  aux = []
  done = 0
  for r in range(n_rounds):
    idx = np.flatnonzero(active & ~fooled)
    if idx.size == 0:
      break
    total_est = done + idx.size * (n_rounds - r)
    for c, (sel, size) in enumerate(chunks(idx, batch_size, buckets, multiple)):
      nv = sel.size
      valid = np.arange(size) < nv
      adv, succ, a = kernel(put_rows(_pad_rows(x[sel], size), mesh),
                            put_rows(_pad_rows(y[sel], size), mesh), put_rows(valid, mesh),
                            jnp.asarray(r, jnp.int32), derive_key(key, r, c))
      succ = np.asarray(succ)[:nv]
      adv = np.asarray(adv)[:nv]
      hit = sel[succ]
      fooled[hit] = True
      x_adv[hit] = adv[succ]
      aux.append(jax.tree_util.tree_map(lambda t: np.asarray(t)[:nv], a))
      done += nv
      if progress is not None:
        progress(done, total_est)
  return x_adv, fooled, aux


# ---------------------------------------------------------------------------
# APGD proper.
# ---------------------------------------------------------------------------


def apgd_params(n_iter: int) -> tuple[int, int, int]:
  """``(n_iter_2, n_iter_min, size_decr) = max(int(c N), 1)`` for c = 0.22, 0.06, 0.03."""
  return (max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1),
          max(int(0.03 * n_iter), 1))


def checkpoint_schedule(n_iter: int) -> tuple[np.ndarray, np.ndarray]:
  """Static checkpoint table: ``(is_check[i], window[i])`` for ``i < n_iter``.

  A counter runs over iterations; a check happens when it reaches the
  current window ``k`` (first ``n_iter_2``), then
  ``k <- max(k - size_decr, n_iter_min)`` and the counter resets. For
  ``n_iter = 100`` the checks are at 21, 40, 56, 69, 79, 86, 92, 98.
  ``window[i]`` is the ``k`` used by the check at ``i`` (0 elsewhere).
  """
  k, k_min, decr = apgd_params(n_iter)
  is_check = np.zeros(n_iter, bool)
  window = np.zeros(n_iter, np.int32)
  counter = 0
  for i in range(n_iter):
    counter += 1
    if counter == k:
      is_check[i] = True
      window[i] = k
      k = max(k - decr, k_min)
      counter = 0
  return is_check, window


def oscillation_count(loss_steps: Array, i, k, n_iter=None) -> Array:
  """``sum_{c=0}^{k-1} [L[i-c] > L[i-c-1]]`` per example, with Python's index wrap.

  ``loss_steps`` is ``[L, B]`` (``L >= n_iter``, rows past ``n_iter`` unused).
  At the first checkpoint ``i - k = -1`` and the reference reads
  ``loss_steps[-1]`` of its ``[n_iter, B]`` buffer, i.e. row ``n_iter - 1``
  (still zero then); the index ``(r - 1) mod n_iter`` reproduces exactly that.
  """
  n = loss_steps.shape[0] if n_iter is None else n_iter
  rows1 = jnp.arange(loss_steps.shape[0])
  prev = jnp.take(loss_steps, (rows1 - 1) % n, axis=0)
  rows = rows1[:, None]
  in_window = (rows <= i) & (rows > i - k)
  return jnp.sum(jnp.where(in_window & (loss_steps > prev), 1.0, 0.0), axis=0
                 ).astype(jnp.float32)


def random_start(key: Array, x: Array, eps, norm: str = "linf") -> Array:
  """AutoAttack's APGD start (before clipping): a point on the eps-sphere.

  L-inf: ``x + eps t / (max|t| + 1e-12)``, ``t ~ U[-1, 1)``;
  L2: ``x + eps t / (||t||_2 + 1e-12)``, ``t ~ N(0, I)``. Not uniform in the
  ball. The kernel clips the result to [0, 1].
  """
  norm = canonical_norm(norm)
  eps = jnp.asarray(eps, x.dtype)
  key = bulk_key(key)
  if norm == "linf":
    t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
  else:
    t = jax.random.normal(key, x.shape, x.dtype)
  return x + eps * normalize(t, norm)


def apgd_loss(name: str):
  """Per-example APGD objective ``(logits, y, y_target) -> [B]`` (maximised)."""
  if name == "ce":
    return lambda z, y, t: losses.xent(z, y)
  if name == "dlr":
    return lambda z, y, t: losses.dlr(z, y)
  if name == "dlr-targeted":
    return losses.dlr_targeted
  raise ValueError(f"Unknown APGD loss {name!r}; valid: {APGD_LOSSES}.")


class ApgdRun(NamedTuple):
  """Outputs of one APGD run, as the reference's ``attack_single_run``.

  ``x_best``: the highest-loss iterate; ``acc``: still correctly classified at
  every iterate; ``loss_best``; ``x_best_adv``: the most recent misclassified
  iterate (the start where never fooled); ``zero_grad``: examples whose
  gradient at the start is exactly zero (AA's ``check_zero_gradients``).
  """
  x_best: Array
  acc: Array
  loss_best: Array
  x_best_adv: Array
  zero_grad: Array


def _loss_grad(fn, x_adv, y, y_target, key, *, loss, eot_iter, randomized):
  """EoT-averaged gradient of ``sum_i L_i``, with the last sample's logits and losses."""
  loss_fn = apgd_loss(loss)

  def total(u, k):
    z = call_logits(fn, u, k, randomized)
    li = loss_fn(z, y, y_target)
    return jnp.sum(li), (z, li)

  grad_fn = jax.grad(total, has_aux=True)
  if eot_iter == 1:
    g, (z, li) = grad_fn(x_adv, key)
    return g, z, li

  def body(e, carry):
    g_acc, _, _ = carry
    g, (z, li) = grad_fn(x_adv, jax.random.fold_in(key, e))
    return g_acc + g, z, li

  zs = jax.eval_shape(lambda: grad_fn(x_adv, key)[1])
  init = (jnp.zeros_like(x_adv), jnp.zeros(zs[0].shape, zs[0].dtype),
          jnp.zeros(zs[1].shape, zs[1].dtype))
  g, z, li = jax.lax.fori_loop(0, eot_iter, body, init)
  return g / float(eot_iter), z, li


def _project_linf(v, x, eps):
  """``clip_[0,1](min(max(v, x - eps), x + eps))`` (the reference's order)."""
  return jnp.clip(jnp.minimum(jnp.maximum(v, x - eps), x + eps), 0.0, 1.0)


def _project_l2(v, x, eps):
  """``clip_[0,1](x + u(v - x) min(eps, ||v - x||_2))``: scale into the ball, then clip."""
  d = v - x
  return jnp.clip(x + normalize(d, "l2") * jnp.minimum(eps, bcast(l2_norm(d), d)),
                  0.0, 1.0)


class ApgdTables(NamedTuple):
  """The host-side schedule as arrays of length ``L = 100 ceil(n_iter / 100)``
  (so n_iter = 10, 20, 100 share one compilation): checkpoint flags, window
  lengths ``k``, thresholds ``rho k`` and ``n_iter`` itself."""
  is_check: Array
  window: Array
  thresh: Array
  n_iter: Array


def buffer_length(n_iter: int) -> int:
  return 100 * max(1, -(-n_iter // 100))


def apgd_tables(n_iter: int, rho: float = 0.75) -> ApgdTables:
  """:func:`checkpoint_schedule` padded to :func:`buffer_length` (numpy)."""
  n = buffer_length(n_iter)
  is_check, window = checkpoint_schedule(n_iter)
  pad = lambda a: np.concatenate([a, np.zeros(n - n_iter, a.dtype)])
  return ApgdTables(pad(is_check), pad(window), pad(window * rho).astype(np.float32),
                    np.asarray(n_iter, np.int32))


class ApgdConsts(NamedTuple):
  """Loop-invariant inputs of an APGD run (a pytree: traced, never static)."""
  fn: object
  x: Array
  y: Array
  y_target: Array | None
  eps: Array
  key: Array
  tables: ApgdTables


def _apgd_init(fn, x, y, y_target, x_init, eps, step0, key, tables, *, loss,
               eot_iter, randomized):
  """Loop constants and the state before iteration 0 (gradient at the clipped start)."""
  TRACES["apgd_init"] += 1
  dtype = x.dtype
  eps = jnp.asarray(eps, dtype)
  key = jax.random.PRNGKey(0) if key is None else key
  c = ApgdConsts(fn, x, y, y_target, eps, key, tables)
  x_adv = jnp.clip(x_init.astype(dtype), 0.0, 1.0)
  grad, z, loss_i = _loss_grad(fn, x_adv, y, y_target,
                               jax.random.fold_in(key, tables.n_iter),
                               loss=loss, eot_iter=eot_iter, randomized=randomized)
  b = x.shape[0]
  # float32 like the reference's torch.ones/torch.zeros buffers.
  step = jnp.broadcast_to(jnp.asarray(step0, dtype).astype(jnp.float32), (b,))
  state = dict(x_adv=x_adv, x_old=x_adv, grad=grad, grad_best=grad,
               x_best=x_adv, x_best_adv=x_adv, loss_best=loss_i,
               acc=jnp.argmax(z, -1) == y, step=step,
               loss_steps=jnp.zeros((tables.is_check.shape[0], b), jnp.float32),
               reduced_last=jnp.ones((b,), bool), loss_best_last=loss_i,
               zero_grad=jnp.sum(jnp.abs(grad.reshape(b, -1)), axis=-1) == 0)
  return c, state


def _apgd_step(i, s, c: ApgdConsts, *, norm, loss, eot_iter, randomized):
  """APGD iteration ``i``: momentum step, gradient, bookkeeping, checkpoint."""
  TRACES["apgd_step"] += 1
  x, y, eps = c.x, c.y, c.eps
  dtype = x.dtype
  x_cur = s["x_adv"]
  grad2 = x_cur - s["x_old"]
  a = jnp.where(i > 0, 0.75, 1.0).astype(dtype)
  eta = bcast(s["step"].astype(dtype), x)
  if norm == "linf":
    z1 = _project_linf(x_cur + eta * jnp.sign(s["grad"]), x, eps)
    x_new = _project_linf(x_cur + (z1 - x_cur) * a + grad2 * (1 - a), x, eps)
  else:
    z1 = _project_l2(x_cur + eta * normalize(s["grad"], "l2"), x, eps)
    x_new = _project_l2(x_cur + (z1 - x_cur) * a + grad2 * (1 - a), x, eps)

  g, logits, li = _loss_grad(c.fn, x_new, y, c.y_target, jax.random.fold_in(c.key, i),
                             loss=loss, eot_iter=eot_iter, randomized=randomized)
  pred = jnp.argmax(logits, -1) == y
  acc = s["acc"] & pred
  x_best_adv = jnp.where(bcast(~pred, x), x_new, s["x_best_adv"])
  loss_steps = s["loss_steps"].at[i].set(li.astype(jnp.float32))
  imp = li > s["loss_best"]
  x_best = jnp.where(bcast(imp, x), x_new, s["x_best"])
  grad_best = jnp.where(bcast(imp, x), g, s["grad_best"])
  loss_best = jnp.where(imp, li, s["loss_best"])

  t = c.tables
  chk = t.is_check[i]
  osc = oscillation_count(loss_steps, i, t.window[i], t.n_iter) <= t.thresh[i]
  no_impr = (~s["reduced_last"]) & (s["loss_best_last"] >= loss_best)
  red = chk & (osc | no_impr)
  step = jnp.where(red, s["step"] / 2.0, s["step"])
  return dict(x_adv=jnp.where(bcast(red, x), x_best, x_new), x_old=x_cur,
              grad=jnp.where(bcast(red, x), grad_best, g), grad_best=grad_best,
              x_best=x_best, x_best_adv=x_best_adv, loss_best=loss_best, acc=acc,
              step=step, loss_steps=loss_steps,
              reduced_last=jnp.where(chk, osc | no_impr, s["reduced_last"]),
              loss_best_last=jnp.where(chk, loss_best, s["loss_best_last"]),
              zero_grad=s["zero_grad"])


def _as_run(s) -> ApgdRun:
  return ApgdRun(s["x_best"], s["acc"], s["loss_best"], s["x_best_adv"], s["zero_grad"])


_INIT_STATIC = ("loss", "eot_iter", "randomized")
_STEP_STATIC = ("norm", "loss", "eot_iter", "randomized")
_STATIC = ("norm", "loss", "eot_iter", "randomized")
_apgd_init_jit = jax.jit(_apgd_init, static_argnames=_INIT_STATIC)
_apgd_step_jit = jax.jit(_apgd_step, static_argnames=_STEP_STATIC)


def resolve_loop(loop: str) -> str:
  """``'device'`` (one ``lax.fori_loop``), ``'host'`` (a jitted step per iteration) or ``'auto'``.

  ``'auto'`` is ``'host'`` on CPU and ``'device'`` elsewhere. Reason: XLA:CPU
  emits the transposed convolutions of an input gradient *inside a while
  loop* as naive elemental loops (kernel layout ``01oi``), 2-10x slower than
  the same step jitted on its own (measured on this repo's ``tiny_cnn``);
  the host driver keeps every state array on the device and only dispatches
  one jitted step per iteration. Results are identical either way.
  """
  if loop == "auto":
    return "host" if jax.default_backend() == "cpu" else "device"
  if loop not in ("host", "device"):
    raise ValueError(f"loop must be 'auto', 'host' or 'device', got {loop!r}.")
  return loop


def _apgd_core(fn, x, y, y_target, x_init, eps, step0, key, tables, *, norm,
               loss, eot_iter, randomized) -> ApgdRun:
  """One APGD run in a single ``lax.fori_loop`` (the reference's ``attack_single_run``)."""
  c, s = _apgd_init(fn, x, y, y_target, x_init, eps, step0, key, tables, loss=loss,
                    eot_iter=eot_iter, randomized=randomized)
  body = functools.partial(_apgd_step, c=c, norm=norm, loss=loss, eot_iter=eot_iter,
                           randomized=randomized)
  return _as_run(jax.lax.fori_loop(0, tables.n_iter, body, s))


_apgd_core_jit = jax.jit(_apgd_core, static_argnames=_STATIC)


def _apgd_host(fn, x, y, y_target, x_init, eps, step0, key, tables, *, norm, loss,
               eot_iter, randomized) -> ApgdRun:
  """The same run driven from the host: one jitted step per iteration, state on device."""
  c, s = _apgd_init_jit(fn, x, y, y_target, x_init, eps, step0, key, tables, loss=loss,
                        eot_iter=eot_iter, randomized=randomized)
  for i in range(int(tables.n_iter)):
    s = _apgd_step_jit(jnp.asarray(i, jnp.int32), s, c, norm=norm, loss=loss,
                       eot_iter=eot_iter, randomized=randomized)
  return _as_run(s)


@with_precision
def apgd_single_run(logits_fn: LogitsFn, x, y, x_init, *, eps, n_iter: int = 100,
                    norm: str = "linf", loss: str = "ce", y_target=None,
                    rho: float = 0.75, step_size=None, eot_iter: int = 1,
                    key=None, randomized: bool = False, loop: str = "auto") -> ApgdRun:
  """One APGD run from an explicit start ``x_init`` (jitted; ``n_iter`` up to
  each multiple of 100 shares one compilation).

  ``loss``: ``'ce'``, ``'dlr'`` or ``'dlr-targeted'`` (needs ``y_target``).
  ``step_size``: the initial per-example step ``eta_0`` (``2 eps`` as in
  AutoAttack when ``None``). ``eot_iter > 1`` averages that many gradients
  per step; with ``randomized=True`` the model is called as
  ``logits_fn(x, key)`` with a fresh key per sample. Runs in ``x``'s dtype
  (float64 when x64 is enabled: the parity tests). ``loop``: see
  :func:`resolve_loop`.
  """
  norm = canonical_norm(norm)
  if loss not in APGD_LOSSES:
    raise ValueError(f"Unknown APGD loss {loss!r}; valid: {APGD_LOSSES}.")
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  y = jnp.asarray(y)
  if loss == "dlr-targeted":
    if y_target is None:
      raise ValueError("loss='dlr-targeted' needs y_target.")
    y_target = jnp.asarray(y_target)
  else:
    y_target = None
  eps = jnp.asarray(eps, x.dtype)
  step0 = 2.0 * eps if step_size is None else jnp.asarray(step_size, x.dtype)
  k = None if key is None else as_key(key)
  run = _apgd_core_jit if resolve_loop(loop) == "device" else _apgd_host
  return run(as_logits_fn(logits_fn), x, y, y_target, jnp.asarray(x_init, x.dtype),
             eps, step0, k, apgd_tables(n_iter, rho), norm=norm, loss=loss,
             eot_iter=eot_iter, randomized=randomized)


TARGET_PASS_FOLD = 2**31 - 2  # fold_in data of the APGD-T target pass (see _apgd_prepare)


@functools.partial(jax.jit, static_argnames=("norm", "loss", "randomized", "random_init"))
def _apgd_prepare(fn, x, round_idx, key, eps, n_restarts, *, norm, loss, randomized,
                  random_init):
  """Start point, target labels and run key of one chunk of :func:`run_rounds`.

  Round ``r`` uses target class ``2 + r // n_restarts`` (APGD-T).
  """
  TRACES["apgd_prepare"] += 1
  # The targets' clean pass (randomized models only) gets a key no step uses: steps use
  # fold_in(key, i) for i <= n_iter, and EoT folds into those.
  k_run, k_tgt = key, jax.random.fold_in(key, TARGET_PASS_FOLD)
  x_init = random_start(key, x, eps, norm) if random_init else x
  y_target = None
  if loss == "dlr-targeted":
    clean = call_logits(fn, x, k_tgt, randomized)
    y_target = ranked_targets(clean, 2 + round_idx // n_restarts)
  return x_init, y_target, k_run


@functools.partial(jax.jit, static_argnames=("select",))
def _select(run: ApgdRun, *, select: str):
  """``(x_adv, success, zero_grad)`` of a chunk: the misclassified iterate
  (``'adv'``, AutoAttack) or every point's highest-loss iterate (``'loss'``)."""
  if select == "loss":
    return run.x_best, jnp.ones_like(run.acc), run.zero_grad
  return run.x_best_adv, ~run.acc, run.zero_grad


@functools.partial(jax.jit, static_argnames=_STATIC + ("random_init", "select"))
def _apgd_chunk(fn, x, y, round_idx, key, eps, step0, n_restarts, tables, *, norm,
                loss, eot_iter, randomized, random_init, select):
  """Device-loop version of one chunk: prepare, one fused APGD run, select."""
  x_init, y_target, k_run = _apgd_prepare(fn, x, round_idx, key, eps, n_restarts,
                                          norm=norm, loss=loss, randomized=randomized,
                                          random_init=random_init)
  run = _apgd_core(fn, x, y, y_target, x_init, eps, step0,
                   k_run if randomized else None, tables, norm=norm, loss=loss,
                   eot_iter=eot_iter, randomized=randomized)
  return _select(run, select=select)


@with_precision
def apgd_rounds(logits_fn: LogitsFn, x, y, key=0, *, eps, norm: str = "linf",
                loss: str = "ce", n_iter: int = 100, n_restarts: int = 1,
                n_target_classes: int = 1, rho: float = 0.75, step_size=None,
                eot_iter: int = 1, randomized: bool = False,
                random_init: bool = True, active=None, select: str = "adv",
                batch_size: int | None = None, progress=None, loop: str = "auto",
                buckets: int | None = DEFAULT_BUCKETS, mesh=None):
  """Host driver shared by :func:`apgd`, :func:`apgd_targeted` and AutoAttack.

  Returns ``(x_adv, fooled, zero_grad_count)`` as numpy arrays; ``x_adv`` is
  the clean point where not fooled. ``active`` (default: all) selects the
  points to attack, e.g. AutoAttack's still-robust points. ``select='adv'``
  keeps the misclassified iterate (AutoAttack); ``select='loss'`` returns
  every attacked point's highest-loss iterate (transfer attacks) and marks
  them all as done. ``batch_size`` is the chunk size (rows per kernel call,
  split over ``mesh``'s devices if given: :func:`run_rounds`).
  """
  norm = canonical_norm(norm)
  fn = as_logits_fn(logits_fn)
  x = np.asarray(x)
  if not np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float32)
  y = np.asarray(y)
  n = x.shape[0]
  active = np.ones(n, bool) if active is None else np.asarray(active, bool)
  bs = min(batch_size or DEFAULT_BATCH, n)
  dtype = jnp.dtype(x.dtype)
  eps_a = jnp.asarray(np.asarray(eps, dtype))
  step0 = jnp.asarray(np.asarray(2.0 * float(eps) if step_size is None else step_size, dtype))
  n_rounds = n_restarts * (n_target_classes if loss == "dlr-targeted" else 1)
  device = resolve_loop(loop) == "device"
  n_res = jnp.asarray(n_restarts, jnp.int32)
  static = dict(norm=norm, loss=loss, eot_iter=eot_iter, randomized=randomized,
                random_init=random_init, select=select)
  tables = apgd_tables(n_iter, rho)

  def kernel(xb, yb, valid, r, k):
    del valid
    if mesh is not None:  # prepare globally (draws as on one device), run per device
      x_init, y_target, k_run = _apgd_prepare(fn, xb, r, k, eps_a, n_res, norm=norm,
                                              loss=loss, randomized=randomized,
                                              random_init=random_init)
      core = sharded_kernel(_apgd_core, mesh,
                            (False, True, True, y_target is not None, True, False, False,
                             False, False),
                            norm=norm, loss=loss, eot_iter=eot_iter, randomized=randomized)
      res = core(fn, xb, yb, y_target, x_init, eps_a, step0,
                 k_run if randomized else None, tables)
      return _select(res, select=select)
    if device:
      return _apgd_chunk(fn, xb, yb, r, k, eps_a, step0, n_res, tables, **static)
    x_init, y_target, k_run = _apgd_prepare(fn, xb, r, k, eps_a, n_res, norm=norm,
                                            loss=loss, randomized=randomized,
                                            random_init=random_init)
    res = _apgd_host(fn, xb, yb, y_target, x_init, eps_a, step0,
                     k_run if randomized else None, tables, norm=norm, loss=loss,
                     eot_iter=eot_iter, randomized=randomized)
    return _select(res, select=select)

  x_adv, fooled, aux = run_rounds(kernel, x, y, active, n_rounds=n_rounds,
                                  key=as_key(key), batch_size=bs, buckets=buckets,
                                  progress=progress, mesh=mesh)
  zero = int(sum(int(np.sum(a)) for a in aux)) if loss != "ce" else 0
  return x_adv, fooled, zero


@with_precision
def apgd(logits_fn: LogitsFn, x, y, key=0, *, eps, norm: str = "linf",
         loss: str = "ce", n_iter: int = 100, n_restarts: int = 1,
         rho: float = 0.75, step_size=None, eot_iter: int = 1,
         randomized: bool = False, random_init: bool = True,
         batch_size: int | None = None, buckets: int = DEFAULT_BUCKETS,
         loop: str = "auto") -> np.ndarray:
  """Untargeted APGD (``loss='ce'`` or ``'dlr'``) as the reference's ``perturb``.

  Points misclassified on the clean input are left as they are. Each of the
  ``n_restarts`` restarts runs on the points not yet fooled, from a fresh
  random start around the clean point; a fooled point gets that run's most
  recent misclassified iterate. Returns ``x_adv`` (numpy, clean where not
  fooled). ``key`` is a PRNG key or an int seed. ``batch_size`` (default
  250) and ``buckets`` fix the kernel shapes (:func:`bucket_size`); ``loop``
  see :func:`resolve_loop`.
  """
  if loss not in ("ce", "dlr"):
    raise ValueError(f"apgd needs loss 'ce' or 'dlr', got {loss!r}.")
  x = np.asarray(x)
  y = np.asarray(y)
  clean_ok = predict(logits_fn, x, batch_size=batch_size, randomized=randomized,
                     key=key, buckets=buckets) == y
  x_adv, _, _ = apgd_rounds(logits_fn, x, y, key, eps=eps, norm=norm, loss=loss,
                            n_iter=n_iter, n_restarts=n_restarts, rho=rho,
                            step_size=step_size, eot_iter=eot_iter,
                            randomized=randomized, random_init=random_init,
                            active=clean_ok, batch_size=batch_size,
                            buckets=buckets, loop=loop)
  return x_adv


@with_precision
def apgd_targeted(logits_fn: LogitsFn, x, y, key=0, *, eps, norm: str = "linf",
                  n_iter: int = 100, n_target_classes: int = 9,
                  n_restarts: int = 1, rho: float = 0.75, step_size=None,
                  eot_iter: int = 1, randomized: bool = False,
                  batch_size: int | None = None, buckets: int = DEFAULT_BUCKETS,
                  loop: str = "auto") -> np.ndarray:
  """APGD-T: targeted DLR against the 2nd .. (n_target_classes+1)-th clean classes.

  For target rank ``k = 2 .. n_target_classes + 1`` (and each restart) the
  points not yet fooled are attacked with
  ``L = -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2 + 1e-12)``, ``t`` the
  ``k``-th largest clean logit. Success = misclassified (any class, not
  necessarily ``t``). Needs at least 4 classes.
  """
  x = np.asarray(x)
  y = np.asarray(y)
  clean_ok = predict(logits_fn, x, batch_size=batch_size, randomized=randomized,
                     key=key, buckets=buckets) == y
  x_adv, _, _ = apgd_rounds(logits_fn, x, y, key, eps=eps, norm=norm,
                            loss="dlr-targeted", n_iter=n_iter,
                            n_restarts=n_restarts,
                            n_target_classes=n_target_classes, rho=rho,
                            step_size=step_size, eot_iter=eot_iter,
                            randomized=randomized, active=clean_ok,
                            batch_size=batch_size, buckets=buckets, loop=loop)
  return x_adv


def schedule_summary(n_iter: int) -> list[int]:
  """Indices of the checkpoints (for docs and tests)."""
  return [int(i) for i in np.flatnonzero(checkpoint_schedule(n_iter)[0])]


__all__ = [
    "ApgdRun", "apgd", "apgd_targeted", "apgd_single_run", "apgd_rounds",
    "apgd_params", "checkpoint_schedule", "oscillation_count", "random_start",
    "apgd_loss", "schedule_summary",
]


from kdrobust.attacks._callable import make_callable  # noqa: E402

make_callable(__name__, apgd)

"""Projected gradient attacks: the norm triplet, the PGD core, FGSM, PGD, CW-inf.

Two layers:

* :func:`maximize` is the core every inner (training) attack uses. It ascends
  any per-example objective ``f: x' -> float[B]`` (higher = more adversarial)
  by projected steepest ascent and returns the **last** iterate, exactly as
  the papers' PGD presets do:

      x_0 = init(x)
      x_{k+1} = clip_[0,1]( Proj_{B_eps(x)}( x_k + a * dir(grad_x sum_i f_i(x_k)) ) )

  with ``dir = sign`` for L-inf and ``g / ||g||_2`` per example for L2. The
  gradient of the *sum* gives every example its own gradient. The result is
  wrapped in ``stop_gradient`` (Danskin). ``steps``, ``norm`` and ``init``
  are static; ``eps`` and ``step_size`` are traced, so epsilon sweeps never
  recompile.

* :func:`fgsm`, :func:`pgd` and :func:`cw_linf` are the evaluation attacks. They
  take any ``logits_fn`` (a function from float32 NHWC images in [0,1] to
  logits: Flax, Haiku, Equinox or plain JAX) plus labels and a PRNG key or
  integer seed. ``pgd``'s ``select`` picks what it returns: the papers'
  ``'last'`` iterate, the IGDM lab CW-inf's ``'first'`` misclassified one
  (an early stop per example), or, by default, kdrobust's stronger ``'any'``:
  for every point it breaks at *any* iterate a misclassified iterate (the
  most recent one); with restarts it keeps each example's worst case.

Random starts (``init``):

* ``'uniform'``: L-inf ``clip_[0,1](x + U[-eps, eps])`` (Madry/ARD/IAD/KDIGA,
  PGD-20 evaluation); L2: a Gaussian direction scaled to a radius drawn
  uniformly in ``[0, eps]``, then clipped to [0,1].
* ``'uniform_unclipped'``: ``x + U[-eps, eps]`` *not* clipped to [0,1] before
  the first step, as the official ARD code's ``AttackPGD`` starts
  ``[C:ARD@779ade3:main.py:71]`` (L2: the ``'uniform'`` draw without the clip).
* ``'gaussian'``: ``x + 0.001 * N(0, I)``, not clipped before the first step
  (TRADES, RSLAD, AdaAD, MTARD, DARHT).
* ``'gaussian_clamped'``: ``clip_[0,1](x + 0.001 * N(0, I))``, the start of
  AdaAD's ``Madry_PGD`` (PGD-AT ``Plain_Madry``,
  ``[C:AdaAD@9e5c6e5:AT_helper.py:65-69]``, docs/fidelity.md erratum E11).
* ``'none'``: start at ``x``.

Stateful (train-mode) attacks: the official ARD, IAD and KDIGA codes attack
with the student in PyTorch's ``train()`` mode, so every attack forward
normalises with the attacked batch's statistics *and* updates the running
statistics. :func:`maximize` and :func:`pgd_inner` reproduce this when given
``stateful``: an object with a ``batch_stats`` attribute that the objective's
forwards read and replace, and a true ``threads_state`` attribute
(:class:`kdrobust.methods.base.InnerStudent` in ``'train'`` mode; anything
else, e.g. a plain function, is ignored). The statistics are carried through the loop, one update per
forward in order, and left in ``stateful.batch_stats`` at the end.
"""

from __future__ import annotations

import functools
from typing import Callable, Literal

import jax
import jax.numpy as jnp

from kdrobust import losses
from kdrobust.attacks._precision import with_precision

Array = jax.Array
Objective = Callable[[Array], Array]
LogitsFn = Callable[[Array], Array]
Norm = Literal["linf", "l2"]
Init = Literal["uniform", "uniform_unclipped", "gaussian", "gaussian_clamped", "none"]
Select = Literal["last", "first", "any"]

NORMS = ("linf", "l2")
INITS = ("uniform", "uniform_unclipped", "gaussian", "gaussian_clamped", "none")
PGD_LOSSES = ("ce", "cw", "dlr")
SELECTS = ("last", "first", "any")  # what pgd(select=...) returns, see its docstring


def as_key(key_or_seed) -> Array:
  """Accept a PRNG key (raw or typed) or an integer seed."""
  if isinstance(key_or_seed, int):
    return jax.random.PRNGKey(key_or_seed)
  return key_or_seed


def canonical_norm(norm: str) -> str:
  n = norm.lower()
  if n in ("linf", "l_inf", "inf"):
    return "linf"
  if n in ("l2", "l_2", "2"):
    return "l2"
  raise ValueError(f"Unknown norm {norm!r}; valid: {NORMS} (or 'Linf', 'L2').")


def _check(norm: str, init: str) -> None:
  if norm not in NORMS:
    raise ValueError(f"Unknown norm {norm!r}; valid: {NORMS}.")
  if init not in INITS:
    raise ValueError(f"Unknown init {init!r}; valid: {INITS}.")


def _per_example_l2(v: Array) -> Array:
  """L2 norm of each example, shaped to broadcast against ``v``."""
  n = jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)), keepdims=True))
  return n


def project(x_adv: Array, x: Array, eps, norm: Norm,
            bounds: tuple[float, float] = (0.0, 1.0)) -> Array:
  """Project onto the eps-ball around ``x`` (L-inf clip or L2 rescale), then onto ``bounds``."""
  if norm == "linf":
    x_adv = jnp.clip(x_adv, x - eps, x + eps)
  else:
    delta = x_adv - x
    n = _per_example_l2(delta)
    delta = delta * jnp.minimum(1.0, eps / (n + 1e-12))
    x_adv = x + delta
  return jnp.clip(x_adv, bounds[0], bounds[1])


def ascent_direction(g: Array, norm: Norm) -> Array:
  """Steepest-ascent direction of unit norm: ``sign(g)`` (L-inf) or ``g/||g||_2`` (L2)."""
  if norm == "linf":
    return jnp.sign(g)
  return g / (_per_example_l2(g) + 1e-12)


def random_init(key: Array, x: Array, eps, *, norm: Norm = "linf",
                init: Init = "uniform", bounds=(0.0, 1.0),
                noise: Array | None = None) -> Array:
  """The random start of a PGD run (see the module docstring).

  ``noise`` replaces the random draw (tests inject PyTorch's): ``U[-1, 1]``
  values for the L-inf uniform starts, ``N(0, I)`` values for ``'gaussian'``
  and ``'gaussian_clamped'``.
  """
  _check(norm, init)
  if init == "none":
    return x
  if init in ("gaussian", "gaussian_clamped"):
    n = jax.random.normal(key, x.shape, x.dtype) if noise is None else noise
    x0 = x + 0.001 * n
    return x0 if init == "gaussian" else jnp.clip(x0, bounds[0], bounds[1])
  clip = ((lambda v: v) if init == "uniform_unclipped"
          else (lambda v: jnp.clip(v, bounds[0], bounds[1])))
  if norm == "linf":
    u = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) if noise is None else noise
    return clip(x + eps * u)
  k1, k2 = jax.random.split(key)
  d = jax.random.normal(k1, x.shape, x.dtype)
  d = d / (_per_example_l2(d) + 1e-12)
  r = jax.random.uniform(k2, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
  return clip(x + eps * r * d)


def maximize(objective: Objective, x: Array, x_init: Array, *, eps, step_size,
             steps: int, norm: Norm = "linf", bounds=(0.0, 1.0),
             unroll: int | bool = 1, stateful=None, signal=None):
  """Projected steepest ascent of ``sum_i objective(x')_i``; returns the last iterate.

  ``signal`` (static, default ``None``): opt-in per-step signals. With
  ``signal`` given, ``objective`` returns ``(values[B], aux)`` and the call
  returns ``(x_adv, signals)`` with ``signals[k] = signal(aux at x_k)`` for
  ``k = 0 .. steps-1``, taken from the same forward as step ``k``'s gradient
  (no extra forward; the last iterate ``x_steps`` is not evaluated), e.g.
  Fair-ARD's per-example correctness ``argmax f(x_k) == y``. Without it the
  code path is the plain loop below, unchanged (``tests/methods_state_test.py``
  checks its jaxpr against a reference).

  ``objective`` must be per-example (the forward of one example must not
  depend on the others, e.g. batch norm in inference mode) for the gradient
  of the sum to be each example's own gradient; with batch statistics the
  gradient of the sum is PyTorch's ``grad(loss.sum(), x)`` through them.
  ``unroll`` is passed to ``lax.fori_loop`` (``True`` unrolls fully: faster
  on XLA:CPU, slower to compile). ``stateful`` (see the module docstring)
  threads batch-norm statistics through the steps: step ``k`` runs its
  forwards on the statistics left by step ``k - 1``.
  """
  if signal is not None:
    return _maximize_signals(objective, x, x_init, eps=eps, step_size=step_size,
                             steps=steps, norm=norm, bounds=bounds, unroll=unroll,
                             stateful=stateful, signal=signal)
  if stateful is not None and getattr(stateful, "threads_state", False):
    return _maximize_stateful(objective, x, x_init, eps=eps, step_size=step_size,
                              steps=steps, norm=norm, bounds=bounds, unroll=unroll,
                              stateful=stateful)
  grad_fn = jax.grad(lambda u: jnp.sum(objective(u)))

  def body(_, xa):
    g = grad_fn(xa)
    return project(xa + step_size * ascent_direction(g, norm), x, eps, norm, bounds)

  x_adv = jax.lax.fori_loop(0, steps, body, x_init, unroll=unroll)
  return jax.lax.stop_gradient(x_adv)


def _maximize_stateful(objective, x, x_init, *, eps, step_size, steps, norm,
                       bounds, unroll, stateful):
  """:func:`maximize` carrying ``stateful.batch_stats`` through the loop."""

  def value(u, bs):
    stateful.batch_stats = bs
    v = jnp.sum(objective(u))
    return v, stateful.batch_stats

  grad_fn = jax.grad(value, has_aux=True)

  def body(_, carry):
    xa, bs = carry
    g, bs = grad_fn(xa, bs)
    xa = project(xa + step_size * ascent_direction(g, norm), x, eps, norm, bounds)
    return xa, bs

  x_adv, bs = jax.lax.fori_loop(0, steps, body, (x_init, stateful.batch_stats),
                                unroll=unroll)
  stateful.batch_stats = bs  # the loop's output, not a tracer of its body
  return jax.lax.stop_gradient(x_adv)


def _maximize_signals(objective, x, x_init, *, eps, step_size, steps, norm,
                      bounds, unroll, stateful, signal):
  """:func:`maximize` with per-step signals (and batch statistics if ``stateful`` threads them)."""
  threads = stateful is not None and getattr(stateful, "threads_state", False)

  def value(u, bs):
    if threads:
      stateful.batch_stats = bs
    v, aux = objective(u)
    return jnp.sum(v), (signal(aux), stateful.batch_stats if threads else bs)

  grad_fn = jax.grad(value, has_aux=True)

  def body(carry, _):  # a scan stacks the per-step signals
    xa, bs = carry
    g, (sig, bs) = grad_fn(xa, bs)
    xa = project(xa + step_size * ascent_direction(g, norm), x, eps, norm, bounds)
    return (xa, bs), sig

  bs0 = stateful.batch_stats if threads else None
  (x_adv, bs), sigs = jax.lax.scan(body, (x_init, bs0), None, length=steps, unroll=unroll)
  if threads:
    stateful.batch_stats = bs
  return jax.lax.stop_gradient(x_adv), jax.lax.stop_gradient(sigs)


def pgd_inner(objective: Objective, x: Array, key: Array, *, eps, step_size,
              steps: int, norm: Norm = "linf", init: Init = "uniform",
              bounds=(0.0, 1.0), unroll: int | bool = 1, stateful=None,
              x_init: Array | None = None, signal=None):
  """``maximize`` from a random start: the inner attack of adversarial training.

  ``x_init`` replaces the random start (tests inject the official code's
  start to compare steps); ``stateful`` and ``signal``: see :func:`maximize`
  (with ``signal`` the result is ``(x_adv, signals[steps, ...])``).
  """
  x0 = (random_init(key, x, eps, norm=norm, init=init, bounds=bounds)
        if x_init is None else x_init)
  return maximize(objective, x, x0, eps=eps, step_size=step_size, steps=steps,
                  norm=norm, bounds=bounds, unroll=unroll, stateful=stateful,
                  signal=signal)


def attack_loss(name: str, *, kappa: float | None = None):
  """Per-example evaluation objective ``(logits, labels) -> float[B]`` by name."""
  if name == "ce":
    return losses.xent
  if name == "cw":
    return functools.partial(losses.margin, kappa=kappa)
  if name == "dlr":
    return losses.dlr
  raise ValueError(f"Unknown attack loss {name!r}; valid: {PGD_LOSSES}.")


@with_precision
def fgsm(logits_fn: LogitsFn, x: Array, y: Array, key=None, *, eps,
         init: Init = "none", norm: Norm = "linf", bounds=(0.0, 1.0)) -> Array:
  """Fast gradient sign method: one step of size ``eps`` on the CE loss.

  ``x_adv = clip_[0,1](x + eps * sign(grad_x CE(f(x), y)))``. ``init='uniform'``
  gives FGSM-RS (a uniform random start, then one step of size ``eps``,
  projected back to the ball), as IAD's and DARHT's "FGSM" do; it needs a key.
  """
  norm = canonical_norm(norm)
  x = jnp.asarray(x, jnp.float32)
  x0 = x if init == "none" else random_init(as_key(key), x, eps, norm=norm,
                                            init=init, bounds=bounds)
  obj = lambda u: losses.xent(logits_fn(u), y)
  return maximize(obj, x, x0, eps=eps, step_size=eps, steps=1, norm=norm,
                  bounds=bounds)


@with_precision
def pgd(logits_fn: LogitsFn, x: Array, y: Array, key=0, *, eps, step_size,
        steps: int, norm: str = "linf", loss: str = "ce", init: Init = "uniform",
        restarts: int = 1, kappa: float | None = None, bounds=(0.0, 1.0),
        unroll: int | bool = 1, select: Select = "any") -> Array:
  """Untargeted PGD for evaluation, with restarts; ``select`` picks what it returns.

  Ascends ``loss`` (``'ce'``, ``'cw'`` margin or ``'dlr'``) of
  ``logits_fn(x')`` against the true labels ``y``, from ``init``, with
  ``x_{k+1} = clip_[0,1](Proj_{B_eps(x)}(x_k + step_size * dir(grad)))``.
  Each restart uses its own key from ``jax.random.split(key, restarts)``.
  ``select`` (static):

  * ``'last'``: each restart returns its last iterate ``x_steps``, as the
    papers' PGD code does (IGDM ``attack_pgd``
    [C:IGDM@a22ed64:ICLR_IGDM/rslad_loss.py:9-24], SAAD ``PGD``
    [C:saad@295121c:attacks.py:40-67], IAD/FAT ``pgd``).
  * ``'first'``: an example stops moving at its first misclassified iterate
    (its point is not updated once ``argmax f(x_k) != y``) and each restart
    returns its last iterate, i.e. the first misclassified one; the early
    stop of the IGDM lab's CW-inf [C:saad@295121c:attacks.py:101-135].
  * ``'any'`` (the default, kdrobust's stronger variant, docs/evaluation.md): a
    misclassified iterate if any iterate ``x_0 .. x_steps`` of any restart
    was misclassified (the most recent such iterate of the first restart
    that succeeded), else the last iterate of the restart with the highest
    final ``loss``.

  With ``'last'`` and ``'first'``, restarts keep per example the returned
  point with the largest cross-entropy, ties to the later restart (the
  IGDM lab's ``max_delta[all_loss >= max_loss]``), whether or not it is
  misclassified. So only ``'any'`` counts success at any iterate.
  """
  norm = canonical_norm(norm)
  _check(norm, init)
  if select not in SELECTS:
    raise ValueError(f"Unknown select {select!r}; valid: {SELECTS}.")
  loss_fn = attack_loss(loss, kappa=kappa)
  x = jnp.asarray(x, jnp.float32)
  key = as_key(key)

  def obj_and_logits(u):
    logits = logits_fn(u)
    return jnp.sum(loss_fn(logits, y)), logits

  grad_fn = jax.grad(obj_and_logits, has_aux=True)

  def one_run(k):
    """``(returned point, fooled at any iterate, score for the restart choice)``."""
    x0 = random_init(k, x, eps, norm=norm, init=init, bounds=bounds)

    def body(_, carry):
      xa, best, fooled = carry
      g, logits = grad_fn(xa)
      wrong = jnp.argmax(logits, -1) != y
      best = jnp.where(_bcast(wrong, x), xa, best)
      fooled = fooled | wrong
      x_next = project(xa + step_size * ascent_direction(g, norm), x, eps, norm, bounds)
      if select == "first":
        x_next = jnp.where(_bcast(wrong, x), xa, x_next)
      return x_next, best, fooled

    init_carry = (x0, x0, jnp.zeros(y.shape, bool))
    x_last, best, fooled = jax.lax.fori_loop(0, steps, body, init_carry,
                                             unroll=unroll)
    logits = logits_fn(x_last)
    if select != "any":
      return x_last, fooled, losses.xent(logits, y)
    wrong = jnp.argmax(logits, -1) != y
    best = jnp.where(_bcast(wrong, x), x_last, best)
    fooled = fooled | wrong
    final_loss = loss_fn(logits, y)
    return jnp.where(_bcast(fooled, x), best, x_last), fooled, final_loss

  keys = jax.random.split(key, restarts)
  x_adv, fooled, best_loss = one_run(keys[0])

  def restart(r, carry):  # one compiled restart body, however many restarts
    x_adv, fooled, best_loss = carry
    xr, fr, lr = one_run(keys[r])
    if select == "any":
      take = (~fooled & fr) | (~fooled & ~fr & (lr > best_loss))
    else:
      take = lr >= best_loss
    x_adv = jnp.where(_bcast(take, x), xr, x_adv)
    best_loss = jnp.where(take, lr, best_loss)
    return x_adv, fooled | fr, best_loss

  if restarts > 1:
    x_adv, fooled, best_loss = jax.lax.fori_loop(1, restarts, restart,
                                                 (x_adv, fooled, best_loss))
  return jax.lax.stop_gradient(x_adv)


@with_precision
def cw_linf(logits_fn: LogitsFn, x: Array, y: Array, key=0, *, eps,
            step_size=2 / 255, steps: int = 30, kappa: float | None = 50.0,
            init: Init = "uniform", restarts: int = 1, unroll: int | bool = 1,
            select: Select = "any") -> Array:
  """CW-inf: L-inf PGD on the Carlini-Wagner margin.

  Defaults follow the IAD/FAT evaluation code the distillation papers reuse:
  30 steps of 2/255, uniform start, ``kappa = 50`` in
  ``-max(z_y - max_{j != y} z_j + kappa, 0)`` (with kappa = 50 this is PGD on
  the plain margin in practice). The IGDM lab's variant is
  ``steps=50, restarts=10, kappa=None, select='first'``
  [C:saad@295121c:attacks.py:101-135]; ``select``: see :func:`pgd`.
  """
  return pgd(logits_fn, x, y, key, eps=eps, step_size=step_size, steps=steps,
             norm="linf", loss="cw", init=init, restarts=restarts, kappa=kappa,
             unroll=unroll, select=select)


def _bcast(flags: Array, like: Array) -> Array:
  return flags.reshape(flags.shape + (1,) * (like.ndim - 1))

"""What a training method is: an inner attack objective plus an outer loss.

A method is a frozen dataclass (hashable, closed over at jit time) whose fields
are its hyperparameters. The shared train step (:mod:`kdrobust.train_step`)
runs every method the same way:

1. build a :class:`Ctx` for the batch: inputs, labels, mask, a PRNG key, the
   current epoch, the student as the inner attack sees it (``attack.bn_mode``:
   by default **inference** mode, running batch-norm statistics, nothing
   updated) and each teacher in inference mode;
2. ``x_adv = method.perturb(ctx)``: the inner maximisation (or ``None`` for
   methods trained on clean inputs only); its result is ``stop_gradient``-ed;
3. inside ``loss_fn(params)``: ``method.loss(ctx, student, x_adv, state)``
   where ``student`` is a :class:`TrainForward`, the student in **train**
   mode; every call threads the batch-norm statistics in order, so each
   train-mode forward updates the running statistics once, as in PyTorch;
4. gradients, optimizer update, new batch-norm statistics and method state.

Method state across epochs (ABSLD's class temperatures, Fair-ARD's class
weights): ``method.init_state(C)`` is carried in ``TrainState.method_state``
(checkpointed). A method accumulates per-epoch statistics in it from ``loss``
(e.g. :func:`per_class_sum`) and overrides :meth:`Method.epoch_update`, which
the step applies at the start of the first step of every epoch after the first
(:func:`epoch_boundary`, a pure function of ``state.step`` and
``steps_per_epoch``, so a resumed run, mid-epoch or at a boundary, updates at
exactly the same steps). ``ctx.state`` is the method state after that update
(``perturb`` may read it, e.g. ABSLD's tempered attack target). ``perturb``
may return a :class:`Perturbed` (the adversarial input plus what the attack
measured, e.g. per-step signals of :func:`kdrobust.attacks.pgd_inner`); the
step hands it to ``loss`` unchanged (stop-gradient-ed).

Teacher logits are differentiable with respect to the *input* (AdaAD's inner
attack needs that); the outer losses wrap them in ``stop_gradient`` and the
teacher variables are never passed to the optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from kdrobust.attacks import projected as pgd_lib

Array = jax.Array
LogitsFn = Callable[[Array], Array]
BN_MODES = ("eval", "batch", "train")


@dataclasses.dataclass(frozen=True)
class InnerAttack:
  """Settings of the inner PGD (the paper defaults differ per method).

  ``init``: the start (:func:`kdrobust.attacks.projected.random_init`):
  ``'uniform'`` (clip(x + U[-eps, eps])), ``'uniform_unclipped'`` (x + U, the
  official ARD/IAD/KDIGA start), ``'gaussian'`` (x + 0.001 N(0, I),
  TRADES-style), ``'gaussian_clamped'`` (clip(x + 0.001 N), AdaAD's
  ``Plain_Madry``) or ``'none'``; ``unroll`` is passed to
  ``lax.fori_loop`` (unrolling is faster on XLA:CPU: ``configs/subset_distill.py``
  measured 63 s of CPU with ``unroll=1`` and 40 s with ``unroll=5``).

  ``bn_mode`` is the student's batch-norm mode during the attack
  (:class:`InnerStudent`):

  * ``'eval'``: running statistics, nothing updated (PyTorch ``net.eval()``;
    the TRADES, RSLAD, AdaAD, MTARD, DARHT and IGDM code);
  * ``'train'``: PyTorch ``net.train()`` exactly: every attack forward
    normalises with the attacked batch's statistics **and** updates the
    running statistics, in order, before the outer loss's own forwards (the
    official ARD, IAD and KDIGA code, docs/fidelity.md erratum E2);
  * ``'batch'``: the attacked batch's statistics, running statistics left
    untouched (the forwards and gradients of ``'train'`` without its
    running-statistic updates; kept for comparison).
  """
  eps: float = 8 / 255
  step_size: float = 2 / 255
  steps: int = 10
  norm: str = "linf"
  init: str = "uniform"
  unroll: int = 1
  bn_mode: str = "eval"

  def __post_init__(self):
    if self.bn_mode not in BN_MODES:
      raise ValueError(f"Unknown attack bn_mode {self.bn_mode!r}; valid: {BN_MODES}.")

  def __call__(self, objective: Callable[[Array], Array], x: Array,
               key: Array, stateful=None, signal=None):
    """Maximise the per-example ``objective`` around ``x``; returns the last iterate.

    ``stateful``: the :class:`InnerStudent` the objective calls, so that a
    ``'train'``-mode attack threads its batch statistics. ``signal``: opt-in
    per-step signals (:func:`kdrobust.attacks.projected.maximize`); then the
    result is ``(x_adv, signals)``.
    """
    return pgd_lib.pgd_inner(objective, x, key, eps=self.eps,
                             step_size=self.step_size, steps=self.steps,
                             norm=self.norm, init=self.init,
                             unroll=self.unroll, stateful=stateful, signal=signal)


@dataclasses.dataclass(frozen=True)
class Ctx:
  """Everything a method may read about the current batch (built inside jit).

  ``epoch`` is the 1-indexed current epoch (float32 scalar, traced), as the
  papers' per-epoch schedules (IAD's warm-up, IGDM's ramp, DARHT's curriculum)
  use it; ``num_epochs`` is static.
  """
  x: Array
  y: Array
  mask: Array
  key: Array
  epoch: Array
  num_epochs: int
  num_classes: int
  student_inner: LogitsFn  # InnerStudent: the student as the inner attack sees it (attack.bn_mode)
  teachers: tuple[LogitsFn, ...] = ()
  state: Any = None  # the method state of this step (after any epoch_update)

  def teacher(self, i: int = 0) -> LogitsFn:
    return self.teachers[i]

  def sub_key(self, name: str) -> Array:
    """A key derived from the step key for one named use (attack, coin, ...)."""
    return jax.random.fold_in(self.key, _stable_hash(name))


class InnerStudent:
  """The student as the inner attack sees it: ``student(x) -> logits`` in ``bn_mode``.

  ``'eval'`` applies the running statistics; ``'batch'`` the batch's own
  statistics without updating anything; ``'train'`` the batch's statistics
  and replaces ``self.batch_stats`` with the updated running statistics after
  every forward (PyTorch ``train()`` semantics). Pass the object as
  ``stateful=`` to :func:`kdrobust.attacks.pgd_inner` so that the attack loop
  threads those statistics through its steps; the train step then starts the
  outer loss's forwards from ``self.batch_stats``. Models without batch norm
  behave the same in every mode. ``student.calls`` counts forwards.
  """

  def __init__(self, apply_fn, variables, bn_mode: str = "eval", rngs=None):
    if bn_mode not in BN_MODES:
      raise ValueError(f"Unknown attack bn_mode {bn_mode!r}; valid: {BN_MODES}.")
    self.apply_fn = apply_fn
    self.params = variables["params"]
    self.batch_stats = variables.get("batch_stats") or {}
    self.bn_mode = bn_mode
    self.rngs = rngs
    self.calls = 0

  @property
  def threads_state(self) -> bool:
    """Whether forwards update ``batch_stats`` (``'train'`` mode with batch norm)."""
    return self.bn_mode == "train" and bool(self.batch_stats)

  def __call__(self, x: Array) -> Array:
    variables = {"params": self.params}
    if self.batch_stats:
      variables["batch_stats"] = self.batch_stats
    rngs = None
    if self.rngs is not None:
      rngs = {"dropout": jax.random.fold_in(self.rngs, self.calls)}
    self.calls += 1
    if self.bn_mode == "eval":
      return self.apply_fn(variables, x, train=False)
    if not self.batch_stats:
      return self.apply_fn(variables, x, train=True, rngs=rngs)
    logits, updates = self.apply_fn(variables, x, train=True, mutable=["batch_stats"],
                                    rngs=rngs)
    if self.bn_mode == "train":
      self.batch_stats = updates["batch_stats"]
    return logits


class TrainForward:
  """The student in train mode, threading batch-norm statistics call by call.

  ``student(x)`` returns logits and replaces ``student.batch_stats`` with the
  statistics updated by this forward, so ``k`` calls update the running
  statistics ``k`` times in order (PyTorch semantics). Used only inside the
  traced loss function; ``student.calls`` counts forwards for tests.
  ``student(x, capture=True)`` also returns the sown ``intermediates``.
  """

  def __init__(self, apply_fn, params, batch_stats, rngs=None):
    self.apply_fn = apply_fn
    self.params = params
    self.batch_stats = batch_stats
    self.rngs = rngs
    self.calls = 0

  def __call__(self, x: Array, capture: bool = False):
    variables = {"params": self.params}
    mutable = ["intermediates"] if capture else []
    if self.batch_stats:  # models without batch norm carry an empty dict
      variables["batch_stats"] = self.batch_stats
      mutable.append("batch_stats")
    rngs = None
    if self.rngs is not None:
      rngs = {"dropout": jax.random.fold_in(self.rngs, self.calls)}
    self.calls += 1
    if not mutable:
      return self.apply_fn(variables, x, train=True, rngs=rngs)
    logits, updates = self.apply_fn(variables, x, train=True, mutable=mutable,
                                    rngs=rngs)
    if self.batch_stats:
      self.batch_stats = updates["batch_stats"]
    if capture:
      return logits, updates.get("intermediates", {})
    return logits


class Perturbed(NamedTuple):
  """What ``perturb`` may return instead of a bare array: ``x`` and the attack's ``aux``."""
  x: Array
  aux: Any = None


class LossOut(NamedTuple):
  """A method's outer loss: the scalar to minimise and what to log.

  ``state`` is the method's carried state (e.g. MTARD's teacher weights);
  ``skip`` (bool scalar) asks the step to leave parameters, optimizer and
  method state unchanged for this batch; the batch-norm running statistics
  its forwards moved are kept, as in the official code, where the skip
  follows the forwards (DARHT skips batches whose CE
  exceeds a threshold).
  """
  loss: Array
  metrics: dict[str, Array]
  state: Any = None
  skip: Any = None


@dataclasses.dataclass(frozen=True)
class Method:
  """Base class. Subclasses set ``name``, ``teachers`` and implement the hooks."""
  name: ClassVar[str] = "base"
  # Allowed number of teachers: (minimum, maximum or None for any).
  teachers: ClassVar[tuple[int, int | None]] = (0, 0)

  attack: InnerAttack = InnerAttack()

  def init_state(self, num_classes: int) -> dict[str, Array]:
    """Initial method state carried in the train state (checkpointed)."""
    del num_classes
    return {}

  def perturb(self, ctx: Ctx) -> Array | Perturbed | None:
    """The inner maximisation: adversarial inputs, or ``None`` (clean training)."""
    del ctx
    return None

  def epoch_update(self, state: dict[str, Array], epoch: Array) -> dict[str, Array]:
    """Method state at the boundary after the 1-indexed ``epoch`` (traced int32).

    Runs (inside the jitted step, :func:`epoch_boundary`) before anything else
    of the first step of epoch ``epoch + 1``; a method that does not override
    it costs nothing (the step does not call it).
    """
    del epoch
    return state

  def loss(self, ctx: Ctx, student: TrainForward, x_adv: Array | None,
           state: dict[str, Array]) -> LossOut:
    raise NotImplementedError


def has_epoch_update(method: Method) -> bool:
  """Whether ``method`` overrides :meth:`Method.epoch_update`."""
  return type(method).epoch_update is not Method.epoch_update


def epoch_boundary(method: Method, state, step: Array, steps_per_epoch: int):
  """``method.epoch_update(state, step // spe)`` if ``step`` starts an epoch after the first.

  A pure function of the global ``step`` (0-indexed, the one about to run)
  and ``steps_per_epoch``: the update that closes epoch ``e`` runs at the
  start of step ``e * spe``, in a ``lax.cond`` (not evaluated otherwise).
  """
  step = jnp.asarray(step, jnp.int32)
  at = (step > 0) & (step % steps_per_epoch == 0)
  return jax.lax.cond(at, lambda s: method.epoch_update(s, step // steps_per_epoch),
                      lambda s: s, state)


def per_class_sum(values: Array, labels: Array, mask: Array | None, num_classes: int) -> Array:
  """``out[c] = sum_{i: y_i = c, mask_i} values_i`` (a masked ``segment_sum``; float[C])."""
  v = jnp.asarray(values, jnp.result_type(float))
  if mask is not None:
    v = v * mask.astype(v.dtype)
  return jax.ops.segment_sum(v, labels, num_segments=num_classes)


def sg(x):
  """``jax.lax.stop_gradient`` on a pytree."""
  return jax.tree.map(jax.lax.stop_gradient, x)


def _stable_hash(name: str) -> int:
  h = 0
  for ch in name:
    h = (h * 131 + ord(ch)) % (2**31 - 1)
  return h


def epoch_ramp(ctx: Ctx) -> Array:
  """IGDM's linear ramp ``t / E`` with ``t`` the 1-indexed epoch."""
  return jnp.asarray(ctx.epoch, jnp.float32) / ctx.num_epochs

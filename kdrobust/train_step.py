"""The jitted train step and evaluation step shared by every method.

``make_train_step`` returns ``step(state, teacher_variables, batch) ->
(state, metrics)``: one ``jax.jit`` with the state donated, the batch sharded
over ``'data'`` and everything else replicated. The PRNG key of a step is
``fold_in(base_key, state.step)``, so no key is checkpointed and a resumed
run draws exactly the same randomness.

Numerical safety: if the loss or the gradients are not finite, the step
returns the *previous* state (parameters, optimizer, batch statistics and
method state untouched) and increments ``state.nonfinite``; the loop stops the
run on the next log step with the last good checkpoint intact. A method's
epoch-boundary update (``Method.epoch_update``, applied at the first step of
each later epoch by :func:`kdrobust.methods.base.epoch_boundary`) stands even
when that step is rejected, so it happens exactly once.

Extra trainable networks (issue 12; PeerAiD's peer): a method naming
``extra_networks`` (a tuple of names, ``Method`` class attribute) gets, for
each name, an :class:`ExtraNetwork` (its own apply function, optimizer and
schedule; ``extra_networks=`` of :func:`make_train_step`). Its variables live
in ``TrainState.extra[name]`` (checkpointed). The method reads them through
an :class:`ExtraCtx`: ``ctx.extra_eval[name]`` (inference mode, the
pre-step variables, differentiable w.r.t. x only; for ``perturb``) and,
inside ``loss``, ``ctx.extra_train[name]`` (a :class:`TrainForward`, train
mode, threading its own batch statistics). One ``value_and_grad`` with
respect to the student's and every extra network's parameters of the one
loss, then each network's own ``tx.update``: every update uses gradients
taken at the pre-step parameters (one backward of the summed loss, as
PyTorch's ``loss.backward(); opt_a.step(); opt_b.step()``), so the order of
the updates does not change the result. A rejected (non-finite) step keeps
every network's previous state.

Input images: every step takes the pipeline's uint8 batches (or float32 ones)
and converts them once at its top with :func:`kdrobust.data.device.to_float`
(``image_levels``: 255, or 16 for the 8x8 digits;
:func:`kdrobust.data.pipeline.image_levels`), bit for bit the host's float32
values, so attacks and methods always see float32 in [0, 1].

Weight averaging (``weight_averaging=`` ``config.weight_averaging``,
:mod:`kdrobust.weight_averaging`): the step's last act updates
``state.averaged`` from the post-step student (a ``lax.cond``, true only at
the epoch ends or steps the average is due). Off (the default), the step
is unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from kdrobust import losses
from kdrobust import weight_averaging as wa_lib
from kdrobust.data import device as data_device
from kdrobust.methods.base import (Ctx, InnerStudent, Method, TrainForward,
                                   epoch_boundary, has_epoch_update)
from kdrobust.state import TrainState

Array = jax.Array


def teacher_logits_fn(apply_fn, variables) -> Callable[[Array], Array]:
  """A frozen teacher: inference mode, float32 logits, differentiable w.r.t. x only.

  (float64 logits stay float64: the step-parity tests run in x64 mode.)
  """
  variables = jax.lax.stop_gradient(variables)
  return lambda x: losses.at_least_f32(apply_fn(variables, x, train=False))


class ExtraNetwork(NamedTuple):
  """A method's extra trainable network: its apply function, optimizer and lr schedule."""
  apply_fn: Callable
  tx: optax.GradientTransformation
  lr_schedule: Callable | None = None


@dataclasses.dataclass(frozen=True)
class ExtraCtx(Ctx):
  """:class:`Ctx` of a method with extra networks (module docstring).

  ``extra_eval[name](x)``: inference-mode logits at the pre-step variables
  (stop-gradient on the variables); ``extra_train[name]``: the train-mode
  :class:`TrainForward` of the network, set only inside ``loss``.
  """
  extra_eval: Mapping[str, Callable] = dataclasses.field(default_factory=dict)
  extra_train: Mapping[str, TrainForward] = dataclasses.field(default_factory=dict)


def extra_network_names(method: Method) -> tuple[str, ...]:
  """The names of ``method``'s extra trainable networks (``()`` for most methods)."""
  return tuple(getattr(method, "extra_networks", ()) or ())


def make_train_step(*, apply_fn, method: Method, tx: optax.GradientTransformation,
                    teacher_apply_fns: Sequence[Callable] = (), num_classes: int,
                    num_epochs: int, steps_per_epoch: int, seed: int,
                    lr_schedule: Callable | None = None, mesh=None,
                    jit: bool = True,
                    extra_networks: Mapping[str, ExtraNetwork] | None = None,
                    weight_averaging=None, image_levels: int = 255):
  """Build the train step for ``method`` (see the module docstring).

  ``extra_networks`` maps each name of ``method.extra_networks`` to its
  :class:`ExtraNetwork` (exactly those names). ``image_levels``: the uint8
  images' conversion (module docstring).
  """
  base_key = jax.random.PRNGKey(seed)
  teacher_apply_fns = tuple(teacher_apply_fns)
  names = extra_network_names(method)
  extra_networks = dict(extra_networks or {})
  if set(extra_networks) != set(names):
    raise ValueError(f"Method {method.name!r} trains the extra network(s) {list(names)}; "
                     f"make_train_step got {sorted(extra_networks)}.")

  def step(state: TrainState, teacher_variables, batch):
    batch = data_device.batch_to_float(batch, image_levels)  # uint8 -> [0, 1], once
    key = jax.random.fold_in(base_key, state.step)
    epoch = (state.step // steps_per_epoch + 1).astype(jnp.float32)
    variables = state.variables()
    student_inner = InnerStudent(apply_fn, variables, method.attack.bn_mode,
                                 rngs=jax.random.fold_in(key, 2))
    teachers = tuple(teacher_logits_fn(f, v)
                     for f, v in zip(teacher_apply_fns, teacher_variables))
    mask = batch.get("mask")
    if mask is None:
      mask = jnp.ones(batch["label"].shape, bool)
    # Epoch-boundary update of the method state (base.epoch_boundary): kept
    # even if this step is rejected, so the update happens exactly once.
    method_state = state.method_state
    if has_epoch_update(method):
      method_state = epoch_boundary(method, method_state, state.step, steps_per_epoch)
    ctx = Ctx(x=batch["image"], y=batch["label"], mask=mask,
              key=jax.random.fold_in(key, 0), epoch=epoch,
              num_epochs=num_epochs, num_classes=num_classes,
              student_inner=student_inner, teachers=teachers, state=method_state)
    if names:
      ctx = ExtraCtx(**{f.name: getattr(ctx, f.name) for f in dataclasses.fields(Ctx)},
                     extra_eval={n: teacher_logits_fn(extra_networks[n].apply_fn,
                                                      state.extra_variables(n))
                                 for n in names})
    x_adv = method.perturb(ctx)
    if x_adv is not None:
      x_adv = jax.lax.stop_gradient(x_adv)

    # 'train'-mode attacks moved the running statistics: the outer forwards
    # continue from there, as in PyTorch.
    batch_stats = student_inner.batch_stats if student_inner.threads_state else state.batch_stats

    def loss_fn(params, extra_params):
      student = TrainForward(apply_fn, params, batch_stats,
                             rngs=jax.random.fold_in(key, 1))
      lctx = ctx
      if names:
        nets = {n: TrainForward(extra_networks[n].apply_fn, extra_params[n],
                                state.extra[n]["batch_stats"],
                                rngs=jax.random.fold_in(key, 16 + i))
                for i, n in enumerate(names)}
        lctx = dataclasses.replace(ctx, extra_train=nets)
      out = method.loss(lctx, student, x_adv, method_state)
      extra_bs = {n: lctx.extra_train[n].batch_stats for n in names}
      return out.loss, (out, student.batch_stats, extra_bs)

    extra_params = {n: state.extra[n]["params"] for n in names}
    (loss, (out, new_bs, new_extra_bs)), (grads, extra_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(state.params, extra_params)
    updates, new_opt = tx.update(grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_extra, extra_norms = {}, {}
    for n in names:  # each network's own optimizer, from the pre-step gradients
      e = state.extra[n]
      upd, opt = extra_networks[n].tx.update(extra_grads[n], e["opt_state"], e["params"])
      new_extra[n] = {"params": optax.apply_updates(e["params"], upd),
                      "batch_stats": new_extra_bs[n], "opt_state": opt}
      extra_norms[n] = optax.global_norm(extra_grads[n])
      finite = finite & jnp.isfinite(extra_norms[n])
    keep = ~finite
    if out.skip is not None:
      keep = keep | out.skip
    new_ms = out.state if out.state is not None else method_state
    pick = lambda new, old, k=keep: jax.tree.map(lambda a, b: jnp.where(k, b, a), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=pick(new_params, state.params),
        # A skipped batch's forwards have run (as in PyTorch, where the skip
        # comes after them), so its statistics stand; non-finite ones do not.
        batch_stats=pick(new_bs, state.batch_stats, ~finite),
        opt_state=pick(new_opt, state.opt_state),
        method_state=pick(new_ms, method_state),
        nonfinite=state.nonfinite + (~finite).astype(jnp.int32),
        # Extra networks: parameters and optimizer as the student's; their
        # statistics as the student's (a skipped batch's stand).
        extra={n: {"params": pick(new_extra[n]["params"], state.extra[n]["params"]),
                   "opt_state": pick(new_extra[n]["opt_state"], state.extra[n]["opt_state"]),
                   "batch_stats": pick(new_extra[n]["batch_stats"],
                                       state.extra[n]["batch_stats"], ~finite)}
               for n in names} if names else state.extra)
    if wa_lib.enabled(weight_averaging):  # the student's SWA/EMA, from the post-step weights
      new_state = new_state.replace(averaged=wa_lib.update(
          weight_averaging, state.averaged, new_state.params, new_state.batch_stats,
          state.step + 1, steps_per_epoch=steps_per_epoch, num_epochs=num_epochs))
    metrics = dict(out.metrics)
    metrics["loss"] = loss
    metrics["grad_norm"] = grad_norm
    if out.skip is not None:
      metrics["skipped"] = out.skip.astype(jnp.float32)
    if lr_schedule is not None:
      metrics["lr"] = lr_schedule(state.step)
    for n in names:
      metrics[f"grad_norm/{n}"] = extra_norms[n]
      if extra_networks[n].lr_schedule is not None:
        metrics[f"lr/{n}"] = extra_networks[n].lr_schedule(state.step)
    return new_state, metrics

  if not jit:
    return step
  if mesh is None:
    return jax.jit(step, donate_argnums=(0,))
  from kdrobust import parallel  # pylint: disable=g-import-not-at-top
  rep = parallel.replicated(mesh)
  return jax.jit(step, donate_argnums=(0,), out_shardings=(rep, rep))


def make_eval_step(apply_fn, attacks: Mapping[str, Callable], *, seed: int = 0,
                   precision: str = "highest", image_levels: int = 255):
  """Per-batch correct counts: ``eval(variables, batch, eps) -> {name: count}``.

  Batch norm runs in inference mode; the forwards and the attacks run at
  ``precision`` (``kdrobust.attacks.PRECISIONS``; 'highest' by default, the
  training loop's monitor passes ``config.eval.precision``, by default the
  compute dtype's: :func:`monitor_precision`). Attacks called without
  ``precision=`` inherit it (``attacks/_precision.attack_scope``).
  ``attacks`` maps a name to ``attack(logits_fn, x, y, key, eps) -> x_adv``.
  ``eps`` is traced, so evaluating several epsilons never recompiles. Counts
  respect ``batch['mask']`` (padding of the last batch). The training loop
  builds ``attacks`` from ``config.eval.attacks`` with :func:`eval_attack`,
  whose PGD returns the last iterate by default: the base config's ``pgd20``
  monitor is the papers' PGD-20, the ``pgd20`` preset of
  ``kdrobust.evaluate`` (which draws its own random starts). uint8 batch
  images are converted at the top (``image_levels``, module docstring).
  """
  from kdrobust.attacks import _precision  # pylint: disable=g-import-not-at-top
  _precision.check_precision(precision)
  base_key = jax.random.PRNGKey(seed)

  @jax.jit
  def eval_step(variables, batch, eps, batch_index):
    with _precision.attack_scope(precision):
      logits_fn = lambda x: apply_fn(variables, x, train=False)
      x = data_device.to_float(batch["image"], image_levels)  # uint8 -> [0, 1], once
      y, mask = batch["label"], batch["mask"]
      out = {"clean": jnp.sum(losses.accuracy(logits_fn(x), y) * mask)}
      key = jax.random.fold_in(base_key, batch_index)
      for i, (name, attack) in enumerate(sorted(attacks.items())):
        x_adv = attack(logits_fn, x, y, jax.random.fold_in(key, i), eps)
        out[name] = jnp.sum(losses.accuracy(logits_fn(x_adv), y) * mask)
      out["count"] = jnp.sum(mask.astype(jnp.float32))
      return out

  return eval_step


def monitor_precision(eval_precision: str, compute_dtype: str = "float32") -> str:
  """The in-training monitor's matmul precision for ``config.eval.precision``.

  ``'auto'`` (the default) is the training compute's own: ``'bfloat16'`` for a
  bfloat16 model, ``'tensorfloat32'`` for a float32 one (XLA's default for
  float32 on GPUs, TF32). It only ranks checkpoints; reportable numbers come
  from ``python -m kdrobust.evaluate`` at 'highest'. Any name of
  ``kdrobust.attacks.PRECISIONS`` is taken as is.
  """
  from kdrobust.attacks import _precision  # pylint: disable=g-import-not-at-top
  if eval_precision == "auto":
    return "bfloat16" if str(compute_dtype) == "bfloat16" else "tensorfloat32"
  if eval_precision not in _precision.PRECISIONS:
    raise ValueError(f"Unknown config.eval.precision {eval_precision!r}; valid: auto, "
                     f"{', '.join(_precision.PRECISIONS)}.")
  return eval_precision


def make_diagnostics_step(apply_fn, teacher_apply_fns: Mapping[str, Callable] | None = None, *,
                          local_linearity: bool = False, local_linearity_steps: int = 50,
                          seed: int = 0, image_levels: int = 255):
  """Per-batch sums of the distillation diagnostics (:mod:`kdrobust.diagnostics`).

  ``diag(variables, teacher_variables, batch, eps, batch_index) -> {name: sum}``
  with, for every teacher ``t`` (a name in ``teacher_apply_fns``),
  ``gd/t = sum_i ||g_S,i - g_T,i||_2`` and ``gc/t = sum_i cos(g_S,i, g_T,i)``
  (IGDM's GD and GC on the clean points, ``g = grad_x CE(f(x), y)``), and with
  ``local_linearity`` the sum of KDIGA's ``gamma(eps, x_i)``; plus ``count``.
  Sums respect ``batch['mask']``; divide by ``count`` for the means. Student
  and teachers run in inference mode at 'highest' matmul precision; ``eps``
  is traced. uint8 batch images are converted at the top (``image_levels``).
  """
  from kdrobust import diagnostics  # pylint: disable=g-import-not-at-top
  base_key = jax.random.PRNGKey(seed)
  names = tuple(teacher_apply_fns or {})
  fns = tuple((teacher_apply_fns or {})[n] for n in names)

  @jax.jit
  def diag_step(variables, teacher_variables, batch, eps, batch_index):
    with jax.default_matmul_precision("highest"):
      student = lambda x: apply_fn(variables, x, train=False)
      x, y = data_device.to_float(batch["image"], image_levels), batch["label"]
      mask = batch["mask"].astype(jnp.float32)
      out = {"count": jnp.sum(mask)}
      for name, f, v in zip(names, fns, teacher_variables):
        agree = diagnostics.gradient_agreement(student, teacher_logits_fn(f, v), x, y)
        out[f"gd/{name}"] = jnp.sum(agree["gd_per_example"] * mask)
        out[f"gc/{name}"] = jnp.sum(agree["gc_per_example"] * mask)
      if local_linearity:
        key = jax.random.fold_in(base_key, batch_index)
        gamma = diagnostics.local_linearity(student, x, y, key, eps=eps,
                                            steps=local_linearity_steps)
        out["local_linearity"] = jnp.sum(gamma * mask)
      return out

  return diag_step


def eval_attack(name: str, *, steps: int, step_size: float | None = None,
                loss: str = "ce", init: str = "uniform", restarts: int = 1,
                norm: str = "linf", step_fraction: float | None = None,
                select: str = "last"):
  """An evaluation attack ``(logits_fn, x, y, key, eps) -> x_adv`` from plain data.

  ``name`` is ``'fgsm'`` or ``'pgd'``; with ``step_fraction`` the step size is
  ``step_fraction * eps`` (so an epsilon sweep keeps the preset's proportions).
  ``select`` is :func:`kdrobust.attacks.projected.pgd`'s: ``'last'`` (the
  default) returns the last iterate, as the papers' monitors and the
  ``pgd20`` preset of ``kdrobust.evaluate`` do, so the in-training robust
  accuracy (and the best checkpoint it picks) matches the final evaluation's
  PGD-20; ``'first'`` stops each example at its first misclassified iterate;
  ``'any'`` counts success at any iterate (stronger, not the papers').
  """
  from kdrobust.attacks import projected as pgd_lib  # pylint: disable=g-import-not-at-top

  def attack(logits_fn, x, y, key, eps):
    if name == "fgsm":
      return pgd_lib.fgsm(logits_fn, x, y, key, eps=eps, init=init, norm=norm)
    a = step_size if step_fraction is None else step_fraction * eps
    return pgd_lib.pgd(logits_fn, x, y, key, eps=eps, step_size=a, steps=steps,
                       loss=loss, init=init, restarts=restarts, norm=norm, select=select)

  if name not in ("fgsm", "pgd"):
    raise ValueError(f"Unknown evaluation attack {name!r}; valid: fgsm, pgd.")
  if select not in pgd_lib.SELECTS:
    raise ValueError(f"Unknown select {select!r} for evaluation attack {name!r}; valid: "
                     f"{', '.join(pgd_lib.SELECTS)}.")
  return attack

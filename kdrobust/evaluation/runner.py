"""The evaluation suite on numpy arrays, for any JAX logits function.

:func:`evaluate_arrays` runs clean accuracy, the projected presets (FGSM,
PGD-20, CW-inf), AutoAttack and an optional transfer attack at one or more
epsilons and returns a plain results dict (see ``docs/evaluation.md``). The
per-batch work is one ``jax.jit`` per attack with the batch shape fixed
(the last batch is padded and masked) and ``eps`` traced, so neither a new
batch nor a new epsilon recompiles. Every kernel and attack runs under
``jax.default_matmul_precision(precision)`` with ``precision`` a named,
recorded choice (``evaluate_arrays(precision=...)``, default and reportable
``'highest'``; ``kdrobust.attacks.PRECISIONS``); Flax models are wrapped by
:func:`flax_logits_fn`, which applies them in inference mode
(``train=False``: batch norm uses its running statistics) at its own
``precision`` (default ``'highest'``).
"""

from __future__ import annotations

import functools
import importlib
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from kdrobust import losses
from kdrobust.attacks import projected
from kdrobust.attacks._precision import check_precision
from kdrobust.evaluation import presets as presets_lib

Array = jax.Array
Partial = jax.tree_util.Partial
NOISE_TOLERANCE = 1e-6  # |CE(x + noise) - CE(x)| below this counts as "unchanged"


# ----------------------------------------------------------------------------
# Logits functions.
# ----------------------------------------------------------------------------
class InferenceLogits:
  """``(variables, x) -> float32 logits`` of a Flax module in inference mode.

  Batch norm uses its running statistics (``train=False``), dropout is off,
  and matmuls/convolutions run at ``precision`` ('highest' by default: no
  TF32/bf16 passes; ``None`` inherits the surrounding context, e.g. the
  attack's ``precision=``). Equality is that of the (hashable,
  frozen-dataclass) module and the precision, identity for an unhashable
  module, so a ``Partial`` of it keys one jit cache entry per architecture
  while the variables stay traced arguments: evaluating two checkpoints of
  one architecture compiles once.
  """

  def __init__(self, module, precision: str | None = "highest"):
    self.module = module
    self.precision = None if precision is None else check_precision(precision)

  def __call__(self, variables, x):
    if self.precision is None:
      return jnp.asarray(self.module.apply(variables, x, train=False), jnp.float32)
    with jax.default_matmul_precision(self.precision):
      return jnp.asarray(self.module.apply(variables, x, train=False), jnp.float32)

  def __eq__(self, other):
    if not isinstance(other, InferenceLogits) or other.precision != self.precision:
      return False
    if other.module is self.module:
      return True
    try:
      return hash(self.module) == hash(other.module) and bool(self.module == other.module)
    except TypeError:
      return False

  def __hash__(self):
    try:
      return hash((self.module, self.precision))
    except TypeError:
      return hash((id(self.module), self.precision))


def flax_logits_fn(module, variables, precision: str | None = "highest") -> Partial:
  """``x -> logits`` for a Flax module and its variables (inference mode, ``precision``)."""
  return Partial(InferenceLogits(module, precision), variables)


def as_partial(logits_fn: Callable[[Array], Array]) -> Partial:
  """A ``Partial`` (a pytree) so the function can be a jit argument."""
  if isinstance(logits_fn, Partial):
    return logits_fn
  return Partial(logits_fn)


# ----------------------------------------------------------------------------
# Jitted per-batch kernels (one compilation per function, batch shape, preset).
# ----------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("precision",))
def _clean_correct(fn, x, y, precision="highest"):
  """Per-example correctness on the unattacked inputs."""
  with jax.default_matmul_precision(precision):
    return jnp.argmax(fn(x), axis=-1) == y


def _run_preset(fn, x, y, eps, key, preset: presets_lib.Preset, norm: str,
                precision: str = "highest"):
  """The adversarial batch of a projected preset (eps traced)."""
  if preset.name == "fgsm":
    return projected.fgsm(fn, x, y, key, eps=eps, init=preset.init, norm=norm,
                          precision=precision)
  return projected.pgd(fn, x, y, key, eps=eps, step_size=preset.step_fraction * eps,
                       steps=preset.steps, norm=norm, loss=preset.loss,
                       init=preset.init, restarts=preset.restarts, kappa=preset.kappa,
                       select=preset.select, precision=precision)


@functools.partial(jax.jit, static_argnames=("preset", "norm", "precision"))
def _preset_correct(fn, x, y, eps, key, *, preset, norm, precision="highest"):
  """Per-example correctness after the preset's attack."""
  with jax.default_matmul_precision(precision):
    x_adv = _run_preset(fn, x, y, eps, key, preset, norm, precision)
    return jnp.argmax(fn(x_adv), axis=-1) == y


@functools.partial(jax.jit, static_argnames=("preset", "norm", "precision"))
def _preset_adv(fn, x, y, eps, key, *, preset, norm, precision="highest"):
  """The preset's adversarial batch (used to craft transfer examples)."""
  with jax.default_matmul_precision(precision):
    return _run_preset(fn, x, y, eps, key, preset, norm, precision)


@functools.partial(jax.jit, static_argnames=("norm", "precision"))
def _sanity_batch(fn, x, y, eps, key, *, norm, precision="highest"):
  """Per example: clean-correct, CE unchanged under random noise, zero input gradient.

  The noise is ``U[-eps, eps]`` per pixel (L-inf) or a uniform-radius L2
  draw, clipped to [0, 1].
  """
  with jax.default_matmul_precision(precision):
    def ce(u):
      logits = fn(u)
      return losses.xent(logits, y), logits
    (loss0, logits), vjp = _vjp_with_aux(ce, x)
    grad = vjp(jnp.ones_like(loss0))
    x_noisy = projected.random_init(key, x, eps, norm=norm, init="uniform")
    loss1 = losses.xent(fn(x_noisy), y)
    correct = jnp.argmax(logits, axis=-1) == y
    unchanged = jnp.abs(loss1 - loss0) < NOISE_TOLERANCE
    zero_grad = jnp.all(grad.reshape(grad.shape[0], -1) == 0, axis=-1)
    return correct, unchanged, zero_grad


def _vjp_with_aux(f, x):
  """``((value, aux), vjp)`` with ``vjp`` returning the single input cotangent."""
  value, vjp, aux = jax.vjp(f, x, has_aux=True)
  return (value, aux), lambda ct: vjp(ct)[0]


def compile_counts() -> dict[str, int]:
  """Cache sizes of the jitted kernels (tests use them to prove nothing recompiles)."""
  kernels = {"clean": _clean_correct, "preset": _preset_correct, "transfer": _preset_adv,
             "sanity": _sanity_batch, "local_linearity": _local_linearity_batch}
  return {k: f._cache_size() for k, f in kernels.items()}  # pylint: disable=protected-access


# ----------------------------------------------------------------------------
# Batching.
# ----------------------------------------------------------------------------
def padded_batches(x: np.ndarray, y: np.ndarray, batch_size: int
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray, int]]:
  """``(batch_index, x_b, y_b, n_valid)`` with every batch exactly ``batch_size`` rows.

  The last batch is padded by repeating its first row; callers drop rows past
  ``n_valid``.
  """
  n = x.shape[0]
  for i, start in enumerate(range(0, n, batch_size)):
    xb, yb = x[start:start + batch_size], y[start:start + batch_size]
    nv = xb.shape[0]
    if nv < batch_size:
      xb = np.concatenate([xb, np.repeat(xb[:1], batch_size - nv, axis=0)])
      yb = np.concatenate([yb, np.repeat(yb[:1], batch_size - nv, axis=0)])
    yield i, xb, yb, nv


def _map_batches(kernel, x, y, batch_size: int) -> np.ndarray | tuple[np.ndarray, ...]:
  """Run ``kernel(i, xb, yb)`` over padded batches; one host fetch at the end."""
  outs, valid = [], []
  for i, xb, yb, nv in padded_batches(x, y, batch_size):
    outs.append(kernel(i, jnp.asarray(xb), jnp.asarray(yb)))
    valid.append(nv)
  outs = jax.device_get(outs)
  if isinstance(outs[0], tuple):
    return tuple(np.concatenate([np.asarray(o[k])[:nv] for o, nv in zip(outs, valid)])
                 for k in range(len(outs[0])))
  return np.concatenate([np.asarray(o)[:nv] for o, nv in zip(outs, valid)])


# ----------------------------------------------------------------------------
# Individual evaluations.
# ----------------------------------------------------------------------------
def clean_correct(fn: Partial, x, y, batch_size: int, precision: str = "highest"
                  ) -> np.ndarray:
  """Per-example clean correctness (bool[N])."""
  check_precision(precision)
  return _map_batches(lambda i, xb, yb: _clean_correct(fn, xb, yb, precision=precision),
                      x, y, batch_size)


def preset_correct(fn: Partial, x, y, *, eps: float, preset: presets_lib.Preset,
                   norm: str, seed: int, batch_size: int, precision: str = "highest"
                   ) -> np.ndarray:
  """Per-example correctness under a projected preset (bool[N]).

  Batch ``i`` uses ``fold_in(fold_in(PRNGKey(seed), hash of preset), i)``, the
  same draws at every epsilon (common random numbers across a sweep).
  """
  base = jax.random.fold_in(jax.random.PRNGKey(seed), _stable_id(preset.name))
  e = jnp.float32(eps)
  return _map_batches(
      lambda i, xb, yb: _preset_correct(fn, xb, yb, e, jax.random.fold_in(base, i),
                                        preset=preset, norm=norm, precision=precision),
      x, y, batch_size)


def preset_adversarial(fn: Partial, x, y, *, eps: float, preset: presets_lib.Preset,
                       norm: str, seed: int, batch_size: int,
                       salt: str = "transfer", precision: str = "highest") -> np.ndarray:
  """The preset's adversarial examples for all of ``x`` (numpy, padded batches)."""
  base = jax.random.fold_in(jax.random.PRNGKey(seed), _stable_id(salt))
  e = jnp.float32(eps)
  return _map_batches(
      lambda i, xb, yb: _preset_adv(fn, xb, yb, e, jax.random.fold_in(base, i),
                                    preset=preset, norm=norm, precision=precision),
      x, y, batch_size)


def transfer_correct(source_fn: Partial, target_fn: Partial, x, y, *, eps: float,
                     preset: presets_lib.Preset, norm: str, seed: int, batch_size: int,
                     precision: str = "highest") -> tuple[np.ndarray, float]:
  """Target correctness on the preset's examples crafted on the source, and the
  source's own (white-box) accuracy on them.

  Goes through :func:`kdrobust.attacks.transfer.transfer_attack` with every
  point attacked (``only_correct=False``) so the figure has the same
  denominator as the white-box attacks.
  """
  transfer = importlib.import_module("kdrobust.attacks.transfer")

  def craft(src, xs, ys, key):
    del key  # the seed is folded in by preset_adversarial
    return preset_adversarial(src, xs, ys, eps=eps, preset=preset, norm=norm, seed=seed,
                              batch_size=batch_size, precision=precision)

  with jax.default_matmul_precision(precision):
    res = transfer.transfer_attack(source_fn, {"target": target_fn}, x, y, attack=craft,
                                   only_correct=False, batch_size=batch_size)
  return np.asarray(res.target_correct["target"], bool), float(res.source_accuracy)


def sanity_checks(fn: Partial, x, y, *, eps: float, norm: str, seed: int,
                  batch_size: int, precision: str = "highest") -> dict[str, Any]:
  """The noise and zero-gradient checks on the clean-correct points.

  ``loss_unchanged``: points whose CE loss changes by less than 1e-6 under
  ``U[-eps, eps]`` noise; ``zero_grad``: points whose input gradient of the
  CE loss is exactly zero. Both count among the clean-correct points.
  """
  base = jax.random.fold_in(jax.random.PRNGKey(seed), _stable_id("noise"))
  e = jnp.float32(eps)
  correct, unchanged, zero = _map_batches(
      lambda i, xb, yb: _sanity_batch(fn, xb, yb, e, jax.random.fold_in(base, i), norm=norm,
                                      precision=precision),
      x, y, batch_size)
  n_ok = int(correct.sum())
  n_same = int((unchanged & correct).sum())
  n_zero = int((zero & correct).sum())
  return {"num_clean_correct": n_ok, "loss_unchanged": n_same,
          "loss_unchanged_fraction": n_same / n_ok if n_ok else 0.0,
          "zero_grad": n_zero, "zero_grad_fraction": n_zero / n_ok if n_ok else 0.0,
          "noise": "U[-eps, eps]" if norm == "linf" else "uniform-radius L2 ball",
          "tolerance": NOISE_TOLERANCE}


def _stable_id(name: str) -> int:
  """A small deterministic integer for ``name`` (Python's ``hash`` is salted)."""
  return sum((i + 1) * ord(c) for i, c in enumerate(name)) % (2 ** 31)


# ----------------------------------------------------------------------------
# Distillation diagnostics (kdrobust.diagnostics).
# ----------------------------------------------------------------------------
LL_STEPS = 50  # KDIGA's llm_eval
LL_STEP_FRACTION = 0.1


@jax.jit
def _gradient_agreement_batch(student_fn, teacher_fn, x, y):
  """Per-example GD and GC between the student's and the teacher's CE input gradients."""
  diagnostics = importlib.import_module("kdrobust.diagnostics")
  with jax.default_matmul_precision("highest"):
    out = diagnostics.gradient_agreement(student_fn, teacher_fn, x, y)
    return out["gd_per_example"], out["gc_per_example"]


@jax.jit
def _local_linearity_batch(fn, x, y, key, eps):
  """Per-example local-linearity measure gamma(eps, x) (eps traced)."""
  diagnostics = importlib.import_module("kdrobust.diagnostics")
  with jax.default_matmul_precision("highest"):
    return diagnostics.local_linearity(fn, x, y, key, eps=eps, steps=LL_STEPS,
                                       step_fraction=LL_STEP_FRACTION)


def gradient_agreement(student_fn: Partial, teacher_fn: Partial, x, y, *,
                       batch_size: int) -> dict[str, Any]:
  """IGDM's GD (mean L2 distance) and GC (mean cosine) of the input gradients over ``x``."""
  gd, gc = _map_batches(
      lambda i, xb, yb: _gradient_agreement_batch(student_fn, teacher_fn, xb, yb), x, y,
      batch_size)
  t_ok = clean_correct(teacher_fn, x, y, batch_size)
  return {"gd": float(gd.mean()), "gc": float(gc.mean()),
          "gradient_of": "per-example CE at the true label, clean test points",
          "teacher_clean_acc": float(t_ok.mean()), "num_examples": int(x.shape[0])}


def local_linearity(fn: Partial, x, y, *, eps: float, seed: int, batch_size: int
                    ) -> dict[str, Any]:
  """KDIGA's local-linearity measure: mean and max of gamma(eps, x) over ``x``."""
  base = jax.random.fold_in(jax.random.PRNGKey(seed), _stable_id("local_linearity"))
  e = jnp.float32(eps)
  gamma = _map_batches(
      lambda i, xb, yb: _local_linearity_batch(fn, xb, yb, jax.random.fold_in(base, i), e),
      x, y, batch_size)
  return {"mean": float(gamma.mean()), "max": float(gamma.max())}


# ----------------------------------------------------------------------------
# AutoAttack.
# ----------------------------------------------------------------------------
def run_autoattack(fn: Partial, x, y, *, eps: float, norm: str, version: str, seed: int,
                   batch_size: int, progress: bool = True, desc: str = "AA",
                   reeval_batch_size: int | None = None, precision: str = "highest",
                   chunk_size: int | None = None) -> dict[str, Any]:
  """AutoAttack (:func:`kdrobust.attacks.autoattack.autoattack`), with tqdm bars.

  Returns ``{'robust': bool[N], 'version', 'batch_size', 'clean_acc',
  'robust_acc', 'stages': [{'attack', 'robust_acc'}], 'warnings',
  'timings_s', 'max_perturbation', 'reeval_acc', 'reeval_mismatch'}``.
  ``batch_size`` is AutoAttack's own (Square shares its draws across a
  batch, docs/evaluation.md), capped at N as the reference does. The
  re-evaluation forwards the returned ``x_adv`` again, in batches of
  ``reeval_batch_size`` (default ``batch_size``), and compares with
  AutoAttack's flags (docs/evaluation.md). ``precision``: AutoAttack's
  ``precision=`` (recorded as ``'precision'``); ``chunk_size``: its APGD/FAB
  chunk size (``None``: its default, :func:`kdrobust.attacks.autoattack.autoattack`).
  """
  # The package re-exports the function under the module's name: import the module.
  aa_lib = importlib.import_module("kdrobust.attacks.autoattack")
  callback, close = _stage_bars(desc) if progress else (None, lambda: None)
  try:
    res = aa_lib.autoattack(fn, np.asarray(x), np.asarray(y), eps=eps,
                            norm=presets_lib.NORMS[norm], version=version, seed=seed,
                            batch_size=batch_size, progress=callback, precision=precision,
                            chunk_size=chunk_size)
  finally:
    close()
  robust = np.asarray(res.robust, bool)
  reeval = clean_correct(fn, np.asarray(res.x_adv, np.float32), np.asarray(y),
                         reeval_batch_size or batch_size, precision)
  return {"version": version, "robust": robust, "precision": precision,
          "batch_size": int(min(batch_size, np.asarray(y).shape[0])),
          "chunk_size": int(res.config.chunk_size), "buckets": int(res.config.buckets),
          "devices": int(res.config.devices),
          "clean_acc": float(res.clean_accuracy), "robust_acc": float(res.robust_accuracy),
          "stages": [{"attack": str(k), "robust_acc": float(v)}
                     for k, v in res.stage_accuracy.items()],
          "warnings": [str(w) for w in res.warnings],
          "timings_s": {k: round(float(v), 3) for k, v in res.timings.items()},
          "max_perturbation": float(res.max_perturbation),
          "reeval_acc": float(reeval.mean()),
          "reeval_mismatch": int((reeval != robust).sum())}


def _stage_bars(desc: str):
  """``(callback, close)``: one tqdm bar (rate, ETA) per AutoAttack stage, on stderr."""
  from kdrobust.attacks import autoattack as aa_lib  # pylint: disable=g-import-not-at-top
  return aa_lib.stage_bars(desc)


# ----------------------------------------------------------------------------
# The suite.
# ----------------------------------------------------------------------------
def evaluate_arrays(logits_fn, x, y, *, eps, attacks=presets_lib.DEFAULT_ATTACKS,
                    norm: str = "linf", aa_version: str = "standard", seed: int = 0,
                    batch_size: int = 256, aa_batch_size: int | None = None,
                    transfer_fn=None, progress: bool = True,
                    log: Callable[[str], None] | None = print,
                    precision: str = "highest") -> dict[str, Any]:
  """Clean accuracy and every requested attack at every epsilon.

  ``logits_fn``: any ``x -> logits`` JAX function (wrap Flax modules with
  :func:`flax_logits_fn`); ``x`` float32 NHWC in [0, 1], ``y`` int labels;
  ``eps``: anything :func:`~kdrobust.evaluation.presets.parse_eps` takes.
  ``transfer_fn``: a second model's logits function; PGD-20 examples crafted
  on it are evaluated on ``logits_fn`` (``accuracy['transfer']``).
  ``batch_size`` is that of the projected attacks and the checks;
  AutoAttack has its own, ``aa_batch_size`` (default
  :data:`~kdrobust.evaluation.presets.AA_BATCH_SIZE`, 250, the reference's;
  capped at N). ``precision`` (``kdrobust.attacks.PRECISIONS``) is the matmul
  precision of every kernel and attack, recorded in the result; reportable
  numbers use ``'highest'`` (the default). Build ``logits_fn`` with
  ``flax_logits_fn(..., precision=None)`` or the same precision, since a
  Flax wrapper's own precision applies inside it.
  Returns ``{'norm', 'num_examples', 'clean_acc', 'attacks', 'per_eps':
  [...]}``; each ``per_eps`` entry holds ``eps``, ``eps_str``,
  ``accuracy`` (per attack), ``worst_case``, ``sanity``, ``time_s`` and,
  with ``aa``, ``autoattack``.
  """
  check_precision(precision)
  fn = as_partial(logits_fn)
  src = None if transfer_fn is None else as_partial(transfer_fn)
  norm = presets_lib.canonical_norm(norm)
  attacks = presets_lib.parse_attacks(attacks)
  eps_list = presets_lib.parse_eps(eps)
  x = np.asarray(x, np.float32)
  y = np.asarray(y).astype(np.int32)
  bs = max(1, min(int(batch_size), x.shape[0]))
  aa_bs = int(aa_batch_size or presets_lib.AA_BATCH_SIZE)
  if aa_bs <= 0:
    raise ValueError(f"The AutoAttack batch size must be positive, got {aa_batch_size}.")
  aa_bs = min(aa_bs, x.shape[0])
  say = log or (lambda s: None)

  t0 = time.time()
  clean = clean_correct(fn, x, y, bs, precision)
  clean_time = time.time() - t0
  say(f"clean: {clean.mean():.4f} ({x.shape[0]} examples, {clean_time:.1f}s)")
  per_eps = []
  for value, label in eps_list:
    per_eps.append(_evaluate_eps(fn, src, x, y, clean, value=value, label=label,
                                 attacks=attacks, norm=norm, aa_version=aa_version,
                                 seed=seed, batch_size=bs, aa_batch_size=aa_bs,
                                 progress=progress, say=say, precision=precision))
  return {"norm": presets_lib.NORMS[norm], "num_examples": int(x.shape[0]),
          "clean_acc": float(clean.mean()), "attacks": list(attacks),
          "aa_version": aa_version if "aa" in attacks else None,
          "batch_size": bs, "aa_batch_size": aa_bs if "aa" in attacks else None,
          "seed": seed, "precision": precision, "per_eps": per_eps}


def _evaluate_eps(fn, src, x, y, clean, *, value, label, attacks, norm, aa_version,
                  seed, batch_size, aa_batch_size, progress, say,
                  precision="highest") -> dict[str, Any]:
  """One epsilon: every attack, the worst case over them and the sanity checks."""
  acc = {"clean": float(clean.mean())}
  flags = {"clean": clean}
  times: dict[str, float] = {}
  entry: dict[str, Any] = {"eps": value, "eps_str": label}
  for name in attacks:
    if name == "clean":
      continue
    t0 = time.time()
    if name == "aa":
      aa = run_autoattack(fn, x, y, eps=value, norm=norm, version=aa_version, seed=seed,
                          batch_size=aa_batch_size, reeval_batch_size=batch_size,
                          progress=progress, desc=f"AA {aa_version} eps {label}",
                          precision=precision)
      flags[name] = aa.pop("robust")
      entry["autoattack"] = aa
    else:
      flags[name] = preset_correct(fn, x, y, eps=value, preset=presets_lib.PRESETS[name],
                                   norm=norm, seed=seed, batch_size=batch_size,
                                   precision=precision)
    times[name] = time.time() - t0
    acc[name] = float(flags[name].mean())
    say(f"eps {label}: {name} {acc[name]:.4f} ({times[name]:.1f}s)")
  if src is not None:
    t0 = time.time()
    on_adv, source_acc = transfer_correct(src, fn, x, y, eps=value,
                                          preset=presets_lib.PRESETS["pgd20"], norm=norm,
                                          seed=seed, batch_size=batch_size,
                                          precision=precision)
    flags["transfer"] = on_adv & clean  # robust-accuracy semantics: denominator N
    times["transfer"] = time.time() - t0
    acc["transfer"] = float(flags["transfer"].mean())
    entry["transfer"] = {"attack": "pgd20 crafted on the source model",
                         "source_acc": source_acc,
                         "target_acc_on_adv": float(on_adv.mean())}
    say(f"eps {label}: transfer (PGD-20 on the source) {acc['transfer']:.4f}")
  worst = np.logical_and.reduce([flags[k] for k in flags])
  entry.update(accuracy=acc, worst_case=float(worst.mean()),
               sanity=sanity_checks(fn, x, y, eps=value, norm=norm, seed=seed,
                                    batch_size=batch_size, precision=precision),
               time_s={k: round(v, 3) for k, v in times.items()})
  return entry

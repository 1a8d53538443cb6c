"""Teacher entropy on the robustly unlearnable set ("Why Robust Teachers Fail", ICML 2026).

The paper's claim: adversarial distillation works when the teacher is
*uncertain* on the **robustly unlearnable set** ``S_U``, the training samples
that no student of the given architecture learns robustly; a teacher that is
confident there makes the student memorise noise (robust overfitting). Two
pieces:

1. **The sets** (:func:`identify`, ``python -m kdrobust.teacher_entropy
   identify``), as the official code builds them
   [C:WRTF@68d7b09:real_exp/identify_train_unlearnset.py:46-73,114-141,228-265]:

   * ``M`` reference students of one architecture (kdrobust run directories;
     the code uses 60 = 6 paradigms x 10 seeds, each at its checkpoint of best
     test PGD-20 accuracy, which is kdrobust's ``best`` checkpoint);
   * each evaluated on the **full, clean, un-augmented training split**
     (ToTensor only; here the ``eval_iterator`` view of the train split, in
     dataset order) by **PGD-10**: ``eps`` (8/255 in the paper), step
     ``eps/4``, uniform random start clipped to [0, 1], cross-entropy, the
     **last** iterate, model in **eval mode** (BN running statistics);
   * ``rc[m, i] = argmax f_m(x_i^adv) == y_i``; score ``s_i = sum_m rc[m, i]``
     in ``0..M``; ``S_U = {i : s_i = 0}`` (robust-correct for no model),
     ``S_L = {i : s_i = M}`` (robust-correct for every model)
     (:func:`sets_from_robust_correct`).

   The JSON file (written atomically) holds the indices, every score, the
   ``robust_score_to_indices`` map of the code, the exact protocol, the runs
   and checkpoints used, and a fingerprint of the split (dataset name, size,
   SHA-256 of the labels in order) so that a file made for another dataset
   or another version of it is refused (:func:`load_unlearnable`).

   One kdrobust simplification, stated: the code merges per-paradigm files
   (and writes per-paradigm sets too); here the caller lists the runs and
   gets the intersection over all of them. Each run's own training-set robust
   accuracy is recorded, so per-paradigm sets can be rebuilt from the scores
   of separate files.

2. **The diagnostic** (:func:`diagnose`; ``kdrobust.evaluate --teacher T
   --unlearnable FILE``; ``config.teacher_entropy.unlearnable`` at the start
   of a run). Not in the released code, and the paper's exact definition is
   **UNCONFIRMED** (the secondary sources that describe it
   disagree). We report both readings, on ``S_U`` and, for contrast, on
   ``S_L``:

   * ``clean``: ``mean_{i in S} H(softmax(T(x_i)))``, one clean forward per
     training image;
   * ``pgd``: ``mean_{i in S} H(softmax(T(x_i^adv)))`` with ``x^adv`` from the
     same PGD-10 as above, crafted on **the teacher itself** by default
     (option: a reference student, ``attack=<run dir>``; or ``'none'`` to skip
     it). Which model is attacked is recorded in the output.

   ``H(p) = -sum_c p_c log p_c`` in **nats** (natural log; the log base is
   unconfirmed too), so a uniform prediction over ``C`` classes gives
   ``log C`` and a one-hot one ``0``. Each variant also reports the teacher's
   accuracy and its mean true-class probability ``mean_i p_{y_i}``. The
   correlation statistic of the paper is not known; kdrobust reports the
   per-teacher scalars only.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "kdrobust.unlearnable/1"
SOURCE = "[C:WRTF@68d7b09:real_exp/identify_train_unlearnset.py]"
ATTACK_CHOICES = ("teacher", "none")  # or the path of a reference-student run directory
DEFAULT_STEPS = 10
STEP_FRACTION = 0.25  # step = eps / 4
_SALT_IDENTIFY, _SALT_DIAGNOSE = 0x5E7, 0xE27


class TeacherEntropyError(ValueError):
  """Bad inputs to the unlearnable-set tools (raised before any compute)."""


# ----------------------------------------------------------------------------
# Pure pieces.
# ----------------------------------------------------------------------------
def entropy(logits) -> jax.Array:
  """Per-example Shannon entropy (nats) of ``softmax(logits)``: ``-sum_c p_c log p_c``.

  Terms with ``p_c = 0`` count 0 (the limit), so a one-hot prediction gives
  exactly 0 and uniform logits give ``log C``.
  """
  z = jnp.asarray(logits, jnp.float32)
  logp = jax.nn.log_softmax(z, axis=-1)
  p = jnp.exp(logp)
  return -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)


def prediction_stats(logits, labels) -> dict[str, jax.Array]:
  """Per-example ``entropy`` (nats), ``correct`` (argmax == y) and ``true_prob`` (p_y)."""
  z = jnp.asarray(logits, jnp.float32)
  p = jax.nn.softmax(z, axis=-1)
  y = jnp.asarray(labels, jnp.int32)
  return {"entropy": entropy(z), "correct": jnp.argmax(z, -1) == y,
          "true_prob": jnp.take_along_axis(p, y[:, None], axis=-1)[:, 0]}


def sets_from_robust_correct(robust_correct) -> dict[str, Any]:
  """``S_U``, ``S_L`` and the scores from a ``[M, N]`` 0/1 robust-correctness matrix.

  ``score_i = sum_m rc[m, i]``; ``S_U = {i : score_i = 0}``,
  ``S_L = {i : score_i = M}``; ``robust_score_to_indices[str(k)]`` lists the
  samples of score ``k`` for ``k = 0..M``, as the official merge step
  [C:WRTF@68d7b09:real_exp/identify_train_unlearnset.py:106-107,228-229].
  """
  rc = np.asarray(robust_correct)
  if rc.ndim != 2 or rc.shape[0] < 1:
    raise TeacherEntropyError(f"robust_correct must be [num_models >= 1, num_samples], "
                              f"got shape {rc.shape}.")
  if rc.dtype != bool and not np.isin(rc, (0, 1)).all():
    raise TeacherEntropyError("robust_correct must hold 0/1 or booleans.")
  m = rc.shape[0]
  score = rc.astype(np.int64).sum(0)
  return {"num_models": int(m), "num_samples": int(rc.shape[1]), "scores": score.tolist(),
          "unlearnable_indices": np.flatnonzero(score == 0).tolist(),
          "learnable_indices": np.flatnonzero(score == m).tolist(),
          "unlearnable_count": int((score == 0).sum()),
          "learnable_count": int((score == m).sum()),
          "robust_score_to_indices": {str(k): np.flatnonzero(score == k).tolist()
                                      for k in range(m + 1)}}


def labels_sha256(labels) -> str:
  """SHA-256 of the labels as little-endian int32, in dataset order (the split's fingerprint)."""
  return hashlib.sha256(np.asarray(labels, "<i4").tobytes()).hexdigest()


def protocol(eps: float, eps_str: str, *, steps: int = DEFAULT_STEPS, seed: int = 0,
             split: str = "train") -> dict[str, Any]:
  """The attack protocol recorded with the sets (and checked against the defaults)."""
  return {"attack": f"PGD-{steps}", "steps": int(steps), "eps": float(eps), "eps_str": eps_str,
          "step_size": "eps/4", "step_fraction": STEP_FRACTION,
          "init": "uniform U[-eps, eps], clipped to [0, 1]", "loss": "ce", "restarts": 1,
          "iterate": "last", "batch_norm": "inference", "precision": "highest",
          "split": split, "augment": False, "seed": int(seed), "source": SOURCE}


# ----------------------------------------------------------------------------
# Jitted kernels.
# ----------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("steps",))
def _pgd_adv(fn, x, y, eps, key, *, steps):
  from kdrobust.attacks import projected  # pylint: disable=g-import-not-at-top
  return projected.pgd(fn, x, y, key, eps=eps, step_size=STEP_FRACTION * eps, steps=steps,
                       loss="ce", init="uniform", restarts=1, select="last",
                       precision="highest")


@functools.partial(jax.jit, static_argnames=("steps",))
def _robust_correct(fn, x, y, eps, key, *, steps):
  x_adv = _pgd_adv(fn, x, y, eps, key, steps=steps)
  with jax.default_matmul_precision("highest"):
    return jnp.argmax(fn(x_adv), -1) == y


@jax.jit
def _stats(fn, x, y):
  with jax.default_matmul_precision("highest"):
    return prediction_stats(fn(x), y)


# ----------------------------------------------------------------------------
# Data: the clean, un-augmented training split in dataset order.
# ----------------------------------------------------------------------------
def _train_batches(dataset: str, data_dir: str | None, batch_size: int):
  """``(positions, x, y, mask)`` over the train split (eval view, padded, dataset order)."""
  from kdrobust import data as data_lib  # pylint: disable=g-import-not-at-top
  info = data_lib.info(dataset, data_dir)
  it = data_lib.eval_iterator(dataset, data_dir=data_dir, batch_size=batch_size,
                              split=info.train_split, process_index=0, process_count=1,
                              image_dtype="float32")
  for k, b in enumerate(it):
    yield (np.arange(k * batch_size, (k + 1) * batch_size), b["image"], b["label"],
           np.asarray(b["mask"], bool))


def train_subset(dataset: str, indices: Sequence[int], *, data_dir: str | None = None,
                 batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray, str]:
  """``(x, y, labels_sha256)``: the clean training images at ``indices`` (sorted), and the
  fingerprint of the whole split's labels."""
  from kdrobust import data as data_lib  # pylint: disable=g-import-not-at-top
  info = data_lib.info(dataset, data_dir)
  idx = np.unique(np.asarray(indices, np.int64))
  if idx.size and (idx[0] < 0 or idx[-1] >= info.num_train):
    raise TeacherEntropyError(f"Training indices out of range [0, {info.num_train}).")
  want = np.zeros(info.num_train + batch_size, bool)
  want[idx] = True
  xs, ys, all_labels = [], [], []
  for pos, x, y, mask in _train_batches(dataset, data_dir, batch_size):
    all_labels.append(y[mask])
    keep = mask & want[pos]
    if keep.any():
      xs.append(x[keep])
      ys.append(y[keep])
  x = (np.concatenate(xs) if xs else np.zeros((0,) + tuple(info.image_shape), np.float32))
  y = np.concatenate(ys).astype(np.int32) if ys else np.zeros((0,), np.int32)
  return x, y, labels_sha256(np.concatenate(all_labels))


# ----------------------------------------------------------------------------
# 1. The sets.
# ----------------------------------------------------------------------------
def _run_info(workdir: str) -> tuple[Any, dict]:
  from kdrobust import evaluate  # pylint: disable=g-import-not-at-top
  try:
    return evaluate._run_files(workdir)  # pylint: disable=protected-access
  except evaluate.EvaluationError as e:
    raise TeacherEntropyError(str(e)) from None


def _eps(eps, configs) -> tuple[float, str]:
  from kdrobust.evaluation import presets  # pylint: disable=g-import-not-at-top
  if eps is None:
    vals = sorted({float(c.eval.eps) for c in configs if "eval" in c and "eps" in c.eval})
    if len(vals) != 1:
      raise TeacherEntropyError(f"The runs' config.eval.eps differ or are missing "
                                f"({vals}); pass --eps (the paper's is 8/255).")
    eps = vals[0]
  parsed = presets.parse_eps(eps)
  if len(parsed) != 1:
    raise TeacherEntropyError(f"--eps takes one value, got {eps!r}.")
  return parsed[0]


def identify(runs: Sequence[str], out: str, *, dataset: str | None = None, eps=None,
             steps: int = DEFAULT_STEPS, checkpoint: str = "best", seed: int = 0,
             batch_size: int = 256, data_dir: str | None = None, overwrite: bool = False,
             progress: bool = True, log: Callable[[str], None] | None = print
             ) -> dict[str, Any]:
  """Build ``S_U``/``S_L`` from reference runs and write them to ``out`` (JSON, atomic).

  ``runs``: kdrobust run directories of students of one architecture;
  ``checkpoint``: ``best`` (the code's peak-robust-accuracy checkpoint),
  ``latest`` or a step. ``eps``: default the runs' common ``config.eval.eps``.
  Every input is checked before any compute; returns the record written.
  """
  from kdrobust import data as data_lib  # pylint: disable=g-import-not-at-top
  from kdrobust import evaluate  # pylint: disable=g-import-not-at-top
  from kdrobust.evaluation import runner  # pylint: disable=g-import-not-at-top
  runs = [r for r in runs if r]
  if not runs:
    raise TeacherEntropyError("--runs needs at least one kdrobust run directory.")
  if len(set(map(os.path.abspath, runs))) != len(runs):
    raise TeacherEntropyError("--runs lists a run twice.")
  if steps < 1 or batch_size < 1:
    raise TeacherEntropyError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}.")
  infos = [_run_info(r) for r in runs]
  names = sorted({c.data.name for c, _ in infos})
  if len(names) != 1:
    raise TeacherEntropyError(f"The runs train on different datasets: {names}.")
  if dataset is not None and dataset != names[0]:
    raise TeacherEntropyError(f"--dataset {dataset} but the runs train on {names[0]}.")
  dataset = names[0]
  archs = sorted({str(s["model"].get("name")) for _, s in infos})
  eps_value, eps_str = _eps(eps, [c for c, _ in infos])
  steps_of = [evaluate.resolve_checkpoint(r, checkpoint) for r in runs]
  if os.path.exists(out) and not overwrite:
    raise TeacherEntropyError(f"{out} exists; pass --overwrite to replace it.")
  data_dir = data_dir or infos[0][0].data.data_dir or None
  info = data_lib.info(dataset, data_dir)
  say = log or (lambda s: None)
  if len(archs) > 1:
    say(f"warning: the runs mix architectures {archs}; the paper builds S_U per architecture.")

  fns, run_meta = [], []
  for r, (config, spec), (step, how) in zip(runs, infos, steps_of):
    module, variables, _, _ = evaluate.load_run(r, step)
    fns.append(runner.flax_logits_fn(module, variables))
    run_meta.append({"workdir": os.path.abspath(r), "checkpoint": {
        "requested": str(checkpoint), "step": int(step), "resolved": how},
                     "model": spec["model"].get("name"),
                     "method": config.method.get("name") if "method" in config else None,
                     "seed": config.get("seed")})
  say(f"PGD-{steps} (eps {eps_str}, step eps/4, uniform start, CE, eval mode) on the "
      f"{info.num_train} clean training images of {dataset}, {len(runs)} reference run(s).")
  return write_sets(out, fns, run_meta, dataset=dataset, eps=(eps_value, eps_str),
                    steps=steps, seed=seed, batch_size=batch_size, data_dir=data_dir,
                    progress=progress, log=log, student=archs[0] if len(archs) == 1 else archs)


def robust_correct_matrix(fns: Sequence[Callable], dataset: str, *, eps: float,
                          steps: int = DEFAULT_STEPS, seed: int = 0, batch_size: int = 256,
                          data_dir: str | None = None, progress: bool = False
                          ) -> tuple[np.ndarray, np.ndarray]:
  """``(rc bool[M, N], labels int32[N])``: PGD robust correctness of each ``fns[m]`` on
  the full clean training split (the protocol of the module docstring).

  Batch ``k`` of model ``m`` draws its start from
  ``fold_in(fold_in(fold_in(PRNGKey(seed), salt), m), k)``.
  """
  from kdrobust import data as data_lib  # pylint: disable=g-import-not-at-top
  from kdrobust import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from kdrobust.evaluation import runner  # pylint: disable=g-import-not-at-top
  n = data_lib.info(dataset, data_dir).num_train
  fns = [runner.as_partial(f) for f in fns]
  rc = np.zeros((len(fns), n), bool)
  labels = np.zeros(n, np.int32)
  base = jax.random.fold_in(jax.random.PRNGKey(seed), _SALT_IDENTIFY)
  e = jnp.float32(eps)
  bar = metrics_lib.progress(-(-n // batch_size) * len(fns), desc="unlearnable set")
  if not progress:
    bar.disable = True
  try:
    for k, (pos, x, y, mask) in enumerate(_train_batches(dataset, data_dir, batch_size)):
      xb, yb = jnp.asarray(x), jnp.asarray(y)
      labels[pos[mask]] = y[mask]
      for m, fn in enumerate(fns):
        key = jax.random.fold_in(jax.random.fold_in(base, m), k)
        rc[m, pos[mask]] = np.asarray(_robust_correct(fn, xb, yb, e, key, steps=steps))[mask]
        bar.update(1)
  finally:
    bar.close()
  return rc, labels


def write_sets(out: str, fns: Sequence[Callable], run_meta: Sequence[dict], *, dataset: str,
               eps: tuple[float, str], steps: int = DEFAULT_STEPS, seed: int = 0,
               batch_size: int = 256, data_dir: str | None = None, progress: bool = False,
               log: Callable[[str], None] | None = None, student: Any = None
               ) -> dict[str, Any]:
  """Evaluate ``fns`` (:func:`robust_correct_matrix`), build the sets, write ``out`` atomically.

  ``run_meta[m]`` describes ``fns[m]`` (workdir, checkpoint, ...); each gets
  its ``train_robust_accuracy``. Returns the record written.
  """
  from kdrobust import data as data_lib  # pylint: disable=g-import-not-at-top
  from kdrobust import evaluate  # pylint: disable=g-import-not-at-top
  from kdrobust import fileio  # pylint: disable=g-import-not-at-top
  if len(fns) != len(run_meta):
    raise TeacherEntropyError(f"{len(fns)} models but {len(run_meta)} run descriptions.")
  info = data_lib.info(dataset, data_dir)
  eps_value, eps_str = eps
  t0 = time.time()
  rc, labels = robust_correct_matrix(fns, dataset, eps=eps_value, steps=steps, seed=seed,
                                     batch_size=batch_size, data_dir=data_dir,
                                     progress=progress)
  run_meta = [dict(meta, train_robust_accuracy=float(row.mean()))
              for meta, row in zip(run_meta, rc)]
  record = {"format": FORMAT, "dataset": dataset, "split": info.train_split,
            "num_samples": int(info.num_train), "num_classes": int(info.num_classes),
            "labels_sha256": labels_sha256(labels), "student": student,
            "epsilon": eps_str, "eval_attack": f"PGD-{steps}",
            "protocol": protocol(eps_value, eps_str, steps=steps, seed=seed,
                                 split=info.train_split),
            "runs": run_meta, **sets_from_robust_correct(rc),
            "versions": evaluate.versions(), "device": evaluate.device_string(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"), "time_s": round(time.time() - t0, 2)}
  fileio.write_json(out, record, indent=None)
  say = log or (lambda s: None)
  say(f"{dataset}: {record['unlearnable_count']} unlearnable (S_U), "
      f"{record['learnable_count']} learnable (S_L) of {info.num_train}; wrote {out}.")
  return record


def load_unlearnable(path: str, *, dataset: str | None = None, num_samples: int | None = None,
                     labels_sha: str | None = None) -> dict[str, Any]:
  """Read a sets file, refusing one made for another dataset, split size or label order."""
  from kdrobust import fileio  # pylint: disable=g-import-not-at-top
  if not path or not os.path.isfile(path):
    raise TeacherEntropyError(f"Unlearnable-set file {path!r} does not exist (make one with "
                              "python -m kdrobust.teacher_entropy identify).")
  rec = fileio.read_json(path)
  if not isinstance(rec, dict) or rec.get("format") != FORMAT:
    raise TeacherEntropyError(f"{path} is not a kdrobust unlearnable-set file (format "
                              f"{rec.get('format') if isinstance(rec, dict) else None!r}, "
                              f"want {FORMAT!r}).")
  if dataset is not None and rec["dataset"] != dataset:
    raise TeacherEntropyError(f"{path} was made for dataset {rec['dataset']!r}, not "
                              f"{dataset!r}.")
  if num_samples is not None and int(rec["num_samples"]) != int(num_samples):
    raise TeacherEntropyError(f"{path} was made for a training split of {rec['num_samples']} "
                              f"samples; this one has {num_samples}.")
  if labels_sha is not None and rec.get("labels_sha256") != labels_sha:
    raise TeacherEntropyError(f"{path} was made for another version or order of "
                              f"{rec['dataset']}'s training split (label fingerprint differs).")
  for key in ("unlearnable_indices", "learnable_indices"):
    idx = np.asarray(rec[key], np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= int(rec["num_samples"])):
      raise TeacherEntropyError(f"{path}: {key} out of range [0, {rec['num_samples']}).")
  return rec


def check_attack(attack: str) -> None:
  """``attack`` is 'teacher', 'none' or a kdrobust run directory (a reference student)."""
  if attack in ATTACK_CHOICES:
    return
  if not (attack and os.path.isfile(os.path.join(attack, "model.json"))):
    raise TeacherEntropyError(f"attack must be one of {', '.join(ATTACK_CHOICES)} or a "
                              f"kdrobust run directory (a reference student), got {attack!r}.")


def check_file(path: str, dataset: str, data_dir: str | None = None) -> dict[str, Any]:
  """Cheap pre-compute check of a sets file against ``dataset`` (name and split size)."""
  from kdrobust import data as data_lib  # pylint: disable=g-import-not-at-top
  info = data_lib.info(dataset, data_dir)
  return load_unlearnable(path, dataset=dataset, num_samples=info.num_train)


def check_for_evaluate(dataset: str, path: str, *, teacher: str | None, attack: str,
                       data_dir: str | None = None) -> dict[str, Any]:
  """Pre-compute checks of ``kdrobust.evaluate --unlearnable`` (``attack`` may be 'student')."""
  if not teacher:
    raise TeacherEntropyError("--unlearnable needs --teacher (the teacher whose entropy on the "
                              "unlearnable set is measured).")
  if attack != "student":
    try:
      check_attack(attack)
    except TeacherEntropyError:
      raise TeacherEntropyError(
          f"--unlearnable_attack must be teacher, student (this run), none or a kdrobust run "
          f"directory, got {attack!r}.") from None
  return check_file(path, dataset, data_dir)


# ----------------------------------------------------------------------------
# 2. The diagnostic.
# ----------------------------------------------------------------------------
def subset_stats(teacher_fn, x, y, *, eps: float | None = None, attack_fn=None,
                 steps: int = DEFAULT_STEPS, seed: int = 0, batch_size: int = 256,
                 adversarial: bool = True) -> dict[str, Any]:
  """Teacher means on one subset: ``{'n', 'clean': {...}, 'pgd': {...}}``.

  Each block: ``entropy`` (mean nats), ``accuracy``, ``true_class_prob``.
  ``pgd`` (when ``adversarial`` and ``eps``) evaluates the teacher on PGD
  examples crafted on ``attack_fn`` (default: the teacher itself).
  """
  from kdrobust.evaluation import runner  # pylint: disable=g-import-not-at-top
  n = int(x.shape[0])
  out: dict[str, Any] = {"n": n}
  if n == 0:
    out["clean"] = None
    out["pgd"] = None
    return out
  t_fn = runner.as_partial(teacher_fn)
  a_fn = t_fn if attack_fn is None else runner.as_partial(attack_fn)

  def means(kernel):
    sums = {"entropy": 0.0, "correct": 0.0, "true_prob": 0.0}
    for i, xb, yb, nv in runner.padded_batches(x, y, batch_size):
      s = jax.device_get(kernel(i, jnp.asarray(xb), jnp.asarray(yb)))
      for k in sums:
        sums[k] += float(np.asarray(s[k], np.float64)[:nv].sum())
    return {"entropy": sums["entropy"] / n, "accuracy": sums["correct"] / n,
            "true_class_prob": sums["true_prob"] / n}

  out["clean"] = means(lambda i, xb, yb: _stats(t_fn, xb, yb))
  if adversarial and eps is not None:
    base = jax.random.fold_in(jax.random.PRNGKey(seed), _SALT_DIAGNOSE)
    e = jnp.float32(eps)
    out["pgd"] = means(lambda i, xb, yb: _stats(
        t_fn, _pgd_adv(a_fn, xb, yb, e, jax.random.fold_in(base, i), steps=steps), yb))
  else:
    out["pgd"] = None
  return out


def diagnose(teacher_fn, unlearnable: str | dict, *, dataset: str,
             data_dir: str | None = None, attack: str = "teacher", attack_fn=None,
             attack_source: str | None = None, teacher_source: str = "",
             num_examples: int = 0, seed: int = 0, batch_size: int = 256,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
  """The teacher's entropy, accuracy and true-class probability on ``S_U`` and ``S_L``.

  ``unlearnable``: a sets file (or its loaded record) for ``dataset``.
  ``attack``: ``'teacher'`` (PGD on the teacher, default), ``'none'`` (clean
  only) or a reference-student run directory; ``attack_fn`` overrides the
  attacked function (e.g. the evaluated run), described by ``attack_source``.
  The attack is the file's protocol (PGD-``steps`` at its eps, step eps/4,
  uniform start, CE, last iterate). ``num_examples > 0`` keeps the first N
  indices of each set. Returns a JSON-ready dict.
  """
  check_attack(attack)
  if num_examples < 0:
    raise TeacherEntropyError(f"num_examples must be >= 0, got {num_examples}.")
  if isinstance(unlearnable, dict):
    rec, path = unlearnable, unlearnable.get("path", "")
  else:
    rec, path = check_file(unlearnable, dataset, data_dir), os.path.abspath(unlearnable)
  say = log or (lambda s: None)
  if attack not in ATTACK_CHOICES and attack_fn is None:
    from kdrobust import evaluate  # pylint: disable=g-import-not-at-top
    from kdrobust.evaluation import runner  # pylint: disable=g-import-not-at-top
    module, variables, _, step = evaluate.load_run(attack, "best")
    attack_fn = runner.flax_logits_fn(module, variables)
    attack_source = f"student:run:{os.path.abspath(attack)}@{step}"
  attacked = ("none" if attack == "none" else attack_source if attack_fn is not None
              else "teacher")
  u = list(rec["unlearnable_indices"])
  l = list(rec["learnable_indices"])
  if num_examples:
    u, l = u[:num_examples], l[:num_examples]
  xs, ys, sha = train_subset(dataset, sorted(set(u) | set(l)), data_dir=data_dir)
  if rec.get("labels_sha256") and rec["labels_sha256"] != sha:
    raise TeacherEntropyError(f"{path or 'the sets file'} was made for another version or "
                              f"order of {dataset}'s training split (label fingerprint "
                              "differs).")
  pos = {int(i): j for j, i in enumerate(sorted(set(u) | set(l)))}
  proto = rec["protocol"]
  say(f"Teacher entropy on S_U ({len(u)}) and S_L ({len(l)}) of {dataset}'s training split; "
      f"PGD-{proto['steps']} on {attacked}.")
  out = {"unlearnable_file": path, "teacher": teacher_source, "dataset": dataset,
         "split": rec.get("split", "train"), "entropy_unit": "nats",
         "definition": "mean_i H(softmax(T(x_i))) on clean and on PGD inputs (UNCONFIRMED "
                       "which the paper uses; see kdrobust.teacher_entropy)",
         "attack": {"attacked": attacked, "protocol": f"PGD-{proto['steps']}, eps "
                    f"{proto['eps_str']}, step eps/4, uniform start, CE, last iterate, "
                    "inference mode", "eps": proto["eps"], "steps": proto["steps"],
                    "seed": seed},
         "num_examples": num_examples or None,
         "reference_runs": len(rec.get("runs", [])), "sets_sizes": {
             "unlearnable": rec["unlearnable_count"], "learnable": rec["learnable_count"]}}
  for name, idx in (("unlearnable", u), ("learnable", l)):
    j = np.asarray([pos[int(i)] for i in idx], np.int64)
    out[name] = subset_stats(teacher_fn, xs[j], ys[j], eps=proto["eps"], attack_fn=attack_fn,
                             steps=int(proto["steps"]), seed=seed, batch_size=batch_size,
                             adversarial=attack != "none")
  return out


def check_config(te_cfg, dataset: str, data_dir: str | None, *, num_teachers: int) -> None:
  """Pre-compute checks of ``config.teacher_entropy`` (called by ``train.validate``)."""
  if not te_cfg.get("unlearnable"):
    return
  if not num_teachers:
    raise TeacherEntropyError("config.teacher_entropy.unlearnable is set but the run has no "
                              "teacher: set config.teachers or clear it.")
  try:
    check_attack(te_cfg.get("attack", "teacher"))
  except TeacherEntropyError as e:
    raise TeacherEntropyError(f"config.teacher_entropy.{e}") from None
  n = te_cfg.get("num_examples", 0)
  if not isinstance(n, int) or isinstance(n, bool) or n < 0:
    raise TeacherEntropyError(f"config.teacher_entropy.num_examples must be an integer >= 0 "
                              f"(0 = every index), got {n!r}.")
  check_file(te_cfg.unlearnable, dataset, data_dir)


def check_teachers(teachers, te_cfg, *, dataset: str, data_dir: str | None, workdir: str,
                   seed: int = 0, batch_size: int = 256, writer=None) -> dict[str, Any]:
  """The start-of-run check: :func:`diagnose` for every teacher (``kdrobust.train``).

  ``teachers``: :class:`kdrobust.teachers.Teacher` objects. Prints one line
  per teacher, logs the scalars as split ``teacher_entropy/<name>`` of
  ``metrics.jsonl`` (``writer``) and writes ``<workdir>/teacher_entropy.json``
  (process 0). Runs on one device of each process.
  """
  from kdrobust import fileio  # pylint: disable=g-import-not-at-top
  from kdrobust.evaluation import runner  # pylint: disable=g-import-not-at-top
  rec = dict(check_file(te_cfg.unlearnable, dataset, data_dir),
             path=os.path.abspath(te_cfg.unlearnable))
  out = {}
  for t in teachers:
    res = diagnose(runner.flax_logits_fn(t.module, t.variables), rec, dataset=dataset,
                   data_dir=data_dir, attack=te_cfg.get("attack", "teacher"),
                   teacher_source=t.source, num_examples=int(te_cfg.get("num_examples", 0)),
                   seed=seed, batch_size=batch_size)
    out[t.name] = res
    print(summary_line(res, who=f"Teacher {t.name}"), flush=True)
    if writer is not None:
      writer.write(0, f"teacher_entropy/{t.name}", flat(res))
  if jax.process_index() == 0:
    fileio.write_json(os.path.join(workdir, "teacher_entropy.json"), out)
  return out


def flat(result: dict[str, Any]) -> dict[str, float]:
  """``{'unlearnable/clean_entropy': ..., ...}``: the scalars of :func:`diagnose` (for metrics)."""
  out = {}
  for name in ("unlearnable", "learnable"):
    out[f"{name}/n"] = result[name]["n"]
    for variant in ("clean", "pgd"):
      block = result[name].get(variant)
      for k, v in (block or {}).items():
        out[f"{name}/{variant}_{k}"] = v
  return out


def summary_line(result: dict[str, Any], who: str = "Teacher") -> str:
  """One line: entropies on S_U (clean / pgd) and the S_L contrast."""
  def fmt(name):
    r = result[name]
    if not r["n"]:
      return f"{name} empty"
    s = f"{name} (n={r['n']}): H clean {r['clean']['entropy']:.4f}"
    if r.get("pgd"):
      s += f", H pgd {r['pgd']['entropy']:.4f}"
    return s + f", acc {r['clean']['accuracy']:.4f}, p_y {r['clean']['true_class_prob']:.4f}"
  return (f"{who} entropy (nats; PGD on {result['attack']['attacked']}): "
          f"{fmt('unlearnable')}; {fmt('learnable')}")


# ----------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------
def make_parser() -> argparse.ArgumentParser:
  """The CLI: ``identify --runs DIR,DIR,... --out FILE``."""
  from kdrobust import cli  # pylint: disable=g-import-not-at-top
  p = cli.ArgumentParser(
      prog="python -m kdrobust.teacher_entropy",
      description="The robustly unlearnable set (Why Robust Teachers Fail) of reference "
      "students; a teacher's entropy on it is reported by kdrobust.evaluate --teacher T "
      "--unlearnable FILE.")
  sub = p.add_subparsers(dest="cmd", required=True)
  i = sub.add_parser("identify", help="Build S_U/S_L from reference runs (PGD-10, train split).")
  i.add_argument("--runs", required=True, help="Comma-separated kdrobust run directories.")
  i.add_argument("--out", required=True, help="The JSON file to write.")
  i.add_argument("--dataset", default=None, help="Check the runs train on this dataset.")
  i.add_argument("--eps", default=None, help="e.g. 8/255 (default: the runs' config.eval.eps).")
  i.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="PGD steps (default 10).")
  i.add_argument("--checkpoint", default="best", help="best (default), latest or a step.")
  i.add_argument("--seed", type=int, default=0)
  i.add_argument("--batch_size", type=int, default=256)
  i.add_argument("--data_dir", default=None)
  i.add_argument("--overwrite", action="store_true")
  i.add_argument("--no_progress", action="store_true")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  """Run the CLI (exit 0; 2 with one ``error:`` line for a bad input; :mod:`kdrobust.cli`)."""
  from kdrobust import cli  # pylint: disable=g-import-not-at-top
  return cli.run(_main, argv)


def _main(argv: Sequence[str]) -> int:
  args = make_parser().parse_args(argv)
  rec = identify([r.strip() for r in args.runs.split(",")], args.out, dataset=args.dataset,
                 eps=args.eps, steps=args.steps, checkpoint=args.checkpoint, seed=args.seed,
                 batch_size=args.batch_size, data_dir=args.data_dir,
                 overwrite=args.overwrite, progress=not args.no_progress,
                 log=lambda s: print(s, file=sys.stderr, flush=True))
  print(f"{rec['dataset']}: S_U {rec['unlearnable_count']}, S_L {rec['learnable_count']} "
        f"of {rec['num_samples']} ({rec['num_models']} models); wrote {args.out}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())

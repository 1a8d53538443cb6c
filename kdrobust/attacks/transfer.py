"""Transfer (black-box) evaluation: craft on a source model, score on targets.

:func:`transfer_attack` crafts adversarial examples on ``source_logits_fn``
and reports each target model's accuracy on them.

:func:`transferability_matrix` follows DARHT's protocol
(``LoadModels/RunAttacks.py`` of bayesomicslab/DARHT, docs/fidelity.md, DARHT): for
each source model ``i``, take the points it classifies correctly, craft APGD-CE
examples on it (DARHT: ``eps = 0.031``, initial step ``0.005``, 40 iterations,
no random start, returning the highest-loss iterate), and report every model
``j``'s accuracy on them:

    M[i, j] = mean_{k : f_i(x_k) = y_k} [ argmax f_j(x'_{i,k}) = y_k ]

High ``M[i, j]`` (``i != j``) = low transferability from ``i`` to ``j``. The
diagonal is the white-box accuracy of each source on its own examples.
DARHT's own APGD re-implementation differs in details (its checkpoints are
``ceil(p_j N)``, no restart from the best point, ``>=`` for the best loss);
here the attack is this package's faithful APGD with those three arguments
(``n_iter``, initial ``step_size``, ``random_init=False``). DARHT also
subsamples 1000 class-balanced points; pass such a subset as ``x, y``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import numpy as np

from kdrobust.attacks import projected
from kdrobust.attacks.apgd import apgd_rounds, predict


@dataclasses.dataclass(frozen=True)
class TransferResult:
  """``x_adv`` (crafted on the source, for the attacked points), the source's
  own accuracy on them, and each target's accuracy and per-example correctness."""
  x_adv: np.ndarray
  source_accuracy: float
  target_accuracy: dict
  target_correct: dict


@dataclasses.dataclass(frozen=True)
class TransferMatrix:
  """``matrix[i, j]``: accuracy of ``names[j]`` on examples crafted on ``names[i]``
  from the ``n_points[i]`` points ``names[i]`` classifies correctly."""
  names: tuple[str, ...]
  matrix: np.ndarray
  n_points: tuple[int, ...]

  def as_table(self) -> str:
    """A plain-text table (rows = source, columns = target, percent)."""
    labels = [f"{s} (n={n})" for s, n in zip(self.names, self.n_points)]
    head = "source \\ target"
    lw = max(len(head), *(len(l) for l in labels)) + 2
    cw = max(6, *(len(n) for n in self.names)) + 2
    rows = [head.ljust(lw) + "".join(n.rjust(cw) for n in self.names)]
    for label, row in zip(labels, np.asarray(self.matrix)):
      rows.append(label.ljust(lw) + "".join(
          ("-" if not np.isfinite(v) else f"{100 * v:.1f}").rjust(cw) for v in row))
    return "\n".join(rows)


def _named(fns) -> dict[str, Callable]:
  if isinstance(fns, Mapping):
    return dict(fns)
  if callable(fns):
    return {"target_0": fns}
  return {f"target_{i}": f for i, f in enumerate(fns)}


def craft(source_logits_fn, x, y, *, attack: str | Callable = "apgd-ce", eps=0.031,
          step_size=None, n_iter: int = 40, key=0, random_init: bool = False,
          select: str = "loss", batch_size: int | None = None, **kwargs) -> np.ndarray:
  """Adversarial examples on the source model (numpy).

  ``attack``: ``'apgd-ce'`` / ``'apgd-dlr'`` (this package's APGD with
  ``n_iter`` iterations, initial step ``step_size`` (``2 eps`` if ``None``),
  ``select='loss'`` for the highest-loss iterate or ``'adv'`` for the
  misclassified one), ``'pgd'`` (``steps=n_iter``, ``step_size``), ``'fgsm'``,
  or any callable ``(logits_fn, x, y, key) -> x_adv``.
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  if callable(attack):
    return np.asarray(attack(source_logits_fn, x, y, key))
  if attack in ("apgd-ce", "apgd-dlr"):
    x_adv, _, _ = apgd_rounds(source_logits_fn, x, y, key, eps=eps,
                              loss=attack[5:], n_iter=n_iter, step_size=step_size,
                              random_init=random_init, select=select,
                              batch_size=batch_size, **kwargs)
    return x_adv
  if attack == "pgd":
    out = []
    bs = batch_size or 250
    for s in range(0, x.shape[0], bs):
      out.append(np.asarray(projected.pgd(
          source_logits_fn, x[s:s + bs], y[s:s + bs], key, eps=eps,
          step_size=step_size if step_size is not None else eps / 4, steps=n_iter,
          init="uniform" if random_init else "none", **kwargs)))
    return np.concatenate(out, 0)
  if attack == "fgsm":
    return np.asarray(projected.fgsm(source_logits_fn, x, y, eps=eps, **kwargs))
  raise ValueError(f"Unknown transfer attack {attack!r}.")


def transfer_attack(source_logits_fn, target_logits_fns, x, y, *,
                    attack: str | Callable = "apgd-ce", eps=0.031, step_size=0.005,
                    n_iter: int = 40, key=0, only_correct: bool = True,
                    batch_size: int | None = None, **kwargs) -> TransferResult:
  """Craft on the source, score on every target.

  ``target_logits_fns``: a dict name -> fn, a sequence, or one fn. With
  ``only_correct`` (default) only the points the source classifies correctly
  are attacked and scored (DARHT's protocol); ``x_adv`` then holds those.
  """
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  if only_correct:
    keep = predict(source_logits_fn, x, batch_size=batch_size) == y
    x, y = x[keep], y[keep]
  if x.shape[0] == 0:
    return TransferResult(x, float("nan"), {k: float("nan") for k in _named(target_logits_fns)}, {})
  x_adv = craft(source_logits_fn, x, y, attack=attack, eps=eps, step_size=step_size,
                n_iter=n_iter, key=key, batch_size=batch_size, **kwargs)
  src_acc = float(np.mean(predict(source_logits_fn, x_adv, batch_size=batch_size) == y))
  correct = {name: predict(f, x_adv, batch_size=batch_size) == y
             for name, f in _named(target_logits_fns).items()}
  return TransferResult(x_adv, src_acc, {k: float(v.mean()) for k, v in correct.items()},
                        correct)


def transferability_matrix(logits_fns: Mapping[str, Callable], x, y, *, eps=0.031,
                           step_size=0.005, n_iter: int = 40,
                           attack: str | Callable = "apgd-ce", key=0,
                           batch_size: int | None = None, **kwargs) -> TransferMatrix:
  """DARHT's transferability matrix over a set of models (see the module docstring)."""
  names = tuple(logits_fns)
  mat = np.full((len(names), len(names)), np.nan)
  counts = []
  for i, src in enumerate(names):
    res = transfer_attack(logits_fns[src], logits_fns, x, y, attack=attack, eps=eps,
                          step_size=step_size, n_iter=n_iter, key=key,
                          batch_size=batch_size, **kwargs)
    counts.append(int(res.x_adv.shape[0]))
    for j, tgt in enumerate(names):
      mat[i, j] = res.target_accuracy[tgt]
  return TransferMatrix(names, mat, tuple(counts))


__all__ = ["transfer_attack", "transferability_matrix", "craft", "TransferResult",
           "TransferMatrix"]


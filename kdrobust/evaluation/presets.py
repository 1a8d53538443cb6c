"""Named evaluation presets, ``--attacks`` and ``--eps`` parsing, epsilon labels.

The defaults follow the papers' code (docs/evaluation.md, Presets), so kdrobust's columns compare with the papers' tables; step
sizes are fractions of epsilon so an epsilon sweep keeps their proportions
(2/255 at 8/255). ``iterate`` is what :func:`kdrobust.attacks.projected.pgd`
returns (its ``select``): the ``last`` iterate as the papers do, the
``first`` misclassified one (a per-example early stop, the IGDM lab's
CW-inf), or a misclassified iterate if ``any`` was (kdrobust's stronger
``*_best`` variants):

==========  =====  ==========  ============  =================  ========  =======
name        steps  step size   random start  loss               restarts  iterate
==========  =====  ==========  ============  =================  ========  =======
fgsm        1      eps         none          CE                 1         last
pgd20       20     eps / 4     U[-eps, eps]  CE                 1         last
pgd20_best  20     eps / 4     U[-eps, eps]  CE                 1         any
cw          50     eps / 4     U[-eps, eps]  CW margin          10        first
cw_best     50     eps / 4     U[-eps, eps]  CW margin          10        any
cw30        30     eps / 4     U[-eps, eps]  CW margin, k = 50  1         last
==========  =====  ==========  ============  =================  ========  =======

* ``pgd20``: IGDM's ``attack_pgd`` [C:IGDM@a22ed64:ICLR_IGDM/rslad_loss.py:9-24]
  and the SAAD lab's ``PGD(..., alpha=2/255, steps=20)``
  [C:saad@295121c:igdm.py:110-112]: 20 steps of 2/255 from a clipped uniform
  start, the last iterate.
* ``cw``: the IGDM lab's ``cw_Linf_attack`` [C:saad@295121c:attacks.py:101-135]
  (docs/evaluation.md, Presets): the plain margin ``max_{j != y} z_j - z_y``, 50
  steps of 2/255, 10 restarts from a clipped uniform start; an example stops
  moving once misclassified, and each example keeps the restart whose final
  point has the largest cross-entropy (ties: the later restart), misclassified
  or not.
* ``cw30``: the IAD/FAT (and DARHT) CW-inf, 30 steps of eps/4 on
  ``-max(z_y - max_{j != y} z_j + 50, 0)``, the last iterate
  [C:IAD@a8091a8:attack_generator.py:5-50].
* ``*_best``: the same budget, a point counts as broken if any iterate of any
  restart misclassified it (docs/evaluation.md): never weaker than the preset
  without ``_best``, and not comparable with the papers' tables.

``clean`` is the unattacked accuracy and ``aa`` AutoAttack
(:mod:`kdrobust.attacks.autoattack`, version ``standard|plus|rand``) with its
own batch size (:data:`AA_BATCH_SIZE`).
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from typing import Any

ALL_ATTACKS = ("clean", "fgsm", "pgd20", "pgd20_best", "cw", "cw_best", "cw30", "aa")
DEFAULT_ATTACKS = ("clean", "fgsm", "pgd20", "cw", "aa")
AA_VERSIONS = ("standard", "plus", "rand")
# AutoAttack's batch size: the reference's run_standard_evaluation(bs=250)
# [fra31/auto-attack@a392200:autoattack/autoattack.py]. RobustBench's
# benchmark() passes batch_size=32 [C:robustbench@78fcc9e:robustbench/eval.py:32].
# Only Square depends on it (its draws are shared by a batch, docs/evaluation.md).
AA_BATCH_SIZE = 250
ROBUSTBENCH_AA_BATCH_SIZE = 32
NORMS = {"linf": "Linf", "l2": "L2"}
_ALIASES = {"pgd": "pgd20", "pgd-20": "pgd20", "pgd_20": "pgd20",
            "pgd_best": "pgd20_best", "pgd20-best": "pgd20_best", "pgd-20-best": "pgd20_best",
            "cwinf": "cw", "cw-inf": "cw", "cw_inf": "cw", "cw-best": "cw_best",
            "cw-30": "cw30", "cw_30": "cw30", "autoattack": "aa",
            "natural": "clean", "nat": "clean"}
ITERATES = {"last": "the last iterate",
            "first": "the first misclassified iterate (each example stops once misclassified)",
            "any": "misclassified at any iterate of any restart"}


@dataclasses.dataclass(frozen=True)
class Preset:
  """A projected-gradient preset (hashable: it is a static jit argument).

  ``select`` is :func:`kdrobust.attacks.projected.pgd`'s (``'last'``,
  ``'first'`` or ``'any'``), recorded as ``iterate``.
  """
  name: str
  steps: int
  step_fraction: float
  init: str
  loss: str
  restarts: int = 1
  kappa: float | None = None
  select: str = "last"
  source: str = ""

  def describe(self) -> dict[str, Any]:
    """The preset spelled out for the JSON file and the docs."""
    loss = {"ce": "CE", "cw": "CW margin max_{j!=y} z_j - z_y"}.get(self.loss, self.loss)
    if self.kappa is not None:
      loss = f"CW -max(z_y - max_(j!=y) z_j + kappa, 0), kappa {self.kappa:g}"
    restarts = self.restarts
    keep = None
    if restarts > 1:
      keep = ("the first restart that breaks the point, else the largest final loss"
              if self.select == "any" else
              "per example, the restart whose returned point has the largest CE")
    return {"steps": self.steps, "step_size": f"{self.step_fraction:g} * eps",
            "random_start": {"none": "none", "uniform": "U[-eps, eps], clipped to [0, 1]"
                             }.get(self.init, self.init),
            "loss": loss, "restarts": restarts, "restart_choice": keep,
            "iterate": self.select if self.steps > 1 else "last",
            "success": ITERATES[self.select] if self.steps > 1 else "one step",
            "source": self.source}


_IGDM_PGD = ("IGDM attack_pgd [C:IGDM@a22ed64:ICLR_IGDM/rslad_loss.py:9-24]; "
             "SAAD PGD [C:saad@295121c:attacks.py:40-67]")
_IGDM_CW = "IGDM lab cw_Linf_attack [C:saad@295121c:attacks.py:101-135]"
PRESETS: dict[str, Preset] = {
    "fgsm": Preset("fgsm", steps=1, step_fraction=1.0, init="none", loss="ce",
                   source="SAAD FGSM [C:saad@295121c:attacks.py:8-37]"),
    "pgd20": Preset("pgd20", steps=20, step_fraction=0.25, init="uniform", loss="ce",
                    select="last", source=_IGDM_PGD),
    "pgd20_best": Preset("pgd20_best", steps=20, step_fraction=0.25, init="uniform",
                         loss="ce", select="any", source="kdrobust (any iterate)"),
    "cw": Preset("cw", steps=50, step_fraction=0.25, init="uniform", loss="cw", restarts=10,
                 select="first", source=_IGDM_CW),
    "cw_best": Preset("cw_best", steps=50, step_fraction=0.25, init="uniform", loss="cw",
                      restarts=10, select="any", source="kdrobust (any iterate)"),
    "cw30": Preset("cw30", steps=30, step_fraction=0.25, init="uniform", loss="cw", kappa=50.0,
                   select="last",
                   source="IAD/FAT PGD(loss_fn='cw') [C:IAD@a8091a8:attack_generator.py:5-50]"),
}


def parse_attacks(spec: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
  """``'clean,pgd20,aa'`` (or a list) -> canonical names in the standard order.

  ``clean`` is always included (every other figure is read against it).
  """
  if spec is None:
    return DEFAULT_ATTACKS
  parts = spec.split(",") if isinstance(spec, str) else list(spec)
  names = set()
  for p in parts:
    p = p.strip().lower()
    if not p:
      continue
    p = _ALIASES.get(p, p)
    if p not in ALL_ATTACKS:
      raise ValueError(f"Unknown attack {p!r}; valid: {', '.join(ALL_ATTACKS)} "
                       "(aliases: pgd, pgd_best, cwinf, autoattack).")
    names.add(p)
  names.add("clean")
  return tuple(a for a in ALL_ATTACKS if a in names)


def canonical_norm(norm: str) -> str:
  """``'Linf'``/``'linf'``/``'inf'`` -> ``'linf'``; ``'L2'``/``'2'`` -> ``'l2'``."""
  n = str(norm).lower().replace("_", "")
  if n in ("linf", "inf"):
    return "linf"
  if n in ("l2", "2"):
    return "l2"
  raise ValueError(f"Unknown norm {norm!r}; valid: Linf, L2.")


def parse_eps(spec: str | float | list | tuple) -> list[tuple[float, str]]:
  """``'2/255,4/255,8/255'`` or ``0.031`` -> ``[(value, label), ...]``, in the given order.

  Fractions are exact (``8/255`` is ``float(Fraction(8, 255))``); labels keep
  the user's spelling (``'8/255'``, ``'0.031'``). Duplicates and
  non-positive values are refused.
  """
  if isinstance(spec, (int, float)):
    items = [spec]
  elif isinstance(spec, str):
    items = [s for s in spec.split(",") if s.strip()]
  else:
    items = list(spec)
  out: list[tuple[float, str]] = []
  for item in items:
    if isinstance(item, (int, float)):
      value, label = float(item), eps_label(float(item))
    else:
      text = item.strip()
      try:
        value = float(fractions.Fraction(text))
      except (ValueError, ZeroDivisionError) as e:
        raise ValueError(f"Bad epsilon {text!r}: write a number (0.031) or a fraction "
                         "(8/255).") from e
      label = text
    if not math.isfinite(value) or value <= 0:
      raise ValueError(f"Epsilon must be positive and finite, got {item!r}.")
    if any(abs(value - v) < 1e-12 for v, _ in out):
      raise ValueError(f"Epsilon {item!r} is listed twice.")
    out.append((value, label))
  if not out:
    raise ValueError("No epsilon given.")
  return out


def eps_label(eps: float) -> str:
  """A readable label: ``'8/255'`` when ``eps * 255`` is (nearly) an integer, else ``'0.031'``."""
  k = eps * 255.0
  if abs(k - round(k)) < 1e-6 and round(k) > 0:
    return f"{int(round(k))}/255"
  return f"{eps:.10g}"


def eps_slug(label: str) -> str:
  """A label made safe for a file name: ``'8/255'`` -> ``'8-255'``."""
  return label.replace("/", "-").replace(" ", "")


def robustbench_percent(acc: float | None) -> str | None:
  """RobustBench's JSON style: a percentage with two decimals, as a string."""
  return None if acc is None else f"{100.0 * acc:.2f}"

"""Named evaluation presets, ``--attacks`` and ``--eps`` parsing, epsilon labels.

The presets follow the code of the distillation papers (attacks.md section 8);
step sizes are fractions of epsilon so an epsilon sweep keeps their
proportions (2/255 at 8/255):

========  =====  ===========  =============  ====================  ========
name      steps  step size    random start   loss                  restarts
========  =====  ===========  =============  ====================  ========
fgsm      1      eps          none           CE                    1
pgd20     20     eps / 4      U[-eps, eps]   CE                    1
cw        30     eps / 4      U[-eps, eps]   CW margin, kappa 50   1
========  =====  ===========  =============  ====================  ========

``clean`` is the unattacked accuracy and ``aa`` AutoAttack
(:mod:`kdrobust.attacks.autoattack`, version ``standard|plus|rand``).
"""

from __future__ import annotations

import dataclasses
import fractions
import math
from typing import Any

ALL_ATTACKS = ("clean", "fgsm", "pgd20", "cw", "aa")
DEFAULT_ATTACKS = ALL_ATTACKS
AA_VERSIONS = ("standard", "plus", "rand")
NORMS = {"linf": "Linf", "l2": "L2"}
_ALIASES = {"pgd": "pgd20", "pgd-20": "pgd20", "pgd_20": "pgd20", "cw30": "cw",
            "cwinf": "cw", "cw-inf": "cw", "cw_inf": "cw", "autoattack": "aa",
            "natural": "clean", "nat": "clean"}


@dataclasses.dataclass(frozen=True)
class Preset:
  """A projected-gradient preset (hashable: it is a static jit argument)."""
  name: str
  steps: int
  step_fraction: float
  init: str
  loss: str
  restarts: int = 1
  kappa: float | None = None

  def describe(self) -> dict[str, Any]:
    """The preset spelled out for the JSON file and the docs."""
    return {"steps": self.steps, "step_size": f"{self.step_fraction:g} * eps",
            "random_start": {"none": "none", "uniform": "U[-eps, eps], clipped to [0, 1]"
                             }.get(self.init, self.init),
            "loss": self.loss + (f" (kappa {self.kappa:g})" if self.kappa is not None else ""),
            "restarts": self.restarts,
            "success": "misclassified at any iterate" if self.steps > 1 else "one step"}


PRESETS: dict[str, Preset] = {
    "fgsm": Preset("fgsm", steps=1, step_fraction=1.0, init="none", loss="ce"),
    "pgd20": Preset("pgd20", steps=20, step_fraction=0.25, init="uniform", loss="ce"),
    "cw": Preset("cw", steps=30, step_fraction=0.25, init="uniform", loss="cw", kappa=50.0),
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
                       "(aliases: pgd, autoattack, cwinf).")
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

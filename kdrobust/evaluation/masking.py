"""Gradient-masking signs (docs/evaluation.md, Gradient-masking warnings, RobustBench validity), as a pure function.

:func:`check_warnings` reads a results dict (the one
:func:`kdrobust.evaluation.runner.evaluate_arrays` returns, or the saved
JSON) and returns a list of ``{'code', 'message', 'eps'}``. It computes
nothing on a model, so tests can feed it constructed dicts. Codes:

========================  =====================================================
aa_above_pgd              AutoAttack robust accuracy above PGD-20 (> 0.2 pp)
pgd_far_above_aa          PGD-20 more than 4 pp above AutoAttack (CE saturation)
acc_rises_with_eps        an attack's accuracy rises with epsilon (> 0.1 pp)
square_after_whitebox     Square lowered AA's accuracy after the white-box stages
                          by > 0.2 pp (the reference's ``check_square_sr``)
transfer_stronger         transfer examples from another model beat PGD-20
                          (> 0.2 pp)
loss_unchanged_by_noise   CE changes by < 1e-6 under U[-eps, eps] noise for more
                          than half of the clean-correct points
zero_input_gradients      clean-correct points with an exactly zero input
                          gradient
aa_reeval_mismatch        re-forwarding AutoAttack's x_adv disagrees with its
                          robust flags (randomness or train-mode batch norm, P2)
aa_zero_gradient          AutoAttack's check: zero DLR gradients at the APGD start
aa_randomized             AutoAttack's check: repeated forwards differ
aa_probability_output     AutoAttack's check: outputs look like probabilities
aa_num_classes            AutoAttack's check: too few classes for (targeted) DLR
autoattack                any other message raised by AutoAttack itself
========================  =====================================================
"""

from __future__ import annotations

from typing import Any

AA_PGD_TOLERANCE = 0.002  # 0.2 pp
PGD_AA_GAP = 0.04  # 4 pp (docs/evaluation.md, Gradient-masking warnings: PGD-20 >> AA)
EPS_TOLERANCE = 0.001  # 0.1 pp
SQUARE_TOLERANCE = 0.002  # 0.2 pp, as check_square_sr
TRANSFER_TOLERANCE = 0.002  # 0.2 pp
NOISE_FRACTION = 0.5


def _warning(code: str, message: str, eps: str | None = None) -> dict[str, Any]:
  return {"code": code, "message": message, "eps": eps}


def _pp(a: float) -> str:
  return f"{100.0 * a:.2f}%"


def check_warnings(results: dict[str, Any]) -> list[dict[str, Any]]:
  """Every gradient-masking sign found in ``results`` (see the module docstring)."""
  out: list[dict[str, Any]] = []
  per_eps = results.get("per_eps", [])
  for entry in per_eps:
    out += _aa_vs_pgd(entry)
    out += _square_after_whitebox(entry)
    out += _transfer(entry)
    out += _sanity(entry)
    out += _aa_internal(entry)
  out += _rises_with_eps(per_eps)
  return out


def _aa_vs_pgd(entry: dict[str, Any]) -> list[dict[str, Any]]:
  """AA above PGD-20 (a weaker cascade: suspicious) or far below it (CE masking)."""
  acc, label = entry.get("accuracy", {}), entry.get("eps_str")
  if "aa" not in acc or "pgd20" not in acc:
    return []
  aa, pgd = acc["aa"], acc["pgd20"]
  if aa > pgd + AA_PGD_TOLERANCE:
    return [_warning("aa_above_pgd",
                     f"AutoAttack robust accuracy {_pp(aa)} is above PGD-20's {_pp(pgd)} at "
                     f"eps {label}: AutoAttack should be the stronger attack; check the "
                     "model's determinism and inference mode.", label)]
  if pgd - aa > PGD_AA_GAP:
    return [_warning("pgd_far_above_aa",
                     f"PGD-20 robust accuracy {_pp(pgd)} is {100 * (pgd - aa):.1f} pp above "
                     f"AutoAttack's {_pp(aa)} at eps {label}: the CE loss may be saturated "
                     "(gradient masking); report AutoAttack, not PGD.", label)]
  return []


def _square_after_whitebox(entry: dict[str, Any]) -> list[dict[str, Any]]:
  """The reference's ``check_square_sr``: Square beats the white-box stages before it."""
  stages = (entry.get("autoattack") or {}).get("stages", [])
  label = entry.get("eps_str")
  for i, st in enumerate(stages):
    if "square" not in st["attack"].lower() or i == 0:
      continue
    before = min(s["robust_acc"] for s in stages[:i])
    if before - st["robust_acc"] > SQUARE_TOLERANCE:
      return [_warning("square_after_whitebox",
                       f"Square (black-box) lowered AutoAttack's robust accuracy from "
                       f"{_pp(before)} to {_pp(st['robust_acc'])} after the white-box "
                       f"attacks at eps {label}: a sign of gradient masking.", label)]
  return []


def _transfer(entry: dict[str, Any]) -> list[dict[str, Any]]:
  """Transfer examples from another model stronger than white-box PGD-20."""
  acc, label = entry.get("accuracy", {}), entry.get("eps_str")
  if "transfer" not in acc or "pgd20" not in acc:
    return []
  if acc["transfer"] < acc["pgd20"] - TRANSFER_TOLERANCE:
    return [_warning("transfer_stronger",
                     f"Transfer examples crafted on another model leave {_pp(acc['transfer'])}"
                     f" accuracy, below white-box PGD-20's {_pp(acc['pgd20'])} at eps "
                     f"{label}: this model's gradients are uninformative.", label)]
  return []


def _sanity(entry: dict[str, Any]) -> list[dict[str, Any]]:
  """Flat loss under random noise; exactly zero input gradients."""
  s, label = entry.get("sanity"), entry.get("eps_str")
  if not s or not s.get("num_clean_correct"):
    return []
  out = []
  if s["loss_unchanged_fraction"] > NOISE_FRACTION:
    out.append(_warning(
        "loss_unchanged_by_noise",
        f"The CE loss changes by less than {s.get('tolerance', 1e-6):g} under random "
        f"{s.get('noise', 'U[-eps, eps]')} noise for {s['loss_unchanged']} of "
        f"{s['num_clean_correct']} clean-correct points at eps {label}: a flat or saturated "
        "loss hides adversarial directions from gradient attacks.", label))
  if s.get("zero_grad", 0) > 0:
    out.append(_warning(
        "zero_input_gradients",
        f"{s['zero_grad']} of {s['num_clean_correct']} clean-correct points have an exactly "
        f"zero input gradient of the CE loss at eps {label}: gradient attacks cannot move "
        "them (RobustBench requires non-zero input gradients).", label))
  return out


def _aa_internal(entry: dict[str, Any]) -> list[dict[str, Any]]:
  """AutoAttack's own warnings and a re-evaluation that disagrees with its flags."""
  aa, label = entry.get("autoattack"), entry.get("eps_str")
  if not aa:
    return []
  out = []
  for w in aa.get("warnings", []):
    code = _aa_code(str(w))
    if code is not None:
      out.append(_warning(code, f"AutoAttack at eps {label}: {w}", label))
  if aa.get("reeval_mismatch"):
    out.append(_warning(
        "aa_reeval_mismatch",
        f"Re-evaluating AutoAttack's adversarial examples disagrees with its robust flags "
        f"on {aa['reeval_mismatch']} points at eps {label}: the model is not deterministic "
        "or not in inference mode.", label))
  return out


def _aa_code(message: str) -> str | None:
  """A code for one of AutoAttack's own messages (None: already covered here)."""
  m = message.lower()
  if "square attack has decreased" in m:
    return None  # square_after_whitebox reports it from the stage figures
  if "zero gradient" in m:
    return "aa_zero_gradient"
  if "randomized" in m:
    return "aa_randomized"
  if "probability" in m:
    return "aa_probability_output"
  if "classes" in m:
    return "aa_num_classes"
  return "autoattack"


def _rises_with_eps(per_eps: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Any attack whose robust accuracy rises with epsilon."""
  if len(per_eps) < 2:
    return []
  ordered = sorted(per_eps, key=lambda e: e["eps"])
  names = sorted({k for e in ordered for k in e.get("accuracy", {}) if k != "clean"} |
                 ({"worst_case"} if all("worst_case" in e for e in ordered) else set()))
  out = []
  for name in names:
    pts = [(e["eps_str"], _acc(e, name)) for e in ordered]
    pts = [(lab, a) for lab, a in pts if a is not None]
    for (l0, a0), (l1, a1) in zip(pts, pts[1:]):
      if a1 > a0 + EPS_TOLERANCE:
        out.append(_warning(
            "acc_rises_with_eps",
            f"{name} accuracy rises with epsilon: {_pp(a0)} at eps {l0} but {_pp(a1)} at "
            f"eps {l1}; a stronger threat model cannot leave more points robust (gradient "
            "masking or a too-weak attack).", l1))
        break
  return out


def _acc(entry: dict[str, Any], name: str) -> float | None:
  if name == "worst_case":
    return entry.get("worst_case")
  return entry.get("accuracy", {}).get(name)

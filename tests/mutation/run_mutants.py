"""Mutation testing of ``kdrobust/attacks/``: plant one realistic bug at a time, show a test fails.

Each mutant is a small textual patch (``old`` -> ``new``) of one file of the
package. The script never touches the working tree: for every mutant it copies
``kdrobust/``, ``tests/`` and ``pytest.ini`` into a fresh temporary directory,
checks that ``old`` occurs exactly once in the target file (a mutant that no
longer applies is reported as ``not-applied``, never silently skipped),
applies the patch, and runs the mutant's test selection there
(``python -m pytest -x`` with the copy as working directory and first on
``PYTHONPATH``, so the mutated package is the one imported; the baseline
run checks this). A mutant is

* ``killed``: a selected test failed (the first failing test is reported);
* ``survived``: every selected test passed;
* ``error``: pytest could not run the selection (collection error, bad node
  id: exit status 2-5);
* ``timeout``: the run exceeded ``--timeout`` seconds;
* ``not-applied``: ``old`` is not in the file exactly once.

Before the mutants, a baseline runs the union of the selections on an
unmutated copy: it must pass, otherwise a "kill" would mean nothing.

Usage (from the repository root, in the project's virtual environment)::

  python tests/mutation/run_mutants.py                 # baseline + every mutant
  python tests/mutation/run_mutants.py --list          # the mutants and their tests
  python tests/mutation/run_mutants.py --only apgd-checkpoint-off-by-one,square-p-schedule
  python tests/mutation/run_mutants.py --json /tmp/m.json --extra tests/attacks_properties_test.py

Exit status 0 iff the baseline passed and every selected mutant was killed.
``--extra`` appends test files or node ids to every selection (e.g. the
production-randomness property tests); with ``--replace`` the ``--extra``
tests *replace* every selection (which mutants does one test file kill on
its own?); ``--no-baseline`` skips the baseline.
The mutants and the tests that kill them are listed in ``docs/evaluation.md``
("Mutation testing").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
APGD = "kdrobust/attacks/apgd.py"
FAB = "kdrobust/attacks/fab.py"
SQUARE = "kdrobust/attacks/square.py"
AA = "kdrobust/attacks/autoattack.py"
LOSSES = "kdrobust/losses.py"  # APGD's DLR losses live here

T_APGD = "tests/attacks_apgd_test.py"
T_FAB = "tests/attacks_fab_test.py"
T_SQ = "tests/attacks_square_test.py"
T_AA = "tests/attacks_autoattack_test.py"
T_KILL = "tests/attacks_mutation_killers_test.py"


@dataclasses.dataclass(frozen=True)
class Mutant:
  """One planted bug: replace ``old`` (must occur exactly once) by ``new`` in ``path``."""
  name: str
  path: str
  old: str
  new: str
  breaks: str
  tests: tuple[str, ...]  # the selection, in order (pytest -x stops at the first failure)


MUTANTS: tuple[Mutant, ...] = (
    # ---------------- APGD / APGD-T: schedules ----------------
    Mutant(
        "apgd-checkpoint-off-by-one", APGD,
        "      k = max(k - decr, k_min)\n      counter = 0\n",
        "      k = max(k - decr, k_min)\n      counter = 1\n",
        "APGD checkpoints p_j: after the first check the counter restarts at 1, "
        "so every later checkpoint comes one iteration early",
        (f"{T_APGD}::test_derived_integers_and_checkpoints",)),
    Mutant(
        "apgd-halving-condition", APGD,
        "red = chk & (osc | no_impr)",
        "red = chk & (osc & no_impr)",
        "APGD step-size halving needs both conditions (oscillation AND no "
        "improvement) instead of either",
        (f"{T_APGD}::test_apgd_matches_reference_float64",)),
    Mutant(
        "apgd-momentum-off-by-one", APGD,
        "a = jnp.where(i > 0, 0.75, 1.0)",
        "a = jnp.where(i > 1, 0.75, 1.0)",
        "APGD momentum 0.75 starts at iteration 2 instead of 1",
        (f"{T_APGD}::test_apgd_matches_reference_float64",)),
    Mutant(
        "apgd-t-target-rank", APGD,
        "ranked_targets(clean, 2 + round_idx // n_restarts)",
        "ranked_targets(clean, 2 + round_idx % n_restarts)",
        "APGD-T's target schedule: every round targets the runner-up class "
        "(rank 2) instead of ranks 2 .. n_target_classes + 1",
        (f"{T_KILL}::test_apgd_t_rounds_target_ranks_two_to_ten",
         f"{T_APGD}::test_apgd_targeted_matches_reference_float64")),
    # ---------------- APGD: randomness ----------------
    Mutant(
        "apgd-start-not-random", APGD,
        "  key = bulk_key(key)\n",  # random_start's only line of this text
        "  key = bulk_key(jax.random.PRNGKey(0))\n",
        "APGD's random start ignores its key: every restart, round, chunk and "
        "seed starts from the same noise",
        (f"{T_KILL}::test_apgd_random_starts",)),
    Mutant(
        "rounds-key-reused", APGD,
        "jnp.asarray(r, jnp.int32), derive_key(key, r, c))",
        "jnp.asarray(r, jnp.int32), derive_key(key, 0, c))",
        "run_rounds reuses round 0's key in every restart/round (APGD, APGD-T, "
        "FAB): a restart repeats the first one's random start",
        (f"{T_KILL}::test_apgd_random_starts",)),
    Mutant(
        "eot-key-reused", APGD,
        "g, (z, li) = grad_fn(x_adv, jax.random.fold_in(key, e))",
        "g, (z, li) = grad_fn(x_adv, key)",
        "EoT (version 'rand') averages eot_iter copies of one draw of the "
        "randomized model instead of eot_iter independent draws",
        (f"{T_KILL}::test_eot_averages_independent_draws",)),
    # ---------------- APGD: losses, steps, bookkeeping ----------------
    Mutant(
        "apgd-ce-loss-sign", APGD,
        "return lambda z, y, t: losses.xent(z, y)",
        "return lambda z, y, t: -losses.xent(z, y)",
        "APGD-CE minimises the cross-entropy (wrong loss sign)",
        (f"{T_APGD}::test_apgd_matches_reference_float64",)),
    Mutant(
        "dlr-denominator", LOSSES,
        "return -(z_y - z_other) / (top[:, 0] - top[:, 2] + 1e-12)",
        "return -(z_y - z_other) / (top[:, 0] - top[:, 1] + 1e-12)",
        "DLR's denominator uses z_pi1 - z_pi2 instead of z_pi1 - z_pi3 "
        "(APGD-DLR)",
        (f"{T_APGD}::test_apgd_matches_reference_float64",)),
    Mutant(
        "apgd-best-adv-inverted", APGD,
        "x_best_adv = jnp.where(bcast(~pred, x), x_new, s[\"x_best_adv\"])",
        "x_best_adv = jnp.where(bcast(pred, x), x_new, s[\"x_best_adv\"])",
        "APGD keeps the most recent *correctly classified* iterate as its "
        "adversarial example",
        (f"{T_APGD}::test_apgd_matches_reference_float64",)),
    Mutant(
        "apgd-l2-projection-to-sphere", APGD,
        "return jnp.clip(x + normalize(d, \"l2\") * jnp.minimum(eps, bcast(l2_norm(d), d)),",
        "return jnp.clip(x + normalize(d, \"l2\") * eps,",
        "APGD's L2 projection rescales every step onto the eps-sphere instead "
        "of into the ball",
        (f"{T_APGD}::test_apgd_matches_reference_float64",)),
    Mutant(
        "apgd-no-box-clip", APGD,
        "return jnp.clip(jnp.minimum(jnp.maximum(v, x - eps), x + eps), 0.0, 1.0)",
        "return jnp.minimum(jnp.maximum(v, x - eps), x + eps)",
        "APGD's L-inf projection forgets the clip to [0, 1]",
        (f"{T_APGD}::test_apgd_and_apgd_t_stay_in_ball_and_box_and_are_deterministic",)),
    Mutant(
        "apgd-device-loop-skips-first-step", APGD,
        "jax.lax.fori_loop(0, tables.n_iter, body, s)",
        "jax.lax.fori_loop(1, tables.n_iter, body, s)",
        "the fused device loop (the default on GPU) skips iteration 0: it no "
        "longer equals the host loop",
        (f"{T_APGD}::test_host_and_device_loops_agree",)),
    # ---------------- Round bookkeeping (APGD, APGD-T, FAB) ----------------
    Mutant(
        "rounds-attack-nothing", APGD,
        "idx = np.flatnonzero(active & ~fooled)",
        "idx = np.flatnonzero(active & fooled)",
        "run_rounds attacks zero points (the mask selects the already fooled "
        "ones): APGD, APGD-T and FAB silently do nothing",
        (f"{T_APGD}::test_apgd_and_apgd_t_stay_in_ball_and_box_and_are_deterministic",)),
    Mutant(
        "rounds-wrong-indices", APGD,
        "hit = sel[succ]",
        "hit = np.flatnonzero(succ)",
        "run_rounds writes a chunk's results to the chunk-local row numbers "
        "instead of the points' own indices",
        (f"{T_KILL}::test_rounds_write_results_to_their_own_points",)),
    # ---------------- FAB / FAB-T ----------------
    Mutant(
        "fab-t-target-rank", FAB,
        "return x_start, 2 + round_idx // n_restarts",
        "return x_start, 1 + round_idx // n_restarts",
        "FAB-T's target ranks are off by one: 1 .. 9 (rank 1 is the true "
        "class) instead of 2 .. 10",
        (f"{T_FAB}::test_fab_matches_reference_float32",
         f"{T_KILL}::test_fab_rounds_targets_and_starts")),
    Mutant(
        "fab-random-start-at-restart-0", FAB,
        "x_start = jnp.where(restart > 0, fab_random_start(key, x, eps, norm), x)",
        "x_start = jnp.where(restart >= 0, fab_random_start(key, x, eps, norm), x)",
        "FAB starts its first restart (and FAB-T every target) from a random "
        "point instead of the clean one",
        (f"{T_FAB}::test_fab_matches_reference_float32",)),
    Mutant(
        "fab-random-start-radius", FAB,
        "return jnp.clip(x + r * t / bcast(lp_norm(t, norm), x) * 0.5, 0.0, 1.0)",
        "return jnp.clip(x + r * t / bcast(lp_norm(t, norm), x), 0.0, 1.0)",
        "FAB's restarts start at radius eps instead of eps/2",
        (f"{T_KILL}::test_fab_rounds_targets_and_starts",)),
    Mutant(
        "fab-l2-projection", FAB,
        "d_4 = -(c / w5[:, 0])[:, None] * w",
        "d_4 = -(c / jnp.sqrt(w5[:, 0]))[:, None] * w",
        "FAB's L2 hyperplane projection divides by ||w|| instead of ||w||^2 "
        "(the unconstrained case)",
        (f"{T_FAB}::test_projections_match_reference",
         f"{T_KILL}::test_fab_projections_on_interior_points")),
    Mutant(
        "fab-alpha-max-dropped", FAB,
        "alpha = jnp.minimum(jnp.maximum(a1 / (a1 + a2), 0.0), alpha_max)",
        "alpha = jnp.maximum(a1 / (a1 + a2), 0.0)",
        "FAB's biased step forgets alpha_max",
        (f"{T_FAB}::test_fab_matches_reference_float32",
         f"{T_KILL}::test_fab_from_a_random_start_matches_the_reference")),
    # ---------------- Square ----------------
    Mutant(
        "square-p-schedule", SQUARE,
        "j = sum(1 for bnd in bounds if it > bnd)",
        "j = sum(1 for bnd in bounds if it >= bnd)",
        "Square's window-size schedule halves p one iteration early at every "
        "bracket (10, 50, 200, ...)",
        (f"{T_SQ}::test_side_schedule_matches_the_cifar_table",)),
    Mutant(
        "square-no-ball-projection", SQUARE,
        "x_new = jnp.clip(jnp.minimum(jnp.maximum(x_best + new, x - eps), x + eps), 0.0, 1.0)",
        "x_new = jnp.clip(x_best + new, 0.0, 1.0)",
        "Square L-inf forgets the projection onto the eps-ball",
        (f"{T_SQ}::test_square_properties",)),
    Mutant(
        "square-accept-sign", SQUARE,
        "improved = active & (m_new < loss)",
        "improved = active & (m_new > loss)",
        "Square accepts candidates that raise the margin (wrong sign of the "
        "loss comparison)",
        (f"{T_SQ}::test_square_matches_reference_with_injected_draws",)),
    Mutant(
        "square-key-reused", SQUARE,
        "k0 = jax.random.fold_in(bulk_key(self.key), it)",
        "k0 = jax.random.fold_in(bulk_key(self.key), 0)",
        "Square draws the same window and signs at every iteration "
        "(production KeySource): after the first query it stops searching",
        (f"{T_KILL}::test_square_keeps_searching",)),
    # ---------------- AutoAttack cascade ----------------
    Mutant(
        "autoattack-denominator", AA,
        "robust_accuracy=float(robust.mean()), stage_accuracy=stage_acc,",
        "robust_accuracy=float(robust.sum() / max(round(clean_acc * n), 1)),"
        " stage_accuracy=stage_acc,",
        "AutoAttack divides by the clean-correct count instead of N",
        (f"{T_AA}::test_cascade_bookkeeping_with_scripted_stages",)),
    Mutant(
        "autoattack-robust-mask-inverted", AA,
        "xa_stage, zero = _run_stage(name, fn, x, y, robust, skey, cfg, norm_l,",
        "xa_stage, zero = _run_stage(name, fn, x, y, ~robust, skey, cfg, norm_l,",
        "each AutoAttack stage attacks the points already broken instead of "
        "the robust ones",
        (f"{T_AA}::test_cascade_bookkeeping_with_scripted_stages",)),
    Mutant(
        "autoattack-stage-from-adv", AA,
        "xa_stage, zero = _run_stage(name, fn, x, y, robust, skey, cfg, norm_l,",
        "xa_stage, zero = _run_stage(name, fn, x_adv, y, robust, skey, cfg, norm_l,",
        "each AutoAttack stage starts from the previous stages' x_adv instead "
        "of the clean points",
        (f"{T_AA}::test_cascade_bookkeeping_with_scripted_stages",)),
)


class NotApplied(Exception):
  pass


def mutate_text(text: str, m: Mutant) -> str:
  """``text`` with ``m.old`` replaced by ``m.new``; ``old`` must occur exactly once."""
  count = text.count(m.old)
  if count != 1:
    raise NotApplied(f"{m.name}: the original text occurs {count} times in {m.path} "
                     "(expected exactly once): update the mutant")
  return text.replace(m.old, m.new)


def check_all_apply(repo: str = REPO) -> list[str]:
  """Problems of the mutant table against ``repo`` (empty when all apply)."""
  problems = []
  names = [m.name for m in MUTANTS]
  if len(set(names)) != len(names):
    problems.append("duplicate mutant names")
  for m in MUTANTS:
    try:
      with open(os.path.join(repo, m.path)) as f:
        src = mutate_text(f.read(), m)
      compile(src, m.path, "exec")
    except (NotApplied, OSError, SyntaxError) as e:
      problems.append(str(e))
  return problems


def make_copy(dest: str, repo: str = REPO) -> None:
  """Copy the package, the tests and the pytest config (no caches) into ``dest``."""
  ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
  for d in ("kdrobust", "tests"):
    shutil.copytree(os.path.join(repo, d), os.path.join(dest, d), ignore=ignore)
  shutil.copy2(os.path.join(repo, "pytest.ini"), dest)


def _env(root: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
  env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
  env["PYTHONDONTWRITEBYTECODE"] = "1"
  return env


_FAILED = re.compile(r"^(FAILED|ERROR) (\S+)", re.M)


def run_selection(root: str, tests: list[str], timeout: float) -> dict:
  """Run ``pytest -x`` on ``tests`` inside the copy ``root``."""
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider",
         "-p", "no:randomly", *tests]
  t0 = time.perf_counter()
  try:
    p = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True,
                       timeout=timeout)
  except subprocess.TimeoutExpired:
    return dict(rc=None, seconds=time.perf_counter() - t0, failed=[], tail="timeout")
  out = p.stdout + p.stderr
  failed = [f"{kind} {node}" for kind, node in _FAILED.findall(out)]
  return dict(rc=p.returncode, seconds=time.perf_counter() - t0, failed=failed,
              tail=out[-3000:])


def imported_from(root: str) -> str:
  """Where ``kdrobust.attacks`` is imported from in the copy's environment."""
  code = "import kdrobust.attacks.apgd as m; print(m.__file__)"
  p = subprocess.run([sys.executable, "-c", code], cwd=root, env=_env(root),
                     capture_output=True, text=True, timeout=300)
  return p.stdout.strip() or p.stderr[-500:]


def classify(res: dict) -> str:
  if res["rc"] is None:
    return "timeout"
  if res["rc"] == 0:
    return "survived"
  if res["rc"] == 1 and res["failed"]:
    return "killed"
  return "error"


def _log(*args):
  print(*args, flush=True)


def run(mutants, *, extra=(), baseline=True, timeout=900.0, keep=False, log=_log) -> dict:
  """Baseline (optional), then each mutant on a fresh copy. Returns a JSON-able report."""
  report = dict(baseline=None, mutants=[])
  base_tmp = tempfile.mkdtemp(prefix="kdrobust_mutants_")
  try:
    if baseline:
      root = os.path.join(base_tmp, "baseline")
      make_copy(root)
      where = imported_from(root)
      sel = list(dict.fromkeys([t for m in mutants for t in m.tests] + list(extra)))
      res = run_selection(root, sel, timeout)
      ok = res["rc"] == 0 and where.startswith(root)
      report["baseline"] = dict(passed=ok, imported_from=where, seconds=res["seconds"],
                                tests=sel, failed=res["failed"],
                                tail=None if ok else res["tail"])
      log(f"baseline: {'passed' if ok else 'FAILED'} in {res['seconds']:.1f} s "
          f"({len(sel)} selections; kdrobust imported from the copy: "
          f"{where.startswith(root)})")
      if not ok:
        log(res["tail"])
    for m in mutants:
      root = os.path.join(base_tmp, m.name)
      make_copy(root)
      target = os.path.join(root, m.path)
      entry = dict(name=m.name, path=m.path, breaks=m.breaks, tests=list(m.tests))
      try:
        with open(target) as f:
          src = mutate_text(f.read(), m)
      except NotApplied as e:
        entry.update(status="not-applied", detail=str(e), seconds=0.0, killed_by=None)
      else:
        with open(target, "w") as f:
          f.write(src)
        res = run_selection(root, list(m.tests) + list(extra), timeout)
        status = classify(res)
        entry.update(status=status, seconds=round(res["seconds"], 1),
                     killed_by=res["failed"][0] if status == "killed" else None,
                     detail=None if status == "killed" else res["tail"])
      report["mutants"].append(entry)
      log(f"{entry['status']:>11}  {m.name:<36} {entry['seconds']:6.1f} s  "
          f"{entry['killed_by'] or ''}")
      if entry["status"] not in ("killed",) and entry.get("detail"):
        log(entry["detail"][-1500:])
      if not keep:
        shutil.rmtree(root, ignore_errors=True)
  finally:
    if keep:
      log(f"copies kept in {base_tmp}")
    else:
      shutil.rmtree(base_tmp, ignore_errors=True)
  report["all_killed"] = all(e["status"] == "killed" for e in report["mutants"])
  report["ok"] = report["all_killed"] and (report["baseline"] is None
                                           or report["baseline"]["passed"])
  return report


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--only", default="", help="comma-separated mutant names")
  ap.add_argument("--list", action="store_true", help="list the mutants and exit")
  ap.add_argument("--extra", action="append", default=[],
                  help="test file or node id appended to every selection (repeatable)")
  ap.add_argument("--replace", action="store_true",
                  help="run only the --extra tests, instead of each mutant's own selection")
  ap.add_argument("--no-baseline", action="store_true")
  ap.add_argument("--timeout", type=float, default=900.0, help="seconds per pytest run")
  ap.add_argument("--keep", action="store_true", help="keep the temporary copies")
  ap.add_argument("--json", default=None, help="write the report here")
  args = ap.parse_args(argv)
  by_name = {m.name: m for m in MUTANTS}
  if args.only:
    names = [s for s in args.only.split(",") if s]
    bad = [s for s in names if s not in by_name]
    if bad:
      ap.error(f"unknown mutants {bad}; valid: {sorted(by_name)}")
    mutants = [by_name[s] for s in names]
  else:
    mutants = list(MUTANTS)
  if args.list:
    for m in mutants:
      print(f"{m.name:<36} {m.path:<30} {m.breaks}\n{'':<36} killers: {', '.join(m.tests)}")
    return 0
  t0 = time.perf_counter()
  if args.replace:
    if not args.extra:
      ap.error("--replace needs --extra")
    mutants = [dataclasses.replace(m, tests=tuple(args.extra)) for m in mutants]
    args.extra = []
  report = run(mutants, extra=args.extra, baseline=not args.no_baseline,
               timeout=args.timeout, keep=args.keep)
  report["seconds"] = round(time.perf_counter() - t0, 1)
  n_killed = sum(e["status"] == "killed" for e in report["mutants"])
  print(f"{n_killed}/{len(report['mutants'])} mutants killed in {report['seconds']:.0f} s"
        + ("" if report["baseline"] is None
           else f"; baseline {'passed' if report['baseline']['passed'] else 'FAILED'}"))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)
  return 0 if report["ok"] else 1


if __name__ == "__main__":
  sys.exit(main())

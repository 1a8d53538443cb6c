"""The whole story on real digits, on any CPU, in a few minutes:

    python -m kdrobust.quickstart --workdir runs/quickstart

1. train a robust teacher (``configs/quickstart.py``: a small CNN, PGD-AT),
   or reuse it if ``<workdir>/teacher`` already holds the finished run;
2. distil a smaller student with AdaAD + IGDM
   (``configs/quickstart_distill.py``: a CNN with 4x fewer parameters);
3. evaluate both with PGD-20 and AutoAttack (standard: APGD-CE, APGD-T,
   FAB-T, Square) on the first 200 digits test images (``--num_examples 0``
   for all 360);
4. print teacher and student side by side (``<workdir>/summary.json``).

Each stage is an ordinary kdrobust run, so the same command after a crash,
kill -9 or preemption resumes where it stopped.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Sequence

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config(path: str, arg: str | None = None):
  """``get_config(arg)`` of a config file (what ``--config path:arg`` does)."""
  spec = importlib.util.spec_from_file_location("kdrobust_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)  # type: ignore[union-attr]
  return mod.get_config(arg)


def _finished(workdir: str, config) -> bool:
  """``results.json`` of this config exists and its final checkpoint is not corrupt.

  A corrupt final checkpoint sends the stage back to training, which falls
  back to the newest intact checkpoint and writes the final one again.
  """
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return False
  from kdrobust import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from kdrobust import config_lib  # pylint: disable=g-import-not-at-top
  from kdrobust import fileio  # pylint: disable=g-import-not-at-top
  results = fileio.read_json(path)
  if config_lib.config_differences(results["config"], config.to_dict()):
    return False
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), enable_async=False)
  try:
    status, reason = ck.check(results["step"]) if results["step"] in ck.all_steps() else (
        ckpt_lib.CORRUPT, "missing")
  finally:
    ck.close()
  if status == ckpt_lib.CORRUPT:
    print(f"== the final checkpoint (step {results['step']}) in {workdir} is corrupt "
          f"({reason}): training again to rewrite it", flush=True)
    return False
  return True


def _train(name: str, workdir: str, config) -> None:
  from kdrobust import train  # pylint: disable=g-import-not-at-top
  if _finished(workdir, config):
    print(f"== {name}: reusing the finished run in {workdir}", flush=True)
    return
  print(f"== {name}: training in {workdir}", flush=True)
  train.train_and_evaluate(config, workdir)


def _reusable_eval(workdir: str, request: str) -> dict | None:
  """The record of an earlier quickstart evaluation of the same request and checkpoint.

  ``request`` (eps, AutoAttack version, number of examples) is stored as the
  record's ``command``; the record must also be of the run's latest intact
  checkpoint. A missing or unreadable record means evaluating again.
  """
  from kdrobust import evaluate  # pylint: disable=g-import-not-at-top
  from kdrobust import fileio  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "eval", "quickstart.json")
  if not os.path.exists(path):
    return None
  try:
    rec = fileio.read_json(path)
    step, _ = evaluate.resolve_checkpoint(workdir, "latest")
    if rec.get("command") == request and rec["checkpoint"]["step"] == step:
      return rec
  except (ValueError, KeyError, TypeError, OSError):
    pass
  return None


def _num_params(workdir: str) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  from kdrobust import evaluate  # pylint: disable=g-import-not-at-top
  _, variables, _, _ = evaluate.load_run(workdir, "latest")
  return sum(int(x.size) for x in jax.tree.leaves(variables["params"]))


def _check_args(args) -> None:
  """Every flag, before any config is built or anything trains (one-line errors)."""
  import math  # pylint: disable=g-import-not-at-top
  from kdrobust import cli  # pylint: disable=g-import-not-at-top
  from kdrobust import train  # pylint: disable=g-import-not-at-top
  from kdrobust.evaluation import presets  # pylint: disable=g-import-not-at-top
  if args.epochs < 1:
    raise cli.UserError(f"--epochs must be >= 1, got {args.epochs}", "Pass e.g. --epochs 15")
  if not (math.isfinite(args.eps) and 0 < args.eps <= 1):
    raise cli.UserError(f"--eps must be in (0, 1] (L-inf radius in [0,1] pixel space), "
                        f"got {args.eps}", "Pass e.g. --eps 0.1")
  if args.num_examples < 0:
    raise cli.UserError(f"--num_examples must be >= 0 (0 = all 360), got {args.num_examples}",
                        "Pass e.g. --num_examples 200")
  if args.aa_version not in presets.AA_VERSIONS:
    raise cli.UserError(f"Unknown --aa_version {args.aa_version!r}",
                        f"Valid: {', '.join(presets.AA_VERSIONS)}")
  train.check_workdir_path(args.workdir)


def _check_stages(configs) -> None:
  """Both stages' configs and workdirs, before any training: no --overwrite here."""
  from kdrobust import cli  # pylint: disable=g-import-not-at-top
  from kdrobust import config_lib  # pylint: disable=g-import-not-at-top
  from kdrobust import fileio  # pylint: disable=g-import-not-at-top
  from kdrobust import train  # pylint: disable=g-import-not-at-top
  for workdir, config in configs:
    train.check_ranges(config)
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
      diff = config_lib.config_differences(fileio.read_json(path), config.to_dict())
      if diff:
        raise cli.UserError(
            f"{workdir} holds a run of a different config (differs in: {', '.join(diff[:10])})",
            "Pass another --workdir, or move that directory aside (the quickstart reuses or "
            "resumes a run of the same settings, and never replaces one)")


def main(argv: Sequence[str] | None = None) -> int:
  """The quickstart behind the error boundary (:mod:`kdrobust.cli`): bad flags exit 2."""
  from kdrobust import cli  # pylint: disable=g-import-not-at-top
  return cli.run(_main, argv)


def _main(argv: Sequence[str]) -> int:
  from kdrobust import cli  # pylint: disable=g-import-not-at-top
  p = cli.ArgumentParser(prog="python -m kdrobust.quickstart",
                         description=__doc__.split("\n\n")[0],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="runs/quickstart")
  p.add_argument("--epochs", type=int, default=15, help="epochs of each training run")
  p.add_argument("--eps", type=float, default=0.1, help="L-inf budget in [0,1] pixel space")
  p.add_argument("--aa_version", default="standard", help="AutoAttack version")
  p.add_argument("--num_examples", type=int, default=200,
                 help="first test points to evaluate with PGD-20 and AutoAttack (of 360; "
                 "0 = all); 200 keeps the quickstart under 5 minutes on 2 CPU cores")
  args = p.parse_args(argv)

  from kdrobust import evaluate  # pylint: disable=g-import-not-at-top
  from kdrobust import fileio  # pylint: disable=g-import-not-at-top
  teacher_dir = os.path.join(args.workdir, "teacher")
  student_dir = os.path.join(args.workdir, "student")
  _check_args(args)
  common = f"epochs={args.epochs},eps={args.eps}"
  teacher_config = load_config(os.path.join(CONFIGS, "quickstart.py"), common)
  student_config = load_config(os.path.join(CONFIGS, "quickstart_distill.py"),
                               f"{common},teacher={teacher_dir}")
  _check_stages(((teacher_dir, teacher_config), (student_dir, student_config)))
  _train("teacher (small_cnn, PGD-AT)", teacher_dir, teacher_config)
  _train("student (tiny_cnn, AdaAD + IGDM)", student_dir, student_config)

  rows = {}
  for name, workdir in (("teacher", teacher_dir), ("student", student_dir)):
    request = (f"python -m kdrobust.quickstart --eps {args.eps!r} --aa_version "
               f"{args.aa_version} --num_examples {args.num_examples} (checkpoint latest)")
    rec = _reusable_eval(workdir, request)
    if rec is not None:  # a finished rerun does not redo AutoAttack
      print(f"== {name}: reusing the finished evaluation in {workdir}/eval/quickstart.json",
            flush=True)
    else:
      print(f"== evaluating the {name} with PGD-20 and AutoAttack ({args.aa_version})",
            flush=True)
      rec = evaluate.evaluate_run(workdir, checkpoint="latest", eps=args.eps,
                                  attacks=("clean", "pgd20", "aa"), aa_version=args.aa_version,
                                  num_examples=args.num_examples or None, name="quickstart",
                                  overwrite=True, log=None, command=[request])
      fileio.fault_point("quickstart_eval")
    rows[name] = {"params": _num_params(workdir), "clean": rec["clean_acc"],
                  "pgd20": rec["robust_acc"]["pgd20"], "autoattack": rec["autoattack_acc"],
                  "num_examples": rec["num_examples"]}

  print(f"\nDigits test set (first {rows['teacher']['num_examples']} of 360 images), "
        f"L-inf eps = {args.eps}")
  print(f"{'model':<34}{'params':>9}{'clean':>9}{'PGD-20':>9}{'AutoAttack':>12}")
  labels = {"teacher": "teacher  small_cnn, PGD-AT", "student": "student  tiny_cnn, AdaAD+IGDM"}
  for name, r in rows.items():
    print(f"{labels[name]:<34}{r['params']:>9,}{r['clean']:>9.2%}{r['pgd20']:>9.2%}"
          f"{r['autoattack']:>12.2%}")
  fileio.write_json(os.path.join(args.workdir, "summary.json"),
                    {"eps": args.eps, "aa_version": args.aa_version, **rows})
  print(f"\nWrote {os.path.join(args.workdir, 'summary.json')}; metrics in */metrics.jsonl, "
        "evaluations in */eval/quickstart.json.")
  return 0


if __name__ == "__main__":
  sys.exit(main())

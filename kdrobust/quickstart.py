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
import json
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
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return False
  from kdrobust import config_lib  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    old = json.load(f)["config"]
  return not config_lib.config_differences(old, config.to_dict())


def _train(name: str, workdir: str, config) -> None:
  from kdrobust import train  # pylint: disable=g-import-not-at-top
  if _finished(workdir, config):
    print(f"== {name}: reusing the finished run in {workdir}", flush=True)
    return
  print(f"== {name}: training in {workdir}", flush=True)
  train.train_and_evaluate(config, workdir)


def _num_params(workdir: str) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  from kdrobust import evaluate  # pylint: disable=g-import-not-at-top
  _, variables, _, _ = evaluate.load_run(workdir, "latest")
  return sum(int(x.size) for x in jax.tree.leaves(variables["params"]))


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
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
  teacher_dir = os.path.join(args.workdir, "teacher")
  student_dir = os.path.join(args.workdir, "student")
  common = f"epochs={args.epochs},eps={args.eps}"
  _train("teacher (small_cnn, PGD-AT)", teacher_dir,
         load_config(os.path.join(CONFIGS, "quickstart.py"), common))
  _train("student (tiny_cnn, AdaAD + IGDM)", student_dir,
         load_config(os.path.join(CONFIGS, "quickstart_distill.py"),
                     f"{common},teacher={teacher_dir}"))

  rows = {}
  for name, workdir in (("teacher", teacher_dir), ("student", student_dir)):
    print(f"== evaluating the {name} with PGD-20 and AutoAttack ({args.aa_version})", flush=True)
    rec = evaluate.evaluate_run(workdir, checkpoint="latest", eps=args.eps,
                                attacks=("clean", "pgd20", "aa"), aa_version=args.aa_version,
                                num_examples=args.num_examples or None, name="quickstart",
                                overwrite=True, log=None)
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
  with open(os.path.join(args.workdir, "summary.json"), "w") as f:
    json.dump({"eps": args.eps, "aa_version": args.aa_version, **rows}, f, indent=2)
  print(f"\nWrote {os.path.join(args.workdir, 'summary.json')}; metrics in */metrics.jsonl, "
        "evaluations in */eval/quickstart.json.")
  return 0


if __name__ == "__main__":
  sys.exit(main())

"""Results campaign: one robust teacher distilled by every method, evaluated.

    python launch/results_campaign.py --dataset digits --seeds 0,1,2 --root runs/digits
    python launch/results_campaign.py --dataset subset --seeds 0 --root runs/subset \
        --aa_examples 500 --data_dir data
    python launch/results_campaign.py --report --roots runs/digits,runs/subset

The defaults are the repository's ``runs/digits`` (``--root``), ``data``
(``--data_dir``, where ``python -m kdrobust.data.prepare cifar10 --source
cifar-10-python-subset.tar.gz --data_dir data`` puts the subset; docs/data.md)
and ``runs/digits,runs/subset`` (``--roots``).

Resumable: a run whose ``results.json`` exists is not trained again, an
evaluation whose ``eval/<name>.json`` exists is not run again (the row is
rebuilt from it). For each (method, seed): train with
``kdrobust.train.train_and_evaluate`` (config loaded like
``kdrobust/quickstart.py``'s ``load_config``, then ``config.seed = seed``),
evaluate the final (``latest``) checkpoint with clean, PGD-20 and AutoAttack
(standard) at the run's eps, and append one JSON line to
``<root>/results.jsonl``. The teacher is evaluated at the checkpoint the
students read (``best``). ``--report`` rewrites the tables between the
``<!-- BEGIN/END ... -->`` markers of ``docs/results.md``.

``--diagnostics`` adds, for every finished student and reference run of a
root, IGDM's teacher-student input-gradient distance and cosine (against the
root's teacher, best checkpoint) and KDIGA's local linearity at the run's eps
on the same test points (``eval/campaign_diag.json``); ``--report`` then also
writes the ``<!-- BEGIN/END <dataset> diagnostics -->`` table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")

# Reference students (no teacher), then the distillation methods (name -> (method, igdm)).
REFERENCE = ("natural", "pgd_at", "trades")
DISTILL = {
    "kd": ("kd", 0), "ard": ("ard", 0), "iad": ("iad", 0), "rslad": ("rslad", 0),
    "mtard": ("mtard", 0), "kdiga": ("kdiga", 0), "kdiga_ard": ("kdiga_ard", 0),
    "adaad": ("adaad", 0), "adaiad": ("adaiad", 0), "darht": ("darht", 0),
    "adaad_igdm": ("adaad", 5), "rslad_igdm": ("rslad", 5), "ard_igdm": ("ard", 5),
    # Issue 12 (docs/fidelity.md): the methods published since, short-run settings of
    # paper_settings.SHORT_RUN.
    "saad": ("saad", 0), "absld": ("absld", 0), "b_mtard": ("b_mtard", 0),
    "cgard": ("cgard", 0), "fair_ard": ("fair_ard", 0), "fair_iad": ("fair_iad", 0),
    "fair_rslad": ("fair_rslad", 0), "fair_mtard": ("fair_mtard", 0),
    "peeraid": ("peeraid", 0),  # no teacher: a peer network trained with the student
}
# Extra settings: name -> (method, igdm, {method field: value}). With KDIGA's released
# default gamma = 0.5 (and its gamma / B^2 normalisation) the alignment term is about
# 0.001 on digits (metric `gradient_alignment`); its earlier commits used gamma up to 1000.
VARIANTS = {"kdiga_g100": ("kdiga", 0, {"gamma": 100.0}),
            "kdiga_g1000": ("kdiga", 0, {"gamma": 1000.0})}
DISTILL.update({k: v[:2] for k, v in VARIANTS.items()})
ALL_METHODS = list(REFERENCE) + list(DISTILL)
# Methods that read the natural teacher as their second one (teacher2=).
SECOND_TEACHER = ("mtard", "darht", "b_mtard", "fair_mtard")
# Distillation-style methods that train without a teacher (digits_distill's PEER_METHODS).
NO_TEACHER = ("peeraid",)
EVAL_NAME = "campaign"
DIAG_NAME = "campaign_diag"


def load_config(path: str, arg: str | None = None):
  from kdrobust.quickstart import load_config as _load  # pylint: disable=g-import-not-at-top
  return _load(path, arg)


# ----------------------------------------------------------------------------
# Run specifications: (key, workdir, config, description, equivalent CLI).
# ----------------------------------------------------------------------------
def teacher_spec(dataset: str, root: str, data_dir: str, natural: bool = False):
  name = "natural_teacher" if natural else "teacher"
  wd = os.path.join(root, name)
  if dataset == "digits":
    c = load_config(os.path.join(CONFIGS, "quickstart.py"))
    cli = f"python -m kdrobust.main --config configs/quickstart.py --workdir {wd}"
    desc = "quickstart.py (small_cnn, PGD-AT, 15 ep)"
    if natural:
      c = load_config(os.path.join(CONFIGS, "quickstart.py"), "method=natural")
      cli = (f"python -m kdrobust.main --config configs/quickstart.py:method=natural "
             f"--workdir {wd}")
      desc = "quickstart.py, method natural (small_cnn, 15 ep)"
  else:
    m = "natural" if natural else "pgd_at"
    arg = f"method={m},data_dir={data_dir}"
    c = load_config(os.path.join(CONFIGS, "cifar10_subset_pgd_at.py"), arg)
    cli = f"python -m kdrobust.main --config configs/cifar10_subset_pgd_at.py:{arg} --workdir {wd}"
    desc = f"cifar10_subset_pgd_at.py, {m} (small_cnn, 10 ep)"
  c.seed = 0
  return name, wd, c, desc, cli


def student_spec(dataset: str, root: str, data_dir: str, key: str, seed: int):
  wd = os.path.join(root, f"{key}_s{seed}")
  seed_flag = f" --config.seed={seed}" if seed else ""
  if key in REFERENCE:  # tiny_cnn trained without a teacher, same schedule as the students
    if dataset == "digits":
      arg = "epochs=10" + ("" if key == "pgd_at" else f",method={key}")
      c = load_config(os.path.join(CONFIGS, "quickstart.py"), arg)
      c.model.name = "tiny_cnn"
      flags = " --config.model.name=tiny_cnn"
      if key == "trades":  # TRADES' own gaussian start (beta: the method default, 6)
        c.method.attack.init = "gaussian"
        flags += " --config.method.attack.init=gaussian"
      cli = (f"python -m kdrobust.main --config configs/quickstart.py:{arg}{flags}"
             f"{seed_flag} --workdir {wd}")
      desc = f"quickstart.py:{arg}, tiny_cnn, {key}"
    else:
      arg = f"method={key},arch=tiny_cnn,data_dir={data_dir}"
      c = load_config(os.path.join(CONFIGS, "cifar10_subset_pgd_at.py"), arg)
      cli = (f"python -m kdrobust.main --config configs/cifar10_subset_pgd_at.py:{arg}"
             f"{seed_flag} --workdir {wd}")
      desc = f"cifar10_subset_pgd_at.py:{key}, tiny_cnn"
  else:
    method, igdm = DISTILL[key]
    arg = f"method={method}"
    if igdm:
      arg += f",igdm={igdm}"
    if method not in NO_TEACHER:
      arg += f",teacher={os.path.join(root, 'teacher')}"
    if method in SECOND_TEACHER:
      arg += f",teacher2={os.path.join(root, 'natural_teacher')}"
    cfg = "digits_distill.py" if dataset == "digits" else "subset_distill.py"
    if dataset != "digits":
      arg += f",data_dir={data_dir}"
    c = load_config(os.path.join(CONFIGS, cfg), arg)
    overrides = VARIANTS.get(key, (None, None, {}))[2]
    flags = "".join(f" --config.method.{k}={v}" for k, v in overrides.items())
    for k, v in overrides.items():
      c.method[k] = v
    cli = (f"python -m kdrobust.main --config configs/{cfg}:{arg}{flags}{seed_flag} "
           f"--workdir {wd}")
    desc = f"{cfg}:method={method}" + (f",igdm={igdm}" if igdm else "") + flags
  c.seed = seed
  return key, wd, c, desc, cli


# ----------------------------------------------------------------------------
# Train, evaluate, record.
# ----------------------------------------------------------------------------
def _append(root: str, row: dict) -> None:
  with open(os.path.join(root, "results.jsonl"), "a") as f:
    f.write(json.dumps(row) + "\n")


def _rows(root: str) -> list[dict]:
  path = os.path.join(root, "results.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


def _train_time(wd: str):
  p = os.path.join(wd, "campaign_time.json")
  if os.path.exists(p):
    with open(p) as f:
      return json.load(f).get("train_s")
  return None


def run_one(args, role, key, seed, wd, config, desc, cli, checkpoint="latest") -> dict:
  from kdrobust import evaluate  # pylint: disable=g-import-not-at-top
  from kdrobust import train  # pylint: disable=g-import-not-at-top
  row = {"dataset": args.dataset, "role": role, "method": key, "seed": seed, "workdir": wd,
         "config": desc, "command": cli, "model": config.model.name,
         "eps": float(config.eval.eps)}
  if not os.path.exists(os.path.join(wd, "results.json")):
    print(f"== [{time.strftime('%H:%M:%S')}] train {key} seed {seed} -> {wd}", flush=True)
    t0 = time.time()
    train.train_and_evaluate(config, wd)
    with open(os.path.join(wd, "campaign_time.json"), "w") as f:
      json.dump({"train_s": round(time.time() - t0, 1)}, f)
  row["train_s"] = _train_time(wd)
  name = f"{EVAL_NAME}_{checkpoint}"
  ev_path = os.path.join(wd, "eval", f"{name}.json")
  n = args.aa_examples or None
  if os.path.exists(ev_path):
    with open(ev_path) as f:
      rec = json.load(f)
  else:
    print(f"== [{time.strftime('%H:%M:%S')}] evaluate {key} seed {seed} ({checkpoint}, "
          f"{n or 'all'} test points)", flush=True)
    rec = evaluate.evaluate_run(wd, checkpoint=checkpoint, eps=float(config.eval.eps),
                                attacks=("clean", "pgd20", "aa"), num_examples=n,
                                name=name, overwrite=True, log=None)
    eval_cmd = (f"python -m kdrobust.evaluate --workdir {wd} --checkpoint {checkpoint} "
                f"--attacks clean,pgd20,aa" + (f" --num_examples {n}" if n else "")
                + f" --name {name}")
    row["eval_command"] = eval_cmd
  row.update({"status": "ok", "checkpoint": rec.get("checkpoint"),
              "num_examples": rec.get("num_examples"), "clean": rec["clean_acc"],
              "pgd20": rec["robust_acc"]["pgd20"], "aa": rec["autoattack_acc"],
              # Records written before the evaluation format 2 counted any iterate.
              "pgd20_iterate": rec.get("iterate", {}).get("pgd20", "any"),
              "eval_s": rec.get("time_s"),
              "warnings": [w.get("code") for w in rec.get("warnings", [])],
              "warning_messages": [w.get("message") for w in rec.get("warnings", [])]})
  row.setdefault("eval_command", (
      f"python -m kdrobust.evaluate --workdir {wd} --checkpoint {checkpoint} "
      f"--attacks clean,pgd20,aa" + (f" --num_examples {n}" if n else "") + f" --name {name}"))
  return row


def campaign(args) -> int:
  os.makedirs(args.root, exist_ok=True)
  done = {(r["method"], r["seed"]) for r in _rows(args.root) if r.get("status") == "ok"}
  failed = {(r["method"], r["seed"]) for r in _rows(args.root) if r.get("status") == "failed"}
  seeds = [int(s) for s in args.seeds.split(",")]
  methods = ALL_METHODS if args.methods == "all" else args.methods.split(",")
  unknown = set(methods) - set(ALL_METHODS)
  if unknown:
    raise SystemExit(f"unknown methods {sorted(unknown)}; valid: {ALL_METHODS}")
  jobs = [("teacher", *teacher_spec(args.dataset, args.root, args.data_dir), "best")]
  # Seed-major order: every method at the first seed before any second seed; the
  # natural (second) teacher just before the first method that reads it.
  for s in seeds:
    for m in methods:
      if DISTILL.get(m, ("",))[0] in SECOND_TEACHER and not any(
          j[1] == "natural_teacher" for j in jobs):
        jobs.append(("natural_teacher",
                     *teacher_spec(args.dataset, args.root, args.data_dir, natural=True),
                     "latest"))
      role = "reference" if m in REFERENCE else "student"
      jobs.append((role, *student_spec(args.dataset, args.root, args.data_dir, m, s), "latest"))
  if args.teacher_eval_last:  # the teacher is trained already: its (long) AutoAttack last
    jobs = jobs[1:] + jobs[:1]
  for role, key, wd, config, desc, cli, ckpt in jobs:
    seed = int(config.seed)
    if (key, seed) in done or (key, seed) in failed and not args.retry_failed:
      continue
    try:
      row = run_one(args, role, key, seed, wd, config, desc, cli, checkpoint=ckpt)
    except Exception as e:  # pylint: disable=broad-except
      tb = traceback.format_exc()
      os.makedirs(os.path.join(args.root, "failures"), exist_ok=True)
      with open(os.path.join(args.root, "failures", f"{key}_s{seed}.txt"), "w") as f:
        f.write(tb)
      first = (str(e).strip().splitlines() or [type(e).__name__])[0]
      row = {"dataset": args.dataset, "role": role, "method": key, "seed": seed,
             "workdir": wd, "config": desc, "command": cli, "status": "failed",
             "error": f"{type(e).__name__}: {first}"}
      print(f"!! {key} seed {seed} failed: {row['error']}\n{tb}", flush=True)
    _append(args.root, row)
    if row["status"] == "ok":
      print(f"== [{time.strftime('%H:%M:%S')}] {key} s{seed}: clean {row['clean']:.4f} "
            f"pgd20 {row['pgd20']:.4f} aa {row['aa']:.4f} (train {row['train_s']} s, "
            f"eval {row['eval_s']} s)", flush=True)
  return 0


def _latest_ok(rows: list[dict]) -> dict:
  """The last row per (method, seed) (a retried run replaces its failure)."""
  last = {}
  for r in rows:
    last[(r["method"], r["seed"])] = r
  return last


def diagnostics(args) -> int:
  """GD/GC against the root's teacher and local linearity for every finished run."""
  from kdrobust import evaluate  # pylint: disable=g-import-not-at-top
  teacher = os.path.join(args.root, "teacher")
  n = args.aa_examples or None
  for (key, seed), r in sorted(_latest_ok(_rows(args.root)).items()):
    if r.get("status") != "ok" or key in ("teacher", "natural_teacher"):
      continue
    path = os.path.join(r["workdir"], "eval", f"{DIAG_NAME}.json")
    if os.path.exists(path):
      continue
    print(f"== [{time.strftime('%H:%M:%S')}] diagnostics {key} seed {seed}", flush=True)
    evaluate.evaluate_run(r["workdir"], checkpoint="latest", eps=float(r["eps"]),
                          attacks=("clean",), num_examples=n, teacher=teacher,
                          local_linearity=True, name=DIAG_NAME, progress=False, log=None)
  return 0


def _diag_values(r: dict):
  path = os.path.join(r["workdir"], "eval", f"{DIAG_NAME}.json")
  if r.get("status") != "ok" or not os.path.exists(path):
    return None
  with open(path) as f:
    d = json.load(f)["diagnostics"]
  (ll,) = d["local_linearity"]["per_eps"].values()
  tg = d["teacher_gradients"]
  return {"gd": tg["gd"], "gc": tg["gc"], "ll": ll["mean"], "n": tg["num_examples"]}


def diagnostics_table(rows: list[dict]) -> str | None:
  """Markdown table of GD, GC and local linearity per method (mean ± std over seeds)."""
  last = _latest_ok(rows)
  out = ["| method | seeds | GD (lower = closer to the teacher) | GC (higher = closer) | "
         "local linearity γ (lower = more linear) |", "|---|---|---|---|---|"]
  for m in ALL_METHODS:
    vals = [(s, _diag_values(r)) for (k, s), r in sorted(last.items()) if k == m]
    vals = [(s, v) for s, v in vals if v]
    if not vals:
      continue
    sd = lambda key: _stat([v[key] for _, v in vals], scale=1, fmt=".3g")
    out.append(f"| {_label(m)} | {','.join(str(s) for s, _ in vals)} | {sd('gd')} | "
               f"{sd('gc')} | {sd('ll')} |")
  return "\n".join(out) if len(out) > 2 else None


# ----------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------
def _stat(vals: list[float], scale: float = 100, fmt: str = ".1f") -> str:
  """``mean`` or ``mean ± sample std`` of ``scale * vals``."""
  vals = [scale * v for v in vals if v is not None]
  if not vals:
    return "-"
  m = sum(vals) / len(vals)
  if len(vals) == 1:
    return f"{m:{fmt}}"
  sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
  return f"{m:{fmt}} ± {sd:{fmt}}"


def _fmt_time(rows) -> str:
  ts = [(r.get("train_s") or 0) + (r.get("eval_s") or 0) for r in rows]
  tr = [r.get("train_s") for r in rows if r.get("train_s") is not None]
  ev = [r.get("eval_s") for r in rows if r.get("eval_s") is not None]
  if not ts:
    return "-"
  s = f"{sum(ts) / len(ts) / 60:.1f} min"
  if tr and ev:
    s += f" ({sum(tr) / len(tr) / 60:.1f} + {sum(ev) / len(ev) / 60:.1f})"
  return s


def _label(m: str) -> str:
  return {"teacher": "**teacher** (PGD-AT)",
          "natural_teacher": "natural teacher (MTARD/DARHT/B-MTARD/Fair-MTARD 2nd)",
          "natural": "natural (no teacher)", "pgd_at": "PGD-AT (no teacher)",
          "trades": "TRADES (no teacher)", "kdiga_g100": "kdiga, γ = 100",
          "kdiga_g1000": "kdiga, γ = 1000"}.get(m, m.replace("_igdm", " + IGDM"))


def table(rows: list[dict], root: str | None = None) -> str:
  """Markdown table: teacher first, then reference students, then distilled students."""
  last = _latest_ok(rows)
  order = ["teacher", "natural_teacher"] + ALL_METHODS
  out = ["| method | config | seeds | clean | PGD-20 | AutoAttack | gap PGD-20 − AA | time / run (train + eval) | eval warnings |",
         "|---|---|---|---|---|---|---|---|---|"]
  lines = {}
  for m in order:
    out_m = lines.setdefault(m, [])
    rs = sorted((r for (k, _), r in last.items() if k == m), key=lambda r: r["seed"])
    if not rs:
      continue
    ok = [r for r in rs if r.get("status") == "ok"]
    bad = [r for r in rs if r.get("status") != "ok"]
    label = _label(m)
    cfg = (ok or rs)[0]["config"] + f"; {(ok or rs)[0].get('model', '')}"
    if m == "darht":
      cfg += " (DARHT multi-slot head)"
    if ok:
      seeds = ",".join(str(r["seed"]) for r in ok)
      gap = [r["pgd20"] - r["aa"] for r in ok]
      warns = sorted({w for r in ok for w in r.get("warnings", [])})
      ckpt = ok[0].get("checkpoint") or {}
      if m == "teacher":
        cfg += f"; ckpt {ckpt.get('resolved', '?')} (step {ckpt.get('step', '?')})"
      out_m.append(f"| {label} | {cfg} | {seeds} | {_stat([r['clean'] for r in ok])} | "
                 f"{_stat([r['pgd20'] for r in ok])} | {_stat([r['aa'] for r in ok])} | "
                 f"{_stat(gap)} | {_fmt_time(ok)} | {', '.join(warns) or 'none'} |")
    for r in bad:
      out_m.append(f"| {label} | {cfg} | {r['seed']} | failed: {r['error']} | | | | | |")
  if root:
    for m in order:
      if any(k == m for (k, _) in last):
        continue
      label = _label(m)
      wd = os.path.join(root, m if m in ("teacher", "natural_teacher") else f"{m}_s0")
      res = os.path.join(wd, "results.json")
      if os.path.exists(res):
        with open(res) as f:
          rj = json.load(f)
        t = _train_time(wd)
        lines[m].append(
            f"| {label} | trained, not evaluated in time | 0 | {100 * rj['clean_accuracy']:.1f}* | "
            f"{100 * rj['robust_accuracy'].get('pgd20', float('nan')):.1f}* | not run | - | "
            f"{'%.1f min (train)' % (t / 60) if t else '-'} | - |")
      elif m != "natural_teacher":
        lines[m].append(f"| {label} | not run (out of time) | - | - | - | - | - | - | - |")
  return "\n".join(out + [l for m in order for l in lines.get(m, [])])


def _replace_between(text: str, begin: str, end: str, body: str) -> str:
  if begin in text and end in text:
    return text[:text.index(begin)] + body + text[text.index(end) + len(end):]
  return text + f"\n{body}\n"


def args_n(ds: str) -> str:
  return "360" if ds == "digits" else "500 (first, for the campaign evaluation)"


def pgd_iterate_caption(iterates: list[str]) -> str:
  """Which PGD-20 iterate the table's column counts (evaluate records it per preset)."""
  say = {"last": "the last iterate, as the papers' code does (comparable with their PGD-20)",
         "any": "a point as broken if any iterate misclassifies it (stronger than the papers' "
                "last-iterate PGD-20, not comparable with it)"}
  if not iterates:
    return ""
  if len(iterates) > 1:
    return (f"**PGD-20 mixes iterates across rows ({', '.join(iterates)}): re-evaluate the "
            f"older rows before comparing them.**")
  return f"PGD-20 counts {say.get(iterates[0], iterates[0])}."


def report(args) -> int:
  path = args.out
  text = open(path).read() if os.path.exists(path) else "# Results\n"
  for root in args.roots.split(","):
    rows = _rows(root)
    if not rows and not os.path.isdir(root):
      continue
    ds = rows[0]["dataset"] if rows else ("subset" if "subset" in root else "digits")
    begin, end = f"<!-- BEGIN {ds} table -->", f"<!-- END {ds} table -->"
    n = {r.get("num_examples") for r in rows if r.get("status") == "ok"}
    it = sorted({r.get("pgd20_iterate", "any") for r in rows if r.get("status") == "ok"})
    body = (f"{begin}\n{table(rows, root)}\n\nAccuracies in % on {', '.join(map(str, sorted(n))) or args_n(ds)} "
            f"test images (mean ± sample std over seeds where more than one). "
            f"{pgd_iterate_caption(it)} "
            f"Rows from `{os.path.join(root, 'results.jsonl')}`. "
            f"*: the run's own end-of-training evaluation (results.json: clean and PGD-20 "
            f"on the whole test split, latest checkpoint), not the campaign evaluation.\n{end}")
    versions = {}
    for r in rows:
      res = os.path.join(r["workdir"], "results.json")
      if r.get("status") == "ok" and os.path.exists(res):
        with open(res) as f:
          versions.setdefault(json.load(f).get("code_version"), []).append(
              f"{r['method']}_s{r['seed']}")
    if versions:
      body = body.replace(f"\n{end}", "\nTrained with kdrobust code versions: " + "; ".join(
          f"`{v}` ({len(k)} run{'s' if len(k) > 1 else ''})" for v, k in versions.items())
          + f".\n{end}")
    cmds = [r for r in rows if r.get("status") == "ok"]
    if cmds:
      body = body.replace(f"\n{end}", (
          "\n\n<details><summary>Equivalent single-run commands of every row above "
          "(training, then evaluation)</summary>\n\n```bash\n"
          + "\n".join(f"{r['command']}\n{r['eval_command']}" for r in cmds)
          + "\n```\n</details>\n" + end))
    text = _replace_between(text, begin, end, body)
    dtab = diagnostics_table(rows)
    if dtab:
      n_diag = sorted({v["n"] for r in rows if (v := _diag_values(r))})
      dbegin, dend = f"<!-- BEGIN {ds} diagnostics -->", f"<!-- END {ds} diagnostics -->"
      text = _replace_between(text, dbegin, dend, (
          f"{dbegin}\n{dtab}\n\nOn the first {', '.join(map(str, n_diag))} test images, clean, "
          f"final (latest) checkpoint; against the teacher's best checkpoint. Command: "
          f"`python launch/results_campaign.py --diagnostics --dataset {ds} --root {root}`"
          + (f" --aa_examples {n_diag[0]}" if ds != "digits" else "") + f"\n{dend}"))
  with open(path, "w") as f:
    f.write(text)
  print(f"wrote {path}")
  return 0


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dataset", choices=("digits", "subset"), default="digits")
  p.add_argument("--seeds", default="0")
  p.add_argument("--methods", default="all", help=f"comma list of {ALL_METHODS} or 'all'")
  p.add_argument("--root", default=os.path.join(REPO, "runs", "digits"))
  p.add_argument("--aa_examples", type=int, default=0, help="test points (0 = all)")
  p.add_argument("--data_dir", default=os.path.join(REPO, "data"),
                 help="TFDS data_dir of the subset (default: the repository's data/)")
  p.add_argument("--retry_failed", action="store_true")
  p.add_argument("--teacher_eval_last", action="store_true",
                 help="evaluate the (already trained) teacher after the students")
  p.add_argument("--report", action="store_true")
  p.add_argument("--diagnostics", action="store_true",
                 help="GD/GC vs the teacher and local linearity for every finished run")
  p.add_argument("--roots", default=",".join(os.path.join(REPO, "runs", d)
                                             for d in ("digits", "subset")))
  p.add_argument("--out", default=os.path.join(REPO, "docs", "results.md"))
  args = p.parse_args(argv)
  if args.report:
    return report(args)
  return diagnostics(args) if args.diagnostics else campaign(args)


if __name__ == "__main__":
  sys.exit(main())

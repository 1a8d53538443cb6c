"""kdrobust (JAX) vs PyTorch on one accelerator: one command, one run, every figure side by side.

    python benchmarks/gpu_side_by_side.py --out /tmp/sbs --budget_s 420     # a GPU machine
    python benchmarks/gpu_side_by_side.py --smoke --out /tmp/sbs_smoke      # CPU, tiny sizes (CI)

Issue 11 item 5. Sections, in priority order (each writes
``<out>/<letter>_<name>.md`` and ``.json`` as soon as it finishes, and
``summary.md`` / ``summary.json`` are rewritten after every section):

* A. device, versions and the peak table: the matmul throughput of one large
  product in bf16, TF32 and FP32, measured in JAX and in torch;
* B. identical ResNet-18 and WRN-34-10 in JAX and torch (``tests/torch_twins.py``
  twins, converted by ``kdrobust.teachers.torch_io``): logit parity and FLOPs
  per image (XLA cost analysis and torch's FLOP counter);
* C. the AdaAD train step at batch 128 (ResNet-18 student, WRN-34-10 teacher,
  PGD-10), same weights and batch on both sides: JAX fp32 / bf16 teacher /
  bf16 both; torch eager TF32-off / eager defaults (the official code) / AMP
  bf16 + channels_last / ``torch.compile``;
* D. the same JAX step driven by kdrobust's input pipeline
  (``kdrobust.data.train_iterator`` on the synthetic CIFAR-shape source): the
  loop overhead;
* E. evaluation precision: forward + input gradient, JAX highest / default /
  bf16 against torch TF32-off / TF32 / AMP bf16;
* F. AutoAttack kernels (APGD-CE, APGD-T, FAB-T, Square) at fixed equal work
  against the reference ``pyautoattack``, cold and warm, compile count,
  extrapolated to standard AutoAttack on 10,000 points;
* G. parity of the device-loop APGD and FAB against the reference.

Only jax, flax, optax, orbax-checkpoint, chex, numpy and torch are needed,
plus pure-Python wheels carried in ``benchmarks/wheels/`` (``pyautoattack``
for F and G): a section whose package is missing is skipped with the reason.
``--budget_s``: every section and row first checks that its estimate fits in
what is left (section priors are scaled by the ratio measured/prior of the
sections already run, rows by the rows before them) and is skipped otherwise.
The script measures; it asserts no speed. Exit status 1 if a section failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _side_by_side import common  # noqa: E402  pylint: disable=g-import-not-at-top

SECTIONS = "ABCDEFG"


@dataclasses.dataclass
class Config:
  """Sizes of one run (``full`` for an accelerator, ``smoke`` for CI on CPU)."""
  smoke: bool
  batch: int  # AdaAD train batch (C, D)
  image: int  # image side (CIFAR: 32)
  pgd_steps: int  # AdaAD inner steps
  eps: float
  step_size: float
  min_time_s: float  # timed seconds per row (C, D, E)
  min_steps: int
  max_steps: int
  peak_n: int  # matmul side for the peak table
  parity_batch: int  # B
  eval_batch: int  # E
  aa_n: int  # F: points (one chunk)
  aa_eps: float  # F: tiny: nothing is fooled, so every kernel does its full work
  aa_iter: int  # F: APGD / FAB iterations (standard: 100)
  aa_targets: int  # F: target classes measured (standard: 9; extrapolated)
  aa_queries: int  # F: Square queries measured (standard: 5000; extrapolated)
  g_n: int  # G: points of the parity check
  g_iter: int  # G: iterations
  compile_backend: str  # torch.compile backend of the compiled row
  c_rows: str  # C's rows to run: 'all', or 'smoke' (one row per code path)
  priors: dict  # seconds a whole section should take: guesses, corrected by measurement
  min_start: dict  # seconds a section needs to produce its first row: below that, skip it


def full_config() -> Config:
  return Config(smoke=False, batch=128, image=32, pgd_steps=10, eps=8 / 255,
                step_size=2 / 255, min_time_s=4.0, min_steps=3, max_steps=50,
                peak_n=8192, parity_batch=64, eval_batch=256, aa_n=250, aa_eps=1e-5,
                aa_iter=100, aa_targets=1, aa_queries=500, g_n=16, g_iter=100,
                compile_backend="inductor", c_rows="all",
                priors={"A": 20, "B": 45, "C": 300, "D": 25, "E": 40, "F": 150, "G": 25},
                min_start={"A": 10, "B": 30, "C": 80, "D": 15, "E": 20, "F": 45, "G": 15})


def smoke_config() -> Config:
  return Config(smoke=True, batch=8, image=32, pgd_steps=2, eps=8 / 255, step_size=2 / 255,
                min_time_s=0.05, min_steps=1, max_steps=3, peak_n=128, parity_batch=4,
                eval_batch=8, aa_n=8, aa_eps=1e-5, aa_iter=10, aa_targets=1, aa_queries=10,
                g_n=8, g_iter=10, compile_backend="eager", c_rows="smoke",
                priors={"A": 3, "B": 6, "C": 40, "D": 3, "E": 8, "F": 20, "G": 8},
                min_start={"A": 2, "B": 3, "C": 15, "D": 2, "E": 4, "F": 8, "G": 4})


@dataclasses.dataclass
class Context:
  """What the sections share: configuration, budget, devices and results so far."""
  cfg: Config
  budget: common.Budget
  torch_device: str = "cpu"
  wheels: list = dataclasses.field(default_factory=list)
  peaks: dict = dataclasses.field(default_factory=dict)  # {'jax'|'torch': {'bf16'|...: TFLOP/s}}
  cache: dict = dataclasses.field(default_factory=dict)

  def pairs(self):
    """(student, teacher) twins, built once (seeded)."""
    if "pairs" not in self.cache:
      from _side_by_side import nets  # pylint: disable=g-import-not-at-top
      self.cache["pairs"] = (
          nets.build_pair(nets.student_spec(self.cfg.smoke), seed=0, image_size=self.cfg.image),
          nets.build_pair(nets.teacher_spec(self.cfg.smoke), seed=1, image_size=self.cfg.image))
    return self.cache["pairs"]

  def peak(self, precision: str) -> float | None:
    """The best measured matmul TFLOP/s at ``precision`` over both frameworks."""
    vals = [v.get(precision) for v in self.peaks.values() if v.get(precision)]
    return max(vals) if vals else None


def parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default=None, help="Output folder (per-section .md/.json).")
  p.add_argument("--summary_out", default=None,
                 help="Also write summary.md/summary.json here after every section.")
  p.add_argument("--smoke", action="store_true", help="Tiny sizes (CPU, CI).")
  p.add_argument("--budget_s", type=float, default=None,
                 help="Time budget in seconds (default: 420; smoke: 600, i.e. run everything).")
  p.add_argument("--sections", default=SECTIONS, help="Subset and order, e.g. 'ABC'.")
  p.add_argument("--wheels", default=common.WHEELS_DIR,
                 help="Folder of carried pure-Python wheels (default benchmarks/wheels).")
  p.add_argument("--block_modules", default="",
                 help="Comma-separated modules made unimportable first (CI: "
                      "'ml_collections,tensorflow_datasets', as on the GPU machine).")
  p.add_argument("--slim_wheels", action="store_true",
                 help="Only rewrite the wheels in --wheels without their examples/ folders "
                      "(pyautoattack's ship a 45 MB model), then exit.")
  p.add_argument("--compile_backend", default=None,
                 help="torch.compile backend of C's compiled row (default inductor; "
                      "smoke: eager).")
  a = p.parse_args(argv)
  bad = sorted(set(a.sections.upper()) - set(SECTIONS))
  if bad:
    p.error(f"unknown section(s) {bad}; valid: {', '.join(SECTIONS)}")
  if not a.out and not a.slim_wheels:
    p.error("--out is required")
  return a


def run_section(letter: str, ctx: Context, writer: common.Writer) -> common.SectionResult:
  # pylint: disable-next=g-import-not-at-top
  from _side_by_side import sec_attacks, sec_device, sec_eval, sec_train
  fns = {"A": sec_device.section_a, "B": sec_device.section_b, "C": sec_train.section_c,
         "D": sec_train.section_d, "E": sec_eval.section_e, "F": sec_attacks.section_f,
         "G": sec_attacks.section_g}
  titles = {"A": ("device", "Device, versions and the peak table"),
            "B": ("models", "Identical ResNet-18 and WRN-34-10: logit parity and FLOPs"),
            "C": ("adaad_step", "AdaAD train step, same weights and batch on both sides"),
            "D": ("pipeline", "The JAX step driven by kdrobust's input pipeline"),
            "E": ("eval_precision", "Evaluation precision: forward + input gradient"),
            "F": ("autoattack", "AutoAttack kernels vs pyautoattack at fixed equal work"),
            "G": ("attack_parity", "Parity of device-loop APGD and FAB vs the reference")}
  slug, title = titles[letter]
  prior = ctx.cfg.priors[letter]
  est = ctx.budget.estimate(ctx.cfg.min_start[letter])
  t0 = time.perf_counter()
  c0 = time.process_time()
  if not ctx.budget.fits(est):
    res = common.SectionResult(letter, slug, title, status="skipped",
                               reason=f"budget: needs at least about {est:.0f} s, "
                               f"{max(ctx.budget.remaining(), 0):.0f} s left")
  else:
    try:
      res = fns[letter](ctx, common.SectionResult(letter, slug, title))
    except common.SkipSection as e:
      res = common.SectionResult(letter, slug, title, status="skipped", reason=str(e))
    except Exception as e:  # pylint: disable=broad-except
      res = common.SectionResult(letter, slug, title, status="error",
                                 reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                                 if str(e) else type(e).__name__)
      res.extra["traceback"] = traceback.format_exc()
      print(res.extra["traceback"], file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - t0
    if res.status == "ok":  # a partial section stopped early: its time says little
      ctx.budget.observe(prior, elapsed)
  res.elapsed_s = time.perf_counter() - t0
  res.extra["process_cpu_s"] = time.process_time() - c0
  res.extra["estimate_s"] = est
  res.extra["budget_left_s"] = ctx.budget.remaining()
  writer.write(res)
  md, _ = writer.paths(res)
  print(f"[{ctx.budget.elapsed():6.1f} s] section {letter} {res.status} "
        f"({res.elapsed_s:.1f} s, cpu {res.extra['process_cpu_s']:.1f} s)"
        + (f" ({res.reason})" if res.reason else "") + f" -> {md}", flush=True)
  return res


def main(argv=None) -> int:
  a = parse(argv)
  if a.slim_wheels:
    for line in common.slim_wheels(a.wheels):
      print(line)
    return 0
  for m in filter(None, a.block_modules.split(",")):
    sys.modules[m.strip()] = None  # import raises ImportError, as where it is not installed
  common.setup_environment(a.smoke)
  cfg = smoke_config() if a.smoke else full_config()
  if a.compile_backend:
    cfg.compile_backend = a.compile_backend
  budget = common.Budget(a.budget_s if a.budget_s is not None else (600 if a.smoke else 420))
  wheels = common.activate_wheels(a.wheels)
  import torch  # pylint: disable=g-import-not-at-top
  if a.smoke:
    torch.set_num_threads(1)
  ctx = Context(cfg=cfg, budget=budget, wheels=wheels,
                torch_device="cuda" if torch.cuda.is_available() else "cpu")
  args = sys.argv[1:] if argv is None else argv
  header = [
      "## GPU side-by-side: kdrobust (JAX) vs PyTorch",
      "",
      f"Command: `python benchmarks/gpu_side_by_side.py {' '.join(args)}`; started "
      f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; budget "
      f"{budget.total_s:.0f} s; {'SMOKE sizes (not a measurement)' if a.smoke else 'full sizes'}.",
  ]
  writer = common.Writer(a.out, a.summary_out, header)
  statuses = {}
  for letter in a.sections.upper():
    statuses[letter] = run_section(letter, ctx, writer).status
  print(f"done in {budget.elapsed():.1f} s: "
        + ", ".join(f"{k} {v}" for k, v in statuses.items()), flush=True)
  return 1 if "error" in statuses.values() else 0


if __name__ == "__main__":
  sys.exit(main())

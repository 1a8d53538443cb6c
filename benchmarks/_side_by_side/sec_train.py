"""Sections C (the AdaAD train step, JAX vs torch) and D (the JAX step fed by the pipeline)."""

from __future__ import annotations

import gc
import time

import numpy as np

from _side_by_side import common
from _side_by_side import nets
from _side_by_side import steps

# (label, student dtype, teacher dtype, precision of the matmuls for the MFU column)
JAX_ROWS = (
    ("JAX fp32 (the old default)", "float32", "float32", "tf32"),
    ("JAX bf16 teacher", "float32", "bfloat16", "bf16"),
    ("JAX bf16 student + teacher", "bfloat16", "bfloat16", "bf16"),
)
TORCH_ROWS = (  # in priority order: the official step first
    (steps.TorchMode("torch eager, defaults (official: cuDNN TF32 on)", tf32=None), "tf32"),
    (steps.TorchMode("torch eager AMP bf16 + channels_last", tf32=None, amp=True,
                     channels_last=True), "bf16"),
    (steps.TorchMode("torch.compile + AMP bf16 + channels_last", tf32=None, amp=True,
                     channels_last=True, compile=True), "bf16"),
    (steps.TorchMode("torch eager fp32, TF32 off", tf32=False), "fp32"),
)
PREFERRED_D_ROW = "JAX bf16 teacher"
# --smoke runs one row per code path: the bf16-teacher row only changes a dtype, and the
# compiled row covers AMP + channels_last (XLA:CPU compiles cost most of the smoke run).
SMOKE_ROWS = ("JAX fp32 (the old default)", "JAX bf16 student + teacher",
              "torch eager fp32, TF32 off", "torch eager, defaults (official: cuDNN TF32 on)",
              "torch.compile + AMP bf16 + channels_last")


def _columns():
  c = common.Column
  return [c("row", "row"), c("ms", "ms / step", "{:.1f}"), c("img_s", "img/s", "{:.0f}"),
          c("epoch_s", "epoch (s, 50k/128 steps)", "{:.1f}"),
          c("gflop", "GFLOP / step", "{:.4g}"), c("tflops", "TFLOP/s", "{:.3g}"),
          c("mfu_bf16", "MFU vs bf16 peak", "{:.1%}"),
          c("mfu_mode", "MFU vs own-mode peak", "{:.1%}"),
          c("compile_s", "compile (s)", "{:.1f}"), c("first_s", "first step (s)", "{:.1f}"),
          c("mem_gib", "peak mem (GiB)", "{:.2f}"), c("loss0", "loss, 1st step", "{:.4g}")]


def _derived(ctx, row: dict, flops: float | None, mode_prec: str) -> dict:
  s = row["step_s"]
  row["ms"] = s * 1e3
  row["img_s"] = ctx.cfg.batch / s
  row["epoch_s"] = s * common.EPOCH_IMAGES / ctx.cfg.batch
  if flops:
    row["gflop"] = flops / 1e9
    row["tflops"] = flops / s / 1e12
    for key, prec in (("mfu_bf16", "bf16"), ("mfu_mode", mode_prec)):
      peak = ctx.peak(prec)
      row[key] = row["tflops"] / peak if peak else None
  return row


def _batch(ctx):
  cfg = ctx.cfg
  x = nets.images(cfg.batch, cfg.image, seed=3)
  y = np.random.default_rng(3).integers(0, nets.NUM_CLASSES, cfg.batch).astype(np.int32)
  return x, y


def _abstract(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), tree)


def jax_step_flops(ctx, batch) -> float | None:
  """FLOPs of one JAX step from XLA's cost analysis of the lowered (unoptimised) step.

  HloCostAnalysis counts a while-loop body once, so the rolled step
  under-counts the K PGD iterations. With the loop unrolled by 2 the body
  holds two iterations, so ``F(unroll=2) - F(unroll=1)`` is one iteration and
  ``F = F(1) + (K - 1) (F(2) - F(1))`` (K even; odd K lowers the fully
  unrolled step instead). Tracing two short steps is cheaper than tracing K
  iterations. The count does not depend on the dtype.
  """
  student, teacher = ctx.pairs()
  cfg = ctx.cfg

  def lowered_flops(unroll):
    js = steps.jax_step(student.module(), teacher.module(), pgd_steps=cfg.pgd_steps,
                        eps=cfg.eps, step_size=cfg.step_size, unroll=unroll)
    state = steps.jax_state(student.variables, js)
    return nets.cost_flops(js.step.lower(_abstract(state), _abstract((teacher.variables,)),
                                         _abstract(batch)))

  k = cfg.pgd_steps
  if k % 2:
    return lowered_flops(True)
  f1, f2 = lowered_flops(1), lowered_flops(2)
  if f1 is None or f2 is None:
    return None
  return f1 + (k - 1) * (f2 - f1)


def jax_row(ctx, label: str, s_dtype: str, t_dtype: str, batch) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  cfg = ctx.cfg
  student, teacher = ctx.pairs()
  js = steps.jax_step(student.module(s_dtype), teacher.module(t_dtype), pgd_steps=cfg.pgd_steps,
                      eps=cfg.eps, step_size=cfg.step_size)
  state = steps.jax_state(student.variables, js)
  tv = (teacher.variables,)
  t0 = time.perf_counter()
  compiled = js.step.lower(state, tv, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = None
  try:
    ma = compiled.memory_analysis()
    mem = (ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes
           - ma.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    pass
  t0 = time.perf_counter()
  state, m = compiled(state, tv, batch)
  jax.block_until_ready(m)
  first_s = time.perf_counter() - t0
  loss0 = float(m["loss"])
  t0 = time.perf_counter()
  state, m = compiled(state, tv, batch)
  jax.block_until_ready(m)
  warm_s = time.perf_counter() - t0
  holder = {"state": state}

  def run():
    holder["state"], mm = compiled(holder["state"], tv, batch)
    return mm

  t = common.timed_loop(run, jax.block_until_ready, first_s=warm_s, min_time_s=cfg.min_time_s,
                        min_steps=cfg.min_steps, max_steps=cfg.max_steps)
  ctx.cache.setdefault("jax_steps", {})[label] = {"compiled": compiled, "holder": holder,
                                                  "tv": tv, "step_s": t["step_s"]}
  return {"row": label, "compile_s": compile_s, "first_s": first_s, "loss0": loss0,
          "mem_gib": common.fmt_bytes_gib(mem), "mem_source": "XLA memory_analysis "
          "(arguments + outputs + temporaries - aliased)", **t}


def torch_row(ctx, mode: steps.TorchMode, x: np.ndarray, count_flops: bool) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  cfg = ctx.cfg
  dev = ctx.torch_device
  student, teacher = ctx.pairs()
  cuda = dev == "cuda"
  with steps.torch_flags(mode, benchmark=cuda):
    runner = steps.TorchAdaAD(student.torch_copy(dev), teacher.torch_copy(dev), mode, dev,
                              pgd_steps=cfg.pgd_steps, eps=cfg.eps, step_size=cfg.step_size,
                              compile_backend=cfg.compile_backend)
    xt = runner.prepare(torch.tensor(nets.to_nchw(x), device=dev))
    torch.manual_seed(0)
    if cuda:
      torch.cuda.empty_cache()
      torch.cuda.reset_peak_memory_stats()
    sync = lambda _=None: common.sync_torch(dev)
    t0 = time.perf_counter()
    loss0 = float(runner(xt))
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    runner(xt)
    sync()
    warm_s = time.perf_counter() - t0
    t = common.timed_loop(lambda: runner(xt), sync, first_s=warm_s, min_time_s=cfg.min_time_s,
                          min_steps=cfg.min_steps, max_steps=cfg.max_steps)
    mem = torch.cuda.max_memory_allocated() if cuda else None
    flops = None
    if count_flops:
      flops = nets.torch_flops(lambda: runner(xt))
  del runner, xt
  gc.collect()
  if cuda:
    torch.cuda.empty_cache()
  return {"row": mode.label, "compile_s": max(first_s - warm_s, 0.0), "first_s": first_s,
          "loss0": loss0, "mem_gib": common.fmt_bytes_gib(mem),
          "mem_source": "torch.cuda.max_memory_allocated" if cuda else None,
          "flops_counted": flops, **t}


def section_c(ctx, res: common.SectionResult) -> common.SectionResult:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  cfg = ctx.cfg
  budget = ctx.budget
  student, teacher = ctx.pairs()
  x, y = _batch(ctx)
  batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
  res.columns = _columns()
  t0 = time.perf_counter()
  try:
    flops_jax = jax_step_flops(ctx, batch)
  except Exception as e:  # pylint: disable=broad-except
    flops_jax = None
    res.notes.append(f"JAX FLOP count failed: {type(e).__name__}: {e}")
  res.extra["jax_flops_per_step"] = flops_jax
  res.extra["jax_flops_lowering_s"] = time.perf_counter() - t0
  # Guesses for the first row of each kind; later rows use what was measured.
  compile_guess = budget.estimate(8.0 if cfg.smoke else 60.0)
  torch_compile_guess = budget.estimate(10.0 if cfg.smoke else 120.0)
  step_guess = None
  smoke_skip = lambda lbl: cfg.c_rows == "smoke" and lbl not in SMOKE_ROWS
  for label, s_dt, t_dt, prec in JAX_ROWS:
    if smoke_skip(label):
      res.skip_row("row", label, "not run in --smoke (same code path as another row)",
                   partial=False)
      continue
    est = compile_guess + cfg.min_time_s + 3 * (step_guess or 0.0)
    if not budget.fits(est):
      res.skip_row("row", label, f"skipped: budget (needs about {est:.0f} s)")
      continue
    try:
      row = jax_row(ctx, label, s_dt, t_dt, batch)
    except Exception as e:  # pylint: disable=broad-except
      res.error_row("row", label, e)
      continue
    compile_guess, step_guess = row["compile_s"], row["step_s"]
    res.rows.append(_derived(ctx, row, flops_jax, prec))
  flops_torch = None
  torch_step_guess = step_guess
  for i, (mode, prec) in enumerate(TORCH_ROWS):
    if smoke_skip(mode.label):
      res.skip_row("row", mode.label, "not run in --smoke (same code path as another row)",
                   partial=False)
      continue
    est = cfg.min_time_s + 4 * (torch_step_guess or 0.0) + (torch_compile_guess if mode.compile
                                                            else 0.0)
    if not budget.fits(est):
      res.skip_row("row", mode.label, f"skipped: budget (needs about {est:.0f} s)")
      continue
    try:
      row = torch_row(ctx, mode, x, count_flops=flops_torch is None and not mode.compile)
    except Exception as e:  # pylint: disable=broad-except
      res.error_row("row", mode.label, e)
      continue
    if row.get("flops_counted"):
      flops_torch = row["flops_counted"]
    torch_step_guess = row["step_s"] if i == 0 else min(torch_step_guess or row["step_s"],
                                                       row["step_s"])
    res.rows.append(_derived(ctx, row, flops_torch, prec))
  res.extra["torch_flops_per_step"] = flops_torch
  s_lbl, t_lbl = student.spec.label, teacher.spec.label
  res.notes += [
      f"Student {s_lbl}, teacher {t_lbl}, batch {cfg.batch} of {cfg.image}x{cfg.image}x3 random "
      f"images, PGD-{cfg.pgd_steps} (eps {cfg.eps:.4f}, step {cfg.step_size:.4f}, start "
      "x + 0.001 N(0, I)), SGD momentum 0.9, wd 5e-4, lr 0.1; the same initial weights and batch "
      "on both sides (the first step's losses should agree closely; the random starts differ).",
      "ms / step: median of 3 repeats of back-to-back steps (one sync per repeat) after a first "
      "and a warm step. Epoch = ms / step x 50,000 / 128.",
      "JAX GFLOP / step: XLA cost analysis of the lowered step, the PGD loop counted K times "
      "(jax_step_flops: a rolled while loop is counted once); torch GFLOP / step: "
      "torch.utils.flop_counter's formulas over one eager step (the official step also runs "
      "T(x) and back-propagates the zero-weighted clean KL, so it does a little more work). "
      "MFU = TFLOP/s / the best peak of section A at bf16, and at the row's own mode "
      "(JAX fp32 = XLA's default precision, TF32 on Ampere and later; torch defaults = "
      "cuDNN TF32).",
      "compile: JAX lower + compile; torch: first step minus a warm step (cuDNN autotuning, "
      f"torch.compile with backend '{cfg.compile_backend}'). peak mem: JAX from XLA's memory "
      "analysis of the executable, torch from max_memory_allocated (CUDA only).",
  ]
  return res


def section_d(ctx, res: common.SectionResult) -> common.SectionResult:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  cfg = ctx.cfg
  try:
    from kdrobust import data as data_lib  # pylint: disable=g-import-not-at-top
    name = f"synthetic:{cfg.image}x{cfg.image}x3:{nets.NUM_CLASSES}"
    it = data_lib.train_iterator(name, data_dir=None, batch_size=cfg.batch, seed=0)
    probe = next(it)
  except Exception as e:  # pylint: disable=broad-except
    raise common.SkipSection(f"kdrobust's input pipeline does not run here without TFDS: "
                             f"{type(e).__name__}: {e}") from e
  steps_cache = ctx.cache.get("jax_steps", {})
  label = PREFERRED_D_ROW if PREFERRED_D_ROW in steps_cache else next(iter(steps_cache), None)
  if label is None:
    est = ctx.budget.estimate(8.0 if cfg.smoke else 60.0) + 2 * cfg.min_time_s
    if not ctx.budget.fits(est):
      raise common.SkipSection(f"no compiled step from C and no time to compile one "
                               f"(about {est:.0f} s)")
    x, y = _batch(ctx)
    jax_row(ctx, PREFERRED_D_ROW, "float32", "bfloat16",
            {"image": jnp.asarray(x), "label": jnp.asarray(y)})
    label = PREFERRED_D_ROW
    steps_cache = ctx.cache["jax_steps"]
  entry = steps_cache[label]
  compiled, holder, tv = entry["compiled"], entry["holder"], entry["tv"]
  x, y = _batch(ctx)
  fixed = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
  to_float = jax.jit(lambda u: u.astype(jnp.float32) / 255.0)

  def to_device(b):
    img = b["image"]
    img = to_float(jax.device_put(img)) if np.issubdtype(img.dtype, np.integer) \
        else jax.device_put(np.asarray(img, np.float32))
    return {"image": img, "label": jax.device_put(np.asarray(b["label"], np.int32))}

  res.extra["pipeline_batch"] = {k: f"{np.asarray(v).dtype}{list(np.shape(v))}"
                                 for k, v in probe.items()}
  res.columns = [common.Column("row", "row"), common.Column("ms", "ms / step", "{:.2f}"),
                 common.Column("img_s", "img/s", "{:.0f}"),
                 common.Column("overhead_ms", "overhead vs fixed batch (ms)", "{:.2f}"),
                 common.Column("overhead_pct", "overhead (%)", "{:.1%}")]

  def run_fixed():
    holder["state"], m = compiled(holder["state"], tv, fixed)
    return m

  def run_pipeline():
    holder["state"], m = compiled(holder["state"], tv, to_device(next(it)))
    return m

  def host_only():
    return next(it)

  warm = entry["step_s"]
  kw = dict(min_time_s=cfg.min_time_s, min_steps=cfg.min_steps, max_steps=cfg.max_steps)
  jax.block_until_ready(run_pipeline())  # compiles to_float if the batches are integers
  fixed_t = common.timed_loop(run_fixed, jax.block_until_ready, first_s=warm, **kw)
  pipe_t = common.timed_loop(run_pipeline, jax.block_until_ready, first_s=warm, **kw)
  t0 = time.perf_counter()
  next(it)
  host_t = common.timed_loop(host_only, lambda _: None,
                             first_s=max(time.perf_counter() - t0, 1e-4), **kw)
  base = fixed_t["step_s"]
  for lbl, t, is_pipeline in ((f"{label}, fixed device batch (as in C)", fixed_t, False),
                              (f"{label}, train_iterator + device_put every step", pipe_t, True),
                              ("train_iterator alone (host, no step)", host_t, False)):
    row = {"row": lbl, "ms": t["step_s"] * 1e3, "img_s": cfg.batch / t["step_s"], **t}
    if is_pipeline:
      row["overhead_ms"] = (t["step_s"] - base) * 1e3
      row["overhead_pct"] = (t["step_s"] - base) / base
    res.rows.append(row)
  res.notes += [
      f"Data: kdrobust.data.train_iterator('{name}', batch_size={cfg.batch}, seed=0), "
      "pad-4 crop + flip, its prefetch thread; batches as it yields them: "
      f"{res.extra['pipeline_batch']} (integer images are converted on the device).",
      "The step is dispatched asynchronously, so the host's batch preparation overlaps the "
      "previous step, as in kdrobust.train's loop (which uses parallel.global_batch over its "
      "mesh instead of device_put, and fetches metrics every log_every_steps).",
  ]
  return res

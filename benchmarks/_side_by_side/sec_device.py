"""Sections A (device, versions, peak table) and B (identical models: parity, FLOPs)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time

import numpy as np

from _side_by_side import common
from _side_by_side import nets

PRECISIONS = ("bf16", "tf32", "fp32")


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def versions(ctx) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  v = {"python": platform.python_version(), "platform": platform.platform()}
  for d in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "torch",
            "ml_collections", "pyautoattack", "tensorflow-datasets"):
    v[d] = _version(d)
  for mod, dist in (("pyautoattack", "pyautoattack"), ("ml_collections", "ml_collections")):
    if v[dist] is None and common.have(mod):
      v[dist] = "from a carried wheel"
  v["torch_cuda"] = torch.version.cuda
  v["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
  v["jax_backend"] = jax.default_backend()
  v["jax_devices"] = f"{jax.device_count()}x {jax.devices()[0].device_kind}"
  v["torch_device"] = (torch.cuda.get_device_name(0) if ctx.torch_device == "cuda"
                       else f"cpu ({torch.get_num_threads()} threads)")
  v["cpu_count"] = os.cpu_count()
  v["wheels_carried"] = ctx.wheels
  try:
    v["kdrobust_commit"] = subprocess.run(
        ["git", "-C", common.REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
        text=True, timeout=10).stdout.strip() or None
    dirty = subprocess.run(
        ["git", "-C", common.REPO, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, timeout=10).stdout.strip()
    if v["kdrobust_commit"] and dirty:
      v["kdrobust_commit"] += " + uncommitted changes"
  except (OSError, subprocess.SubprocessError):
    v["kdrobust_commit"] = None
  for k in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
            "JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES"):
    v[f"env {k}"] = os.environ.get(k)
  return v


def _jax_matmul(n: int, precision: str, cfg) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
  ctx_prec = {"bf16": "bfloat16", "tf32": "tensorfloat32", "fp32": "float32"}[precision]
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  with jax.default_matmul_precision(ctx_prec):
    f = jax.jit(lambda u, v: u @ v).lower(a, b).compile()
  t0 = time.perf_counter()
  f(a, b).block_until_ready()
  first = time.perf_counter() - t0
  t = common.timed_loop(lambda: f(a, b), jax.block_until_ready, first_s=first,
                        min_time_s=cfg.min_time_s / 4, min_steps=3, max_steps=200)
  return {"ms": t["step_s"] * 1e3, "tflops": 2 * n ** 3 / t["step_s"] / 1e12}


def _torch_matmul(n: int, precision: str, device: str, cfg) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  dtype = torch.bfloat16 if precision == "bf16" else torch.float32
  saved = torch.backends.cuda.matmul.allow_tf32
  torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
  try:
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), generator=g, device=device, dtype=dtype)
    b = torch.randn((n, n), generator=g, device=device, dtype=dtype)
    t0 = time.perf_counter()
    a @ b
    common.sync_torch(device)
    first = time.perf_counter() - t0
    t = common.timed_loop(lambda: a @ b, lambda _: common.sync_torch(device), first_s=first,
                          min_time_s=cfg.min_time_s / 4, min_steps=3, max_steps=200)
  finally:
    torch.backends.cuda.matmul.allow_tf32 = saved
  return {"ms": t["step_s"] * 1e3, "tflops": 2 * n ** 3 / t["step_s"] / 1e12}


def section_a(ctx, res: common.SectionResult) -> common.SectionResult:
  cfg = ctx.cfg
  v = versions(ctx)
  res.extra["versions"] = v
  res.columns = [common.Column("framework", "framework"), common.Column("precision", "precision"),
                 common.Column("n", "n (n x n x n)"), common.Column("ms", "ms / product", "{:.3f}"),
                 common.Column("tflops", "TFLOP/s", "{:.3g}")]
  ctx.peaks = {"jax": {}, "torch": {}}
  for fw in ("jax", "torch"):
    for prec in PRECISIONS:
      label = {"bf16": "bf16 inputs", "tf32": "fp32 inputs, TF32",
               "fp32": "fp32 inputs, full FP32"}[prec]
      try:
        r = (_jax_matmul(cfg.peak_n, prec, cfg) if fw == "jax"
             else _torch_matmul(cfg.peak_n, prec, ctx.torch_device, cfg))
      except Exception as e:  # pylint: disable=broad-except
        res.error_row("framework", fw, e)
        continue
      ctx.peaks[fw][prec] = r["tflops"]
      res.rows.append({"framework": fw, "precision": f"{prec} ({label})", "n": cfg.peak_n, **r})
  res.extra["peaks_tflops"] = ctx.peaks
  res.notes += [f"{k}: {val}" for k, val in v.items()]
  res.notes.append("Peak = one n x n x n matrix product on random normal data, median of 3 "
                   "timed repeats after a warm call; 2 n^3 FLOPs. MFU figures in C use the best "
                   "of the two frameworks per precision.")
  return res


def section_b(ctx, res: common.SectionResult) -> common.SectionResult:
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  cfg = ctx.cfg
  t0 = time.perf_counter()
  student, teacher = ctx.pairs()
  res.extra["build_and_convert_s"] = time.perf_counter() - t0
  res.columns = [
      common.Column("net", "network"), common.Column("params_m", "params (M)", "{:.2f}"),
      common.Column("gflop_xla", "GFLOP / image, forward (XLA)", "{:.3f}"),
      common.Column("gflop_torch", "GFLOP / image, forward (torch counter)", "{:.3f}"),
      common.Column("max_dlogit", "max abs logit diff (JAX highest vs torch FP32)", "{:.2e}"),
      common.Column("max_logit", "max abs logit", "{:.2f}"),
      common.Column("argmax_agree", "argmax agreement", "{:.1%}"),
      common.Column("compile_s", "JAX forward compile (s)", "{:.1f}")]
  x = nets.images(cfg.parity_batch, cfg.image, seed=2)
  dev = ctx.torch_device
  for pair in (student, teacher):
    try:
      module = pair.module("float32")
      t1 = time.perf_counter()
      with jax.default_matmul_precision("highest"):
        lowered = jax.jit(lambda v, u, m=module: m.apply(v, u, train=False)).lower(
            pair.variables, x)
        compiled = lowered.compile()
      compile_s = time.perf_counter() - t1
      zj = np.asarray(compiled(pair.variables, x))
      flops = nets.cost_flops(lowered)
      tw = pair.torch_copy(dev).eval()
      xt = torch.tensor(nets.to_nchw(x), device=dev)
      saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
      torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
      try:
        with torch.no_grad():
          zt = tw(xt).float().cpu().numpy()
          tflops = nets.torch_flops(lambda: tw(xt[:1]))
      finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
      del tw
      res.rows.append({
          "net": pair.spec.label, "params_m": pair.num_params / 1e6,
          "gflop_xla": None if flops is None else flops / cfg.parity_batch / 1e9,
          "gflop_torch": None if tflops is None else tflops / 1e9,
          "max_dlogit": float(np.abs(zj - zt).max()), "max_logit": float(np.abs(zt).max()),
          "argmax_agree": float(np.mean(zj.argmax(-1) == zt.argmax(-1))),
          "compile_s": compile_s})
    except Exception as e:  # pylint: disable=broad-except
      res.error_row("net", pair.spec.label, e)
  res.notes.append(f"{cfg.parity_batch} random images {cfg.image}x{cfg.image}x3, eval mode, "
                   "random weights and BN statistics (torch_twins.randomize_), converted by "
                   "kdrobust.teachers.torch_io.convert_state_dict. Both count 2 FLOPs per "
                   "multiply-add; XLA's cost analysis also counts elementwise work (BN, ReLU) "
                   "but only the taps inside the image (zero padding excluded), torch's FLOP "
                   "formulas count convolutions and matrix products over the full window.")
  return res

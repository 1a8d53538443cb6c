"""Section E: evaluation precision, forward + input gradient, JAX against torch."""

from __future__ import annotations

import time

import numpy as np

from _side_by_side import common
from _side_by_side import nets
from _side_by_side import steps

# (label, model dtype, jax.default_matmul_precision or None for XLA's default)
JAX_MODES = (("JAX highest (reference)", "float32", "highest"),
             ("JAX default precision", "float32", None),
             ("JAX bf16 model", "bfloat16", None))
TORCH_MODES = (steps.TorchMode("torch fp32, TF32 off", tf32=False),
               steps.TorchMode("torch TF32 (cuDNN + matmul)", tf32=True),
               steps.TorchMode("torch AMP bf16", tf32=True, amp=True))


def _jax_fn(module, variables, precision, x, y):
  """Compiled ``(x, y) -> (logits, d sum_i CE_i / dx)`` and its compile seconds."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from kdrobust import losses  # pylint: disable=g-import-not-at-top

  def f(v, u, lab):
    def total(w):
      z = module.apply(v, w, train=False)
      return jax.numpy.sum(losses.xent(z, lab)), z
    (_, z), g = jax.value_and_grad(total, has_aux=True)(u)
    return z, g

  cm = jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()
  t0 = time.perf_counter()
  with cm:
    compiled = jax.jit(f).lower(variables, x, y).compile()
  return (lambda: compiled(variables, x, y)), time.perf_counter() - t0


def _compare(ref, z, g) -> dict:
  zr, gr = ref
  nz = np.abs(gr) > 0
  return {"max_dlogit": float(np.abs(z - zr).max()),
          "grad_rel": float(np.abs(g - gr).max() / max(np.abs(gr).max(), 1e-30)),
          "sign_agree": float(np.mean(np.sign(g[nz]) == np.sign(gr[nz]))) if nz.any() else None,
          "argmax_agree": float(np.mean(z.argmax(-1) == zr.argmax(-1)))}


def section_e(ctx, res: common.SectionResult) -> common.SectionResult:
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  cfg = ctx.cfg
  student, _ = ctx.pairs()
  n = cfg.eval_batch
  x = nets.images(n, cfg.image, seed=4)
  y = np.random.default_rng(4).integers(0, nets.NUM_CLASSES, n).astype(np.int32)
  res.columns = [common.Column("row", "row"), common.Column("ms", "ms / call", "{:.2f}"),
                 common.Column("img_s", "img/s", "{:.0f}"),
                 common.Column("max_dlogit", "max abs logit diff vs JAX highest", "{:.2e}"),
                 common.Column("grad_rel", "max abs grad diff / max abs grad", "{:.2e}"),
                 common.Column("sign_agree", "grad sign agreement", "{:.3%}"),
                 common.Column("argmax_agree", "argmax agreement", "{:.1%}"),
                 common.Column("compile_s", "compile / first call (s)", "{:.1f}")]
  kw = dict(min_time_s=cfg.min_time_s / 2, min_steps=cfg.min_steps, max_steps=cfg.max_steps * 4)
  ref = None
  xj, yj = jax.numpy.asarray(x), jax.numpy.asarray(y)
  for label, dtype, prec in JAX_MODES:
    if ref is not None and not ctx.budget.fits(ctx.budget.estimate(2.0 if cfg.smoke else 15.0)):
      res.skip_row("row", label, "skipped: budget")
      continue
    try:
      run, compile_s = _jax_fn(student.module(dtype), student.variables, prec, xj, yj)
      z, g = (np.asarray(a, np.float32) for a in run())
      t0 = time.perf_counter()
      jax.block_until_ready(run())
      t = common.timed_loop(run, jax.block_until_ready, first_s=time.perf_counter() - t0, **kw)
    except Exception as e:  # pylint: disable=broad-except
      res.error_row("row", label, e)
      continue
    if ref is None:
      ref = (z, g)
    res.rows.append({"row": label, "ms": t["step_s"] * 1e3, "img_s": n / t["step_s"],
                     "compile_s": compile_s, **_compare(ref, z, g), **t})
  if ref is None:
    raise RuntimeError("the JAX reference (highest precision) failed")
  dev = ctx.torch_device
  model = student.torch_copy(dev).eval()
  xt0 = torch.tensor(nets.to_nchw(x), device=dev)
  yt = torch.tensor(y, dtype=torch.long, device=dev)
  for mode in TORCH_MODES:
    if not ctx.budget.fits(ctx.budget.estimate(2.0 if cfg.smoke else 10.0)):
      res.skip_row("row", mode.label, "skipped: budget")
      continue
    try:
      with steps.torch_flags(mode, benchmark=dev == "cuda"):

        def run():
          xt = xt0.clone().requires_grad_(True)
          with steps.autocast(mode, dev):
            z = model(xt)
          loss = torch.nn.functional.cross_entropy(z.float(), yt, reduction="sum")
          g, = torch.autograd.grad(loss, [xt])
          return z, g

        t0 = time.perf_counter()
        z, g = run()
        common.sync_torch(dev)
        first = time.perf_counter() - t0
        zn = z.detach().float().cpu().numpy()
        gn = nets.to_nhwc(g)
        t0 = time.perf_counter()
        run()
        common.sync_torch(dev)
        t = common.timed_loop(run, lambda _: common.sync_torch(dev),
                              first_s=time.perf_counter() - t0, **kw)
    except Exception as e:  # pylint: disable=broad-except
      res.error_row("row", mode.label, e)
      continue
    res.rows.append({"row": mode.label, "ms": t["step_s"] * 1e3, "img_s": n / t["step_s"],
                     "compile_s": first, **_compare(ref, zn, gn), **t})
  del model
  res.notes += [
      f"Student {student.spec.label} in eval mode, {n} random images, random labels; one call = "
      "logits and the input gradient of sum_i CE_i (the work of one attack step).",
      "Differences are against JAX at 'highest' precision (plain FP32), the precision of "
      "reportable evaluations. Gradient sign agreement is over the elements where the "
      "reference gradient is non-zero: L-inf attacks step along the sign.",
  ]
  return res

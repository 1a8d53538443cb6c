"""Sections F (AutoAttack kernels vs pyautoattack) and G (device-loop APGD / FAB parity)."""

from __future__ import annotations

import contextlib
import inspect
import time

import numpy as np

from _side_by_side import common
from _side_by_side import nets

# Standard AutoAttack (L-inf) per point on a model that stays robust throughout: the
# worst case, which the extrapolation uses. (kernel, units per point) with
# units = iterations x target classes (APGD, FAB) or queries (Square).
STANDARD_UNITS = {"APGD-CE": 100, "APGD-T": 9 * 100, "FAB-T": 9 * 100, "Square": 5000}
EXTRAPOLATE_POINTS = 10_000


def _need_pyautoattack():
  if not common.have("pyautoattack"):
    raise common.SkipSection(common.missing_wheel_reason("pyautoattack", "pyautoattack", "0.2.0"))


@contextlib.contextmanager
def _torch_fp32():
  """TF32 off (reportable evaluations run at full FP32 on both sides)."""
  import torch  # pylint: disable=g-import-not-at-top
  saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
  try:
    yield
  finally:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _with_precision(fn, kwargs: dict) -> dict:
  """Pass ``precision='highest'`` where the kdrobust function takes it (issue 11 item 2)."""
  try:
    if "precision" in inspect.signature(fn).parameters:
      return dict(kwargs, precision="highest")
  except (TypeError, ValueError):
    pass
  return kwargs


def _kernels(cfg, n: int):
  """(name, units measured per point, jax call, reference factory)."""
  from kdrobust.attacks import apgd as apgd_lib  # pylint: disable=g-import-not-at-top
  from kdrobust.attacks import fab as fab_lib  # pylint: disable=g-import-not-at-top
  from kdrobust.attacks import square as square_lib  # pylint: disable=g-import-not-at-top
  from pyautoattack import autopgd_base, fab_pt, square  # pylint: disable=g-import-not-at-top
  eps, it, nt, q = cfg.aa_eps, cfg.aa_iter, cfg.aa_targets, cfg.aa_queries

  def jcall(f, **kw):
    kw = _with_precision(f, dict(kw, eps=eps, batch_size=n))
    return lambda fn, x, y: f(fn, x, y, 0, **kw)

  return [
      ("APGD-CE", it, jcall(apgd_lib.apgd, n_iter=it, n_restarts=1, loss="ce"),
       lambda m, dev: autopgd_base.APGDAttack(m, n_iter=it, norm="Linf", n_restarts=1, eps=eps,
                                              seed=0, loss="ce", rho=.75, device=dev)),
      ("APGD-T", it * nt, jcall(apgd_lib.apgd_targeted, n_iter=it, n_target_classes=nt,
                                n_restarts=1),
       lambda m, dev: autopgd_base.APGDAttack_targeted(m, n_iter=it, norm="Linf", n_restarts=1,
                                                       eps=eps, seed=0, rho=.75,
                                                       n_target_classes=nt, device=dev)),
      ("FAB-T", it * nt, jcall(fab_lib.fab_targeted, n_iter=it, n_target_classes=nt,
                               n_restarts=1),
       lambda m, dev: fab_pt.FABAttack_PT(m, norm="Linf", n_restarts=1, n_iter=it, eps=eps,
                                          seed=0, targeted=True, n_target_classes=nt,
                                          device=dev)),
      ("Square", q, jcall(square_lib.square, n_queries=q, p_init=0.8, n_restarts=1),
       lambda m, dev: square.SquareAttack(m, p_init=.8, n_queries=q, eps=eps, norm="Linf",
                                          n_restarts=1, seed=0, device=dev,
                                          resc_schedule=False)),
  ]


def section_f(ctx, res: common.SectionResult) -> common.SectionResult:
  _need_pyautoattack()
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  cfg = ctx.cfg
  budget = ctx.budget
  student, _ = ctx.pairs()
  n = cfg.aa_n
  module = student.module("float32")

  def apply_eval(v, u):
    return module.apply(v, u, train=False)

  fn = jax.tree_util.Partial(apply_eval, student.variables)
  x = nets.images(n, cfg.image, seed=5)
  with jax.default_matmul_precision("highest"):
    y = np.asarray(jax.jit(apply_eval)(student.variables, x)).argmax(-1).astype(np.int64)
  dev = ctx.torch_device
  model = student.torch_copy(dev).eval()
  xt = torch.tensor(nets.to_nchw(x), device=dev)
  yt = torch.tensor(y, device=dev)
  counter = common.CompileCounter.get()
  res.columns = [
      common.Column("kernel", "kernel"), common.Column("work", "work measured"),
      common.Column("jax_cold_s", "JAX cold (s)", "{:.2f}"),
      common.Column("compiles_cold", "compiles cold"),
      common.Column("jax_warm_s", "JAX warm (s)", "{:.2f}"),
      common.Column("compiles_warm", "compiles warm"),
      common.Column("ref_s", "pyautoattack (s)", "{:.2f}"),
      common.Column("speedup", "speed-up, warm", "{:.2f}x"),
      common.Column("fooled", "fooled JAX / ref"),
      common.Column("jax_10k_s", f"JAX, standard AA, {EXTRAPOLATE_POINTS:,} pts (s)", "{:.0f}"),
      common.Column("ref_10k_s", f"ref, standard AA, {EXTRAPOLATE_POINTS:,} pts (s)", "{:.0f}")]
  unit_s = None  # JAX + ref seconds per (point x unit), from the kernels measured so far
  totals = {"jax": 0.0, "ref": 0.0, "compile": 0.0}
  measured_all = True
  for name, units, jcall, make_ref in _kernels(cfg, n):
    est = (budget.estimate(cfg.priors["F"] / 4) if unit_s is None
           else unit_s * n * units * (3.0 if name == "FAB-T" else 1.0))
    if name == "Square" and unit_s is not None:
      est /= 4.0  # one forward per query instead of a forward + backward per iteration
    if not budget.fits(est):
      res.skip_row("kernel", name, f"skipped: budget (needs about {est:.0f} s)")
      measured_all = False
      continue
    try:
      with jax.default_matmul_precision("highest"), _torch_fp32():
        m0 = counter.mark()
        t0 = time.perf_counter()
        adv_cold = jcall(fn, x, y)
        cold = time.perf_counter() - t0
        n_cold, compile_s = counter.since(m0)
        m1 = counter.mark()
        t0 = time.perf_counter()
        adv = jcall(fn, x, y)
        warm = time.perf_counter() - t0
        n_warm, _ = counter.since(m1)
        ref = make_ref(model, dev)
        t0 = time.perf_counter()
        adv_ref = ref.perturb(xt, yt)
        common.sync_torch(dev)
        ref_s = time.perf_counter() - t0
    except Exception as e:  # pylint: disable=broad-except
      res.error_row("kernel", name, e)
      measured_all = False
      continue
    del adv_cold
    fooled_j = int(np.sum(np.abs(np.asarray(adv) - x).reshape(n, -1).max(1) > 0))
    fooled_r = int(np.sum(np.abs(nets.to_nhwc(adv_ref) - x).reshape(n, -1).max(1) > 0))
    scale = STANDARD_UNITS[name] / units * EXTRAPOLATE_POINTS / n
    jax_10k = warm * scale + max(cold - warm, 0.0)
    ref_10k = ref_s * scale
    totals["jax"] += jax_10k
    totals["ref"] += ref_10k
    totals["compile"] += max(cold - warm, 0.0)
    unit_s = (warm + ref_s) / (n * units) if name != "Square" else unit_s
    res.rows.append({"kernel": name, "work": f"{n} pts x {units} units", "jax_cold_s": cold,
                     "compiles_cold": n_cold, "jax_warm_s": warm, "compiles_warm": n_warm,
                     "ref_s": ref_s, "speedup": ref_s / warm if warm > 0 else None,
                     "fooled": f"{fooled_j} / {fooled_r}", "jax_10k_s": jax_10k,
                     "ref_10k_s": ref_10k, "xla_compile_s": compile_s})
  if res.rows and measured_all:
    res.rows.append({"kernel": "standard AA (sum)", "work": "extrapolated",
                     "jax_10k_s": totals["jax"], "ref_10k_s": totals["ref"],
                     "speedup": totals["ref"] / totals["jax"] if totals["jax"] else None})
  del model
  res.notes += [
      f"Model: the student {student.spec.label} (random weights), eval mode, FP32 on both sides "
      "(JAX 'highest', torch TF32 off). Labels = the model's clean predictions, so every point "
      f"is attacked; eps = {cfg.aa_eps:g} is so small that (almost) nothing is fooled, so each "
      "kernel does its full work on every point: APGD runs all iterations, APGD-T / FAB-T every "
      "target class, Square every query. That is standard AutoAttack's worst case (a model that "
      "stays robust), which the extrapolation assumes.",
      f"Work measured: APGD-CE {cfg.aa_iter} iterations; APGD-T and FAB-T {cfg.aa_targets} "
      f"target class(es) x {cfg.aa_iter} iterations; Square {cfg.aa_queries} queries; one "
      f"chunk of {n} points (AutoAttack's default batch is 250). Units = iterations x targets "
      "(queries for Square); standard AA per point: APGD-CE 100, APGD-T 9 x 100, FAB-T 9 x 100, "
      "Square 5,000.",
      f"Extrapolation to {EXTRAPOLATE_POINTS:,} points: warm time x (standard units / measured "
      "units) x (points / measured points), plus, for JAX, the cold-minus-warm compile "
      "overhead once per kernel. Linear in queries and iterations; Square's later queries "
      "touch smaller squares but cost the same forward.",
      "Cold = first call in the process (tracing + XLA compilation); warm = the same call "
      "again (compiles warm should be 0). The reference runs once (it has nothing to compile).",
  ]
  return res


# ---------------------------------------------------------------- G: parity

TWIN_H, TWIN_C, TWIN_HID, TWIN_K = 8, 3, 8, 10


def _twin_weights(seed: int = 0, scale: float = 3.0) -> dict:
  rng = np.random.default_rng(seed)
  d = TWIN_HID * TWIN_H * TWIN_H
  return {"conv_w": rng.normal(0, 0.5, (TWIN_HID, TWIN_C, 3, 3)) * scale,  # OIHW
          "conv_b": rng.normal(0, 0.1, (TWIN_HID,)),
          "fc_w": rng.normal(0, 1.0 / np.sqrt(d), (TWIN_K, d)) * scale,
          "fc_b": rng.normal(0, 0.1, (TWIN_K,))}


def _twin_jax(w: dict, dtype):
  """conv3x3(3->8, pad 1) - ReLU - flatten in (c, h, w) order - dense(512 -> 10), NHWC in."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  hp = jax.lax.Precision.HIGHEST
  kw = jnp.asarray(w["conv_w"].transpose(2, 3, 1, 0), dtype)
  kb, fw, fb = (jnp.asarray(w["conv_b"], dtype), jnp.asarray(w["fc_w"].T, dtype),
                jnp.asarray(w["fc_b"], dtype))

  def f(x):
    h = jax.lax.conv_general_dilated(jnp.asarray(x, dtype), kw, (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=hp)
    h = jnp.transpose(jax.nn.relu(h + kb), (0, 3, 1, 2)).reshape(h.shape[0], -1)
    return jnp.dot(h, fw, precision=hp) + fb

  return f


def _twin_torch(w: dict, dtype, device):
  import torch  # pylint: disable=g-import-not-at-top
  m = torch.nn.Sequential(torch.nn.Conv2d(TWIN_C, TWIN_HID, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Flatten(), torch.nn.Linear(TWIN_HID * TWIN_H * TWIN_H, TWIN_K))
  with torch.no_grad():
    m[0].weight.copy_(torch.tensor(w["conv_w"]))
    m[0].bias.copy_(torch.tensor(w["conv_b"]))
    m[3].weight.copy_(torch.tensor(w["fc_w"]))
    m[3].bias.copy_(torch.tensor(w["fc_b"]))
  return m.to(device=device, dtype=dtype).eval()


@contextlib.contextmanager
def _x64():
  import jax  # pylint: disable=g-import-not-at-top
  prev = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", prev)


def section_g(ctx, res: common.SectionResult) -> common.SectionResult:
  """APGD-CE / APGD-T (float64, injected start) and FAB-T (float32) against the reference.

  Tolerances, as in tests/attacks_apgd_test.py and tests/attacks_fab_test.py:
  APGD: identical success flags and max |dx| <= 1e-9 on x_best and x_best_adv;
  FAB-T: identical flags, max |dx| <= 1e-4, median <= 1e-6.
  """
  _need_pyautoattack()
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from kdrobust.attacks import apgd as apgd_lib  # pylint: disable=g-import-not-at-top
  from kdrobust.attacks import fab as fab_lib  # pylint: disable=g-import-not-at-top
  from pyautoattack import autopgd_base, fab_pt  # pylint: disable=g-import-not-at-top
  cfg = ctx.cfg
  dev = ctx.torch_device
  n, it = cfg.g_n, cfg.g_iter
  w = _twin_weights()
  rng = np.random.default_rng(7)
  x = rng.uniform(0.0, 1.0, (n, TWIN_H, TWIN_H, TWIN_C))
  with _x64():
    y = np.asarray(jnp.argmax(_twin_jax(w, jnp.float64)(x), -1))
  eps = 0.01
  t = rng.uniform(-1, 1, x.shape)
  x0 = x + eps * t / np.abs(t).reshape(n, -1).max(1)[:, None, None, None]
  res.columns = [common.Column("check", "check"), common.Column("loop", "JAX loop"),
                 common.Column("max_dx", "max abs dx", "{:.1e}"),
                 common.Column("median_dx", "median abs dx", "{:.1e}"),
                 common.Column("flags", "flags identical"),
                 common.Column("fooled", "fooled (of n)"), common.Column("tol", "tolerance"),
                 common.Column("verdict", "verdict"),
                 common.Column("jax_s", "JAX (s)", "{:.2f}"),
                 common.Column("ref_s", "ref (s)", "{:.2f}")]
  nchw = lambda a, dt: torch.tensor(nets.to_nchw(a), dtype=dt, device=dev)
  yt = torch.tensor(y, dtype=torch.long, device=dev)

  def apgd_check(label, loss, y_target=None):
    m64 = _twin_torch(w, torch.float64, dev)
    if loss == "dlr-targeted":
      ref = autopgd_base.APGDAttack_targeted(m64, n_iter=it, norm="Linf", eps=eps, device=dev)
      ref.y_target = torch.tensor(y_target, device=dev)
    else:
      ref = autopgd_base.APGDAttack(m64, n_iter=it, norm="Linf", eps=eps, loss=loss, device=dev)
    xt = nchw(x, torch.float64)
    ref.init_hyperparam(xt)
    t0 = time.perf_counter()
    xb_r, acc_r, _, xba_r = ref.attack_single_run(xt, yt, x_init=nchw(x0, torch.float64))
    ref_s = time.perf_counter() - t0
    with _x64():
      t0 = time.perf_counter()
      run = apgd_lib.apgd_single_run(_twin_jax(w, jnp.float64), x, y, x0, eps=eps, n_iter=it,
                                     norm="Linf", loss=loss, y_target=y_target, loop="device")
      xb, acc, _, xba = (np.asarray(v) for v in run[:4])
      jax_s = time.perf_counter() - t0
    d = np.maximum(np.abs(xb - nets.to_nhwc(xb_r)).reshape(n, -1).max(1),
                   np.abs(xba - nets.to_nhwc(xba_r)).reshape(n, -1).max(1))
    same = bool(np.array_equal(acc, acc_r.cpu().numpy()))
    ok = same and d.max() <= 1e-9
    res.rows.append({"check": label, "loop": "device", "max_dx": float(d.max()),
                     "median_dx": float(np.median(d)), "flags": same,
                     "fooled": f"{int(np.sum(~acc))} of {n}", "tol": "flags equal, 1e-9 (fp64)",
                     "verdict": "PASS" if ok else "FAIL", "jax_s": jax_s, "ref_s": ref_s})

  for label, fn in (
      ("APGD-CE, float64, injected start", lambda: apgd_check(
          "APGD-CE, float64, injected start", "ce")),
      ("APGD-T (3rd class), float64", lambda: apgd_check(
          "APGD-T (3rd class), float64", "dlr-targeted", y_target=_targets(w, x)))):
    try:
      with _torch_fp32():
        fn()
    except Exception as e:  # pylint: disable=broad-except
      res.error_row("check", label, e)

  label = "FAB-T (3 targets), float32"
  try:
    with _torch_fp32():
      x32 = x.astype(np.float32)
      eps_f = 0.02
      ref = fab_pt.FABAttack_PT(_twin_torch(w, torch.float32, dev), norm="Linf", n_restarts=1,
                                n_iter=it, eps=eps_f, targeted=True, n_target_classes=3,
                                device=dev)
      t0 = time.perf_counter()
      adv_r = nets.to_nhwc(ref.perturb(nchw(x32, torch.float32), yt))
      ref_s = time.perf_counter() - t0
      t0 = time.perf_counter()
      adv, fooled = fab_lib.fab_rounds(_twin_jax(w, jnp.float32), x32, y, 0, eps=eps_f,
                                       norm="Linf", targeted=True, n_iter=it, n_restarts=1,
                                       n_target_classes=3, buckets=1, loop="device")
      jax_s = time.perf_counter() - t0
    fooled_r = np.abs(adv_r - x32).reshape(n, -1).max(1) > 0
    d = np.abs(np.asarray(adv) - adv_r).reshape(n, -1).max(1)
    same = bool(np.array_equal(np.asarray(fooled), fooled_r))
    ok = same and d.max() <= 1e-4 and np.median(d) <= 1e-6
    res.rows.append({"check": label, "loop": "device", "max_dx": float(d.max()),
                     "median_dx": float(np.median(d)), "flags": same,
                     "fooled": f"{int(np.sum(fooled))} of {n}",
                     "tol": "flags equal, 1e-4 max, 1e-6 median",
                     "verdict": "PASS" if ok else "FAIL",
                     "jax_s": jax_s, "ref_s": ref_s})
  except Exception as e:  # pylint: disable=broad-except
    res.error_row("check", label, e)
  res.notes += [
      f"Tiny twin (conv3x3 3->8, ReLU, dense 512->10 on 8x8x3, weights x3), {n} random points "
      f"labelled by the twin, {it} iterations, L-inf; torch on {dev} with TF32 off, JAX with "
      "loop='device' (one fused loop per run, the accelerator default). APGD: "
      "apgd_single_run vs APGDAttack(.._targeted).attack_single_run from the same injected "
      "start (eps 0.01); FAB-T: fab_rounds vs FABAttack_PT.perturb (eps 0.02).",
      "A FAIL row is a finding, not a crash: the tolerances are the CPU tests' "
      "(tests/attacks_apgd_test.py, tests/attacks_fab_test.py).",
  ]
  if any(r.get("verdict") == "FAIL" for r in res.rows):
    res.status = "partial" if res.status == "ok" else res.status
    res.reason = "parity FAIL (see the verdict column)"
  return res


def _targets(w, x):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from kdrobust.attacks import apgd as apgd_lib  # pylint: disable=g-import-not-at-top
  with _x64():
    return np.asarray(apgd_lib.ranked_targets(_twin_jax(w, jnp.float64)(x), 3))

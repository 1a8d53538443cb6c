"""Per-stage agreement with ``pyautoattack`` on a model where every stage matters (issue 10, item 2).

Each stage of AutoAttack's standard L-inf cascade (APGD-CE, APGD-T, FAB-T,
Square) runs *alone* on the same N = 300 digits test points, here
(``autoattack(version='custom', attacks=[stage])``) and in the reference
(``pyautoattack.AutoAttack(torch_twin, version='custom', attacks=[stage])``,
pyautoattack 0.2.0 = ``fra31/auto-attack@a392200``), on the same weights.

The model (:func:`every_stage_apply`, torch twin :class:`TorchEveryStage`).
``f`` is a small digits CNN (conv 8, conv 16 stride 2, dense 10; widths
``C1, C2``), FGSM-RS adversarially trained here (eps 0.1, 30 epochs, seeded,
a few seconds), ``W, b`` its dense layer. The clean prediction
``c = argmax(f(x) W + b)`` picks one of three masking groups by class
(``GROUPS``), so a point keeps its group until it is misclassified:

    x~   = round(16 x) / 16                      if group(c) = QUANT, else x
    g    = f(x~) (S W) + S b,   S = SCALES[group(c)] = 10 (SAT), 1e4 (DLR), 1 (QUANT)
    gate = relu(s2 - g) * [group(c) = DLR],      s2 = second largest entry of g
    z    = g + A * gate * sin(omega * V^T vec(x)),   A = 0.5, omega = 100, V ~ N(0, 1)

- SAT: the scale 10 saturates the softmax of the confident points (their CE
  input gradient underflows to exactly 0); APGD-CE breaks the less confident
  ones, and the scale-invariant DLR loss lets APGD-T break the rest:
  **APGD-T beats APGD-CE**.
- DLR: CE is saturated (scale 1e4). The top two logits are untouched (gate
  0; A < 1 keeps the others below s2), but classes ranked >= 3 carry a
  high-frequency term whose input gradient (A omega gate |V|) swamps that of
  ``g``: DLR's denominator ``z_pi1 - (z_pi3 + z_pi4) / 2`` has a shattered
  gradient, so APGD-T's sign steps are noise, while FAB-T's first target
  (the runner-up t) sees the smooth ``z_t - z_y``: **FAB-T breaks points
  both APGDs miss**.
- QUANT: the input gradient is exactly zero, so the gradient stages break
  only what their random start breaks; Square is score-based: **Square
  breaks points every gradient stage misses**.

Two float-arithmetic differences between XLA and torch change what a
saturated CE gradient is; the test removes both, so that it compares the
attacks (docs/evaluation.md has the figures):
- FMA contraction. The scales are folded into the dense weights, not applied
  as a multiply after the last layer: under ``jit``, XLA on CPU computes
  ``max z`` in one fused kernel from the rounded ``(h W + b) * S`` and, in
  another, contracts that multiply with log-softmax's ``- max z`` into a
  fused multiply-add (one ``vfmsub`` in its object code), so ``z_y - max z``
  is a rounding residual (~1e-3 at |z| ~ 1e5) instead of
  0, and a saturated CE gets a non-zero, sign-random input gradient that
  torch's eager CE does not have (APGD-CE broke 38 of 200 points on
  ``f * 1e4``, the reference 2).
- Subnormals. XLA on CPU flushes float32 subnormals to zero; torch keeps
  them, so where ``exp(z_k - z_y)`` is subnormal (scaled margins ~87-103) the
  reference's CE gradient is non-zero and ours is 0. The reference therefore
  runs with ``torch.set_flush_denormal(True)`` (:func:`flush_denormals`);
  with torch's default its APGD-CE breaks 1.2 pp more points here.

Settings, identical on both sides: standard's per-stage settings (100
iterations; APGD-CE 1 restart; APGD-T and FAB-T 9 targets, 1 restart), except
Square's query budget, 1000 instead of 5000 on both sides (CPU budget); one
batch of N (Square's draws are shared by a batch); seed 0; float32.
pyautoattack's 'custom' version keeps ``APGDAttack``'s constructor default
of 5 restarts for APGD-CE (its 'standard' sets 1), so the reference's
``apgd.n_restarts`` is set to 1 here.

Statistics (per stage; robust flags ``r`` here and ``r'`` there over the N
points; b = #{r and not r'}, c = #{r' and not r}). The randomness (ours:
``jax.random``; the reference: torch's) is the only intended difference, so
under "same attack" the discordant pairs are exchangeable: b ~ Bin(b + c, 1/2)
given b + c (McNemar). Acceptance:
- two-sided: McNemar's exact p-value >= ALPHA = 1e-3, i.e. the robust-accuracy
  difference (b - c) / N lies inside its 99.9 % band (``python
  tests/attacks_stage_agreement_test.py`` prints the band and the
  Clopper-Pearson interval of the difference);
- per-point agreement 1 - (b + c) / N >= MIN_AGREEMENT[stage]: the 99.9 %
  binomial bound at the seed-to-seed disagreement rate of the two
  implementations (each with itself, seeds 0-7);
- every stage adds, on BOTH implementations: in the cascade order, the
  points each stage breaks that the stages before it (run alone, same
  implementation) leave robust number >= MIN_ADDS. The stages are
  per-example independent (Square up to its batch-shared draws), so this is
  the cascade's per-stage gain in distribution.
Smallest effect the McNemar check detects: a stage weaker (or stronger) on
>= 11 points of 300 with no point the other way (2 * 2^-11 < 1e-3).

Runtime: ~60-90 s on 2 CPU cores (marked ``slow``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys

if __name__ == "__main__":
  import conftest  # noqa: F401  (the suite's JAX setup, before JAX starts)

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import pyautoattack

from attacks_twins_test import digits_data, to_nchw, train_digits
from kdrobust.attacks import autoattack as aa_lib

torch.set_num_threads(1)  # 2 shared CPU cores

N = 300
EPS = 0.15
STAGES = ("apgd-ce", "apgd-t", "fab-t", "square")
SQUARE_QUERIES = 1000  # both sides (standard: 5000)
C1, C2 = 8, 16  # CNN widths
SAT, DLR, QUANT = 0, 1, 2
GROUPS = (SAT, DLR, QUANT, DLR, SAT, DLR, QUANT, DLR, QUANT, SAT)  # group of each class
SCALES = (10.0, 1e4, 1.0)  # logit scale of each group (SAT, DLR, QUANT)
AMP, OMEGA, LEVELS = 0.5, 100.0, 16
ALPHA = 1e-3  # paired test (McNemar for one seed), two-sided, per stage
# Seeds per side: APGD-CE is cheap (~1 s a run), and one seed misses a wrong loss (DLR for CE:
# 2 vs 16 discordant points, p = 1.3e-3); four give p = 8e-6 (docs/evaluation.md).
SEEDS = {"apgd-ce": 4, "apgd-t": 1, "fab-t": 1, "square": 1}
# Per-point agreement floors: 1 - q / N, q the 99.9 % quantile of Bin(N, delta), delta the
# seed-to-seed disagreement rate (points whose flags differ between two seeds of one
# implementation; mean over the 28 pairs of seeds 0-7, averaged over both implementations;
# docs/evaluation.md): APGD-CE 9.65 / 300 -> q = 20; APGD-T 3.3 / 300 -> q = 10; FAB-T 0
# (seeds 0-2; one restart from x: no randomness), taken as 0.5 / 300 -> q = 4 (98.67 %, rounded down);
# Square 15.3 / 300 -> q = 28.
MIN_AGREEMENT = {"apgd-ce": 0.933, "apgd-t": 0.966, "fab-t": 0.98, "square": 0.906}
MIN_ADDS = 8  # points (of 300) each stage adds in the cascade, on each implementation


# ---------------------------------------------------------------------------
# The model and its torch twin.
# ---------------------------------------------------------------------------


def masking_params(params: dict[str, np.ndarray], seed: int = 1) -> dict[str, np.ndarray]:
  """The CNN's weights plus the masking constants.

  ``head_w [3, 16 C2, 10]``, ``head_b [3, 10]``: the dense layer pre-multiplied
  by each group's SCALES entry (a scale folded into the weights, not a
  multiply after the last layer: see the module docstring); ``V [64, 10]
  ~ N(0, 1)``; ``group [10]``: GROUPS.
  """
  out = {k: v for k, v in params.items() if k.startswith("c")}
  out["fc_w"], out["fc_b"] = params["fc_w"], params["fc_b"]
  s = np.asarray(SCALES, np.float32)
  out["head_w"] = (s[:, None, None] * params["fc_w"][None]).astype(np.float32)
  out["head_b"] = (s[:, None] * params["fc_b"][None]).astype(np.float32)
  out["V"] = np.random.default_rng(seed).normal(size=(64, 10)).astype(np.float32)
  out["group"] = np.asarray(GROUPS, np.int32)
  return out


def _features(p, x):
  """The digits CNN up to its dense layer (as ``attacks_twins_test.digits_apply``)."""
  dn = ("NHWC", "HWIO", "NHWC")
  hp = jax.lax.Precision.HIGHEST
  h = jax.nn.relu(jax.lax.conv_general_dilated(x, p["c1_w"], (1, 1), ((1, 1), (1, 1)),
                                               dimension_numbers=dn, precision=hp) + p["c1_b"])
  h = jax.nn.relu(jax.lax.conv_general_dilated(h, p["c2_w"], (2, 2), ((1, 1), (1, 1)),
                                               dimension_numbers=dn, precision=hp) + p["c2_b"])
  return jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)


def every_stage_apply(p, x):
  """``x [B, 8, 8, 1] in [0, 1] -> z [B, 10]`` (the module docstring's formula)."""
  hp = jax.lax.Precision.HIGHEST
  grp = p["group"][jnp.argmax(jnp.dot(_features(p, x), p["fc_w"], precision=hp) + p["fc_b"], -1)]
  xq = jnp.round(x * LEVELS) / LEVELS  # zero gradient
  f = _features(p, jnp.where((grp == QUANT)[:, None, None, None], xq, x))
  heads = [jnp.dot(f, p["head_w"][k], precision=hp) + p["head_b"][k] for k in range(3)]
  g = jnp.where((grp == SAT)[:, None], heads[SAT],
                jnp.where((grp == DLR)[:, None], heads[DLR], heads[QUANT]))
  s2 = jnp.sort(g, -1)[:, -2:-1]
  gate = jax.nn.relu(s2 - g) * (grp == DLR)[:, None]
  h = jnp.sin(OMEGA * jnp.dot(x.reshape(x.shape[0], -1), p["V"], precision=hp))
  return g + AMP * gate * h


def every_stage_logits_fn(p):
  return jax.tree_util.Partial(every_stage_apply, {k: jnp.asarray(v) for k, v in p.items()})


class TorchEveryStage(torch.nn.Module):
  """Torch twin of :func:`every_stage_apply` (NCHW input; C = 1, so the flatten order agrees)."""

  def __init__(self, p):
    super().__init__()
    c1, c2 = p["c1_w"].shape[-1], p["c2_w"].shape[-1]
    self.c1 = torch.nn.Conv2d(1, c1, 3, padding=1)
    self.c2 = torch.nn.Conv2d(c1, c2, 3, stride=2, padding=1)
    with torch.no_grad():
      for name, mod in (("c1", self.c1), ("c2", self.c2)):
        mod.weight.copy_(torch.tensor(p[name + "_w"].transpose(3, 2, 0, 1)))
        mod.bias.copy_(torch.tensor(p[name + "_b"]))
    for k in ("fc_w", "fc_b", "head_w", "head_b", "V"):
      self.register_buffer(k, torch.tensor(p[k]))
    self.register_buffer("group", torch.tensor(p["group"]).long())
    self.eval()

  def features(self, x):
    return torch.relu(self.c2(torch.relu(self.c1(x)))).flatten(1)

  def forward(self, x):
    grp = self.group[(self.features(x) @ self.fc_w + self.fc_b).argmax(-1)]
    xq = torch.round(x * LEVELS) / LEVELS
    f = self.features(torch.where((grp == QUANT)[:, None, None, None], xq, x))
    heads = [f @ self.head_w[k] + self.head_b[k] for k in range(3)]
    g = torch.where((grp == SAT)[:, None], heads[SAT],
                    torch.where((grp == DLR)[:, None], heads[DLR], heads[QUANT]))
    s2 = torch.sort(g, -1).values[:, -2:-1]
    gate = torch.relu(s2 - g) * (grp == DLR)[:, None].to(g.dtype)
    h = torch.sin(OMEGA * (x.flatten(1) @ self.V))
    return g + AMP * gate * h


# ---------------------------------------------------------------------------
# Running one stage alone on each side.
# ---------------------------------------------------------------------------


def run_ours(p, x, y, stage: str, seed: int = 0) -> aa_lib.AutoAttackResult:
  return aa_lib.autoattack(every_stage_logits_fn(p), x, y, eps=EPS, norm="Linf",
                           version="custom", attacks=[stage], seed=seed, batch_size=len(x),
                           buckets=1, checks=False,
                           config_overrides=dict(square_queries=SQUARE_QUERIES))


@contextlib.contextmanager
def flush_denormals(on: bool = True):
  """torch with float32 subnormals flushed to zero, as XLA computes on CPU (restored after)."""
  if not torch.set_flush_denormal(on) and on:
    raise RuntimeError("torch.set_flush_denormal is not supported on this CPU")
  try:
    yield
  finally:
    torch.set_flush_denormal(False)


def run_reference(model, x, y, stage: str, seed: int = 0, ftz: bool = True):
  """``(x_adv NHWC, robust flags)`` from pyautoattack's custom version with standard's settings.

  ``ftz``: flush subnormals like XLA (the module docstring); ``False``: torch's default.
  """
  ref = pyautoattack.AutoAttack(model, norm="Linf", eps=EPS, version="custom",
                                attacks=[stage], seed=seed, device="cpu")
  ref.apgd.n_restarts = 1  # standard's; the custom version keeps the constructor's 5
  ref.square.n_queries = SQUARE_QUERIES
  ref.logger.setLevel(logging.WARNING)
  with flush_denormals(ftz):
    x_adv, y_adv = ref.run_standard_evaluation(torch.tensor(to_nchw(x)),
                                               torch.tensor(y).long(), batch_size=len(x))
  return np.ascontiguousarray(x_adv.numpy().transpose(0, 2, 3, 1)), y_adv.numpy() == y


def _signflip_null(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Exact law of ``sum_i s_i |d_i|`` for independent fair signs ``s_i``: ``(values, probs)``."""
  d = np.abs(d[d != 0]).astype(int)
  top = int(d.sum())
  prob = np.zeros(2 * top + 1)
  prob[top] = 1.0
  for v in d:
    prob = 0.5 * (np.roll(prob, v) + np.roll(prob, -v))  # never wraps: |sum| <= top
  return np.arange(-top, top + 1), prob


def paired_comparison(ours: list[np.ndarray], ref: list[np.ndarray]) -> dict:
  """Two-sided paired test of robust flags from K seeds on each side (K = 1: McNemar's exact test).

  Per point, ``D_i = sum_k (r_ik - r'_ik)`` (ours minus the reference, seed k paired with
  seed k). Under "same attack" ours and the reference are exchangeable point by point, so
  ``D_i`` is symmetric and independent across points: the null law of ``T = sum_i D_i`` is
  that of ``sum_i s_i |D_i|`` with fair signs (exact, :func:`_signflip_null`). Returns
  ``diff = T / (K N)`` (ours minus reference robust accuracy), its two-sided p-value, the
  ``band`` = largest |diff| with p >= ALPHA, ``b``/``c`` = discordant counts summed over
  seeds, and ``agreement`` = the mean over seeds of the fraction of points with equal flags.
  """
  o, r = np.asarray(ours, bool), np.asarray(ref, bool)
  k, n = o.shape
  d = (o.astype(int) - r.astype(int)).sum(0)
  t = int(d.sum())
  vals, prob = _signflip_null(d)
  tail = lambda u: float(prob[np.abs(vals) >= abs(u)].sum())
  p = tail(t) if vals.size > 1 else 1.0
  ok = [abs(v) for v in vals if v >= 0 and tail(v) >= ALPHA]
  return dict(n=n, seeds=k, b=int(np.sum(o & ~r)), c=int(np.sum(~o & r)),
              ours=float(o.mean()), ref=float(r.mean()), diff=t / (k * n), p=p,
              band=max(ok, default=0) / (k * n), agreement=float(np.mean(o == r)))


def cascade_adds(robust: dict[str, np.ndarray], clean: np.ndarray) -> dict[str, int]:
  """Clean-correct points each stage breaks that the stages before it (STAGES order) leave robust."""
  alive = clean.copy()
  adds = {}
  for s in STAGES:
    adds[s] = int(np.sum(alive & ~robust[s]))
    alive = alive & robust[s]
  return adds


@functools.lru_cache(maxsize=None)
def setup():
  """Trained weights, masking constants, the first N test points, the torch twin."""
  x_tr, y_tr, x_te, y_te = digits_data()
  p = masking_params(train_digits(x_tr, y_tr, c1=C1, c2=C2))
  return p, x_te[:N], y_te[:N], TorchEveryStage(p)


@functools.lru_cache(maxsize=None)
def stage_results(stage: str, seed: int = 0):
  """``(ours AutoAttackResult, ref x_adv, ref robust)`` for one stage alone."""
  p, x, y, model = setup()
  ours = run_ours(p, x, y, stage, seed)
  ref_x, ref_r = run_reference(model, x, y, stage, seed)
  return ours, ref_x, ref_r


def stage_flags(stage: str, seeds: int) -> tuple[list, list]:
  """Robust flags of seeds 0..seeds-1: ``(ours, reference)``."""
  res = [stage_results(stage, k) for k in range(seeds)]
  return [v[0].robust for v in res], [v[2] for v in res]


# ---------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------

pytestmark = pytest.mark.slow


def test_twin_agrees_and_groups_behave():
  p, x, y, model = setup()
  rng = np.random.default_rng(0)
  xs = np.concatenate([x, np.clip(x + rng.uniform(-EPS, EPS, x.shape), 0, 1)]).astype(np.float32)
  fn = every_stage_logits_fn(p)
  zj = np.asarray(jax.jit(fn)(xs))
  with torch.no_grad():
    zt = model(torch.tensor(to_nchw(xs))).numpy()
  grp_s = np.asarray(GROUPS)[zj.argmax(-1)]
  err = np.abs(zj - zt).max(-1) / np.asarray(SCALES)[grp_s]  # in unscaled logits
  # Float32 rounding of the CNN (measured <= 1e-5) and, in DLR, of sin(omega V^T x) with
  # |arg| up to ~1e3 (~1e-3 rad, times A * gate: measured <= 2e-3).
  assert err[grp_s != DLR].max() <= 1e-4 and err[grp_s == DLR].max() <= 5e-3
  assert np.array_equal(zj.argmax(-1), zt.argmax(-1))
  clean = zj[:N].argmax(-1) == y
  assert clean.mean() > 0.95
  # The masking does what the module docstring says, on the clean-correct points.
  grp = grp_s[:N]
  assert all(np.sum(grp == k) >= 60 for k in (SAT, DLR, QUANT))
  ce = lambda u: -jnp.sum(jax.nn.log_softmax(fn(u))[jnp.arange(N), y])
  g_ce = np.abs(np.asarray(jax.grad(ce)(jnp.asarray(x)))).reshape(N, -1).max(1)
  assert np.all(g_ce[grp == QUANT] == 0)  # quantised input: no gradient at all
  assert np.mean(g_ce[(grp == DLR) & clean] == 0) > 0.9  # CE saturated (scale 1e4)
  assert 0.1 < np.mean(g_ce[(grp == SAT) & clean] > 0) < 0.9  # scale 10: CE alive on some
  ranked = lambda u: jnp.sort(fn(u), -1)
  per_px = lambda f: np.abs(np.asarray(jax.grad(f)(jnp.asarray(x)))).reshape(N, -1).mean(1)
  g_top2 = per_px(lambda u: jnp.sum(ranked(u)[:, -1] - ranked(u)[:, -2]))
  g_third = per_px(lambda u: jnp.sum(ranked(u)[:, -3]))
  d = (grp == DLR) & clean
  assert np.median(g_third[d]) > 10 * np.median(g_top2[d])  # rank 3 shattered, the top two smooth


@pytest.mark.parametrize("stage", STAGES)
def test_stage_alone_agrees_with_pyautoattack(stage):
  p, x, y, model = setup()
  ours, ref_x, ref_r = stage_results(stage)
  st = paired_comparison(*stage_flags(stage, SEEDS[stage]))
  msg = f"{stage}: {st}"
  assert st["p"] >= ALPHA, msg  # two-sided: neither side significantly stronger
  assert st["agreement"] >= MIN_AGREEMENT[stage], msg
  # Both sides' examples are valid, and a point one side breaks is broken for the other model too.
  for xa in (ours.x_adv, ref_x):
    assert np.abs(xa - x).max() <= EPS + 1e-6 and xa.min() >= 0 and xa.max() <= 1
  with torch.no_grad():
    pred_t = model(torch.tensor(to_nchw(ours.x_adv))).numpy().argmax(-1)
  pred_j = np.asarray(jax.jit(every_stage_logits_fn(p))(ref_x)).argmax(-1)
  assert np.mean((pred_t == y) == ours.robust) >= 0.99, msg
  assert np.mean((pred_j == y) == ref_r) >= 0.99, msg


def test_every_stage_adds_points_on_both_implementations():
  p, x, y, _ = setup()
  pred = np.asarray(jax.jit(every_stage_logits_fn(p))(x)).argmax(-1)
  clean, grp = pred == y, np.asarray(GROUPS)[pred]
  ours = {s: stage_results(s)[0].robust for s in STAGES}
  ref = {s: stage_results(s)[2] for s in STAGES}
  for name, r in (("ours", ours), ("pyautoattack", ref)):
    adds = cascade_adds(r, clean)
    # APGD-CE, then APGD-T beyond it, FAB-T beyond both, Square beyond all three.
    assert min(adds.values()) >= MIN_ADDS, (name, adds)
    # APGD-T beats APGD-CE outright on the SAT classes (measured gap: 11-15 points of ~100).
    sat = grp == SAT
    assert r["apgd-t"][sat].sum() <= r["apgd-ce"][sat].sum() - 5, name
    # On QUANT, the gradient stages are blind: they break at most their random start's catch.
    q = (grp == QUANT) & clean
    assert all(np.sum(q & ~r[s]) <= 3 for s in ("apgd-ce", "apgd-t", "fab-t")), name
    assert np.sum(q & ~r["square"]) >= MIN_ADDS, name


# ---------------------------------------------------------------------------
# `python tests/attacks_stage_agreement_test.py [--seeds K] [--stages S,..] [--no_ftz]`: the tables in
# docs/evaluation.md. Seed 0 is the CI test's comparison; seeds 0..K-1 on both sides give
# the seed-to-seed disagreement (MIN_AGREEMENT) and a test of the mean robust accuracies.
# ---------------------------------------------------------------------------


def _pairwise(a: list, b: list | None = None) -> float:
  """Mean number of points whose flags differ: within ``a`` (pairs), or between ``a`` and ``b``."""
  if b is None:
    d = [np.sum(a[i] != a[j]) for i in range(len(a)) for j in range(i + 1, len(a))]
  else:
    d = [np.sum(u != v) for u in a for v in b]
  return float(np.mean(d)) if d else float("nan")


def _main(argv) -> int:
  import argparse
  import time
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--seeds", type=int, default=2, help="seeds 0..K-1 on each side")
  ap.add_argument("--no_ftz", action="store_true", help="the reference with torch's default "
                  "float semantics (subnormals kept)")
  ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
  args = ap.parse_args(argv)
  stages = args.stages.split(",")
  if any(s not in STAGES for s in stages):
    ap.error(f"--stages: valid stages are {STAGES}")
  t0 = time.perf_counter()
  p, x, y, model = setup()
  pred = np.asarray(jax.jit(every_stage_logits_fn(p))(x)).argmax(-1)
  clean, grp = pred == y, np.asarray(GROUPS)[pred]
  first, multi, flags = [], [], {}
  for s in stages:
    k = max(args.seeds, SEEDS[s])
    o = [run_ours(p, x, y, s, j).robust for j in range(k)]
    r = [run_reference(model, x, y, s, j, ftz=not args.no_ftz)[1] for j in range(k)]
    flags[s] = (o[0], r[0])
    first.append((s, paired_comparison(o[:SEEDS[s]], r[:SEEDS[s]])))
    ao, ar = [v.mean() for v in o], [v.mean() for v in r]
    multi.append((s, ao, ar, paired_comparison(o, r), _pairwise(o), _pairwise(r),
                  _pairwise(o, r)))
  print(f"N = {N}, eps = {EPS}, Square queries = {SQUARE_QUERIES}, "
        f"reference {'with torch defaults' if args.no_ftz else 'flushing subnormals'}, "
        f"{time.perf_counter() - t0:.0f} s\n")
  print("The CI test's comparison:\n")
  print("| stage | seeds | robust acc. ours | pyautoattack | difference (b, c) | "
        "99.9 % band | p | agreement (floor) |")
  print("|---|---|---|---|---|---|---|---|")
  for s, st in first:
    print(f"| {s} | {st['seeds']} | {st['ours']:.2%} | {st['ref']:.2%} | "
          f"{100 * st['diff']:+.2f} pp ({st['b']}, {st['c']}) | ±{100 * st['band']:.2f} pp | "
          f"{st['p']:.2f} | {st['agreement']:.2%} (≥ {MIN_AGREEMENT[s]:.1%}) |")
  print("\nSeeds 0..K-1 on each side:\n")
  print(f"| stage | K | mean robust acc. ours ± sd | pyautoattack ± sd | paired p | "
        f"points differing: ours-ours / ref-ref / ours-ref (of {N}) |")
  print("|---|---|---|---|---|---|")
  for s, ao, ar, st, so, sr, cr in multi:
    sd = lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0
    print(f"| {s} | {len(ao)} | {np.mean(ao):.2%} ± {sd(ao):.2%} | "
          f"{np.mean(ar):.2%} ± {sd(ar):.2%} | {st['p']:.2g} | "
          f"{so:.1f} / {sr:.1f} / {cr:.1f} |")
  print()
  for name, i in (("ours", 0), ("pyautoattack", 1)) if len(stages) == len(STAGES) else ():
    r = {s: flags[s][i] for s in STAGES}
    q = (grp == QUANT) & clean
    print(f"{name} (seed 0): cascade adds {cascade_adds(r, clean)}; SAT classes robust after "
          f"APGD-CE {r['apgd-ce'][grp == SAT].sum()} / APGD-T {r['apgd-t'][grp == SAT].sum()} of "
          f"{(grp == SAT).sum()}; QUANT points broken "
          f"{ {s: int(np.sum(q & ~r[s])) for s in STAGES} } of {q.sum()}")
  return 0


if __name__ == "__main__":
  sys.exit(_main(sys.argv[1:]))

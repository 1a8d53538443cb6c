"""``kdrobust.teachers.select``: the ranking rule, class-balanced points, input checks, a run.

Three tiny converted teachers (tiny_cnn, trained for a few full-batch Adam
steps on the synthetic 8x8x3 data, one architecture so the kernels compile
once) are written in a module fixture; the end-to-end run uses 40 points
per source and 5 APGD iterations.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
import pytest

from kdrobust import config_lib
from kdrobust import data as data_lib
from kdrobust import evaluate
from kdrobust import models
from kdrobust import teachers as teachers_lib
from kdrobust.attacks import transfer
from kdrobust.data import synthetic
from kdrobust.evaluation import runner
from kdrobust.teachers import convert
from kdrobust.teachers import select

SYN = "synthetic:8x8x3:10"
WIDTHS = (8, 16)


# ----------------------------------------------------------------------------
# choose: a hand-made matrix.
# ----------------------------------------------------------------------------
# Ordered-pair means (M[i, j] + M[j, i]) / 2, by hand:
#   ab (.20 + .30)/2 = .25   ac (.90 + .45)/2 = .675   ad (.30 + .40)/2 = .35
#   bc (.25 + .10)/2 = .175  bd (.70 + .60)/2 = .65    cd (.20 + .30)/2 = .25
# minima: ab .20, ac .45, ad .30, bc .10, bd .60, cd .20
# diagonal: a .50, b .40, c .45, d .35 -> robustness ab .45, cd .40.
HAND = np.array([[.50, .20, .90, .30],
                 [.30, .40, .25, .70],
                 [.45, .10, .45, .20],
                 [.40, .60, .30, .35]])


def _hand(m=HAND, names=("a", "b", "c", "d")):
  return transfer.TransferMatrix(tuple(names), np.array(m, float), (10,) * len(names))


def _members(ranking):
  return [c.members for c in ranking]


def test_choose_ranks_pairs_by_mean_cross_accuracy_with_robustness_tie_break():
  r = select.choose(_hand(), 2)
  # ab and cd tie at .25: ab first by robustness (.45 > .40).
  assert _members(r) == [("a", "c"), ("b", "d"), ("a", "d"), ("a", "b"), ("c", "d"),
                         ("b", "c")]
  assert [c.rank for c in r] == [1, 2, 3, 4, 5, 6]
  best = r[0]
  assert best.score == pytest.approx(.675) and best.min_pair == pytest.approx(.45)
  assert best.robustness == pytest.approx(.475)
  assert r[3].score == pytest.approx(r[4].score) == pytest.approx(.25)
  assert r[3].robustness == pytest.approx(.45) and r[4].robustness == pytest.approx(.40)
  assert _members(select.choose(_hand(), 2, top=2)) == [("a", "c"), ("b", "d")]


def test_choose_min_objective_and_include():
  # The max-min rule prefers bd (worst pair .60) over ac (worst pair .45).
  assert select.choose(_hand(), 2, objective="min")[0].members == ("b", "d")
  assert _members(select.choose(_hand(), 2, include=("d",))) == [
      ("b", "d"), ("a", "d"), ("c", "d")]
  assert _members(select.choose(_hand(), 2, include=("c", "b"))) == [("b", "c")]
  # k = 3: abd = (.25 + .35 + .65)/3, acd = (.675 + .35 + .25)/3, abc = (.25 + .675 + .175)/3,
  # bcd = (.175 + .65 + .25)/3.
  r3 = select.choose(_hand(), 3)
  assert _members(r3) == [("a", "c", "d"), ("a", "b", "d"), ("a", "b", "c"), ("b", "c", "d")]
  assert r3[0].score == pytest.approx((.675 + .35 + .25) / 3)
  assert r3[0].min_pair == pytest.approx(.20)


def test_choose_exact_ties_fall_back_to_robustness_then_matrix_order():
  # Every off-diagonal entry equal: the score ties everywhere; the diagonal decides.
  m = np.full((3, 3), .5)
  np.fill_diagonal(m, [.1, .3, .2])
  assert _members(select.choose(_hand(m, "xyz"), 2)) == [("y", "z"), ("x", "y"), ("x", "z")]
  # Everything equal: matrix order. Pair sums in another order still tie.
  m = np.array([[.3, .1, .2], [.2, .3, .1], [.1, .2, .3]])
  assert _members(select.choose(_hand(m, "xyz"), 2)) == [("x", "y"), ("x", "z"), ("y", "z")]
  # k = 1: no pairs; ranked by the diagonal alone.
  r1 = select.choose(_hand(), 1)
  assert _members(r1) == [("a",), ("c",), ("b",), ("d",)] and r1[0].score is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), "positive integer"),
    (dict(k=5), "only 4 candidate"),
    (dict(k=2, include=("e",)), "not candidates"),
    (dict(k=1, include=("a", "b")), "forces 2 teachers"),
    (dict(k=2, objective="median"), "Unknown objective"),
    (dict(k=2, max_subsets=5), "more than the 5 scored"),
])
def test_choose_refuses_bad_requests(kwargs, match):
  k = kwargs.pop("k")
  with pytest.raises(select.SelectionError, match=match):
    select.choose(_hand(), k, **kwargs)


def test_choose_refuses_huge_searches_without_enumerating_and_unmeasured_rows():
  names = [f"t{i}" for i in range(40)]
  big = transfer.TransferMatrix(tuple(names), np.zeros((40, 40)), (1,) * 40)
  with pytest.raises(select.SelectionError, match="subsets of size 20"):
    select.choose(big, 20)  # C(40, 20) ~ 1.4e11: must fail at once
  m = HAND.copy()
  m[2] = np.nan
  with pytest.raises(select.SelectionError, match="source.s. c"):
    select.choose(_hand(m), 2)


# ----------------------------------------------------------------------------
# Class-balanced points.
# ----------------------------------------------------------------------------
def test_class_balanced_subset_is_balanced_and_deterministic():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 10, size=500)
  x = np.arange(500)[:, None] * np.ones((1, 3))
  xs, ys = select.class_balanced_subset(x, y, 100, 10, seed=0)
  assert np.bincount(ys, minlength=10).tolist() == [10] * 10
  assert np.array_equal(xs[:, 0].astype(int), np.sort(xs[:, 0]).astype(int))  # dataset order
  assert np.array_equal(y[xs[:, 0].astype(int)], ys)  # x and y stay paired
  xs2, _ = select.class_balanced_subset(x, y, 100, 10, seed=0)
  xs3, _ = select.class_balanced_subset(x, y, 100, 10, seed=1)
  assert np.array_equal(xs, xs2) and not np.array_equal(xs, xs3)
  # 95 over 10 classes: five classes get 10, five get 9.
  counts = np.bincount(select.class_balanced_subset(x, y, 95, 10, seed=3)[1], minlength=10)
  assert sorted(counts.tolist()) == [9] * 5 + [10] * 5
  # Eligible points only; a short class gives what it has (non-strict) or raises (strict).
  ok = y != 3
  idx = select.class_balanced_indices(y, 50, 10, 0, eligible=ok, strict=False)
  assert ok[idx].all() and idx.size == 45
  with pytest.raises(select.SelectionError, match="Class 3 has 0 eligible"):
    select.class_balanced_indices(y, 50, 10, 0, eligible=ok)
  with pytest.raises(select.SelectionError, match="requested from 500"):
    select.class_balanced_indices(y, 501, 10, 0)


# ----------------------------------------------------------------------------
# Tiny converted teachers.
# ----------------------------------------------------------------------------
def _write_converted(out_dir, module_kw, variables, num_classes):
  os.makedirs(out_dir, exist_ok=True)
  var_path = os.path.join(out_dir, convert.VARIABLES_FILE)
  convert.save_variables(variables, var_path)
  with open(var_path, "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
  meta = {"format": convert.FORMAT, "arch": "tiny_cnn", "num_classes": num_classes,
          "model_kwargs": {k: list(v) for k, v in module_kw.items()},
          "variables_file": convert.VARIABLES_FILE, "variables_sha256": sha}
  with open(os.path.join(out_dir, convert.META_FILE), "w") as f:
    json.dump(meta, f)
  return str(out_dir)


@functools.lru_cache(maxsize=None)
def _trainer(num_classes):
  """(module, init, step): one jitted full-batch Adam step per class count."""
  module = models.get("tiny_cnn", num_classes=num_classes, widths=WIDTHS)
  tr = synthetic.load(f"synthetic:8x8x3:{num_classes}", "train")
  x = jnp.asarray(tr["image"], jnp.float32) / 255.0
  y = jnp.asarray(tr["label"])
  opt = optax.adam(2e-2)

  def init(seed):
    v = module.init(jax.random.PRNGKey(seed), x[:1], train=False)
    return v["params"], {k: w for k, w in v.items() if k != "params"}

  @jax.jit
  def step(params, rest, state):
    def loss(p):
      logits = module.apply({"params": p, **rest}, x, train=False)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    g = jax.grad(loss)(params)
    upd, state = opt.update(g, state, params)
    return optax.apply_updates(params, upd), state

  return opt, init, step


def _train(seed, steps, num_classes=10):
  """tiny_cnn fitted by full-batch Adam in inference mode (BN at its initial statistics)."""
  opt, init, step = _trainer(num_classes)
  params, rest = init(seed)
  state = opt.init(params)
  for _ in range(steps):
    params, state = step(params, rest, state)
  return {"params": params, **rest}


@pytest.fixture(scope="module")
def tiny_teachers(tmp_path_factory):
  root = tmp_path_factory.mktemp("teachers")
  paths = {}
  for name, seed, steps in (("a", 0, 40), ("b", 1, 40), ("c", 2, 15)):
    paths[name] = _write_converted(root / name, {"widths": WIDTHS}, _train(seed, steps), 10)
  paths["five"] = _write_converted(root / "five", {"widths": WIDTHS},
                                   _train(3, 0, num_classes=5), 5)
  return paths


def _test_pool():
  return evaluate.load_test_data(mlc.ConfigDict({"data": {"name": SYN, "data_dir": ""}}))


def _loaded(paths, names):
  fns = {}
  for n in names:
    t = teachers_lib.load(n, config_lib.teacher_config(paths[n]))
    fns[n] = runner.flax_logits_fn(t.module, t.variables)
  return fns


def _spec(paths, names="abc"):
  return ",".join(f"{n}={paths[n]}" for n in names)


# ----------------------------------------------------------------------------
# Bad inputs: refused before any compute.
# ----------------------------------------------------------------------------
@pytest.fixture
def no_compute(monkeypatch):
  """Fail the test if the test data is read or an attack is started."""
  def boom(*a, **k):
    raise AssertionError("compute started")
  monkeypatch.setattr(select, "measure", boom)
  monkeypatch.setattr(evaluate, "load_test_data", boom)


@pytest.mark.parametrize("case, match", [
    ("missing", "does not exist"),
    ("no_equals", "expected name=path"),
    ("twice", "given twice"),
    ("bad_name", "must be a Python identifier"),
    ("too_few", "only 3 candidate"),
    ("k0", "k must be a positive integer"),
    ("include_unknown", "not candidates"),
    ("classes", "predicts 5 classes but dataset"),
    ("unknown_dataset", "Unknown dataset 'cifar11'"),
    ("unprepared", "kdrobust.data.prepare cifar10"),
    ("torch_file", "convert it first"),
    ("too_many_points", "exceeds the 128 test points"),
    ("out_exists", "exists: pass --overwrite"),
    ("input_shape", "cannot run on 'synthetic:8x8x1:10' inputs"),
    ("bad_eps", "--eps must be positive"),
])
def test_bad_inputs_fail_before_compute(case, match, tiny_teachers, tmp_path, capsys,
                                        no_compute):
  t = tiny_teachers
  spec, dataset, extra = _spec(t), SYN, []
  if case == "missing":
    spec += f",d={tmp_path / 'nowhere'}"
  elif case == "no_equals":
    spec += f",{t['a']}"
  elif case == "twice":
    spec += f",a={t['b']}"
  elif case == "bad_name":
    spec += f",my-teacher={t['b']}"
  elif case == "too_few":
    extra = ["--k", "4"]
  elif case == "k0":
    extra = ["--k", "0"]
  elif case == "include_unknown":
    extra = ["--include", "z"]
  elif case == "classes":
    spec += f",five={t['five']}"
  elif case == "unknown_dataset":
    dataset = "cifar11"
  elif case == "unprepared":
    dataset, extra = "cifar10", ["--data_dir", str(tmp_path)]
  elif case == "torch_file":
    (tmp_path / "w.pt").write_bytes(b"not really torch")
    spec += f",pt={tmp_path / 'w.pt'}"
  elif case == "too_many_points":
    extra = ["--num_examples", "200"]
  elif case == "out_exists":
    (tmp_path / "sel.json").write_text("{}")
    extra = ["--out", str(tmp_path / "sel.json")]
  elif case == "input_shape":
    dataset = "synthetic:8x8x1:10"  # 3-channel teachers on 1-channel images
  elif case == "bad_eps":
    extra = ["--eps", "0"]
  rc = select.main(["--teachers", spec, "--dataset", dataset, "--k", "2", "--num_examples", "40",
                    *extra])
  err = capsys.readouterr().err
  assert rc == 2, err  # bad input: kdrobust.cli's exit status
  assert match in err, err


# ----------------------------------------------------------------------------
# End to end.
# ----------------------------------------------------------------------------
def test_cli_end_to_end_on_tiny_teachers(tiny_teachers, tmp_path, capsys):
  out = tmp_path / "sel.json"
  rc = select.main(["--teachers", _spec(tiny_teachers), "--dataset", SYN, "--k", "2",
                    "--num_examples", "40", "--n_iter", "5", "--eps", "0.05",
                    "--step_size", "0.02", "--seed", "0", "--out", str(out)])
  printed = capsys.readouterr()
  assert rc == 0, printed.err
  rec = json.loads(out.read_text())
  assert rec["format"] == select.FORMAT and rec["names"] == ["a", "b", "c"]
  assert rec["protocol"]["eps"] == 0.05 and rec["protocol"]["n_iter"] == 5
  m = np.array(rec["matrix"], float)
  assert m.shape == (3, 3) and np.all((m >= 0) & (m <= 1))
  # a is accurate (a full 40 points); c (15 steps) is not: fewer points, with a warning.
  assert rec["n_points"][0] == 40 and rec["n_points"][2] < 40
  assert "WARNING: only" in printed.out and "[3/3] source c" in printed.out
  # The attack works: every source loses points to its own white-box APGD.
  assert np.all(np.diag(m) < 1.0)
  # The choice is choose()'s best subset of the recorded matrix; 3 pairs ranked.
  ranking = select.choose(select.matrix_of(rec), 2)
  assert rec["choice"]["members"] == list(ranking[0].members)
  assert [r["members"] for r in rec["ranking"]] == [list(c.members) for c in ranking]
  assert "source \\ target" in printed.out and "Chosen: " in printed.out
  for n in ranking[0].members:
    assert f"--config.teachers.{n}.path={os.path.abspath(tiny_teachers[n])}" in printed.out
    assert f'"{n}": config_lib.teacher_config(' in rec["config_snippet"]
  # Each row is on the source's own class-balanced correct points; re-measure row 'a'.
  info = data_lib.info(SYN)
  x, y = _test_pool()
  fns = _loaded(tiny_teachers, "abc")
  for i, n in enumerate("abc"):
    idx = np.array(rec["indices"][n])
    assert idx.size == rec["n_points"][i] <= 40
    counts = np.bincount(y[idx], minlength=info.num_classes)
    assert counts.max() <= 4 and (idx.size < 40 or np.all(counts == 4))
    assert np.all(transfer.predict(fns[n], x[idx]) == y[idx])
  idx = np.array(rec["indices"]["a"])
  res = transfer.transfer_attack(fns["a"], fns, x[idx], y[idx], eps=0.05, step_size=0.02,
                                 n_iter=5, key=0)
  np.testing.assert_allclose(m[0], [res.target_accuracy[n] for n in "abc"])


def test_measure_at_zero_eps_gives_clean_accuracies(tiny_teachers):
  """eps = 0 changes nothing: diagonal 1 (correct points), off-diagonal = clean accuracy."""
  x, y = _test_pool()
  fns = _loaded(tiny_teachers, "ab")
  ms = select.measure(fns, x, y, num_classes=10, num_examples=30, eps=0.0, step_size=0.05,
                      n_iter=2, log=None)
  np.testing.assert_array_equal(np.diag(ms.matrix.matrix), [1.0, 1.0])
  ia = ms.indices["a"]
  want = np.mean(transfer.predict(fns["b"], x[ia]) == y[ia])
  assert ms.matrix.matrix[0, 1] == pytest.approx(want)
  assert 0 < ms.clean_accuracy["a"] <= 1 and ms.matrix.n_points[0] == ia.size


def test_unrankable_matrix_is_still_written(tiny_teachers, tmp_path, monkeypatch, capsys):
  """A source with no correct point leaves a NaN row: exit 1, but the matrix is kept."""
  m = np.array([[.5, .4, .3], [.2, .6, .1], [np.nan] * 3])

  def fake(fns, x, y, **kw):
    assert tuple(fns) == ("a", "b", "c") and kw["num_examples"] == 40
    return select.Measurement(transfer.TransferMatrix(tuple(fns), m, (40, 40, 0)),
                              {n: .5 for n in fns}, {n: np.arange(3) for n in fns}, {})

  monkeypatch.setattr(select, "measure", fake)
  out = tmp_path / "sel.json"
  rc = select.main(["--teachers", _spec(tiny_teachers), "--dataset", SYN, "--k", "2",
                    "--num_examples", "40", "--out", str(out)])
  printed = capsys.readouterr()
  assert rc == 1 and "Unmeasured transferability for source(s) c" in printed.err
  rec = json.loads(out.read_text())
  assert rec["choice"] is None and rec["matrix"][2] == [None] * 3
  assert rec["matrix"][0] == [.5, .4, .3] and "c (n=0)" in printed.out

"""``python -m kdrobust.evaluate``: the library call, the JSON file, the CLI, the warnings.

One tiny run (tiny_cnn on the synthetic 8x8 dataset, 2 steps) is trained in
the test; every evaluation uses at most 32 test points.
"""

import copy
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdrobust import evaluate
from kdrobust import train
from kdrobust.evaluation import masking
from kdrobust.evaluation import presets
from kdrobust.evaluation import report
from kdrobust.evaluation import runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_test import tiny_config  # noqa: E402  pylint: disable=g-import-not-at-top

EPS = "2/255,0.1"
TOP_FIELDS = ("format", "name", "workdir", "checkpoint", "dataset", "model", "norm", "eps",
              "eps_str", "num_examples", "clean_acc", "autoattack_acc", "robust_acc",
              "worst_case_acc", "robustbench", "attacks", "aa_version", "presets", "iterate",
              "seed", "batch_size", "aa_batch_size", "per_eps", "versions", "device",
              "precision", "batch_norm", "warnings", "created", "time_s")
# RobustBench's model_info/cifar10/Linf/*.json keys (Zhang2019Theoretically.json, plus
# "unreliable" as in most entries) [C:robustbench@78fcc9e].
ROBUSTBENCH_KEYS = ["link", "name", "authors", "additional_data", "number_forward_passes",
                    "dataset", "venue", "architecture", "eps", "clean_acc", "reported",
                    "footnote", "autoattack_acc", "unreliable"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(tiny_config(total_steps=2), d)
  return d


@pytest.fixture(scope="module")
def record(run_dir):
  return evaluate.evaluate_run(run_dir, eps=EPS, num_examples=32, batch_size=16,
                               progress=False, log=None)


def _accuracies(rec):
  for e in rec["per_eps"]:
    yield from e["accuracy"].values()
    yield e["worst_case"]
    for st in e.get("autoattack", {}).get("stages", []):
      yield st["robust_acc"]


# ----------------------------------------------------------------------------
# The record and the JSON file.
# ----------------------------------------------------------------------------
def test_record_fields_and_json(record, run_dir):
  for k in TOP_FIELDS:
    assert k in record, k
  assert record["num_examples"] == 32
  assert record["format"] == "kdrobust.evaluate/2"
  assert record["iterate"] == {"fgsm": "last", "pgd20": "last", "cw": "first"}
  assert record["checkpoint"]["step"] == 2
  assert record["norm"] == "Linf"
  assert record["eps_str"] == "0.1" and record["eps"] == pytest.approx(0.1)  # config.eval.eps
  assert [e["eps_str"] for e in record["per_eps"]] == ["2/255", "0.1"]
  assert record["per_eps"][0]["eps"] == 2 / 255
  assert set(record["versions"]) >= {"kdrobust", "jax", "flax"}
  assert record["robustbench"]["clean_acc"] == f"{100 * record['clean_acc']:.2f}"
  path = os.path.join(run_dir, "eval", record["name"] + ".json")
  assert record["path"] == path
  with open(path) as f:
    saved = json.load(f)
  assert saved["clean_acc"] == record["clean_acc"]
  assert saved["per_eps"] == json.loads(json.dumps(record["per_eps"]))
  assert all(0.0 <= a <= 1.0 for a in _accuracies(record))


def test_attack_ordering(record):
  for e in record["per_eps"]:
    acc = e["accuracy"]
    assert set(acc) == {"clean", "fgsm", "pgd20", "cw", "aa"}
    assert acc["aa"] <= acc["clean"]  # AutoAttack only removes clean-correct points
    assert e["worst_case"] <= min(acc.values())
    aa = e["autoattack"]
    assert aa["clean_acc"] == pytest.approx(acc["clean"])
    assert aa["robust_acc"] == pytest.approx(acc["aa"])
    stages = [s["robust_acc"] for s in aa["stages"]]
    assert stages and all(b <= a + 1e-9 for a, b in zip(stages, stages[1:]))
    assert stages[-1] == pytest.approx(acc["aa"])
    assert aa["reeval_mismatch"] == 0  # deterministic, inference-mode model (P2)
  assert record["autoattack_acc"] == record["per_eps"][1]["accuracy"]["aa"]


def test_refuses_to_overwrite(record, run_dir):
  with pytest.raises(report.OutputExistsError, match="--overwrite"):
    evaluate.evaluate_run(run_dir, eps=EPS, num_examples=32, batch_size=16, progress=False,
                          log=None)
  kw = dict(eps="0.1", num_examples=8, attacks="clean", name="mine", progress=False, log=None)
  first = evaluate.evaluate_run(run_dir, **kw)
  with pytest.raises(report.OutputExistsError):
    evaluate.evaluate_run(run_dir, **kw)
  again = evaluate.evaluate_run(run_dir, overwrite=True, **kw)
  assert again["clean_acc"] == first["clean_acc"]


def test_bad_inputs_fail_before_compute(run_dir, tmp_path):
  with pytest.raises(ValueError, match="Unknown attack"):
    evaluate.evaluate_run(run_dir, attacks="clean,pgd7", log=None)
  with pytest.raises(ValueError, match="best, latest or a step"):
    evaluate.evaluate_run(run_dir, checkpoint="newest", log=None)
  with pytest.raises(ValueError, match="no checkpoint at step 7"):
    evaluate.evaluate_run(run_dir, checkpoint=7, log=None)
  with pytest.raises(ValueError, match="not a kdrobust run"):
    evaluate.evaluate_run(str(tmp_path), log=None)
  with pytest.raises(ValueError, match="Bad epsilon"):
    evaluate.evaluate_run(run_dir, eps="8/two", log=None)


def test_plot_needs_matplotlib(run_dir):
  try:
    import matplotlib  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    with pytest.raises(ValueError, match="matplotlib"):
      evaluate.evaluate_run(run_dir, plot=True, log=None)
    return
  rec = evaluate.evaluate_run(run_dir, eps=EPS, num_examples=8, attacks="clean,fgsm",
                              plot=True, progress=False, log=None)
  assert os.path.getsize(rec["plot"]) > 0


def _figure(records, **kw):
  pytest.importorskip("matplotlib")
  fig = report.accuracy_figure(records, **kw)
  ax = fig.axes[0]
  report.require_matplotlib().close(fig)
  return ax


def test_plot_is_titled_by_method_and_model_and_starts_at_eps_zero(record):
  assert record["method"] == "pgd_at" and record["model"]  # read from the run's config
  ax = _figure([record])
  assert "pgd_at" in ax.get_title() and record["model"] in ax.get_title()
  assert record["name"] not in ax.get_title()  # not the file name
  assert ax.get_ylim() != (0.0, 100.0)  # autoscaled
  labels = [line.get_label() for line in ax.get_lines()]
  assert labels == ["clean", "FGSM", "PGD-20", "CW-inf", "AA"]
  for line in ax.get_lines():
    assert line.get_xdata()[0] == 0.0  # eps = 0: the clean accuracy, for every attack
    assert line.get_ydata()[0] == pytest.approx(100 * record["clean_acc"], abs=1e-9)
    assert list(line.get_xdata()[1:]) == pytest.approx([2.0, 25.5], abs=1e-9)  # x 1/255


def test_plot_compare_draws_one_line_per_run_labelled_by_method_and_model(record):
  runs = [record, dict(record, method="trades", model="resnet18"),
          dict(record, method="trades", model="resnet18", workdir="/runs/trades_seed1")]
  runs[1]["per_eps"] = [dict(e, worst_case=0.5 * e["worst_case"]) for e in record["per_eps"]]
  ax = _figure(runs)
  labels = [line.get_label() for line in ax.get_lines()]
  assert len(labels) == 3
  assert labels[0] == f"pgd_at ({record['model']})"
  assert labels[1].startswith("trades (resnet18)") and labels[1] != labels[2]
  assert labels[2].endswith("[trades_seed1]")  # same method and model: the run's directory
  ys = [list(line.get_ydata()) for line in ax.get_lines()]
  assert ys[0] == pytest.approx([100 * record["clean_acc"]] + [
      100 * e["worst_case"] for e in sorted(record["per_eps"], key=lambda e: e["eps"])])
  assert ys[1][1:] == pytest.approx([0.5 * v for v in ys[0][1:]])
  assert "worst case over FGSM, PGD-20, CW-inf, AA" in ax.get_ylabel()
  assert "PGD-20" in _figure(runs, column="pgd20").get_ylabel()
  with pytest.raises(ValueError, match="valid: worst, clean"):
    report.accuracy_figure(runs, column="pgd")


def test_compare_evaluates_or_reuses_the_other_runs(run_dir, tmp_path, monkeypatch):
  pytest.importorskip("matplotlib")
  other = str(tmp_path / "other")
  shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("eval"))
  drawn = []
  real = report.accuracy_figure
  monkeypatch.setattr(report, "accuracy_figure",
                      lambda recs, **kw: drawn.append(len(recs)) or real(recs, **kw))
  kw = dict(eps="0.1", num_examples=8, attacks="clean,fgsm", plot=True, compare=other,
            progress=False, log=None)
  rec = evaluate.evaluate_run(run_dir, name="cmp1", **kw)
  assert drawn == [2] and os.path.getsize(rec["plot"]) > 0
  (c,) = rec["compare"]
  assert not c["reused"] and os.path.exists(c["path"])
  assert c["path"] == os.path.join(other, "eval", "best-step2_linf_eps0.1_n8_clean-fgsm.json")
  rec = evaluate.evaluate_run(run_dir, name="cmp2", plot_attack="fgsm", **kw)
  assert rec["compare"][0]["reused"] and drawn == [2, 2]


def test_bad_compare_fails_before_compute(run_dir, tmp_path, monkeypatch, capsys):
  pytest.importorskip("matplotlib")
  monkeypatch.setattr(evaluate, "load_run_weights",
                      lambda *a, **k: pytest.fail("computed before checking --compare"))
  base = [f"--workdir={run_dir}", "--num_examples=8", "--attacks=clean,fgsm", "--plot",
          "--no_progress", "--name=badcmp"]
  for extra, msg in (
      ([f"--compare={tmp_path / 'nope'},{run_dir}"], "is not a kdrobust run directory"),
      ([f"--compare={run_dir}"], "is the --workdir run itself"),
      (["--plot_attack=pgd20", f"--compare={tmp_path}"], "not among --attacks"),
  ):
    capsys.readouterr()
    assert evaluate.main(base + extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and msg in err, err
  with pytest.raises(ValueError, match="add --plot"):
    evaluate.evaluate_run(run_dir, compare=str(tmp_path), log=None)


# ----------------------------------------------------------------------------
# Loading, inference mode, no recompilation.
# ----------------------------------------------------------------------------
def test_load_run_inference_mode(run_dir):
  module, variables, config, step = evaluate.load_run(run_dir, "latest")
  assert step == 2 and config.model.name == "tiny_cnn"
  assert set(variables) <= {"params", "batch_stats"}
  x, y = evaluate.load_test_data(config, 16)
  assert x.shape == (16, 8, 8, 1) and y.shape == (16,)
  fn = runner.flax_logits_fn(module, variables)
  # Outputs do not depend on the batch composition (batch norm in inference mode, P1).
  np.testing.assert_allclose(np.asarray(fn(x[:4])), np.asarray(fn(x))[:4], rtol=1e-5,
                             atol=1e-6)


def test_nothing_recompiles_across_batches_and_eps(run_dir):
  module, variables, config, _ = evaluate.load_run(run_dir, "latest")
  x, y = evaluate.load_test_data(config, 18)
  fn = runner.flax_logits_fn(module, variables)
  kw = dict(attacks="clean,fgsm", batch_size=6, progress=False, log=None)  # 3 batches
  c0 = runner.compile_counts()
  runner.evaluate_arrays(fn, x, y, eps="1/255", **kw)
  c1 = runner.compile_counts()
  assert all(c1[k] - c0[k] <= 1 for k in c0)
  # Other epsilons, other variables of the same architecture: no new compilation.
  module2, variables2, _, _ = evaluate.load_run(run_dir, "latest")
  assert module2 is not module
  fn2 = runner.flax_logits_fn(module2, jax.tree.map(lambda v: v * 0.5, variables2))
  res = runner.evaluate_arrays(fn2, x, y, eps="2/255,0.1", **kw)
  assert runner.compile_counts() == c1
  assert len(res["per_eps"]) == 2


def test_transfer_from_another_run(run_dir):
  rec = evaluate.evaluate_run(run_dir, eps="0.1", num_examples=16, attacks="clean,pgd20",
                              transfer_from=run_dir, write=False, progress=False, log=None)
  acc = rec["per_eps"][0]["accuracy"]
  assert 0.0 <= acc["transfer"] <= 1.0
  assert rec["transfer_from"]["step"] == 2


def test_teacher_gradients_and_local_linearity(run_dir):
  rec = evaluate.evaluate_run(run_dir, eps="2/255,0.1", num_examples=16, attacks="clean",
                              teacher=run_dir, local_linearity=True, write=False,
                              progress=False, log=None)
  tg = rec["diagnostics"]["teacher_gradients"]
  assert tg["gd"] == pytest.approx(0.0, abs=1e-6)  # the run is its own teacher
  assert tg["gc"] == pytest.approx(1.0, abs=1e-5)
  assert tg["teacher_clean_acc"] == rec["clean_acc"]
  ll = rec["diagnostics"]["local_linearity"]["per_eps"]
  assert set(ll) == {"2/255", "0.1"}
  assert 0.0 <= ll["2/255"]["mean"] <= ll["2/255"]["max"]
  assert ll["0.1"]["mean"] >= ll["2/255"]["mean"]  # a larger ball is less linear
  table = report.format_table(rec)
  assert "GD 0" in table and "Local linearity" in table


# ----------------------------------------------------------------------------
# The CLI.
# ----------------------------------------------------------------------------
def test_cli_prints_table(run_dir, capsys):
  cmd = [sys.executable, "-m", "kdrobust.evaluate", f"--workdir={run_dir}",
         "--attacks=clean,pgd20", "--num_examples=16", "--eps=4/255,0.1", "--no_progress"]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "PGD-20" in out.stdout and "4/255" in out.stdout and "Wrote" in out.stdout
  name = "best-step2_linf_eps4-255_0.1_n16_clean-pgd20"
  with open(os.path.join(run_dir, "eval", name + ".json")) as f:
    saved = json.load(f)
  assert saved["command"].startswith("python -m kdrobust.evaluate")
  capsys.readouterr()
  assert evaluate.main(cmd[3:]) == 2  # in-process: the same file exists (kdrobust.cli: 2)
  assert "--overwrite" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# AutoAttack's batch size, RobustBench's model info.
# ----------------------------------------------------------------------------
def test_autoattack_batch_size_is_its_own_setting(record, run_dir, monkeypatch):
  # The default (config.eval.aa_batch_size = 250, the reference's) is capped at N = 32,
  # whatever --batch_size (16) is.
  assert record["batch_size"] == 16 and record["aa_batch_size"] == 32
  assert all(e["autoattack"]["batch_size"] == 32 for e in record["per_eps"])
  assert record["robustbench"]["aa_batch_size"] == 32
  seen = []
  aa_lib = __import__("kdrobust.attacks.autoattack", fromlist=["autoattack"])
  real = aa_lib.autoattack
  monkeypatch.setattr(aa_lib, "autoattack",
                      lambda *a, **kw: seen.append(kw["batch_size"]) or real(*a, **kw))
  rec = evaluate.evaluate_run(run_dir, eps="0.1", num_examples=12, attacks="clean,aa",
                              batch_size=4, aa_batch_size=5, write=False, progress=False,
                              log=None)
  assert seen == [5] and rec["aa_batch_size"] == 5 and rec["batch_size"] == 4
  assert "AutoAttack batch 5" in report.format_table(rec)
  with pytest.raises(ValueError, match="aa_batch_size must be positive"):
    evaluate.evaluate_run(run_dir, aa_batch_size=0, log=None)


def test_robustbench_model_info(run_dir, capsys):
  argv = [f"--workdir={run_dir}", "--num_examples=16", "--eps=0.1", "--attacks=clean,aa",
          "--no_progress", "--robustbench", "--robustbench_field", "venue=ICLR 2099",
          "--robustbench_field", "additional_data=true", "--aa_batch_size=8"]
  assert evaluate.main(argv) == 0  # in process: the compiled kernels are reused
  out = capsys.readouterr().out
  name = "best-step2_linf_eps0.1_n16_clean-aa"
  path = os.path.join(run_dir, "eval", name + ".json")
  rb_path = os.path.join(run_dir, "eval", name + ".robustbench.json")
  assert f"Wrote {path} and {rb_path}" in out
  with open(path) as f:
    rec = json.load(f)
  with open(rb_path) as f:
    info = json.load(f)
  assert list(info) == ROBUSTBENCH_KEYS
  assert info["clean_acc"] == f"{100 * rec['clean_acc']:.2f}" == rec["robustbench"]["clean_acc"]
  assert info["autoattack_acc"] == f"{100 * rec['autoattack_acc']:.2f}" == info["reported"]
  assert info["eps"] == "0.1" and info["number_forward_passes"] == 1
  assert info["venue"] == "ICLR 2099" and info["additional_data"] is True
  assert info["unreliable"] is False and info["architecture"] == "tiny_cnn"
  assert "first 16 test points" in info["footnote"] and "batch size 8" in info["footnote"]
  mi = rec["robustbench"]["model_info"]
  assert mi["path"] == rb_path and mi["to_fill"] == ["link", "authors"]
  assert mi["full_test_set"] is None and "not a RobustBench dataset" in mi["notes"][0]
  assert rec["robustbench_model_info"] == info
  # Both files are protected from overwriting; bad requests fail before any compute.
  assert evaluate.main(argv) == 2
  assert "--overwrite" in capsys.readouterr().err
  for bad, msg in (([], "needs AutoAttack"), (["--attacks=clean,aa", "--aa_version=plus"],
                                               "aa_version standard"),
                   (["--attacks=clean,aa", "--robustbench_field", "clean_acc=99"],
                    "settable: link"),
                   (["--attacks=clean,aa", "--robustbench_field", "additional_data=maybe"],
                    "true or false")):
    assert evaluate.main([f"--workdir={run_dir}", "--attacks=clean", "--robustbench",
                          "--name=bad"] + bad) == 2
    assert msg in capsys.readouterr().err
  assert evaluate.main([f"--workdir={run_dir}", "--robustbench_field", "venue=x"]) == 2
  assert "needs --robustbench" in capsys.readouterr().err


def test_robustbench_fields_and_architectures():
  arch = evaluate.robustbench_architecture
  assert arch({"name": "wrn34_10"}) == "WideResNet-34-10"
  assert arch({"name": "wrn", "kwargs": {"depth": 28, "width": 10}}) == "WideResNet-28-10"
  assert arch({"name": "resnet18"}) == "ResNet-18"
  assert arch({"name": "preact_resnet18"}) == "PreActResNet-18"
  assert arch({"name": "mobilenet_v2"}) == "MobileNetV2"
  assert arch({"name": "small_cnn"}) == "small_cnn"
  rec = {"robustbench": {"clean_acc": "84.92", "autoattack_acc": "53.08"},
         "dataset": "cifar10", "num_examples": 10000, "eps_str": "8/255", "seed": 0,
         "aa_batch_size": 250, "norm": "Linf", "method": "rslad", "model": "resnet18"}
  info = evaluate.robustbench_model_info(
      rec, architecture="ResNet-18",
      fields=evaluate.parse_robustbench_fields({"external": 52.5, "link": "https://x"}))
  assert list(info) == ROBUSTBENCH_KEYS[:13] + ["external", "unreliable"]
  assert info["external"] == "52.50" and info["dataset"] == "cifar10"
  summary = evaluate._robustbench_summary(rec, info, "p")  # pylint: disable=protected-access
  assert summary["model_info_dir"] == "model_info/cifar10/Linf"
  assert summary["full_test_set"] is True and summary["notes"] == []
  assert summary["to_fill"] == ["authors", "venue"]


# ----------------------------------------------------------------------------
# Gradient-masking warnings.
# ----------------------------------------------------------------------------
def _constant_logits(x):
  """A model whose output ignores its input: zero gradients, loss flat under noise."""
  return jnp.zeros((x.shape[0], 10)).at[:, 0].set(3.0) + 0.0 * jnp.sum(x)


def test_constant_model_triggers_noise_and_zero_gradient_warnings():
  x = np.random.RandomState(0).rand(16, 8, 8, 1).astype(np.float32)
  y = np.array([0] * 12 + [1] * 4, np.int32)
  res = runner.evaluate_arrays(_constant_logits, x, y, eps="0.1", attacks="clean",
                               batch_size=16, progress=False, log=None)
  s = res["per_eps"][0]["sanity"]
  assert s["num_clean_correct"] == 12 and s["loss_unchanged"] == 12 and s["zero_grad"] == 12
  codes = {w["code"] for w in masking.check_warnings(res)}
  assert {"loss_unchanged_by_noise", "zero_input_gradients"} <= codes


def test_trained_model_has_no_noise_warning(record):
  codes = {w["code"] for w in record["warnings"]}
  assert "zero_input_gradients" not in codes and "loss_unchanged_by_noise" not in codes


def _synthetic():
  """A well-behaved results dict at eps 2/255, 4/255, 8/255."""
  accs = {2: (0.80, 0.70, 0.60, 0.58, 0.56), 4: (0.80, 0.60, 0.50, 0.48, 0.47),
          8: (0.80, 0.45, 0.40, 0.38, 0.37)}
  per_eps = []
  for k, (c, f, p, w, a) in accs.items():
    stages = [{"attack": "apgd-ce", "robust_acc": a + 0.01},
              {"attack": "apgd-t", "robust_acc": a}, {"attack": "fab-t", "robust_acc": a},
              {"attack": "square", "robust_acc": a}]
    per_eps.append({"eps": k / 255, "eps_str": f"{k}/255",
                    "accuracy": {"clean": c, "fgsm": f, "pgd20": p, "cw": w, "aa": a},
                    "worst_case": a,
                    "autoattack": {"stages": stages, "warnings": [], "reeval_mismatch": 0},
                    "sanity": {"num_clean_correct": 100, "loss_unchanged": 0,
                               "loss_unchanged_fraction": 0.0, "zero_grad": 0}})
  return {"per_eps": per_eps}


def _codes(res):
  return [w["code"] for w in masking.check_warnings(res)]


def test_warnings_none_on_a_clean_case():
  assert _codes(_synthetic()) == []


def test_warning_accuracy_rising_with_eps():
  res = _synthetic()
  res["per_eps"][2]["accuracy"]["fgsm"] = 0.65  # above 4/255's 0.60
  ws = masking.check_warnings(res)
  assert [w["code"] for w in ws] == ["acc_rises_with_eps"]
  assert ws[0]["eps"] == "8/255" and "fgsm" in ws[0]["message"]
  # Order of the entries does not matter: eps is sorted first.
  shuffled = copy.deepcopy(res)
  shuffled["per_eps"].reverse()
  assert _codes(shuffled) == ["acc_rises_with_eps"]


def test_warning_aa_above_pgd_and_pgd_far_above_aa():
  res = _synthetic()
  res["per_eps"][0]["accuracy"]["aa"] = 0.62  # above PGD-20's 0.60
  res["per_eps"][0]["worst_case"] = 0.58
  assert _codes(res) == ["aa_above_pgd"]
  res = _synthetic()
  res["per_eps"][1]["accuracy"]["pgd20"] = 0.55  # 8 pp above AA's 0.47
  assert _codes(res) == ["pgd_far_above_aa"]


def test_warning_square_after_whitebox():
  res = _synthetic()
  res["per_eps"][2]["autoattack"]["stages"][-1]["robust_acc"] = 0.36  # -1 pp by Square
  assert _codes(res) == ["square_after_whitebox"]
  res["per_eps"][2]["autoattack"]["stages"][-1]["robust_acc"] = 0.369  # -0.1 pp: tolerated
  assert _codes(res) == []


def test_warning_transfer_stronger_and_aa_signals():
  res = _synthetic()
  res["per_eps"][0]["accuracy"]["transfer"] = 0.50  # PGD-20 0.60
  res["per_eps"][1]["autoattack"]["reeval_mismatch"] = 3
  res["per_eps"][1]["autoattack"]["warnings"] = [
      "it seems to be a randomized defense! Please use version='rand'.",
      "there are 3 points with zero gradient at the start of apgd-t!",
      "Square Attack has decreased the robust accuracy of 1.00%.",  # covered by the stages
      "something new"]
  assert sorted(_codes(res)) == ["aa_randomized", "aa_reeval_mismatch", "aa_zero_gradient",
                                 "autoattack", "transfer_stronger"]


def test_record_warnings_are_shown_in_table(record):
  rec = dict(record, warnings=[{"code": "zero_input_gradients", "message": "msg", "eps": None}])
  table = report.format_table(rec)
  assert "[zero_input_gradients] msg" in table
  assert "AutoAttack standard" in report.format_table(record)


# ----------------------------------------------------------------------------
# Parsing.
# ----------------------------------------------------------------------------
def test_parse_eps_and_attacks():
  assert presets.parse_eps("2/255, 8/255") == [(2 / 255, "2/255"), (8 / 255, "8/255")]
  assert presets.parse_eps(0.031) == [(0.031, "0.031")]
  assert presets.parse_eps(8 / 255) == [(8 / 255, "8/255")]
  for bad in ("0", "-1/255", "8/255,8/255", "", "1/0"):
    with pytest.raises(ValueError):
      presets.parse_eps(bad)
  assert presets.parse_attacks("aa,pgd") == ("clean", "pgd20", "aa")
  assert presets.PRESETS["pgd20"].step_fraction * 8 / 255 == pytest.approx(2 / 255)
  with pytest.raises(ValueError):
    presets.canonical_norm("L1")

"""``benchmarks/gpu_side_by_side.py``: the --smoke run writes every section, and its plumbing.

The smoke run (tiny sizes, CPU) runs in a subprocess with ml_collections and
tensorflow_datasets made unimportable, as on the GPU machine. It checks that
every section A-G wrote its Markdown table and JSON, that none failed, and
the numbers that must hold on any machine (stated tolerances):

* B: converted JAX twin vs torch twin, max |logit difference| <= 1e-4 (fp32);
* C: the first step's loss of the JAX fp32 step and the official-style torch
  step agree to 10 % relative (same weights and batch; only the 0.001 N(0, I)
  random starts differ). A wrong reduction (batchmean vs elemmean) is a
  factor of 10;
* G: every parity verdict is PASS (the CPU tests' tolerances).

Speed figures are never asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "gpu_side_by_side.py")
SECTIONS = {"A": "device", "B": "models", "C": "adaad_step", "D": "pipeline",
            "E": "eval_precision", "F": "autoattack", "G": "attack_parity"}

sys.path.insert(0, os.path.join(REPO, "benchmarks"))


def _load(out, letter):
  base = os.path.join(out, f"{letter}_{SECTIONS[letter]}")
  assert os.path.exists(base + ".md"), f"section {letter} wrote no table"
  with open(base + ".md") as f:
    md = f.read()
  with open(base + ".json") as f:
    js = json.load(f)
  return md, js


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("sbs"))
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # conftest's 8 simulated devices: the script uses one
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run(
      [sys.executable, SCRIPT, "--smoke", "--out", out, "--budget_s", "900",
       "--block_modules", "ml_collections,tensorflow_datasets"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  return out, proc


@pytest.mark.slow
def test_smoke_writes_every_section(smoke_out):
  out, proc = smoke_out
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  have_ref = True
  try:
    import pyautoattack  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    have_ref = False
  for letter in SECTIONS:
    md, js = _load(out, letter)
    if letter in "FG" and not have_ref:
      assert js["status"] == "skipped" and "pyautoattack" in js["reason"], js
      continue
    assert js["status"] == "ok", (letter, js["status"], js["reason"], js["extra"])
    assert js["rows"], letter
    assert md.count("\n|") >= 3, md  # header, separator, at least one row
  with open(os.path.join(out, "summary.md")) as f:
    summary = f.read()
  for letter in SECTIONS:
    assert f"### {letter}." in summary


@pytest.mark.slow
def test_smoke_numbers_that_must_hold(smoke_out):
  out, _ = smoke_out
  _, b = _load(out, "B")
  assert len(b["rows"]) == 2 and all(r["max_dlogit"] <= 1e-4 for r in b["rows"]), b["rows"]
  _, c = _load(out, "C")
  rows = {r["row"]: r for r in c["rows"] if "_skipped" not in r}
  jax_fp32 = rows["JAX fp32 (the old default)"]
  torch_official = rows["torch eager, defaults (official: cuDNN TF32 on)"]
  assert abs(jax_fp32["loss0"] - torch_official["loss0"]) <= 0.1 * abs(torch_official["loss0"])
  assert all(r["ms"] > 0 and r["epoch_s"] > 0 for r in rows.values())
  assert c["extra"]["jax_flops_per_step"] > 0 and c["extra"]["torch_flops_per_step"] > 0
  _, g = _load(out, "G")
  if g["status"] != "skipped":
    assert [r["verdict"] for r in g["rows"]] == ["PASS"] * 3, g["rows"]


def test_budget_skips_a_section_with_the_reason(tmp_path):
  import gpu_side_by_side as sbs  # pylint: disable=g-import-not-at-top
  no_wheels = tmp_path / "no_wheels"
  no_wheels.mkdir()
  assert sbs.main(["--out", str(tmp_path), "--budget_s", "0", "--sections", "AG",
                   "--wheels", str(no_wheels)]) == 0
  for letter in "AG":
    md, js = _load(str(tmp_path), letter)
    assert js["status"] == "skipped" and js["reason"].startswith("budget"), js
    assert "skipped" in md


def test_missing_wheel_skips_with_a_clear_line(tmp_path, monkeypatch):
  import gpu_side_by_side as sbs  # pylint: disable=g-import-not-at-top
  from _side_by_side import common  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(common, "have", lambda m: m != "pyautoattack")
  ctx = sbs.Context(cfg=sbs.smoke_config(), budget=common.Budget(900))
  res = sbs.run_section("F", ctx, common.Writer(str(tmp_path), None, ["header"]))
  assert res.status == "skipped"
  assert "pyautoattack==0.2.0" in res.reason and "benchmarks/wheels" in res.reason
  md, _ = _load(str(tmp_path), "F")
  assert "pyautoattack" in md


def test_wheels_are_imported_from_the_zip_and_slimmed(tmp_path):
  from _side_by_side import common  # pylint: disable=g-import-not-at-top
  whl = tmp_path / "kdr_fake_wheel-1.0-py3-none-any.whl"
  with zipfile.ZipFile(whl, "w") as z:
    z.writestr("kdr_fake_wheel/__init__.py", "VALUE = 42\n")
    z.writestr("kdr_fake_wheel/examples/big.bin", b"x" * 10_000)
    z.writestr("kdr_fake_wheel-1.0.dist-info/RECORD",
               "kdr_fake_wheel/__init__.py,,\nkdr_fake_wheel/examples/big.bin,,\n")
  (tmp_path / "compiled-1.0-cp312-cp312-linux_x86_64.whl").write_bytes(b"")
  lines = common.slim_wheels(str(tmp_path))
  assert any("dropped 1 example files" in line for line in lines), lines
  with zipfile.ZipFile(whl) as z:
    assert sorted(z.namelist()) == ["kdr_fake_wheel-1.0.dist-info/RECORD",
                                    "kdr_fake_wheel/__init__.py"]
    assert "examples" not in z.read("kdr_fake_wheel-1.0.dist-info/RECORD").decode()
  try:
    used = common.activate_wheels(str(tmp_path))
    assert used == [whl.name]  # the compiled wheel is not put on sys.path
    assert sys.path[-1] == str(whl)
    import kdr_fake_wheel  # pylint: disable=g-import-not-at-top,import-error
    assert kdr_fake_wheel.VALUE == 42
  finally:
    sys.path[:] = [p for p in sys.path if p != str(whl)]
    sys.modules.pop("kdr_fake_wheel", None)


def test_data_pipeline_smoke_measures_both_imagenet_paths(tmp_path):
  """``benchmarks/data_pipeline.py --smoke``: every figure of both sections is written.

  ImageNet path on 8 generated JPEGs: the decode limits, the thread pool
  (before) and one grain worker (after), each a positive images/s (about
  15 s on 2 busy cores, mostly the worker's start). Speeds are not asserted.
  """
  out = tmp_path / "pipe.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "data_pipeline.py"),
                         "--smoke", "--json", str(out)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  with open(out) as f:
    res = json.load(f)
  inet = res["imagenet"]
  for key in ("limit_decode_per_core", "limit_decode_crop_flip_per_core", "before_threads1",
              "before_threads1_per_core", "after_workers1", "after_workers1_per_core"):
    assert inet[key] > 0, key
  assert inet["num_jpegs"] == 8 and inet["jpeg_kB"] > 10  # real JPEGs, not blank ones
  assert res["cifar"]["train_aug_prefetch"] > 0 and res["cifar"]["eval"] > 0

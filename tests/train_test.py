"""End-to-end training: the CLI, data parallelism, resume, checkpoints, bad inputs.

Runs use tiny models on the synthetic 8x8 dataset (512 train / 128 test
examples, 8 steps per epoch at batch 64) or on real digits, so each finishes
in seconds on a 2-core CPU.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from kdrobust import checkpoint as ckpt_lib
from kdrobust import config_lib
from kdrobust import data as data_lib
from kdrobust import parallel
from kdrobust import teachers as teachers_lib
from kdrobust import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYN = "synthetic:8x8x1:10"


def tiny_config(**over):
  c = config_lib.base_config()
  c.data.name = SYN
  c.data.batch_size = 64
  c.data.eval_batch_size = 64
  c.model.name = "tiny_cnn"
  c.model.kwargs = {"widths": (8, 16)}
  c.method = config_lib.method_config("pgd_at", attack=dict(eps=0.1, step_size=0.05, steps=2))
  c.num_epochs = 3
  c.optim.lr = 0.05
  c.optim.schedule = "piecewise"
  c.optim.decay_epochs = (2,)
  c.eval.eps = 0.1
  c.eval.attacks = {"pgd20": config_lib.eval_attack_config("pgd", steps=3, step_fraction=0.25)}
  c.log_every_steps = 4
  c.teacher_eval_examples = 0
  for k, v in over.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def _params(workdir, step=None):
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), enable_async=False)
  raw = ck.restore_raw(step if step is not None else ck.latest_step())
  ck.close()
  return raw


def _cli(workdir, *overrides, config="configs/quickstart.py", timeout=300, wait=True):
  cmd = [sys.executable, "-m", "kdrobust.main", f"--config={config}", f"--workdir={workdir}",
         *overrides]
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  from kdrobust.data import prepare
  prepare.prepare("digits", source=None, data_dir=d)
  return d


QUICK = ["--config.total_steps=2", "--config.eval.num_examples=60",
         "--config.model.name=tiny_cnn", "--config.log_every_steps=1"]


def test_two_step_run_through_main(tmp_path, digits_dir):
  r = _cli(str(tmp_path / "w"), *QUICK, f"--config.data.data_dir={digits_dir}")
  assert r.returncode == 0, r.stdout + r.stderr
  res = json.load(open(tmp_path / "w" / "results.json"))
  assert 0.0 <= res["clean_accuracy"] <= 1.0 and set(res["robust_accuracy"]) == {"pgd20"}
  assert res["num_examples"] == 60 and res["step"] == 2
  assert res["config"]["method"]["name"] == "pgd_at" and res["code_version"]
  rows = [json.loads(l) for l in open(tmp_path / "w" / "metrics.jsonl")]
  assert {"train", "eval"} <= {r["split"] for r in rows}
  assert os.path.isdir(tmp_path / "w" / "tb")


def test_cli_rejects_bad_input_at_once(tmp_path):
  t0 = time.time()
  r = _cli(str(tmp_path / "a"), "--config.method.name=nope")
  assert r.returncode != 0 and "valid methods:" in r.stderr and "trades" in r.stderr
  r = _cli(str(tmp_path / "b"), "--config.optim.learning_rate=0.1")
  assert r.returncode != 0 and "learning_rate" in r.stderr
  r = _cli(str(tmp_path / "c"), f"--config.data.data_dir={tmp_path / 'empty'}",
           config="configs/cifar10_pgd_at.py")
  assert r.returncode != 0
  assert "python -m kdrobust.data.prepare cifar10" in r.stderr, r.stderr
  assert time.time() - t0 < 60  # three interpreter starts, no compute
  assert not os.path.exists(tmp_path / "a" / "checkpoints")


def test_eight_devices_equal_one_device(tmp_path):
  assert jax.device_count() == 8
  res1 = train.train_and_evaluate(tiny_config(num_devices=1, total_steps=4), str(tmp_path / "one"))
  res8 = train.train_and_evaluate(tiny_config(num_devices=8, total_steps=4), str(tmp_path / "eight"))
  p1, p8 = _params(str(tmp_path / "one")), _params(str(tmp_path / "eight"))
  # Same global batch, synchronised BN: only the reduction order differs.
  for a, b in zip(jax.tree.leaves(p1["params"]), jax.tree.leaves(p8["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(p1["batch_stats"]), jax.tree.leaves(p8["batch_stats"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  assert abs(res1["clean_accuracy"] - res8["clean_accuracy"]) <= 1 / 128 + 1e-9


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
  full = train.train_and_evaluate(tiny_config(), str(tmp_path / "full"))
  # "Crash" after 10 steps (a checkpoint exists at step 8), then the same run again.
  part = str(tmp_path / "part")
  train.train_and_evaluate(tiny_config(total_steps=10), part)
  resumed = train.train_and_evaluate(tiny_config(), part)
  assert resumed["clean_accuracy"] == full["clean_accuracy"]
  assert resumed["robust_accuracy"] == full["robust_accuracy"]
  for a, b in zip(jax.tree.leaves(_params(part)), jax.tree.leaves(_params(str(tmp_path / "full")))):
    np.testing.assert_array_equal(a, b)


def test_corrupt_latest_checkpoint_falls_back_with_warning(tmp_path, caplog):
  w = str(tmp_path / "w")
  train.train_and_evaluate(tiny_config(total_steps=16), w)
  steps = ckpt_lib.Checkpointer(os.path.join(w, "checkpoints"), enable_async=False).all_steps()
  assert steps[-2:] == [8, 16]
  latest = os.path.join(w, "checkpoints", "16", "state")
  for root, _, files in os.walk(latest):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"garbage")
  caplog.set_level("WARNING")
  res = train.train_and_evaluate(tiny_config(), w)
  assert "falling back" in caplog.text
  assert res["step"] == 24


def test_nan_stops_run_and_keeps_last_good_checkpoint(tmp_path):
  w = str(tmp_path / "w")
  cfg = tiny_config(**{"optim.decay_epochs": (1,), "optim.decay_factor": 1e30})
  with pytest.raises(train.NonFiniteLossError, match="last good checkpoint"):
    train.train_and_evaluate(cfg, w)
  raw = _params(w)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(raw["params"]))
  assert int(raw["step"]) == 8


def test_workdir_of_another_config_is_refused_then_moved_aside(tmp_path):
  w = str(tmp_path / "w")
  train.train_and_evaluate(tiny_config(total_steps=2), w)
  with pytest.raises(train.WorkdirConflictError, match="different config"):
    train.train_and_evaluate(tiny_config(total_steps=2, seed=1), w)
  train.train_and_evaluate(tiny_config(total_steps=2, seed=1), w, overwrite=True)
  backups = [p for p in os.listdir(tmp_path) if p.startswith("w.bak-")]
  assert len(backups) == 1 and os.path.exists(tmp_path / backups[0] / "results.json")


def test_teacher_with_other_classes_is_refused_before_compute(tmp_path):
  t = str(tmp_path / "teacher")
  train.train_and_evaluate(tiny_config(total_steps=2), t)
  info = data_lib.info("synthetic:8x8x1:5", None)
  with pytest.raises(teachers_lib.TeacherError, match="10 classes but dataset"):
    teachers_lib.check_compatible("t", config_lib.teacher_config(t), info)
  loaded = teachers_lib.load("t", config_lib.teacher_config(t))
  with pytest.raises(teachers_lib.TeacherError, match="has 5 classes"):
    teachers_lib.check_against_data(loaded, info)


def test_missing_dataset_error_names_the_prepare_command(tmp_path):
  t0 = time.time()
  with pytest.raises(data_lib.DatasetNotFoundError, match="kdrobust.data.prepare cifar10"):
    train.validate(tiny_config(**{"data.name": "cifar10", "data.data_dir": str(tmp_path)}))
  assert time.time() - t0 < 1.0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_kill_and_resume_through_cli(tmp_path, digits_dir, sig):
  args = [f"--config.data.data_dir={digits_dir}", "--config.model.name=tiny_cnn",
          "--config.num_epochs=3", "--config.eval.num_examples=60", "--config.eval.every_epochs=3"]
  ref = _cli(str(tmp_path / "ref"), *args)
  assert ref.returncode == 0, ref.stdout
  w = str(tmp_path / "w")
  p = _cli(w, *args, wait=False)
  ckdir = os.path.join(w, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline and not (os.path.isdir(ckdir) and any(
      d.isdigit() for d in os.listdir(ckdir))):
    time.sleep(0.2)
  time.sleep(0.5)
  p.send_signal(sig)
  out, _ = p.communicate(timeout=120)
  if sig == signal.SIGTERM:
    assert p.returncode == 143 and "saved the checkpoint" in out, out
  again = _cli(w, *args)
  assert again.returncode == 0 and "Resumed from the checkpoint at step" in again.stdout
  a = json.load(open(os.path.join(w, "results.json")))
  b = json.load(open(tmp_path / "ref" / "results.json"))
  assert (a["clean_accuracy"], a["robust_accuracy"]) == (b["clean_accuracy"], b["robust_accuracy"])


def test_fields_added_by_newer_code_do_not_block_resume():
  old = tiny_config().to_dict()
  del old["method"]["attack"]["bn_mode"]
  new = tiny_config().to_dict()
  assert config_lib.config_differences(old, new) == []
  assert config_lib.new_keys(old, new) == ["method.attack.bn_mode"]
  new["method"]["attack"]["eps"] = 0.2
  assert config_lib.config_differences(old, new) == ["method.attack.eps"]


def test_a_new_field_set_off_its_default_blocks_resume():
  """A run saved before ``weight_averaging`` existed trained without it: turning it on is a
  different run (refused before compute), leaving it at its default resumes."""
  old = tiny_config().to_dict()
  del old["weight_averaging"]
  new = tiny_config()
  assert config_lib.new_keys_off_default(old, new.to_dict()) == []
  new.weight_averaging.kind = "swa"
  assert config_lib.new_keys_off_default(old, new.to_dict()) == ["weight_averaging.kind"]
  # Resumable keys and the method's own fields are not judged.
  old2 = tiny_config().to_dict()
  del old2["log_every_steps"], old2["method"]["attack"]["bn_mode"]
  new2 = tiny_config().to_dict()
  new2["log_every_steps"] = 7
  new2["method"]["attack"]["bn_mode"] = "train"
  assert config_lib.new_keys_off_default(old2, new2) == []


def test_distilling_from_a_kdrobust_run_on_two_devices_equals_one(tmp_path):
  """The start-of-run teacher check and the train step take the teacher replicated on the
  mesh (it was passed unreplicated: incompatible devices on 2+ devices)."""
  assert jax.device_count() >= 2
  t = str(tmp_path / "teacher")
  train.train_and_evaluate(tiny_config(total_steps=2), t)

  def distill(n):
    c = tiny_config(num_devices=n, total_steps=2, teacher_eval_examples=64)
    c.method = config_lib.method_config("rslad", attack=dict(eps=0.1, step_size=0.05, steps=2))
    c.teachers = {"teacher": config_lib.teacher_config(t, which="latest")}
    return train.train_and_evaluate(c, str(tmp_path / f"student{n}"))

  r1, r2 = distill(1), distill(2)
  for a, b in zip(jax.tree.leaves(_params(str(tmp_path / "student1"))["params"]),
                  jax.tree.leaves(_params(str(tmp_path / "student2"))["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # reduction order only
  assert abs(r1["clean_accuracy"] - r2["clean_accuracy"]) <= 1 / 64 + 1e-9


def test_batch_size_not_divisible_by_devices_is_refused_naming_the_setting():
  assert jax.device_count() == 8
  assert parallel.make_mesh(3).devices.size == 3 and parallel.make_mesh().devices.size == 8
  with pytest.raises(ValueError, match=r"config.data.eval_batch_size = 339 is not divisible by "
                     r"the 8 devices.*multiple of 8 \(e.g. 336\)"):
    train.validate(tiny_config(num_devices=8, **{"data.eval_batch_size": 339}))
  with pytest.raises(ValueError, match=r"config.data.batch_size = 60 .* 8 devices"):
    train.validate(tiny_config(num_devices=8, **{"data.batch_size": 60}))
  train.validate(tiny_config(num_devices=4, **{"data.batch_size": 60}))  # 60 = 4 x 15


def test_teacher_dtype_auto_resumes_a_float32_run_on_cpu():
  """'auto' (the default since teachers compute in bf16 on accelerators) is float32 on CPU: a run
  saved with the old default 'float32' still resumes here; one saved with bf16 does not."""
  assert jax.default_backend() == "cpu"
  new = tiny_config()
  new.teachers = {"t": config_lib.teacher_config("/nowhere")}  # dtype 'auto'
  old = new.to_dict()
  old["teachers"]["t"]["dtype"] = "float32"
  assert config_lib.config_differences(old, new.to_dict()) == []
  old["teachers"]["t"]["dtype"] = "bfloat16"
  assert config_lib.config_differences(old, new.to_dict()) == ["teachers.t.dtype"]


# --- uint8 batches and metrics one step late (issue 11 item 4) ------------------


def _hooked_config():
  # One epoch of 8 steps, logging every step: steps 1-7 are plain log steps,
  # step 8 is the epoch end and checkpoint.
  return tiny_config(num_epochs=1, log_every_steps=1, **{"eval.num_examples": 64})


@pytest.fixture(scope="module")
def hooked_run(tmp_path_factory):
  """A default (uint8) run recording the train step's dispatches and metric fetches."""
  events, outputs, dtypes = [], [], []
  real_make, real_fetch = train.step_lib.make_train_step, train._fetch_metrics

  def make(**kw):
    step = real_make(**kw)

    def dispatch(st, tv, batch):
      dtypes.append(batch["image"].dtype)
      st, m = step(st, tv, batch)
      events.append("dispatch")
      outputs.append(m)
      return st, m
    return dispatch

  def fetch(m):
    events.append("fetch")
    return real_fetch(m)
  w = str(tmp_path_factory.mktemp("hooked"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train.step_lib, "make_train_step", make)
    mp.setattr(train, "_fetch_metrics", fetch)
    res = train.train_and_evaluate(_hooked_config(), w)
  return dict(workdir=w, result=res, events=events, outputs=outputs, dtypes=dtypes)


def test_logged_metrics_are_fetched_one_step_late(hooked_run):
  """A plain log step's metrics are read only after the next step is dispatched.

  Expected order: dispatch 1, then (dispatch t+1, fetch t) for t = 1..7,
  then fetch 8 (the epoch end reads at once, before its checkpoint). Each
  logged loss is its own step's (no off-by-one): equal, exactly, to the
  step's output read after the run.
  """
  events = hooked_run["events"]
  assert events == ["dispatch"] + ["dispatch", "fetch"] * 7 + ["fetch"], events
  with open(os.path.join(hooked_run["workdir"], "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  logged = {r["step"]: r for r in rows if r["split"] == "train"}
  assert sorted(logged) == list(range(1, 9)), rows[:3]
  for t, m in enumerate(hooked_run["outputs"], 1):
    assert logged[t]["loss"] == float(m["loss"]), t


def test_uint8_batches_train_exactly_as_float32_batches(hooked_run, tmp_path, monkeypatch):
  """The loop feeds uint8 (converted in the steps), and that equals host float32 feeding.

  Tolerance: 0 (bitwise): the device conversion is the host's table
  (kdrobust.data.device), so every parameter and accuracy is identical.
  """
  assert hooked_run["dtypes"] == [np.dtype(np.uint8)] * 8
  seen = []
  for name in ("train_iterator", "eval_iterator"):
    real = getattr(data_lib, name)

    def as_float(*a, _real=real, **kw):
      for b in _real(*a, **dict(kw, image_dtype="float32")):
        seen.append(b["image"].dtype)
        yield b
    monkeypatch.setattr(data_lib, name, as_float)
  w = str(tmp_path / "f32")
  got = train.train_and_evaluate(_hooked_config(), w)
  assert seen and set(seen) == {np.dtype(np.float32)}
  want = hooked_run["result"]
  assert got["clean_accuracy"] == want["clean_accuracy"]
  assert got["robust_accuracy"] == want["robust_accuracy"]
  for a, b in zip(jax.tree.leaves(_params(w)), jax.tree.leaves(_params(hooked_run["workdir"]))):
    np.testing.assert_array_equal(a, b)

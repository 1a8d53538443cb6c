"""Fault injection: kill -9, corrupt checkpoints, concurrent writers, diverging updates.

Each test proves one guarantee of docs/reliability.md. Runs are tiny (a
4-8-channel ``tiny_cnn`` on the synthetic 8x8 dataset, 24 steps, or the
issue's digits reproducer); subprocesses share a persistent JAX compilation
cache so that only the first one compiles. Kill points are exact
(``KDROBUST_FAULT_AT``, :func:`kdrobust.fileio.fault_point`), plus one kill at
a random moment (seeded; the seed is printed).
"""

import os
import random
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from kdrobust import checkpoint as ckpt_lib
from kdrobust import config_lib
from kdrobust import data as data_lib
from kdrobust import evaluate as evaluate_lib
from kdrobust import fileio
from kdrobust import metrics as metrics_lib
from kdrobust import parallel
from kdrobust import quickstart
from kdrobust import teachers as teachers_lib
from kdrobust import train
from kdrobust import train_step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = '''
from kdrobust import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.data.name = "synthetic:8x8x1:10"
  c.data.batch_size = 64
  c.data.eval_batch_size = 64
  c.model.name = "tiny_cnn"
  c.model.kwargs = {"widths": (4, 8)}
  c.method = config_lib.method_config("pgd_at", attack=dict(eps=0.1, step_size=0.05, steps=1))
  c.num_epochs = 3
  c.num_devices = 1
  c.optim.lr = 0.05
  c.optim.schedule = "piecewise"
  c.optim.decay_epochs = (2,)
  c.eval.eps = 0.1
  c.eval.every_epochs = 1
  c.eval.num_examples = 128
  c.eval.attacks = {"pgd": config_lib.eval_attack_config("pgd", steps=2, step_fraction=0.5)}
  c.log_every_steps = 4
  c.teacher_eval_examples = 0
  for item in (arg or "").split(";"):
    if item:
      key, value = item.split("=")
      node = c
      *path, last = key.split(".")
      for p in path:
        node = node[p]
      node[last] = type(node[last])(eval(value))
  return c
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Files shared by the module: the tiny config file, a JAX compilation cache."""
  d = tmp_path_factory.mktemp("faults")
  (d / "tiny.py").write_text(TINY)
  return {"config": str(d / "tiny.py"), "cache": str(d / "jax_cache")}


def _main(env, workdir, *flags, fault=None, wait=True):
  cmd = [sys.executable, "-m", "kdrobust.main", f"--config={env['config']}",
         f"--workdir={workdir}", *flags]
  e = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=env["cache"],
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONPATH=ROOT)
  e.pop("KDROBUST_FAULT_AT", None)
  if fault:
    e["KDROBUST_FAULT_AT"] = fault
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, cwd=ROOT, env=e, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, timeout=300)


@pytest.fixture(scope="module")
def ref(env, tmp_path_factory):
  """An uninterrupted run of the tiny config (the reference of every rerun)."""
  w = str(tmp_path_factory.mktemp("ref") / "run")
  p = _main(env, w)
  assert p.returncode == 0, p.stdout[-3000:]
  return w


def _tiny(env, arg=None):
  return quickstart.load_config(env["config"], arg)


def _params(workdir, step):
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), enable_async=False)
  try:
    return ck.restore_raw_single_device(step)["params"]
  finally:
    ck.close()


def _assert_same_run(workdir, ref_dir):
  """Same results, same final parameters, metrics rows unique and the same as the reference."""
  a = fileio.read_json(os.path.join(workdir, "results.json"))
  b = fileio.read_json(os.path.join(ref_dir, "results.json"))
  for k in ("clean_accuracy", "robust_accuracy", "step", "best_step"):
    assert a[k] == b[k], k
  for x, y in zip(jax.tree.leaves(_params(workdir, a["step"])),
                  jax.tree.leaves(_params(ref_dir, b["step"]))):
    np.testing.assert_array_equal(x, y)
  keys = [(r["step"], r["split"]) for r in metrics_lib.read_jsonl(
      os.path.join(workdir, "metrics.jsonl"))]
  assert len(keys) == len(set(keys)), "duplicated metrics rows"
  assert sorted(keys) == sorted((r["step"], r["split"]) for r in metrics_lib.read_jsonl(
      os.path.join(ref_dir, "metrics.jsonl")))
  _assert_named_checkpoints_intact(workdir)


def _assert_named_checkpoints_intact(workdir):
  res = fileio.read_json(os.path.join(workdir, "results.json"))
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), enable_async=False)
  try:
    for s in {res["step"], res["best_step"]} - {None}:
      assert ck.check(s) == (ckpt_lib.INTACT, ""), s
      ck.restore_raw_single_device(s)
  finally:
    ck.close()


def _truncate_state(step_dir):
  """Truncate the largest file under ``<step>/state`` to half its size."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state")) for f in fs]
  big = max(files, key=os.path.getsize)
  with open(big, "r+b") as f:
    f.truncate(os.path.getsize(big) // 2)


def _snapshot(d):
  return {os.path.relpath(os.path.join(r, f), d): os.path.getsize(os.path.join(r, f))
          for r, _, fs in os.walk(d) for f in fs}


# ----------------------------------------------------------------------------
# kill -9.
# ----------------------------------------------------------------------------
def test_kill9_at_named_points_then_rerun_is_identical(env, ref, tmp_path):
  """Killed inside a save, during an evaluation, between a save and its verification,
  and before results.json, each time rerun: the end equals the uninterrupted run."""
  w = str(tmp_path / "w")
  outputs = []
  for point in ("ckpt_save:2", "eval:2", "ckpt_verified:1", "results:1"):
    p = _main(env, w, fault=point)
    outputs.append(p.stdout)
    assert p.returncode == -9, (point, p.stdout[-3000:])
  assert not os.path.exists(os.path.join(w, "results.json"))
  p = _main(env, w)
  assert p.returncode == 0, p.stdout[-3000:]
  assert "Resumed from the checkpoint at step 24" in p.stdout
  assert "Took over the stale lock" in p.stdout  # the killed run's lock
  _assert_same_run(w, ref)


def test_kill9_at_a_random_moment_then_rerun_is_identical(env, ref, tmp_path):
  """Also: a second writer is refused at once (in-process), a reader is allowed."""
  seed = int(os.environ.get("KDROBUST_FAULT_SEED", time.time_ns() % 10_000))
  print(f"random kill seed {seed} (KDROBUST_FAULT_SEED={seed} to repeat)")
  rng = random.Random(seed)
  w = str(tmp_path / "w")
  p = _main(env, w, wait=False)
  ckdir = os.path.join(w, "checkpoints")
  deadline = time.time() + 240
  while time.time() < deadline and p.poll() is None and not (
      os.path.isdir(ckdir) and any(d.isdigit() for d in os.listdir(ckdir))):
    time.sleep(0.05)
  if p.poll() is None:
    # A second writer on the live workdir: refused before anything is written.
    t0 = time.time()
    with pytest.raises(fileio.WorkdirLockedError, match="in use by another kdrobust run"):
      train.train_and_evaluate(_tiny(env), w)
    assert time.time() - t0 < 10
    # A reader is allowed while the run holds the lock.
    assert evaluate_lib.resolve_checkpoint(w, "latest")[0] in (8, 16, 24)
    time.sleep(rng.uniform(0.0, 2.0))
    p.kill()
  p.communicate(timeout=120)
  again = _main(env, w)
  assert again.returncode == 0, again.stdout[-3000:]
  _assert_same_run(w, ref)


def test_second_writer_is_refused_and_stale_lock_taken_over(env, tmp_path):
  """Two writers: the second is refused with one line naming the owner and writes
  nothing; a lock file left by a dead process is taken over."""
  w = str(tmp_path / "w")
  holder = fileio.WorkdirLock(w).acquire()  # a live writer (another open file description)
  before = _snapshot(w)
  try:
    with pytest.raises(fileio.WorkdirLockedError, match=f"pid {os.getpid()}"):
      train.train_and_evaluate(_tiny(env), w)
    assert _snapshot(w) == before  # no config.json, nothing else
  finally:
    holder.release()
  assert not os.path.exists(w)  # the lock created the directory and removed it
  # A stale lock file (its process is gone: nobody holds the flock) is taken over.
  os.makedirs(w)
  with open(os.path.join(w, fileio.LOCK_NAME), "w") as f:
    f.write("pid 999999 on gone-host since 2020-01-01 00:00:00\n")
  lock = fileio.WorkdirLock(w).acquire()
  assert lock.held
  lock.release()
  assert not os.path.exists(os.path.join(w, fileio.LOCK_NAME))


# ----------------------------------------------------------------------------
# Corruption.
# ----------------------------------------------------------------------------
def test_corrupt_final_checkpoint_is_rewritten_on_rerun(env, ref, tmp_path):
  w = str(tmp_path / "w")
  shutil.copytree(ref, w)
  _truncate_state(os.path.join(w, "checkpoints", "24"))
  # Readers never pick the corrupt one.
  assert evaluate_lib.resolve_checkpoint(w, "latest")[0] == 16
  assert evaluate_lib.resolve_checkpoint(w, "best")[0] != 24
  for which in ("latest", "best"):  # nor does loading the run as a teacher
    teachers_lib.load("t", config_lib.teacher_config(w, which=which))
  p = _main(env, w)
  assert p.returncode == 0, p.stdout[-3000:]
  assert "falling back" in p.stdout and "Replacing the corrupt checkpoint at step 24" in p.stdout
  _assert_same_run(w, ref)
  evaluate_lib.load_run(w, "latest")  # kdrobust.evaluate / teacher loading read it


def test_all_checkpoints_corrupt_is_refused_and_nothing_deleted(env, ref, tmp_path):
  w = str(tmp_path / "w")
  shutil.copytree(ref, w)
  for s in os.listdir(os.path.join(w, "checkpoints")):
    if s.isdigit():
      _truncate_state(os.path.join(w, "checkpoints", s))
  before = _snapshot(w)
  rows = open(os.path.join(w, "metrics.jsonl")).read()
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    train.train_and_evaluate(_tiny(env), w)
  msg = str(e.value)
  assert os.path.join(w, "checkpoints") in msg and "--overwrite" in msg and "nothing was deleted" in msg
  assert "\n" not in msg
  assert _snapshot(w) == before
  assert open(os.path.join(w, "metrics.jsonl")).read() == rows


def test_torn_files_are_named(env, ref, tmp_path):
  w = str(tmp_path / "w")
  shutil.copytree(ref, w)
  for name in ("results.json", "config.json"):
    path = os.path.join(w, name)
    text = open(path).read()
    with open(path, "w") as f:
      f.write(text[:len(text) // 2])
  with pytest.raises(fileio.TornFileError, match="results.json is torn"):
    quickstart._finished(w, _tiny(env))  # pylint: disable=protected-access
  with pytest.raises(fileio.TornFileError, match="config.json is torn"):
    evaluate_lib.load_run(w, "latest")
  # A torn last line of metrics.jsonl (killed while appending) is dropped on resume.
  path = os.path.join(w, "metrics.jsonl")
  n = len(metrics_lib.read_jsonl(path))
  with open(path, "a") as f:
    f.write('{"step": 24, "split": "tr')
  assert len(metrics_lib.read_jsonl(path)) == n
  metrics_lib.truncate_after(path, 16)
  assert max(r["step"] for r in metrics_lib.read_jsonl(path)) == 16
  # An interrupted atomic write leaves the old file whole and no temporary file.
  summary = os.path.join(w, "summary.json")
  fileio.write_json(summary, {"old": 1})

  def crash(fd):
    raise OSError("simulated crash before the rename")
  real = os.fsync
  os.fsync = crash
  try:
    with pytest.raises(OSError, match="simulated"):
      fileio.write_json(summary, {"new": 2})
  finally:
    os.fsync = real
  assert fileio.read_json(summary) == {"old": 1}
  assert not [f for f in os.listdir(w) if f.endswith(".tmp")]


# ----------------------------------------------------------------------------
# The NaN guard.
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tfds"))
  from kdrobust.data import prepare
  prepare.prepare("digits", source=None, data_dir=d)
  return d


def test_diverging_update_is_caught_and_the_named_checkpoint_is_good(digits_dir, tmp_path):
  """The issue's reproducer: lr x 1e30 from step int(2.955 * 22) = 65, just before the
  epoch-3 checkpoint (step 66). Old code saved weights ~4e27 there and called it good."""
  c = quickstart.load_config(os.path.join(ROOT, "configs", "quickstart.py"), "epochs=4")
  c.data.data_dir = digits_dir
  c.num_devices = 1
  c.optim.schedule = "piecewise"
  c.optim.decay_epochs = (2.955,)
  c.optim.decay_factor = 1e30
  c.method.attack.steps = 2  # (5 in the config) only to save time: the blow-up is the lr's
  w = str(tmp_path / "w")
  with pytest.raises(train.NonFiniteLossError) as e:
    train.train_and_evaluate(c, w)
  msg = str(e.value)
  assert "diverged before step 66" in msg, msg
  assert "The last good checkpoint (step 44," in msg, msg
  ck = ckpt_lib.Checkpointer(os.path.join(w, "checkpoints"), enable_async=False)
  try:
    assert ck.all_steps() == [22, 44]  # nothing saved after the blow-up
    assert 44 in ck.good_steps()
    for s in ck.all_steps():
      top = max(float(np.max(np.abs(x))) for x in jax.tree.leaves(ck.restore_raw(s)["params"]))
      assert top < train.BLOWUP_THRESHOLD
  finally:
    ck.close()


def test_guard_says_when_there_is_no_good_checkpoint(env, tmp_path):
  """Divergence before the first checkpoint: the message says there is none
  (old code: 'step None')."""
  with pytest.raises(train.NonFiniteLossError, match="There is no last good checkpoint: "
                     "none was saved yet"):
    train.train_and_evaluate(_tiny(env, "optim.decay_epochs=(0.5,);optim.decay_factor=1e30"),
                             str(tmp_path / "w"))


# ----------------------------------------------------------------------------
# True best.
# ----------------------------------------------------------------------------
def test_best_checkpoint_records_its_own_accuracy(env, tmp_path):
  """Evaluation every 2 epochs, checkpoints every epoch (keep 2): a checkpoint that
  was not evaluated carries no accuracy, and each recorded accuracy (robust and
  clean) equals a re-evaluation of that checkpoint (tolerance 1e-6)."""
  c = _tiny(env, "num_epochs=4;eval.every_epochs=2;ckpt.keep=2")
  w = str(tmp_path / "w")
  train.train_and_evaluate(c, w)
  mesh = parallel.make_mesh(1)
  ck = ckpt_lib.Checkpointer(os.path.join(w, "checkpoints"), enable_async=False)
  steps = ck.all_steps()
  metas = {s: ck.restore_meta(s).get("metrics", {}) for s in steps}
  ck.close()
  assert 24 in steps and not metas[24], metas  # not evaluated: no accuracy
  best, how = evaluate_lib.resolve_checkpoint(w, "best")
  assert how == "best" and metas[best]
  eval_step = None
  for s in steps:
    if not metas[s]:
      continue
    module, variables, config, _ = evaluate_lib.load_run(w, s)
    eval_step = eval_step or step_lib.make_eval_step(  # compiled once
        module.apply, train.eval_attacks(config.eval), seed=config.seed)
    batches = data_lib.eval_iterator(config.data.name, data_dir=None,
                                     batch_size=config.data.eval_batch_size,
                                     num_examples=config.eval.num_examples)
    res = train.evaluate(eval_step, variables, batches, mesh, config.eval.eps)
    assert abs(min(res["robust_accuracy"].values()) - metas[s]["robust_accuracy"]) <= 1e-6, s
    assert abs(res["clean_accuracy"] - metas[s]["clean_accuracy"]) <= 1e-6, s


# ----------------------------------------------------------------------------
# The quickstart's reuse of finished evaluations.
# ----------------------------------------------------------------------------
def test_quickstart_rerun_reuses_finished_evaluations(ref, tmp_path, monkeypatch):
  root = str(tmp_path / "qs")
  for stage in ("teacher", "student"):
    d = os.path.join(root, stage)
    shutil.copytree(ref, d)
    request = ("python -m kdrobust.quickstart --eps 0.1 --aa_version standard "
               "--num_examples 200 (checkpoint latest)")
    fileio.write_json(os.path.join(d, "eval", "quickstart.json"), {
        "command": request, "checkpoint": {"step": 24}, "clean_acc": 0.5,
        "robust_acc": {"pgd20": 0.25}, "autoattack_acc": 0.2, "num_examples": 200})
  assert quickstart._reusable_eval(os.path.join(root, "teacher"), request)  # pylint: disable=protected-access
  assert quickstart._reusable_eval(os.path.join(root, "teacher"), request + "x") is None  # pylint: disable=protected-access

  def no_eval(*a, **k):
    raise AssertionError("AutoAttack evaluation redone on a finished rerun")
  monkeypatch.setattr(evaluate_lib, "evaluate_run", no_eval)
  monkeypatch.setattr(quickstart, "_train", lambda *a, **k: None)
  monkeypatch.setattr(quickstart, "_num_params", lambda w: 1)
  if hasattr(quickstart, "_check_stages"):
    monkeypatch.setattr(quickstart, "_check_stages", lambda *a, **k: None)
  assert quickstart.main(["--workdir", root]) == 0
  summary = fileio.read_json(os.path.join(root, "summary.json"))
  assert summary["teacher"]["autoattack"] == 0.2 and summary["student"]["pgd20"] == 0.25


def test_guard_threshold_is_the_config_value():
  """``config.guard_max_abs`` sets the blow-up threshold: 1e3 stops a state that 1e6 passes."""
  import types
  import jax.numpy as jnp

  class FakeCkpt:
    directory = "/nowhere"
    healthy = []

    def mark_healthy(self, step):
      self.healthy.append(step)

    def close(self):
      pass

    def good_steps(self):
      return []

    def intact_steps(self):
      return []

  state = types.SimpleNamespace(nonfinite=jnp.int32(0), params={"w": jnp.full((2,), 5e3)},
                                batch_stats={}, extra=None)
  ck = FakeCkpt()
  train._check_finite(state, 7, ck, threshold=1e6)
  assert ck.healthy == [7]
  with pytest.raises(train.NonFiniteLossError, match=r"config.guard_max_abs = 1e\+03"):
    train._check_finite(state, 8, ck, threshold=1e3)

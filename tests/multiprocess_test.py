"""Two processes through ``jax.distributed`` train as one (README "Several processes").

Each test starts real processes of ``python -m kdrobust.main`` on 127.0.0.1
(CPU collectives: gloo), each seeing ONE CPU device (``XLA_FLAGS`` empty), so
the mesh has 2 devices over 2 processes, and compares them with ONE process
seeing 2 simulated CPU devices (``--xla_force_host_platform_device_count=2``):
the same mesh size, the same global batch (64), the same program. Digits,
``tiny_cnn``, 8 steps, a checkpoint every 2 steps:

1. PGD-AT in 2 processes == 1 process;
2. AdaAD+IGDM distillation from the kdrobust-trained teacher of (1), with the
   start-of-run teacher evaluation on, in 2 processes == 1 process;
3. both processes killed (``kill -9`` at the 3rd checkpoint save, after the
   step-4 checkpoint was verified), the same commands rerun: they resume
   from step 4 and end equal to the uninterrupted run of (1).

Tolerances: final parameters within ``atol = rtol = 1e-5`` between 1 and 2
processes (reductions may be ordered differently across the process
boundary; measured: bitwise equal), bitwise for resume vs uninterrupted (same
layout); accuracies on the 120 test examples equal within 1 example.
Only process 0 prints: process 1's stdout is empty. The first run starts
with digits not prepared: process 0 prepares it while process 1 waits.
Runtime: 2.3-3.8 min wall on 2 CPU cores shared with other jobs (load ~10),
2.2-2.5 min of CPU (11 process starts, a shared JAX compilation cache);
about 2 min expected on an idle 2-core CI machine.
"""

import os
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from kdrobust import checkpoint as ckpt_lib
from kdrobust import fileio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 240
GRACE_S = 20
ATOL = RTOL = 1e-5

# The README's two-process command uses these overrides too (tiny and fast).
TINY = ("--config.model.name=tiny_cnn", "--config.total_steps=8", "--config.eval.every_epochs=0",
        "--config.eval.num_examples=120", "--config.eval.attacks.pgd20.steps=2",
        "--config.log_every_steps=2")

# configs/quickstart*.py with a checkpoint every 2 steps (ckpt.every_epochs is an int there).
WRAP = """
import sys
import ml_collections
sys.path.insert(0, {configs!r})
import {name} as base


def get_config(arg=None):
  c = base.get_config(arg)
  # int(0.1 * 22 steps per epoch) = every 2 steps (the field is typed int there)
  c.ckpt = ml_collections.ConfigDict(dict(c.ckpt.to_dict(), every_epochs=0.1))
  return c
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """An empty data directory (the first run's process 0 prepares digits), config files."""
  d = tmp_path_factory.mktemp("multiprocess")
  for name in ("quickstart", "quickstart_distill"):
    (d / f"{name}.py").write_text(WRAP.format(configs=os.path.join(ROOT, "configs"), name=name))
  return {"data_dir": str(d / "tfds"), "cache": str(d / "jax_cache"), "root": d,
          "pgd": str(d / "quickstart.py"), "kd": str(d / "quickstart_distill.py")}


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(env, devices: int, fault: str | None = None) -> dict:
  e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
           XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}" if devices > 1 else "",
           JAX_COMPILATION_CACHE_DIR=env["cache"], JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  for k in ("KDROBUST_FAULT_AT", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    e.pop(k, None)
  if fault:
    e["KDROBUST_FAULT_AT"] = fault
  return e


def _cmd(env, config: str, workdir: str, extra=()) -> list:
  return [sys.executable, "-m", "kdrobust.main", f"--config={config}", f"--workdir={workdir}",
          *TINY, f"--config.data.data_dir={env['data_dir']}", *extra]


def run_one(env, config, workdir, extra=()):
  """One process, 2 simulated CPU devices; returns its output."""
  p = subprocess.run(_cmd(env, config, workdir, extra), cwd=ROOT, env=_env(env, 2),
                     capture_output=True, text=True, timeout=TIMEOUT_S)
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  return p.stdout


def run_two(env, config, workdir, extra=(), fault=None):
  """Processes 0 and 1 of one run (1 CPU device each); returns [(rc, stdout, stderr)] x 2.

  Once one process has failed, the other gets ``GRACE_S`` seconds before it is
  killed (it would wait in a collective or a barrier until JAX's timeout).
  """
  addr = f"127.0.0.1:{_free_port()}"
  logs = [tuple(open(os.path.join(env["root"], f"{os.path.basename(workdir)}.p{i}.{k}"), "w+")
                for k in ("out", "err")) for i in range(2)]
  procs = [subprocess.Popen(
      _cmd(env, config, workdir, extra) + ["--jax_distributed", f"--coordinator_address={addr}",
                                           "--num_processes=2", f"--process_id={i}"],
      cwd=ROOT, env=_env(env, 1, fault), stdout=logs[i][0], stderr=logs[i][1], text=True)
           for i in range(2)]
  start, failed_at = time.time(), None
  try:
    while any(p.poll() is None for p in procs) and time.time() - start < TIMEOUT_S:
      if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
        failed_at = time.time()
      if failed_at is not None and time.time() - failed_at > GRACE_S:
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  out = []
  for p, (o, e) in zip(procs, logs):
    o.seek(0)
    e.seek(0)
    out.append((p.returncode, o.read(), e.read()))
    o.close()
    e.close()
  return out


def _ok(outs):
  for i, (rc, o, e) in enumerate(outs):
    assert rc == 0, f"process {i} exited {rc}:\n{o[-2000:]}\n{e[-3000:]}"
  assert "Final: clean accuracy" in outs[0][1], outs[0][1][-2000:]
  assert outs[1][1] == "", f"process 1 printed: {outs[1][1][:500]}"  # only process 0 prints


def _final(workdir):
  res = fileio.read_json(os.path.join(workdir, "results.json"))
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), enable_async=False)
  try:
    state = ck.restore_raw_single_device(res["step"])
  finally:
    ck.close()
  return res, {"params": state["params"], "batch_stats": state["batch_stats"]}


def _assert_same(workdir, ref_dir, atol=ATOL, rtol=RTOL):
  a, pa = _final(workdir)
  b, pb = _final(ref_dir)
  assert a["step"] == b["step"] == 8
  assert a["num_examples"] == b["num_examples"] == 120
  assert abs(a["clean_accuracy"] - b["clean_accuracy"]) <= 1 / 120 + 1e-9
  for k, v in b["robust_accuracy"].items():
    assert abs(a["robust_accuracy"][k] - v) <= 1 / 120 + 1e-9, k
  leaves_a, leaves_b = jax.tree.leaves(pa), jax.tree.leaves(pb)
  assert len(leaves_a) == len(leaves_b) > 0
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


@pytest.fixture(scope="module")
def pgd_runs(env):
  """PGD-AT: (one process, two processes) workdirs."""
  one, two = str(env["root"] / "pgd_one"), str(env["root"] / "pgd_two")
  outs = run_two(env, env["pgd"], two)  # digits not prepared yet: process 0 prepares it
  _ok(outs)
  assert "Preparing the bundled digits dataset" in outs[0][1]
  run_one(env, env["pgd"], one)
  return one, two


def test_pgd_at_two_processes_equal_one(pgd_runs):
  _assert_same(pgd_runs[1], pgd_runs[0])


def test_distillation_from_a_kdrobust_teacher_two_processes_equal_one(env, pgd_runs):
  """The teacher (a kdrobust run) is restored replicated on the 2-process mesh and evaluated."""
  config = f"{env['kd']}:teacher={pgd_runs[0]}"
  extra = ("--config.teacher_eval_examples=120",)
  one, two = str(env["root"] / "kd_one"), str(env["root"] / "kd_two")
  out = run_one(env, config, one, extra)
  assert "Teacher robust: clean" in out
  outs = run_two(env, config, two, extra)
  _ok(outs)
  assert "Teacher robust: clean" in outs[0][1]
  _assert_same(two, one)


def test_kill_both_processes_and_resume(env, pgd_runs):
  work = str(env["root"] / "pgd_killed")
  outs = run_two(env, env["pgd"], work, fault="ckpt_save:3")
  assert all(rc == -9 for rc, _, _ in outs), [(rc, e[-1500:]) for rc, _, e in outs]
  assert not os.path.exists(os.path.join(work, "results.json"))
  outs = run_two(env, env["pgd"], work)
  _ok(outs)
  assert "Resumed from the checkpoint at step 4" in outs[0][1], outs[0][1][-2000:]
  _assert_same(work, pgd_runs[1], atol=0, rtol=0)


def test_distributed_args_flags_then_environment_then_detection():
  """Flags win over JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; none: detect."""
  from kdrobust import parallel  # pylint: disable=g-import-not-at-top
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
         "JAX_PROCESS_ID": "3"}
  assert parallel.distributed_args(environ=env) == {
      "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
  assert parallel.distributed_args("127.0.0.1:5", 2, 0, environ=env) == {
      "coordinator_address": "127.0.0.1:5", "num_processes": 2, "process_id": 0}
  assert parallel.distributed_args(environ={}) == {}  # Slurm / Cloud TPU detection
  assert parallel.distributed_args("h:1", environ={}) == {"coordinator_address": "h:1"}
  for args, environ, match in [
      (("nohost", 2, 0), {}, r"--coordinator_address \(JAX_COORDINATOR_ADDRESS\) must be HOST:PORT"),
      (("h:1", 2, 2), {}, r"--process_id \(JAX_PROCESS_ID\) must be in \[0, num_processes = 2\)"),
      (("h:1", 0, 0), {}, r"--num_processes \(JAX_NUM_PROCESSES\) must be an integer >= 1"),
      ((None, None, None), dict(env, JAX_PROCESS_ID="x"), r"--process_id .* got 'x'"),
      ((None, 2, 1), {}, r"together .*got \['num_processes', 'process_id'\]"),
      (("h:1", None, 1), {}, r"together")]:
    with pytest.raises(ValueError, match=match):
      parallel.distributed_args(*args, environ=environ)
  with pytest.raises(ValueError, match="need --jax_distributed"):
    parallel.init_distributed(False, "h:1", 2, 0)
  parallel.init_distributed(False)  # a no-op

"""Diagnostics logged during training (``config.diagnostics``).

IGDM's GD/GC against each teacher and KDIGA's local linearity, computed by
``train_step.make_diagnostics_step`` on the first test points, must equal the
library functions of :mod:`kdrobust.diagnostics` applied directly (masking of
the padded last batch included), appear in ``metrics.jsonl`` at the configured
cadence and in ``results.json``, and be refused when there is nothing to log.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdrobust import config_lib
from kdrobust import data as data_lib
from kdrobust import diagnostics
from kdrobust import metrics as metrics_lib
from kdrobust import teachers as teachers_lib
from kdrobust import train
from kdrobust import train_step as step_lib

from train_test import SYN as SYN_NAME, tiny_config  # pylint: disable=g-bad-import-order


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  w = str(tmp_path_factory.mktemp("teacher") / "t")
  train.train_and_evaluate(tiny_config(total_steps=8), w)
  return w


def _student_config(teacher, **over):
  c = tiny_config(**over)
  c.method = config_lib.method_config("kd")
  c.teachers = {"robust": config_lib.teacher_config(teacher)}
  c.diagnostics.every_epochs = 1
  c.diagnostics.num_examples = 100  # 64 + 36: the second batch is padded and masked
  c.diagnostics.local_linearity = True
  c.diagnostics.local_linearity_steps = 3
  return c


def test_logged_diagnostics_equal_the_library_functions(tmp_path, teacher_run):
  w = str(tmp_path / "s")
  c = _student_config(teacher_run, num_epochs=2)
  res = train.train_and_evaluate(c, w)
  rows = [r for r in metrics_lib.read_jsonl(os.path.join(w, "metrics.jsonl"))
          if r["split"] == "diagnostics"]
  assert [r["step"] for r in rows] == [8, 16]  # every epoch of 8 steps
  last = rows[-1]
  assert set(res["diagnostics"]) == {"gd/robust", "gc/robust", "local_linearity"}
  for k, v in res["diagnostics"].items():
    assert last[k] == pytest.approx(v, rel=1e-6)
  assert -1.0 <= last["gc/robust"] <= 1.0 and last["gd/robust"] > 0
  assert last["local_linearity"] >= 0

  # The same quantities from kdrobust.diagnostics on the first 100 test points.
  ckpt = train.ckpt_lib.Checkpointer(os.path.join(w, "checkpoints"), enable_async=False)
  raw = ckpt.restore_raw_single_device(ckpt.latest_step())
  ckpt.close()
  model = train.build_model(c.model, 10, c.data.name)
  student = lambda x: model.apply({"params": raw["params"],
                                   "batch_stats": raw.get("batch_stats", {})}, x, train=False)
  t = teachers_lib.load("robust", c.teachers.robust)
  teacher = lambda x: t.module.apply(t.variables, x, train=False)
  xs, ys = [], []
  for b in data_lib.eval_iterator(c.data.name, data_dir=None, batch_size=64,
                                  num_examples=100, image_dtype="float32"):
    keep = np.asarray(b["mask"], bool)
    xs.append(np.asarray(b["image"])[keep])
    ys.append(np.asarray(b["label"])[keep])
  x, y = jnp.asarray(np.concatenate(xs)), jnp.asarray(np.concatenate(ys))
  assert x.shape[0] == 100
  with jax.default_matmul_precision("highest"):
    gd = diagnostics.gradient_distance(student, teacher, x, y)
    gc = diagnostics.gradient_cosine(student, teacher, x, y)
  # Tolerance: float32 sums over 100 examples in a different order.
  np.testing.assert_allclose(res["diagnostics"]["gd/robust"], float(jnp.mean(gd)), rtol=1e-4)
  np.testing.assert_allclose(res["diagnostics"]["gc/robust"], float(jnp.mean(gc)), rtol=1e-4,
                             atol=1e-6)


def test_student_equal_to_teacher_gives_zero_distance_unit_cosine(teacher_run):
  t = teachers_lib.load("robust", config_lib.teacher_config(teacher_run))
  step = step_lib.make_diagnostics_step(t.module.apply, {"self": t.module.apply})
  b = next(iter(data_lib.eval_iterator(SYN_NAME, data_dir=None, batch_size=64,
                                           num_examples=64)))
  out = step(t.variables, (t.variables,), b, jnp.float32(0.1), jnp.int32(0))
  n = float(out["count"])
  assert n == 64 and "local_linearity" not in out
  assert float(out["gd/self"]) / n == pytest.approx(0.0, abs=1e-6)
  assert float(out["gc/self"]) / n == pytest.approx(1.0, abs=1e-5)


def test_nothing_to_log_is_refused_before_compute():
  c = tiny_config()
  c.diagnostics.every_epochs = 1  # no teachers and local_linearity off
  with pytest.raises(ValueError, match="nothing to log"):
    train.validate(c)
  c.diagnostics.local_linearity = True
  train.validate(c)  # local linearity alone is fine without teachers


def test_diagnostics_cadence_does_not_block_resume(teacher_run):
  old = _student_config(teacher_run).to_dict()
  new = _student_config(teacher_run).to_dict()
  new["diagnostics"]["every_epochs"] = 5
  assert config_lib.config_differences(old, new) == []
  del old["diagnostics"]
  assert json.dumps(config_lib.new_keys(old, new)).count("diagnostics.") == 5

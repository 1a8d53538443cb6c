"""``kdrobust.teacher_entropy``: the unlearnable set and the teacher-entropy diagnostic.

Everything runs on the synthetic 8x8x1 dataset (512 training images) with
hand-made models (constant logits, a nearest-template linear classifier), so
no run is trained; about 15 s on 2 CPU cores.
"""

import glob
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdrobust import teacher_entropy as te
from kdrobust.data import synthetic

SYN = "synthetic:8x8x1:10"
C = 10


def _train():
  d = synthetic.load(SYN, "train")
  return d["image"].astype(np.float32) / 255.0, d["label"].astype(np.int32)


def _constant(cls, scale=1.0):
  """A model that always predicts ``cls`` (logits ``scale * onehot(cls)``, no input gradient)."""
  row = jnp.zeros((C,), jnp.float32).at[cls].set(scale)
  return lambda x: (jnp.broadcast_to(row, (x.shape[0], C))
                    + 0.0 * jnp.sum(x, axis=(1, 2, 3))[:, None])


def _linear():
  """Nearest class mean (a linear classifier): accurate on clean data, attackable."""
  x, y = _train()
  w = np.stack([x[y == k].reshape(-1, 64).mean(0) for k in range(C)])  # [C, 64]
  b = -0.5 * np.sum(w**2, axis=1)
  w, b = jnp.asarray(w.T) * 20.0, jnp.asarray(b) * 20.0
  return lambda u: u.reshape(u.shape[0], -1) @ w + b


C0, C1, LIN = _constant(0), _constant(1), _linear()  # one jit cache entry each


def _np_entropy(z):
  z = np.asarray(z, np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


# ----------------------------------------------------------------------------
# Set construction.
# ----------------------------------------------------------------------------
def test_sets_from_hand_made_matrices():
  rc = np.array([[1, 0, 1, 0, 1],
                 [1, 0, 0, 0, 1],
                 [1, 1, 0, 0, 1]], bool)
  s = te.sets_from_robust_correct(rc)
  assert s["scores"] == [3, 1, 1, 0, 3]
  assert s["unlearnable_indices"] == [3] and s["learnable_indices"] == [0, 4]
  assert (s["unlearnable_count"], s["learnable_count"], s["num_models"]) == (1, 2, 3)
  assert s["robust_score_to_indices"] == {"0": [3], "1": [1, 2], "2": [], "3": [0, 4]}
  one = te.sets_from_robust_correct(np.array([[0, 1, 1, 0]]))  # M = 1: S_U and S_L split all
  assert one["unlearnable_indices"] == [0, 3] and one["learnable_indices"] == [1, 2]
  for bad in (np.zeros(4), np.zeros((0, 4)), np.array([[0, 2, 1]])):
    with pytest.raises(te.TeacherEntropyError):
      te.sets_from_robust_correct(bad)


def test_robust_correct_on_the_train_split():
  """Constant models: robust-correct = (label == their class), index by index."""
  x, y = _train()
  rc, labels = te.robust_correct_matrix([C0, C1, LIN], SYN, eps=0.25, batch_size=200)
  np.testing.assert_array_equal(labels, y)  # dataset order, padding dropped (512 = 2*200+112)
  np.testing.assert_array_equal(rc[0], y == 0)
  np.testing.assert_array_equal(rc[1], y == 1)
  clean = np.asarray(jnp.argmax(LIN(jnp.asarray(x)), -1)) == y
  assert clean.mean() > 0.9 and rc[2].mean() < clean.mean() - 0.2  # the attack bites
  tiny, _ = te.robust_correct_matrix([LIN], SYN, eps=1e-6, batch_size=200)
  np.testing.assert_array_equal(tiny[0], clean)  # a vanishing ball changes nothing
  again, _ = te.robust_correct_matrix([C0, C1, LIN], SYN, eps=0.25, batch_size=200)
  np.testing.assert_array_equal(again, rc)  # deterministic given the seed
  s = te.sets_from_robust_correct(rc[:2])
  assert s["learnable_indices"] == []
  assert s["unlearnable_indices"] == np.flatnonzero(y > 1).tolist()


def test_attack_is_uniform_start_and_eps_over_4_steps():
  """PGD of the protocol: U[-eps, eps] start clipped to [0, 1], sign steps of eps/4, projection."""
  from jax.tree_util import Partial
  x = jnp.asarray(_train()[0][:8])
  y = jnp.zeros((8,), jnp.int32)
  eps, key = 0.1, jax.random.PRNGKey(3)
  x0 = np.asarray(te._pgd_adv(Partial(C0), x, y, eps, key, steps=10))  # no gradient: the start
  d = x0 - np.asarray(x)
  assert np.abs(d).max() <= eps + 1e-6 and np.abs(d).mean() > eps / 4
  assert x0.min() >= 0.0 and x0.max() <= 1.0
  down = Partial(lambda u: jnp.stack([1e-3 * jnp.sum(u, (1, 2, 3))]
                                    + [jnp.zeros(u.shape[0])] * 9, -1))
  # CE of class 0 falls as sum(x) grows: each step moves every pixel by -eps/4.
  for steps in (1, 3, 10):
    got = np.asarray(te._pgd_adv(down, x, y, eps, key, steps=steps))
    want = x0
    for _ in range(steps):
      want = np.clip(np.clip(want - eps / 4, np.asarray(x) - eps, np.asarray(x) + eps), 0, 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def sets_file(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("sets") / "u.json")
  meta = [{"workdir": "/runs/a", "checkpoint": {"requested": "best", "step": 7}},
          {"workdir": "/runs/b", "checkpoint": {"requested": "best", "step": 9}}]
  rec = te.write_sets(out, [C0, LIN], meta, dataset=SYN, eps=(0.25, "0.25"), batch_size=200)
  return out, rec


def test_json_round_trip_and_protocol(sets_file):
  out, rec = sets_file
  assert not glob.glob(os.path.join(os.path.dirname(out), ".*.tmp"))  # atomic write
  back = te.load_unlearnable(out, dataset=SYN, num_samples=512,
                             labels_sha=te.labels_sha256(_train()[1]))
  assert back == json.loads(json.dumps(rec))
  p = back["protocol"]
  assert (p["steps"], p["step_fraction"], p["loss"], p["iterate"], p["batch_norm"],
          p["augment"], p["split"], p["eps"]) == (10, 0.25, "ce", "last", "inference", False,
                                                  "train", 0.25)
  assert [r["checkpoint"]["step"] for r in back["runs"]] == [7, 9]
  y = _train()[1]
  assert back["runs"][0]["train_robust_accuracy"] == pytest.approx((y == 0).mean(), abs=0)
  assert sorted(back["unlearnable_indices"] + back["learnable_indices"]
                + back["robust_score_to_indices"]["1"]) == list(range(512))
  assert set(back["learnable_indices"]) <= set(np.flatnonzero(y == 0).tolist())


def test_refuses_a_file_for_another_dataset_or_size(sets_file, tmp_path):
  out, rec = sets_file
  with pytest.raises(te.TeacherEntropyError, match="dataset"):
    te.check_file(out, "synthetic:8x8x1:5")
  with pytest.raises(te.TeacherEntropyError, match="512 samples"):
    te.load_unlearnable(out, dataset=SYN, num_samples=50000)
  with pytest.raises(te.TeacherEntropyError, match="fingerprint"):
    te.load_unlearnable(out, labels_sha="0" * 64)
  resized = dict(rec, num_samples=1000)
  (tmp_path / "r.json").write_text(json.dumps(resized))
  with pytest.raises(te.TeacherEntropyError, match="1000 samples"):
    te.check_file(str(tmp_path / "r.json"), SYN)
  (tmp_path / "f.json").write_text(json.dumps({"format": "other"}))
  with pytest.raises(te.TeacherEntropyError, match="not a kdrobust unlearnable-set file"):
    te.load_unlearnable(str(tmp_path / "f.json"))
  with pytest.raises(te.TeacherEntropyError, match="does not exist"):
    te.load_unlearnable(str(tmp_path / "missing.json"))
  (tmp_path / "o.json").write_text(json.dumps(dict(rec, unlearnable_indices=[512])))
  with pytest.raises(te.TeacherEntropyError, match="out of range"):
    te.load_unlearnable(str(tmp_path / "o.json"))


def test_identify_refuses_bad_runs_before_compute(tmp_path):
  with pytest.raises(te.TeacherEntropyError, match="at least one"):
    te.identify([], str(tmp_path / "u.json"), log=None)
  with pytest.raises(te.TeacherEntropyError, match="twice"):
    te.identify([str(tmp_path), str(tmp_path)], str(tmp_path / "u.json"), log=None)
  with pytest.raises(te.TeacherEntropyError, match="not a kdrobust run directory"):
    te.identify([str(tmp_path)], str(tmp_path / "u.json"), log=None)
  assert te.main(["identify", "--runs", str(tmp_path), "--out", str(tmp_path / "u.json")]) == 2
  assert not os.path.exists(tmp_path / "u.json")


# ----------------------------------------------------------------------------
# The diagnostic.
# ----------------------------------------------------------------------------
def test_entropy_by_hand_uniform_and_one_hot():
  z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 5.0], [-1.0, 4.0, 0.5]], np.float32)
  np.testing.assert_allclose(np.asarray(te.entropy(z)), _np_entropy(z), rtol=0, atol=1e-6)
  p = np.exp(z[0]) / np.exp(z[0]).sum()
  assert float(te.entropy(z)[0]) == pytest.approx(-np.sum(p * np.log(p)), abs=1e-6)
  assert float(te.entropy(np.zeros((1, C)))[0]) == pytest.approx(math.log(C), abs=1e-6)
  assert float(te.entropy(np.array([[1e4] + [0.0] * (C - 1)]))[0]) == 0.0
  st = te.prediction_stats(z, np.array([2, 0, 1]))
  np.testing.assert_array_equal(np.asarray(st["correct"]), [True, False, True])
  assert float(st["true_prob"][1]) == pytest.approx(1 / (2 + math.exp(5)), abs=1e-7)


def test_diagnose_uniform_and_one_hot_teachers(sets_file):
  out, rec = sets_file
  y = _train()[1]
  u = np.asarray(rec["unlearnable_indices"])
  uni = te.diagnose(lambda x: _constant(0, 0.0)(x), out, dataset=SYN)
  for block in (uni["unlearnable"]["clean"], uni["unlearnable"]["pgd"]):
    assert block["entropy"] == pytest.approx(math.log(C), abs=1e-5)
    assert block["true_class_prob"] == pytest.approx(0.1, abs=1e-6)
    assert block["accuracy"] == pytest.approx((y[u] == 0).mean(), abs=0)  # ties -> class 0
  hot = te.diagnose(_constant(3, 1e4), out, dataset=SYN, attack="none")
  assert hot["unlearnable"]["clean"]["entropy"] == pytest.approx(0.0, abs=1e-7)
  assert hot["unlearnable"]["pgd"] is None and hot["attack"]["attacked"] == "none"
  assert uni["unlearnable"]["n"] == len(u) and uni["learnable"]["n"] == rec["learnable_count"]
  assert uni["attack"]["attacked"] == "teacher" and uni["entropy_unit"] == "nats"


def test_diagnose_equals_a_hand_computation(sets_file):
  """A real teacher: its mean entropy on S_U from an independent data path."""
  out, rec = sets_file
  x, y = _train()
  teacher = LIN
  res = te.diagnose(teacher, out, dataset=SYN)
  for name in ("unlearnable", "learnable"):
    idx = np.asarray(rec[f"{name}_indices"])
    z = np.asarray(teacher(jnp.asarray(x[idx])), np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    got = res[name]["clean"]
    assert got["entropy"] == pytest.approx(_np_entropy(z).mean(), abs=1e-5)
    assert got["accuracy"] == pytest.approx((z.argmax(-1) == y[idx]).mean(), abs=0)
    assert got["true_class_prob"] == pytest.approx(p[np.arange(len(idx)), y[idx]].mean(),
                                                   abs=1e-5)
  adv = res["unlearnable"]["pgd"]
  assert adv["true_class_prob"] < res["unlearnable"]["clean"]["true_class_prob"]
  # Crafted on another model (a constant one: no gradient, so the start point only).
  other = te.diagnose(teacher, out, dataset=SYN, attack_fn=C0,
                      attack_source="student:test")
  assert other["attack"]["attacked"] == "student:test"
  assert other["unlearnable"]["pgd"]["accuracy"] > adv["accuracy"]
  few = te.diagnose(teacher, out, dataset=SYN, num_examples=5, attack="none")
  assert few["unlearnable"]["n"] == min(5, len(rec["unlearnable_indices"]))
  assert set(te.flat(res)) >= {"unlearnable/clean_entropy", "unlearnable/pgd_entropy",
                               "learnable/clean_true_class_prob"}


def test_config_and_evaluate_checks(sets_file, tmp_path):
  import ml_collections as mlc
  out, _ = sets_file
  cfg = lambda **kw: mlc.ConfigDict(dict({"unlearnable": out, "attack": "teacher",
                                          "num_examples": 0}, **kw))
  te.check_config(cfg(), SYN, None, num_teachers=1)
  te.check_config(cfg(unlearnable=""), SYN, None, num_teachers=0)  # off
  with pytest.raises(te.TeacherEntropyError, match="no teacher"):
    te.check_config(cfg(), SYN, None, num_teachers=0)
  with pytest.raises(te.TeacherEntropyError, match="attack must be one of teacher, none"):
    te.check_config(cfg(attack="studnet"), SYN, None, num_teachers=1)
  with pytest.raises(te.TeacherEntropyError, match="num_examples"):
    te.check_config(cfg(num_examples=-1), SYN, None, num_teachers=1)
  with pytest.raises(te.TeacherEntropyError, match="dataset"):
    te.check_config(cfg(), "synthetic:8x8x1:5", None, num_teachers=1)
  with pytest.raises(te.TeacherEntropyError, match="needs --teacher"):
    te.check_for_evaluate(SYN, out, teacher=None, attack="teacher")
  with pytest.raises(te.TeacherEntropyError, match="student \\(this run\\)"):
    te.check_for_evaluate(SYN, out, teacher="t", attack="bogus")
  assert te.check_for_evaluate(SYN, out, teacher="t", attack="student")["dataset"] == SYN

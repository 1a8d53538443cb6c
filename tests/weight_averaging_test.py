"""Weight averaging (config.weight_averaging): SWA/EMA, BN recalibration, resume, evaluate.

* SWA and EMA inside the jitted train step equal hand-computed averages of the
  student's post-step weights (and PyTorch's ``AveragedModel`` / PeerAiD's
  ``moving_average``);
* BN recalibration ('pytorch', 'sample_weighted') equals a hand computation on
  a lone BatchNorm layer, and ``torch.optim.swa_utils.update_bn`` / PeerAiD's
  ``bn_update`` (transcribed) on the parity tests' torch twin;
* a killed-and-resumed run with SWA and recalibration ends bit-identical to an
  uninterrupted one (averaged weights included);
* ``kdrobust.evaluate --weights``; the step with averaging off is unchanged.

Runtime: about 40 s on 2 CPU cores (mostly the two tiny end-to-end runs).
"""

import contextlib
import io
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kdrobust import checkpoint as ckpt_lib
from kdrobust import config_lib
from kdrobust import evaluate as eval_lib
from kdrobust import methods as methods_lib
from kdrobust import models as models_lib
from kdrobust import train
from kdrobust import train_step as step_lib
from kdrobust import weight_averaging as wa_lib
from kdrobust.models import layers

import parity_common as pc  # pylint: disable=g-bad-import-order
from train_test import tiny_config  # pylint: disable=g-bad-import-order

SPE = 2  # steps per epoch of the in-memory step tests


def _step_setup(wa, num_epochs=4, seed=0):
  model = models_lib.get("tiny_cnn", num_classes=4, widths=(4, 8))
  method = methods_lib.from_config(config_lib.method_config("natural"))
  tx = train.make_optimizer(config_lib.base_config().optim, 0.05)
  state = train.create_state(model, tx, method, 4, (8, 8, 1), seed, weight_averaging=wa)
  step = step_lib.make_train_step(apply_fn=model.apply, method=method, tx=tx,
                                  num_classes=4, num_epochs=num_epochs, steps_per_epoch=SPE,
                                  seed=seed, weight_averaging=wa)
  r = np.random.RandomState(seed)
  batches = [{"image": jnp.asarray(r.uniform(0, 1, (8, 8, 8, 1)), jnp.float32),
              "label": jnp.asarray(r.randint(0, 4, 8), jnp.int32)} for _ in range(8)]
  return model, method, tx, state, step, batches


def _run(state, step, batches):
  """Run the steps; returns the final state and the raw (params, batch_stats) after each step."""
  snaps = []
  for b in batches:
    state, _ = step(state, (), b)
    snaps.append(jax.device_get((state.params, state.batch_stats)))
  return state, snaps


def _assert_tree_close(a, b, rtol, what):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=1e-7, err_msg=what)


def test_swa_in_the_step_is_the_equal_mean_of_epoch_end_snapshots():
  # 4 epochs of 2 steps; SWA from epoch 2 every epoch: snapshots after steps 4, 6, 8.
  wa = wa_lib.swa_config(2, bn_recalibration="none")
  *_, state, step, batches = _step_setup(wa)
  state, snaps = _run(state, step, batches)
  picked = [snaps[s - 1] for s in (4, 6, 8)]
  mean = jax.tree.map(lambda *a: np.mean(np.stack(a), 0), *picked)
  assert int(state.averaged["count"]) == 3
  _assert_tree_close(state.averaged["params"], mean[0], 1e-6, "SWA params (tol 1e-6)")
  _assert_tree_close(state.averaged["batch_stats"], mean[1], 1e-6, "SWA BN ('none': averaged)")
  # PyTorch's AveragedModel (lerp 1/(n+1), first update copies) and PeerAiD's
  # moving_average (swa (1 - a) + theta a, a = 1/(n+1)) give the same mean.
  leaf = lambda t: np.asarray(jax.tree.leaves(t[0])[0])  # noqa: E731
  mod = torch.nn.Module()
  mod.weight = torch.nn.Parameter(torch.zeros(leaf(picked[0]).shape))
  avg = torch.optim.swa_utils.AveragedModel(mod)
  swa_peer = None
  for n, snap in enumerate(picked):
    with torch.no_grad():
      mod.weight.copy_(torch.tensor(leaf(snap)))
    avg.update_parameters(mod)
    a = 1.0 / (n + 1)
    swa_peer = leaf(snap) if n == 0 else swa_peer * (1 - a) + leaf(snap) * a
  got = np.asarray(jax.tree.leaves(state.averaged["params"])[0])
  np.testing.assert_allclose(got, avg.module.weight.detach().numpy(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got, swa_peer, rtol=1e-6, atol=1e-7)


def test_ema_in_the_step_equals_hand_recursion():
  wa = dict(wa_lib.default_config(), kind="ema", decay=0.8, every_steps=3, start_epoch=1)
  *_, state, step, batches = _step_setup(wa)
  state, snaps = _run(state, step, batches)
  ema = None
  for s in (3, 6):  # every 3 steps of 8; the first update copies
    p = snaps[s - 1][0]
    ema = p if ema is None else jax.tree.map(lambda e, q: 0.8 * e + 0.2 * q, ema, p)
  assert int(state.averaged["count"]) == 2
  _assert_tree_close(state.averaged["params"], ema, 1e-6, "EMA params (tol 1e-6)")


def test_off_leaves_the_step_unchanged_and_on_changes_it():
  model, method, tx, state, _, batches = _step_setup(None)
  kw = dict(apply_fn=model.apply, method=method, tx=tx, num_classes=4, num_epochs=4,
            steps_per_epoch=SPE, seed=0, jit=False)
  jaxpr = lambda fn, st: str(jax.make_jaxpr(fn)(st, (), batches[0]))  # noqa: E731
  base = jaxpr(step_lib.make_train_step(**kw), state)
  off = jaxpr(step_lib.make_train_step(**kw, weight_averaging=wa_lib.default_config()), state)
  assert off == base  # no extra compute at all
  assert not state.averaged and "averaged" not in str(jax.tree_util.tree_structure(state))
  wa = wa_lib.swa_config(1, bn_recalibration="none")
  _, _, _, st_on, _, _ = _step_setup(wa)
  on = jaxpr(step_lib.make_train_step(**kw, weight_averaging=wa), st_on)
  assert on != base and "cond" in on


def _bn_hand(xs, mode):
  """Hand recalibration of a lone BN over NHWC batches: unbiased var, PyTorch's mixing."""
  mean, var, seen = np.zeros(xs[0].shape[-1]), np.ones(xs[0].shape[-1]), 0
  for k, x in enumerate(xs, start=1):
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    m, v = x.mean(0), x.var(0, ddof=1)
    w = 1.0 / k if mode == "pytorch" else len(xs[k - 1]) / (seen + len(xs[k - 1]))
    mean, var = (1 - w) * mean + w * m, (1 - w) * var + w * v
    seen += len(xs[k - 1])
  return mean, var


@pytest.mark.parametrize("mode", ["pytorch", "sample_weighted"])
def test_recalibration_of_a_batchnorm_equals_hand_computation(mode):
  bn = layers.BatchNorm(use_running_average=False)
  r = np.random.RandomState(1)
  xs = [r.normal(2.0, 3.0, (n, 3, 3, 5)).astype(np.float32) for n in (6, 6, 2)]  # uneven last
  v = bn.init(jax.random.PRNGKey(0), xs[0])
  apply = lambda variables, x, train, mutable, rngs: bn.apply(variables, x, mutable=mutable)  # noqa: E731
  got = wa_lib.recalibrate(apply, v["params"], v["batch_stats"],
                           [{"image": jnp.asarray(x)} for x in xs], mode)
  mean, var = _bn_hand(xs, mode)
  np.testing.assert_allclose(got["mean"], mean, rtol=1e-5, atol=1e-5)  # float32 extraction
  np.testing.assert_allclose(got["var"], var, rtol=1e-5, atol=1e-5)
  other = _bn_hand(xs, "sample_weighted" if mode == "pytorch" else "pytorch")
  assert not np.allclose(other[0], mean, rtol=1e-4)  # the uneven batch tells the modes apart


def _torch_bn_update_peeraid(loader, model):
  """PeerAiD's bn_update, transcribed: reset, momentum b/(n+b), one train pass."""
  model.train()
  bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]  # pylint: disable=protected-access
  for m in bns:
    m.running_mean = torch.zeros_like(m.running_mean)
    m.running_var = torch.ones_like(m.running_var)
  n = 0
  with torch.no_grad():
    for x in loader:
      b = x.shape[0]
      for m in bns:
        m.momentum = b / (n + b)
      model(x)
      n += b


@pytest.mark.parametrize("mode", ["pytorch", "sample_weighted"])
def test_recalibration_matches_torch_on_the_parity_twin(mode):
  net = pc.TorchNet(seed=3).float()
  with torch.no_grad():
    for m in net.modules():  # running statistics that recalibration must discard
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.fill_(5.0)
        m.running_var.fill_(7.0)
  v = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), pc.flax_variables(net))
  r = np.random.RandomState(2)
  xs = [r.uniform(0, 1, (n, pc.HW, pc.HW, 3)).astype(np.float32) for n in (8, 8, 3)]
  loader = [pc.nchw(x).float() for x in xs]
  if mode == "pytorch":
    torch.optim.swa_utils.update_bn(loader, net)
  else:
    _torch_bn_update_peeraid(loader, net)
  got = wa_lib.recalibrate(pc.FlaxNet().apply, v["params"], v["batch_stats"],
                           [{"image": jnp.asarray(x)} for x in xs], mode)
  for i in (1, 2):
    bn = getattr(net, f"bn{i}")
    np.testing.assert_allclose(got[f"bn{i}"]["mean"], bn.running_mean.numpy(), rtol=1e-4,
                               atol=1e-5, err_msg=f"bn{i} mean (float32, tol 1e-4)")
    np.testing.assert_allclose(got[f"bn{i}"]["var"], bn.running_var.numpy(), rtol=1e-4,
                               atol=1e-5, err_msg=f"bn{i} var (float32, tol 1e-4)")


def _wa_config(**over):
  """3 epochs of 8 steps, SWA from epoch 1 (updates at steps 8, 16, 24), torch update_bn."""
  return tiny_config(**{"weight_averaging.kind": "swa", "weight_averaging.start_epoch": 1,
                        "weight_averaging.bn_recalibration": "pytorch", "eval.every_epochs": 0,
                        "method": config_lib.method_config("natural"), **over})


def _raw(workdir, step=None):
  ck = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), enable_async=False)
  raw = ck.restore_raw(step if step is not None else ck.latest_step())
  ck.close()
  return raw


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """An uninterrupted run, and a copy "killed" before its last checkpoint, then resumed."""
  base = tmp_path_factory.mktemp("wa")
  full, part = str(base / "full"), str(base / "part")
  res_full = train.train_and_evaluate(_wa_config(), full)
  shutil.copytree(full, part)
  ck = ckpt_lib.Checkpointer(os.path.join(part, "checkpoints"), enable_async=False)
  assert ck.all_steps() == [16, 24]
  ck.close()
  shutil.rmtree(os.path.join(part, "checkpoints", "24"))  # killed after step 16's save
  os.remove(os.path.join(part, "results.json"))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    res_part = train.train_and_evaluate(_wa_config(), part)
  assert "Resumed from the checkpoint at step 16" in out.getvalue()
  return full, res_full, part, res_part


def test_resume_with_averaged_weights_is_bit_identical(runs):
  full, res_full, part, res_part = runs
  a, b = _raw(full), _raw(part)
  assert int(a["averaged"]["count"]) == 3 and int(a["averaged"]["bn_count"]) == 3
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert res_full["weights"] == "averaged" and "raw" in res_full
  for k in ("clean_accuracy", "robust_accuracy", "raw"):
    assert res_part[k] == res_full[k]
  # The averaged BN statistics are recalibrated, not the raw student's.
  assert not np.allclose(jax.tree.leaves(a["averaged"]["batch_stats"])[0],
                         jax.tree.leaves(a["batch_stats"])[0])


def test_evaluate_weights(runs):
  full, *_ = runs
  raw = _raw(full)
  _, v, _, _, used = eval_lib.load_run_weights(full, "latest")
  assert used == "averaged"
  _assert_tree_close(v["params"], raw["averaged"]["params"], 0, "auto = averaged")
  _, v, _, _, used = eval_lib.load_run_weights(full, "latest", weights="raw")
  assert used == "raw"
  _assert_tree_close(v["params"], raw["params"], 0, "raw")
  rec = eval_lib.evaluate_run(full, checkpoint="latest", attacks="clean", weights="raw",
                              write=False, progress=False, log=None, num_examples=64)
  assert rec["weights"] == "raw"
  no_avg = {"params": raw["params"], "batch_stats": raw["batch_stats"]}
  with pytest.raises(ValueError, match="no averaged weights"):
    wa_lib.select_variables(no_avg, "averaged")
  with pytest.raises(eval_lib.EvaluationError, match="valid: auto, averaged, raw"):
    eval_lib.load_run_weights(full, "latest", weights="swa")


def test_bad_config_is_refused_with_the_valid_values():
  for over, msg in ((("kind", "sswa"), "valid: none, swa, ema"),
                    (("bn_recalibration", "torch"), "valid: none, pytorch, sample_weighted"),
                    (("start_epoch", 0), "1-indexed epoch"),
                    (("start_epoch", 9), "after the last epoch"),
                    (("every_epochs", 0), "integer >= 1"),
                    (("decay", 1.0), r"in \[0, 1\)")):
    c = dict(wa_lib.swa_config(1, bn_recalibration="none"), **dict([over]))
    with pytest.raises(ValueError, match=msg):
      wa_lib.check_config(c, num_epochs=3)
  assert wa_lib.start_epoch({"start_epoch": 0.475}, 200) == 95  # SAAD's 95 of 200
  assert wa_lib.start_epoch({"start_epoch": 215}, 300) == 215


def test_a_run_used_as_a_teacher_is_its_averaged_model(runs):
  from kdrobust import teachers as teachers_lib
  full, *_ = runs
  raw = _raw(full)
  t = teachers_lib.load("t", config_lib.teacher_config(full, which="latest"))
  assert t.source.endswith("(averaged weights)"), t.source
  _assert_tree_close(t.variables["params"], raw["averaged"]["params"], 0, "teacher = averaged")
  _assert_tree_close(t.variables["batch_stats"], raw["averaged"]["batch_stats"], 0, "teacher BN")

"""Effective learning rate of the paper configs, epoch by epoch, against the official scripts.

Each official script's learning-rate logic is transcribed below (written from
the code, not copied) and run for the whole training; the config's optax
schedule (``kdrobust.train.make_schedule``) must give the same lr at every
step of every epoch, within a relative 1e-6 (the schedule is float32). DARHT's
is checked against torch's own ``MultiStepLR`` and ``_LRScheduler``, called as
the script calls them. The reading behind each (docs/fidelity.md, errata E1, E7,
E8, E9) is in configs/paper_settings.py.
"""

import bisect
import importlib.util
import os
import warnings

import numpy as np
import pytest

from kdrobust import config_lib
from kdrobust import train as train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH = 3  # every step of an epoch is checked, not only its first
RTOL = 1e-6


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(
      f"kdrobust_sched_{name}", os.path.join(ROOT, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def lr_by_epoch(c, steps_per_epoch=STEPS_PER_EPOCH):
  """The config's lr of each 0-indexed epoch (checked constant within the epoch)."""
  sched = train_lib.make_schedule(c.optim, steps_per_epoch, c.num_epochs)
  steps = np.arange(c.num_epochs * steps_per_epoch)
  lrs = np.asarray(sched(steps), np.float64).reshape(c.num_epochs, steps_per_epoch)
  assert (lrs == lrs[:, :1]).all(), "the lr changes inside an epoch"
  return lrs[:, 0]


# -- Transcriptions of the official lr logic (epoch -> lr while training it). --

def local_copy_decay(epochs, lr=0.1, schedule=(100, 150), factor=0.1):
  """ARD main.py / IAD-I.py / KDIGA main.py: ``adjust_learning_rate(opt, epoch, lr)``
  multiplies its *local* ``lr`` (always the unchanged ``args.lr``) and writes it."""
  group_lr, out = lr, []
  for epoch in range(epochs):
    local = lr  # the caller passes args.lr every time
    if epoch in schedule:
      local *= factor
      group_lr = local
    out.append(group_lr)
  return np.array(out)


def trades_decay(epochs, lr=0.1):
  """train_trades_cifar10.py: 1-indexed epochs, lr set before each epoch trains."""
  out = []
  for epoch in range(1, epochs + 1):
    cur = lr
    if epoch >= 75:
      cur = lr * 0.1
    if epoch >= 90:
      cur = lr * 0.01
    if epoch >= 100:
      cur = lr * 0.001
    out.append(cur)
  return np.array(out)


def igdm_decay(epochs, points, lr=0.1):
  """IGDM scripts: train 1-indexed epoch t, then ``if t in points: lr *= 0.1``."""
  group_lr, out = lr, []
  for epoch in range(1, epochs + 1):
    out.append(group_lr)
    if epoch in points:
      group_lr *= 0.1
  return np.array(out)


def darht_torch(epochs, iters_per_epoch=196):
  """DARHT_CIFAR_100_stateful_MWU.py's scheduler calls, on torch's own schedulers."""
  torch = pytest.importorskip("torch")
  from torch.optim import lr_scheduler  # pylint: disable=g-import-not-at-top

  class WarmUpLR(lr_scheduler._LRScheduler):  # pylint: disable=protected-access
    """The script's warm-up: base_lr * last_epoch / total_iters."""

    def __init__(self, optimizer, total_iters, last_epoch=-1):
      self.total_iters = total_iters
      super().__init__(optimizer, last_epoch)

    def get_lr(self):
      return [b * self.last_epoch / (self.total_iters + 1e-8) for b in self.base_lrs]

  p = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=5e-4)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    train_scheduler = lr_scheduler.MultiStepLR(opt, milestones=[115, 160, 185], gamma=0.1)
    WarmUpLR(opt, iters_per_epoch * 1)  # constructed, never stepped
    out = []
    for epoch in range(epochs):
      out.append(opt.param_groups[0]["lr"])  # the lr epoch `epoch` trains with
      opt.step()
      if epoch > 1:
        train_scheduler.step(epoch)
  return np.array(out)


@pytest.mark.parametrize("name,arg", [
    ("cifar_ard", "protocol=official"), ("cifar_ard", "protocol=official,dataset=cifar100"),
    ("cifar_iad", "protocol=official"), ("cifar_kdiga", None),
    ("cifar_kdiga", "variant=kdiga_ard"), ("cifar_kd", None)])
def test_e1_local_copy_decay(name, arg):
  """E1: 0.1 for epochs 0-99, 0.01 from 100 to the end; never 0.001."""
  got = lr_by_epoch(load_config(name, arg))
  assert len(got) == 200
  np.testing.assert_allclose(got, local_copy_decay(200), rtol=RTOL)
  assert got[99] == pytest.approx(0.1, rel=RTOL)
  for e in (100, 150, 199):
    assert got[e] == pytest.approx(0.01, rel=RTOL)


def test_e1_transcription_is_not_the_nominal_schedule():
  """The transcription itself: a global decay at 100 and 150 would differ from 150 on."""
  nominal = np.where(np.arange(200) < 100, 0.1, np.where(np.arange(200) < 150, 0.01, 0.001))
  assert not np.allclose(local_copy_decay(200), nominal)
  np.testing.assert_allclose(local_copy_decay(200)[:150], nominal[:150])


@pytest.mark.parametrize("epochs", [None, 110])
def test_e8_trades_1_indexed_decay(epochs):
  """E8: TRADES at 0.01 from 0-indexed 74 (1-indexed 75), 0.001 from 89, 1e-4 from 99."""
  c = load_config("cifar10_trades", f"epochs={epochs}" if epochs else None)
  got = lr_by_epoch(c)
  np.testing.assert_allclose(got, trades_decay(c.num_epochs), rtol=RTOL)
  assert got[73] == pytest.approx(0.1, rel=RTOL)
  assert got[74] == pytest.approx(0.01, rel=RTOL)
  assert got[75] == pytest.approx(0.01, rel=RTOL)
  if epochs:
    assert got[88] == pytest.approx(0.01, rel=RTOL)
    assert got[89] == pytest.approx(0.001, rel=RTOL)
    assert got[99] == pytest.approx(1e-4, rel=RTOL)


def test_e9_darht_matches_torch_schedulers():
  """E9: lr 0 for epochs 0-2, then each MultiStepLR decay one epoch late."""
  c = load_config("cifar_darht")
  got = lr_by_epoch(c)
  np.testing.assert_allclose(got, darht_torch(c.num_epochs), rtol=RTOL, atol=0)
  expect = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.1, 115: 0.1, 116: 0.01, 160: 0.01, 161: 1e-3,
            185: 1e-3, 186: 1e-4, 349: 1e-4}
  for e, lr in expect.items():
    assert got[e] == pytest.approx(lr, rel=RTOL, abs=0), e


def test_e7_rslad_igdm_decays():
  """E7: IGDM's RSLAD scripts decay after 1-indexed int(0.7E), int(0.86E), int(0.95E)."""
  c = load_config("cifar_rslad", "protocol=igdm,igdm=1")
  e = c.num_epochs
  assert e == 300
  points = [int(e * 0.7), int(e * 0.86), int(e * 0.95)]
  assert points == [210, 258, 285]
  np.testing.assert_allclose(lr_by_epoch(c), igdm_decay(e, points), rtol=RTOL)


@pytest.mark.parametrize("name,arg", [("cifar_ard", "protocol=igdm"),
                                      ("cifar_adaad", "protocol=igdm,igdm=1")])
def test_igdm_200_epoch_scripts(name, arg):
  """IGDM's ARD/AdaAD scripts: lr x0.1 after 1-indexed epochs 100 and 150."""
  c = load_config(name, arg)
  np.testing.assert_allclose(lr_by_epoch(c), igdm_decay(200, [100, 150]), rtol=RTOL)


def test_rslad_official_decays():
  """RSLAD's own script: x0.1 after 1-indexed epochs 215, 260, 285."""
  c = load_config("cifar_rslad", "protocol=official")
  np.testing.assert_allclose(lr_by_epoch(c), igdm_decay(300, [215, 260, 285]), rtol=RTOL)


def _optim(**kw):
  o = config_lib.base_config().optim
  o.update(kw)
  return o


def test_table_schedule_semantics():
  o = _optim(schedule="table", lr=0.2, lr_epochs=(0, 2, 5), lr_factors=(0.0, 1.0, 0.5))
  sched = train_lib.make_schedule(o, 10, 8)
  assert float(sched(0)) == 0.0 and float(sched(19)) == 0.0
  assert float(sched(20)) == pytest.approx(0.2) and float(sched(49)) == pytest.approx(0.2)
  assert float(sched(50)) == pytest.approx(0.1) and float(sched(10_000)) == pytest.approx(0.1)


@pytest.mark.parametrize("kw,match", [
    ({"lr_epochs": (), "lr_factors": ()}, "same non-zero length"),
    ({"lr_epochs": (0, 3), "lr_factors": (1.0,)}, "same non-zero length"),
    ({"lr_epochs": (1, 3), "lr_factors": (1.0, 0.1)}, "increase strictly from 0"),
    ({"lr_epochs": (0, 3, 3), "lr_factors": (1.0, 0.1, 0.01)}, "increase strictly from 0"),
    ({"lr_epochs": (0, 3), "lr_factors": (1.0, -0.1)}, ">= 0"),
])
def test_table_schedule_errors(kw, match):
  with pytest.raises(ValueError, match=match):
    train_lib.make_schedule(_optim(schedule="table", **kw), 10, 8)


def test_unknown_schedule_lists_valid_ones():
  with pytest.raises(ValueError, match="valid: constant, piecewise, table, cosine"):
    train_lib.make_schedule(_optim(schedule="step"), 10, 8)


def test_piecewise_applies_from_the_first_step_of_its_epoch():
  sched = train_lib.make_schedule(_optim(decay_epochs=(2,)), 5, 4)
  assert float(sched(9)) == pytest.approx(0.1) and float(sched(10)) == pytest.approx(0.01)


def test_bisect_reading_of_multisteplr():
  """The closed form DARHT's step(epoch) uses: lr(e + 1) = 0.1 * 0.1^bisect_right(m, e)."""
  m = [115, 160, 185]
  assert [bisect.bisect_right(m, e) for e in (114, 115, 159, 160, 185)] == [0, 1, 1, 2, 3]

"""Recipe cards (kdrobust.recipe): the effective schedule, the attack, the loss, the CLI, recipe.md.

Nothing here trains except one two-step run of a tiny CNN on digits (for
``recipe.md``); the cards themselves load no data, model or teacher.
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from kdrobust import config_lib
from kdrobust import methods as methods_lib
from kdrobust import recipe
from kdrobust import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARD_OFFICIAL = "configs/cifar_ard.py:protocol=official"


@pytest.fixture(autouse=True)
def _in_root(monkeypatch):
  monkeypatch.chdir(ROOT)  # config paths are relative to the repository, as on the CLI


def _row(card, name):
  """The value cell of the table row ``| name | value |``."""
  for line in card.splitlines():
    if line.startswith(f"| {name} |"):
      return line.split(" | ", 1)[1].rstrip(" |")
  raise AssertionError(f"no row {name!r} in the card:\n{card}")


def test_ard_official_card_shows_the_effective_schedule_and_a_train_mode_attack():
  c = recipe.load_config([ARD_OFFICIAL])
  card = recipe.recipe_card(c)
  lr = _row(card, "effective lr (first step of each epoch, kdrobust.train.make_schedule)")
  # docs/fidelity.md E1: the official ARD code never reaches 0.001 (its decay at 150 sets 0.01
  # again).
  assert lr == "epochs 0-99: 0.1; epochs 100-199: 0.01", lr
  assert "0.001" not in lr
  # The numbers behind the line: make_schedule at each epoch's first step (float32: rel 1e-6).
  lrs = recipe.epoch_lrs(c, 390)
  assert lrs == pytest.approx([0.1] * 100 + [0.01] * 100, rel=1e-6)
  # docs/fidelity.md E2: the official ARD attack runs the student in train mode.
  assert _row(card, "student BN").startswith("train: batch statistics + running-statistic update")
  assert _row(card, "eps").startswith("8/255") and _row(card, "steps") == "10"
  assert "| temperature | 30 (tau) |" in card and "| reduction | elemmean" in card
  assert "## Provenance" in card and "- protocol: official" in card


def test_lr_ranges_compress_equal_runs():
  assert recipe.lr_ranges([0.1, 0.1, 0.1 * 0.1, 0.01]) == "epochs 0-1: 0.1; epochs 2-3: 0.01"
  assert recipe.lr_ranges([0.0, 0.1]) == "epoch 0: 0; epoch 1: 0.1"
  c = config_lib.base_config()
  c.data.name = "synthetic:8x8x1:10"  # 512 train examples, 8 steps per epoch at batch 64
  c.data.batch_size = 64
  c.num_epochs = 4
  c.optim.lr = 0.05
  c.optim.decay_epochs = (1, 3)
  card = recipe.recipe_card(c)
  assert _row(card, "effective lr (first step of each epoch, kdrobust.train.make_schedule)") \
      == "epoch 0: 0.05; epochs 1-2: 0.005; epoch 3: 0.0005"
  assert "8 steps/epoch = 512 train examples" in _row(card, "batch size")
  assert "CUT" not in card
  c.total_steps = 2
  assert "CUT to 2" in _row(recipe.recipe_card(c), "total steps")


@pytest.mark.parametrize("name", methods_lib.available())
def test_every_method_shows_its_hyperparameters_and_formula(name):
  c = config_lib.base_config()
  c.method = config_lib.method_config(name)
  card = recipe.recipe_card(c)
  method = methods_lib.from_config(c.method)
  for f in dataclasses.fields(method):
    if f.name != "attack":
      assert f"| {f.name} | " in card, f.name
  doc = recipe.method_doc(type(method))
  assert any(f.startswith("L") for f in doc["formulas"]), doc  # the outer loss is there
  for f in doc["formulas"]:
    assert f in card
  attacks = type(method).perturb is not methods_lib.Method.perturb
  assert ("none: trained on clean inputs" in card) != attacks
  assert recipe.recipe_card(c) == card  # deterministic


def test_igdm_wrapper_fields_and_formula():
  c = config_lib.base_config()
  c.method = config_lib.method_config("ard", igdm_alpha=3.0)
  card = recipe.recipe_card(c)
  section = card.split("IGDM plug-in", 1)[1]
  method = methods_lib.from_config(c.method)
  for f in dataclasses.fields(method):
    if f.name not in ("attack", "base"):
      assert f"| {f.name} | " in section, f.name
  assert "| alpha | 3 |" in section
  doc = recipe.method_doc(type(method))
  assert any(f.startswith("L_IGDM = KL_batchmean(") and f.endswith(")") for f in doc["formulas"])
  for f in doc["formulas"]:
    assert f in section
  assert doc["bn_order"] and doc["bn_order"] in section


def test_cli_prints_the_same_card():
  args = [ARD_OFFICIAL, "--config.optim.lr=0.05"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "kdrobust.recipe", *args], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  c = recipe.load_config(args)
  assert c.optim.lr == 0.05
  assert r.stdout == recipe.recipe_card(c)
  assert "epochs 0-99: 0.05;" in r.stdout
  assert recipe.load_config(["--config", ARD_OFFICIAL, "--config.optim.lr", "0.05"]) == c


@pytest.mark.parametrize("argv, message", [
    (["configs/no_such_config.py"], "config file 'configs/no_such_config.py' not found; configs:"),
    (["configs/cifar_ard.py:protocol=nope"], "valid: igdm, official"),
    (["configs/quickstart.py", "--config.optim.lrr=1"], "lrr"),
    (["configs/quickstart.py", "--config.optim.lr=abc"], "abc"),
    ([], "give one config"),
])
def test_bad_command_lines_fail_clearly(argv, message, capsys):
  assert recipe.main(argv) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err, err
  if "not found" in message:
    assert "configs/cifar_ard.py" in err and "paper_settings" not in err


def test_training_set_size_prepared_or_standard(tmp_path):
  c = config_lib.base_config()
  c.data.name = "cifar10"
  c.data.batch_size = 128
  c.data.data_dir = str(tmp_path)  # nothing prepared there
  assert "390 steps/epoch = 50000 train examples (standard size; not prepared here) // 128" \
      in _row(recipe.recipe_card(c), "batch size")
  # A prepared subset (only its dataset_info.json matters to the card): its own count wins.
  d = tmp_path / "cifar10" / "3.0.2"
  d.mkdir(parents=True)
  (d / "dataset_info.json").write_text(json.dumps({
      "fileFormat": "array_record",
      "splits": [{"name": "train", "shardLengths": ["1000"]},
                 {"name": "test", "shardLengths": ["100"]}]}))
  assert "7 steps/epoch = 1000 train examples (prepared dataset) // 128" \
      in _row(recipe.recipe_card(c), "batch size")


def test_run_writes_recipe_md(tmp_path, capsys):
  # configs/quickstart.py cut to 2 steps, on the synthetic 8x8 set (no preparation), one
  # device and 1-step attacks so that compiling stays small.
  c = recipe.load_config([
      "configs/quickstart.py", "--config.total_steps=2", "--config.eval.num_examples=60",
      "--config.model.name=tiny_cnn", "--config.log_every_steps=1",
      "--config.data.name=synthetic:8x8x1:10", "--config.num_devices=1",
      "--config.method.attack.steps=1", "--config.eval.attacks.pgd20.steps=1"])
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(c, workdir)
  with open(os.path.join(workdir, "recipe.md")) as f:
    card = f.read()
  assert card == recipe.recipe_card(c)
  assert "8 steps/epoch = 512 train examples (synthetic) // 64" in card
  assert "CUT to 2" in card
  capsys.readouterr()
  # Resumed with a changed resumable key: regenerated, and said so; unchanged: silent.
  with c.unlocked():
    c.total_steps = 3
  recipe.write_card(workdir, c)
  assert "Regenerated" in capsys.readouterr().out
  with open(os.path.join(workdir, "recipe.md")) as f:
    assert "CUT to 3" in f.read()
  recipe.write_card(workdir, c)
  assert capsys.readouterr().out == ""

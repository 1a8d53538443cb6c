"""launch/results_campaign.py: run specifications and the report tables (no training)."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIAG = "campaign_diag"  # the file name the report reads


@pytest.fixture(scope="module")
def rc():
  spec = importlib.util.spec_from_file_location(
      "results_campaign", os.path.join(ROOT, "launch", "results_campaign.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_stat_is_mean_and_sample_std(rc):
  assert rc._stat([0.5]) == "50.0"
  assert rc._stat([0.5, 0.7]) == "60.0 ± 14.1"  # sample std of (50, 70) = 14.14
  assert rc._stat([0.25, 0.75], scale=1, fmt=".3g") == "0.5 ± 0.354"
  assert rc._stat([]) == "-"


def test_variant_sets_the_method_field_and_the_cli_flag(rc, tmp_path):
  key, wd, c, desc, cli = rc.student_spec("digits", str(tmp_path), "", "kdiga_g1000", 1)
  assert c.method.name == "kdiga" and c.method.gamma == 1000.0 and c.seed == 1
  assert "--config.method.gamma=1000.0" in cli and "--config.seed=1" in cli
  assert wd.endswith("kdiga_g1000_s1") and key == "kdiga_g1000"
  _, _, plain, _, plain_cli = rc.student_spec("digits", str(tmp_path), "", "kdiga", 0)
  assert plain.method.gamma == 0.5 and "gamma" not in plain_cli


def _row(tmp_path, method, seed, gd, gc, ll, aa=0.5):
  wd = tmp_path / f"{method}_s{seed}"
  os.makedirs(wd / "eval")
  rec = {"diagnostics": {"teacher_gradients": {"gd": gd, "gc": gc, "num_examples": 10},
                         "local_linearity": {"per_eps": {"0.1": {"mean": ll, "max": ll}}}}}
  (wd / "eval" / f"{DIAG}.json").write_text(json.dumps(rec))
  return {"dataset": "digits", "role": "student", "method": method, "seed": seed,
          "workdir": str(wd), "config": "c", "model": "tiny_cnn", "status": "ok",
          "clean": 0.9, "pgd20": 0.6, "aa": aa, "eps": 0.1}


def test_tables_aggregate_seeds_and_the_last_row_wins(rc, tmp_path):
  assert rc.DIAG_NAME == DIAG
  rows = [_row(tmp_path, "kd", 0, 0.5, 0.6, 0.9, aa=0.4),
          _row(tmp_path, "kd", 1, 0.7, 0.8, 1.1, aa=0.6),
          {"dataset": "digits", "role": "student", "method": "ard", "seed": 0,
           "workdir": str(tmp_path / "ard_s0"), "config": "c", "status": "failed",
           "error": "boom"}]
  text = rc.diagnostics_table(rows)
  assert "| kd | 0,1 | 0.6 ± 0.141 | 0.7 ± 0.141 | 1 ± 0.141 |" in text
  assert "ard" not in text  # failed runs have no diagnostics
  main = rc.table(rows)
  assert "| kd |" in main and "50.0 ± 14.1" in main  # AA over the two seeds
  assert "failed: boom" in main
  rows.append(dict(rows[2], status="ok", clean=1.0, pgd20=0.9, aa=0.8))  # a retry
  assert "failed" not in rc.table(rows)


def test_caption_says_which_pgd_iterate_the_column_counts(rc):
  assert "the last iterate, as the papers' code does" in rc.pgd_iterate_caption(["last"])
  assert "any iterate" in rc.pgd_iterate_caption(["any"])
  mixed = rc.pgd_iterate_caption(["any", "last"])
  assert "mixes iterates" in mixed and "re-evaluate" in mixed
  assert rc.pgd_iterate_caption([]) == ""


@pytest.mark.parametrize("key", ["natural", "trades", "pgd_at"])
def test_reference_rows_build_valid_configs_and_commands(rc, tmp_path, key):
  """The no-teacher rows: the config the campaign runs is valid, and its command builds it."""
  from kdrobust import methods as methods_lib
  _, _, c, _, cli = rc.student_spec("digits", str(tmp_path), "", key, 0)
  assert methods_lib.from_config(c.method).name == key
  assert ("method=" + key in cli) == (key != "pgd_at")
  assert "--config.method.name" not in cli  # renaming keeps PGD-AT's fields: refused
  _, _, t, _, tcli = rc.teacher_spec("digits", str(tmp_path), "", natural=True)
  assert methods_lib.from_config(t.method).name == "natural" and ":method=natural" in tcli


def test_teacher_free_methods_get_no_teacher_argument(rc, tmp_path):
  from kdrobust import methods as methods_lib
  _, _, c, _, cli = rc.student_spec("digits", str(tmp_path), "", "peeraid", 0)
  assert methods_lib.from_config(c.method).name == "peeraid"
  assert "teacher=" not in cli and not list(c.teachers)
  _, _, c, _, cli = rc.student_spec("digits", str(tmp_path), "", "saad", 0)
  assert "teacher=" in cli and list(c.teachers)

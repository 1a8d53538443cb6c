"""Loading frozen teachers through kdrobust.teachers.load (PyTorch file, converted dir)."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is needed for PyTorch teachers")

import torch_twins as tt  # noqa: E402

from kdrobust import config_lib, data, models, teachers  # noqa: E402
from kdrobust.teachers import convert  # noqa: E402


def _twin_file(tmp_path, num_classes=100):
  torch.manual_seed(0)
  twin = tt.TDMWideResNet(num_classes=num_classes, depth=10, width=2,
                          mean=models.DATASET_STATS["cifar100"][0],
                          std=models.DATASET_STATS["cifar100"][1]).eval()
  path = str(tmp_path / "dm.pt")
  torch.save(twin.state_dict(), path)
  return twin, path


def test_torch_teacher_loads_with_its_normalisation_and_matches_logits(tmp_path):
  twin, path = _twin_file(tmp_path)
  tc = config_lib.teacher_config(path, model="wrn", depth=10, width=2, variant="dm")
  t = teachers.load("robust", tc)
  assert t.num_classes == 100
  x = np.random.default_rng(0).uniform(size=(2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    want = twin(torch.from_numpy(x)).numpy()
  with jax.default_matmul_precision("highest"):
    got = t.module.apply(t.variables, x.transpose(0, 2, 3, 1), train=False)
  np.testing.assert_allclose(got, want, atol=1e-4)
  info = data.info("synthetic:32x32x3:100", None)
  teachers.check_against_data(t, info)  # fits
  with pytest.raises(teachers.TeacherError, match="100 logits but dataset"):
    teachers.check_against_data(t, data.info("synthetic:32x32x3:10", None))


def test_converted_teacher_dir_declares_classes_before_loading(tmp_path):
  _, path = _twin_file(tmp_path)
  out = tmp_path / "conv"
  convert.main(["--arch", "wrn", "--input", path, "--output", str(out), "--variant", "dm",
                "--model_kwargs", '{"depth": 10, "width": 2}'])
  tc = config_lib.teacher_config(str(out))
  with pytest.raises(teachers.TeacherError, match="predicts 100 classes"):
    teachers.check_compatible("robust", tc, data.info("synthetic:32x32x3:10", None))
  t = teachers.load("robust", tc)
  assert t.num_classes == 100 and t.source.startswith("converted:")


def test_bad_teacher_paths_are_explained(tmp_path):
  with pytest.raises(teachers.TeacherError, match="does not exist"):
    teachers.load("t", config_lib.teacher_config(str(tmp_path / "missing.pt")))
  (tmp_path / "weights.bin").write_bytes(b"x")
  with pytest.raises(teachers.TeacherError, match="Unsupported teacher file"):
    teachers.load("t", config_lib.teacher_config(str(tmp_path / "weights.bin")))
  _, path = _twin_file(tmp_path)
  with pytest.raises(teachers.TeacherError, match="set config.teachers.t.model"):
    teachers.load("t", config_lib.teacher_config(path))

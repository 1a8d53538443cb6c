"""Frozen teachers in bfloat16 (issue 11 item 1): the dtype choice and the logits' agreement.

The agreement test converts a PyTorch WRN-10-2 (the DeepMind layout of the
test twins, random convolutions, batch norm calibrated on the data) whose
head is fitted to real CIFAR-10 labels (ridge regression on its penultimate
features of 1,017 training images, logits scaled to a trained model's
spread, std 4), then compares the converted teacher's bfloat16 logits with
its float32 logits on 256 real CIFAR-10 test images:

* argmax agreement >= 97 % (measured: 98.8 %, 3 flips of 256);
* every flip is a near-tie: float32 top-2 margin < 0.25 logit;
* KL(p_fp32 || p_bf16): mean <= 5e-4 nats, max <= 5e-3 nats (measured:
  1.6e-4 mean, 1.7e-3 max);
* logits float32 in both cases.

Random features are a pessimistic stand-in for a trained teacher (their
class evidence is weak, so the fitted head amplifies rounding); the bounds
are those of this stand-in.

The images come from the CIFAR-10 subset archive
(``$KDROBUST_CIFAR10_SUBSET``, else ``data/cifar-10-python-subset.tar.gz``
in the repository, else the development checkout's sibling data folder, where
the project's CI finds it; ``python -m kdrobust.data.cifar_subset`` builds it
from the official archive, docs/data.md). Where it is absent the test is
skipped.
Runtime: about 10 s on 2 CPU cores.
"""

import os
import pickle
import tarfile

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is needed for the converted teacher")

import torch_twins as tt  # noqa: E402

from kdrobust import config_lib, models, teachers  # noqa: E402
from kdrobust.teachers import convert  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NAME = "cifar-10-python-subset.tar.gz"
_CANDIDATES = [os.path.join(_ROOT, "data", _NAME),
               os.path.join(os.path.dirname(_ROOT), "shared", "data", "cifar10-subset", _NAME)]
ARCHIVE = os.environ.get("KDROBUST_CIFAR10_SUBSET") or next(
    (p for p in _CANDIDATES if os.path.exists(p)), _CANDIDATES[0])
RIDGE = 1000.0  # ridge penalty of the head fit (a smaller one amplifies feature noise)
MIN_ARGMAX_AGREEMENT = 0.97
MAX_KL_MEAN = 5e-4
MAX_KL_MAX = 5e-3
MAX_FLIP_MARGIN = 0.25  # a flipped argmax needs a float32 top-2 logit margin below this


def test_resolve_dtype():
  assert teachers.resolve_dtype("auto", "cpu") == "float32"
  assert teachers.resolve_dtype("auto", "gpu") == "bfloat16"
  assert teachers.resolve_dtype("auto", "tpu") == "bfloat16"
  assert teachers.resolve_dtype("bfloat16", "cpu") == "bfloat16"
  assert teachers.resolve_dtype("float32", "gpu") == "float32"
  assert config_lib.teacher_config("x").dtype == "auto"
  with pytest.raises(teachers.TeacherError, match="valid: auto, float32, bfloat16"):
    teachers.resolve_dtype("fp16")


def _batch(tf, name, n):
  d = pickle.load(tf.extractfile(f"cifar-10-batches-py/{name}"), encoding="latin1")
  x = np.asarray(d["data"][:n], np.float32).reshape(-1, 3, 32, 32) / 255.0
  return x, np.asarray(d["labels"][:n])


def _fitted_teacher(tmp_path, x_train, y_train):
  """A WRN-10-2 twin whose head is a ridge fit on its features (real-label predictions)."""
  torch.manual_seed(0)
  mean, std = models.DATASET_STATS["cifar10"]
  twin = tt.TDMWideResNet(num_classes=10, depth=10, width=2, mean=mean, std=std)
  for m in twin.modules():  # calibrate batch norm on the data: running stats = its moments
    if isinstance(m, torch.nn.BatchNorm2d):
      m.momentum = None
  with torch.no_grad():
    twin.train()(torch.from_numpy(x_train))
  twin.eval()
  feats = []
  hook = twin.logits.register_forward_hook(lambda m, i, o: feats.append(i[0].detach()))
  with torch.no_grad():
    twin(torch.from_numpy(x_train))
  hook.remove()
  f = feats[0].double()
  mu, sd = f.mean(0), f.std(0) + 1e-6
  z = (f - mu) / sd
  onehot = torch.nn.functional.one_hot(torch.from_numpy(y_train), 10).double()
  w = torch.linalg.solve(z.T @ z + RIDGE * torch.eye(z.shape[1], dtype=torch.float64),
                         z.T @ (onehot - 0.1))
  logits = z @ w
  scale = 4.0 / float(logits.std())  # a trained model's spread of logits
  with torch.no_grad():
    twin.logits.weight.copy_((w / sd[:, None] * scale).T.float())
    twin.logits.bias.copy_((-(mu / sd) @ w * scale).float())
  path = str(tmp_path / "fitted.pt")
  torch.save(twin.state_dict(), path)
  out = tmp_path / "converted"
  convert.main(["--arch", "wrn", "--input", path, "--output", str(out), "--variant", "dm",
                "--model_kwargs", '{"depth": 10, "width": 2}'])
  return str(out)


@pytest.mark.skipif(not os.path.exists(ARCHIVE), reason=f"CIFAR-10 subset not at {ARCHIVE}")
def test_bf16_teacher_logits_agree_with_fp32_on_real_images(tmp_path):
  with tarfile.open(ARCHIVE) as tf:
    x_train, y_train = _batch(tf, "data_batch_1", 1017)
    x_test, y_test = _batch(tf, "test_batch", 256)
  path = _fitted_teacher(tmp_path, x_train, y_train)
  x = x_test.transpose(0, 2, 3, 1)
  logits = {}
  for dtype in ("float32", "bfloat16"):
    t = teachers.load("robust", config_lib.teacher_config(path, dtype=dtype))
    assert t.dtype == dtype
    with jax.default_matmul_precision("highest"):
      z = jax.jit(lambda v, u, m=t.module: m.apply(v, u, train=False))(t.variables, x)
    assert z.dtype == np.float32
    logits[dtype] = np.asarray(z, np.float64)
  z32, z16 = logits["float32"], logits["bfloat16"]
  assert np.mean(z32.argmax(-1) == y_test) > 0.2  # the head predicts real labels (chance 0.1)
  assert np.mean(np.max(jax.nn.softmax(z32), -1)) > 0.4  # confident, not near-uniform
  assert not np.array_equal(z32, z16)  # bf16 really computed
  agree = np.mean(z32.argmax(-1) == z16.argmax(-1))
  lp32, lp16 = jax.nn.log_softmax(z32), jax.nn.log_softmax(z16)
  kl = np.sum(np.exp(lp32) * (lp32 - lp16), axis=-1)
  top2 = np.sort(z32, axis=-1)[:, -2:]
  flip_margin = (top2[:, 1] - top2[:, 0])[z32.argmax(-1) != z16.argmax(-1)]
  print(f"argmax agreement {agree:.4f}, KL mean {kl.mean():.2e} max {kl.max():.2e}, "
        f"flipped margins {np.round(flip_margin, 3)}, accuracy {np.mean(z32.argmax(-1) == y_test)}")
  assert agree >= MIN_ARGMAX_AGREEMENT
  assert kl.mean() <= MAX_KL_MEAN and kl.max() <= MAX_KL_MAX
  assert np.all(flip_margin < MAX_FLIP_MARGIN)

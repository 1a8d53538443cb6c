"""The public call forms of kdrobust.attacks (issue 3's API)."""

import numpy as np

import kdrobust.attacks as attacks


def test_autoattack_is_callable_from_the_package_and_keeps_its_module_helpers():
  w = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32) * 0.1
  logits_fn = lambda x: x.reshape(x.shape[0], -1) @ w
  x = np.random.default_rng(1).random((6, 8, 8, 1)).astype(np.float32)
  y = np.argmax(np.asarray(logits_fn(x)), -1)
  res = attacks.autoattack(logits_fn, x, y, eps=0.05, version="standard", seed=0)
  assert isinstance(res, attacks.AutoAttackResult)
  assert res.clean_accuracy == 1.0 and 0.0 <= res.robust_accuracy <= 1.0
  assert np.abs(res.x_adv - x).max() <= 0.05 + 1e-6
  assert attacks.autoattack.version_config("standard").attacks == (
      "apgd-ce", "apgd-t", "fab-t", "square")
  assert callable(attacks.apgd) and callable(attacks.square)
  assert callable(attacks.apgd.apgd_single_run)

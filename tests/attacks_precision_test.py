"""Precision as a named choice enforced inside every attack (issue 11 item 2).

A logits function records the matmul precision it is traced under; every
attack must trace it at its own ``precision=`` (default 'highest') whatever
the caller's ``jax.default_matmul_precision`` context, and the precision must
reach the lowered HLO. Runtime: about 20 s on 2 CPU cores.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdrobust import attacks, train_step
from kdrobust.attacks import apgd as apgd_lib
from kdrobust.attacks import fab as fab_lib
from kdrobust.attacks import projected

N, H, C, K = 4, 4, 3, 5
_W = jnp.asarray(np.random.default_rng(0).normal(size=(H * H * C, K)).astype(np.float32))
X = np.random.default_rng(1).uniform(size=(N, H, H, C)).astype(np.float32)
Y = np.asarray(jnp.argmax(X.reshape(N, -1) @ np.asarray(_W), -1))


def recording_fn():
  """A fresh (never-cached) linear model and the precisions it was traced at."""
  seen = []

  def fn(x):
    seen.append(jax.config.jax_default_matmul_precision)
    return x.reshape(x.shape[0], -1) @ _W

  return fn, seen


SMALL = dict(eps=8 / 255, batch_size=N)
AA_SMALL = dict(n_iter=2, square_queries=3, fab_targets=1, apgd_targets=1)
# Between them the calls trace every attack family: FGSM, PGD, CW-inf, APGD-CE,
# untargeted FAB, and inside AutoAttack APGD-T, FAB-T, Square and the clean pass.
CALLS = {
    "fgsm": lambda fn, **kw: projected.fgsm(fn, X, Y, eps=8 / 255, **kw),
    "pgd": lambda fn, **kw: projected.pgd(fn, X, Y, 0, eps=8 / 255, step_size=2 / 255,
                                          steps=2, **kw),
    "cw_linf": lambda fn, **kw: projected.cw_linf(fn, X, Y, 0, eps=8 / 255, steps=2, **kw),
    "apgd": lambda fn, **kw: apgd_lib.apgd(fn, X, Y, 0, n_iter=2, **SMALL, **kw),
    "fab": lambda fn, **kw: fab_lib.fab(fn, X, Y, 0, n_iter=2, n_restarts=1, **SMALL, **kw),
    "autoattack": lambda fn, **kw: attacks.autoattack(
        fn, X, Y, **SMALL, version="custom", attacks=["apgd-t", "fab-t", "square"],
        checks=False, config_overrides=AA_SMALL, **kw),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_default_is_highest_whatever_the_caller_context(name):
  fn, seen = recording_fn()
  with jax.default_matmul_precision("bfloat16"):
    CALLS[name](fn)
  assert seen and set(seen) == {"highest"}, (name, set(seen))


def test_named_precision_is_used_and_inherited():
  fn, seen = recording_fn()
  with jax.default_matmul_precision("highest"):
    projected.fgsm(fn, X, Y, eps=8 / 255, precision="bfloat16")
  assert seen and set(seen) == {"bfloat16"}
  fn, seen = recording_fn()
  with jax.default_matmul_precision("highest"):
    out = attacks.autoattack(fn, X, Y, **SMALL, version="custom", attacks=["apgd-ce"],
                             checks=False, config_overrides=AA_SMALL,
                             precision="tensorfloat32")
  assert seen and set(seen) == {"tensorfloat32"}  # APGD and the re-checks inherit it
  assert out.config.precision == "tensorfloat32"


def test_every_attack_shows_precision_in_its_signature():
  import inspect  # pylint: disable=g-import-not-at-top
  for f in (attacks.fgsm, attacks.pgd, attacks.cw_linf, attacks.apgd, attacks.apgd_targeted,
            attacks.fab.fab, attacks.fab_targeted, attacks.square, attacks.autoattack,
            attacks.apgd_single_run, attacks.fab_single_run, attacks.square_single_run):
    assert "precision" in inspect.signature(f).parameters, f


def test_bad_precision_fails_before_compute():
  fn, seen = recording_fn()
  for call in (CALLS["pgd"], CALLS["autoattack"]):
    with pytest.raises(ValueError, match="valid: highest, tensorfloat32, bfloat16"):
      call(fn, precision="fp8")
  assert not seen


def _precisions_in_hlo(text):
  return set(re.findall(r"precision = \[(\w+), \w+\]", text))


def test_precision_reaches_the_hlo_inside_a_callers_jit():
  fn = lambda x: x.reshape(x.shape[0], -1) @ _W  # noqa: E731
  run = lambda p: jax.jit(lambda x: projected.pgd(fn, x, Y, 0, eps=0.03, step_size=0.01,  # noqa: E731
                                                  steps=1, precision=p))
  with jax.default_matmul_precision("bfloat16"):
    default = run(None).lower(X).as_text()
  assert _precisions_in_hlo(default) == {"HIGHEST"}
  with jax.default_matmul_precision("highest"):
    bf16 = run("bfloat16").lower(X).as_text()
  assert _precisions_in_hlo(bf16) == {"DEFAULT"}


def test_monitor_precision_and_eval_step():
  assert train_step.monitor_precision("auto", "float32") == "tensorfloat32"
  assert train_step.monitor_precision("auto", "bfloat16") == "bfloat16"
  assert train_step.monitor_precision("highest", "bfloat16") == "highest"
  with pytest.raises(ValueError, match="valid: auto, highest"):
    train_step.monitor_precision("fast")
  seen = []

  def apply_fn(variables, x, train=False):
    del train
    seen.append(jax.config.jax_default_matmul_precision)
    return x.reshape(x.shape[0], -1) @ variables

  pgd = train_step.eval_attack("pgd", steps=1, step_fraction=0.25)
  step = train_step.make_eval_step(apply_fn, {"pgd": pgd}, precision="bfloat16")
  batch = {"image": X, "label": Y, "mask": np.ones(N, bool)}
  with jax.default_matmul_precision("highest"):
    out = step(_W, batch, 8 / 255, 0)
  assert set(seen) == {"bfloat16"}  # the forwards and the attack's (inherited)
  assert int(out["count"]) == N

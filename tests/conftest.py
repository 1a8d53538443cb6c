"""Test setup: 8 simulated CPU devices (set before JAX initialises), strict cross-checks under CI.

Cross-checks against the references (torch, pyautoattack, torchattacks) must
never turn into silent skips in CI. With ``CI=true`` in the environment (the
CI sets it):

* the session stops at its start, with the import error, if one of
  :data:`CI_REQUIRED` cannot be imported (:func:`missing_in_ci`);
* ``pytest.importorskip`` of one of them (or of a submodule, e.g.
  ``pyautoattack.square``) fails instead of skipping
  (:func:`strict_importorskip`), at collection or in a test.

Without ``CI`` set, a missing reference still skips its tests, so a
developer without torch can run the rest.
"""

import importlib
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_platforms", "cpu")

# The references the CI installs (README's test command: the `test` extra and torchattacks).
CI_REQUIRED = ("torch", "pyautoattack", "torchattacks")
_importorskip = pytest.importorskip


def ci_strict() -> bool:
  """True when ``CI`` is set to true, 1 or yes (case-insensitive)."""
  return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _required(modname: str) -> bool:
  return modname.split(".")[0] in CI_REQUIRED


def strict_importorskip(modname: str, minversion=None, reason=None, **kwargs):
  """``pytest.importorskip``, except that under ``CI=true`` a required reference fails.

  Installed as ``pytest.importorskip`` for the whole session, so every
  existing ``pytest.importorskip("torch")`` is covered.
  """
  if ci_strict() and _required(modname):
    try:
      importlib.import_module(modname)
    except ImportError as e:
      pytest.fail(f"CI=true: {modname} must be importable (the cross-checks against it "
                  f"may not be skipped in CI): {type(e).__name__}: {e}", pytrace=False)
    try:
      return _importorskip(modname, minversion=minversion, reason=reason, **kwargs)
    except pytest.skip.Exception as e:  # e.g. too old a version
      pytest.fail(f"CI=true: {modname} would be skipped: {e}", pytrace=False)
  return _importorskip(modname, minversion=minversion, reason=reason, **kwargs)


pytest.importorskip = strict_importorskip


def missing_in_ci() -> list[str]:
  """``'name: error'`` for every one of :data:`CI_REQUIRED` that does not import."""
  out = []
  for name in CI_REQUIRED:
    try:
      importlib.import_module(name)
    except ImportError as e:
      out.append(f"{name}: {type(e).__name__}: {e}")
  return out


def pytest_sessionstart(session):
  """Under ``CI=true``, stop before collecting anything if a reference is missing."""
  del session
  if not ci_strict():
    return
  missing = missing_in_ci()
  if missing:
    pytest.exit("CI=true but the cross-check references do not import, so their tests "
                "would be skipped: " + "; ".join(missing), returncode=1)

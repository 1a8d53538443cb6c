"""JAX's persistent compilation cache, on by default in ``kdrobust.main`` and ``kdrobust.evaluate``.

XLA executables are written to ``cache_dir`` and reused by later processes
with the same program, shapes, devices and versions: AutoAttack's kernels
(six families x their padded shapes) and the train step compile once per
machine instead of once per run, which on a GPU saves minutes per
evaluation. Default directory: :data:`DEFAULT_DIR`
(``~/.cache/kdrobust/jax``); ``''`` or ``'none'`` turns it off;
``$JAX_COMPILATION_CACHE_DIR``, when set, wins over the default (not over
an explicit directory). Only compilations longer than ``min_compile_secs``
are stored (JAX's default threshold is 1 s), so the many tiny CPU kernels of
the test suite never reach the disk.

Tests never enable it unless they pass a directory (the functions here are
only called by the command-line entry points).
"""

from __future__ import annotations

import os

import jax

DEFAULT_DIR = "~/.cache/kdrobust/jax"
OFF = ("", "none", "off")


def resolve_dir(cache_dir: str | None = DEFAULT_DIR) -> str | None:
  """The absolute cache directory for ``cache_dir``, or None when turned off."""
  if cache_dir is None or str(cache_dir).strip().lower() in OFF:
    return None
  if cache_dir == DEFAULT_DIR and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    cache_dir = os.environ["JAX_COMPILATION_CACHE_DIR"]
  return os.path.abspath(os.path.expanduser(str(cache_dir)))


def enable(cache_dir: str | None = DEFAULT_DIR, *, min_compile_secs: float = 1.0) -> str | None:
  """Point JAX's persistent compilation cache at ``cache_dir``; returns the path or None.

  Process-wide (``jax.config``); call it once, before the first compilation.
  A directory that cannot be created raises a one-line ``ValueError``.
  """
  path = resolve_dir(cache_dir)
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ValueError(f"Cannot create the compilation cache directory {path!r}: {e}. "
                     "Pass another directory, or 'none' to turn the cache off.") from e
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  return path


def current_dir() -> str | None:
  """The cache directory JAX uses now (None: off)."""
  return jax.config.jax_compilation_cache_dir or None

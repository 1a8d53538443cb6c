"""Command line: ``python -m kdrobust.main --config configs/<x>.py[:args] --workdir DIR``.

Thin on purpose: parse flags, start distributed JAX when asked
(``--jax_distributed`` with ``--coordinator_address``, ``--num_processes``,
``--process_id`` or their environment variables, :func:`kdrobust.parallel.init_distributed`), call
:func:`kdrobust.train.train_and_evaluate`. Configs are locked, so a misspelt
``--config.key=value`` is an error; running the same command again resumes.
Bad input (a missing config file, a malformed ``:args``, an unknown key, a
value out of range, an unusable workdir) is one line ``error: ...`` and exit
status 2 before any compute (:mod:`kdrobust.cli`); ``--debug`` shows the
traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from kdrobust import cli
from kdrobust import config_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<name>.py[:args]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, results).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "If --workdir holds a run of a different config, move it aside "
    "(renamed to <workdir>.bak-<time>, never deleted) and start afresh.")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False, "Call jax.distributed.initialize() first (several processes: TPU "
    "pods, Slurm, or processes started by hand with the three flags below).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --jax_distributed: HOST:PORT of process 0's coordinator "
    "(default: $JAX_COORDINATOR_ADDRESS, else detected from Slurm / Cloud TPU).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "With --jax_distributed: the number of processes "
    "(default: $JAX_NUM_PROCESSES, else detected).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "With --jax_distributed: this process's id in [0, num_processes) "
    "(default: $JAX_PROCESS_ID, else detected). Only process 0 prints and writes run files.")
_DEBUG = flags.DEFINE_bool(
    "debug", False, "Show the full traceback of an error (or set KDROBUST_DEBUG=1).")
flags.mark_flags_as_required(["config", "workdir"])
app.define_help_flags()  # --help, --helpshort, --helpfull without app.run


def main(argv: Sequence[str] | None = None) -> int:
  """The command line behind the error boundary; ``argv`` excludes the program name."""
  return cli.run(_main, argv)


def _drop_unparse_notice(record: logging.LogRecord) -> bool:
  """False for absl's INFO "unparse_flags() called; flags access will now raise errors."."""
  return not str(record.msg).startswith("unparse_flags() called")


def _unparse_flags_quietly() -> None:
  """``flags.FLAGS.unparse_flags()`` without the INFO line absl logs on the root logger.

  absl logs it on every call (``absl/flags/_flagvalues.py``, ``unparse_flags``),
  so wherever INFO logging is on (Colab, a notebook running ``main`` twice, a
  user's ``logging.basicConfig``) every command printed it; the flags are
  re-parsed at once, so the warning does not apply here.
  """
  root = logging.getLogger()
  root.addFilter(_drop_unparse_notice)
  try:
    flags.FLAGS.unparse_flags()
  finally:
    root.removeFilter(_drop_unparse_notice)


def _parse_flags(argv: Sequence[str]) -> None:
  """Check the config file and keys (one-line errors), then parse the absl flags."""
  config_lib.check_config_argv(argv)
  _unparse_flags_quietly()  # in-process reruns start from the defaults...
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)  # ...and without the previous run's --config.* override flags
  full = ["kdrobust.main"] + list(argv)
  saved, sys.argv = sys.argv, full  # config_flags reads its --config.* overrides from sys.argv
  try:
    flags.FLAGS(full)
  except flags.Error as e:
    raise cli.UserError(" ".join(str(e).split()),
                        "See python -m kdrobust.main --helpfull") from e
  finally:
    sys.argv = saved


def _main(argv: Sequence[str]) -> int:
  _parse_flags(argv)
  from kdrobust import parallel  # pylint: disable=g-import-not-at-top
  try:
    args = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    parallel.init_distributed(_DISTRIBUTED.value, *args)
  except ValueError as e:
    raise cli.UserError(str(e), "See python -m kdrobust.main --helpfull") from e
  from kdrobust.evaluation import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.enable(_CONFIG.value.get("compilation_cache_dir",
                                             compilation_cache.DEFAULT_DIR))
  from kdrobust import train  # pylint: disable=g-import-not-at-top
  logging.getLogger("absl").setLevel(  # process 0 alone warns (kdrobust.parallel)
      logging.WARNING if parallel.is_primary() else logging.ERROR)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  return 0


def run():
  """The ``kdrobust`` console script.

  In a distributed run a failed process exits at once
  (:func:`kdrobust.parallel.exit_now`) instead of waiting in jax's shutdown barrier.
  """
  def distributed():  # kdrobust.parallel (and jax) are imported only once flags parsed
    parallel = sys.modules.get("kdrobust.parallel")
    return parallel if parallel is not None and parallel.distributed() else None

  try:
    code = main()
  except BaseException as e:  # pylint: disable=broad-except
    parallel = distributed()
    if parallel is None or (isinstance(e, SystemExit) and e.code in (None, 0)):
      raise
    if isinstance(e, SystemExit) and isinstance(e.code, int):  # e.g. SIGTERM's 143
      parallel.exit_now(e.code)
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
    parallel.exit_now(1)
  if code and distributed() is not None:
    distributed().exit_now(code)
  sys.exit(code)


if __name__ == "__main__":
  run()

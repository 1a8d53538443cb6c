"""Command line: ``python -m kdrobust.main --config configs/<x>.py[:args] --workdir DIR``.

Thin on purpose: parse flags, start distributed JAX when asked, call
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
    "jax_distributed", False, "Call jax.distributed.initialize() first (TPU pods, Slurm, ...).")
_DEBUG = flags.DEFINE_bool(
    "debug", False, "Show the full traceback of an error (or set KDROBUST_DEBUG=1).")
flags.mark_flags_as_required(["config", "workdir"])
app.define_help_flags()  # --help, --helpshort, --helpfull without app.run


def main(argv: Sequence[str] | None = None) -> int:
  """The command line behind the error boundary; ``argv`` excludes the program name."""
  return cli.run(_main, argv)


def _parse_flags(argv: Sequence[str]) -> None:
  """Check the config file and keys (one-line errors), then parse the absl flags."""
  config_lib.check_config_argv(argv)
  flags.FLAGS.unparse_flags()  # in-process reruns start from the defaults...
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
  parallel.init_distributed(_DISTRIBUTED.value)
  from kdrobust.evaluation import compilation_cache  # pylint: disable=g-import-not-at-top
  compilation_cache.enable(_CONFIG.value.get("compilation_cache_dir",
                                             compilation_cache.DEFAULT_DIR))
  from kdrobust import train  # pylint: disable=g-import-not-at-top
  logging.getLogger("absl").setLevel(logging.WARNING)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  return 0


def run():
  """The ``kdrobust`` console script."""
  sys.exit(main())


if __name__ == "__main__":
  run()

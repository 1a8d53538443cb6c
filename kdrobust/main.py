"""Command line: ``python -m kdrobust.main --config configs/<x>.py[:args] --workdir DIR``.

Thin on purpose: parse flags, start distributed JAX when asked, call
:func:`kdrobust.train.train_and_evaluate`. Configs are locked, so a misspelt
``--config.key=value`` is an error; running the same command again resumes.
"""

from __future__ import annotations

import logging
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<name>.py[:args]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, results).")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "If --workdir holds a run of a different config, move it aside "
    "(renamed to <workdir>.bak-<time>, never deleted) and start afresh.")
_DISTRIBUTED = flags.DEFINE_bool(
    "jax_distributed", False, "Call jax.distributed.initialize() first (TPU pods, Slurm, ...).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from kdrobust import parallel  # pylint: disable=g-import-not-at-top
  parallel.init_distributed(_DISTRIBUTED.value)
  from kdrobust import data  # pylint: disable=g-import-not-at-top
  from kdrobust import teachers  # pylint: disable=g-import-not-at-top
  from kdrobust import train  # pylint: disable=g-import-not-at-top
  logging.getLogger("absl").setLevel(logging.WARNING)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  except (ValueError, data.DatasetNotFoundError, teachers.TeacherError,
          train.WorkdirConflictError, train.NonFiniteLossError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


def run():
  app.run(main)


if __name__ == "__main__":
  run()

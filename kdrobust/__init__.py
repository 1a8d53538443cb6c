"""kdrobust: adversarially robust knowledge distillation in JAX/Flax."""

__version__ = "0.1.0"

import logging as _logging
import os as _os


def _quiet_backend_probe(record: _logging.LogRecord) -> bool:
  """Drops JAX's INFO "Unable to initialize backend 'tpu': ... libtpu.so ..." line.

  JAX tries every backend it knows and logs, at INFO, each one that is absent (the TPU
  one on every machine without a TPU). Wherever INFO logging is on (Colab, absl, a user's
  ``logging.basicConfig``) every command printed it, although nothing is wrong: JAX falls
  back to the backends it found. Only this message is dropped, and only this log line:
  the platform choice is untouched (``JAX_PLATFORMS`` is never set), a backend that was
  asked for and fails still raises, and JAX's warnings (an accelerator present without
  its jaxlib) still show. ``KDROBUST_DEBUG=1`` keeps the line.
  """
  return not record.getMessage().startswith("Unable to initialize backend")


if _os.environ.get("KDROBUST_DEBUG", "").strip().lower() not in ("1", "true", "yes", "on"):
  _logging.getLogger("jax._src.xla_bridge").addFilter(_quiet_backend_probe)

"""The command-line error boundary shared by every ``python -m kdrobust.*`` tool.

Each entry point (``kdrobust.main``, ``kdrobust.evaluate``,
``kdrobust.quickstart``, ``kdrobust.data.prepare``,
``kdrobust.teachers.convert``, ``kdrobust.teachers.select``) runs its body
through :func:`run`. A mistake in the user's input ends with ONE line on
stderr::

  error: <cause>. <fix>

and exit status :data:`EXIT_USER_ERROR` (2, argparse's own status for usage
errors), found before any compute whenever it can be seen up front. What
counts as a user's mistake (:func:`user_error_types`):

* :class:`UserError` (raised by the checks of this package), and every
  ``ValueError`` (the validation errors of kdrobust all derive from it:
  ``EvaluationError``, ``SelectionError``, ``TeacherError``, ...; a torn JSON
  file, an unknown config key);
* a missing, misplaced or unwritable path: ``FileNotFoundError`` (and
  ``DatasetNotFoundError``), ``FileExistsError``, ``NotADirectoryError``,
  ``IsADirectoryError``, ``PermissionError``;
* a corrupt input: ``zipfile.BadZipFile``, ``tarfile.TarError``,
  ``EOFError``, ``pickle.UnpicklingError``;
* a missing optional dependency (``ImportError``: matplotlib, torch);
* a refusal to touch a workdir (``WorkdirConflictError``,
  ``WorkdirLockedError``), when their modules are loaded;
* ``SystemExit`` carrying a message string (older ``raise SystemExit(msg)``).

``--debug`` (anywhere on the command line, removed before the tool parses
it) or ``KDROBUST_DEBUG=1`` prints the full traceback above the line. Any
other exception is a bug: it propagates with its traceback. A failed run that
is not an input mistake (:data:`RUNTIME_FAILURES`, e.g. the NaN guard
stopping training) prints one line too, with exit status 1.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tarfile
import traceback
import zipfile
from typing import Callable, Sequence

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
DEBUG_FLAG = "--debug"
DEBUG_ENV = "KDROBUST_DEBUG"

# Exceptions of modules that may not be imported yet: (module, class name).
_LAZY_USER_ERRORS = (("kdrobust.train", "WorkdirConflictError"),
                     ("kdrobust.fileio", "WorkdirLockedError"))
_LAZY_RUNTIME_FAILURES = (("kdrobust.train", "NonFiniteLossError"),
                          ("kdrobust.checkpoint", "CheckpointError"))
RUNTIME_FAILURES = tuple(f"{m}.{c}" for m, c in _LAZY_RUNTIME_FAILURES)


class UserError(ValueError):
  """A mistake in the user's input: reported as ``error: <cause>. <fix>``, exit 2.

  ``cause`` says what is wrong (with the offending value), ``fix`` what to do
  (the valid values, the flag to pass).
  """

  def __init__(self, cause: str, fix: str = ""):
    self.cause, self.fix = cause, fix
    super().__init__(join(cause, fix))


def join(cause: str, fix: str = "") -> str:
  """``'<cause>. <fix>'`` without doubled full stops."""
  cause = cause.rstrip()
  if not fix:
    return cause
  sep = " " if cause.endswith((".", "?", "!", ":")) else ". "
  return f"{cause}{sep}{fix.strip()}"


def _lazy(names) -> tuple[type, ...]:
  out = []
  for module, name in names:
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    if isinstance(cls, type):
      out.append(cls)
  return tuple(out)


def user_error_types() -> tuple[type, ...]:
  """The exception classes reported as a user's mistake (see the module docstring)."""
  return (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
          IsADirectoryError, PermissionError, zipfile.BadZipFile, tarfile.TarError,
          EOFError, pickle.UnpicklingError, ImportError) + _lazy(_LAZY_USER_ERRORS)


def message(e: BaseException) -> str:
  """One line for ``e``: its message (with the type for non-kdrobust errors), no newlines."""
  if isinstance(e, SystemExit):
    text = str(e.code)
  elif isinstance(e, OSError) and e.strerror and e.filename is not None:
    text = f"{e.strerror}: {e.filename!r}"  # not '[Errno 2] ...'
  else:
    text = str(e) or type(e).__name__
  if isinstance(e, (zipfile.BadZipFile, tarfile.TarError, EOFError, pickle.UnpicklingError)):
    text = (f"an input file is corrupt or truncated ({type(e).__name__}: {text}). "
            "Check the file or download it again")
  return " ".join(text.split())


def debug_requested(argv: Sequence[str]) -> bool:
  """``--debug`` among the arguments (before a ``--``) or ``KDROBUST_DEBUG`` set to 1/true."""
  env = os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
  args = list(argv)
  if "--" in args:
    args = args[:args.index("--")]
  return env or DEBUG_FLAG in args


def strip_debug(argv: Sequence[str]) -> list[str]:
  """``argv`` without ``--debug`` (before a ``--``)."""
  args = list(argv)
  end = args.index("--") if "--" in args else len(args)
  return [a for a in args[:end] if a != DEBUG_FLAG] + args[end:]


def run(fn: Callable[[list[str]], int | None], argv: Sequence[str] | None = None) -> int:
  """Run the entry point ``fn(argv)`` behind the error boundary; returns the exit status.

  ``argv`` excludes the program name (default ``sys.argv[1:]``). A user's
  mistake prints ``error: ...`` on stderr and returns 2; ``--debug`` /
  ``KDROBUST_DEBUG=1`` adds the traceback. ``SystemExit`` with a number
  (``--help``, SIGTERM's 143) passes through; any other exception propagates.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = debug_requested(argv)
  try:
    return int(fn(strip_debug(argv)) or 0)
  except SystemExit as e:
    if e.code is None or isinstance(e.code, int):
      raise
    return _report(e, debug, EXIT_USER_ERROR)
  except user_error_types() as e:
    return _report(e, debug, EXIT_USER_ERROR)
  except _lazy(_LAZY_RUNTIME_FAILURES) as e:
    return _report(e, debug, EXIT_FAILURE)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def raised_outside_kdrobust(e: BaseException) -> str:
  """The file ``e`` was raised in when that is not kdrobust's (else ``''``).

  kdrobust's own checks raise from kdrobust's files; a ``ValueError`` from deep
  inside JAX, Flax or TFDS may be a bug rather than a mistake in the input,
  so its one line says where it came from and that ``--debug`` shows how.
  """
  tb, last = e.__traceback__, None
  while tb is not None:
    last, tb = tb, tb.tb_next
  if last is None:
    return ""
  path = os.path.abspath(last.tb_frame.f_code.co_filename)
  if path.startswith(_PACKAGE_DIR):
    return ""
  return "/".join(path.split(os.sep)[-2:])


def _report(e: BaseException, debug: bool, code: int) -> int:
  sys.stdout.flush()
  if debug:
    traceback.print_exception(e, file=sys.stderr)
  line = f"error: {message(e)}"
  where = "" if debug or isinstance(e, UserError) else raised_outside_kdrobust(e)
  if where:
    line += f" (raised in {where}; {DEBUG_FLAG} shows the traceback)"
  print(line, file=sys.stderr, flush=True)
  return code


class ArgumentParser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` whose usage errors are one-line :class:`UserError` s.

  It also lists ``--debug`` (handled by :func:`run`) in ``--help``.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.add_argument(DEBUG_FLAG, action="store_true",
                      help=f"Show the full traceback of an error (or set {DEBUG_ENV}=1).")

  def error(self, message: str):  # pylint: disable=redefined-outer-name
    raise UserError(f"{self.prog}: {message}", f"See {self.prog} --help")

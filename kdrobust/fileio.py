"""Files that survive a crash: atomic writes, readers that name a torn file, the workdir lock.

* :func:`write_json` / :func:`write_text`: write a temporary file in the same
  directory, ``fsync`` it, ``os.replace`` it over the target, then ``fsync``
  the directory. A reader sees the old file or the new one, never half of
  one, whatever moment a kill -9 or a power cut hits (POSIX ``rename(2)`` is
  atomic within a file system).
* :func:`read_json`: a torn or malformed file raises :class:`TornFileError`,
  one line naming the file and the fix, instead of a bare ``JSONDecodeError``.
* :class:`WorkdirLock`: one writer per workdir. ``flock(2)`` on
  ``<workdir>/.kdrobust.lock`` (holding the owner's pid, host and start time),
  released by the kernel when the process dies, so the lock of a killed run
  (kill -9, OOM, preemption) is stale by construction and simply taken over
  by the next run; a second live writer is refused with one line. Readers
  (``kdrobust.evaluate``, teacher loading) never take it.
* :func:`fault_point`: a no-op unless ``KDROBUST_FAULT_AT`` is set, used by
  tests/reliability_faults_test.py to kill -9 the process at a named moment
  (inside a checkpoint save, during an evaluation, before results.json).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import tempfile
import time
from typing import Any

LOCK_NAME = ".kdrobust.lock"


class TornFileError(ValueError):
  """A JSON file the project wrote is truncated or malformed."""


class WorkdirLockedError(RuntimeError):
  """Another live process is writing to the same workdir."""


# ----------------------------------------------------------------------------
# Atomic writes.
# ----------------------------------------------------------------------------
def _fsync_dir(directory: str) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:  # some file systems refuse fsync on directories
    pass
  finally:
    os.close(fd)


def write_text(path: str, text: str) -> str:
  """Write ``text`` to ``path`` atomically (temp file in the same dir, fsync, replace)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise
  _fsync_dir(directory)
  return path


def write_json(path: str, obj: Any, *, indent: int | None = 2, default=list) -> str:
  """``json.dump(obj)`` to ``path`` atomically (see :func:`write_text`); ends with a newline."""
  return write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")


def read_json(path: str, *, fix: str | None = None) -> Any:
  """``json.load`` of ``path``; a torn or malformed file raises :class:`TornFileError`.

  ``fix`` is the advice appended to the message (default: delete the file or
  restore it from a backup, then rerun).
  """
  with open(path) as f:
    text = f.read()
  try:
    return json.loads(text)
  except ValueError as e:
    raise TornFileError(
        f"{path} is torn or malformed ({len(text)} bytes; {e}). "
        + (fix or "Delete it (kdrobust rewrites it) or restore it from a copy, then rerun.")
    ) from None


# ----------------------------------------------------------------------------
# One writer per workdir.
# ----------------------------------------------------------------------------
class WorkdirLock:
  """An exclusive ``flock`` on ``<workdir>/.kdrobust.lock`` (see the module docstring).

  ``acquire()`` creates the workdir if needed and raises
  :class:`WorkdirLockedError` when another live process holds the lock;
  ``release()`` removes the lock file (safe: an acquirer re-checks that the
  file it locked is still the one at the path). A lock file left by a killed
  process is not locked by anyone, so the next ``acquire`` takes it over and
  says so. Also a context manager.
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self._fd: int | None = None
    self._created_dir = False

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> "WorkdirLock":
    if self._fd is not None:
      return self
    if not os.path.isdir(self.workdir):
      os.makedirs(self.workdir, exist_ok=True)
      self._created_dir = True
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise
        raise WorkdirLockedError(
            f"{self.workdir} is in use by another kdrobust run ({self._owner()}); wait for "
            "it to finish or stop it, or use another --workdir (kdrobust.evaluate may read "
            "a running workdir).") from None
      # The holder may have released (and unlinked) the file between open and flock.
      try:
        same = os.path.samestat(os.fstat(fd), os.stat(self.path))
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    if previous:
      print(f"Took over the stale lock of a process that is gone ({previous}) in "
            f"{self.workdir}.", flush=True)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()} since "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode(), 0)
    os.fsync(fd)
    self._fd = fd
    return self

  def _owner(self) -> str:
    try:
      with open(self.path) as f:
        return f.read().strip() or "owner unknown"
    except OSError:
      return "owner unknown"

  def release(self) -> None:
    """Unlock and remove the lock file (and the workdir if acquire created it empty)."""
    if self._fd is None:
      return
    try:
      if os.path.exists(self.path) and os.path.samestat(os.fstat(self._fd),
                                                        os.stat(self.path)):
        os.unlink(self.path)
    except OSError:
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None
    if self._created_dir:
      try:
        os.rmdir(self.workdir)  # only if empty: a failed start leaves nothing behind
      except OSError:
        pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


# ----------------------------------------------------------------------------
# Fault injection (tests only).
# ----------------------------------------------------------------------------
_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
  """kill -9 this process at the ``n``-th hit of ``name`` if ``KDROBUST_FAULT_AT=name:n``.

  A no-op (one dictionary lookup) when the variable is unset. Points:
  ``ckpt_save`` (an Orbax save started, not yet finished or verified),
  ``ckpt_verified`` (verified, before its integrity record is written),
  ``eval`` (inside a periodic evaluation), ``results`` (before
  ``results.json``), ``quickstart_eval`` (between the quickstart's two
  AutoAttack evaluations).
  """
  spec = os.environ.get("KDROBUST_FAULT_AT")
  if not spec:
    return
  want, _, count = spec.partition(":")
  if want != name:
    return
  _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
  if _FAULT_COUNTS[name] >= int(count or 1):
    os.kill(os.getpid(), signal.SIGKILL)

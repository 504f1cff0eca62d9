"""Private scratch directories that do not outlive their process, even a killed one.

A warm start from a `.npz` (or any format TensorFlow cannot read) writes the tensors it loads to
a checkpoint for TensorFlow's restore ops, which read it when the session starts, so it must
exist until the process ends. `atexit` removes it at a normal exit; a process that is killed
runs no exit handlers, so every new scratch directory lives in one per-user directory, named
with its process's id and start time, and making one first removes those of processes that no
longer run.
"""
import atexit
import logging
import os
import shutil
import stat
import tempfile
from typing import Optional

from warmstart._errors import WarmStartError

logger = logging.getLogger(__name__)


def make_dir(purpose: str) -> str:
  """Makes a new private directory `<tmp>/warmstart-<uid>/<purpose>-<pid>-<start>-XXXX`.

  It is removed at exit (or earlier with `remove`), or by the next call in any process once this
  one is gone; the per-user directory goes when it is left empty.

  Raises:
    WarmStartError: the per-user directory exists but is not a private directory of this user.
  """
  prefix = "%s-%d-%s-" % (purpose, os.getpid(), _start_time(os.getpid()))
  for attempt in range(3):
    root = _user_root()
    _remove_orphans(root)
    try:
      directory = tempfile.mkdtemp(prefix=prefix, dir=root)
      break
    except FileNotFoundError:  # another process removed the (empty) root just now
      if attempt == 2:
        raise
  atexit.register(remove, directory)
  return directory


def remove(directory: str) -> None:
  """Removes a scratch directory, and the per-user one if that is left empty."""
  shutil.rmtree(directory, ignore_errors=True)
  try:
    os.rmdir(os.path.dirname(directory))
  except OSError:  # not empty (another process's scratch is there), or gone already
    pass


def _user_root() -> str:
  uid = os.getuid() if hasattr(os, "getuid") else 0
  root = os.path.join(tempfile.gettempdir(), "warmstart-%d" % uid)
  try:
    os.mkdir(root, 0o700)
  except FileExistsError:
    pass
  except OSError as err:
    raise WarmStartError("cannot make the scratch directory %s: %s" % (root, err.strerror)) from None
  info = os.lstat(root)  # not a symlink planted by someone else, nor readable by others
  if not stat.S_ISDIR(info.st_mode) or (hasattr(os, "getuid") and info.st_uid != uid) or (
      info.st_mode & 0o077):
    raise WarmStartError("%s is not a private directory of this user (mode %o, owner %d); "
                         "remove it, or set TMPDIR to another directory"
                         % (root, stat.S_IMODE(info.st_mode), info.st_uid))
  return root


def _remove_orphans(root: str) -> None:
  """Removes the scratch directories whose process no longer runs."""
  for name in os.listdir(root):
    parts = name.split("-")
    if len(parts) < 4 or not parts[-3].isdigit():
      continue
    pid, start = int(parts[-3]), parts[-2]
    if not _running(pid, start):
      logger.debug("removing %s, left by process %d", name, pid)
      shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _running(pid: int, start: str) -> bool:
  """Whether process `pid` runs and is the one that started at `start` (ids are reused)."""
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process of that id: not ours
    return start == _start_time(pid)
  return start == _start_time(pid)


def _start_time(pid: int) -> str:
  """The process's start time in clock ticks since boot (Linux), or "0" where unknown."""
  stat_line: Optional[str] = None
  try:
    with open("/proc/%d/stat" % pid) as f:
      stat_line = f.read()
  except OSError:
    return "0"
  # pid (comm) state ppid ...: comm may hold spaces and parentheses; field 22 is the start time.
  fields = stat_line[stat_line.rfind(")") + 2:].split()
  return fields[19] if len(fields) > 19 else "0"

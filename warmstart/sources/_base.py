"""The one interface every source format is read through."""
import abc
from typing import Optional

import numpy as np

from warmstart import _select
from warmstart._checkpoint import CheckpointRef, VariableInfo
from warmstart._errors import PatternError


class Reader(abc.ABC):
  """Reads the tensors of one resolved source, one at a time.

  A subclass reads one format: its `__init__(ref)` lists the tensors (validating what it must
  so that a damaged file is a `CheckpointReadError`, never a crash) and fills `variables`; `read`
  returns one tensor's value. Register it in `warmstart.sources.READERS` under its `ref.kind`.

  Attributes:
    ref: the CheckpointRef being read.
    variables: name -> VariableInfo, sorted by name. Names are the ones a model uses (for a
      format that stores tensors under other keys, `key_of` gives the key).
    notes: name -> a remark on how that tensor is read (e.g. "transposed from [out, in]");
      empty for most formats.

  Example:
    >>> with warmstart.sources.open_reader(warmstart.resolve_checkpoint("model")) as reader:
    ...   kernel = reader.read("mnist/hidden/kernel")
  """

  def __init__(self, ref: CheckpointRef):
    self.ref = ref
    self.variables: dict[str, VariableInfo] = {}
    self.notes: dict[str, str] = {}

  @abc.abstractmethod
  def read(self, name: str) -> np.ndarray:
    """Returns the value of tensor `name` (a key of `variables`).

    Always an ndarray (0-d for a scalar), bit for bit what the file holds; strings are object
    arrays of `bytes`.

    Raises:
      PatternError: no tensor of that name.
      CheckpointReadError: its data is damaged (a checksum does not match, the file is short).
    """

  def check(self, name: str) -> None:
    """Reads tensor `name` to check it (checksums, layout) without keeping its value.

    Formats that can check a tensor in bounded memory override this; by default it is read.

    Raises:
      PatternError, CheckpointReadError: as `read`.
    """
    self.read(name)

  def key_of(self, name: str) -> str:
    """The tensor's key inside the file (the same as its name unless the format renames)."""
    return name

  def info(self, name: str) -> VariableInfo:
    """The VariableInfo of `name`; PatternError naming the closest names if there is none."""
    info: Optional[VariableInfo] = self.variables.get(name)
    if info is None:
      raise PatternError("no tensor %r in %s.%s" % (
          name, self.ref.prefix, _select.closest(name, list(self.variables))))
    return info

  def close(self) -> None:
    """Releases the files held open (if any)."""

  def __enter__(self) -> "Reader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

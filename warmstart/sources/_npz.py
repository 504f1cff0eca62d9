"""`.npz` files of name -> array (numpy's own format; never unpickled)."""
import numpy as np

from warmstart._checkpoint import CheckpointRef, VariableInfo
from warmstart._errors import CheckpointReadError, WarmStartError
from warmstart.sources._base import Reader


class NpzReader(Reader):
  """Reads a `.npz` file; each member is one tensor, its name the member's (no `.npy`)."""

  def __init__(self, ref: CheckpointRef):
    super().__init__(ref)
    try:
      self._npz = np.load(ref.prefix, allow_pickle=False)
    except Exception as err:  # np.load raises many kinds (OSError, ValueError, BadZipFile...)
      raise CheckpointReadError("cannot read checkpoint %s: %s" % (ref.prefix, _first_line(err))
                                ) from None
    try:
      self.variables = {name: VariableInfo.make(name, *self._header(name))
                        for name in sorted(self._npz.files)}
    except CheckpointReadError:
      self.close()
      raise
    except Exception as err:
      self.close()
      raise CheckpointReadError("cannot read checkpoint %s: %s" % (ref.prefix, _first_line(err))
                                ) from None

  def _header(self, name):
    """(shape, dtype) of one member, read from its header without loading the data."""
    with self._npz.zip.open(name + ".npy") as member:
      version = np.lib.format.read_magic(member)
      # numpy's one header reader for every format version (1.0, 2.0 and 3.0) is private.
      shape, _, dtype = np.lib.format._read_array_header(member, version)  # type: ignore[attr-defined]
    if dtype.hasobject:
      raise CheckpointReadError("%s: array %r holds Python objects; only numeric and string "
                                "arrays are read (never unpickled)" % (self.ref.prefix, name))
    return shape, dtype

  def read(self, name: str) -> np.ndarray:
    self.info(name)
    try:
      return np.asarray(self._npz[self.key_of(name)])
    except WarmStartError:
      raise
    except Exception as err:
      raise CheckpointReadError("cannot read tensor %r of %s: %s" % (
          name, self.ref.prefix, _first_line(err))) from None

  def close(self) -> None:
    self._npz.close()


def _first_line(err: BaseException) -> str:
  text = str(err).strip().splitlines()
  return text[0] if text else type(err).__name__

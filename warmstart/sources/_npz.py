"""`.npz` files of name -> array (numpy's own format; never unpickled).

`.npy` has no bfloat16 or float8 (numpy reads such arrays back as `|V2` / `|V1`), so
`warmstart convert` stores them as unsigned integers of their size and records their dtypes in
the member `__warmstart_dtypes__` (rows of name, dtype), which is applied here.
"""
import numpy as np

from warmstart import _dtypes
from warmstart._checkpoint import CheckpointRef, VariableInfo
from warmstart._errors import CheckpointReadError, WarmStartError, first_line
from warmstart.sources._base import Reader

DTYPES_MEMBER = "__warmstart_dtypes__"


class NpzReader(Reader):
  """Reads a `.npz` file; each member is one tensor, its name the member's (no `.npy`)."""

  def __init__(self, ref: CheckpointRef):
    super().__init__(ref)
    try:
      self._npz = np.load(ref.prefix, allow_pickle=False)
    except Exception as err:  # np.load raises many kinds (OSError, ValueError, BadZipFile...)
      raise CheckpointReadError("cannot read checkpoint %s: %s" % (ref.prefix, first_line(err))
                                ) from None
    try:
      self._recorded = self._recorded_dtypes()
      self.variables = {name: VariableInfo.make(name, *self._header(name))
                        for name in sorted(self._npz.files) if name != DTYPES_MEMBER}
    except CheckpointReadError:
      self.close()
      raise
    except Exception as err:
      self.close()
      raise CheckpointReadError("cannot read checkpoint %s: %s" % (ref.prefix, first_line(err))
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
    recorded = self._recorded.get(name)
    if recorded is not None:
      if recorded.itemsize != dtype.itemsize:
        raise CheckpointReadError("%s: %s records %r as %s, but it is stored as %s" % (
            self.ref.prefix, DTYPES_MEMBER, name, recorded, dtype))
      return shape, recorded
    if dtype.kind == "V":
      raise CheckpointReadError(
          "%s: array %r has the untyped dtype %s (numpy saves bfloat16 and float8 arrays so); "
          "write the file with `warmstart convert`, which records such dtypes" % (
              self.ref.prefix, name, dtype.str))
    return shape, dtype

  def _recorded_dtypes(self) -> dict[str, np.dtype]:
    """{name: dtype} recorded by `warmstart convert` for dtypes .npy cannot hold."""
    if DTYPES_MEMBER not in self._npz.files:
      return {}
    table = self._npz[DTYPES_MEMBER]
    if table.dtype.kind != "U" or table.ndim != 2 or table.shape[1] != 2:
      raise CheckpointReadError("%s: %s is not a table of (name, dtype) rows" % (
          self.ref.prefix, DTYPES_MEMBER))
    out = {}
    for name, dtype in table.tolist():
      numpy_dtype = _dtypes.numpy_dtype(dtype) if dtype in _dtypes.BY_NAME else None
      if numpy_dtype is None or numpy_dtype.kind == "O":
        raise CheckpointReadError("%s: %s records %r as %r, not a numeric dtype" % (
            self.ref.prefix, DTYPES_MEMBER, name, dtype))
      out[name] = numpy_dtype
    return out

  def read(self, name: str) -> np.ndarray:
    self.info(name)
    try:
      value = np.asarray(self._npz[self.key_of(name)])
      recorded = self._recorded.get(name)
      return value if recorded is None else value.view(recorded)
    except WarmStartError:
      raise
    except Exception as err:
      raise CheckpointReadError("cannot read tensor %r of %s: %s" % (
          name, self.ref.prefix, first_line(err))) from None

  def close(self) -> None:
    self._npz.close()


"""`.npz` files of name -> array (numpy's own format; never unpickled).

The archive is read with `zipfile` and each member's `.npy` header with numpy's parser, but
nothing they claim is trusted before it is checked against the bytes that exist (see
`warmstart._limits`): a member may decompress to at most deflate's maximum ratio of what it
stores, its header must describe exactly the bytes that follow it (no negative, overflowing or
extra dimensions), members may not overlap (the "zip bomb" that reuses one compressed stream),
and a name may belong to one member only (`x` beside `x.npy` is refused, not read from the
other). Arrays of Python objects are refused.

`.npy` has no bfloat16 or float8 (numpy reads such arrays back as `|V2` / `|V1`), so
`warmstart convert` stores them as unsigned integers of their size and records their dtypes in
the member `__warmstart_dtypes__` (rows of name, dtype), which is applied here.
"""
import io
import os
import struct
import warnings
import zipfile
from typing import cast

import numpy as np

from warmstart import _dtypes, _limits
from warmstart._checkpoint import CheckpointRef, VariableInfo
from warmstart._errors import CheckpointReadError, WarmStartError, first_line
from warmstart.sources._base import Reader

DTYPES_MEMBER = "__warmstart_dtypes__"

# Deflate cannot expand data more than about 1032:1; stored members not at all.
_MAX_DEFLATE_RATIO = 1032
# numpy's own limit for `np.load` (the header is a Python literal parsed with ast).
_MAX_HEADER = np.lib.format._MAX_HEADER_SIZE  # type: ignore[attr-defined]
# Magic string, version, header length (2 bytes in version 1.0, 4 in 2.0 and 3.0).
_PREAMBLE = {(1, 0): "<H", (2, 0): "<I", (3, 0): "<I"}
_LOCAL_HEADER = 30  # bytes of a zip local file header before its name
_READ_CHUNK = 4 << 20


class NpzReader(Reader):
  """Reads a `.npz` file; each member is one tensor, its name the member's (no `.npy`)."""

  def __init__(self, ref: CheckpointRef):
    super().__init__(ref)
    self._file = _limits.open_regular(ref.prefix, "cannot read checkpoint")
    try:
      self._size = os.fstat(self._file.fileno()).st_size
      self._zip = zipfile.ZipFile(self._file)
      self._members = self._list_members()
      self._headers = {name: self._header(name) for name in sorted(self._members)}
      self._recorded = self._recorded_dtypes()
      self.variables = {name: self._variable(name, shape, dtype)
                        for name, (shape, _, dtype, _) in self._headers.items()
                        if name != DTYPES_MEMBER}
    except BaseException as err:
      self._file.close()
      if isinstance(err, CheckpointReadError):
        raise
      if isinstance(err, Exception):  # zipfile and numpy raise many kinds
        raise self._error(err) from None
      raise

  def _error(self, err: BaseException, name=None) -> CheckpointReadError:
    return CheckpointReadError("cannot read %scheckpoint %s: %s" % (
        "tensor %r of " % name if name else "", self.ref.prefix, first_line(err)))

  def _list_members(self) -> dict[str, zipfile.ZipInfo]:
    """name -> member, each checked against the archive's size before anything is read."""
    members: dict[str, zipfile.ZipInfo] = {}
    infos = [info for info in self._zip.infolist() if not info.is_dir()]
    for info in infos:
      what = "%s: member %r" % (self.ref.prefix, info.filename)
      name = info.filename[:-len(".npy")] if info.filename.endswith(".npy") else info.filename
      if name in members:
        raise CheckpointReadError("%s: members %r and %r both hold tensor %r; the file is "
                                  "ambiguous" % (self.ref.prefix, members[name].filename,
                                                 info.filename, name))
      if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointReadError("%s is compressed with method %d; numpy writes stored or "
                                  "deflated members only" % (what, info.compress_type))
      _limits.bounded(info.compress_size, self._size - info.header_offset, what)
      ratio = 1 if info.compress_type == zipfile.ZIP_STORED else _MAX_DEFLATE_RATIO
      _limits.bounded(info.file_size, info.compress_size * ratio + 64,
                      what + " (uncompressed size, at most %dx its %d compressed bytes)"
                      % (ratio, info.compress_size))
      members[name] = info
    ends = sorted((info.header_offset, info.header_offset + _LOCAL_HEADER
                   + len(info.filename.encode()) + info.compress_size, info.filename)
                  for info in infos)
    for (_, end, first), (start, _, second) in zip(ends, ends[1:]):
      if end > start:
        raise CheckpointReadError("%s: members %r and %r overlap (a zip bomb?)"
                                  % (self.ref.prefix, first, second))
    return members

  def _header(self, name):
    """(shape, fortran_order, dtype, header length) of a member, checked against its size."""
    info = self._members[name]
    what = "%s: member %r" % (self.ref.prefix, info.filename)
    with self._zip.open(info) as member:
      head = member.read(min(info.file_size, _MAX_HEADER + 16))
    if head[:6] != b"\x93NUMPY" or len(head) < 10 or tuple(head[6:8]) not in _PREAMBLE:
      raise CheckpointReadError("%s is not a .npy array (no valid magic string)" % what)
    version = (head[6], head[7])
    (length,) = struct.unpack_from(_PREAMBLE[version], head, 8)
    start = 8 + struct.calcsize(_PREAMBLE[version])
    _limits.bounded(length, min(_MAX_HEADER, len(head) - start), what + " (header length)")
    with warnings.catch_warnings():  # a Python 2 header is read with a warning: not for us
      warnings.simplefilter("ignore")
      try:
        shape, fortran, dtype = np.lib.format._read_array_header(  # type: ignore[attr-defined]
            io.BytesIO(head[8:start + length]), version)
      except (ValueError, SyntaxError, RecursionError, MemoryError, TypeError) as err:
        raise CheckpointReadError("%s: bad .npy header: %s" % (
            what, str(err).strip().splitlines()[0] if str(err).strip() else
            type(err).__name__)) from None
    if dtype.hasobject:
      raise CheckpointReadError("%s: array %r holds Python objects; only numeric and string "
                                "arrays are read (never unpickled)" % (self.ref.prefix, name))
    if not dtype.itemsize:
      raise CheckpointReadError("%s: dtype %s has no size" % (what, dtype))
    header = start + length
    nbytes = _limits.shape_nbytes(shape, dtype.itemsize, info.file_size - header, what)
    if header + nbytes != info.file_size:
      raise CheckpointReadError("%s: its header describes %d bytes of data, the member holds %d"
                                % (what, nbytes, info.file_size - header))
    return tuple(shape), fortran, dtype, header

  def _recorded_dtypes(self) -> dict[str, np.dtype]:
    """{name: dtype} recorded by `warmstart convert` for dtypes .npy cannot hold."""
    if DTYPES_MEMBER not in self._members:
      return {}
    table = self._read_member(DTYPES_MEMBER)
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

  def _variable(self, name, shape, dtype) -> VariableInfo:
    recorded = self._recorded.get(name)
    if recorded is not None:
      if recorded.itemsize != dtype.itemsize:
        raise CheckpointReadError("%s: %s records %r as %s, but it is stored as %s" % (
            self.ref.prefix, DTYPES_MEMBER, name, recorded, dtype))
      dtype = recorded
    elif dtype.kind == "V":
      raise CheckpointReadError(
          "%s: array %r has the untyped dtype %s (numpy saves bfloat16 and float8 arrays so); "
          "write the file with `warmstart convert`, which records such dtypes" % (
              self.ref.prefix, name, dtype.str))
    try:
      return VariableInfo.make(name, shape, dtype)
    except WarmStartError:
      raise CheckpointReadError("%s: array %r has dtype %s, which TensorFlow has no type for"
                                % (self.ref.prefix, name, dtype)) from None

  def read(self, name: str) -> np.ndarray:
    self.info(name)
    value = self._read_member(self.key_of(name))
    recorded = self._recorded.get(name)
    return value if recorded is None else value.view(recorded)

  def _read_member(self, name: str) -> np.ndarray:
    shape, fortran, dtype, header = self._headers[name]
    try:
      out = np.empty(shape[::-1] if fortran else shape, dtype)  # its size was checked
      with self._zip.open(self._members[name]) as opened:
        member = cast(io.BufferedIOBase, opened)  # a ZipExtFile
        member.read(header)
        view = out.reshape(-1).view(np.uint8).data
        done = 0
        while done < out.nbytes:
          count = member.readinto(view[done:done + _READ_CHUNK])  # (not all at once: a
          # ZipExtFile reads into a temporary bytes object first)
          if not count:
            raise CheckpointReadError("cannot read tensor %r of checkpoint %s: its data ends "
                                      "after %d of %d bytes" % (name, self.ref.prefix, done,
                                                                out.nbytes))
          done += count
        member.read(1)  # to the end of the member, where zipfile checks its CRC-32
    except CheckpointReadError:
      raise
    except Exception as err:  # zipfile's BadZipFile (bad CRC), zlib.error, OSError
      raise self._error(err, name) from None
    return out.T if fortran else out

  def close(self) -> None:
    self._zip.close()
    self._file.close()


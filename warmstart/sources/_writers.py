"""Writing tensors one at a time, atomically: `.safetensors`, `.npz` and TF checkpoints.

Every writer takes the list of tensors to write (VariableInfo: name, shape, dtype) and a function
that reads one tensor, so memory holds one tensor at a time. Output goes to temporary files beside
the target, which are flushed, fsynced and renamed into place at the end: a reader sees the whole
output or none of it, also after a crash (a checkpoint's data file is renamed before its index,
which is what makes it a checkpoint). None of this needs TensorFlow.

* `.safetensors`: the format's own layout (an 8-byte little-endian header length, the JSON header
  padded with spaces to 8 bytes, then the data), with the header computed from the shapes first.
* `.npz`: a zip of `.npy` members, as `numpy.savez` writes it. `.npy` has no bfloat16 or float8
  (numpy reads them back as `|V2`/`|V1`), so such tensors are stored as unsigned integers of
  their size and their dtypes recorded in the member `__warmstart_dtypes__.npy` (name, dtype
  rows), which warmstart's reader applies.
* TF checkpoint (`PREFIX.index` + `PREFIX.data-00000-of-00001`): TensorFlow's tensor bundle, as
  its `BundleWriter` writes it: the data file holds the tensors' bytes, the index is a LevelDB
  table of `BundleEntryProto`s (dtype, shape, offset, size, masked CRC32C) under a
  `BundleHeaderProto`. TensorFlow's reader reads it back bit for bit (tested for every dtype).
"""
import contextlib
import io
import os
import secrets
import struct
import zipfile
from collections.abc import Callable, Iterator, Sequence

import google_crc32c
import numpy as np

from warmstart import _dtypes
from warmstart._checkpoint import VariableInfo
from warmstart._errors import CheckpointReadError, WarmStartError
from warmstart.sources import _safetensors
from warmstart.sources._npz import DTYPES_MEMBER

ReadTensor = Callable[[str], np.ndarray]
_STRING = "string"


# ----------------------------------------------------------------------------------------------
# Shared


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[io.BufferedWriter]:
  """A binary file that replaces `path` when the block completes, and vanishes if it fails.

  It is created with the mode `open()` gives (0o666 less the umask), not `mkstemp`'s 0o600, so
  the output is as readable as the checkpoints TensorFlow writes beside it.
  """
  directory, base = os.path.split(os.path.abspath(path))
  for _ in range(100):
    temporary = os.path.join(directory, ".%s.%s.tmp" % (base, secrets.token_hex(4)))
    try:
      fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                   0o666)
      break
    except FileExistsError:
      continue
  else:
    raise FileExistsError("no free temporary name beside %s" % path)
  try:
    with os.fdopen(fd, "wb") as file:
      yield file
      file.flush()
      os.fsync(file.fileno())
    os.replace(temporary, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(temporary)
    raise


def _value(read: ReadTensor, info: VariableInfo) -> np.ndarray:
  """One tensor as C-ordered little-endian data, checked against its listing."""
  value = np.asarray(read(info.name))
  if value.shape != info.shape:
    raise CheckpointReadError("tensor %r read with shape %s; it is listed as %s"
                              % (info.name, value.shape, info.shape))
  if info.dtype != _STRING:
    if value.dtype.itemsize * value.size != info.nbytes:
      raise CheckpointReadError("tensor %r read as %s; it is listed as %s"
                                % (info.name, value.dtype, info.dtype))
    if value.dtype.byteorder == ">" or (value.dtype.byteorder == "=" and not np.little_endian):
      value = value.astype(value.dtype.newbyteorder("<"))
  return np.asarray(value, order="C")  # (ascontiguousarray would make a scalar 1-d)


def _bytes_of(value: np.ndarray) -> np.ndarray:
  """A contiguous array's bytes as a flat uint8 view (no copy)."""
  return value.reshape(-1).view(np.uint8) if value.size else np.empty(0, np.uint8)


def _write_bytes(file, data: np.ndarray, crc: int = 0) -> int:
  """Writes a flat uint8 array; returns the CRC32C extended over it (neither copies the data)."""
  file.write(data)
  return google_crc32c.extend(crc, data)


def _refuse_strings(infos: Sequence[VariableInfo], form: str) -> None:
  strings = [i.name for i in infos if i.dtype == _STRING]
  if strings:
    raise WarmStartError(
        "%s cannot hold string tensors: %s. Exclude them (exclude=%r) or write a TF checkpoint "
        "instead." % (form, ", ".join(strings[:5]), "|".join(strings[:5])))


# ----------------------------------------------------------------------------------------------
# .safetensors


def safetensors_header(infos: Sequence[VariableInfo], metadata: dict[str, str]) -> bytes:
  """The length-prefixed JSON header for tensors stored in the order given."""
  import json  # pylint: disable=g-import-not-at-top
  entries: dict = {"__metadata__": dict(metadata)} if metadata else {}
  offset = 0
  for info in infos:
    code = _safetensors.CODES.get(info.dtype)
    if code is None:
      raise WarmStartError(
          "tensor %r has dtype %s, which .safetensors cannot hold (it holds %s). Exclude it or "
          "write a .npz or checkpoint instead." % (info.name, info.dtype,
                                                   ", ".join(sorted(_safetensors.CODES))))
    entries[info.name] = {"dtype": code, "shape": list(info.shape),
                          "data_offsets": [offset, offset + info.nbytes]}
    offset += info.nbytes
  text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
  text += b" " * (-len(text) % 8)
  return struct.pack("<Q", len(text)) + text


def write_safetensors(path: str, infos: Sequence[VariableInfo], read: ReadTensor,
                      metadata: "dict[str, str] | None" = None) -> None:
  """Writes `infos`' tensors to a .safetensors file, one tensor at a time."""
  _refuse_strings(infos, ".safetensors")
  header = safetensors_header(infos, metadata or {})
  with atomic_file(path) as file:
    file.write(header)
    for info in infos:
      _write_bytes(file, _bytes_of(_value(read, info)))


# ----------------------------------------------------------------------------------------------
# .npz


def _npy_storable(value: np.ndarray) -> np.ndarray:
  """`value` in a dtype .npy keeps: ml_dtypes' types as unsigned integers of their size."""
  if value.dtype.isbuiltin == 2:  # a dtype numpy does not define (ml_dtypes')
    return value.view(np.dtype("<u%d" % value.dtype.itemsize))
  return value


def write_npz(path: str, infos: Sequence[VariableInfo], read: ReadTensor) -> None:
  """Writes `infos`' tensors to an uncompressed .npz, one tensor at a time."""
  _refuse_strings(infos, ".npz")
  if any(i.name == DTYPES_MEMBER for i in infos):
    raise WarmStartError("a tensor named %r clashes with the member .npz files record dtypes in; "
                         "rename it" % DTYPES_MEMBER)
  recorded = []
  with atomic_file(path) as file, zipfile.ZipFile(file, "w", zipfile.ZIP_STORED,
                                              allowZip64=True) as archive:
    for info in infos:
      value = _value(read, info)
      stored = _npy_storable(value)
      if stored.dtype != value.dtype:
        recorded.append((info.name, info.dtype))
      with archive.open(info.name + ".npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, stored, allow_pickle=False)
    if recorded:
      with archive.open(DTYPES_MEMBER + ".npy", "w") as member:
        np.lib.format.write_array(member, np.array(recorded, dtype=np.str_), allow_pickle=False)


# ----------------------------------------------------------------------------------------------
# TF checkpoint (tensor bundle)

_TABLE_MAGIC = 0xDB4775248B80FB57
_BLOCK_SIZE = 4096
_RESTART_INTERVAL = 16
_ENUM = {dtype.name: enum for enum, dtype in _dtypes.BY_ENUM.items()}


def _varint(value: int) -> bytes:
  out = bytearray()
  while value >= 0x80:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _field(number: int, value) -> bytes:
  """One protobuf field: an int as a varint, bytes as a length-delimited value."""
  if isinstance(value, bytes):
    return _varint(number << 3 | 2) + _varint(len(value)) + value
  return _varint(number << 3) + _varint(value)


def _mask(crc: int) -> int:
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _entry_proto(dtype: int, shape: tuple[int, ...], offset: int, size: int, crc: int) -> bytes:
  """A BundleEntryProto (proto3: fields at their default value are left out)."""
  dims = b"".join(_field(2, _field(1, d) if d else b"") for d in shape)
  return (_field(1, dtype) + _field(2, dims) + (_field(4, offset) if offset else b"")
          + (_field(5, size) if size else b"") + _varint(6 << 3 | 5) + struct.pack("<I", crc))


_HEADER_PROTO = _field(1, 1) + _field(3, _field(1, 1))  # num_shards 1, little endian, version 1


class _Block:
  """A LevelDB table block: prefix-compressed entries, restart points every 16 entries."""

  def __init__(self):
    self.data = bytearray()
    self.restarts: list[int] = []
    self.last = b""
    self.count = 0

  def add(self, key: bytes, value: bytes) -> None:
    shared = 0
    if self.count % _RESTART_INTERVAL == 0:
      self.restarts.append(len(self.data))
    else:
      limit = min(len(key), len(self.last))
      while shared < limit and key[shared] == self.last[shared]:
        shared += 1
    self.data += (_varint(shared) + _varint(len(key) - shared) + _varint(len(value))
                  + key[shared:] + value)
    self.last = key
    self.count += 1

  def finish(self) -> bytes:
    restarts = self.restarts or [0]
    return bytes(self.data) + struct.pack("<%dI" % (len(restarts) + 1), *restarts, len(restarts))


def _table(entries: Sequence[tuple[bytes, bytes]]) -> bytes:
  """A LevelDB table (uncompressed) of (key, value) pairs sorted by key."""
  out = bytearray()
  index = _Block()

  def put(block_bytes: bytes) -> bytes:
    handle = _varint(len(out)) + _varint(len(block_bytes))
    out.extend(block_bytes + b"\x00"
               + struct.pack("<I", _mask(google_crc32c.value(block_bytes + b"\x00"))))
    return handle

  block = _Block()
  for key, value in entries:
    block.add(key, value)
    if len(block.data) >= _BLOCK_SIZE:
      index.add(block.last, put(block.finish()))
      block = _Block()
  if block.count or not index.count:
    index.add(block.last, put(block.finish()))
  handles = put(_Block().finish()) + put(index.finish())  # metaindex (empty), then the index
  return bytes(out) + handles.ljust(40, b"\x00") + struct.pack("<Q", _TABLE_MAGIC)


def _string_tensor(value: np.ndarray) -> tuple[bytes, int]:
  """(stored bytes, masked CRC32C) of a string tensor, as TensorFlow's BundleWriter makes them.

  Layout: the elements' lengths as varints, the masked CRC32C of the lengths (each as a
  little-endian uint32, or uint64 above 4 GiB), then the elements' bytes. The entry's checksum
  covers the packed lengths, that stored checksum and the bytes.
  """
  items = [bytes(v) if isinstance(v, (bytes, np.bytes_)) else str(v).encode("utf-8")
           for v in value.reshape(-1)]
  packed = b"".join(struct.pack("<I" if len(i) <= 0xFFFFFFFF else "<Q", len(i)) for i in items)
  lengths_crc = google_crc32c.value(packed)
  stored_crc = struct.pack("<I", _mask(lengths_crc))
  body = stored_crc + b"".join(items)
  data = b"".join(_varint(len(i)) for i in items) + body
  return data, _mask(google_crc32c.extend(lengths_crc, body))


def write_checkpoint(prefix: str, infos: Sequence[VariableInfo], read: ReadTensor) -> None:
  """Writes `infos`' tensors as a TF checkpoint `prefix` (one data shard), one at a time."""
  unknown = [i for i in infos if i.dtype not in _ENUM or _dtypes.BY_NAME[i.dtype].numpy == ""]
  if unknown:
    raise WarmStartError("tensor %r has dtype %s, which cannot be written to a checkpoint"
                         % (unknown[0].name, unknown[0].dtype))
  entries = []
  offset = 0
  # Both files are complete before either is renamed; the data file goes first, so the index
  # (what makes a checkpoint) only ever appears beside its data.
  with atomic_file(prefix + ".index") as index, \
       atomic_file(prefix + ".data-00000-of-00001") as data:
    for info in sorted(infos, key=lambda i: i.name.encode("utf-8")):
      value = _value(read, info)
      if info.dtype == _STRING:
        stored, crc = _string_tensor(value)
        data.write(stored)
        size = len(stored)
      else:
        size = value.nbytes
        crc = _mask(_write_bytes(data, _bytes_of(value)))
      entries.append((info.name.encode("utf-8"),
                      _entry_proto(_ENUM[info.dtype], info.shape, offset, size, crc)))
      offset += size
    index.write(_table([(b"", _HEADER_PROTO), *entries]))

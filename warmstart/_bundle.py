"""Defensive reader of TensorFlow V2 checkpoints ("tensor bundles") that needs no TensorFlow.

A V2 checkpoint written under ``PREFIX`` consists of

* ``PREFIX.index`` -- an immutable sorted string table in TensorFlow's
  LevelDB-derived "table" format (``tsl/lib/io/table``):

  - the file ends with a 48-byte footer: two BlockHandles (metaindex, index),
    each a pair of varint64 ``(offset, size)``, zero padded to 40 bytes,
    followed by the fixed64 magic number ``0xdb4775248b80fb57``;
  - every block is followed by a 5-byte trailer: one compression-type byte
    (0 = none; TensorFlow always writes bundle indexes uncompressed) and the
    masked CRC32C of the block contents plus that type byte;
  - a block is a run of prefix-compressed entries (varint32 ``shared``,
    ``non_shared`` and ``value_length``, then the key suffix and the value),
    followed by an array of uint32 restart offsets and its uint32 length;
  - the index block maps a separator key (>= every key of a data block) to
    the BlockHandle of that data block; the metaindex block is empty.

  The table's key ``""`` holds a ``BundleHeaderProto`` (number of data
  shards, endianness, format version).  Every other key is a tensor name whose
  value is a ``BundleEntryProto`` (dtype, shape, shard id, byte offset and
  size inside that shard, masked CRC32C of those bytes -- for DT_STRING and
  DT_VARIANT of a related byte sequence, see :func:`tensor_crc32c`).  A
  tensor saved as slices (a partitioned variable) has an entry that lists its
  slices and holds no bytes itself; each slice is stored under a separate
  binary key (``checkpoint::EncodeTensorNameSlice``: a ``\\x00`` byte, then
  the tensor name, rank and per-dimension ``(start, length)`` in
  ``OrderedCode`` encoding).

* ``PREFIX.data-NNNNN-of-MMMMM`` -- ``MMMMM`` shard files holding the raw
  tensor bytes, in the bundle's byte order; the entries give their positions.

Why this module exists:

1. Listing, reading and comparing checkpoints is what users run most (in CI,
   in shell loops); importing TensorFlow for it costs seconds and half a GB.
   Everything here needs numpy and google-crc32c only (the index's protocol
   buffers are decoded by ``_wire``, dtypes come from ``_dtypes``).
2. Comparing checkpoints tensor by tensor is fast and memory-bounded when the
   raw byte ranges are read straight from the data files (and compared or
   checksummed) instead of materialising every tensor.
3. TensorFlow's C++ reader may abort the whole process on crafted or corrupt
   files.  Files are validated here first.  This parser never trusts a size or
   offset before checking it against the real file, does work linear in the
   file size, never loops without progress, and reports every malformation as
   :class:`BundleError` naming the file and the offending offset or value.

Typical use: ``index = read_index(prefix)`` (validates the index),
``check_data_files(index)`` (every byte range lies inside an existing shard),
then ``read_tensor_bytes(index, entry)`` per tensor, ``verify_crc=True`` to
also check its stored checksum.  ``DataFiles(index)`` keeps the shards open
for reading byte ranges (``read_tensor_into`` reads a large tensor into an
array in checksummed pieces; ``diff`` compares tensors chunk by chunk).
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat as _stat
import struct
import threading
from collections.abc import Iterator

import google_crc32c
import numpy as np

from warmstart import _dtypes, _limits, _wire
from warmstart._errors import CheckpointReadError

__all__ = [
  "ELEMENT_BATCH",
  "READ_CHUNK",
  "BundleEntry",
  "BundleError",
  "BundleIndex",
  "DataFiles",
  "check_crc32c",
  "check_data_files",
  "crc32c",
  "iter_elements",
  "mask_crc32c",
  "masked_crc32c",
  "page_aligned_empty",
  "read_index",
  "read_tensor_bytes",
  "read_tensor_into",
  "tensor_crc32c",
  "verify_tensor",
]


class BundleError(CheckpointReadError):
  """A checkpoint (tensor bundle) file is missing, unreadable or malformed."""


# --------------------------------------------------------------------------
# CRC32C (Castagnoli), as used by LevelDB/TensorFlow, with TF's masking.
# google-crc32c computes it (in hardware where the CPU has an instruction).
# --------------------------------------------------------------------------

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def crc32c(data, crc: int = 0) -> int:
  """Standard (unmasked) CRC32C of a bytes-like object, extending ``crc``."""
  if not isinstance(data, bytes):
    # google-crc32c takes read-only buffers only: a read-only view, not a copy.
    data = np.frombuffer(data, np.uint8)
    data.flags.writeable = False
  return google_crc32c.extend(crc, data)


def mask_crc32c(crc: int) -> int:
  """TF's masking of a crc32c as stored in checkpoints."""
  return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
  """TensorFlow's masked CRC32C of ``data`` (as stored in checkpoints)."""
  return mask_crc32c(crc32c(data))


# --------------------------------------------------------------------------
# Public data types.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BundleEntry:
  """One tensor (or one stored slice of a sliced tensor) of a bundle.

  ``dtype`` is the numpy dtype of the stored bytes (in the bundle's byte
  order), or None when the tensor has no fixed-size layout (DT_STRING,
  DT_VARIANT, DT_RESOURCE) or numpy has no such type.  ``tf_dtype`` is the
  ``DataType`` enum value, ``dtype_name`` TensorFlow's name of it.  ``shard_id``/``offset``/``size`` locate the
  stored bytes and ``crc32c`` is their masked CRC32C as stored.

  ``sliced`` is True for a tensor saved as slices (a partitioned variable):
  it holds no bytes itself, its slices are in ``BundleIndex.slices[name]``.
  For such a slice, ``extent`` is ``((start, length), ...)`` per dimension
  of the full tensor and ``shape`` is the slice's own shape; ``extent`` is
  None for every other entry.
  """

  name: str
  dtype: np.dtype | None
  tf_dtype: int
  shape: tuple[int, ...]
  shard_id: int
  offset: int
  size: int
  crc32c: int
  sliced: bool
  extent: tuple[tuple[int, int], ...] | None = None

  @property
  def num_elements(self) -> int:
    return math.prod(self.shape)

  @property
  def dtype_name(self) -> str:
    return _dtypes.enum_name(self.tf_dtype)


@dataclasses.dataclass(frozen=True)
class BundleIndex:
  """The parsed ``PREFIX.index`` of a V2 checkpoint.

  ``entries`` maps tensor names to entries, in file (sorted) order, without
  the header key ``""`` and without the per-slice keys, i.e. the same names
  TensorFlow's ``CheckpointReader`` lists.  ``slices`` maps the name of each
  sliced tensor to its stored slices.  ``version`` is the header's producer
  version.
  """

  prefix: str
  num_shards: int
  little_endian: bool
  version: int
  entries: dict[str, BundleEntry]
  slices: dict[str, tuple[BundleEntry, ...]] = dataclasses.field(default_factory=dict)

  def data_path(self, shard_id: int) -> str:
    """Path of data shard ``shard_id`` (``PREFIX.data-NNNNN-of-MMMMM``)."""
    if not 0 <= shard_id < self.num_shards:
      raise ValueError(f"shard id {shard_id} out of range [0, {self.num_shards})")
    return f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}"

  def stored_entries(self):
    """Every entry that owns bytes in a data file (incl. slices), file order."""
    for entry in self.entries.values():
      if entry.sliced:
        yield from self.slices.get(entry.name, ())
      else:
        yield entry


# --------------------------------------------------------------------------
# Format constants.
# --------------------------------------------------------------------------

_FOOTER_SIZE = 48
_HANDLES_SIZE = 40
_TABLE_MAGIC = 0xDB4775248B80FB57
_TRAILER_SIZE = 5
_NO_COMPRESSION = 0
_SNAPPY_COMPRESSION = 1
# Generous sanity limits: real checkpoints are far below them.
_MAX_INDEX_BYTES = 1 << 31
# One table block: TensorFlow writes 256 KiB blocks (an entry larger than that gets a block of
# its own; a tensor partitioned into 10^5 slices takes about 2 MiB).
_MAX_BLOCK = 64 << 20
_MAX_SHARDS = 1 << 16
_MAX_KEY_EXPANSION = 64
_MAX_RANK = 254  # TensorShape::MaxDimensions()
_MAX_INT64 = (1 << 63) - 1
# TensorBundle format version (tensor_bundle.h).
_BUNDLE_VERSION = 1
_BUNDLE_MIN_PRODUCER = 0
_STRING = 7  # DataType DT_STRING
_VARIANT = 21  # DataType DT_VARIANT


def _numpy_dtype(tf_dtype: int, little_endian: bool) -> np.dtype | None:
  """The numpy dtype of a fixed-size type's stored bytes, in the bundle's byte order."""
  dtype = _dtypes.BY_ENUM[tf_dtype]
  if not dtype.size:
    return None
  numpy_dtype = _dtypes.numpy_dtype(dtype.name)
  if numpy_dtype is None or numpy_dtype.itemsize == 1:
    return numpy_dtype
  if numpy_dtype.kind == "V":  # ml_dtypes' types have no byte order of their own
    return numpy_dtype if little_endian else None
  return numpy_dtype.newbyteorder("<" if little_endian else ">")


def _dtype_name(tf_dtype: int) -> str:
  return _dtypes.enum_name(tf_dtype)


# --------------------------------------------------------------------------
# Low-level decoding (all bounds-checked; errors are ValueError internally).
# --------------------------------------------------------------------------


_Malformed = _wire.Malformed  # internal: a structural error at a known position


def _show(key) -> str:
  """A key or name for an error message (shortened if long)."""
  text = repr(key)
  return text if len(text) <= 120 else text[:100] + f"... ({len(key)} bytes)"


def _varint32(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
  return _wire.varint(buf, pos, end, what, 32)


def _varint64(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
  return _wire.varint(buf, pos, end, what)


def _block_handle(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int, int]:
  offset, pos = _varint64(buf, pos, end, what)
  size, pos = _varint64(buf, pos, end, what)
  return offset, size, pos


def _read_block(f, offset: int, size: int, limit: int, what: str) -> bytes:
  """Reads and returns the verified contents of the block at ``offset``/``size``.

  ``limit`` is where the table data ends (the footer's offset): the block and its trailer must
  lie before it, and no block may be larger than ``_MAX_BLOCK``, before anything is read.
  """
  if offset + size + _TRAILER_SIZE > limit:
    raise _Malformed(
        f"{what} (offset {offset}, size {size}) plus its {_TRAILER_SIZE}-byte trailer "
        f"extends past the end of the table data at offset {limit}")
  if size > _MAX_BLOCK:
    raise _Malformed(f"{what} at offset {offset}: size {size} is larger than the {_MAX_BLOCK}-"
                     "byte limit for one block; not written by TensorFlow")
  try:
    data = _limits.read_at(f, offset, size + _TRAILER_SIZE, limit, what)
  except CheckpointReadError as e:
    raise _Malformed(str(e)) from None
  (stored,) = struct.unpack_from("<I", data, size + 1)
  actual = masked_crc32c(memoryview(data)[:size + 1])
  if actual != stored:
    raise _Malformed(
        f"{what} at offset {offset}: checksum mismatch (stored masked crc32c "
        f"0x{stored:08x}, computed 0x{actual:08x})")
  kind = data[size]
  if kind == _SNAPPY_COMPRESSION:
    raise _Malformed(f"{what} at offset {offset}: compressed index blocks are not supported")
  if kind != _NO_COMPRESSION:
    raise _Malformed(f"{what} at offset {offset}: unknown block compression type {kind}")
  return data[:size]


def _block_entries(block: bytes, what: str) -> list[tuple[bytes, bytes]]:
  """Decodes all (key, value) pairs of a block, validating its structure."""
  size = len(block)
  if size < 4:
    raise _Malformed(f"{what}: block of {size} bytes is too short for its restart count")
  (num_restarts,) = struct.unpack_from("<I", block, size - 4)
  if num_restarts == 0 or num_restarts > (size - 4) // 4:
    raise _Malformed(f"{what}: bad restart count {num_restarts} for a block of {size} bytes")
  restarts_at = size - 4 * (1 + num_restarts)
  restarts = struct.unpack_from(f"<{num_restarts}I", block, restarts_at)

  entries: list[tuple[bytes, bytes]] = []
  key = b""
  pos = 0
  next_restart = 0
  # Prefix compression lets a small block expand into huge keys (each entry
  # reusing the previous key and adding a byte).  TensorFlow restarts every
  # 16 entries, which bounds the expansion by 16x the block size.
  key_budget = _MAX_KEY_EXPANSION * size
  while pos < restarts_at:
    start = pos
    shared, pos = _varint32(block, pos, restarts_at, what)
    non_shared, pos = _varint32(block, pos, restarts_at, what)
    value_len, pos = _varint32(block, pos, restarts_at, what)
    if shared > len(key):
      raise _Malformed(
          f"{what}: entry at offset {start} shares {shared} bytes with a "
          f"previous key of {len(key)} bytes")
    if pos + non_shared + value_len > restarts_at:
      raise _Malformed(
          f"{what}: entry at offset {start} (key suffix {non_shared} bytes, value "
          f"{value_len} bytes) runs past the entries area ending at {restarts_at}")
    if next_restart < num_restarts and restarts[next_restart] == start:
      if shared:
        raise _Malformed(f"{what}: entry at restart point {start} has a shared key prefix")
      next_restart += 1
    key_budget -= shared + non_shared
    if key_budget < 0:
      raise _Malformed(
          f"{what}: keys expand to more than {_MAX_KEY_EXPANSION} times the block size "
          f"(at entry offset {start}); not written by TensorFlow")
    key = key[:shared] + block[pos:pos + non_shared]
    pos += non_shared
    entries.append((key, block[pos:pos + value_len]))
    pos += value_len
  if entries:
    if next_restart != num_restarts or restarts[0] != 0:
      raise _Malformed(
          f"{what}: restart offsets {list(restarts[:8])} do not match the entries")
  elif restarts != (0,):
    raise _Malformed(f"{what}: empty block with restart offsets {list(restarts[:8])}")
  return entries


def _ordered_signed(buf: bytes, pos: int) -> tuple[int, int]:
  """Decodes OrderedCode::WriteSignedNumIncreasing (canonical form only).

  An n-byte code holds the value's two's complement in 8n bits whose top n
  bits are flipped; so, after inverting negative codes, it starts with n one
  bits (spilling into the second byte for n > 8) and then a zero bit.
  """
  if pos >= len(buf):
    raise _Malformed("signed number runs past the end")
  negative = not buf[pos] & 0x80
  flip = 0xFF if negative else 0x00
  length = 0
  for i in range(min(2, len(buf) - pos)):
    ones = 8 - ((buf[pos + i] ^ flip) ^ 0xFF).bit_length()
    length += ones
    if ones < 8:
      break
  if not 1 <= length <= 10 or pos + length > len(buf):
    raise _Malformed("bad signed number length")
  bits = 8 * length
  value = int.from_bytes(buf[pos:pos + length], "big") ^ ((1 << bits) - (1 << (bits - length)))
  if negative:
    value -= 1 << bits
  magnitude_bits = (~value if value < 0 else value).bit_length()
  if not -(1 << 63) <= value <= _MAX_INT64 or max(1, (magnitude_bits + 7) // 7) != length:
    raise _Malformed("non-canonical signed number")
  return value, pos + length


def _ordered_unsigned(buf: bytes, pos: int) -> tuple[int, int]:
  """Decodes OrderedCode::WriteNumIncreasing (canonical form only)."""
  if pos >= len(buf):
    raise _Malformed("number runs past the end")
  length = buf[pos]
  if length > 8 or pos + 1 + length > len(buf) or (length and buf[pos + 1] == 0):
    raise _Malformed("bad number encoding")
  value = int.from_bytes(buf[pos + 1:pos + 1 + length], "big")
  return value, pos + 1 + length


def _decode_slice_key(key: bytes) -> tuple[bytes, tuple[tuple[int, int], ...]]:
  """Decodes checkpoint::EncodeTensorNameSlice -> (name, ((start, length), ...))."""
  if key[:1] != b"\x00":
    raise _Malformed("does not start with a zero byte")
  pos = 1
  name = bytearray()
  while True:
    if pos >= len(key):
      raise _Malformed("unterminated tensor name")
    byte = key[pos]
    if byte == 0x00 or byte == 0xFF:
      if pos + 1 >= len(key):
        raise _Malformed("bad escape in tensor name")
      nxt = key[pos + 1]
      pos += 2
      if byte == 0x00 and nxt == 0x01:
        break
      if byte == 0x00 and nxt == 0xFF:
        name.append(0x00)
      elif byte == 0xFF and nxt == 0x00:
        name.append(0xFF)
      else:
        raise _Malformed("bad escape in tensor name")
    else:
      name.append(byte)
      pos += 1
  rank, pos = _ordered_unsigned(key, pos)
  if rank > _MAX_RANK:
    raise _Malformed(f"rank {rank} too large")
  extent = []
  for _ in range(rank):
    start, pos = _ordered_signed(key, pos)
    length, pos = _ordered_signed(key, pos)
    extent.append((start, length))
  if pos != len(key):
    raise _Malformed("trailing bytes")
  return bytes(name), tuple(extent)


# --------------------------------------------------------------------------
# Index parsing.
# --------------------------------------------------------------------------


def _open_regular(path: str, missing: str):
  """Opens a regular file for reading (never a FIFO or device, which could block)."""
  try:
    return _limits.open_regular(path, "checkpoint file")
  except CheckpointReadError as e:
    raise BundleError(f"{path}: {missing}" if not os.path.lexists(path) else str(e)) from None


def read_index(prefix: str | os.PathLike) -> BundleIndex:
  """Reads and validates ``PREFIX.index``; raises BundleError if malformed.

  The footer is read first, then each block it leads to, each checked against the file size
  (and its checksum) before it is read: a large or sparse file costs no more memory than the
  blocks that are valid.
  """
  prefix = os.fspath(prefix)
  if not isinstance(prefix, str):
    prefix = os.fsdecode(prefix)
  path = prefix + ".index"
  with _open_regular(path, "file not found") as f:
    try:
      size = os.fstat(f.fileno()).st_size
      if size > _MAX_INDEX_BYTES:
        raise _Malformed(f"file is {size} bytes, larger than the {_MAX_INDEX_BYTES}-byte limit")
      return _parse_index(prefix, f, size)
    except (_Malformed, CheckpointReadError) as e:
      raise BundleError(f"{path}: {e}") from None
    except OSError as e:
      raise BundleError(f"{path}: cannot read: {e}") from None


def _parse_index(prefix: str, f, size: int) -> BundleIndex:
  if size < _FOOTER_SIZE:
    raise _Malformed(
        f"file is {size} bytes, too short for the {_FOOTER_SIZE}-byte table footer")
  footer_at = size - _FOOTER_SIZE
  footer = _limits.read_at(f, footer_at, _FOOTER_SIZE, size, "table footer")
  (magic,) = struct.unpack_from("<Q", footer, _HANDLES_SIZE)
  if magic != _TABLE_MAGIC:
    raise _Malformed(
        f"bad table magic number 0x{magic:016x} at offset {size - 8} "
        f"(expected 0x{_TABLE_MAGIC:016x}); not a TensorFlow V2 checkpoint index")
  meta_offset, meta_size, pos = _block_handle(footer, 0, _HANDLES_SIZE, "footer")
  index_offset, index_size, pos = _block_handle(footer, pos, _HANDLES_SIZE, "footer")

  meta = _read_block(f, meta_offset, meta_size, footer_at, "metaindex block")
  _block_entries(meta, f"metaindex block at offset {meta_offset}")
  index_block = _read_block(f, index_offset, index_size, footer_at, "index block")
  index_what = f"index block at offset {index_offset}"
  index_entries = _block_entries(index_block, index_what)

  # Walk the data blocks: they must be disjoint and in file order (so the
  # total work is bounded by the file size), keys strictly increasing and
  # each block's keys must lie between the surrounding separator keys.
  records: list[tuple[bytes, bytes]] = []
  prev_sep: bytes | None = None
  min_next_offset = 0
  for sep, value in index_entries:
    offset, bsize, used = _block_handle(value, 0, len(value), index_what)
    if used != len(value):
      raise _Malformed(
          f"{index_what}: block handle for key {_show(sep)} has "
          f"{len(value) - used} trailing bytes")
    if prev_sep is not None and sep <= prev_sep:
      raise _Malformed(f"{index_what}: keys not strictly increasing at {_show(sep)}")
    if offset < min_next_offset:
      raise _Malformed(
          f"{index_what}: data block at offset {offset} overlaps or precedes the "
          f"previous block (which ends at {min_next_offset})")
    what = f"data block at offset {offset}"
    block = _read_block(f, offset, bsize, footer_at, "data block")
    block_records = _block_entries(block, what)
    if not block_records:
      raise _Malformed(f"{what}: empty data block")
    first_key, last_key = block_records[0][0], block_records[-1][0]
    if last_key > sep:
      raise _Malformed(f"{what}: key {_show(last_key)} is beyond its index key {_show(sep)}")
    if prev_sep is not None and first_key <= prev_sep:
      raise _Malformed(
          f"{what}: key {_show(first_key)} is not after the previous index key "
          f"{_show(prev_sep)}")
    records.extend(block_records)
    prev_sep = sep
    min_next_offset = offset + bsize + _TRAILER_SIZE
  for i in range(1, len(records)):
    if records[i][0] <= records[i - 1][0]:
      raise _Malformed(f"keys not strictly increasing at {_show(records[i][0])}")

  if not records or records[0][0] != b"":
    raise _Malformed("the bundle header (empty key) is missing")
  num_shards, little, producer = _parse_header(records[0][1])
  entries: dict[str, BundleEntry] = {}
  owner_extents: dict[str, list[tuple[tuple[int, int], ...]]] = {}
  slice_records: list[tuple[bytes, tuple[tuple[int, int], ...], bytes, BundleEntry]] = []
  for key, value in records[1:]:
    if key[:1] == b"\x00":
      try:
        owner, extent = _decode_slice_key(key)
      except _Malformed as e:
        raise _Malformed(f"bad tensor slice key {_show(key)}: {e}") from None
      entry, listed = _parse_entry(owner.decode("utf-8", "replace"), key, value,
                                   num_shards, little)
      if listed is not None:
        raise _Malformed(f"tensor slice {_show(key)} is itself sliced")
      slice_records.append((owner, extent, key, entry))
      continue
    try:
      name = key.decode("utf-8")
    except UnicodeDecodeError:
      raise _Malformed(f"tensor name {_show(key)} is not valid UTF-8") from None
    entry, listed = _parse_entry(name, key, value, num_shards, little)
    entries[name] = entry
    if listed is not None:
      owner_extents[name] = listed

  slices = _match_slices(entries, owner_extents, slice_records)
  return BundleIndex(prefix=prefix, num_shards=num_shards, little_endian=little,
                     version=producer, entries=entries, slices=slices)


def _parse_header(value: bytes) -> tuple[int, bool, int]:
  """Parses and checks the BundleHeaderProto; returns (num_shards, little endian, producer)."""
  what = "bundle header"
  header = _decode(value, what)
  num_shards = _wire.int32(header, 1, what)
  if not 1 <= num_shards <= _MAX_SHARDS:
    raise _Malformed(f"bundle header: bad number of shards {num_shards}")
  endianness = _wire.int32(header, 2, what)
  if endianness not in (0, 1):  # LITTLE, BIG
    raise _Malformed(f"bundle header: unknown endianness value {endianness}")
  version = _wire.message(header, 3, what)  # VersionDef
  producer = _wire.int32(version, 1, what)
  min_consumer = _wire.int32(version, 2, what)
  if producer < _BUNDLE_MIN_PRODUCER:
    raise _Malformed(f"bundle header: producer version {producer} is too old")
  if min_consumer > _BUNDLE_VERSION:
    raise _Malformed(
        f"bundle header: needs reader version {min_consumer}, "
        f"this reader implements version {_BUNDLE_VERSION}")
  if _BUNDLE_VERSION in _wire.repeated_int32(version, 3, what):
    raise _Malformed(
        f"bundle header: reader version {_BUNDLE_VERSION} is marked bad for this file")
  return num_shards, endianness == 0, producer


def _decode(value: bytes, what: str) -> _wire.Fields:
  try:
    return _wire.decode(value, what)
  except _Malformed as e:
    raise _Malformed(f"cannot decode protocol buffer: {e}") from None


def _parse_entry(name: str, key: bytes, value: bytes, num_shards: int, little: bool):
  """Parses and checks one BundleEntryProto stored under ``key``.

  Returns the entry and, for a sliced tensor, its slices as
  EncodeTensorNameSlice encodes them (``(start, length)`` per dimension,
  length -1 for a full extent), else None.
  """
  what = f"entry {_show(key)}"
  try:
    proto = _decode(value, what)  # BundleEntryProto
    tf_dtype = _wire.int32(proto, 1, what)
    shape_proto = _wire.message(proto, 2, what)  # TensorShapeProto
    unknown_rank = _wire.int64(shape_proto, 3, what) != 0
    dims = [_wire.int64(dim, 1, what) for dim in _wire.messages(shape_proto, 2, what)]
    shard_id = _wire.int32(proto, 3, what)
    offset, size = _wire.int64(proto, 4, what), _wire.int64(proto, 5, what)
    crc = _wire.fixed32(proto, 6, what)
    slice_protos = [_wire.messages(s, 1, what) for s in _wire.messages(proto, 7, what)]
    slice_extents = [[(_wire.int64(e, 1, what), _wire.int64(e, 2, what) if _wire.has(e, 2) else -1)
                      for e in extents] for extents in slice_protos]
  except _Malformed as e:
    raise _Malformed(f"{what}: {e}") from None
  if tf_dtype not in _dtypes.BY_ENUM:
    raise _Malformed(f"{what}: bad dtype {_dtype_name(tf_dtype)}")
  if unknown_rank:
    raise _Malformed(f"{what}: shape has unknown rank")
  if len(dims) > _MAX_RANK:
    raise _Malformed(f"{what}: rank {len(dims)} exceeds {_MAX_RANK}")
  shape = tuple(dims)
  try:
    _limits.shape_nbytes(shape, 1, _MAX_INT64, "shape")
  except CheckpointReadError as e:
    raise _Malformed(f"{what}: {e}") from None
  num_elements = math.prod(shape)
  if not 0 <= shard_id < num_shards:
    raise _Malformed(f"{what}: shard id {shard_id} not in [0, {num_shards})")
  if offset < 0 or size < 0 or offset + size > _MAX_INT64:
    raise _Malformed(f"{what}: bad byte range offset {offset}, size {size}")
  listed = None
  itemsize = _dtypes.BY_ENUM[tf_dtype].size
  if slice_extents:
    listed = []
    for extents in slice_extents:
      if len(extents) != len(shape):
        raise _Malformed(
            f"{what}: slice with {len(extents)} extents for a rank {len(shape)} tensor")
      for (start, length), dim in zip(extents, shape):
        if (length == -1 and start != 0) or length < -1 or start < 0 or (
                start + max(length, 0) > dim):
          raise _Malformed(
              f"{what}: slice extent (start {start}, length {length}) "
              f"does not fit dimension {dim}")
      listed.append(tuple(extents))
  elif itemsize:
    expected = itemsize * num_elements
    if size != expected:
      raise _Malformed(
          f"{what}: size {size} does not match {_dtype_name(tf_dtype)} shape "
          f"{list(shape)} ({expected} bytes)")
  elif size < num_elements:
    # Every string/variant element takes at least one (length) byte.
    raise _Malformed(
        f"{what}: size {size} is too small for {num_elements} "
        f"{_dtype_name(tf_dtype)} elements")
  entry = BundleEntry(name=name, dtype=_numpy_dtype(tf_dtype, little),
                      tf_dtype=tf_dtype, shape=shape, shard_id=shard_id, offset=offset,
                      size=size, crc32c=crc, sliced=listed is not None)
  return entry, listed


def _match_slices(entries, owner_extents, slice_records) -> dict[str, tuple[BundleEntry, ...]]:
  """Pairs each sliced tensor with its stored slices; both must match exactly."""
  stored: dict[tuple[bytes, tuple[tuple[int, int], ...]], tuple[bytes, BundleEntry]] = {}
  for owner, extent, key, entry in slice_records:
    if (owner, extent) in stored:
      raise _Malformed(f"tensor slice {_show(key)} is stored twice")
    stored[(owner, extent)] = (key, entry)
  slices: dict[str, tuple[BundleEntry, ...]] = {}
  for name, listed in owner_extents.items():
    owner = entries[name]
    owner_key = name.encode("utf-8")
    found = []
    for extent in listed:
      hit = stored.pop((owner_key, extent), None)
      if hit is None:
        raise _Malformed(
            f"entry {_show(name)}: its slice {list(extent)} is listed but not stored "
            "(or listed twice)")
      key, entry = hit
      concrete = tuple((start, dim if length == -1 else length)
                       for (start, length), dim in zip(extent, owner.shape))
      if entry.tf_dtype != owner.tf_dtype:
        raise _Malformed(
            f"tensor slice {_show(key)}: dtype {_dtype_name(entry.tf_dtype)} differs from "
            f"{_dtype_name(owner.tf_dtype)} of {_show(name)}")
      if entry.shape != tuple(length for _, length in concrete):
        raise _Malformed(
            f"tensor slice {_show(key)}: shape {list(entry.shape)} does not match its "
            f"extent {list(concrete)}")
      found.append(dataclasses.replace(entry, name=name, extent=concrete))
    slices[name] = tuple(found)
  if stored:
    key, _ = next(iter(stored.values()))
    raise _Malformed(f"tensor slice {_show(key)} is not listed by any sliced tensor")
  return slices


# --------------------------------------------------------------------------
# Data files.
# --------------------------------------------------------------------------


def check_data_files(index: BundleIndex) -> None:
  """Checks that every data shard exists and holds every entry's bytes.

  Raises BundleError naming the missing or too short shard files.
  """
  needed = [0] * index.num_shards
  for entry in index.stored_entries():
    end = entry.offset + entry.size
    if end > needed[entry.shard_id]:
      needed[entry.shard_id] = end
  problems = []
  for shard_id, need in enumerate(needed):
    path = index.data_path(shard_id)
    try:
      st = os.stat(path)
    except FileNotFoundError:
      problems.append(f"{path}: data file is missing")
      continue
    except OSError as e:
      problems.append(f"{path}: cannot access data file: {e}")
      continue
    if not _stat.S_ISREG(st.st_mode):
      problems.append(f"{path}: not a regular file")
    elif st.st_size < need:
      problems.append(
          f"{path}: data file is {st.st_size} bytes, but the index needs {need} bytes")
  if problems:
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    raise BundleError(f"checkpoint {index.prefix}: " + "; ".join(problems[:5]) + more)


def read_tensor_bytes(index: BundleIndex, entry: BundleEntry, *,
                      verify_crc: bool = False) -> bytes:
  """Reads exactly the ``entry.size`` stored bytes of ``entry``.

  With ``verify_crc`` the bytes are also checked against ``entry.crc32c``.
  A sliced tensor stores no bytes itself: read ``index.slices[name]``.
  """
  if entry.sliced:
    raise ValueError(
        f"tensor {_show(entry.name)} is stored as slices; read index.slices[name]")
  path = index.data_path(entry.shard_id)
  with _open_regular(path, "data file is missing") as f:
    try:
      file_size = os.fstat(f.fileno()).st_size
      if entry.offset + entry.size > file_size:
        raise BundleError(
            f"{path}: tensor {_show(entry.name)} needs bytes [{entry.offset}, "
            f"{entry.offset + entry.size}) but the file is {file_size} bytes")
      f.seek(entry.offset)
      data = f.read(entry.size)
    except OSError as e:
      raise BundleError(f"{path}: cannot read: {e}") from e
  if len(data) != entry.size:
    raise BundleError(
        f"{path}: tensor {_show(entry.name)}: read {len(data)} bytes at offset "
        f"{entry.offset}, expected {entry.size}")
  if verify_crc:
    actual = tensor_crc32c(entry, data, path=path)
    if actual != entry.crc32c:
      raise BundleError(
          f"{path}: tensor {_show(entry.name)} at offset {entry.offset}: checksum mismatch "
          f"(stored masked crc32c 0x{entry.crc32c:08x}, computed 0x{actual:08x})")
  return data


class DataFiles:
  """The data shards of a bundle, each opened once, read by byte ranges.

  Reads use ``os.preadv`` (no shared file position), so one instance serves several threads.
  Use it as a context manager, or call ``close``.
  """

  def __init__(self, index: BundleIndex):
    self.index = index
    self._fds: dict[int, int] = {}
    self._lock = threading.Lock()

  def _fd(self, shard_id: int) -> int:
    with self._lock:
      fd = self._fds.get(shard_id)
      if fd is None:
        path = self.index.data_path(shard_id)
        with _open_regular(path, "data file is missing") as f:
          fd = self._fds[shard_id] = os.dup(f.fileno())
      return fd

  def read_into(self, entry: BundleEntry, offset: int, view: memoryview) -> None:
    """Fills ``view`` with the stored bytes of ``entry`` from ``offset`` on.

    Raises BundleError if the file cannot be read or ends early.
    """
    path = self.index.data_path(entry.shard_id)
    done = 0
    try:
      fd = self._fd(entry.shard_id)
      while done < len(view):
        count = os.preadv(fd, [view[done:]], entry.offset + offset + done)
        if count == 0:
          raise BundleError(
              f"{path}: tensor {_show(entry.name)} needs bytes [{entry.offset}, "
              f"{entry.offset + entry.size}) but the file ends at {entry.offset + offset + done}")
        done += count
    except OSError as e:
      raise BundleError(f"{path}: cannot read: {e.strerror or e}") from None

  def close(self) -> None:
    with self._lock:
      for fd in self._fds.values():
        os.close(fd)
      self._fds.clear()

  def __enter__(self) -> DataFiles:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def check_crc32c(entry: BundleEntry, crc: int, path: str) -> None:
  """Raises BundleError unless ``crc`` (unmasked, of the entry's bytes) matches the stored one."""
  if mask_crc32c(crc) != entry.crc32c:
    raise BundleError(
        f"{path}: tensor {_show(entry.name)} at offset {entry.offset}: checksum mismatch "
        f"(stored masked crc32c 0x{entry.crc32c:08x}, computed 0x{mask_crc32c(crc):08x}); "
        "the checkpoint is corrupt")


# Bytes read per step when a tensor is read into memory: bounds the extra memory of a read.
READ_CHUNK = 2 << 20


_PAGE = 4096


def page_aligned_empty(nbytes: int) -> np.ndarray:
  """A uint8 array of ``nbytes`` that starts on a page boundary.

  The kernel copies file data into a buffer at another offset within its page several times
  slower (measured on AMD EPYC: 0.7 ms vs 3 ms per 2 MiB); numpy's own large arrays start 16
  bytes into a page.
  """
  raw = np.empty(nbytes + _PAGE, np.uint8)
  start = -raw.ctypes.data % _PAGE
  return raw[start:start + nbytes]


def read_tensor_into(files: DataFiles, entry: BundleEntry, out: np.ndarray) -> None:
  """Reads the stored bytes of a fixed-size ``entry`` into ``out`` and checks their checksum.

  ``out`` is a contiguous uint8 array of exactly ``entry.size`` bytes. The bytes are read in
  pieces of a few MiB, each checksummed as it arrives. Raises BundleError for a short file or a
  checksum mismatch.
  """
  if entry.sliced or entry.dtype is None or out.nbytes != entry.size:
    raise ValueError(f"tensor {_show(entry.name)} cannot be read as {entry.size} fixed bytes")
  _read_checked(files, entry, lambda start, count: out[start:start + count])


def verify_tensor(files: DataFiles, entry: BundleEntry) -> None:
  """Checks one stored entry (not a sliced one) against its checksum without keeping its value.

  Memory stays within a read chunk. Strings' and variants' layouts are validated too; a
  DT_RESOURCE entry (which TensorFlow never writes) is checked as plain bytes.

  Raises:
    BundleError: damaged or malformed.
  """
  if entry.tf_dtype in (_STRING, _VARIANT):
    for _ in iter_elements(files, entry):
      pass
    return
  buffer = page_aligned_empty(min(READ_CHUNK, entry.size))
  _read_checked(files, entry, lambda start, count: buffer[:count])


def _read_checked(files: DataFiles, entry: BundleEntry, target) -> None:
  """Reads an entry's bytes chunk by chunk into ``target(start, count)``, then checks the crc."""
  crc = 0
  for start in range(0, entry.size, READ_CHUNK):
    piece = target(start, min(READ_CHUNK, entry.size - start))
    files.read_into(entry, start, piece.data)
    crc = crc32c(piece, crc)
  check_crc32c(entry, crc, files.index.data_path(entry.shard_id))


# --------------------------------------------------------------------------
# Strings and variants, streamed: memory bounded by a batch, whatever an entry claims.
# --------------------------------------------------------------------------

# Elements decoded at once (at most; fewer when their bytes exceed READ_CHUNK).
ELEMENT_BATCH = 1 << 16


def iter_elements(files: DataFiles, entry: BundleEntry,
                  batch: int = ELEMENT_BATCH) -> Iterator[list[bytes]]:
  """Yields the elements of a DT_STRING or DT_VARIANT entry, a batch at a time.

  A variant element is its serialized ``VariantTensorData``. The layout is validated as it is
  read (every length against the bytes that are really there, before reading them) and the
  checksum at the end, so a damaged entry raises BundleError; memory stays within a batch and a
  read chunk, whatever number or length of elements the entry claims.
  """
  path = files.index.data_path(entry.shard_id)
  try:
    if entry.tf_dtype == _STRING:
      yield from _iter_strings(files, entry, batch)
    elif entry.tf_dtype == _VARIANT:
      yield from _iter_variants(files, entry, batch)
    else:
      raise _Malformed(f"dtype {_dtype_name(entry.tf_dtype)} has no elements of its own")
  except _Malformed as e:
    raise BundleError(f"{path}: tensor {_show(entry.name)}: malformed "
                      f"{_dtype_name(entry.tf_dtype)} data: {e}") from None


class _Cursor:
  """Sequential reads of one entry's stored bytes (from ``pos``), a chunk at a time."""

  def __init__(self, files: DataFiles, entry: BundleEntry, pos: int = 0):
    self.files, self.entry, self.pos = files, entry, pos
    self._chunk = b""
    self._chunk_at = pos

  def peek(self, minimum: int = 16) -> bytes:
    """The bytes from ``pos`` to the end of the current chunk: at least ``minimum`` (or all that
    are left), reading the next chunk when fewer are at hand."""
    offset = self.pos - self._chunk_at
    left = self.entry.size - self.pos
    if offset < 0 or len(self._chunk) - offset < min(minimum, left):
      count = min(READ_CHUNK, left)
      buffer = bytearray(count)
      self.files.read_into(self.entry, self.pos, memoryview(buffer))
      self._chunk, self._chunk_at, offset = bytes(buffer), self.pos, 0
    return self._chunk[offset:] if offset else self._chunk

  def take(self, count: int) -> bytes:
    """The next ``count`` bytes, which must lie inside the entry."""
    if count > self.entry.size - self.pos:
      raise _Malformed(f"{count} bytes at offset {self.pos} run past the end ({self.entry.size})")
    offset = self.pos - self._chunk_at
    if offset >= 0 and offset + count <= len(self._chunk):
      data = self._chunk[offset:offset + count]
    else:
      buffer = bytearray(count)
      self.files.read_into(self.entry, self.pos, memoryview(buffer))
      data = bytes(buffer)
    self.pos += count
    return data


def _decode_varints(data: bytes, count: int, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Up to ``count`` varint64s that lie wholly in ``data``: their values, and the offset after
  each (so the bytes used by the first k are ``after[k - 1]``)."""
  raw = np.frombuffer(data, np.uint8)
  ends = np.flatnonzero(raw < 0x80)[:count]
  if not ends.size:
    if raw.size >= 10:
      raise _Malformed(f"{what}: a varint longer than 10 bytes")
    return np.zeros(0, np.uint64), ends
  if int(ends[-1]) == ends.size - 1:  # all one byte long (lengths below 128): the bytes
    return raw[:ends.size].astype(np.uint64), ends + 1
  starts = np.empty_like(ends)
  starts[0] = 0
  starts[1:] = ends[:-1] + 1
  widths = ends - starts + 1
  if int(widths.max()) > 10:
    raise _Malformed(f"{what}: a varint longer than 10 bytes")
  values = np.zeros(ends.size, np.uint64)
  for k in range(int(widths.max())):
    digits = raw[np.minimum(starts + k, ends)].astype(np.uint64) & np.uint64(0x7F)
    digits *= widths > k
    if k == 9 and int(digits.max()) > 1:
      raise _Malformed(f"{what}: a varint overflows 64 bits")
    values |= digits << np.uint64(7 * k)
  return values, ends + 1


def _packed_lengths(lengths: np.ndarray) -> bytes:
  """The lengths as TensorFlow checksums them: 4 bytes each, 8 for one beyond 32 bits."""
  if not lengths.size or int(lengths.max()) <= _U32:
    return lengths.astype("<u4").tobytes()
  rows = lengths.astype("<u8").view(np.uint8).reshape(-1, 8)
  widths = np.where(lengths > _U32, 8, 4)
  return rows[np.arange(8) < widths[:, None]].tobytes()


def _sum(values: np.ndarray, largest: int) -> int:
  """The exact sum of uint64 values whose maximum is ``largest`` (no wrap-around)."""
  if largest <= _U32 and values.size < 1 << 32:
    return int(values.sum())
  return (int(np.sum(values >> np.uint64(32))) << 32) + int(np.sum(values & np.uint64(_U32)))


def _iter_strings(files, entry, batch):
  """[varint64 length]*n, [4-byte masked crc of the lengths], [string bytes]."""
  n, size = entry.num_elements, entry.size
  # Pass 1: the length table (its end is where the strings start), its checksum and the total,
  # each length checked against the bytes that exist before anything is summed or read.
  cursor = _Cursor(files, entry)
  crc, total, left = 0, 0, n
  while left:
    lengths, after = _decode_varints(cursor.peek(), left, "string lengths")
    if not lengths.size:
      raise _Malformed(f"string lengths: {left} of {n} run past the end at {cursor.pos}")
    largest = int(lengths.max())
    if largest > size:
      raise _Malformed(f"string length {largest} exceeds the tensor's {size} bytes")
    total += _sum(lengths, largest)
    if total > size:
      raise _Malformed(f"string lengths add up to more than the tensor's {size} bytes")
    crc = crc32c(_packed_lengths(lengths), crc)
    cursor.take(int(after[-1]))
    left -= lengths.size
  table_end = cursor.pos
  if table_end + 4 + total != size:
    raise _Malformed(f"string lengths add up to {table_end + 4 + total} bytes, the tensor has "
                     f"{size}")
  stored = cursor.take(4)
  if struct.unpack("<I", stored)[0] != mask_crc32c(crc):
    raise _Malformed("checksum of the string lengths does not match")
  crc = crc32c(stored, crc)
  # Pass 2: the lengths again, a batch at a time, each with its strings.
  lengths_cursor, strings = _Cursor(files, entry), _Cursor(files, entry, table_end + 4)
  left = n
  while left:
    lengths, after = _decode_varints(lengths_cursor.peek(), min(left, batch), "string lengths")
    ends = np.cumsum(lengths, dtype=np.uint64)  # no wrap: the total fits, checked above
    # No more than a read chunk of strings at once (but at least one string).
    count = max(1, int(np.searchsorted(ends, np.uint64(READ_CHUNK), side="right")))
    lengths_cursor.take(int(after[count - 1]))
    data = strings.take(int(ends[count - 1]))
    crc = crc32c(data, crc)
    starts = [0, *ends[:count - 1].tolist()]
    yield [data[start:end] for start, end in zip(starts, ends[:count].tolist())]
    left -= count
  if mask_crc32c(crc) != entry.crc32c:
    raise _Malformed(f"checksum mismatch (stored masked crc32c 0x{entry.crc32c:08x}, computed "
                     f"0x{mask_crc32c(crc):08x}); the checkpoint is corrupt")


def _iter_variants(files, entry, batch):
  """([varint64 length] [serialized VariantTensorData] [4-byte checksum])*n."""
  cursor = _Cursor(files, entry)
  crc, left, out = 0, entry.num_elements, []
  while left:
    head = cursor.peek()[:10]
    length, used = _varint64(head, 0, len(head), "variant lengths")
    cursor.take(used)
    if length + 4 > entry.size - cursor.pos:
      raise _Malformed(f"variant element of {length} bytes at offset {cursor.pos} runs past "
                       f"the end ({entry.size})")
    element = cursor.take(length + 4)
    crc = crc32c(element, crc32c(struct.pack("<Q", length), crc))
    out.append(element[:length])
    left -= 1
    if len(out) == batch or not left:
      yield out
      out = []
  if cursor.pos != entry.size:
    raise _Malformed(f"{entry.size - cursor.pos} trailing bytes after the variant elements")
  if mask_crc32c(crc) != entry.crc32c:
    raise _Malformed(f"checksum mismatch (stored masked crc32c 0x{entry.crc32c:08x}, computed "
                     f"0x{mask_crc32c(crc):08x}); the checkpoint is corrupt")


def tensor_crc32c(entry: BundleEntry, data: bytes, *, path: str = "") -> int:
  """The checksum TensorFlow stores in ``entry.crc32c`` for the tensor bytes ``data``.

  For fixed-size dtypes this is ``masked_crc32c(data)``.  DT_STRING and
  DT_VARIANT tensors are checksummed over a different byte sequence (element
  lengths as fixed-width integers instead of the stored varints); their
  stored layout is validated on the way (BundleError if malformed).
  """
  if _dtypes.BY_ENUM[entry.tf_dtype].size:
    return masked_crc32c(data)
  what = f"{path + ': ' if path else ''}tensor {_show(entry.name)}"
  n = entry.num_elements
  end = len(data)
  pos = 0
  try:
    if entry.tf_dtype == _STRING:
      # [varint64 len]*n [4-byte masked crc of the lengths] [string bytes]
      packed = bytearray()
      total = 0
      for _ in range(n):
        length, pos = _varint64(data, pos, end, "string lengths")
        total += length
        packed += struct.pack("<I" if length <= _U32 else "<Q", length)
      if pos + 4 + total != end:
        raise _Malformed(
            f"string lengths add up to {pos + 4 + total} bytes, the tensor has {end}")
      crc = crc32c(packed)
      (stored,) = struct.unpack_from("<I", data, pos)
      if stored != mask_crc32c(crc):
        raise _Malformed("checksum of the string lengths does not match")
      return mask_crc32c(crc32c(memoryview(data)[pos:], crc))
    if entry.tf_dtype == _VARIANT:
      # ([varint64 len] [serialized VariantTensorData] [4-byte checksum])*n
      crc = 0
      for _ in range(n):
        length, pos = _varint64(data, pos, end, "variant lengths")
        if pos + length + 4 > end:
          raise _Malformed(
              f"variant element of {length} bytes at offset {pos} runs past the end")
        crc = crc32c(struct.pack("<Q", length), crc)
        crc = crc32c(memoryview(data)[pos:pos + length + 4], crc)
        pos += length + 4
      if pos != end:
        raise _Malformed(f"{end - pos} trailing bytes after the variant elements")
      return mask_crc32c(crc)
  except _Malformed as e:
    raise BundleError(f"{what}: malformed {_dtype_name(entry.tf_dtype)} data: {e}") from None
  raise BundleError(f"{what}: no checksum convention for dtype {_dtype_name(entry.tf_dtype)}")

"""Pure-Python, defensive reader for TensorFlow V2 checkpoints ("tensor bundles").

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

1. Comparing checkpoints tensor by tensor is fast and memory-bounded when the
   raw byte ranges are read straight from the data files (and compared or
   checksummed) instead of materialising every tensor through TensorFlow's
   reader.
2. TensorFlow's C++ reader may abort the whole process on crafted or corrupt
   files.  Files are validated here first.  This parser never trusts a size or
   offset before checking it against the real file, does work linear in the
   file size, never loops without progress, and reports every malformation as
   :class:`BundleError` naming the file and the offending offset or value.

Typical use: ``index = read_index(prefix)`` (validates the index),
``check_data_files(index)`` (every byte range lies inside an existing shard),
then ``read_tensor_bytes(index, entry)`` per tensor, ``verify_crc=True`` to
also check its stored checksum.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import stat as _stat
import struct
import sys

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import tensor_bundle_pb2

from warmstart._errors import CheckpointReadError

__all__ = [
  "BundleEntry",
  "BundleError",
  "BundleIndex",
  "check_data_files",
  "masked_crc32c",
  "read_index",
  "read_tensor_bytes",
  "tensor_crc32c",
]


class BundleError(CheckpointReadError):
  """A checkpoint (tensor bundle) file is missing, unreadable or malformed."""


# --------------------------------------------------------------------------
# CRC32C (Castagnoli), as used by LevelDB/TensorFlow, with TF's masking.
# --------------------------------------------------------------------------

_POLY = 0x82F63B78  # reflected Castagnoli polynomial
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def _make_byte_table() -> list[int]:
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ _POLY if c & 1 else c >> 1
    table.append(c)
  return table


_T0 = _make_byte_table()
# Slicing-by-4 tables: _TK[k][b] = CRC register effect of byte b followed by
# k zero bytes.
_TK = [np.array(_T0, dtype=np.uint32)]
for _k in range(1, 4):
  _prev = _TK[-1]
  _TK.append((_prev >> np.uint32(8)) ^ _TK[0][_prev & np.uint32(0xFF)])
del _k, _prev
# Two 64K-entry tables consume four bytes with two lookups:
# after "crc ^= word", crc' = _T_LO16[crc & 0xffff] ^ _T_HI16[crc >> 16].
_T_LO16 = (_TK[2][:, None] ^ _TK[3][None, :]).ravel()  # index b0 | b1 << 8
_T_HI16 = (_TK[0][:, None] ^ _TK[1][None, :]).ravel()  # index b2 | b3 << 8
_LITTLE_HOST = sys.byteorder == "little"

# Below this many bytes a plain Python loop beats numpy's per-call overhead.
_SMALL_CRC = 512
# Largest piece handled by one set of lanes (bounds temporary memory).
_CRC_CHUNK = 1 << 22
# Lane results are merged in groups of this many.
_GROUP_LOG2 = 6
_GROUP = 1 << _GROUP_LOG2
_GROUP_BASE = ((np.arange(_GROUP)[:, None] * 4 + np.arange(4)[None, :]) * 256).astype(np.intp)


def _crc_raw_py(state: int, data) -> int:
  table = _T0
  for b in bytes(data):
    state = table[(state ^ b) & 0xFF] ^ (state >> 8)
  return state


@functools.cache
def _zeros_op_pow2(k: int) -> tuple[int, ...]:
  """Columns of the GF(2)-linear map "feed 2**k zero bytes" on the CRC register."""
  if k == 0:
    return tuple(_T0[(1 << i) & 0xFF] ^ ((1 << i) >> 8) for i in range(32))
  half = _zeros_op_pow2(k - 1)
  twice = []
  for col in half:
    r = 0
    i = 0
    while col:
      if col & 1:
        r ^= half[i]
      col >>= 1
      i += 1
    twice.append(r)
  return tuple(twice)


def _byte_tables(cols: np.ndarray) -> np.ndarray:
  """Byte lookup tables of linear maps given by their columns.

  ``cols[..., k, i]`` is the image of bit ``i`` of byte ``k``; the result
  ``[..., k, b]`` is the image of byte value ``b`` in byte position ``k``.
  """
  tables = np.zeros((*cols.shape[:-1], 256), dtype=np.uint32)
  for i in range(8):
    tables[..., 1 << i:2 << i] = tables[..., :1 << i] ^ cols[..., i:i + 1]
  return tables


@functools.cache
def _group_tables(span_log2: int) -> np.ndarray:
  """Lookup tables merging ``_GROUP`` consecutive lane results.

  Lane ``j`` of a group (each lane ``2**span_log2`` bytes long) is followed by
  ``_GROUP - 1 - j`` further lanes, so its raw CRC must be advanced over that
  many lanes of zeros: the merged value is the XOR over ``j`` and its bytes
  ``k`` of ``table[j, k, byte_k(lane_j)]`` (flattened).
  """
  step = _byte_tables(np.array(_zeros_op_pow2(span_log2), dtype=np.uint32).reshape(4, 8))
  cols = [np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))]  # identity
  for _ in range(_GROUP - 1):
    c = cols[-1]
    cols.append(step[0][c & 0xFF] ^ step[1][(c >> 8) & 0xFF]
                ^ step[2][(c >> 16) & 0xFF] ^ step[3][c >> 24])
  powers = np.stack(cols[::-1])  # row j: advance over _GROUP - 1 - j lanes
  return _byte_tables(powers.reshape(_GROUP, 4, 8)).reshape(-1)


def _crc_raw_lanes(data: memoryview, state: int) -> int:
  """The raw CRC register after feeding ``data`` (>= 4 bytes) to ``state``.

  The input is cut into equal lanes of ``2**lane_log2`` bytes, all run in
  parallel with numpy (slicing-by-4 with two 64K-entry tables), and the lane
  results are merged with precomputed "advance over zeros" tables.  This
  uses that the CRC register is GF(2)-linear in (state, data): leading zero
  bytes do not change a register of 0 (so the front is zero padded), and a
  start state can be XORed into the first four data bytes instead.
  """
  size = data.nbytes
  lane_log2 = min(8, max(4, (size >> 13).bit_length()))
  lane_bytes = 1 << lane_log2
  lanes = -(-size // lane_bytes)
  pad = lanes * lane_bytes - size
  buf = np.empty(lanes * lane_bytes, dtype=np.uint8)
  buf[:pad] = 0
  buf[pad:] = np.frombuffer(data, dtype=np.uint8)
  buf[pad:pad + 4] ^= np.frombuffer(state.to_bytes(4, "little"), dtype=np.uint8)
  words = buf.view("<u4").reshape(lanes, lane_bytes // 4)
  words = np.ascontiguousarray(words.T, dtype=np.uint32)  # [word, lane]

  crc = np.zeros(lanes, dtype=np.uint32)
  halves = crc.view(np.uint16)
  lo, hi = (halves[0::2], halves[1::2]) if _LITTLE_HOST else (halves[1::2], halves[0::2])
  t_lo = np.empty(lanes, dtype=np.uint32)
  t_hi = np.empty(lanes, dtype=np.uint32)
  for row in words:
    np.bitwise_xor(crc, row, out=crc)
    np.take(_T_LO16, lo, out=t_lo)
    np.take(_T_HI16, hi, out=t_hi)
    np.bitwise_xor(t_lo, t_hi, out=crc)

  span_log2 = lane_log2
  while crc.size > 1:
    short = -crc.size % _GROUP
    if short:  # leading all-zero lanes contribute nothing
      crc = np.concatenate([np.zeros(short, dtype=np.uint32), crc])
    tables = _group_tables(span_log2)
    lane_bytes_le = crc.astype("<u4").view(np.uint8).reshape(-1, _GROUP, 4)
    merged = tables[_GROUP_BASE + lane_bytes_le]
    crc = np.bitwise_xor.reduce(merged.reshape(merged.shape[0], -1), axis=1)
    span_log2 += _GROUP_LOG2
  return int(crc[0])


def _crc32c(data, crc: int = 0) -> int:
  """Standard (unmasked) CRC32C of a bytes-like object, extending ``crc``."""
  view = memoryview(data)
  if not view.c_contiguous:
    raise ValueError("crc32c needs a contiguous buffer")
  if view.ndim != 1 or view.itemsize != 1 or view.format not in ("B", "b", "c"):
    view = view.cast("B")
  size = view.nbytes
  state = crc ^ _U32
  if size < _SMALL_CRC:
    return _crc_raw_py(state, view) ^ _U32
  for start in range(0, size, _CRC_CHUNK):
    piece = view[start:start + _CRC_CHUNK]
    state = _crc_raw_py(state, piece) if piece.nbytes < 4 else _crc_raw_lanes(piece, state)
  return state ^ _U32


def mask_crc32c(crc: int) -> int:
  """TF's masking of a crc32c as stored in checkpoints."""
  return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
  """TensorFlow's masked CRC32C of ``data`` (as stored in checkpoints).

  Accepts any C-contiguous bytes-like object (bytes, bytearray, memoryview,
  mmap, numpy array).  Large inputs are processed with numpy in bounded
  pieces, so memory use stays small whatever the input size.
  """
  return mask_crc32c(_crc32c(data))


# --------------------------------------------------------------------------
# Public data types.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BundleEntry:
  """One tensor (or one stored slice of a sliced tensor) of a bundle.

  ``dtype`` is the numpy dtype of the stored bytes (in the bundle's byte
  order), or None when the tensor has no fixed-size layout (DT_STRING,
  DT_VARIANT, DT_RESOURCE) or numpy has no such type.  ``tf_dtype`` is the
  ``DataType`` enum value.  ``shard_id``/``offset``/``size`` locate the
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
_MAX_SHARDS = 1 << 16
_MAX_KEY_EXPANSION = 64
_MAX_RANK = 254  # TensorShape::MaxDimensions()
_MAX_INT64 = (1 << 63) - 1
# TensorBundle format version (tensor_bundle.h).
_BUNDLE_VERSION = 1
_BUNDLE_MIN_PRODUCER = 0

_DT = types_pb2
# DataType -> element size in bytes, for types with a fixed-size layout.
_ITEMSIZE = {
    _DT.DT_FLOAT: 4, _DT.DT_DOUBLE: 8, _DT.DT_INT32: 4, _DT.DT_UINT8: 1,
    _DT.DT_INT16: 2, _DT.DT_INT8: 1, _DT.DT_COMPLEX64: 8, _DT.DT_INT64: 8,
    _DT.DT_BOOL: 1, _DT.DT_QINT8: 1, _DT.DT_QUINT8: 1, _DT.DT_QINT32: 4,
    _DT.DT_BFLOAT16: 2, _DT.DT_QINT16: 2, _DT.DT_QUINT16: 2, _DT.DT_UINT16: 2,
    _DT.DT_COMPLEX128: 16, _DT.DT_HALF: 2, _DT.DT_UINT32: 4, _DT.DT_UINT64: 8,
}
# DataType -> numpy type code (quantized types map to their storage type).
_NUMPY_CODE = {
    _DT.DT_FLOAT: "f4", _DT.DT_DOUBLE: "f8", _DT.DT_INT32: "i4",
    _DT.DT_UINT8: "u1", _DT.DT_INT16: "i2", _DT.DT_INT8: "i1",
    _DT.DT_COMPLEX64: "c8", _DT.DT_INT64: "i8", _DT.DT_BOOL: "b1",
    _DT.DT_QINT8: "i1", _DT.DT_QUINT8: "u1", _DT.DT_QINT32: "i4",
    _DT.DT_QINT16: "i2", _DT.DT_QUINT16: "u2", _DT.DT_UINT16: "u2",
    _DT.DT_COMPLEX128: "c16", _DT.DT_HALF: "f2", _DT.DT_UINT32: "u4",
    _DT.DT_UINT64: "u8",
}
# Types numpy only knows through ml_dtypes (a TensorFlow dependency).
_ML_DTYPES = {}
for _name, _attr, _size in (("DT_BFLOAT16", "bfloat16", 2),
                            ("DT_FLOAT8_E5M2", "float8_e5m2", 1),
                            ("DT_FLOAT8_E4M3FN", "float8_e4m3fn", 1),
                            ("DT_INT4", "int4", 1),
                            ("DT_UINT4", "uint4", 1)):
  if _name in _DT.DataType.DESCRIPTOR.values_by_name:
    _value = _DT.DataType.Value(_name)
    _ITEMSIZE[_value] = _size
    _ML_DTYPES[_value] = _attr
del _name, _attr, _size
_KNOWN_DTYPES = frozenset(v for v in _DT.DataType.values() if 0 < v < 100)


@functools.cache
def _numpy_dtype(tf_dtype: int, little_endian: bool) -> np.dtype | None:
  code = _NUMPY_CODE.get(tf_dtype)
  if code is not None:
    dtype = np.dtype(code)
    return dtype.newbyteorder("<" if little_endian else ">") if dtype.itemsize > 1 else dtype
  attr = _ML_DTYPES.get(tf_dtype)
  if attr is None or (not little_endian and _ITEMSIZE[tf_dtype] > 1):
    return None
  try:
    import ml_dtypes  # pylint: disable=import-outside-toplevel
    return np.dtype(getattr(ml_dtypes, attr))
  except (ImportError, AttributeError, TypeError):
    return None


def _dtype_name(tf_dtype: int) -> str:
  try:
    return _DT.DataType.Name(tf_dtype)
  except ValueError:
    return str(tf_dtype)


# --------------------------------------------------------------------------
# Low-level decoding (all bounds-checked; errors are ValueError internally).
# --------------------------------------------------------------------------


class _Malformed(ValueError):
  """Internal: a structural error at a known position."""


def _show(key) -> str:
  """A key or name for an error message (shortened if long)."""
  text = repr(key)
  return text if len(text) <= 120 else text[:100] + f"... ({len(key)} bytes)"


def _varint(buf: bytes, pos: int, end: int, bits: int, what: str) -> tuple[int, int]:
  """Decodes a LevelDB varint of at most ``bits`` bits starting at ``pos``."""
  start = pos
  result = 0
  shift = 0
  while True:
    if pos >= end:
      raise _Malformed(f"{what}: varint at offset {start} runs past the end ({end})")
    byte = buf[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    if byte < 0x80:
      break
    shift += 7
    if shift >= bits:
      raise _Malformed(f"{what}: varint at offset {start} is too long")
  if result >> bits:
    raise _Malformed(f"{what}: varint at offset {start} overflows {bits} bits")
  return result, pos


def _varint32(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
  return _varint(buf, pos, end, 32, what)


def _varint64(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
  return _varint(buf, pos, end, 64, what)


def _block_handle(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int, int]:
  offset, pos = _varint64(buf, pos, end, what)
  size, pos = _varint64(buf, pos, end, what)
  return offset, size, pos


def _read_block(data: bytes, offset: int, size: int, limit: int, what: str) -> bytes:
  """Returns the verified contents of the block at ``offset``/``size``."""
  if offset + size + _TRAILER_SIZE > limit:
    raise _Malformed(
        f"{what} (offset {offset}, size {size}) plus its {_TRAILER_SIZE}-byte trailer "
        f"extends past the end of the table data at offset {limit}")
  end = offset + size
  (stored,) = struct.unpack_from("<I", data, end + 1)
  actual = masked_crc32c(memoryview(data)[offset:end + 1])
  if actual != stored:
    raise _Malformed(
        f"{what} at offset {offset}: checksum mismatch (stored masked crc32c "
        f"0x{stored:08x}, computed 0x{actual:08x})")
  kind = data[end]
  if kind == _SNAPPY_COMPRESSION:
    raise _Malformed(f"{what} at offset {offset}: compressed index blocks are not supported")
  if kind != _NO_COMPRESSION:
    raise _Malformed(f"{what} at offset {offset}: unknown block compression type {kind}")
  return data[offset:end]


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
    st = os.stat(path)
  except FileNotFoundError as e:
    raise BundleError(f"{path}: {missing}") from e
  except OSError as e:
    raise BundleError(f"{path}: cannot access: {e}") from e
  if not _stat.S_ISREG(st.st_mode):
    raise BundleError(f"{path}: not a regular file")
  try:
    return open(path, "rb")  # pylint: disable=consider-using-with
  except OSError as e:
    raise BundleError(f"{path}: cannot open: {e}") from e


def _read_file(path: str, limit: int) -> bytes:
  with _open_regular(path, "file not found") as f:
    try:
      size = os.fstat(f.fileno()).st_size
      if size > limit:
        raise BundleError(
            f"{path}: file is {size} bytes, larger than the {limit}-byte limit")
      data = f.read(limit + 1)
    except OSError as e:
      raise BundleError(f"{path}: cannot read: {e}") from e
  if len(data) > limit:
    raise BundleError(f"{path}: file is larger than the {limit}-byte limit")
  return data


def read_index(prefix: str | os.PathLike) -> BundleIndex:
  """Reads and validates ``PREFIX.index``; raises BundleError if malformed."""
  prefix = os.fspath(prefix)
  if not isinstance(prefix, str):
    prefix = os.fsdecode(prefix)
  path = prefix + ".index"
  data = _read_file(path, _MAX_INDEX_BYTES)
  try:
    return _parse_index(prefix, data)
  except _Malformed as e:
    raise BundleError(f"{path}: {e}") from None


def _parse_index(prefix: str, data: bytes) -> BundleIndex:
  size = len(data)
  if size < _FOOTER_SIZE:
    raise _Malformed(
        f"file is {size} bytes, too short for the {_FOOTER_SIZE}-byte table footer")
  footer_at = size - _FOOTER_SIZE
  (magic,) = struct.unpack_from("<Q", data, size - 8)
  if magic != _TABLE_MAGIC:
    raise _Malformed(
        f"bad table magic number 0x{magic:016x} at offset {size - 8} "
        f"(expected 0x{_TABLE_MAGIC:016x}); not a TensorFlow V2 checkpoint index")
  footer = data[footer_at:footer_at + _HANDLES_SIZE]
  meta_offset, meta_size, pos = _block_handle(footer, 0, _HANDLES_SIZE, "footer")
  index_offset, index_size, pos = _block_handle(footer, pos, _HANDLES_SIZE, "footer")

  meta = _read_block(data, meta_offset, meta_size, footer_at, "metaindex block")
  _block_entries(meta, f"metaindex block at offset {meta_offset}")
  index_block = _read_block(data, index_offset, index_size, footer_at, "index block")
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
    block = _read_block(data, offset, bsize, footer_at, "data block")
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
  header = tensor_bundle_pb2.BundleHeaderProto()
  _parse_proto(header, records[0][1], "bundle header")
  num_shards = header.num_shards
  if not 1 <= num_shards <= _MAX_SHARDS:
    raise _Malformed(f"bundle header: bad number of shards {num_shards}")
  if header.endianness not in (header.LITTLE, header.BIG):
    raise _Malformed(f"bundle header: unknown endianness value {header.endianness}")
  little = header.endianness == header.LITTLE
  version = header.version
  if version.producer < _BUNDLE_MIN_PRODUCER:
    raise _Malformed(f"bundle header: producer version {version.producer} is too old")
  if version.min_consumer > _BUNDLE_VERSION:
    raise _Malformed(
        f"bundle header: needs reader version {version.min_consumer}, "
        f"this reader implements version {_BUNDLE_VERSION}")
  if _BUNDLE_VERSION in version.bad_consumers:
    raise _Malformed(
        f"bundle header: reader version {_BUNDLE_VERSION} is marked bad for this file")

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
                     version=version.producer, entries=entries, slices=slices)


def _parse_proto(msg, value: bytes, what: str) -> None:
  try:
    msg.ParseFromString(value)
  except Exception as e:  # pylint: disable=broad-except  # any failure means undecodable
    raise _Malformed(f"{what}: cannot decode protocol buffer: {e}") from None


def _parse_entry(name: str, key: bytes, value: bytes, num_shards: int, little: bool):
  """Parses and checks one BundleEntryProto stored under ``key``.

  Returns the entry and, for a sliced tensor, its slices as
  EncodeTensorNameSlice encodes them (``(start, length)`` per dimension,
  length -1 for a full extent), else None.
  """
  what = f"entry {_show(key)}"
  proto = tensor_bundle_pb2.BundleEntryProto()
  _parse_proto(proto, value, what)
  tf_dtype = proto.dtype
  if tf_dtype not in _KNOWN_DTYPES:
    raise _Malformed(f"{what}: bad dtype {_dtype_name(tf_dtype)}")
  if proto.shape.unknown_rank:
    raise _Malformed(f"{what}: shape has unknown rank")
  if len(proto.shape.dim) > _MAX_RANK:
    raise _Malformed(f"{what}: rank {len(proto.shape.dim)} exceeds {_MAX_RANK}")
  shape = tuple(d.size for d in proto.shape.dim)
  num_elements = 1
  for d in shape:
    if d < 0:
      raise _Malformed(f"{what}: bad dimension {d} in shape {list(shape)}")
    num_elements *= d
    if num_elements > _MAX_INT64:
      raise _Malformed(f"{what}: shape {list(shape)} has too many elements")
  shard_id, offset, size = proto.shard_id, proto.offset, proto.size
  if not 0 <= shard_id < num_shards:
    raise _Malformed(f"{what}: shard id {shard_id} not in [0, {num_shards})")
  if offset < 0 or size < 0 or offset + size > _MAX_INT64:
    raise _Malformed(f"{what}: bad byte range offset {offset}, size {size}")
  listed = None
  if proto.slices:
    listed = []
    for s in proto.slices:
      if len(s.extent) != len(shape):
        raise _Malformed(
            f"{what}: slice with {len(s.extent)} extents for a rank {len(shape)} tensor")
      extent = []
      for e, dim in zip(s.extent, shape):
        length = e.length if e.HasField("length") else -1
        if (length == -1 and e.start != 0) or length < -1 or e.start < 0 or (
                e.start + max(length, 0) > dim):
          raise _Malformed(
              f"{what}: slice extent (start {e.start}, length {length}) "
              f"does not fit dimension {dim}")
        extent.append((e.start, length))
      listed.append(tuple(extent))
  elif tf_dtype in _ITEMSIZE:
    expected = _ITEMSIZE[tf_dtype] * num_elements
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
                      size=size, crc32c=proto.crc32c, sliced=listed is not None)
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


def tensor_crc32c(entry: BundleEntry, data: bytes, *, path: str = "") -> int:
  """The checksum TensorFlow stores in ``entry.crc32c`` for the tensor bytes ``data``.

  For fixed-size dtypes this is ``masked_crc32c(data)``.  DT_STRING and
  DT_VARIANT tensors are checksummed over a different byte sequence (element
  lengths as fixed-width integers instead of the stored varints); their
  stored layout is validated on the way (BundleError if malformed).
  """
  if entry.tf_dtype in _ITEMSIZE:
    return masked_crc32c(data)
  what = f"{path + ': ' if path else ''}tensor {_show(entry.name)}"
  n = entry.num_elements
  end = len(data)
  pos = 0
  try:
    if entry.tf_dtype == _DT.DT_STRING:
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
      crc = _crc32c(packed)
      (stored,) = struct.unpack_from("<I", data, pos)
      if stored != mask_crc32c(crc):
        raise _Malformed("checksum of the string lengths does not match")
      return mask_crc32c(_crc32c(memoryview(data)[pos:], crc))
    if entry.tf_dtype == _DT.DT_VARIANT:
      # ([varint64 len] [serialized VariantTensorData] [4-byte checksum])*n
      crc = 0
      for _ in range(n):
        length, pos = _varint64(data, pos, end, "variant lengths")
        if pos + length + 4 > end:
          raise _Malformed(
              f"variant element of {length} bytes at offset {pos} runs past the end")
        crc = _crc32c(struct.pack("<Q", length), crc)
        crc = _crc32c(memoryview(data)[pos:pos + length + 4], crc)
        pos += length + 4
      if pos != end:
        raise _Malformed(f"{end - pos} trailing bytes after the variant elements")
      return mask_crc32c(crc)
  except _Malformed as e:
    raise BundleError(f"{what}: malformed {_dtype_name(entry.tf_dtype)} data: {e}") from None
  raise BundleError(f"{what}: no checksum convention for dtype {_dtype_name(entry.tf_dtype)}")

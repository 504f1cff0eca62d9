"""Tests for warmstart._bundle against checkpoints written by real TensorFlow."""

import os
import random
import shutil
import signal
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import versions_pb2
from tensorflow.core.protobuf import tensor_bundle_pb2

from warmstart import _bundle as bundle

MAGIC = 0xDB4775248B80FB57


# --------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------


@pytest.fixture
def no_hang():
  """Fails the test (instead of hanging the run) if it takes too long."""
  if not hasattr(signal, "SIGALRM"):
    yield
    return

  def on_alarm(signum, frame):
    raise TimeoutError("test took too long: parser hang?")

  old = signal.signal(signal.SIGALRM, on_alarm)
  signal.alarm(60)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _graph_save(prefix, build, sharded=False, num_cpus=1):
  """Builds variables with ``build()`` in a fresh graph and saves them with a Saver."""
  os.makedirs(os.path.dirname(prefix), exist_ok=True)
  with tf.Graph().as_default():
    build()
    saver = tf.compat.v1.train.Saver(sharded=sharded)
    config = tf.compat.v1.ConfigProto(device_count={"CPU": num_cpus})
    with tf.compat.v1.Session(config=config) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      return saver.save(sess, prefix, write_meta_graph=False)


def _check_against_tf(prefix, expect_sliced=None):
  """read_index + read_tensor_bytes agree with TensorFlow's own reader."""
  index = bundle.read_index(prefix)
  bundle.check_data_files(index)
  _assert_consistent(index)
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  dtypes = reader.get_variable_to_dtype_map()
  assert set(index.entries) == set(shapes) == set(dtypes)
  compared = 0
  for name, entry in index.entries.items():
    assert entry.name == name
    assert list(entry.shape) == shapes[name], name
    assert entry.tf_dtype == dtypes[name].as_datatype_enum, name
    if entry.dtype is not None:
      assert entry.dtype.itemsize == dtypes[name].size
    if expect_sliced is not None:
      assert entry.sliced == (name in expect_sliced), name
    if entry.dtype is None:  # string/variant: checksum convention only
      assert entry.tf_dtype in (tf.string.as_datatype_enum, tf.variant.as_datatype_enum)
      data = bundle.read_tensor_bytes(index, entry, verify_crc=True)
      assert bundle.tensor_crc32c(entry, data) == entry.crc32c
      continue
    expected = reader.get_tensor(name)
    if entry.sliced:
      full = np.zeros(entry.shape, dtype=entry.dtype)
      covered = 0
      for part in index.slices[name]:
        data = bundle.read_tensor_bytes(index, part)
        assert bundle.masked_crc32c(data) == part.crc32c
        region = tuple(slice(s, s + n) for s, n in part.extent)
        full[region] = np.frombuffer(data, part.dtype).reshape(part.shape)
        covered += part.num_elements
      assert covered == entry.num_elements
      actual = full
    else:
      data = bundle.read_tensor_bytes(index, entry)
      assert len(data) == entry.size
      assert bundle.masked_crc32c(data) == entry.crc32c, name
      assert bundle.read_tensor_bytes(index, entry, verify_crc=True) == data
      actual = np.frombuffer(data, entry.dtype).reshape(entry.shape)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, name
    assert actual.dtype == expected.dtype, name
    assert actual.tobytes() == expected.tobytes(), name
    compared += 1
  return index, compared


def _assert_consistent(index):
  """Invariants every successfully parsed index must satisfy."""
  assert isinstance(index, bundle.BundleIndex)
  assert index.num_shards >= 1
  for entry in list(index.entries.values()) + [p for ps in index.slices.values() for p in ps]:
    assert isinstance(entry.name, str)
    assert all(isinstance(d, int) and d >= 0 for d in entry.shape)
    assert 0 <= entry.shard_id < index.num_shards
    assert entry.offset >= 0 and entry.size >= 0
    assert 0 <= entry.crc32c < 2 ** 32
    index.data_path(entry.shard_id)
    if entry.sliced:
      assert entry.name in index.slices and entry.extent is None
      for part in index.slices[entry.name]:
        assert part.tf_dtype == entry.tf_dtype and not part.sliced
        assert len(part.extent) == len(entry.shape)
        for (start, length), dim, n in zip(part.extent, entry.shape, part.shape):
          assert start >= 0 and start + length <= dim and n == length
    elif entry.dtype is not None:
      assert entry.size == entry.dtype.itemsize * entry.num_elements
    else:
      assert entry.size >= entry.num_elements
  assert set(index.slices) == {n for n, e in index.entries.items() if e.sliced}


def _exercise(prefix):
  """Parses ``prefix`` fully; returns the index, or None after a BundleError."""
  try:
    index = bundle.read_index(prefix)
  except bundle.BundleError as e:
    assert str(e)
    return None
  _assert_consistent(index)
  try:
    bundle.check_data_files(index)
  except bundle.BundleError:
    pass
  for entry in index.stored_entries():
    try:
      assert len(bundle.read_tensor_bytes(index, entry)) == entry.size
    except bundle.BundleError:
      pass
  return index


def _uvarint(n):
  out = bytearray()
  while n >= 0x80:
    out.append(n & 0x7F | 0x80)
    n >>= 7
  out.append(n)
  return bytes(out)


def _block_handles(data):
  """(offset, size) of every block of an index file, decoded independently."""

  def varint(buf, pos):
    result = shift = 0
    while True:
      byte = buf[pos]
      pos += 1
      result |= (byte & 0x7F) << shift
      shift += 7
      if byte < 0x80:
        return result, pos

  footer = data[-48:]
  assert struct.unpack("<Q", footer[40:])[0] == MAGIC
  pos = 0
  handles = []
  for _ in range(2):
    offset, pos = varint(footer, pos)
    size, pos = varint(footer, pos)
    handles.append((offset, size))
  index_block = bundle._block_entries(data[handles[1][0]:handles[1][0] + handles[1][1]], "t")
  for _, value in index_block:
    offset, p = varint(value, 0)
    size, _ = varint(value, p)
    handles.append((offset, size))
  return handles


def _refresh_crcs(data, handles):
  """Recomputes every block trailer's checksum (after editing block contents)."""
  data = bytearray(data)
  for offset, size in handles:
    crc = bundle.masked_crc32c(bytes(data[offset:offset + size + 1]))
    data[offset + size + 1:offset + size + 5] = struct.pack("<I", crc)
  return bytes(data)


def _make_block(entries, restart_interval=16):
  out = bytearray()
  restarts = [0]
  prev = b""
  for i, (key, value) in enumerate(entries):
    shared = 0
    if i % restart_interval:
      while shared < min(len(prev), len(key)) and prev[shared] == key[shared]:
        shared += 1
    elif i:
      restarts.append(len(out))
    out += _uvarint(shared) + _uvarint(len(key) - shared) + _uvarint(len(value))
    out += key[shared:] + value
    prev = key
  for r in restarts:
    out += struct.pack("<I", r)
  return bytes(out + struct.pack("<I", len(restarts)))


def _make_table(records, block_type=0):
  """A minimal table file in TensorFlow's format (one data block)."""
  out = bytearray()

  def add(contents):
    handle = (len(out), len(contents))
    body = contents + bytes([block_type])
    out.extend(body + struct.pack("<I", bundle.masked_crc32c(body)))
    return handle

  data_handle = add(_make_block(records))
  meta_handle = add(_make_block([]))
  last_key = records[-1][0] if records else b""
  handle_value = _uvarint(data_handle[0]) + _uvarint(data_handle[1])
  index_handle = add(_make_block([(last_key, handle_value)], 1))
  handles = b"".join(_uvarint(v) for v in meta_handle + index_handle)
  return bytes(out) + handles.ljust(40, b"\0") + struct.pack("<Q", MAGIC)


def _header(num_shards=1, **kwargs):
  return tensor_bundle_pb2.BundleHeaderProto(
      num_shards=num_shards, version=versions_pb2.VersionDef(producer=1), **kwargs)


def _float_entry(shape, offset=0, data=None, **kwargs):
  size = 4 * int(np.prod(shape, dtype=np.int64))
  fields = dict(dtype=tf.float32.as_datatype_enum, offset=offset, size=size)
  if data is not None:
    fields["crc32c"] = bundle.masked_crc32c(data)
  fields.update(kwargs)
  entry = tensor_bundle_pb2.BundleEntryProto(**fields)
  for d in shape:
    entry.shape.dim.add().size = d
  return entry


def _write_bundle(prefix, records, data=b"", num_shards=1, block_type=0):
  """Writes an index from (key, proto) records plus ``num_shards`` data files."""
  raw = [(k if isinstance(k, bytes) else k.encode(),
          v if isinstance(v, bytes) else v.SerializeToString()) for k, v in records]
  with open(prefix + ".index", "wb") as f:
    f.write(_make_table(raw, block_type))
  for shard in range(num_shards):
    with open(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}", "wb") as f:
      f.write(data)


# --------------------------------------------------------------------------
# Reading checkpoints written by TensorFlow.
# --------------------------------------------------------------------------


def test_graph_saver_checkpoint(tmp_path):
  def build():
    get = tf.compat.v1.get_variable
    get("f32", initializer=np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4))
    get("f64", initializer=np.array([np.pi, -0.0, np.inf, np.nan], np.float64))
    get("i32", initializer=np.arange(-5, 5, dtype=np.int32))
    get("i64", initializer=np.array([2 ** 40, -1, 0], np.int64))
    get("flags", initializer=np.array([True, False, True]))
    get("half", initializer=np.arange(7, dtype=np.float16))
    get("scalar_f", initializer=np.float32(3.25))
    get("scalar_i", initializer=np.int64(-7))
    get("empty", initializer=np.zeros((0, 5), np.float32))
    get("empty_i", initializer=np.zeros((3, 0, 2), np.int32))
    get("big", initializer=np.random.RandomState(0).randn(300, 256).astype(np.float32))
    get("part", shape=[200, 3], partitioner=tf.compat.v1.fixed_size_partitioner(2))
    get("words", initializer=tf.constant(["hello", "", "wörld" * 50]))
    get("no_words", initializer=tf.constant([], dtype=tf.string))
    tf.compat.v1.train.get_or_create_global_step()

  prefix = _graph_save(str(tmp_path / "ckpt" / "model"), build)
  index, compared = _check_against_tf(prefix, expect_sliced={"part"})
  assert index.num_shards == 1 and index.little_endian and index.version >= 1
  assert compared == 13
  big = index.entries["big"]
  assert big.size == 300 * 256 * 4 and big.dtype == np.dtype("<f4")
  assert index.entries["flags"].dtype == np.dtype(bool)
  assert index.entries["half"].dtype == np.dtype("<f2")
  assert index.entries["empty"].size == 0 and index.entries["empty"].shape == (0, 5)
  assert index.entries["words"].dtype is None
  assert [p.extent for p in index.slices["part"]] == [((0, 100), (0, 3)), ((100, 100), (0, 3))]
  assert list(index.entries) == sorted(index.entries)  # file order is key order
  with pytest.raises(ValueError):
    bundle.read_tensor_bytes(index, index.entries["part"])


def test_object_based_checkpoint(tmp_path):
  class Net(tf.Module):
    def __init__(self):
      super().__init__()
      self.kernel = tf.Variable(np.arange(20, dtype=np.float64).reshape(4, 5))
      self.bias = tf.Variable(np.zeros(5, np.float32))
      self.step = tf.Variable(np.int64(12))

  iterator = iter(tf.data.Dataset.range(10))
  next(iterator)
  # A tensor bigger than the checksum's 4 MiB processing piece.
  large = tf.Variable(np.random.RandomState(1).rand(1_300_001).astype(np.float32))
  ckpt = tf.train.Checkpoint(net=Net(), large=large, it=iterator,
                             names=tf.Variable(["a", "bb" * 40, ""]))
  prefix = ckpt.write(str(tmp_path / "obj" / "ckpt"))
  index, compared = _check_against_tf(prefix, expect_sliced=set())
  assert "_CHECKPOINTABLE_OBJECT_GRAPH" in index.entries
  assert index.entries["it/.ATTRIBUTES/ITERATOR_STATE"].tf_dtype == tf.variant.as_datatype_enum
  assert compared == 4


def test_sharded_saver_two_devices(tmp_path):
  def build():
    with tf.device("/cpu:0"):
      tf.compat.v1.get_variable("a", initializer=np.arange(6, dtype=np.float32))
      tf.compat.v1.get_variable("p", shape=[10, 3],
                                partitioner=tf.compat.v1.fixed_size_partitioner(2))
    with tf.device("/cpu:1"):
      tf.compat.v1.get_variable("c", initializer=np.arange(5, dtype=np.int64))
      tf.compat.v1.get_variable("q", shape=[10, 3],
                                partitioner=tf.compat.v1.fixed_size_partitioner(3))

  prefix = _graph_save(str(tmp_path / "sharded" / "model"), build, sharded=True, num_cpus=2)
  index, _ = _check_against_tf(prefix, expect_sliced={"p", "q"})
  assert index.num_shards == 2
  assert {e.shard_id for e in index.stored_entries()} == {0, 1}
  assert index.data_path(1) == prefix + ".data-00001-of-00002"
  with pytest.raises(ValueError):
    index.data_path(2)

  # A missing shard and a truncated shard are reported by name.
  shutil.copy(index.data_path(1), str(tmp_path / "keep"))
  os.remove(index.data_path(1))
  with pytest.raises(bundle.BundleError, match="data-00001-of-00002.*missing"):
    bundle.check_data_files(index)
  with pytest.raises(bundle.BundleError, match="missing"):
    bundle.read_tensor_bytes(index, index.entries["c"])
  bundle.read_tensor_bytes(index, index.entries["a"])  # shard 0 is fine

  shutil.copy(str(tmp_path / "keep"), index.data_path(1))
  last = max((e for e in index.stored_entries() if e.shard_id == 1), key=lambda e: e.offset)
  with open(index.data_path(1), "r+b") as f:
    f.truncate(last.offset + last.size - 1)
  with pytest.raises(bundle.BundleError, match=r"data-00001-of-00002: data file is \d+ bytes"):
    bundle.check_data_files(index)
  with pytest.raises(bundle.BundleError):
    bundle.read_tensor_bytes(index, last)
  bundle.read_tensor_bytes(index, index.entries["c"])  # still complete

  # Corrupted tensor bytes are caught by the checksum.
  entry = index.entries["c"]
  with open(index.data_path(1), "r+b") as f:
    f.seek(entry.offset)
    f.write(b"\xff")
  bundle.read_tensor_bytes(index, entry)
  with pytest.raises(bundle.BundleError, match="checksum mismatch"):
    bundle.read_tensor_bytes(index, entry, verify_crc=True)


def test_many_variables_multi_block_index(tmp_path):
  n = 2000
  names = [f"layer_{i:05d}/" + "long_variable_name_component/" * 8 + f"kernel_{i}"
           for i in range(n)]
  values = [np.full((i % 4, 2), i, np.float32) for i in range(n)]
  # Also a slice with a large start (multi-byte key encoding) and a full extent.
  names += ["huge", "huge"]
  values += [np.ones((10, 3), np.float32), np.zeros((2, 3), np.float32)]
  specs = [""] * n + ["10000000000 3 9999999990,10:-", "10000000000 3 0,2:-"]
  prefix = str(tmp_path / "many" / "ckpt")
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=specs,
                    tensors=[tf.constant(v) for v in values])
  with open(prefix + ".index", "rb") as f:
    data_blocks = len(_block_handles(f.read())) - 2
  assert data_blocks >= 3

  index = bundle.read_index(prefix)
  bundle.check_data_files(index)
  _assert_consistent(index)
  reader = tf.train.load_checkpoint(prefix)
  assert set(index.entries) == set(reader.get_variable_to_shape_map())
  for name, value in zip(names[:n:97], values[:n:97]):
    data = bundle.read_tensor_bytes(index, index.entries[name], verify_crc=True)
    assert data == value.tobytes()
  assert index.entries["huge"].shape == (10000000000, 3)
  assert sorted(p.extent for p in index.slices["huge"]) == [
      ((0, 2), (0, 3)), ((9999999990, 10), (0, 3))]


# --------------------------------------------------------------------------
# Checksums.
# --------------------------------------------------------------------------


def _crc32c_bitwise(data):
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
  return crc ^ 0xFFFFFFFF


def test_masked_crc32c_known_values():
  assert bundle.crc32c(b"123456789") == 0xE3069283
  assert bundle.crc32c(b"") == 0
  assert bundle.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 test vector
  assert bundle.crc32c(b"\xff" * 32) == 0x62A8AB43
  crc = 0xE3069283
  masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  assert bundle.masked_crc32c(b"123456789") == masked


def test_crc32c_of_every_buffer_kind_and_extension():
  data = np.random.RandomState(7).randint(0, 256, 5000).astype(np.uint8).tobytes()
  for size in (0, 1, 3, 4, 5, 63, 64, 65, 1023, 4099, 5000):
    expected = _crc32c_bitwise(data[:size])
    assert bundle.crc32c(data[:size]) == expected, size
    assert bundle.crc32c(memoryview(data)[:size]) == expected, size
    assert bundle.crc32c(bytearray(data[:size])) == expected, size
  # Extending a checksum equals checksumming the concatenation.
  assert bundle.crc32c(data[3000:], bundle.crc32c(data[:3000])) == bundle.crc32c(data)
  # numpy arrays are accepted as bytes-like input.
  arr = np.frombuffer(data[:4000], np.float32)
  assert bundle.masked_crc32c(arr) == bundle.masked_crc32c(data[:4000])


# --------------------------------------------------------------------------
# Malformed input.
# --------------------------------------------------------------------------


@pytest.fixture
def small_ckpt(tmp_path):
  """A small real checkpoint: a few tensors, a sliced tensor and a string."""
  prefix = str(tmp_path / "small" / "ckpt")
  tf.raw_ops.SaveV2(
      prefix=prefix,
      tensor_names=["a", "b/c", "part", "part", "s"],
      shape_and_slices=["", "", "4 2 0,3:-", "4 2 3,1:-", ""],
      tensors=[tf.constant(np.arange(6, dtype=np.float32).reshape(2, 3)),
               tf.constant(np.int64(5)),
               tf.constant(np.ones((3, 2), np.float32)),
               tf.constant(np.zeros((1, 2), np.float32)),
               tf.constant(["x", "yz"])])
  _check_against_tf(prefix, expect_sliced={"part"})
  with open(prefix + ".index", "rb") as f:
    return prefix, f.read()


def _write_index(prefix, data):
  with open(prefix + ".index", "wb") as f:
    f.write(data)


def test_missing_empty_and_truncated_index(small_ckpt, no_hang):
  prefix, original = small_ckpt
  with pytest.raises(bundle.BundleError, match="not found"):
    bundle.read_index(prefix + "_nope")
  _write_index(prefix, b"")
  with pytest.raises(bundle.BundleError, match="too short"):
    bundle.read_index(prefix)
  for cut in range(len(original)):
    _write_index(prefix, original[:cut])
    with pytest.raises(bundle.BundleError):
      bundle.read_index(prefix)
  _write_index(prefix, original + b"\0")
  with pytest.raises(bundle.BundleError, match="magic"):
    bundle.read_index(prefix)
  os.remove(prefix + ".index")
  os.mkdir(prefix + ".index")
  with pytest.raises(bundle.BundleError, match="not a regular file"):
    bundle.read_index(prefix)
  if hasattr(os, "mkfifo"):  # opening a FIFO would block forever
    os.rmdir(prefix + ".index")
    os.mkfifo(prefix + ".index")
    with pytest.raises(bundle.BundleError, match="not a regular file"):
      bundle.read_index(prefix)


def test_wrong_magic(small_ckpt):
  prefix, original = small_ckpt
  _write_index(prefix, original[:-8] + struct.pack("<Q", MAGIC ^ 1))
  with pytest.raises(bundle.BundleError, match="magic") as info:
    bundle.read_index(prefix)
  assert prefix + ".index" in str(info.value)


def test_every_byte_flipped(small_ckpt, no_hang):
  prefix, original = small_ckpt
  parsed = 0
  for pos in range(len(original)):
    for mask in (0x01, 0x80, 0xFF):
      data = bytearray(original)
      data[pos] ^= mask
      _write_index(prefix, bytes(data))
      parsed += _exercise(prefix) is not None
  # Only the footer padding is free to change; checksums catch the rest.
  assert 0 < parsed < len(original)


def test_every_byte_flipped_with_valid_checksums(small_ckpt, no_hang):
  """Flips inside blocks, re-checksummed, so the structure checks are reached."""
  prefix, original = small_ckpt
  handles = _block_handles(original)
  errors = set()
  for offset, size in handles:
    for pos in range(offset, offset + size):
      for mask in (0x01, 0x02, 0x10, 0x80, 0xFF):
        data = bytearray(original)
        data[pos] ^= mask
        _write_index(prefix, _refresh_crcs(data, handles))
        try:
          bundle.read_index(prefix)
        except bundle.BundleError as e:
          errors.add(str(e).split(": ", 1)[1][:25])
        _exercise(prefix)
  assert len(errors) > 10  # many distinct checks were hit


def test_random_corruption(small_ckpt, no_hang):
  prefix, original = small_ckpt
  handles = _block_handles(original)
  rng = random.Random(1234)
  for i in range(400):
    data = bytearray(original)
    for _ in range(rng.randint(1, 6)):
      action = rng.random()
      pos = rng.randrange(len(data) - 48)
      if action < 0.6:
        data[pos] = rng.randrange(256)
      elif action < 0.8:
        del data[pos:pos + rng.randint(1, 8)]
      else:
        data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    if i % 2 and len(data) == len(original):
      data = _refresh_crcs(data, handles)
    _write_index(prefix, bytes(data))
    _exercise(prefix)


def test_block_compression_type(small_ckpt):
  prefix, original = small_ckpt
  handles = _block_handles(original)
  offset, size = handles[2]  # first data block
  for kind, message in ((1, "compressed index blocks are not supported"),
                        (7, "unknown block compression type 7")):
    data = bytearray(original)
    data[offset + size] = kind
    _write_index(prefix, _refresh_crcs(data, handles))
    with pytest.raises(bundle.BundleError, match=message):
      bundle.read_index(prefix)


def test_crafted_bundle_is_valid_for_tf(tmp_path):
  """The test's own table writer produces files TensorFlow reads back."""
  prefix = str(tmp_path / "crafted")
  values = np.arange(6, dtype=np.float32)
  _write_bundle(prefix, [("", _header()), ("w", _float_entry([2, 3], data=values.tobytes()))],
                data=values.tobytes())
  index = bundle.read_index(prefix)
  bundle.check_data_files(index)
  assert bundle.read_tensor_bytes(index, index.entries["w"], verify_crc=True) == values.tobytes()
  np.testing.assert_array_equal(tf.train.load_checkpoint(prefix).get_tensor("w"),
                                values.reshape(2, 3))


def _slice_key(name, extent):
  """checkpoint::EncodeTensorNameSlice for small non-negative starts/lengths or -1."""
  out = b"\x00" + name.replace(b"\xff", b"\xff\x00").replace(b"\x00", b"\x00\xff") + b"\x00\x01"
  out += bytes([1, len(extent)]) if extent else b"\x00"
  for start, length in extent:
    for v in (start, length):
      assert -64 <= v < 64
      out += bytes([(0x80 ^ v) & 0xFF])
  return out


def _sliced_owner(shape, extents):
  entry = _float_entry(shape, size=0)
  for extent in extents:
    s = entry.slices.add()
    for start, length in extent:
      e = s.extent.add()
      e.start = start
      if length != -1:
        e.length = length
  return entry


_SLICED_DATA = np.arange(4, dtype=np.float32).tobytes()
_SLICED_OK = [("", _header()),
              (_slice_key(b"p", [(0, 1), (0, -1)]), _float_entry([1, 2], data=_SLICED_DATA[:8])),
              (_slice_key(b"p", [(1, 1), (0, -1)]),
               _float_entry([1, 2], offset=8, data=_SLICED_DATA[8:])),
              ("p", _sliced_owner([2, 2], [[(0, 1), (0, -1)], [(1, 1), (0, -1)]]))]


def _replace(records, i, record):
  records = list(records)
  records[i] = record
  return records


def _unknown_rank():
  e = _float_entry([2])
  e.shape.unknown_rank = True
  return e


def _negative_dim():
  e = _float_entry([2])
  e.shape.dim[0].size = -1
  return e


MALFORMED = {
    "no header": [("w", _float_entry([2]))],
    "zero shards": [("", _header(num_shards=0)), ("w", _float_entry([2]))],
    "bad endianness": [("", _header(endianness=5)), ("w", _float_entry([2]))],
    "version too new": [("", tensor_bundle_pb2.BundleHeaderProto(
        num_shards=1, version=versions_pb2.VersionDef(producer=3, min_consumer=2)))],
    "bad consumer": [("", tensor_bundle_pb2.BundleHeaderProto(
        num_shards=1, version=versions_pb2.VersionDef(producer=1, bad_consumers=[1])))],
    "shard id": [("", _header(num_shards=2)), ("w", _float_entry([2], shard_id=2))],
    "negative shard id": [("", _header()), ("w", _float_entry([2], shard_id=-1))],
    "negative offset": [("", _header()), ("w", _float_entry([2], offset=-8))],
    "negative size": [("", _header()), ("w", _float_entry([2], size=-8))],
    "size mismatch": [("", _header()), ("w", _float_entry([2], size=12))],
    "huge string": [("", _header()), ("s", tensor_bundle_pb2.BundleEntryProto(
        dtype=tf.string.as_datatype_enum, size=10,
        shape={"dim": [{"size": 1 << 40}]}))],
    "too many elements": [("", _header()), ("w", _float_entry([1 << 32, 1 << 32], size=0))],
    "unknown dtype": [("", _header()), ("w", _float_entry([2], dtype=77))],
    "invalid dtype": [("", _header()), ("w", _float_entry([2], dtype=0))],
    "ref dtype": [("", _header()), ("w", _float_entry([2], dtype=101))],
    "unknown rank": [("", _header()), ("w", _unknown_rank())],
    "negative dim": [("", _header()), ("w", _negative_dim())],
    "too many dims": [("", _header()), ("w", _float_entry([1] * 300))],
    "not a proto": [("", _header()), ("w", b"\xff\xff\xff")],
    "header not a proto": [("", b"\x0a\x05ab"), ("w", _float_entry([2]))],
    "non-utf8 name": [("", _header()), (b"\xc3\x28", _float_entry([2]))],
    "slice not listed": [_SLICED_OK[0], _SLICED_OK[1], ("p", _float_entry([2, 2]))],
    "slice missing": _SLICED_OK[:2] + _SLICED_OK[3:],
    "slice owner missing": _SLICED_OK[:3],
    "slice shape": _replace(_SLICED_OK, 2, (_SLICED_OK[2][0], _float_entry([2, 2], offset=8))),
    "slice dtype": _replace(_SLICED_OK, 2, (_SLICED_OK[2][0], _float_entry(
        [1, 2], dtype=tf.int32.as_datatype_enum))),
    "slice extent": _replace(_SLICED_OK, 3, ("p", _sliced_owner(
        [2, 2], [[(0, 1), (0, -1)], [(1, 2), (0, -1)]]))),
    "slice rank": _replace(_SLICED_OK, 3, ("p", _sliced_owner(
        [2, 2], [[(0, 1)], [(1, 1), (0, -1)]]))),
    "slice key": _replace(_SLICED_OK, 1, (b"\x00p\x00\x01\x01\x02\x80\xc0\x01\x80\x7f",
                                          _float_entry([1, 2]))),
    "slice key trailing": _replace(_SLICED_OK, 1, (_slice_key(b"p", [(0, 1), (0, -1)]) + b"\x80",
                                                   _float_entry([1, 2]))),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_crafted_malformed_entries(tmp_path, case):
  prefix = str(tmp_path / "crafted")
  records = sorted(MALFORMED[case],
                   key=lambda r: r[0] if isinstance(r[0], bytes) else r[0].encode())
  _write_bundle(prefix, records, data=bytes(64), num_shards=2 if case == "shard id" else 1)
  with pytest.raises(bundle.BundleError) as info:
    bundle.read_index(prefix)
  assert str(info.value).startswith(prefix + ".index: ")


def test_crafted_sliced_ok(tmp_path):
  prefix = str(tmp_path / "crafted")
  _write_bundle(prefix, _SLICED_OK, data=_SLICED_DATA)
  index = bundle.read_index(prefix)
  assert [p.extent for p in index.slices["p"]] == [((0, 1), (0, 2)), ((1, 1), (0, 2))]
  np.testing.assert_array_equal(tf.train.load_checkpoint(prefix).get_tensor("p"),
                                np.arange(4, dtype=np.float32).reshape(2, 2))


def test_crafted_table_structure(tmp_path):
  prefix = str(tmp_path / "crafted")
  header = _header().SerializeToString()
  entry = _float_entry([2]).SerializeToString()

  def expect(data, message):
    _write_index(prefix, data)
    with pytest.raises(bundle.BundleError, match=message):
      bundle.read_index(prefix)

  expect(_make_table([(b"", header), (b"b", entry), (b"a", entry)]), "not strictly increasing")
  expect(_make_table([(b"", header), (b"a", entry), (b"a", entry)]), "not strictly increasing")
  expect(_make_table([]), "empty data block")
  # Restart array pointing into the middle of an entry.
  good = _make_table([(b"", header), (b"a", entry)])
  handles = _block_handles(good)
  offset, size = handles[2]
  bad = bytearray(good)
  bad[offset + size - 8:offset + size - 4] = struct.pack("<I", 3)
  expect(_refresh_crcs(bad, handles), "restart")
  # Block handle beyond the file.
  footer = _uvarint(0) + _uvarint(10 ** 9) + _uvarint(0) + _uvarint(8)
  expect(good[:-48] + footer.ljust(40, b"\0") + struct.pack("<Q", MAGIC), "extends past the end")
  # Overlong varint in the footer.
  expect(good[:-48] + b"\xff" * 40 + struct.pack("<Q", MAGIC), "varint")
  # Garbage with the right magic.
  garbage = zlib.compress(np.random.RandomState(3).bytes(500))[:200]
  expect(garbage + good[-8:], None)


def test_prefix_compression_bomb(tmp_path, no_hang):
  """A block whose keys each reuse the whole previous key plus one byte."""
  prefix = str(tmp_path / "bomb")
  count = 30_000
  body = bytearray(b"\x00\x00" + _uvarint(len(_header().SerializeToString())))
  body += _header().SerializeToString()
  for i in range(count):
    body += _uvarint(i) + b"\x01\x00a"
  contents = bytes(body) + struct.pack("<II", 0, 1)
  out = bytearray()
  handles = []
  for block in (contents, _make_block([])):
    handles.append((len(out), len(block)))
    out += block + b"\0" + struct.pack("<I", bundle.masked_crc32c(block + b"\0"))
  index = _make_block([(b"a" * count, _uvarint(handles[0][0]) + _uvarint(handles[0][1]))], 1)
  handles.append((len(out), len(index)))
  out += index + b"\0" + struct.pack("<I", bundle.masked_crc32c(index + b"\0"))
  footer = b"".join(_uvarint(v) for v in handles[1] + handles[2])
  _write_index(prefix, bytes(out) + footer.ljust(40, b"\0") + struct.pack("<Q", MAGIC))
  with pytest.raises(bundle.BundleError, match="keys expand"):
    bundle.read_index(prefix)

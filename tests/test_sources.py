"""warmstart.sources and read_tensor: values equal TensorFlow's reader bit for bit, every dtype."""
import os

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from conftest import mark_modified, register_source, write_checkpoint
from tensorflow.core.framework import tensor_shape_pb2, versions_pb2
from tensorflow.core.protobuf import tensor_bundle_pb2

import warmstart
from warmstart import _bundle, _checkpoint, _dtypes, sources

# Every dtype TensorFlow can save: all of the table but the two without a value.
DTYPES = sorted(set(_dtypes.BY_NAME) - {"resource", "variant"})
STRINGS = [b"", b"a", b"\x00trailing\x00", "wörld".encode(), b"\xff\xfe not utf-8", b"x" * 300]


def random_values(name, shape, rng):
  """Random values of TF dtype `name` as numpy arrays (floats: any bits, NaN payloads too)."""
  count = int(np.prod(shape, dtype=np.int64))
  if name == "string":
    return np.array([STRINGS[i % len(STRINGS)] for i in range(count)],
                    dtype=object).reshape(shape)
  storage = _dtypes.numpy_dtype(name)
  if name == "bool":
    return rng.randint(0, 2, count).astype(bool).reshape(shape)
  if name in ("int4", "uint4"):
    low = -8 if name == "int4" else 0
    return rng.randint(low, low + 16, count).astype(storage).reshape(shape)
  return np.frombuffer(rng.bytes(count * storage.itemsize), storage).reshape(shape).copy()


def tf_tensor(name, value):
  return tf.constant(value, dtype=tf.as_dtype(name))


@pytest.fixture(scope="module")
def every_dtype(tmp_path_factory):
  """A checkpoint with, per dtype: a matrix, a scalar, an empty tensor and a sliced tensor.

  Returns (prefix, {tensor name: the value written}).
  """
  rng = np.random.RandomState(0)
  names, specs, tensors, expected = [], [], [], {}
  for dtype in DTYPES:
    for kind, shape in (("matrix", (3, 5)), ("scalar", ()), ("empty", (0, 2))):
      value = random_values(dtype, shape, rng)
      names.append("%s/%s" % (kind, dtype))
      specs.append("")
      tensors.append(tf_tensor(dtype, value))
      expected[names[-1]] = value
    # A partitioned variable, stored as two slices split along its second dimension.
    full = random_values(dtype, (4, 6), rng)
    for spec, region in (("4 6 0,4:0,2", np.s_[:, 0:2]), ("4 6 0,4:2,4", np.s_[:, 2:6])):
      names.append("sliced/" + dtype)
      specs.append(spec)
      tensors.append(tf_tensor(dtype, np.ascontiguousarray(full[region])))
    expected["sliced/" + dtype] = full
  # Larger than one read piece of _bundle.read_tensor_into, and not a multiple of it.
  big = rng.rand(600_001)
  names.append("big")
  specs.append("")
  tensors.append(tf.constant(big))
  expected["big"] = big
  prefix = str(tmp_path_factory.mktemp("dtypes") / "model.ckpt")
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=specs, tensors=tensors)
  register_source(prefix, keep=True)
  return prefix, expected


def assert_same_bits(actual, expected):
  assert isinstance(actual, np.ndarray)
  # TF's reader gives a scalar as a numpy scalar, a string scalar as bytes.
  expected = np.array(expected, dtype=object) if isinstance(expected, bytes) else np.asarray(
      expected)
  assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape)
  if actual.dtype == object:
    assert actual.tolist() == expected.tolist()
    assert all(type(x) is bytes for x in actual.reshape(-1))
  else:
    assert actual.tobytes() == expected.tobytes()


def test_read_tensor_equals_tensorflow_for_every_dtype(every_dtype):
  prefix, expected = every_dtype
  tf_reader = tf.train.load_checkpoint(prefix)
  tf_dtypes = tf_reader.get_variable_to_dtype_map()
  listed = {v.name: v for v in warmstart.list_variables(prefix)}
  assert set(listed) == set(tf_dtypes) == set(expected)
  with sources.open_reader(warmstart.resolve_checkpoint(prefix)) as reader:
    for name, written in expected.items():
      value = reader.read(name)
      try:
        assert_same_bits(value, tf_reader.get_tensor(name))
      except ValueError as err:  # TF's reader cannot put slices of some dtypes together
        assert name.startswith("sliced/") and "not supported" in str(err), err
      # The values written come back, with TF's own dtype name in the listing.
      assert_same_bits(value, written.astype(_dtypes.numpy_dtype(listed[name].dtype)))
      assert listed[name].dtype == tf_dtypes[name].name
  assert_same_bits(warmstart.read_tensor(prefix, "big"), expected["big"])
  assert_same_bits(warmstart.read_tensor(prefix, "scalar/float32"),
                   np.asarray(tf_reader.get_tensor("scalar/float32")))


def test_every_table_dtype_is_tested():
  assert [tf.as_dtype(name).name for name in DTYPES] == DTYPES
  for name in DTYPES:  # sizes and numpy types are TensorFlow's
    dtype = tf.as_dtype(name)
    assert _dtypes.BY_NAME[name].size == (0 if name == "string" else dtype.size)
    assert _dtypes.BY_ENUM[dtype.as_datatype_enum].name == name


def test_partitioned_variable_of_a_sharded_saver(tmp_path):
  """A real partitioner over two devices: slices in two data shards."""
  value = np.arange(30, dtype=np.float32).reshape(10, 3)
  with tf.Graph().as_default():
    with tf.device("/cpu:0"):
      tf.compat.v1.get_variable("emb", initializer=tf.constant(value),
                                partitioner=tf.compat.v1.fixed_size_partitioner(3))
    with tf.device("/cpu:1"):
      tf.compat.v1.get_variable("other", initializer=np.arange(4, dtype=np.int64))
    saver = tf.compat.v1.train.Saver(sharded=True)
    config = tf.compat.v1.ConfigProto(device_count={"CPU": 2})
    with tf.compat.v1.Session(config=config) as session:
      session.run(tf.compat.v1.global_variables_initializer())
      prefix = saver.save(session, str(tmp_path / "model.ckpt"), write_meta_graph=False)
  assert os.path.exists(prefix + ".data-00001-of-00002")
  assert [(v.name, v.shape) for v in warmstart.list_variables(prefix)] == [
      ("emb", (10, 3)), ("other", (4,))]
  for name in ("emb", "other"):
    assert_same_bits(warmstart.read_tensor(prefix, name),
                     tf.train.load_checkpoint(prefix).get_tensor(name))
  assert_same_bits(warmstart.read_tensor(prefix, "emb"), value)


def test_saved_model_variables(tmp_path):
  module = tf.Module()
  module.w = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3))
  module.b = tf.Variable(tf.constant(1.5, tf.bfloat16))
  tf.saved_model.save(module, str(tmp_path / "sm"))
  tf_reader = tf.train.load_checkpoint(str(tmp_path / "sm" / "variables" / "variables"))
  # A TF2 SavedModel is object-based: both variables are called 'Variable', so each is named by
  # its object path; key_of gives the key it is stored under.
  with sources.open_reader(warmstart.resolve_checkpoint(tmp_path / "sm")) as reader:
    keys = {name: reader.key_of(name) for name in reader.variables}
  assert keys == {"b": "b/.ATTRIBUTES/VARIABLE_VALUE", "w": "w/.ATTRIBUTES/VARIABLE_VALUE"}
  assert set(keys.values()) == set(tf_reader.get_variable_to_shape_map()) - {
      "_CHECKPOINTABLE_OBJECT_GRAPH"}
  for name, key in keys.items():
    value = warmstart.read_tensor(tmp_path / "sm", name)
    assert_same_bits(value, np.asarray(tf_reader.get_tensor(key)))
  assert warmstart.read_tensor(tmp_path / "sm", "b").dtype == ml_dtypes.bfloat16


def test_npz_reader(tmp_path):
  values = {"a/kernel": np.arange(6, dtype=np.float16).reshape(2, 3), "step": np.int64(7),
            "words": np.array([b"x", b"yz"])}
  np.savez(tmp_path / "w.npz", **values)
  with sources.open_reader(warmstart.resolve_checkpoint(tmp_path / "w.npz")) as reader:
    assert list(reader.variables) == sorted(values)
    assert reader.variables["words"].dtype == "string"
    for name, value in values.items():
      assert_same_bits(reader.read(name), value)
    assert reader.read("step").shape == ()


def test_damaged_data_is_a_read_error_naming_the_tensor(tmp_path):
  prefix = write_checkpoint(tmp_path, {"a": np.ones(4, np.float32), "b": np.ones(4, np.float32),
                                       "s": np.array([b"abc", b"de"])})
  index = _bundle.read_index(prefix)
  for name in ("b", "s"):
    entry = index.entries[name]
    with open(prefix + ".data-00000-of-00001", "r+b") as f:
      f.seek(entry.offset + entry.size - 1)
      byte = f.read(1)
      f.seek(entry.offset + entry.size - 1)
      f.write(bytes([byte[0] ^ 0x10]))
  mark_modified(prefix + ".data-00000-of-00001")
  assert_same_bits(warmstart.read_tensor(prefix, "a"), np.ones(4, np.float32))
  for name in ("b", "s"):
    with pytest.raises(warmstart.CheckpointReadError, match="tensor '%s'.*checksum" % name):
      warmstart.read_tensor(prefix, name)


def test_unknown_name_names_the_closest(tmp_path):
  prefix = write_checkpoint(tmp_path, {"dense/kernel": np.ones(2, np.float32)})
  with pytest.raises(warmstart.PatternError, match="'dense/kernal'.*'dense/kernel'"):
    warmstart.read_tensor(prefix, "dense/kernal")


def test_open_reader_refuses_an_unknown_kind(tmp_path):
  ref = warmstart.CheckpointRef(str(tmp_path / "x.h9"), None, "h9")
  with pytest.raises(warmstart.WarmStartError, match="no reader for sources of kind 'h9'"):
    sources.open_reader(ref)


@pytest.mark.parametrize("dtype", ["float32", np.float32, np.dtype("float32"), tf.float32,
                                   tf.float32.as_datatype_enum])
def test_variable_info_make_takes_every_dtype_spelling(dtype):
  info = warmstart.VariableInfo.make("dense/kernel", [2, 3], dtype)
  assert (info.dtype, info.nbytes, info.kind) == ("float32", 24, "weight")


def test_variable_info_make_names_and_sizes():
  assert warmstart.VariableInfo.make("s", [3], object).dtype == "string"
  assert warmstart.VariableInfo.make("s", [3], np.dtype("S5")).nbytes == 0
  assert warmstart.VariableInfo.make("h", [3], "half").dtype == "float16"
  assert warmstart.VariableInfo.make("b", [3], ml_dtypes.bfloat16).nbytes == 6
  with pytest.raises(warmstart.WarmStartError, match="unknown dtype"):
    warmstart.VariableInfo.make("x", [1], "float31")


def test_state_file_is_parsed_as_tensorflow_parses_it(tmp_path):
  """Absolute paths with quotes, backslashes and non-ASCII characters, as TF escapes them."""
  directory = tmp_path / 'dír "quoted" \\ back'
  older = write_checkpoint(directory, {"w": np.ones(2, np.float32)}, step=1)
  newer = write_checkpoint(directory, {"w": np.ones(2, np.float32)}, step=2)
  tf.compat.v1.train.update_checkpoint_state(str(directory), older, [older, newer])
  state = tf.train.get_checkpoint_state(str(directory))
  parsed = _checkpoint._model_checkpoint_path(str(directory / "checkpoint"))
  assert parsed == state.model_checkpoint_path == older
  assert warmstart.resolve_checkpoint(directory).prefix == older


def test_state_file_field_given_twice_keeps_the_last_as_tensorflow_does(tmp_path):
  (tmp_path / "checkpoint").write_text(
      'model_checkpoint_path: "a"  # comment\n\nmodel_checkpoint_path: "b\\q\\303\\251"\n'
      'all_model_checkpoint_paths: "b"\nlast_preserved_timestamp: 1.5e9\n')
  named = tf.train.get_checkpoint_state(str(tmp_path)).model_checkpoint_path
  assert named == str(tmp_path / "b\\qé")  # an unknown escape is kept as it is
  assert _checkpoint._model_checkpoint_path(str(tmp_path / "checkpoint")) == "b\\qé"


@pytest.mark.parametrize("text", [
    'model_checkpoint_path "a"\n',
    'model_checkpoint_path: "a\n',
    'model_checkpoint_path: "a"\n}',
    'model_checkpoint_path: "a"\nsome_other_field: "b"\n',
])
def test_garbled_state_file_is_refused_as_tensorflow_refuses_it(tmp_path, text):
  (tmp_path / "checkpoint").write_text(text)
  assert tf.train.get_checkpoint_state(str(tmp_path)) is None  # TF ignores it, with a warning
  with pytest.raises(ValueError):
    _checkpoint._model_checkpoint_path(str(tmp_path / "checkpoint"))


def _entry_bytes(shape, **fields):
  proto = tensor_bundle_pb2.BundleEntryProto(
      dtype=1, shape=tensor_shape_pb2.TensorShapeProto(
          dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]), **fields)
  return proto.SerializeToString()


@pytest.mark.parametrize("case", ["plain", "shape twice merges", "scalar twice: last wins",
                                  "unknown fields"])
def test_entry_decoding_follows_protobuf(case):
  """What protobuf makes of an entry's bytes, the wire decoder makes of them too."""
  data = {
      "plain": _entry_bytes([2, 3], offset=8, size=24, crc32c=0xFFFFFFFF),
      "shape twice merges": _entry_bytes([2], size=24) + _entry_bytes([3])[2:],
      "scalar twice: last wins": _entry_bytes([6], offset=4, size=24) + b"\x20\x10",
      "unknown fields": _entry_bytes([6], size=24) + b"\xf8\x01\x05\x92\x02\x02ab",
  }[case]
  proto = tensor_bundle_pb2.BundleEntryProto.FromString(data)
  entry, _ = _bundle._parse_entry("w", b"w", data, 1, True)
  assert entry.shape == tuple(d.size for d in proto.shape.dim)
  assert (entry.offset, entry.size, entry.crc32c) == (proto.offset, proto.size, proto.crc32c)


def test_header_bad_consumers_packed_or_not():
  packed = tensor_bundle_pb2.BundleHeaderProto(
      num_shards=1, version=versions_pb2.VersionDef(producer=1, bad_consumers=[0, 1]))
  version = versions_pb2.VersionDef(producer=1).SerializeToString() + b"\x18\x01"  # unpacked 1
  unpacked = tensor_bundle_pb2.BundleHeaderProto(num_shards=1).SerializeToString() + (
      b"\x1a" + bytes([len(version)]) + version)
  assert list(tensor_bundle_pb2.BundleHeaderProto.FromString(unpacked).version.bad_consumers) == [1]
  for data in (packed.SerializeToString(), unpacked):
    with pytest.raises(_bundle._Malformed, match="marked bad"):
      _bundle._parse_header(data)
  assert _bundle._parse_header(tensor_bundle_pb2.BundleHeaderProto(
      num_shards=3, endianness=1, version=versions_pb2.VersionDef(producer=1))
                               .SerializeToString()) == (3, False, 1)

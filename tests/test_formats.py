"""Sources in other formats: Keras .h5, TF2 object-based checkpoints, .safetensors, .npy; convert.

Every file is written by the real tool that makes it (Keras, tf.train.Checkpoint, the safetensors
package, numpy); values are compared bit for bit with what that tool holds.
"""
import glob
import json
import logging
import os
import pickle
import sys

import ml_dtypes
import numpy as np
import pytest
import safetensors
import safetensors.numpy
import tensorflow as tf
from conftest import mark_modified, read, register_source, same_bits, write_checkpoint

import warmstart
from warmstart import sources

F32 = np.float32


def keras_mlp():
  """pre -> nested Sequential 'inner' (d1, bn; built lazily) -> head."""
  inner = tf.keras.Sequential([tf.keras.layers.Dense(3, name="d1"),
                               tf.keras.layers.BatchNormalization(name="bn")], name="inner")
  inputs = tf.keras.Input((4,))
  outputs = tf.keras.layers.Dense(2, name="head")(inner(tf.keras.layers.Dense(4, name="pre")(inputs)))
  return tf.keras.Model(inputs, outputs, name="outer")


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
  """A Keras model with a nested model, saved in the three HDF5 layouts; its weights by name."""
  root = tmp_path_factory.mktemp("keras")
  model = keras_mlp()
  bn = model.get_layer("inner").get_layer("bn")
  bn.moving_mean.assign(np.arange(3, dtype=F32))  # not the initial zeros
  paths = {"weights": str(root / "w.h5"), "model": str(root / "m.h5"),
           "v3": str(root / "w.weights.h5")}
  model.save_weights(paths["weights"])
  model.save(paths["model"])
  model.save_weights(paths["v3"])
  weights = {w.name[:-2]: w.numpy() for w in model.weights}
  return paths, weights


@pytest.mark.parametrize("layout", ["weights", "model"])
def test_keras_h5_names_are_the_layers_variable_names(keras_files, layout):
  paths, weights = keras_files
  ref = warmstart.resolve_checkpoint(paths[layout])
  assert ref.kind == "keras_h5"
  with sources.open_reader(ref) as reader:
    assert set(reader.variables) == set(weights)
    for name, value in weights.items():
      assert same_bits(reader.read(name), value), name
    prefix = "model_weights/" if layout == "model" else ""
    # The nested model's prefix is in the file, not in the name.
    assert reader.key_of("d1/kernel") == prefix + "inner/d1/kernel:0"
    assert reader.key_of("pre/bias") == prefix + "pre/pre/bias:0"
    assert reader.notes["bn/gamma"] == "in nested model 'inner'"
    kinds = {n: v.kind for n, v in reader.variables.items()}
  assert kinds["bn/moving_mean"] == kinds["bn/moving_variance"] == "batchnorm_stat"
  assert kinds["bn/gamma"] == kinds["d1/kernel"] == "weight"


def test_keras_3_weights_h5_is_named_by_layer_class_and_position(keras_files):
  paths, weights = keras_files
  variables = {v.name: v for v in warmstart.list_variables(paths["v3"])}
  # Two Dense layers are called 'dense' (one in the nested model): those keep its prefix.
  assert sorted(variables) == [
      "batch_normalization/beta", "batch_normalization/gamma", "batch_normalization/moving_mean",
      "batch_normalization/moving_variance", "dense/bias", "dense/kernel", "dense_1/bias",
      "dense_1/kernel", "sequential/dense/bias", "sequential/dense/kernel"]
  assert variables["batch_normalization/moving_mean"].kind == "batchnorm_stat"
  assert same_bits(_read(paths["v3"], "batch_normalization/moving_mean"),
                   weights["bn/moving_mean"])
  assert same_bits(_read(paths["v3"], "sequential/dense/kernel"), weights["d1/kernel"])


def _read(source, name):
  with sources.open_reader(warmstart.resolve_checkpoint(source)) as reader:
    return reader.read(name)


def test_same_layer_names_in_two_nested_models_keep_their_prefixes(tmp_path):
  inputs = tf.keras.Input((2,))
  towers = [tf.keras.Sequential([tf.keras.layers.Dense(2, name="d")], name=n)
            for n in ("tower_a", "tower_b")]
  model = tf.keras.Model(inputs, tf.keras.layers.Add()([t(inputs) for t in towers]))
  model.save_weights(str(tmp_path / "towers.h5"))
  with sources.open_reader(warmstart.resolve_checkpoint(str(tmp_path / "towers.h5"))) as reader:
    assert sorted(reader.variables) == ["tower_a/d/bias", "tower_a/d/kernel", "tower_b/d/bias",
                                        "tower_b/d/kernel"]
    assert same_bits(reader.read("tower_b/d/kernel"), towers[1].weights[0].numpy())
    assert "2 datasets are named d/kernel" in reader.notes["tower_a/d/kernel"]


# The acceptance test, a keras.applications model's .h5 file warm-starting an Estimator, is the
# README's worked example (tests/test_readme.py runs it and checks every value).


# ---------------------------------------------------------------------------------------------
# TF2 object-based checkpoints


@pytest.fixture(scope="module")
def tf2_checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("tf2")
  model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3, name="d1"),
                               tf.keras.layers.BatchNormalization(name="bn")])
  optimizer = tf.keras.optimizers.Adam()
  model.compile(optimizer, "mse")
  model.fit(np.ones((8, 4), F32), np.ones((8, 3), F32), verbose=0, epochs=1)
  keras_prefix = tf.train.Checkpoint(model=model, optimizer=optimizer).save(str(root / "k/ckpt"))
  variable = tf.Variable(tf.ones([2, 2]), name="vv")
  v1_optimizer = tf.compat.v1.train.AdamOptimizer()
  v1_optimizer.minimize(lambda: tf.reduce_sum(variable * variable), var_list=[variable])
  v1_prefix = tf.train.Checkpoint(v=variable, opt=v1_optimizer).save(str(root / "v1/ckpt"))
  for prefix in (keras_prefix, v1_prefix):
    register_source(prefix, keep=True)
  weights = {w.name[:-2]: w.numpy() for w in model.weights}
  return keras_prefix, v1_prefix, weights


def test_tf2_checkpoint_names_keys_and_kinds_come_from_the_object_graph(tf2_checkpoints):
  keras_prefix, v1_prefix, weights = tf2_checkpoints
  with sources.open_reader(warmstart.resolve_checkpoint(keras_prefix)) as reader:
    kinds = {n: v.kind for n, v in reader.variables.items()}
    for name, value in weights.items():
      assert same_bits(reader.read(name), value)
    assert reader.key_of("d1/kernel") == (
        "model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE")
    # Keras' Adam keeps its slots as optimizer/_variables/N: only the graph tells their kind.
    assert reader.key_of("Adam/m/d1/kernel").startswith("optimizer/_variables/")
  assert kinds["Adam/m/d1/kernel"] == kinds["Adam/v/bn/beta"] == "optimizer_slot"
  assert kinds["iteration"] == "step" and kinds["bn/moving_mean"] == "batchnorm_stat"
  assert kinds["d1/kernel"] == "weight"
  with sources.open_reader(warmstart.resolve_checkpoint(v1_prefix)) as reader:
    assert reader.key_of("vv/Adam_1") == "v/.OPTIMIZER_SLOT/opt/v/.ATTRIBUTES/VARIABLE_VALUE"
    assert {n: v.kind for n, v in reader.variables.items()} == {
        "vv": "weight", "vv/Adam": "optimizer_slot", "vv/Adam_1": "optimizer_slot",
        "beta1_power": "optimizer_slot", "beta2_power": "optimizer_slot",
        "save_counter": "other"}


def keras_sequential_model_fn(features, labels, mode):
  model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3, name="d1"),
                               tf.keras.layers.BatchNormalization(name="bn")])
  loss = tf.reduce_mean(tf.square(model(features["x"], training=False) - 1.0))
  train_op = tf.compat.v1.assign_add(tf.compat.v1.train.get_global_step(), 1)
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def test_tf2_checkpoint_warm_starts_an_estimator_by_model_names(tf2_checkpoints, tmp_path):
  keras_prefix, _, weights = tf2_checkpoints

  def input_fn():
    return tf.data.Dataset.from_tensors(({"x": np.ones((2, 4), F32)}, np.ones(2, F32)))

  estimator = warmstart.estimator_from(keras_sequential_model_fn, model_dir=str(tmp_path / "m"),
                                       warm_start_from=keras_prefix)
  estimator.train(input_fn, max_steps=1)
  for name, value in weights.items():
    assert same_bits(read(str(tmp_path / "m" / "model.ckpt-1"), name), value), name
  with open(tmp_path / "m" / "warmstart_report.json") as f:
    report = json.load(f)
  assert sorted(e["name"] for e in report["loaded"]) == sorted(weights)
  # A rename may name the object path (the key) as well as the model name.
  plan = warmstart.plan(keras_prefix, str(tmp_path / "m"), include="d1/kernel", rename={
      "d1/kernel": "model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"})
  assert [(e.name, e.checkpoint_name) for e in plan.report.loaded] == [("d1/kernel", "d1/kernel")]


# ---------------------------------------------------------------------------------------------
# .safetensors and PyTorch layouts

TORCH = {
    "features.0.weight": np.arange(8 * 3 * 3 * 3, dtype=F32).reshape(8, 3, 3, 3),
    "features.0.bias": np.arange(8, dtype=F32),
    "features.1.weight": np.ones(8, F32),
    "features.1.running_mean": np.full(8, 0.5, F32),
    "features.1.running_var": np.full(8, 2.0, F32),
    "features.1.num_batches_tracked": np.array(7, np.int64),
    "fc.weight": np.arange(10 * 8, dtype=F32).reshape(10, 8),
    "embed.weight": np.arange(20 * 4, dtype=F32).reshape(20, 4),
    "half": np.arange(6, dtype=F32).reshape(2, 3).astype(ml_dtypes.bfloat16),
}


@pytest.fixture(scope="module")
def torch_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("torch") / "model.safetensors")
  safetensors.numpy.save_file(TORCH, path, metadata={"format": "pt"})
  return path


def test_safetensors_is_read_as_stored_without_a_layout(torch_file):
  with sources.open_reader(warmstart.resolve_checkpoint(torch_file)) as reader:
    assert reader.notes == {}
    for name, value in TORCH.items():
      assert same_bits(reader.read(name), value), name
    kinds = {n: v.kind for n, v in reader.variables.items()}
  assert kinds["features.1.running_mean"] == kinds["features.1.running_var"] == "batchnorm_stat"
  assert kinds["features.1.num_batches_tracked"] == "other"
  assert kinds["fc.weight"] == "weight"


def test_torch_layout_transposes_linear_and_conv_weights_and_says_so(torch_file):
  source = warmstart.Source(torch_file, layout="torch")
  with sources.open_reader(warmstart.resolve_checkpoint(source)) as reader:
    shapes = {n: v.shape for n, v in reader.variables.items()}
    assert same_bits(reader.read("fc.weight"), np.ascontiguousarray(TORCH["fc.weight"].T))
    assert same_bits(reader.read("features.0.weight"),
                     np.ascontiguousarray(TORCH["features.0.weight"].transpose(2, 3, 1, 0)))
    assert same_bits(reader.read("embed.weight"), TORCH["embed.weight"])
    notes = dict(reader.notes)
  assert shapes["fc.weight"] == (8, 10) and shapes["features.0.weight"] == (3, 3, 3, 8)
  assert shapes["embed.weight"] == (20, 4)
  assert notes["fc.weight"] == "transposed from torch Linear [out, in] (10, 8) to [in, out]"
  assert notes["features.0.weight"].startswith("transposed from torch Conv2d [out, in, *k]")
  assert notes["embed.weight"].startswith("kept: an embedding table")
  assert sorted(n for n, note in notes.items() if note.startswith("transposed")) == [
      "fc.weight", "features.0.weight"]


def test_warm_start_report_names_the_transposed_tensors(torch_file, tmp_path):
  target = write_checkpoint(tmp_path / "target", {
      "fc/kernel": np.zeros((8, 10), F32), "conv/kernel": np.zeros((3, 3, 3, 8), F32)})
  rename = {"fc/kernel": "fc.weight", "conv/kernel": "features.0.weight"}
  plan = warmstart.plan(warmstart.Source(torch_file, layout="torch"), target, rename=rename)
  assert plan.report.notes == {
      "fc.weight": "transposed from torch Linear [out, in] (10, 8) to [in, out]",
      "features.0.weight": "transposed from torch Conv2d [out, in, *k] (8, 3, 3, 3) to "
                           "[*k, in, out]"}
  assert "(transposed from torch Linear [out, in] (10, 8) to [in, out])" in str(plan.report)
  # Without the option nothing is transposed: the shapes do not fit, and the plan says so.
  with pytest.raises(warmstart.PlanError, match=r"model \(8, 10\) vs checkpoint 'fc.weight'"):
    warmstart.plan(torch_file, target, rename=rename)


def test_layout_torch_is_refused_for_tensorflow_formats(tf2_checkpoints):
  with pytest.raises(warmstart.WarmStartError, match="holds TensorFlow's layout already"):
    warmstart.resolve_checkpoint(warmstart.Source(tf2_checkpoints[0], layout="torch"))
  with pytest.raises(warmstart.WarmStartError, match="layout must be one of 'tf', 'torch'"):
    warmstart.Source("x.safetensors", layout="pytorch")


# ---------------------------------------------------------------------------------------------
# Caffe-style .npy dicts


CAFFE = {"conv1": [np.arange(6, dtype=F32).reshape(1, 2, 3), np.ones(3, F32)],
         "fc8": {"weights": np.ones((4, 2), F32), "biases": np.zeros(2, F32)}}


class _RunsCode:
  """A pickle that runs code when loaded (what allow_pickle guards against)."""

  def __reduce__(self):
    return (os.system, ("touch pwned",))


def test_pickled_npy_dict_needs_allow_pickle_and_warns(tmp_path, caplog):
  path = str(tmp_path / "alexnet.npy")
  np.save(path, CAFFE, allow_pickle=True)
  with pytest.raises(warmstart.CheckpointReadError,
                     match=r"Source\('.*alexnet.npy', allow_pickle=True\)"):
    warmstart.list_variables(path)
  source = warmstart.Source(path, allow_pickle=True)
  with caplog.at_level(logging.WARNING, "warmstart"):
    names = [v.name for v in warmstart.list_variables(source)]
  assert "a pickle can run code" in caplog.text
  assert names == ["conv1/biases", "conv1/weights", "fc8/biases", "fc8/weights"]
  assert same_bits(_read(source, "conv1/weights"), CAFFE["conv1"][0])


def test_npy_unpickler_accepts_only_numpy_arrays(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = str(tmp_path / "evil.npy")
  with open(path, "wb") as f:  # a valid .npy header for an object array, then the pickle
    np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
    pickle.dump({"conv1": [_RunsCode()]}, f, protocol=2)
  with pytest.raises(warmstart.CheckpointReadError, match="refusing to unpickle posix.system"):
    warmstart.list_variables(warmstart.Source(path, allow_pickle=True))
  assert not os.path.exists(tmp_path / "pwned")


def test_plain_npy_is_one_tensor_named_after_the_file(tmp_path):
  value = np.arange(12, dtype=np.float64).reshape(3, 4)
  np.save(tmp_path / "fc7.npy", value)
  assert [(v.name, v.shape, v.dtype) for v in warmstart.list_variables(
      str(tmp_path / "fc7.npy"))] == [("fc7", (3, 4), "float64")]
  assert same_bits(_read(str(tmp_path / "fc7.npy"), "fc7"), value)


# ---------------------------------------------------------------------------------------------
# convert

EVERY_DTYPE = {
    "f16": np.linspace(-2, 2, 7).astype(np.float16),
    "bf16": np.linspace(-3, 3, 6).astype(ml_dtypes.bfloat16).reshape(2, 3),
    "f32": np.random.RandomState(0).randn(4, 5).astype(F32),
    "f64": np.array([np.pi, -0.0, np.inf, np.nan]),
    "f8_e4m3": np.array([1.5, -0.25], ml_dtypes.float8_e4m3fn),
    "f8_e5m2": np.array([3.0, -6.0], ml_dtypes.float8_e5m2),
    "scalar": np.float32(2.5),
    "i32": np.arange(-3, 3, dtype=np.int32),
    "i64/step": np.int64(12345678901),
    "u8": np.arange(5, dtype=np.uint8),
    "flags": np.array([True, False, True]),
    "empty": np.zeros((0, 3), F32),
}


@pytest.fixture(scope="module")
def every_dtype(tmp_path_factory):
  prefix = write_checkpoint(tmp_path_factory.mktemp("dtypes"), EVERY_DTYPE, step=3)
  register_source(prefix, keep=True)
  return prefix


@pytest.mark.parametrize("middle", ["x.safetensors", "x.npz"])
def test_round_trips_through_safetensors_and_npz_are_bit_identical(every_dtype, tmp_path, middle):
  out = warmstart.convert(every_dtype, str(tmp_path / middle))
  back = warmstart.convert(out, str(tmp_path / "back" / "model.ckpt"))
  assert back.kind == "checkpoint"
  for name, value in EVERY_DTYPE.items():
    assert same_bits(read(back.prefix, name), np.asarray(value)), name
  # The middle file is the real format: its own package reads it.
  if middle.endswith(".safetensors"):
    with safetensors.safe_open(out.prefix, framework="numpy") as f:
      assert same_bits(f.get_tensor("bf16"), EVERY_DTYPE["bf16"])
  else:
    loaded = dict(np.load(out.prefix))
    assert loaded["bf16"].dtype == np.uint16  # bfloat16's bits; the dtype is recorded
    assert dict(map(tuple, loaded["__warmstart_dtypes__"]))["bf16"] == "bfloat16"


def test_convert_selects_and_renames_and_refuses_to_overwrite(every_dtype, tmp_path):
  out = str(tmp_path / "sel.npz")
  warmstart.convert(every_dtype, out, include="f.*", exclude="f8_.*", rename={"f(.*)": r"float\1"})
  assert [v.name for v in warmstart.list_variables(out)] == [
      "float16", "float32", "float64", "floatlags"]
  with pytest.raises(warmstart.WarmStartError, match="exists; convert never replaces"):
    warmstart.convert(every_dtype, out)
  with pytest.raises(warmstart.PatternError, match="matched no tensor of the source"):
    warmstart.convert(every_dtype, str(tmp_path / "y.npz"), rename={"nothing": "x"})
  assert not os.path.exists(tmp_path / "y.npz")


def test_an_interrupted_convert_leaves_nothing_behind(tmp_path):
  prefix = write_checkpoint(tmp_path / "src", {"a": np.ones(3, F32), "b": np.ones(4, F32)})
  with open(prefix + ".data-00000-of-00001", "r+b") as f:  # damage b (bytes 12..28)
    f.seek(20)
    f.write(b"\xff\xff")
  mark_modified(prefix + ".data-00000-of-00001")
  for out in ("out.safetensors", "out.npz", "out.ckpt"):
    with pytest.raises(warmstart.CheckpointReadError, match="'b'"):
      warmstart.convert(prefix, str(tmp_path / "dst" / out))
  assert os.listdir(tmp_path / "dst") == []


def test_keras_h5_converts_to_a_name_based_checkpoint(keras_files, tmp_path):
  paths, weights = keras_files
  out = warmstart.convert(paths["weights"], str(tmp_path / "keras.ckpt"))
  for name, value in weights.items():
    assert same_bits(read(out.prefix, name), value)
  assert sorted(glob.glob(str(tmp_path / "*"))) == [str(tmp_path / "keras.ckpt.data-00000-of-00001"),
                                                    str(tmp_path / "keras.ckpt.index")]


# ---------------------------------------------------------------------------------------------
# The command line (the real CLI, run in one worker process that imports TensorFlow once)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import fuzz_checkpoints  # noqa: E402


@pytest.fixture(scope="module")
def cli():
  worker = fuzz_checkpoints.Worker()
  yield lambda *argv: worker.run(list(argv))[0]
  worker.stop()


def test_cli_ls_shows_model_names_beside_file_keys(cli, tf2_checkpoints, torch_file):
  listed = cli("ls", tf2_checkpoints[0])
  assert listed["code"] == 0, listed
  line = next(row for row in listed["stdout"].splitlines() if row.strip().startswith("d1/kernel"))
  assert line.split()[-1] == "model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
  assert "key in file" in listed["stdout"]
  listed = cli("ls", torch_file, "--layout", "torch", "--json")
  variables = {v["name"]: v for v in json.loads(listed["stdout"])["variables"]}
  assert variables["fc.weight"]["shape"] == [8, 10]
  assert variables["fc.weight"]["note"].startswith("transposed from torch Linear")
  assert variables["features.1.running_var"]["kind"] == "batchnorm_stat"


def test_cli_convert_round_trip_and_report(cli, torch_file, tmp_path):
  out = str(tmp_path / "tf.ckpt")
  converted = cli("convert", torch_file, out, "--layout", "torch", "--exclude", "half",
                  "--rename", r"features\.0\.(.*)=conv/\1")
  assert converted["code"] == 0, converted
  written, transposed = converted["stdout"].splitlines()
  assert written.startswith("wrote 8 tensors (") and written.endswith(") to checkpoint " + out)
  assert transposed == "transposed from PyTorch layout (2): fc.weight, features.0.weight"
  assert same_bits(read(out, "conv/weight"),
                   np.ascontiguousarray(TORCH["features.0.weight"].transpose(2, 3, 1, 0)))
  again = cli("convert", torch_file, out)
  assert again["code"] == 2 and "exists" in again["stderr"]
  diffed = cli("diff", out, str(tmp_path / "tf.ckpt"), "--json")
  assert diffed["code"] == 0, diffed


@pytest.mark.parametrize("behaviour, words", [
    ("import time; time.sleep(60)", "did not finish within 2 s while listing"),
    ("import os; os.abort()", "stopped while listing"),
])
def test_a_hanging_or_crashing_hdf5_library_is_one_error(keras_files, tmp_path, monkeypatch,
                                                         behaviour, words):
  """libhdf5 can loop or crash on a crafted file (the fuzz found a hang): its child process can.

  A stand-in child that hangs or aborts shows the parent's side: one CheckpointReadError, and the
  next request gets a fresh, working child.
  """
  from warmstart.sources import _h5
  script = tmp_path / "child.py"
  script.write_text("import sys\nsys.stdin.readline()\n%s\n" % behaviour)
  path = str(tmp_path / "copy.h5")  # not listed (cached) yet
  with open(keras_files[0]["weights"], "rb") as src, open(path, "wb") as dst:
    dst.write(src.read())
  monkeypatch.setattr(_h5, "TIMEOUT", 2)
  monkeypatch.setattr(_h5, "_CHILD", str(script))
  _h5._child.stop()  # pylint: disable=protected-access
  with pytest.raises(warmstart.CheckpointReadError, match=words):
    warmstart.list_variables(path)
  monkeypatch.undo()
  assert len(warmstart.list_variables(path)) == len(keras_files[1])

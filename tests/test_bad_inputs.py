"""Every bad input: one error of the project's own type with a clear message, nothing written.

Each case builds its inputs in tmp_path, then the tree is snapshotted (names, bytes, mtimes) and
must be exactly the same after the failing call.
"""
import hashlib
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_cli_error, mark_modified, write_checkpoint

import warmstart

F = np.float32
SOURCE = {"layer/kernel": np.ones([3, 2], F), "layer/bias": np.ones([2], F),
          "global_step": np.int64(5)}


def source(tmp_path, tensors=SOURCE, step=5):
  return write_checkpoint(tmp_path / "source", tensors, step=step)


def target(tmp_path, tensors=None):
  return write_checkpoint(tmp_path / "target", tensors or SOURCE, step=1)


def truncate(path, keep):
  with open(path, "r+b") as f:
    f.truncate(keep)
  mark_modified(path)


def flip(path, offset):
  with open(path, "r+b") as f:
    f.seek(offset)
    byte = f.read(1)
    f.seek(offset)
    f.write(bytes([byte[0] ^ 0xFF]))
  mark_modified(path)


def case_missing_checkpoint(tmp_path):
  return lambda: warmstart.list_variables(str(tmp_path / "nope" / "model.ckpt-1"))


def case_directory_without_checkpoint(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("no checkpoint here")
  return lambda: warmstart.resolve_checkpoint(str(tmp_path / "empty"))


def case_truncated_index(tmp_path):
  prefix = source(tmp_path)
  truncate(prefix + ".index", os.path.getsize(prefix + ".index") // 2)
  return lambda: warmstart.list_variables(prefix)


def case_empty_index(tmp_path):
  prefix = source(tmp_path)
  truncate(prefix + ".index", 0)
  return lambda: warmstart.list_variables(prefix)


def case_truncated_data_shard(tmp_path):
  prefix = source(tmp_path)
  truncate(prefix + ".data-00000-of-00001", 4)
  t = target(tmp_path)
  return lambda: warmstart.plan(prefix, t)


def case_missing_data_shard(tmp_path):
  prefix = source(tmp_path)
  os.remove(prefix + ".data-00000-of-00001")
  t = target(tmp_path)
  return lambda: warmstart.plan(prefix, t)


def case_byte_flipped_data(tmp_path):
  prefix = source(tmp_path)
  # Data order is by name: global_step [0, 8), layer/bias [8, 16), layer/kernel [16, 40).
  flip(prefix + ".data-00000-of-00001", 20)
  t = target(tmp_path)
  return lambda: warmstart.plan(prefix, t)


def case_byte_flipped_data_in_diff(tmp_path):
  prefix = source(tmp_path)
  other = target(tmp_path)
  flip(prefix + ".data-00000-of-00001", 3)
  return lambda: warmstart.diff(prefix, other)


def case_index_of_another_format(tmp_path):
  prefix = source(tmp_path)
  with open(prefix + ".index", "wb") as f:  # a TF1 state file where the index should be
    f.write(b'model_checkpoint_path: "model.ckpt-5"\n' * 4)
  mark_modified(prefix + ".index")
  return lambda: warmstart.list_variables(prefix)


def case_wrong_dtype(tmp_path):
  s, t = source(tmp_path), target(
      tmp_path, {"layer/kernel": np.ones([3, 2], np.float64), "layer/bias": np.ones([2], F)})
  return lambda: warmstart.plan(s, t)


def case_shape_mismatch(tmp_path):
  s, t = source(tmp_path), target(
      tmp_path, {"layer/kernel": np.ones([3, 4], F), "layer/bias": np.ones([2], F)})
  return lambda: warmstart.plan(s, t)


def case_invalid_regex(tmp_path):
  s, t = source(tmp_path), target(tmp_path)
  return lambda: warmstart.plan(s, t, include="layer/(kernel")


def case_pattern_matching_nothing(tmp_path):
  s, t = source(tmp_path), target(tmp_path)
  return lambda: warmstart.plan(s, t, include="layer")


def case_unused_rename_rule(tmp_path):
  s, t = source(tmp_path), target(tmp_path)
  return lambda: warmstart.plan(s, t,
                                rename={"layr/(.*)": r"layer/\1"})


def case_rename_to_a_name_not_in_checkpoint(tmp_path):
  s, t = source(tmp_path), target(tmp_path)
  return lambda: warmstart.plan(s, t,
                                rename={"layer/(.*)": r"dense/\1"})


def case_conflicting_include_exclude(tmp_path):
  s, t = source(tmp_path), target(tmp_path)
  return lambda: warmstart.plan(s, t, include="layer/.*",
                                exclude="layer/.*")


def case_freeze_pattern_matching_nothing(tmp_path):
  s, t = source(tmp_path), target(tmp_path)
  return lambda: warmstart.plan(s, t, freeze="dense/.*")


def case_non_finite_source(tmp_path):
  prefix = source(tmp_path, {"layer/kernel": np.array([[1, np.nan], [np.inf, 0], [0, 0]], F),
                             "layer/bias": np.ones([2], F)})
  t = target(tmp_path)
  return lambda: warmstart.plan(prefix, t, check_finite=True)


def case_unwritable_model_dir(tmp_path):
  (tmp_path / "a_file").write_text("")
  prefix = source(tmp_path)
  return lambda: warmstart.estimator_from(lambda features, labels, mode: None,
                                          model_dir=str(tmp_path / "a_file" / "model"),
                                          warm_start_from=prefix)


def case_saved_model_without_variables(tmp_path):
  directory = tmp_path / "sm"
  tf.saved_model.save(tf.Module(), str(directory))
  shutil.rmtree(str(directory / "variables"))
  return lambda: warmstart.resolve_checkpoint(str(directory))


def case_step_that_does_not_exist(tmp_path):
  source(tmp_path)
  return lambda: warmstart.resolve_checkpoint(str(tmp_path / "source"), step=7)


def case_state_file_pointing_elsewhere(tmp_path):
  directory = tmp_path / "moved"
  directory.mkdir()
  (directory / "checkpoint").write_text(
      'model_checkpoint_path: "/old/place/model.ckpt-5"\n'
      'all_model_checkpoint_paths: "/old/place/model.ckpt-5"\n')
  return lambda: warmstart.resolve_checkpoint(str(directory))


def case_bad_step_value(tmp_path):
  source(tmp_path)
  return lambda: warmstart.resolve_checkpoint(str(tmp_path / "source"), step="5")


def case_empty_include(tmp_path):
  s, t = source(tmp_path), target(tmp_path)
  return lambda: warmstart.plan(s, t, include=[])


def case_include_of_wrong_type(tmp_path):
  s, t = source(tmp_path), target(tmp_path)
  return lambda: warmstart.plan(s, t, include=3)


def case_bad_optimizer_state(tmp_path):
  s = source(tmp_path)
  return lambda: warmstart.settings(s, optimizer_state="fresh")


def case_bad_shape_policy(tmp_path):
  s, t = source(tmp_path), target(tmp_path)
  return lambda: warmstart.plan(s, t, on_shape_mismatch="truncate")


def case_rename_template_with_missing_group(tmp_path):
  s, t = source(tmp_path), target(tmp_path)
  return lambda: warmstart.plan(s, t, rename={"layer/.*": r"\1"})


def case_vocab_for_a_variable_not_loaded(tmp_path):
  s, t = source(tmp_path), target(tmp_path)
  return lambda: warmstart.plan(s, t, vocab={
      "embedding": tf.estimator.VocabInfo("new.txt", 3, 3, "old.txt")})


def case_npz_with_pickled_objects(tmp_path):
  np.savez(tmp_path / "objects.npz", w=np.array([{"a": 1}], dtype=object))
  return lambda: warmstart.list_variables(str(tmp_path / "objects.npz"))


def case_source_of_wrong_type(tmp_path):
  return lambda: warmstart.resolve_checkpoint(42)


def case_negative_tolerance(tmp_path):
  prefix = source(tmp_path)
  return lambda: warmstart.diff(prefix, prefix, atol=-1)


# -- other source formats: Keras .h5, .safetensors, TF2 object graphs, .npy, convert ----------


def keras_h5(tmp_path, name="w.h5"):
  """A Keras weights file (layer 'dense': kernel (3, 2), bias (2,)) as Keras writes it."""
  model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2, name="dense")])
  model.save_weights(str(tmp_path / name))
  return str(tmp_path / name)


def h5_with_weight(tmp_path, make_weight):
  """A file in Keras' layout whose one weight is `make_weight(layer_group)`."""
  import h5py  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "crafted.h5")
  with h5py.File(path, "w") as f:
    f.attrs["layer_names"] = [b"dense"]
    layer = f.create_group("dense")
    layer.attrs["weight_names"] = [b"dense/kernel:0"]
    make_weight(layer.create_group("dense"))
  return path


def case_truncated_h5(tmp_path):
  path = keras_h5(tmp_path)
  truncate(path, os.path.getsize(path) // 2)
  return lambda: warmstart.list_variables(path)


def case_hdf5_that_is_not_keras_weights(tmp_path):
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(tmp_path / "data.h5", "w") as f:
    f["images"] = np.zeros((2, 2), F)
  return lambda: warmstart.list_variables(str(tmp_path / "data.h5"))


def case_h5_weight_linking_to_another_file(tmp_path):
  import h5py  # pylint: disable=g-import-not-at-top
  path = h5_with_weight(tmp_path, lambda g: g.__setitem__(
      "kernel:0", h5py.ExternalLink("/etc/passwd", "/data")))
  return lambda: warmstart.list_variables(path)


def case_h5_weight_larger_than_its_storage(tmp_path):
  # Declares 4 GB of float32 but stores nothing: never allocated.
  path = h5_with_weight(tmp_path, lambda g: g.create_dataset(
      "kernel:0", shape=(1 << 30,), dtype="f4", chunks=(1024,)))
  return lambda: warmstart.list_variables(path)


def safetensors_file(tmp_path, header, data=b""):
  import json  # pylint: disable=g-import-not-at-top
  text = json.dumps(header).encode()
  path = tmp_path / "crafted.safetensors"
  path.write_bytes(len(text).to_bytes(8, "little") + text + data)
  return str(path)


def case_safetensors_header_longer_than_the_file(tmp_path):
  path = str(tmp_path / "short.safetensors")
  with open(path, "wb") as f:
    f.write((1 << 20).to_bytes(8, "little") + b'{"a": {')
  return lambda: warmstart.list_variables(path)


def case_safetensors_offsets_past_the_data(tmp_path):
  path = safetensors_file(tmp_path, {"w": {"dtype": "F32", "shape": [1 << 20],
                                           "data_offsets": [0, 4 << 20]}}, b"\0" * 16)
  return lambda: warmstart.list_variables(path)


def tf2_checkpoint_with_graph(tmp_path, graph):
  """A checkpoint whose object graph tensor holds `graph` (bytes)."""
  return write_checkpoint(tmp_path / "tf2", {
      "_CHECKPOINTABLE_OBJECT_GRAPH": np.array(graph, dtype=object),
      "model/kernel/.ATTRIBUTES/VARIABLE_VALUE": np.ones([3, 2], F)})


def case_damaged_object_graph(tmp_path):
  prefix = tf2_checkpoint_with_graph(tmp_path, b"\x0a\xff\xff\xff\x0f\x12")
  return lambda: warmstart.list_variables(prefix)


def case_object_graph_naming_a_missing_node(tmp_path):
  from tensorflow.core.protobuf import trackable_object_graph_pb2  # pylint: disable=g-import-not-at-top
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.nodes.add().children.add(node_id=99, local_name="model")
  prefix = tf2_checkpoint_with_graph(tmp_path, graph.SerializeToString())
  return lambda: warmstart.list_variables(prefix)


def pickled_npy(tmp_path):
  path = str(tmp_path / "caffe.npy")
  np.save(path, {"conv1": [np.ones((2, 2), F), np.ones(2, F)]}, allow_pickle=True)
  return path


def case_pickled_npy_without_allow_pickle(tmp_path):
  path = pickled_npy(tmp_path)
  return lambda: warmstart.list_variables(path)


def case_truncated_pickled_npy(tmp_path):
  path = pickled_npy(tmp_path)
  truncate(path, os.path.getsize(path) - 20)
  return lambda: warmstart.list_variables(warmstart.Source(path, allow_pickle=True))


def case_torch_layout_for_a_tf_checkpoint(tmp_path):
  prefix = source(tmp_path)
  return lambda: warmstart.resolve_checkpoint(warmstart.Source(prefix, layout="torch"))


def case_convert_to_an_existing_file(tmp_path):
  prefix = source(tmp_path)
  (tmp_path / "out.npz").write_bytes(b"precious")
  return lambda: warmstart.convert(prefix, str(tmp_path / "out.npz"))


def case_convert_strings_to_safetensors(tmp_path):
  prefix = write_checkpoint(tmp_path / "strings", {"vocab": np.array([b"a", b"b"], dtype=object),
                                                   "w": np.ones(2, F)})
  return lambda: warmstart.convert(prefix, str(tmp_path / "out.safetensors"))


CASES = [
    # (case, error type, words the message must contain)
    (case_missing_checkpoint, warmstart.CheckpointNotFoundError, ["model.ckpt-1.index"]),
    (case_directory_without_checkpoint, warmstart.CheckpointNotFoundError,
     ["no checkpoint in directory", "*.index"]),
    (case_truncated_index, warmstart.CheckpointReadError, ["model.ckpt-5"]),
    (case_empty_index, warmstart.CheckpointReadError, ["model.ckpt-5"]),
    (case_truncated_data_shard, warmstart.CheckpointReadError, ["model.ckpt-5"]),
    (case_missing_data_shard, warmstart.CheckpointNotFoundError,
     ["data shard", "is missing"]),
    (case_byte_flipped_data, warmstart.CheckpointReadError, ["model.ckpt-5"]),
    (case_byte_flipped_data_in_diff, warmstart.CheckpointReadError, ["model.ckpt-5"]),
    (case_index_of_another_format, warmstart.CheckpointReadError, ["model.ckpt-5"]),
    (case_wrong_dtype, warmstart.PlanError, ["dtype mismatch", "float64", "float32"]),
    (case_shape_mismatch, warmstart.PlanError, ["(3, 4)", "(3, 2)", "on_shape_mismatch"]),
    (case_invalid_regex, warmstart.PatternError, ["invalid regex", "layer/(kernel"]),
    (case_pattern_matching_nothing, warmstart.PlanError, ["did you mean 'layer/.*'"]),
    (case_unused_rename_rule, warmstart.PlanError, ["was never used"]),
    (case_rename_to_a_name_not_in_checkpoint, warmstart.PlanError,
     ["'dense/bias', which is not in the checkpoint"]),
    (case_conflicting_include_exclude, warmstart.PlanError,
     ["loads none", "excluded by 'layer/.*'"]),
    (case_freeze_pattern_matching_nothing, warmstart.PlanError,
     ["freeze pattern 'dense/.*' matches no model variable"]),
    (case_non_finite_source, warmstart.CheckpointReadError,
     ["NaN or Inf", "layer/kernel (2 of 6 elements)"]),
    (case_unwritable_model_dir, warmstart.WarmStartError, ["cannot be written",
                                                           "not a directory"]),
    (case_saved_model_without_variables, warmstart.CheckpointNotFoundError,
     ["SavedModel without variables"]),
    (case_step_that_does_not_exist, warmstart.CheckpointNotFoundError,
     ["no checkpoint of step 7", "steps there: 5"]),
    (case_state_file_pointing_elsewhere, warmstart.CheckpointNotFoundError,
     ["no checkpoint in directory"]),
    (case_bad_step_value, warmstart.WarmStartError, ["step must be", "'5'"]),
    (case_empty_include, warmstart.PatternError, ["include is empty"]),
    (case_include_of_wrong_type, warmstart.PatternError, ["regex or a list of regexes", "3"]),
    (case_bad_optimizer_state, warmstart.WarmStartError, ["'fresh'", "'reset'"]),
    (case_bad_shape_policy, warmstart.WarmStartError, ["'truncate'", "'skip'"]),
    (case_rename_template_with_missing_group, warmstart.PatternError, ["group \\1"]),
    (case_vocab_for_a_variable_not_loaded, warmstart.PlanError, ["'embedding'"]),
    (case_npz_with_pickled_objects, warmstart.CheckpointReadError, ["objects.npz"]),
    (case_source_of_wrong_type, warmstart.WarmStartError, ["int 42"]),
    (case_negative_tolerance, warmstart.WarmStartError, ["atol", "-1"]),
    (case_truncated_h5, warmstart.CheckpointReadError, ["w.h5"]),
    (case_hdf5_that_is_not_keras_weights, warmstart.CheckpointReadError,
     ["not Keras weights", "images"]),
    (case_h5_weight_linking_to_another_file, warmstart.CheckpointReadError,
     ["ExternalLink", "point outside the file"]),
    (case_h5_weight_larger_than_its_storage, warmstart.CheckpointReadError,
     ["declares 4294967296 bytes", "stores 0"]),
    (case_safetensors_header_longer_than_the_file, warmstart.CheckpointReadError,
     ["short.safetensors"]),
    (case_safetensors_offsets_past_the_data, warmstart.CheckpointReadError,
     ["crafted.safetensors"]),
    (case_damaged_object_graph, warmstart.CheckpointReadError,
     ["object graph", "damaged"]),
    (case_object_graph_naming_a_missing_node, warmstart.CheckpointReadError,
     ["refers to node 99", "1 nodes"]),
    (case_pickled_npy_without_allow_pickle, warmstart.CheckpointReadError,
     ["allow_pickle=True", "caffe.npy"]),
    (case_truncated_pickled_npy, warmstart.CheckpointReadError, ["cannot unpickle"]),
    (case_torch_layout_for_a_tf_checkpoint, warmstart.WarmStartError,
     ["layout='torch'", "TensorFlow's layout already"]),
    (case_convert_to_an_existing_file, warmstart.WarmStartError, ["out.npz exists"]),
    (case_convert_strings_to_safetensors, warmstart.WarmStartError,
     [".safetensors cannot hold string tensors: vocab"]),
]


def snapshot(root):
  """{relative path: (sha256, mtime_ns)} of every file below root."""
  out = {}
  for directory, _, files in os.walk(root):
    for name in files:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = (hashlib.sha256(f.read()).hexdigest(),
                                            os.stat(path).st_mtime_ns)
  return out


@pytest.mark.parametrize("make, error, words", CASES,
                         ids=[c[0].__name__[len("case_"):] for c in CASES])
def test_bad_input(tmp_path, make, error, words):
  call = make(tmp_path)
  before = snapshot(tmp_path)
  with pytest.raises(error) as raised:
    call()
  message = str(raised.value)
  for word in words:
    assert word in message, message
  assert "Traceback" not in message
  assert snapshot(tmp_path) == before


# -- the same inputs through the CLI: exit status 2, one line on stderr, no traceback, with every
# TF_CPP_MIN_LOG_LEVEL (conftest.cli_workers)


def plan_argv(*extra):
  def make(tmp_path):
    return ["plan", "--from", source(tmp_path), "--to", target(tmp_path), *list(extra)]
  return make


def damaged(command, damage):
  """argv for `command` on a source damaged by `damage(prefix)`; diff compares with a target."""
  def make(tmp_path):
    prefix = source(tmp_path)
    other = target(tmp_path)
    damage(prefix)
    return {"ls": ["ls", prefix], "diff": ["diff", prefix, other],
            "plan": ["plan", "--from", prefix, "--to", other]}[command]
  return make


def plan_with_target(tensors):
  def make(tmp_path):
    return ["plan", "--from", source(tmp_path), "--to", target(tmp_path, tensors)]
  return make


def _dir(name, setup):
  def make(tmp_path):
    setup(tmp_path)
    return ["ls", str(tmp_path / name)]
  return make


CLI_CASES = [
    ("missing_checkpoint", lambda p: ["ls", str(p / "nope" / "model.ckpt-1")],
     ["model.ckpt-1.index"]),
    ("directory_without_checkpoint", _dir("empty", lambda p: (p / "empty").mkdir()),
     ["no checkpoint in directory"]),
    ("truncated_index", damaged("ls", lambda q: truncate(q + ".index", 20)), ["model.ckpt-5"]),
    ("empty_index", damaged("ls", lambda q: truncate(q + ".index", 0)), ["model.ckpt-5"]),
    ("truncated_data_shard", damaged("diff", lambda q: truncate(q + ".data-00000-of-00001", 4)),
     ["model.ckpt-5"]),
    ("missing_data_shard", damaged("ls", lambda q: os.remove(q + ".data-00000-of-00001")),
     ["is missing"]),
    ("byte_flipped_data", damaged("plan", lambda q: flip(q + ".data-00000-of-00001", 20)),
     ["layer/kernel"]),
    ("byte_flipped_data_in_diff", damaged("diff", lambda q: flip(q + ".data-00000-of-00001", 3)),
     ["global_step"]),
    ("wrong_dtype", plan_with_target({"layer/kernel": np.ones([3, 2], np.float64),
                                      "layer/bias": np.ones([2], F)}), ["dtype mismatch"]),
    ("shape_mismatch", plan_with_target({"layer/kernel": np.ones([3, 4], F),
                                         "layer/bias": np.ones([2], F)}), ["(3, 4)", "(3, 2)"]),
    ("invalid_regex", plan_argv("--include", "layer/(kernel"), ["invalid regex"]),
    ("pattern_matching_nothing", plan_argv("--include", "layer"), ["did you mean 'layer/.*'"]),
    ("unused_rename_rule", plan_argv("--rename", r"layr/(.*)=layer/\1"), ["never used"]),
    ("rename_to_a_name_not_in_checkpoint", plan_argv("--rename", r"layer/(.*)=dense/\1"),
     ["not in the checkpoint"]),
    ("conflicting_include_exclude", plan_argv("--include", "layer/.*", "--exclude", "layer/.*"),
     ["loads none"]),
    ("bad_optimizer_state", plan_argv("--optimizer_state", "fresh"), ["optimizer_state"]),
    ("bad_shape_policy", plan_argv("--on_shape_mismatch", "truncate"), ["on_shape_mismatch"]),
    ("negative_tolerance", lambda p: ["diff", source(p), source(p), "--atol=-1"], ["atol"]),
    ("state_file_pointing_elsewhere", _dir("moved", lambda p: (
        (p / "moved").mkdir(), (p / "moved" / "checkpoint").write_text(
            'model_checkpoint_path: "/old/place/model.ckpt-5"\n'))),
     ["no checkpoint in directory"]),
    ("npz_with_pickled_objects", lambda p: (
        np.savez(p / "objects.npz", w=np.array([{"a": 1}], dtype=object)),
        ["ls", str(p / "objects.npz")])[1], ["Python objects"]),
    ("unknown_command", lambda p: ["copy", "a", "b"], ["unknown command"]),
    ("truncated_h5", lambda p: (lambda path: (truncate(path, 800), ["ls", path])[1])(
        keras_h5(p)), ["w.h5"]),
    ("damaged_safetensors", lambda p: ["ls", safetensors_file(p, {"w": {
        "dtype": "F32", "shape": [4], "data_offsets": [0, 64]}}, b"\0" * 16)],
     ["crafted.safetensors"]),
    ("damaged_object_graph", lambda p: ["ls", tf2_checkpoint_with_graph(p, b"\x0a\x05\x0a")],
     ["object graph"]),
    ("pickled_npy_without_allow_pickle", lambda p: ["ls", pickled_npy(p)], ["--allow_pickle"]),
    ("torch_layout_for_a_tf_checkpoint", lambda p: ["ls", source(p), "--layout", "torch"],
     ["TensorFlow's layout already"]),
    ("convert_to_an_existing_output", lambda p: (
        (p / "out.npz").write_bytes(b"x"), ["convert", source(p), str(p / "out.npz")])[1],
     ["exists"]),
]


@pytest.mark.parametrize("make, words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_input_through_the_cli(tmp_path, cli_workers, make, words):
  argv = make(tmp_path)
  before = snapshot(tmp_path)
  assert_cli_error(cli_workers, argv, *words)
  assert snapshot(tmp_path) == before

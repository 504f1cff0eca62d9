"""Transfer into another architecture: shape policies, adapters, materialize, pathways.

The model variables get constant (or seeded) initializers, so "the rest keeps its initializer"
is checked exactly; step-0 values come from `warmstart.materialize` (a graph and a session, no
training loop), and one DeepMedic-like case trains through `estimator_from`.
"""
import gc
import glob
import json
import logging
import os
import shutil
import tempfile

import numpy as np
import pytest
import tensorflow as tf
from conftest import input_fn, read, same_bits, write_checkpoint

import warmstart

F = np.float32
INIT = 0.25  # every model variable's constant initializer value


def random(*shape, seed=0):
  return np.random.RandomState(seed).standard_normal(shape).astype(F)


SOURCE = {
    "dense/kernel": random(4, 3), "dense/bias": random(3, seed=1),
    "conv/kernel": random(3, 3, 2, 4, seed=2), "conv/bias": random(4, seed=3),
    "cls/kernel": random(1, 1, 6, 4, seed=4), "ref/kernel": random(5, 2, seed=5),
    "global_step": np.int64(7),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  return write_checkpoint(tmp_path_factory.mktemp("transfer_source"), SOURCE, step=7)


def model_fn(features, labels, mode, params):
  """Variables of the shapes in params['variables'] ({name: shape or (shape, kwargs)})."""
  loss = 0.0 * tf.reduce_sum(features["x"])
  for name, spec in params["variables"].items():
    shape, kwargs = spec if isinstance(spec[-1], dict) else (spec, {})
    kwargs.setdefault("initializer", tf.compat.v1.constant_initializer(INIT))
    variable = tf.compat.v1.get_variable(name, shape, **kwargs)
    loss += tf.reduce_sum(tf.convert_to_tensor(variable))
  train_op = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(
      loss, global_step=tf.compat.v1.train.get_global_step())
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def materialize(tmp_path, source, variables, **kwargs):
  """Materializes a model of `variables`; returns (plan, the step-0 checkpoint prefix)."""
  out_dir = tmp_path / "pretrained"
  plan = warmstart.materialize(model_fn, out_dir=out_dir, warm_start_from=source,
                               input_fn=input_fn(), params={"variables": variables}, **kwargs)
  return plan, tf.train.latest_checkpoint(str(out_dir))


# -- partial --------------------------------------------------------------------------------

def test_partial_copies_the_block_and_keeps_the_initializer(tmp_path, source):
  plan, step0 = materialize(tmp_path, source, {
      "dense/kernel": [6, 2], "dense/bias": [5], "conv/kernel": [3, 3, 2, 8],
      "ref/kernel": ([7, 2], {"use_resource": False}),
  }, include=["dense/.*", "conv/kernel", "ref/kernel"], on_shape_mismatch="partial")
  kernel = read(step0, "dense/kernel")
  assert same_bits(kernel[:4, :2], SOURCE["dense/kernel"][:, :2])  # the model is narrower: 2
  assert same_bits(kernel[4:], np.full([2, 2], INIT, F))
  bias = read(step0, "dense/bias")
  assert same_bits(bias[:3], SOURCE["dense/bias"]) and same_bits(bias[3:], np.full(2, INIT, F))
  conv = read(step0, "conv/kernel")
  assert same_bits(conv[..., :4], SOURCE["conv/kernel"])  # twice as wide: half stays random
  assert same_bits(conv[..., 4:], np.full([3, 3, 2, 4], INIT, F))
  ref = read(step0, "ref/kernel")  # a reference (non-resource) variable
  assert same_bits(ref[:5], SOURCE["ref/kernel"]) and same_bits(ref[5:], np.full([2, 2], INIT, F))

  report = plan.report
  blocks = {e.name: e.detail for e in report.partial}
  assert blocks["conv/kernel"].startswith("block [:, :, :, 0:4] copied")
  assert blocks["dense/kernel"].startswith("block [0:4, 0:2] copied")
  assert "partial from (3, 3, 2, 4): block [:, :, :, 0:4] copied" in str(report)
  data = json.loads(report.to_json())
  [conv_entry] = [e for e in data["partial"] if e["name"] == "conv/kernel"]
  assert conv_entry["source_shape"] == [3, 3, 2, 4] and conv_entry["shape"] == [3, 3, 2, 8]
  assert json.load(open(os.path.join(os.path.dirname(step0), "warmstart_report.json"))) == data


def test_partial_keeps_a_seeded_random_initializer_bit_for_bit(tmp_path, source):
  init = tf.compat.v1.random_normal_initializer(seed=3)
  _, step0 = materialize(tmp_path, source, {"dense/kernel": ([8, 3], {"initializer": init})},
                            include="dense/kernel", on_shape_mismatch="partial")
  with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    expected = session.run(tf.compat.v1.get_variable("dense/kernel", [8, 3],
                                                     initializer=init).initial_value)
  value = read(step0, "dense/kernel")
  assert same_bits(value[:4], SOURCE["dense/kernel"])
  assert same_bits(value[4:], expected[4:])


def test_partial_into_and_from_partitioned_variables(tmp_path, source):
  # A partitioned source: stored in slices.
  whole = random(5, 3, seed=9)
  with tf.Graph().as_default():
    emb = tf.compat.v1.get_variable("emb", [5, 3],
                                    partitioner=tf.compat.v1.fixed_size_partitioner(2))
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run([part.initializer for part in emb])
      for part in emb:
        begin, size = part._save_slice_info.var_offset[0], part._save_slice_info.var_shape[0]
        part.load(whole[begin:begin + size], session)
      sliced = saver.save(session, str(tmp_path / "sliced" / "model.ckpt"))
  assert [n for n, _ in tf.train.list_variables(sliced)] == ["emb"]
  three_parts = {"partitioner": tf.compat.v1.fixed_size_partitioner(3)}
  # Into parts of 2 rows: part 2 (rows 4-5) is outside dense/kernel's [0:4] block.
  plan, step0 = materialize(tmp_path, source, {"dense/kernel": ([6, 3], three_parts),
                                               "dense/bias": ([3], three_parts)},
                            include="dense/.*", on_shape_mismatch="partial")
  kernel = read(step0, "dense/kernel")
  assert same_bits(kernel[:4], SOURCE["dense/kernel"])
  assert same_bits(kernel[4:], np.full([2, 3], INIT, F))
  assert same_bits(read(step0, "dense/bias"), SOURCE["dense/bias"])  # whole, into parts
  assert [e.name for e in plan.report.loaded] == ["dense/kernel", "dense/bias"]
  # From a sliced source into a larger whole variable.
  _, step0 = materialize(tmp_path / "2", sliced, {"emb": [7, 3]}, on_shape_mismatch="partial")
  emb = read(step0, "emb")
  assert same_bits(emb[:5], whole) and same_bits(emb[5:], np.full([2, 3], INIT, F))


@pytest.mark.parametrize("model_shape, words", [
    ([3, 3, 3, 2, 4], ["the ranks differ", "model (3, 3, 3, 2, 4) vs checkpoint 'conv/kernel' "
                       "(3, 3, 2, 4)"]),
    ([5, 5, 2, 8], ["spatial axes", "a 3x3 kernel does not land in a 5x5 one",
                    "model (5, 5, 2, 8) vs checkpoint 'conv/kernel' (3, 3, 2, 4)"]),
], ids=["rank", "spatial"])
def test_partial_refuses_rank_and_spatial_mismatches(tmp_path, source, model_shape, words):
  target = write_checkpoint(tmp_path / "t", {"conv/kernel": np.zeros(model_shape, F)})
  with pytest.raises(warmstart.PlanError) as err:
    warmstart.plan(source, target, on_shape_mismatch="partial")
  for word in [*words, "exclude='conv/kernel'", "adapt={'conv/kernel': fn}"]:
    assert word in str(err.value)


def test_first_matching_policy_wins(tmp_path, source):
  target = write_checkpoint(tmp_path / "t", {
      "dense/kernel": np.zeros([6, 3], F), "conv/kernel": np.zeros([3, 3, 1, 4], F)})
  plan = warmstart.plan(source, target, on_shape_mismatch={
      "conv/.*": "input_channels", "dense/kernel": "skip", ".*": "partial"})
  assert [(e.name, e.policy) for e in plan.report.loaded] == [("conv/kernel", "input_channels")]
  assert [e.name for e in plan.report.skipped] == ["dense/kernel"]


# -- input channels, squeeze, adapt -----------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3, 5])
def test_input_channels(tmp_path, source, channels):
  plan, step0 = materialize(tmp_path, source, {"conv/kernel": [3, 3, channels, 4]},
                            include="conv/kernel", on_shape_mismatch="input_channels")
  w = SOURCE["conv/kernel"].astype(np.float64)
  if channels == 1:
    expected = w.sum(axis=2, keepdims=True)
  else:  # source channels repeated cyclically, scaled by source_in / N
    expected = np.stack([w[:, :, i % 2] for i in range(channels)], axis=2) * 2 / channels
  np.testing.assert_allclose(read(step0, "conv/kernel"), expected, rtol=0, atol=1e-6)
  [entry] = plan.report.adapted
  assert (entry.policy, entry.source_shape, entry.shape) == (
      "input_channels", (3, 3, 2, 4), (3, 3, channels, 4))


def test_input_channels_refuses_other_differences(tmp_path, source):
  target = write_checkpoint(tmp_path / "t", {"conv/kernel": np.zeros([3, 3, 3, 8], F)})
  with pytest.raises(warmstart.PlanError, match=r"only axis -2 .* may differ \(model "
                     r"\(3, 3, 3, 8\) vs checkpoint 'conv/kernel' \(3, 3, 2, 4\)\)"):
    warmstart.plan(source, target, on_shape_mismatch="input_channels")


def test_squeeze_a_1x1_conv_classifier_into_a_dense_kernel(tmp_path, source):
  plan, step0 = materialize(tmp_path, source, {"head/kernel": [6, 4]},
                            rename={"head/kernel": "cls/kernel"}, on_shape_mismatch="squeeze")
  assert same_bits(read(step0, "head/kernel"), SOURCE["cls/kernel"].reshape(6, 4))
  [entry] = plan.report.adapted
  assert (entry.checkpoint_name, entry.source_shape, entry.policy) == (
      "cls/kernel", (1, 1, 6, 4), "squeeze")
  target = write_checkpoint(tmp_path / "t", {"cls/kernel": np.zeros([6, 3], F)})
  with pytest.raises(warmstart.PlanError, match="differ by more than axes of size 1"):
    warmstart.plan(source, target, on_shape_mismatch="squeeze")


def test_adapt_drops_a_background_class(tmp_path, source, monkeypatch):
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the private checkpoint goes
  plan, step0 = materialize(
      tmp_path, source, {"cls/kernel": [1, 1, 6, 3], "dense/kernel": [4, 3]},
      adapt={"cls/kernel": lambda w: w[..., 1:], "dense/kernel": lambda w: w * 2})
  assert same_bits(read(step0, "cls/kernel"), SOURCE["cls/kernel"][..., 1:])
  assert same_bits(read(step0, "dense/kernel"), SOURCE["dense/kernel"] * 2)  # same shape too
  adapted = {e.name: e for e in plan.report.adapted}
  assert adapted["cls/kernel"].source_shape == (1, 1, 6, 4)
  assert adapted["cls/kernel"].shape == (1, 1, 6, 3)
  assert adapted["cls/kernel"].detail == "adapt['cls/kernel']"
  assert "adapt from (1, 1, 6, 4): adapt['cls/kernel']" in str(plan.report)
  assert [e["name"] for e in json.loads(plan.report.to_json())["adapted"]] == [
      "cls/kernel", "dense/kernel"]
  # The adapted values reached the graph through a private checkpoint, gone with the graph.
  gc.collect()  # graphs are freed by the cycle collector
  assert sorted(os.listdir(tmp_path)) == ["pretrained"]
  # A dry run computes adapted values but writes nothing.
  target = write_checkpoint(tmp_path / "t", {"cls/kernel": np.zeros([1, 1, 6, 3], F)})
  plan = warmstart.plan(source, target, adapt={"cls/.*": lambda w: w[..., :3]})
  assert same_bits(plan.adapted["cls/kernel"], SOURCE["cls/kernel"][..., :3])
  assert sorted(os.listdir(tmp_path)) == ["pretrained", "t"]


@pytest.mark.parametrize("adapt, words", [
    ({"cls/kernel": lambda w: w}, ["adapt['cls/kernel'] returned shape (1, 1, 6, 4) for "
                                   "'cls/kernel' but the model variable is (1, 1, 6, 3)"]),
    ({"cls/kernel": lambda w: w[..., 1:] * 1j}, ["returned dtype complex64",
                                                  "astype(np.float32)"]),
    ({"cls/kernel": lambda w: w.nope}, ["raised AttributeError for 'cls/kernel'"]),
    ({"cls/kernel": lambda w: w[..., 1:], "clz/.*": lambda w: w},
     ["adapt pattern 'clz/.*' matches no model variable", "'cls/kernel'"]),
], ids=["shape", "dtype", "raises", "unused"])
def test_adapt_errors(tmp_path, source, adapt, words):
  target = write_checkpoint(tmp_path / "t", {"cls/kernel": np.zeros([1, 1, 6, 3], F)})
  with pytest.raises(warmstart.PlanError) as err:
    warmstart.plan(source, target, adapt=adapt)
  for word in words:
    assert word in str(err.value)


def test_adapted_values_are_never_graph_constants_and_restores_are_batched(tmp_path):
  big = random(512, 256)  # 512 KiB
  source = write_checkpoint(tmp_path / "big", {"w": big, **{
      name: SOURCE[name] for name in ("dense/kernel", "dense/bias", "ref/kernel")}})
  model_dir = str(tmp_path / "m")
  estimator = warmstart.estimator_from(
      model_fn, model_dir=model_dir, warm_start_from=source, adapt={"w": lambda w: w[:, ::2]},
      params={"variables": {"w": [512, 128], "dense/kernel": [4, 3], "dense/bias": [3],
                            "ref/kernel": ([5, 2], {"use_resource": False})}})
  estimator.train(input_fn(), steps=1)
  step0 = os.path.join(model_dir, "model.ckpt-0")
  assert same_bits(read(step0, "w"), big[:, ::2])
  for name in ("dense/kernel", "dense/bias", "ref/kernel"):
    assert same_bits(read(step0, name), SOURCE[name])
  metas = glob.glob(os.path.join(model_dir, "*.meta"))
  assert metas and max(os.path.getsize(m) for m in metas) < 64 << 10
  meta = tf.compat.v1.MetaGraphDef()
  meta.ParseFromString(open(metas[0], "rb").read())
  restores = [n for n in meta.graph_def.node
              if n.op == "RestoreV2" and n.name.startswith("warmstart/")]
  # One op reads the source's three tensors, one the adapted value from its checkpoint.
  assert sorted(len(n.attr["dtypes"].list.type) for n in restores) == [1, 3]


# -- materialize ----------------------------------------------------------------------------

def test_materialize_writes_a_step0_model_dir_and_refuses_to_overwrite(tmp_path, source):
  out_dir = tmp_path / "pretrained"
  plan, step0 = materialize(tmp_path, source, {"dense/kernel": [4, 3], "dense/bias": [3]},
                            include="dense/.*")
  assert step0 == str(out_dir / "model.ckpt-0")
  assert sorted(os.listdir(out_dir)) == [
      "checkpoint", "model.ckpt-0.data-00000-of-00001", "model.ckpt-0.index",
      "warmstart_report.json"]
  assert read(step0, "global_step") == 0
  report = warmstart.diff(source, out_dir, include="dense/.*")
  assert report.check(expect_same=["dense/.*"]) == []
  # An out_dir holding a checkpoint is refused and left as it was.
  before = {p: open(p, "rb").read() for p in glob.glob(str(out_dir / "*"))}
  with pytest.raises(warmstart.WarmStartError, match="already holds a checkpoint "
                     r"\(model.ckpt-0.index\); materialize never writes over one"):
    materialize(tmp_path, source, {"dense/kernel": [4, 3]}, include="dense/.*")
  assert {p: open(p, "rb").read() for p in glob.glob(str(out_dir / "*"))} == before
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "notes.txt").write_text("mine")
  with pytest.raises(warmstart.WarmStartError, match=r"is not empty \(it holds notes.txt\)"):
    warmstart.materialize(model_fn, out_dir=tmp_path / "full", warm_start_from=source,
                          input_fn=input_fn(), params={"variables": {"dense/bias": [3]}})
  # Training from it as a model_dir resumes at its step 0.
  estimator = tf.estimator.Estimator(model_fn, str(out_dir),
                                     params={"variables": {"dense/kernel": [4, 3],
                                                           "dense/bias": [3]}})
  estimator.train(input_fn(), steps=1)
  assert estimator.get_variable_value("global_step") == 1
  assert plan.report.loaded[0].name == "dense/kernel"


def test_materialize_interrupted_leaves_nothing_behind(tmp_path, source, monkeypatch):
  def interrupted(*args):
    raise KeyboardInterrupt  # as if the process stopped right before publishing the directory
  monkeypatch.setattr(os, "rename", interrupted)
  with pytest.raises(KeyboardInterrupt):
    materialize(tmp_path, source, {"dense/bias": [3]}, include="dense/.*")
  assert os.listdir(tmp_path) == []
  # Killed (no clean-up) at the same point: the files are all in a hidden temporary directory.
  monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)
  with pytest.raises(KeyboardInterrupt):
    materialize(tmp_path, source, {"dense/bias": [3]}, include="dense/.*")
  [left] = os.listdir(tmp_path)
  assert left.startswith(".pretrained.tmp-")
  assert glob.glob(str(tmp_path / left / "model.ckpt-0.*"))
  for where in (tmp_path / "pretrained", tmp_path):
    with pytest.raises(warmstart.CheckpointNotFoundError):
      warmstart.resolve_checkpoint(where)
  with pytest.raises(warmstart.WarmStartError, match="materialize writes a local directory"):
    warmstart.materialize(model_fn, out_dir="gs://bucket/b", warm_start_from=source,
                          input_fn=input_fn(), params={"variables": {}})


# -- a DeepMedic-like transfer: more, wider and deeper pathways --------------------------------

def pathways_fn(features, labels, mode, params):
  """Pathways of 3D convs ('dm/path_<p>/conv<i>'), an FC layer and a classifier."""
  x = features["x"]
  outputs = []
  for pathway in params["pathways"]:
    h = x if pathway == "normal" else tf.nn.avg_pool3d(x, 2, 1, "SAME")
    channels = params["channels"]
    for depth, width in enumerate(params["widths"], 1):
      with tf.compat.v1.variable_scope("dm/path_%s/conv%d" % (pathway, depth)):
        kernel = tf.compat.v1.get_variable("kernel", [3, 3, 3, channels, width],
                                           initializer=tf.compat.v1.constant_initializer(0.05))
        bias = tf.compat.v1.get_variable("bias", [width],
                                         initializer=tf.compat.v1.zeros_initializer())
      h = tf.nn.relu(tf.nn.conv3d(h, kernel, [1] * 5, "SAME") + bias)
      channels = width
    outputs.append(tf.reduce_mean(h, axis=[1, 2, 3]))
  h = tf.concat(outputs, axis=1)
  for name, units in (("fc1", 6), ("cls", params["classes"])):
    h = tf.compat.v1.layers.dense(h, units, name="dm/" + name,
                                  kernel_initializer=tf.compat.v1.constant_initializer(0.1))
  loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, h)
  train_op = tf.compat.v1.train.GradientDescentOptimizer(0.5).minimize(
      loss, global_step=tf.compat.v1.train.get_global_step())
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def volumes(channels, classes):
  def fn():
    rng = np.random.RandomState(0)
    x = rng.rand(8, 4, 4, 4, channels).astype(F)
    y = (x.mean(axis=(1, 2, 3, 4)) * classes).astype(np.int32).clip(0, classes - 1)
    return tf.data.Dataset.from_tensor_slices(({"x": x}, y)).batch(4).repeat()
  return fn


@pytest.fixture(scope="module")
def model_a(tmp_path_factory):
  """Model A: 2 pathways of 3 layers (2 -> 4 -> 4 -> 4 channels), fc1 8 -> 6, 2 classes."""
  tensors = {"global_step": np.int64(100), "dm/fc1/kernel": random(8, 6, seed=20),
             "dm/fc1/bias": random(6, seed=21), "dm/cls/kernel": random(6, 2, seed=22),
             "dm/cls/bias": random(2, seed=23)}
  for p, pathway in enumerate(("normal", "sub1")):
    for depth, (cin, cout) in enumerate([(2, 4), (4, 4), (4, 4)], 1):
      tensors["dm/path_%s/conv%d/kernel" % (pathway, depth)] = random(3, 3, 3, cin, cout,
                                                                       seed=p * 10 + depth)
      tensors["dm/path_%s/conv%d/bias" % (pathway, depth)] = random(cout, seed=50 + p * 10 + depth)
  return write_checkpoint(tmp_path_factory.mktemp("model_a"), tensors, step=100), tensors


B_PARAMS = {"pathways": ["normal", "sub1", "sub2"], "channels": 3, "widths": [4, 8, 8, 8],
            "classes": 3}
TRANSFER = dict(
    # DeepMedic's `-layers 1 2` and the FC layer: only some depths of A.
    include=[r"dm/path_\w+/conv[12]/.*", r"dm/fc1/.*"],
    # B's extra pathway reads A's last one.
    rename={r"dm/path_sub2/(.*)": r"dm/path_sub1/\1"},
    on_shape_mismatch={r".*/conv1/kernel": "input_channels", r".*": "partial"})


def test_wider_deeper_model_with_more_pathways(tmp_path, model_a):
  source, a = model_a
  freeze = r"dm/path_\w+/conv[12]/.*"  # layers 1-2 of every pathway
  model_dir = str(tmp_path / "b")
  estimator = warmstart.estimator_from(pathways_fn, model_dir=model_dir, warm_start_from=source,
                                       params=B_PARAMS, freeze=freeze, **TRANSFER)
  estimator.train(volumes(3, 3), steps=2)
  step0, after = os.path.join(model_dir, "model.ckpt-0"), os.path.join(model_dir, "model.ckpt-2")
  for pathway, a_pathway in (("normal", "normal"), ("sub1", "sub1"), ("sub2", "sub1")):
    b_scope, a_scope = "dm/path_%s/" % pathway, "dm/path_%s/" % a_pathway
    w = a[a_scope + "conv1/kernel"].astype(np.float64)  # 2 input channels -> 3
    expected = np.stack([w[..., i % 2, :] for i in range(3)], axis=-2) * 2 / 3
    np.testing.assert_allclose(read(step0, b_scope + "conv1/kernel"), expected, atol=1e-6)
    assert same_bits(read(step0, b_scope + "conv1/bias"), a[a_scope + "conv1/bias"])
    kernel = read(step0, b_scope + "conv2/kernel")  # twice as wide
    assert same_bits(kernel[..., :4], a[a_scope + "conv2/kernel"])
    assert same_bits(kernel[..., 4:], np.full([3, 3, 3, 4, 4], 0.05, F))
    for depth in (3, 4):  # not transferred (layer 3 of A is left out; B is deeper)
      assert same_bits(read(step0, b_scope + "conv%d/kernel" % depth),
                       np.full([3, 3, 3, 8, 8], 0.05, F))
    for name in ("conv1/kernel", "conv1/bias", "conv2/kernel", "conv2/bias"):  # frozen
      assert same_bits(read(after, b_scope + name), read(step0, b_scope + name)), name
    assert not same_bits(read(after, b_scope + "conv3/kernel"), read(step0, b_scope + "conv3/kernel"))
  fc1 = read(step0, "dm/fc1/kernel")  # 2 pathways x 4 features of A, 3 x 8 in B
  assert same_bits(fc1[:8], a["dm/fc1/kernel"]) and same_bits(fc1[8:], np.full([16, 6], 0.1, F))
  assert same_bits(read(step0, "dm/cls/kernel"), np.full([6, 3], 0.1, F))  # left at init
  assert not same_bits(read(after, "dm/fc1/kernel"), fc1)
  report = json.load(open(os.path.join(model_dir, "warmstart_report.json")))
  assert len(report["frozen"]) == 12 and len(report["partial"]) == 7
  assert {e["name"] for e in report["renamed"]} == {
      "dm/path_sub2/conv%d/%s" % (d, n) for d in (1, 2) for n in ("kernel", "bias")}


def test_deeper_model_reports_its_extra_layers_missing(tmp_path, model_a):
  source, _ = model_a
  plan = warmstart.plan(source, pathways_fn, params=B_PARAMS, input_fn=volumes(3, 3),
                        **dict(TRANSFER, include=[r"dm/path_\w+/conv\d/.*", r"dm/fc1/.*"]))
  assert sorted(e.name for e in plan.report.missing) == sorted(
      "dm/path_%s/conv4/%s" % (p, n) for p in B_PARAMS["pathways"] for n in ("kernel", "bias"))
  assert "dm/path_sub2/conv3/kernel" in {e.name for e in plan.report.partial}


def test_freeze_true_warns_about_partially_copied_variables(source, caplog):
  with caplog.at_level(logging.WARNING, logger="warmstart"):
    plan = warmstart.plan(source, model_fn, include="dense/bias", freeze=True,
                          on_shape_mismatch="partial",
                          params={"variables": {"dense/bias": [5], "dense/kernel": [4, 3]}},
                          input_fn=input_fn())
  assert plan.report.frozen == ["dense/bias"]
  [warning] = plan.report.warnings
  assert "freeze=True freezes 'dense/bias', of which only the block [0:3] was copied" in warning
  assert warning in caplog.text

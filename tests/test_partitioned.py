"""Partitioned variables: warm-started and frozen as one logical variable, in both directions.

Sources and targets made with `fixed_size_partitioner` / `min_max_variable_partitioner`, with
different partition counts on the two sides, and partitioned <-> whole.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import register_source, same_bits

import warmstart
from warmstart import _bundle

ROWS, DIM = 6, 2
EMB = np.arange(ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM) * np.float32(1.37)
W = np.full([DIM, 1], 0.5, np.float32)

PARTITIONERS = {
    "whole": None,
    "fixed2": lambda: tf.compat.v1.fixed_size_partitioner(2),
    "fixed3": lambda: tf.compat.v1.fixed_size_partitioner(3),
    # 48 bytes in slices of at least 16: three parts.
    "minmax3": lambda: tf.compat.v1.min_max_variable_partitioner(max_partitions=4,
                                                                 min_slice_size=16),
}
PARTS = {"whole": 0, "fixed2": 2, "fixed3": 3, "minmax3": 3}


def _emb(partitioning, initializer=None):
  partitioner = PARTITIONERS[partitioning]
  return tf.compat.v1.get_variable("emb", None if initializer is not None else [ROWS, DIM],
                                   initializer=initializer,
                                   partitioner=partitioner() if partitioner else None)


def model_fn(features, labels, mode, params):
  """emb (partitioned as params say) -> lookup -> w; SGD, or Momentum (slots of the parts)."""
  del features, labels
  emb = _emb(params["emb"])
  w = tf.compat.v1.get_variable("w", [DIM, 1])
  loss = tf.reduce_sum(tf.matmul(tf.nn.embedding_lookup(emb, [0, 2, 5]), w))
  optimizer = (tf.compat.v1.train.MomentumOptimizer(0.1, 0.9) if params.get("momentum")
               else tf.compat.v1.train.GradientDescentOptimizer(0.1))
  var_list = None
  if params.get("var_list") == "all":  # every part explicitly, frozen or not
    var_list = [*([emb] if isinstance(emb, tf.Variable) else list(emb)), w]
  train_op = optimizer.minimize(loss, global_step=tf.compat.v1.train.get_global_step(),
                                var_list=var_list)
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def input_fn():
  return tf.data.Dataset.from_tensors(({"x": tf.zeros([1])}, tf.zeros([1]))).repeat()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """{partitioning: prefix} of checkpoints holding EMB (saved as slices when partitioned)."""
  directory = tmp_path_factory.mktemp("partitioned_sources")
  prefixes = {}
  for partitioning in ("whole", "fixed2", "minmax3"):
    with tf.Graph().as_default():
      _emb(partitioning, initializer=tf.constant(EMB))
      tf.compat.v1.get_variable("w", initializer=tf.constant(W))
      saver = tf.compat.v1.train.Saver()
      with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        prefix = saver.save(session, str(directory / partitioning / "model.ckpt"),
                            write_meta_graph=False)
    assert len(_bundle.read_index(prefix).slices.get("emb", ())) == PARTS[partitioning]
    register_source(prefix, keep=True)
    prefixes[partitioning] = prefix
  return prefixes


@pytest.mark.parametrize("source, target, freeze", [
    ("whole", "fixed2", True),
    ("fixed2", "whole", True),
    ("fixed2", "fixed3", "emb"),
    ("minmax3", "fixed2", True),
    ("fixed2", "minmax3", ["em.*"]),
])
def test_frozen_logical_tensor_is_bit_identical(tmp_path, sources, source, target, freeze):
  model_dir = str(tmp_path / "model")
  # freeze=True freezes what is loaded: then only emb is, and w trains from its initializer.
  include = "emb" if freeze is True else ".*"
  estimator = warmstart.estimator_from(
      model_fn, model_dir=model_dir, warm_start_from=sources[source], include=include,
      freeze=freeze, params={"emb": target})
  estimator.train(input_fn, steps=2)
  prefix = tf.train.latest_checkpoint(model_dir)
  assert len(_bundle.read_index(prefix).slices.get("emb", ())) == PARTS[target]
  assert same_bits(estimator.get_variable_value("emb"), EMB)
  assert same_bits(estimator.get_variable_value("global_step"), np.int64(2))
  assert not np.array_equal(estimator.get_variable_value("w"), W)  # trained
  with open(os.path.join(model_dir, "warmstart_report.json")) as f:
    report = json.load(f)
  assert report["frozen"] == ["emb"]
  loaded = [("emb", [ROWS, DIM])] + ([] if freeze is True else [("w", [DIM, 1])])
  assert [(e["name"], e["shape"]) for e in report["loaded"]] == loaded


def test_trainable_parts_load_and_train_with_their_slots(tmp_path, sources):
  """Not frozen: every part loads its slice and trains (Momentum slots are parts too)."""
  estimator = warmstart.estimator_from(
      model_fn, model_dir=str(tmp_path / "model"), warm_start_from=sources["fixed2"],
      include="emb", params={"emb": "fixed3", "momentum": True})
  estimator.train(input_fn, steps=1)
  trained = estimator.get_variable_value("emb")
  assert "emb/Momentum" in estimator.get_variable_names()
  # SGD-with-momentum's first step moves exactly the looked-up rows; the others are the source's.
  assert same_bits(trained[[1, 3, 4]], EMB[[1, 3, 4]])
  assert not np.array_equal(trained[[0, 2, 5]], EMB[[0, 2, 5]])


def test_guard_catches_a_train_op_writing_a_frozen_part(sources):
  with pytest.raises(warmstart.FreezeError, match="'emb'.*emb/part_"):
    warmstart.plan(sources["whole"], model_fn, freeze="emb", input_fn=input_fn,
                   params={"emb": "fixed2", "var_list": "all"})


def test_dry_run_decides_each_logical_variable_once(sources):
  plan = warmstart.plan(sources["fixed2"], model_fn, freeze=True, include="emb",
                        input_fn=input_fn, params={"emb": "fixed3", "momentum": True})
  assert [a.name for a in plan.assignments] == ["emb"]
  assert plan.report.frozen == ["emb"]
  scheduled = warmstart.plan(sources["fixed2"], model_fn, input_fn=input_fn,
                             params={"emb": "fixed3"}, unfreeze_at={"emb": 5},
                             lr_multipliers={"w": 0.5})
  assert scheduled.report.unfreeze_at == {"emb": 5}
  assert scheduled.report.lr_multipliers == {"w": 0.5}
  assert scheduled.report.frozen == []


def test_parts_stay_until_their_unfreeze_step(tmp_path, sources):
  estimator = warmstart.estimator_from(
      model_fn, model_dir=str(tmp_path / "model"), warm_start_from=sources["fixed2"],
      freeze=True, unfreeze_at={"emb": 2}, params={"emb": "fixed3", "momentum": True})
  estimator.train(input_fn, steps=1)
  assert same_bits(estimator.get_variable_value("emb"), EMB)
  assert not np.any(estimator.get_variable_value("emb/Momentum"))  # the slots wait too
  estimator.train(input_fn, steps=2)
  assert not np.array_equal(estimator.get_variable_value("emb"), EMB)

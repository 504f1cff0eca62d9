"""Warm starts through real Estimators: settings(), estimator_from(), freeze()."""
import glob
import json
import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import input_fn, mlp_model_fn, read, same_bits, train, write_checkpoint

import warmstart

HIDDEN = ["mnist/hidden/kernel", "mnist/hidden/bias"]


def trained_values(prefix, names):
  return {n: read(prefix, n) for n in names}


# -- batch norm statistics -------------------------------------------------------------------

def test_plain_warm_start_settings_leave_batch_norm_statistics(tmp_path, bn_model):
  # The documented TF pitfall: the string form only covers TRAINABLE_VARIABLES.
  step0 = _step0_values(tmp_path, {"batch_norm": True, "optimizer": "sgd"},
                        tf.estimator.WarmStartSettings(bn_model, ".*"))
  assert same_bits(step0["mnist/bn/gamma"], read(bn_model, "mnist/bn/gamma"))
  assert same_bits(step0["mnist/bn/moving_mean"], np.zeros(8, np.float32))
  assert same_bits(step0["mnist/bn/moving_variance"], np.ones(8, np.float32))


def test_ours_warm_starts_batch_norm_statistics(tmp_path, bn_model):
  step0 = _step0_values(tmp_path, {"batch_norm": True, "optimizer": "sgd"},
                        warmstart.settings(bn_model))
  for name in ("mnist/bn/moving_mean", "mnist/bn/moving_variance", "mnist/bn/gamma"):
    assert same_bits(step0[name], read(bn_model, name)), name


def _step0_values(model_dir, params, warm_start_from):
  """The variables' values right after initialization (the step-0 checkpoint)."""
  estimator = tf.estimator.Estimator(
      mlp_model_fn, str(model_dir), params=params, warm_start_from=warm_start_from,
      config=tf.estimator.RunConfig(tf_random_seed=1, save_checkpoints_steps=1000))
  estimator.train(input_fn(), steps=1)
  prefix = os.path.join(str(model_dir), "model.ckpt-0")
  return {n: read(prefix, n) for n, _ in tf.train.list_variables(prefix)}


# -- optimizer state -------------------------------------------------------------------------

def test_reset_starts_at_step_zero_with_fresh_slots(tmp_path, base_model):
  step0 = _step0_values(tmp_path, {"optimizer": "adam"}, warmstart.settings(base_model))
  assert step0["global_step"] == 0
  assert not np.any(step0["mnist/hidden/kernel/Adam"])  # Adam's m starts at zero
  assert step0["beta1_power"] == np.float32(0.9)
  assert same_bits(step0["mnist/hidden/kernel"], read(base_model, "mnist/hidden/kernel"))
  estimator = tf.estimator.Estimator(mlp_model_fn, str(tmp_path), params={"optimizer": "adam"})
  assert estimator.get_variable_value("global_step") == 1  # trained from 0, one step


def test_keep_carries_slots_and_step(tmp_path, base_model):
  step_of_base = read(base_model, "global_step")
  estimator = tf.estimator.Estimator(
      mlp_model_fn, str(tmp_path), params={"optimizer": "adam"},
      warm_start_from=warmstart.settings(base_model, optimizer_state="keep"))
  estimator.train(input_fn(), steps=2)
  assert estimator.get_variable_value("global_step") == step_of_base + 2
  first = tf.train.load_checkpoint(os.path.join(str(tmp_path), "model.ckpt-%d" % step_of_base))
  for name in ("mnist/hidden/kernel/Adam", "mnist/hidden/kernel/Adam_1", "beta1_power"):
    assert same_bits(first.get_tensor(name), read(base_model, name)), name


# -- settings() with a canned estimator ------------------------------------------------------

def test_canned_dnn_classifier_with_other_class_count(tmp_path):
  columns = [tf.feature_column.numeric_column("x", shape=[6])]
  base = tf.estimator.DNNClassifier([8], columns, n_classes=3, model_dir=str(tmp_path / "a"))
  base.train(input_fn(classes=3), steps=5)
  ws = warmstart.settings(str(tmp_path / "a"), exclude="dnn/logits/.*")
  assert isinstance(ws, tf.estimator.WarmStartSettings)
  new = tf.estimator.DNNClassifier([8], columns, n_classes=5, model_dir=str(tmp_path / "b"),
                                   warm_start_from=ws)
  new.train(input_fn(classes=5), steps=1)
  step0 = tf.train.load_checkpoint(str(tmp_path / "b" / "model.ckpt-0"))
  base_ckpt = tf.train.latest_checkpoint(str(tmp_path / "a"))
  for name in ("dnn/hiddenlayer_0/kernel", "dnn/hiddenlayer_0/bias"):
    assert same_bits(step0.get_tensor(name), read(base_ckpt, name))
  assert step0.get_tensor("dnn/logits/kernel").shape == (8, 5)
  assert step0.get_tensor("global_step") == 0


def test_canned_dnn_gets_wider_through_settings(tmp_path):
  # 8 -> 12 hidden units and 3 -> 4 classes: the kernel's block is copied, the rest keeps its
  # initializer; the logits come from adapt functions (a new class of bias 0, a fresh kernel).
  columns = [tf.feature_column.numeric_column("x", shape=[6])]
  base = tf.estimator.DNNClassifier([8], columns, n_classes=3, model_dir=str(tmp_path / "a"))
  base.train(input_fn(classes=3), steps=5)
  base_ckpt = tf.train.latest_checkpoint(str(tmp_path / "a"))
  ws = warmstart.settings(
      str(tmp_path / "a"), include="dnn/.*",
      on_shape_mismatch={"dnn/hiddenlayer_0/.*": "partial"},
      adapt={"dnn/logits/kernel": lambda w: np.zeros([12, 4], w.dtype),
             "dnn/logits/bias": lambda b: np.append(b, b.dtype.type(0))})
  wider = tf.estimator.DNNClassifier([12], columns, n_classes=4, model_dir=str(tmp_path / "b"),
                                     warm_start_from=ws)
  wider.train(input_fn(classes=4), steps=1)
  step0 = tf.train.load_checkpoint(str(tmp_path / "b" / "model.ckpt-0"))
  assert same_bits(step0.get_tensor("dnn/hiddenlayer_0/kernel")[:, :8],
                   read(base_ckpt, "dnn/hiddenlayer_0/kernel"))
  assert same_bits(step0.get_tensor("dnn/hiddenlayer_0/bias")[:8],
                   read(base_ckpt, "dnn/hiddenlayer_0/bias"))
  assert step0.get_tensor("dnn/hiddenlayer_0/bias")[8:].tolist() == [0.0] * 4  # its initializer
  assert same_bits(step0.get_tensor("dnn/logits/bias"),
                   np.append(read(base_ckpt, "dnn/logits/bias"), np.float32(0)))
  assert same_bits(step0.get_tensor("dnn/logits/kernel"), np.zeros([12, 4], np.float32))


def test_settings_errors_surface_at_graph_build(tmp_path, base_model):
  estimator = tf.estimator.Estimator(
      mlp_model_fn, str(tmp_path), params={},
      warm_start_from=warmstart.settings(base_model, include="mnist/hidden"))
  with pytest.raises(warmstart.PlanError, match="did you mean 'mnist/hidden/.*'"):
    estimator.train(input_fn(), steps=1)


def test_settings_errors_for_bad_source_are_immediate(tmp_path):
  with pytest.raises(warmstart.CheckpointNotFoundError):
    warmstart.settings(str(tmp_path / "missing"))


# -- freeze ----------------------------------------------------------------------------------

@pytest.mark.parametrize("layers", ["get_variable", "v1", "keras"])
def test_estimator_from_freezes_what_it_loaded(tmp_path, base_model, layers):
  base = tf.train.latest_checkpoint(base_model)  # built with v1 layers; the names are the same
  estimator = warmstart.estimator_from(
      mlp_model_fn, model_dir=str(tmp_path), warm_start_from=base_model,
      include="mnist/hidden/.*", freeze=True, params={"layers": layers, "deeper": True})
  estimator.train(input_fn(), steps=5)
  after = tf.train.latest_checkpoint(str(tmp_path))
  assert after.endswith("-5")
  for name in HIDDEN:
    assert same_bits(read(after, name), read(base, name)), name
  # The new layers trained.
  report = json.load(open(os.path.join(str(tmp_path), "warmstart_report.json")))
  assert sorted(report["frozen"]) == sorted(HIDDEN)
  step0 = tf.train.load_checkpoint(os.path.join(str(tmp_path), "model.ckpt-0"))
  assert not same_bits(read(after, "mnist/hidden2/kernel"), step0.get_tensor("mnist/hidden2/kernel"))


@pytest.mark.parametrize("layers", ["get_variable", "v1", "keras"])
def test_freeze_model_fn(tmp_path, layers):
  model_fn = warmstart.freeze(mlp_model_fn, "mnist/hidden/.*")
  train(tmp_path, {"layers": layers}, steps=3, model_fn=model_fn)
  step0 = os.path.join(str(tmp_path), "model.ckpt-0")
  after = tf.train.latest_checkpoint(str(tmp_path))
  for name in HIDDEN:
    assert same_bits(read(after, name), read(step0, name)), name
  assert not same_bits(read(after, "mnist/logits/kernel"), read(step0, "mnist/logits/kernel"))


def test_freeze_canned_estimator(tmp_path):
  columns = [tf.feature_column.numeric_column("x", shape=[6])]
  canned = tf.estimator.DNNClassifier([8], columns, model_dir=str(tmp_path),
                                      config=tf.estimator.RunConfig(tf_random_seed=1))
  frozen = warmstart.freeze(canned, "dnn/hiddenlayer_0/.*")
  assert isinstance(frozen, tf.estimator.Estimator) and frozen.model_dir == str(tmp_path)
  frozen.train(input_fn(), steps=3)
  step0 = os.path.join(str(tmp_path), "model.ckpt-0")
  after = tf.train.latest_checkpoint(str(tmp_path))
  for name in ("dnn/hiddenlayer_0/kernel", "dnn/hiddenlayer_0/bias"):
    assert same_bits(read(after, name), read(step0, name)), name
  assert not same_bits(read(after, "dnn/logits/kernel"), read(step0, "dnn/logits/kernel"))


def test_warm_start_and_freeze_a_canned_estimator(tmp_path):
  columns = [tf.feature_column.numeric_column("x", shape=[6])]
  base = tf.estimator.DNNClassifier([8], columns, model_dir=str(tmp_path / "a"))
  base.train(input_fn(), steps=5)
  new = warmstart.estimator_from(
      tf.estimator.DNNClassifier([8], columns), model_dir=str(tmp_path / "b"),
      warm_start_from=str(tmp_path / "a"), include="dnn/hiddenlayer_0/.*", freeze=True)
  new.train(input_fn(), steps=3)
  source = tf.train.latest_checkpoint(str(tmp_path / "a"))
  after = tf.train.latest_checkpoint(str(tmp_path / "b"))
  for name in ("dnn/hiddenlayer_0/kernel", "dnn/hiddenlayer_0/bias"):
    assert same_bits(read(after, name), read(source, name)), name
  assert not same_bits(read(after, "dnn/logits/bias"), read(source, "dnn/logits/bias"))


def test_explicit_var_list_updating_a_frozen_variable_is_an_error(tmp_path):
  model_fn = warmstart.freeze(mlp_model_fn, "mnist/hidden/kernel")
  with pytest.raises(warmstart.FreezeError) as err:
    train(tmp_path, {"layers": "get_variable", "var_list": "all", "optimizer": "sgd"},
          steps=1, model_fn=model_fn)
  message = str(err.value)
  assert "frozen variable 'mnist/hidden/kernel'" in message
  assert "ResourceApplyGradientDescent" in message or "ApplyGradientDescent" in message


def test_freeze_guard_names_every_frozen_variable_written(tmp_path):
  model_fn = warmstart.freeze(mlp_model_fn, "mnist/(hidden|logits)/kernel")
  with pytest.raises(warmstart.FreezeError) as err:
    train(tmp_path, {"layers": "get_variable", "var_list": "all", "optimizer": "momentum"},
          steps=1, model_fn=model_fn)
  message = str(err.value)
  assert message.startswith("the train_op still updates 2 frozen variables:")
  for name in ("mnist/hidden/kernel", "mnist/logits/kernel"):
    assert re.search(r"frozen variable '%s': op '[^']*%s[^']*' \((Resource)?ApplyMomentum\) "
                     r"writes it" % (name, name), message), message


def test_keras_optimizer_on_a_list_holding_a_frozen_variable_is_an_error(tmp_path):
  def model_fn(features, labels, mode):
    layer = tf.keras.layers.Dense(2, name="dense")
    logits = layer(features["x"])
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    optimizer = tf.keras.optimizers.legacy.SGD(0.1)
    optimizer.iterations = tf.compat.v1.train.get_or_create_global_step()
    # layer.weights lists the frozen kernel too (unlike layer.trainable_weights).
    train_op = optimizer.get_updates(loss, layer.weights)[0]
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)
  frozen = warmstart.freeze(model_fn, "dense/kernel")
  with pytest.raises(warmstart.FreezeError, match="frozen variable 'dense/kernel'"):
    tf.estimator.Estimator(frozen, str(tmp_path)).train(input_fn(), steps=1)


def test_keras_trainable_variables_honour_freeze(tmp_path):
  seen = {}

  def model_fn(features, labels, mode):
    model = tf.keras.Sequential([tf.keras.layers.Dense(4, name="a"),
                                 tf.keras.layers.Dense(2, name="b")])
    logits = model(features["x"])
    seen["trainable"] = [v.name for v in model.trainable_variables]
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    optimizer = tf.keras.optimizers.legacy.SGD(0.1)
    optimizer.iterations = tf.compat.v1.train.get_or_create_global_step()
    train_op = optimizer.get_updates(loss, model.trainable_variables)[0]
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)
  tf.estimator.Estimator(warmstart.freeze(model_fn, "sequential/a/.*"), str(tmp_path)).train(
      input_fn(), steps=2)
  assert seen["trainable"] == ["sequential/b/kernel:0", "sequential/b/bias:0"]
  step0, after = os.path.join(str(tmp_path), "model.ckpt-0"), os.path.join(str(tmp_path),
                                                                          "model.ckpt-2")
  assert same_bits(read(step0, "sequential/a/kernel"), read(after, "sequential/a/kernel"))


def test_freeze_pattern_matching_nothing_is_an_error(tmp_path):
  model_fn = warmstart.freeze(mlp_model_fn, "mnist/hiden/.*")
  with pytest.raises(warmstart.PatternError, match="freeze pattern 'mnist/hiden/.*' matches no "
                     "model variable.*'mnist/hidden/"):
    train(tmp_path, {}, steps=1, model_fn=model_fn)


# -- estimator_from: once, resume, report --------------------------------------------------

def test_warm_start_applies_once_and_resume_says_so(tmp_path, base_model, caplog):
  base = tf.train.latest_checkpoint(base_model)
  model_dir = str(tmp_path / "ext")
  def make():
    return warmstart.estimator_from(
        mlp_model_fn, model_dir=model_dir, warm_start_from=base_model,
        include="mnist/hidden/.*", freeze=True, params={"deeper": True})
  with caplog.at_level(logging.INFO, logger="warmstart"):
    make().train(input_fn(), steps=3)
  reports = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warm start")]
  assert len(reports) == 1 and "2 of" in reports[0] and "loaded" in reports[0]
  report_path = os.path.join(model_dir, "warmstart_report.json")
  first_report = open(report_path).read()
  assert json.loads(first_report)["source"] == base
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="warmstart"):
    make().train(input_fn(), steps=3)
  resumed = [r.getMessage() for r in caplog.records if "NOT applied" in r.getMessage()]
  assert len(resumed) == 1 and "model.ckpt-3" in resumed[0]
  assert open(report_path).read() == first_report  # the record of the warm start is kept
  after = tf.train.latest_checkpoint(model_dir)
  assert after.endswith("-6")
  for name in HIDDEN:
    assert same_bits(read(after, name), read(base, name)), name


def test_resume_after_the_source_is_gone_keeps_freezing(tmp_path):
  source = str(tmp_path / "source")
  train(source, {}, steps=3)
  base = tf.train.latest_checkpoint(source)
  hidden = trained_values(base, HIDDEN)
  model_dir = str(tmp_path / "ext")
  def make():
    return warmstart.estimator_from(
        mlp_model_fn, model_dir=model_dir, warm_start_from=source, include="mnist/hidden/.*",
        freeze=True, params={})
  make().train(input_fn(), steps=2)
  for path in glob.glob(source + "/*"):
    os.remove(path)
  make().train(input_fn(), steps=2)
  after = tf.train.latest_checkpoint(model_dir)
  assert after.endswith("-4")
  for name in HIDDEN:
    assert same_bits(read(after, name), hidden[name]), name


def test_report_in_tensorboard_text_tab(tmp_path, base_model):
  estimator = warmstart.estimator_from(
      mlp_model_fn, model_dir=str(tmp_path), warm_start_from=base_model,
      include="mnist/hidden/.*", params={},
      config=tf.estimator.RunConfig(save_summary_steps=1))
  estimator.train(input_fn(), steps=2)
  texts = []
  for events in glob.glob(os.path.join(str(tmp_path), "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(events):
      for value in event.summary.value:
        if value.tag.startswith("warmstart_report"):
          texts.append(tf.make_ndarray(value.tensor).item().decode())
  assert texts and "mnist/hidden/kernel" in texts[0] and "loaded" in texts[0]


def test_estimator_from_an_estimator_keeps_its_params(tmp_path, base_model):
  existing = tf.estimator.Estimator(mlp_model_fn, str(tmp_path / "unused"),
                                    params={"deeper": True})
  estimator = warmstart.estimator_from(existing, model_dir=str(tmp_path / "new"),
                                       warm_start_from=base_model, include="mnist/hidden/.*")
  assert estimator.model_dir == str(tmp_path / "new") and estimator.params == {"deeper": True}
  estimator.train(input_fn(), steps=1)
  names = [n for n, _ in tf.train.list_variables(str(tmp_path / "new"))]
  assert "mnist/hidden2/kernel" in names


def test_estimator_with_warm_start_already_is_refused(tmp_path, base_model):
  existing = tf.estimator.Estimator(mlp_model_fn, str(tmp_path), params={},
                                    warm_start_from=base_model)
  with pytest.raises(warmstart.WarmStartError, match="already has warm_start_from"):
    warmstart.estimator_from(existing, model_dir=str(tmp_path / "new"),
                             warm_start_from=base_model)


def test_plan_against_a_model_fn_builds_nothing_persistent(tmp_path, base_model):
  plan = warmstart.plan(base_model, mlp_model_fn, include="mnist/hidden/.*", freeze=True,
                        params={"deeper": True}, input_fn=input_fn())
  assert sorted(a.name for a in plan.assignments) == sorted(HIDDEN)
  assert sorted(plan.report.frozen) == sorted(HIDDEN)
  assert "mnist/hidden2/kernel" in [e.name for e in plan.report.not_selected]
  assert not os.listdir(str(tmp_path))


# -- vocab -----------------------------------------------------------------------------------

def test_embedding_warm_started_into_a_new_vocabulary(tmp_path):
  old_vocab, new_vocab = tmp_path / "old.txt", tmp_path / "new.txt"
  old_vocab.write_text("apple\nbanana\ncherry\n")
  new_vocab.write_text("cherry\ndate\napple\nbanana\n")
  old = np.arange(12, dtype=np.float32).reshape(3, 4)
  source = write_checkpoint(tmp_path / "src", {"emb": old})

  def model_fn(features, labels, mode):
    emb = tf.compat.v1.get_variable("emb", [4, 4])
    loss = tf.reduce_sum(emb) * 0.0 + tf.cast(tf.reduce_sum(features["x"]), tf.float32) * 0.0
    step = tf.compat.v1.train.get_or_create_global_step()
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=tf.compat.v1.assign_add(step, 1))
  vocab = {"emb": tf.estimator.VocabInfo(str(new_vocab), 4, 4, str(old_vocab))}
  estimator = warmstart.estimator_from(model_fn, model_dir=str(tmp_path / "m"),
                                       warm_start_from=source, vocab=vocab)
  estimator.train(input_fn(), steps=1)
  emb = estimator.get_variable_value("emb")
  assert same_bits(emb[0], old[2]) and same_bits(emb[2], old[0]) and same_bits(emb[3], old[1])
  assert not any(same_bits(emb[1], row) for row in old)  # 'date' is new


# -- checkpoint values never become graph constants ------------------------------------------

def test_meta_graph_stays_small_with_a_large_variable(tmp_path):
  big = np.random.RandomState(0).rand(4096, 4096).astype(np.float32)  # 64 MiB
  source = write_checkpoint(tmp_path / "src", {"big": big})

  def model_fn(features, labels, mode):
    w = tf.compat.v1.get_variable("big", [4096, 4096])
    loss = tf.reduce_mean(w[:2, :2]) + 0.0 * tf.reduce_sum(features["x"])
    step = tf.compat.v1.train.get_or_create_global_step()
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=tf.compat.v1.assign_add(step, 1))
  model_dir = str(tmp_path / "m")
  estimator = warmstart.estimator_from(model_fn, model_dir=model_dir, warm_start_from=source)
  estimator.train(input_fn(), steps=1)
  metas = glob.glob(os.path.join(model_dir, "*.meta"))
  assert metas and max(os.path.getsize(m) for m in metas) < 1 << 20
  assert same_bits(estimator.get_variable_value("big"), big)


def test_report_is_written_whole_or_not_at_all(tmp_path, base_model, monkeypatch):
  from warmstart import _estimator  # the writer behind estimator_from's report file
  plan = warmstart.plan(base_model, base_model, include="mnist/hidden/.*")
  model_dir = tmp_path / "m"
  path = _estimator._write_report(str(model_dir), plan.report)
  assert json.load(open(path)) == json.loads(plan.report.to_json())

  def interrupted(*args):
    raise KeyboardInterrupt  # as if the process were interrupted before the rename
  monkeypatch.setattr(os, "replace", interrupted)
  before = open(path).read()
  other = warmstart.plan(base_model, base_model, include="mnist/logits/.*").report
  assert other.to_json() != before
  with pytest.raises(KeyboardInterrupt):
    _estimator._write_report(str(model_dir), other)
  assert open(path).read() == before
  assert sorted(os.listdir(str(model_dir))) == ["warmstart_report.json"]  # no temp file left

"""Fine-tuning control: frozen batch-norm statistics, unfreeze_at, lr_multipliers, fresh slots.

Values are compared bit for bit where the claim is "unchanged"; update ratios are checked on
float64 variables with a loss whose gradient is constant, so every optimizer's raw update is the
same for the scaled and the unscaled variable and the ratio is exact up to one rounding.
"""
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import input_fn, mlp_model_fn, read, register_source, same_bits, train

import warmstart

TRAIN = tf.estimator.ModeKeys.TRAIN
HIDDEN = ["mnist/hidden/kernel", "mnist/hidden/bias"]
ADAM_OF_HIDDEN = [n + s for n in HIDDEN for s in ("/Adam", "/Adam_1")]


def run_graph(model_fn, names, steps, params=None, features=None):
  """Builds model_fn's training graph as an Estimator would and runs its train_op `steps` times.

  Returns [{name: value}] (of `names`, or of every variable if None) before every step and after
  the last; "predictions" holds the spec's predictions (if any) before the first step.
  """
  with tf.Graph().as_default():
    tf.compat.v1.train.get_or_create_global_step()
    if features is None:
      features = {"x": tf.constant(np.random.RandomState(0).rand(8, 6).astype(np.float32))}
    spec = model_fn(features, tf.zeros([8], tf.int32), TRAIN, params or {},
                    tf.estimator.RunConfig())
    variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
    names = list(variables) if names is None else names
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      history = []
      for i in range(steps + 1):
        fetches = {n: variables[n] for n in names if n in variables}
        if i == 0 and spec.predictions:
          fetches["predictions"] = spec.predictions
        history.append(session.run(fetches))
        if i < steps:
          session.run(spec.train_op)
  return history


def unchanged(history, name):
  """For each recorded step: is `name` bit-identical to its first value?"""
  return [same_bits(h[name], history[0][name]) for h in history]


# -- frozen batch-norm statistics ------------------------------------------------------------

def batchnorm_model_fn(features, labels, mode, params):
  """dense -> batch norm (tf.compat.v1.layers or Keras) -> dense, Adam, the UPDATE_OPS pattern."""
  h = tf.compat.v1.layers.dense(features["x"], 4, name="hidden")
  options = dict(moving_mean_initializer=tf.constant_initializer(0.3),
                 moving_variance_initializer=tf.constant_initializer(2.0),
                 gamma_initializer=tf.constant_initializer(1.5), name="bn")
  if params["layers"] == "keras":
    layer = tf.keras.layers.BatchNormalization(**options)
    normalized = layer(h, training=True)
    updates = layer.updates  # Keras layers keep their updates on the layer
  elif params["layers"] == "v1_fused":  # the fused kernel (4-D inputs), as in conv nets
    normalized = tf.reshape(tf.compat.v1.layers.batch_normalization(
        tf.reshape(h, [-1, 1, 1, 4]), training=True, fused=True, **options), [-1, 4])
    updates = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
  else:
    normalized = tf.compat.v1.layers.batch_normalization(h, training=True, **options)
    updates = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
  logits = tf.compat.v1.layers.dense(normalized, 2, name="logits")
  loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
  with tf.control_dependencies(updates):
    train_op = tf.compat.v1.train.AdamOptimizer(0.1).minimize(
        loss, global_step=tf.compat.v1.train.get_global_step())
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op,
                                    predictions={"hidden": h, "normalized": normalized})


BN = ["bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance"]


@pytest.mark.parametrize("layers", ["v1", "v1_fused", "keras"])
def test_frozen_batchnorm_layer_keeps_and_normalizes_with_its_statistics(layers):
  model_fn = warmstart.freeze(batchnorm_model_fn, "bn/(gamma|beta)")
  history = run_graph(model_fn, [*BN, "logits/kernel"], steps=3, params={"layers": layers})
  for name in BN:
    assert all(unchanged(history, name)), name
  assert not same_bits(history[-1]["logits/kernel"], history[0]["logits/kernel"])
  # Inference-mode normalization with the frozen statistics, not the batch's.
  first = history[0]
  expected = ((first["predictions"]["hidden"] - first["bn/moving_mean"])
              / np.sqrt(first["bn/moving_variance"] + 1e-3) * first["bn/gamma"] + first["bn/beta"])
  np.testing.assert_allclose(first["predictions"]["normalized"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layers", ["v1", "v1_fused", "keras"])
def test_batchnorm_layer_unfreezes_with_its_variables(layers):
  model_fn = warmstart.freeze(batchnorm_model_fn, None, unfreeze_at={"(hidden|bn)/.*": 2})
  history = run_graph(model_fn, [*BN, "hidden/kernel"], steps=4, params={"layers": layers})
  for name in [*BN, "hidden/kernel"]:
    assert unchanged(history, name) == [True, True, True, False, False], name
  first = history[0]  # normalized with the statistics while frozen
  expected = ((first["predictions"]["hidden"] - first["bn/moving_mean"])
              / np.sqrt(first["bn/moving_variance"] + 1e-3) * first["bn/gamma"] + first["bn/beta"])
  np.testing.assert_allclose(first["predictions"]["normalized"], expected, rtol=1e-5, atol=1e-6)


def test_freeze_batchnorm_stats_false_lets_the_statistics_update():
  model_fn = warmstart.freeze(batchnorm_model_fn, "bn/.*", freeze_batchnorm_stats=False)
  history = run_graph(model_fn, BN, steps=2, params={"layers": "v1"})
  assert all(unchanged(history, "bn/gamma"))
  assert unchanged(history, "bn/moving_mean") == [True, False, False]
  normalized = history[0]["predictions"]["normalized"]  # with the batch's statistics
  np.testing.assert_allclose(normalized.mean(axis=0), history[0]["bn/beta"], atol=1e-5)


def test_estimator_from_freezes_a_batchnorm_source_without_guard_error(tmp_path, bn_model):
  # The common pattern: tf.compat.v1.layers.batch_normalization(training=True) and
  # `with tf.control_dependencies(UPDATE_OPS)`; everything under mnist/ loaded and frozen.
  estimator = warmstart.estimator_from(
      mlp_model_fn, model_dir=str(tmp_path), warm_start_from=bn_model,
      include="mnist/(hidden|bn)/.*", freeze=True, params={"batch_norm": True, "optimizer": "sgd"})
  estimator.train(input_fn(), steps=3)
  after = tf.train.latest_checkpoint(str(tmp_path))
  for name in ["mnist/bn/moving_mean", "mnist/bn/moving_variance", "mnist/bn/gamma", *HIDDEN]:
    assert same_bits(read(after, name), read(bn_model, name)), name
  assert not same_bits(read(after, "mnist/logits/kernel"), read(bn_model, "mnist/logits/kernel"))
  report = json.load(open(os.path.join(str(tmp_path), "warmstart_report.json")))
  assert "mnist/bn/moving_mean" in report["frozen"]


def test_canned_estimator_with_batch_norm(tmp_path):
  columns = [tf.feature_column.numeric_column("x", shape=[6])]
  config = tf.estimator.RunConfig(tf_random_seed=1)
  base = tf.estimator.DNNClassifier([8], columns, batch_norm=True, model_dir=str(tmp_path / "a"),
                                    config=config)
  base.train(input_fn(), steps=3)
  source = tf.train.latest_checkpoint(str(tmp_path / "a"))
  statistics = [n for n, _ in tf.train.list_variables(source) if "moving_" in n]
  assert statistics and not any(same_bits(read(source, n), np.zeros(8, np.float32))
                                for n in statistics if n.endswith("moving_mean"))
  new = warmstart.estimator_from(
      tf.estimator.DNNClassifier([8], columns, batch_norm=True, config=config),
      model_dir=str(tmp_path / "b"), warm_start_from=str(tmp_path / "a"),
      include="dnn/hiddenlayer_0/.*", freeze=True, lr_multipliers={"dnn/logits/.*": 0.5})
  new.train(input_fn(), steps=2)
  after = tf.train.latest_checkpoint(str(tmp_path / "b"))
  for name in statistics:
    assert same_bits(read(after, name), read(source, name)), name
  assert not same_bits(read(after, "dnn/logits/kernel"), read(source, "dnn/logits/kernel"))
  report = json.load(open(str(tmp_path / "b" / "warmstart_report.json")))
  assert set(statistics) <= set(report["frozen"])
  assert report["lr_multipliers"] == {"dnn/logits/kernel": 0.5, "dnn/logits/bias": 0.5}


# -- lr_multipliers --------------------------------------------------------------------------

def linear_model_fn(features, labels, mode, params):
  """Two float64 twins `a` and `b` with the same constant gradient: a linear loss."""
  start = np.array([1.0, -2.0, 3.0])
  a = tf.compat.v1.get_variable("a", initializer=start)
  b = tf.compat.v1.get_variable("b", initializer=start)
  loss = tf.reduce_sum((a + b) * tf.constant([0.5, -1.5, 2.0], tf.float64))
  step = tf.compat.v1.train.get_global_step()
  name = params["optimizer"]
  if name.startswith("keras"):
    optimizer = (tf.keras.optimizers.legacy.SGD(0.1, momentum=0.9) if name == "keras_sgd"
                 else tf.keras.optimizers.legacy.Adam(0.1))
    optimizer.iterations = step  # as canned estimators do
    train_op = optimizer.get_updates(loss, [a, b])[0]
  else:
    optimizer = {"sgd": lambda: tf.compat.v1.train.GradientDescentOptimizer(0.1),
                 "momentum": lambda: tf.compat.v1.train.MomentumOptimizer(0.1, 0.9),
                 "momentum_own_step": lambda: tf.compat.v1.train.MomentumOptimizer(0.1, 0.9),
                 "adam": lambda: tf.compat.v1.train.AdamOptimizer(0.1),
                 "rmsprop": lambda: tf.compat.v1.train.RMSPropOptimizer(0.1, momentum=0.5),
                 "adagrad": lambda: tf.compat.v1.train.AdagradOptimizer(0.1)}[name]()
    if name.endswith("own_step"):  # the step incremented beside the optimizer, unordered
      train_op = tf.group(optimizer.minimize(loss), step.assign_add(1))
    else:
      train_op = optimizer.minimize(loss, global_step=step)
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "rmsprop", "adagrad",
                                       "keras_sgd", "keras_adam"])
def test_lr_multiplier_scales_the_update(optimizer):
  model_fn = warmstart.freeze(linear_model_fn, None, lr_multipliers={"a": 0.1})
  history = run_graph(model_fn, ["a", "b", "global_step"], steps=3,
                      params={"optimizer": optimizer})
  first, last = history[0], history[-1]
  assert last["global_step"] == 3
  moved_a, moved_b = last["a"] - first["a"], last["b"] - first["b"]
  assert np.all(np.abs(moved_b) > 0.1)
  # Adam and RMSProp are invariant to the gradients' scale: scaling gradients would give ~1 here.
  np.testing.assert_allclose(moved_a, 0.1 * moved_b, rtol=1e-12)
  if optimizer == "sgd":  # three steps of 0.1 times the learning rate (a float32 0.1) on c
    learning_rate = float(np.float32(0.1))
    np.testing.assert_allclose(moved_a, -3 * 0.1 * learning_rate * np.array([0.5, -1.5, 2.0]),
                               rtol=1e-12)


def test_lr_multiplier_zero_freezes_and_the_report_says_so(base_model):
  plan = warmstart.plan(base_model, mlp_model_fn, input_fn=input_fn(), params={},
                        lr_multipliers={"mnist/hidden/.*": 0, "mnist/logits/.*": 0.5})
  report = plan.report
  assert report.frozen == HIDDEN
  assert report.lr_multipliers == {"mnist/hidden/kernel": 0.0, "mnist/hidden/bias": 0.0,
                                   "mnist/logits/kernel": 0.5, "mnist/logits/bias": 0.5}
  text = str(report)
  assert "x0 (frozen): mnist/hidden/kernel, mnist/hidden/bias" in text
  assert "x0.5: mnist/logits/kernel, mnist/logits/bias" in text
  assert json.loads(report.to_json())["lr_multipliers"]["mnist/hidden/bias"] == 0.0
  # The same by name against a checkpoint of the target.
  by_name = warmstart.plan(base_model, base_model, lr_multipliers={"mnist/hidden/.*": 0,
                                                                   "mnist/logits/.*": 0.5})
  assert by_name.report.lr_multipliers == report.lr_multipliers
  assert sorted(by_name.report.frozen) == sorted(HIDDEN)


# -- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"unfreeze_at": {"mnist/hidden/.*": 0}}, "global step >= 1"),
    ({"unfreeze_at": {"mnist/hidden/.*": 2.5}}, "global step >= 1"),
    ({"unfreeze_at": ["mnist/hidden/.*"]}, "must be a dict"),
    ({"lr_multipliers": {"mnist/hidden/.*": -0.1}}, "finite number >= 0"),
    ({"lr_multipliers": {"mnist/hidden/.*": float("nan")}}, "finite number >= 0"),
    ({"lr_multipliers": {"mnist/(hidden": 0.1}}, "invalid regex"),
    ({"freeze_batchnorm_stats": "yes"}, "True or False"),
], ids=["step0", "float-step", "list", "negative", "nan", "bad-regex", "flag"])
def test_bad_values_fail_at_the_call(tmp_path, base_model, kwargs, message):
  with pytest.raises(warmstart.WarmStartError, match=message):
    warmstart.estimator_from(mlp_model_fn, model_dir=str(tmp_path), warm_start_from=base_model,
                             **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"unfreeze_at": {"mnist/hiden/.*": 5}},
     "unfreeze_at pattern 'mnist/hiden/.*' matches no model variable.*'mnist/hidden/"),
    ({"lr_multipliers": {"mnist/hidden": 0.1}}, "did you mean 'mnist/hidden/.*'"),
    ({"lr_multipliers": {"mnist/logits/.*": 0.1}, "freeze": "mnist/logits/.*"},
     "matches mnist/logits/kernel, mnist/logits/bias, which no optimizer updates"),
], ids=["unfreeze_at", "lr_multipliers", "only-frozen"])
def test_patterns_that_decide_nothing_are_errors(base_model, kwargs, message):
  with pytest.raises(warmstart.PatternError, match=message):
    warmstart.plan(base_model, mlp_model_fn, input_fn=input_fn(), params={}, **kwargs)


def test_a_scheduled_variable_written_outside_the_optimizer_is_an_error():
  def model_fn(features, labels, mode, params):
    spec = mlp_model_fn(features, labels, mode, {"optimizer": "sgd"})
    kernel = tf.compat.v1.trainable_variables("mnist/hidden/kernel")[0]
    return spec._replace(train_op=tf.group(spec.train_op, kernel.assign(kernel * 0.5)))
  frozen = warmstart.freeze(model_fn, None, unfreeze_at={"mnist/hidden/.*": 5})
  with pytest.raises(warmstart.FreezeError, match="updates 'mnist/hidden/kernel', frozen until "
                     "a global step by unfreeze_at, with op '.*AssignVariableOp"):
    run_graph(frozen, [], steps=0)


def test_without_an_optimizer_the_schedule_is_an_error():
  def model_fn(features, labels, mode):
    w = tf.compat.v1.get_variable("w", [6])
    loss = tf.reduce_sum(w * tf.reduce_mean(features["x"], axis=0))
    train_op = tf.group(w.assign_sub(0.1 * tf.gradients(loss, [w])[0]),
                        tf.compat.v1.train.get_global_step().assign_add(1))
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)
  frozen = warmstart.freeze(model_fn, None, lr_multipliers={"w": 0.1})
  with pytest.raises(warmstart.PatternError, match="no optimizer applied gradients"):
    run_graph(frozen, [], steps=0)


# -- unfreeze_at -----------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adam", "rmsprop", "keras_adam", "keras_sgd",
                                       "momentum_own_step"])
def test_unfreeze_at_holds_values_and_slots_until_the_step(optimizer):
  model_fn = warmstart.freeze(linear_model_fn, None, unfreeze_at={"a": 2})
  history = run_graph(model_fn, None, steps=4, params={"optimizer": optimizer})
  slots = [n for n in history[0] if re.fullmatch(r"(.*/)?a/.*", n)]
  assert slots  # Adam's m and v, RMSProp's ms (initialized to ones) and momentum, ...
  for name in ["a", *slots]:
    assert unchanged(history, name) == [True, True, True, False, False], name
  assert unchanged(history, "b") == [True, False, False, False, False]


def test_the_gate_reads_the_step_before_a_model_fn_increments_it():
  # A race otherwise: the model_fn's own assign_add is not ordered with the optimizer.
  model_fn = warmstart.freeze(linear_model_fn, None, unfreeze_at={"a": 2})
  with tf.Graph().as_default() as graph:
    step = tf.compat.v1.train.get_or_create_global_step()
    spec = model_fn({}, None, TRAIN, {"optimizer": "momentum_own_step"}, None)

    def reads_step(op):
      while op.type == "Identity":
        op = op.inputs[0].op
      return op.type == "ReadVariableOp" and op.inputs[0].op is step.handle.op
    gates = [op for op in graph.get_operations()
             if op.type == "GreaterEqual" and reads_step(op.inputs[0].op)]
    increments = [op for op in graph.get_operations()
                  if op.type == "AssignAddVariableOp" and op.inputs[0].op is step.handle.op]
    assert len(gates) == 1 and len(increments) == 1
    assert gates[0] in increments[0].control_inputs
    assert spec.train_op is not None


def test_unfreeze_at_with_adam_then_resume(tmp_path, base_model):
  source = tf.train.latest_checkpoint(base_model)
  model_dir = str(tmp_path)

  def make():
    return warmstart.estimator_from(
        mlp_model_fn, model_dir=model_dir, warm_start_from=base_model, freeze=True,
        unfreeze_at={"mnist/hidden/.*": 3}, params={"deeper": True, "optimizer": "adam"},
        config=tf.estimator.RunConfig(tf_random_seed=1, save_checkpoints_steps=1,
                                      keep_checkpoint_max=20))
  make().train(input_fn(), steps=5)
  ckpt = [tf.train.load_checkpoint(os.path.join(model_dir, "model.ckpt-%d" % s))
          for s in range(6)]
  for name in HIDDEN:  # bit-identical up to step 3, trained by the update made at step 3
    assert [same_bits(c.get_tensor(name), read(source, name)) for c in ckpt] == [
        True, True, True, True, False, False], name
  for name in ADAM_OF_HIDDEN:  # Adam's moments start from zero at the unfreeze step
    assert [not np.any(c.get_tensor(name)) for c in ckpt] == [True] * 4 + [False] * 2, name
  for name in ("mnist/logits/kernel", "mnist/logits/bias"):  # loaded and frozen, no schedule
    assert all(same_bits(c.get_tensor(name), read(source, name)) for c in ckpt), name
  assert not same_bits(ckpt[1].get_tensor("mnist/hidden2/kernel"),
                       ckpt[0].get_tensor("mnist/hidden2/kernel"))
  report = json.load(open(os.path.join(model_dir, "warmstart_report.json")))
  assert report["unfreeze_at"] == {"mnist/hidden/kernel": 3, "mnist/hidden/bias": 3}
  assert sorted(report["frozen"]) == ["mnist/logits/bias", "mnist/logits/kernel"]
  # Resumed after the unfreeze step: the schedule goes on from the checkpoint's step.
  make().train(input_fn(), steps=2)
  last = tf.train.load_checkpoint(os.path.join(model_dir, "model.ckpt-7"))
  for name in HIDDEN:
    assert not same_bits(last.get_tensor(name), ckpt[5].get_tensor(name)), name
  assert same_bits(last.get_tensor("mnist/logits/kernel"), read(source, "mnist/logits/kernel"))


def test_report_text_shows_the_schedule_and_multipliers(base_model):
  plan = warmstart.plan(base_model, mlp_model_fn, input_fn=input_fn(), params={"deeper": True},
                        include="mnist/hidden/.*", unfreeze_at={"mnist/hidden/.*": 100},
                        lr_multipliers={"mnist/hidden/.*": 0.1})
  text = str(plan.report)
  assert ("  frozen until a global step, trained from it on:\n"
          "    step 100: mnist/hidden/kernel, mnist/hidden/bias") in text
  assert "    x0.1: mnist/hidden/kernel, mnist/hidden/bias" in text


# -- optimizer-state transplant (NiftyNet's case) --------------------------------------------

def test_keep_optimizer_state_from_a_source_trained_with_frozen_layers(tmp_path):
  # The source trained mnist/hidden frozen, so it holds no Adam slots for it.
  source_dir = str(tmp_path / "source")
  source = train(source_dir, {"optimizer": "adam"}, steps=3,
                 model_fn=warmstart.freeze(mlp_model_fn, "mnist/hidden/.*"))
  register_source(source)
  source_names = [n for n, _ in tf.train.list_variables(source)]
  assert "mnist/logits/kernel/Adam" in source_names
  assert not any(n in source_names for n in ADAM_OF_HIDDEN)

  plan = warmstart.plan(source, mlp_model_fn, input_fn=input_fn(), params={"optimizer": "adam"},
                        optimizer_state="keep")
  assert sorted(e.name for e in plan.report.fresh_optimizer_slots) == sorted(ADAM_OF_HIDDEN)
  assert plan.report.missing == []
  assert "optimizer slots not in the source, started fresh (4): " in str(plan.report)

  model_dir = str(tmp_path / "fine")
  estimator = warmstart.estimator_from(mlp_model_fn, model_dir=model_dir, warm_start_from=source,
                                       optimizer_state="keep", params={"optimizer": "adam"})
  estimator.train(input_fn(), steps=2)
  first = tf.train.load_checkpoint(os.path.join(model_dir, "model.ckpt-3"))  # before training
  for name in ADAM_OF_HIDDEN:
    assert not np.any(first.get_tensor(name)), name
  for name in ("mnist/logits/kernel/Adam", "mnist/logits/kernel/Adam_1", "beta1_power"):
    assert same_bits(first.get_tensor(name), read(source, name)), name
  assert estimator.get_variable_value("global_step") == 5
  report = json.load(open(os.path.join(model_dir, "warmstart_report.json")))
  assert sorted(e["name"] for e in report["fresh_optimizer_slots"]) == sorted(ADAM_OF_HIDDEN)

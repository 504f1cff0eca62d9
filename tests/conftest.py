"""Shared helpers: tiny real checkpoints and model_fns (no mocks of TensorFlow).

Every checkpoint a test writes as a source is fingerprinted (bytes and mtime); after each test
the autouse `sources_stay_untouched` check asserts none changed: the library never writes into a
source. Tests that damage their own inputs on purpose call `mark_modified` afterwards.
"""
import glob
import hashlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

tf.get_logger().setLevel("ERROR")


_SOURCES = {}  # path -> (sha256, mtime_ns, keep after the test)


def _fingerprint(path):
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns


def register_source(prefix, keep=False):
  """Fingerprints a checkpoint's files; `keep` for sources shared across tests."""
  for path in glob.glob(glob.escape(prefix) + ".*"):
    if path.endswith(".index") or ".data-" in path:
      _SOURCES[path] = (*_fingerprint(path), keep)


def mark_modified(path):
  """Records that a test changed one of its own source files on purpose."""
  if path in _SOURCES:
    _SOURCES[path] = (*_fingerprint(path), _SOURCES[path][2])


@pytest.fixture(autouse=True)
def sources_stay_untouched():
  yield
  changed = [p for p, (sha, mtime, _) in _SOURCES.items()
             if os.path.exists(p) and _fingerprint(p) != (sha, mtime)]
  for path in [p for p, entry in _SOURCES.items() if not entry[2]]:
    del _SOURCES[path]
  assert not changed, "source checkpoint files were changed: %s" % changed


def write_checkpoint(directory, tensors, step=None, basename="model.ckpt", state_file=True):
  """Writes a V2 checkpoint holding exactly `tensors` ({name: array}); returns its prefix."""
  os.makedirs(directory, exist_ok=True)
  with tf.Graph().as_default():
    variables = {name: tf.compat.v1.Variable(np.asarray(value), name="v%d" % i)
                 for i, (name, value) in enumerate(tensors.items())}
    saver = tf.compat.v1.train.Saver(variables)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      prefix = saver.save(session, os.path.join(directory, basename), global_step=step,
                          write_meta_graph=False, write_state=state_file)
  register_source(prefix)
  return prefix


def read(prefix, name):
  return tf.train.load_checkpoint(prefix).get_tensor(name)


def same_bits(a, b):
  a, b = np.asarray(a), np.asarray(b)
  return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def input_fn(features=6, classes=2, batch=16, seed=0):
  """A small deterministic classification dataset."""
  def fn():
    rng = np.random.RandomState(seed)
    x = rng.rand(64, features).astype(np.float32)
    y = (x.sum(axis=1) * classes / features).astype(np.int32).clip(0, classes - 1)
    return tf.data.Dataset.from_tensor_slices(({"x": x}, y)).batch(batch).repeat()
  return fn


def mlp_model_fn(features, labels, mode, params):
  """MNIST-example-shaped MLP: mnist/hidden, optional mnist/hidden2, mnist/logits.

  params: layers ('v1' tf.compat.v1.layers, 'keras' tf.keras.layers, 'get_variable'),
  optimizer ('sgd', 'adam', 'momentum'), deeper (bool), classes, batch_norm (bool),
  var_list ('default', 'all' for an explicit list of every trainable-at-creation variable).
  """
  x = features["x"] if isinstance(features, dict) else features
  training = mode == tf.estimator.ModeKeys.TRAIN
  layers = params.get("layers", "v1")
  created = []
  with tf.compat.v1.variable_scope("mnist"):
    def dense(inputs, units, name, activation=None):
      if layers == "keras":
        layer = tf.keras.layers.Dense(units, activation=activation, name=name)
        out = layer(inputs)
        created.extend(layer.weights)
        return out
      if layers == "get_variable":
        with tf.compat.v1.variable_scope(name):
          kernel = tf.compat.v1.get_variable("kernel", [inputs.shape[-1], units])
          bias = tf.compat.v1.get_variable("bias", [units],
                                           initializer=tf.compat.v1.zeros_initializer())
        created.extend([kernel, bias])
        out = tf.matmul(inputs, kernel) + bias
        return activation(out) if activation else out
      return tf.compat.v1.layers.dense(inputs, units, activation=activation, name=name)
    h = dense(x, params.get("hidden", 8), "hidden", tf.nn.relu)
    if params.get("batch_norm"):
      h = tf.compat.v1.layers.batch_normalization(h, training=training, name="bn")
    if params.get("deeper"):
      h = dense(h, 8, "hidden2", tf.nn.relu)
    logits = dense(h, params.get("classes", 2), "logits")
  if mode == tf.estimator.ModeKeys.PREDICT:
    return tf.estimator.EstimatorSpec(mode, predictions={"logits": logits})
  loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
  optimizer = {
      "sgd": lambda: tf.compat.v1.train.GradientDescentOptimizer(0.1),
      "adam": lambda: tf.compat.v1.train.AdamOptimizer(0.01),
      "momentum": lambda: tf.compat.v1.train.MomentumOptimizer(0.1, 0.9),
  }[params.get("optimizer", "adam")]()
  var_list = created if params.get("var_list") == "all" else None
  with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
    train_op = optimizer.minimize(loss, global_step=tf.compat.v1.train.get_global_step(),
                                  var_list=var_list)
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def train(model_dir, params=None, steps=5, model_fn=mlp_model_fn, features=6, **kwargs):
  """Trains an mlp_model_fn Estimator; returns its latest checkpoint prefix."""
  params = dict(params or {})
  estimator = tf.estimator.Estimator(
      model_fn, model_dir=str(model_dir), params=params,
      config=tf.estimator.RunConfig(tf_random_seed=1), **kwargs)
  estimator.train(input_fn(features, params.get("classes", 2)), steps=steps)
  prefix = tf.train.latest_checkpoint(str(model_dir))
  register_source(prefix)
  return prefix


@pytest.fixture(scope="session")
def base_model(tmp_path_factory):
  """A trained base model (Adam, so it has optimizer slots); returns its directory."""
  directory = tmp_path_factory.mktemp("base")
  register_source(train(directory, {"optimizer": "adam"}, steps=10), keep=True)
  return str(directory)


@pytest.fixture(scope="session")
def bn_model(tmp_path_factory):
  """A trained base model with a batch-norm layer (mnist/bn); returns its checkpoint prefix."""
  directory = tmp_path_factory.mktemp("bn_base")
  prefix = train(directory, {"batch_norm": True, "optimizer": "sgd"}, steps=10)
  register_source(prefix, keep=True)
  # Training moved the statistics away from their initializers (0 and 1).
  assert not np.allclose(read(prefix, "mnist/bn/moving_mean"), 0)
  return prefix


# -- the command line, run in-process by workers that never import TensorFlow ------------------

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import fuzz_checkpoints  # noqa: E402  (its Worker runs the real CLI)

# TF_CPP_MIN_LOG_LEVEL as users leave it (unset) and set it: a bad input must give one stderr
# line with each.
TF_LOG_LEVELS = (None, "0", "2", "3")


@pytest.fixture(scope="session")
def cli_workers():
  """{TF_CPP_MIN_LOG_LEVEL: a fuzz_checkpoints.Worker running the CLI with it in its env}."""
  workers = {level: fuzz_checkpoints.Worker(TF_CPP_MIN_LOG_LEVEL=level)
             for level in TF_LOG_LEVELS}
  yield workers
  for worker in workers.values():
    worker.stop()


def cli_run(worker, argv):
  """Runs `warmstart ARGV` in a worker; returns its outcome (code, stdout, stderr, peak_memory)."""
  outcome, crash = worker.run([str(arg) for arg in argv])
  assert crash is None and outcome["escaped"] is None, (argv, crash, outcome)
  assert not outcome["tensorflow"], argv
  assert "Traceback" not in outcome["stderr"] + outcome["stdout"]
  return outcome


def assert_cli_error(workers, argv, *words):
  """With every TF_CPP_MIN_LOG_LEVEL: exit 2 and exactly one `warmstart: error:` line holding
  `words`. Returns the outcome with the level unset."""
  outcomes = {level: cli_run(worker, argv) for level, worker in workers.items()}
  for level, outcome in outcomes.items():
    lines = outcome["stderr"].strip().splitlines()
    assert outcome["code"] == 2 and len(lines) == 1, (level, outcome)
    assert lines[0].startswith("warmstart: error: "), (level, outcome)
    for word in words:
      assert word in lines[0], (level, lines[0])
  return outcomes[None]

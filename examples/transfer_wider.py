"""Transfer a trained model into a wider, deeper model with more pathways (DeepMedic-style).

Model A is a small DeepMedic-like 3D conv net: a normal and a subsampled pathway of 3x3x3 convs
(3 layers each), an FC pathway of 1x1x1 convs (`fc1`) and a classifier (`cls`), trained on
synthetic 2-channel volumes with 2 classes. Model B reads 3 channels, has 3 classes, a third
pathway, a 4th layer in every pathway, and layers 2-3 twice as wide. As DeepMedic's
`-newModel modelB.cfg -pretrained modelA -layers 1 2 3` does, this example

1. trains model A (`<out_dir>/modelA`);
2. materializes B warm-started from A as `<out_dir>/modelB.pretrained` (a step-0 checkpoint):
   - layers 1-3 of each pathway and `fc1`, the classifier left at its initializer;
   - B's extra pathway `sub2` reads A's last pathway `sub1` (a rename rule);
   - the first layers' kernels adapted from 2 to 3 input channels ('input_channels');
   - wider layers get A's kernels in their first half, the rest stays random ('partial');
3. proves it: `warmstart.diff` against A with the rename (several B tensors compared with one A
   tensor), and the copied blocks compared bit for bit;
4. fine-tunes B (`<out_dir>/modelB`) from the materialized checkpoint with layers 1-2 of every
   pathway frozen, and diffs again: frozen layers identical, the rest trained.

  python examples/transfer_wider.py --out_dir=/tmp/transfer --steps=200

Exits 0 when every expectation holds, 1 otherwise. About 30 s on 2 cores with the defaults.
"""
import logging
import os
import sys

# Before TensorFlow is imported: its C++ start-up messages would bury the example's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import tensorflow as tf
from absl import (
  app,
  flags,
)

import warmstart

flags.DEFINE_string("out_dir", "./transfer_out", "A new directory for models A and B.")
flags.DEFINE_integer("steps", 100, "Training steps of model A, and fine-tuning steps of B.")
flags.DEFINE_list("layers", ["1", "2", "3"], "Depths of A's pathway layers to transfer "
                  "(DeepMedic's -layers); fc1 is always transferred, the classifier never.")
FLAGS = flags.FLAGS

SEED = 7
SIZE = 7  # volumes of SIZE^3 voxels
MODEL_A = {"pathways": ["normal", "sub1"], "channels": 2, "widths": [4, 4, 6], "classes": 2}
MODEL_B = {"pathways": ["normal", "sub1", "sub2"], "channels": 3, "widths": [4, 8, 12, 12],
           "classes": 3}
FC_UNITS = 8
WEIGHTS = r"dm/.*/(kernel|bias)"  # what the diffs compare (not the optimizer's slots)
# The pathways' inputs: full resolution, or average-pooled (subsampled) by this factor.
SUBSAMPLING = {"normal": 1, "sub1": 3, "sub2": 2}


def volumes(channels, classes, count=256, seed=SEED):
  """Synthetic volumes: the class is the brightness of a blob near the centre, binned."""
  rng = np.random.RandomState(seed)
  x = rng.normal(0, 0.3, (count, SIZE, SIZE, SIZE, channels)).astype(np.float32)
  level = rng.randint(classes, size=count)
  centre = slice(SIZE // 2 - 1, SIZE // 2 + 2)
  x[:, centre, centre, centre, :] += level[:, None, None, None, None] * 0.8
  return x, level.astype(np.int32)


def input_fn(channels, classes, train=True, batch=16):
  x, y = volumes(channels, classes, seed=SEED if train else SEED + 1)

  def fn():
    data = tf.data.Dataset.from_tensor_slices(({"x": x}, y))
    if train:
      data = data.shuffle(len(y), seed=SEED).repeat()
    return data.batch(batch)
  return fn


def conv(inputs, name, shape):
  """A 3D conv: variables `<name>/kernel` (shape) and `<name>/bias`."""
  with tf.compat.v1.variable_scope(name):
    kernel = tf.compat.v1.get_variable(
        "kernel", shape, initializer=tf.compat.v1.glorot_uniform_initializer())
    bias = tf.compat.v1.get_variable("bias", shape[-1:],
                                     initializer=tf.compat.v1.zeros_initializer())
  return tf.nn.conv3d(inputs, kernel, [1] * 5, "SAME") + bias


def model_fn(features, labels, mode, params):
  """Pathways of 3x3x3 convs -> global average -> FC pathway (1x1x1 convs) -> classifier."""
  x = features["x"]
  pathways = []
  with tf.compat.v1.variable_scope("dm"):
    for pathway in params["pathways"]:
      factor = SUBSAMPLING[pathway]
      h = x if factor == 1 else tf.nn.avg_pool3d(x, factor, factor, "SAME")
      channels = params["channels"]
      for depth, width in enumerate(params["widths"], 1):
        h = tf.nn.relu(conv(h, "path_%s/conv%d" % (pathway, depth),
                            [3, 3, 3, channels, width]))
        channels = width
      pathways.append(tf.reduce_mean(h, axis=[1, 2, 3], keepdims=True))
    h = tf.concat(pathways, axis=-1)
    h = tf.nn.relu(conv(h, "fc1", [1, 1, 1, h.shape[-1], FC_UNITS]))
    logits = tf.squeeze(conv(h, "cls", [1, 1, 1, FC_UNITS, params["classes"]]), [1, 2, 3])
  classes = tf.argmax(logits, axis=1, output_type=tf.int32)
  loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
  if mode == tf.estimator.ModeKeys.EVAL:
    return tf.estimator.EstimatorSpec(mode, loss=loss, eval_metric_ops={
        "accuracy": tf.compat.v1.metrics.accuracy(labels, classes)})
  # minimize() updates the trainable variables only: frozen ones are not.
  train_op = tf.compat.v1.train.AdamOptimizer(0.01).minimize(
      loss, global_step=tf.compat.v1.train.get_global_step())
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def show_warmstart_log():
  """Prints the library's log (the report, at INFO) as plain text on stdout."""
  handler = logging.StreamHandler(sys.stdout)
  handler.setFormatter(logging.Formatter("%(message)s"))
  logger = logging.getLogger("warmstart")
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  logger.propagate = False  # absl's handler would print it a second time


def train(model_dir, params, steps, **warm_start):
  """Trains (warm-started if asked) and returns the test accuracy."""
  config = tf.estimator.RunConfig(tf_random_seed=SEED, save_summary_steps=steps)
  if warm_start:
    estimator = warmstart.estimator_from(model_fn, model_dir=model_dir, params=params,
                                         config=config, **warm_start)
  else:
    estimator = tf.estimator.Estimator(model_fn, model_dir, config=config, params=params)
  estimator.train(input_fn(params["channels"], params["classes"]), steps=steps)
  return estimator.evaluate(input_fn(params["channels"], params["classes"], train=False))


def copied_blocks_identical(plan, model_a, model_b):
  """Compares the block of each partially copied tensor (as the plan reports them) with A's."""
  a, b = tf.train.load_checkpoint(model_a), tf.train.load_checkpoint(model_b)
  failures = []
  for entry in plan.report.partial:
    block = tuple(slice(0, min(m, n)) for m, n in zip(entry.shape, entry.source_shape))
    if (a.get_tensor(entry.checkpoint_name)[block].tobytes()
        != b.get_tensor(entry.name)[block].tobytes()):
      failures.append(entry.name)
  return len(plan.report.partial), failures


def main(argv):
  del argv  # unused
  tf.get_logger().setLevel("ERROR")  # Estimator's INFO chatter and deprecation warnings
  if os.path.exists(FLAGS.out_dir):
    print("error: --out_dir %s exists; pass a new directory" % FLAGS.out_dir, file=sys.stderr)
    return 2
  model_a = os.path.join(FLAGS.out_dir, "modelA")
  pretrained = os.path.join(FLAGS.out_dir, "modelB.pretrained")
  model_b = os.path.join(FLAGS.out_dir, "modelB")
  show_warmstart_log()

  print("== 1. model A: %s" % MODEL_A)
  metrics = train(model_a, MODEL_A, FLAGS.steps)
  print("model A: step %d, test accuracy %.3f" % (metrics["global_step"], metrics["accuracy"]))

  print("\n== 2. model B, pretrained from A: %s" % MODEL_B)
  pathway_rule = {r"dm/path_sub2/(.*)": r"dm/path_sub1/\1"}  # B's extra pathway reads A's last
  plan = warmstart.materialize(
      model_fn, out_dir=pretrained, warm_start_from=model_a, input_fn=input_fn(3, 3),
      params=MODEL_B, config=tf.estimator.RunConfig(tf_random_seed=SEED),
      include=[r"dm/path_\w+/conv(%s)/.*" % "|".join(FLAGS.layers), r"dm/fc1/.*"],
      rename=pathway_rule,
      on_shape_mismatch={r"dm/path_\w+/conv1/kernel": "input_channels", r".*": "partial"})

  print("\n== 3. B.pretrained against A")
  report = warmstart.diff(model_a, pretrained, rename=pathway_rule, include=WEIGHTS)
  print(report)
  # Layer 1 keeps its width: its biases came over whole, for all three pathways of B.
  failures = report.check(expect_same=[r"dm/path_\w+/conv1/bias"])
  count, block_failures = copied_blocks_identical(plan, model_a, pretrained)
  print("partially copied tensors: %d, their blocks bit-identical to A's: %d"
        % (count, count - len(block_failures)))
  failures += ["block of %s differs from A's" % name for name in block_failures]

  print("\n== 4. fine-tune B, layers 1-2 of every pathway frozen")
  frozen = r"dm/path_\w+/conv[12]/.*"
  metrics = train(model_b, MODEL_B, FLAGS.steps, warm_start_from=pretrained, freeze=frozen)
  print("model B: step %d, test accuracy %.3f" % (metrics["global_step"], metrics["accuracy"]))
  report = warmstart.diff(pretrained, model_b, include=WEIGHTS)
  failures += report.check(expect_same=[frozen],
                           expect_changed=[r"dm/path_\w+/conv[34]/.*", r"dm/(fc1|cls)/.*"])
  print("diff B.pretrained B: %d identical (frozen), %d changed" % (
      len(report.by_status("identical")), len(report.by_status("changed"))))

  for failure in failures:
    print("expectation failed: %s" % failure)
  print("expectations: %s" % ("%d failed" % len(failures) if failures else "all hold"))
  return 1 if failures else 0


if __name__ == "__main__":
  app.run(main)

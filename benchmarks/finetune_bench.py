"""Per-step cost of fine-tuning control: lr_multipliers and unfreeze_at against plain training.

Builds the same MLP training graph (Adam) four ways and times training steps, interleaved in
rounds so that load on the machine hits every variant alike:

  plain      no control
  frozen     warmstart.freeze: the first half of the layers frozen (fewer updates: a floor)
  scaled     lr_multipliers={first half: 0.1}
  scheduled  unfreeze_at={first half: 10**9}: gated (values and Adam slots restored) every step

Usage:
  python benchmarks/finetune_bench.py                 # 4 x 1024 hidden, 5 rounds of 20 steps
  python benchmarks/finetune_bench.py --rounds=2 --steps=5 --width=256   # a quick run
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

import warmstart

FIRST_HALF = "mlp/layer_[01]/.*"


def make_model_fn(width, layers):
  def model_fn(features, labels, mode, params, config):
    h = features["x"]
    with tf.compat.v1.variable_scope("mlp"):
      for i in range(layers):
        h = tf.compat.v1.layers.dense(h, width, tf.nn.relu, name="layer_%d" % i)
      logits = tf.compat.v1.layers.dense(h, 10, name="logits")
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    train_op = tf.compat.v1.train.AdamOptimizer(1e-3).minimize(
        loss, global_step=tf.compat.v1.train.get_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)
  return model_fn


def build(model_fn, width):
  """A session and its train_op for one variant (own graph)."""
  graph = tf.Graph()
  with graph.as_default():
    tf.compat.v1.train.get_or_create_global_step()
    rng = np.random.RandomState(0)
    x = tf.constant(rng.rand(64, width).astype(np.float32))
    y = tf.constant(rng.randint(0, 10, 64).astype(np.int32))
    spec = model_fn({"x": x}, y, tf.estimator.ModeKeys.TRAIN, {}, tf.estimator.RunConfig())
    session = tf.compat.v1.Session(graph=graph)
    session.run(tf.compat.v1.global_variables_initializer())
  session.run(spec.train_op)  # warm-up
  return session, spec.train_op


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--width", type=int, default=1024)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  base = make_model_fn(args.width, args.layers)
  variants = {
      "plain": base,
      "frozen": warmstart.freeze(base, FIRST_HALF),
      "scaled": warmstart.freeze(base, None, lr_multipliers={FIRST_HALF: 0.1}),
      "scheduled": warmstart.freeze(base, None, unfreeze_at={FIRST_HALF: 10**9}),
  }
  built = {name: build(fn, args.width) for name, fn in variants.items()}
  times = {name: [] for name in variants}
  for _ in range(args.rounds):
    for name, (session, train_op) in built.items():
      start = time.perf_counter()
      for _ in range(args.steps):
        session.run(train_op)
      times[name].append((time.perf_counter() - start) / args.steps)
  parameters = args.width * args.width * (args.layers - 1) + args.width * (args.width + 10)
  print("MLP %d x %d (%.1f M parameters), Adam, batch 64; median of %d rounds of %d steps"
        % (args.layers, args.width, parameters / 1e6, args.rounds, args.steps))
  plain = statistics.median(times["plain"])
  for name, values in times.items():
    median = statistics.median(values)
    print("%-10s %8.2f ms/step  x%.2f of plain" % (name, 1000 * median, median / plain))


if __name__ == "__main__":
  main()

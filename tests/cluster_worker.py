"""One task of the loopback cluster test: `train_and_evaluate` under TF_CONFIG, warm-start + freeze.

Usage: python cluster_worker.py SOURCE_DIR MODEL_DIR MAX_STEPS  (TF_CONFIG names the task)
Prints `step N` every 50 global steps it runs, so the test can follow the training; the chief
runs slowly while the file `hold` beside MODEL_DIR exists.
"""
import json
import logging
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf
from conftest import input_fn, mlp_model_fn

import warmstart

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
source, model_dir, max_steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
# While the file HOLD exists the chief trains slowly, so training outlasts a worker's restart.
HOLD = os.path.join(os.path.dirname(model_dir), "hold")
IS_CHIEF = json.loads(os.environ["TF_CONFIG"])["task"]["type"] == "chief"


class _Pace(tf.estimator.SessionRunHook):
  """Slows each step a little so the test can kill a worker mid-training, and reports progress."""

  def before_run(self, run_context):
    return tf.estimator.SessionRunArgs(tf.compat.v1.train.get_global_step())

  def after_run(self, run_context, run_values):
    time.sleep(0.05 if IS_CHIEF and os.path.exists(HOLD) else 0.002)
    if run_values.results // 50 != (run_values.results - 1) // 50:
      print("step", run_values.results, flush=True)


config = tf.estimator.RunConfig(save_checkpoints_steps=100, tf_random_seed=3,
                                experimental_max_worker_delay_secs=0)
estimator = warmstart.estimator_from(
    mlp_model_fn, model_dir=model_dir, warm_start_from=source, include="mnist/hidden/.*",
    freeze=True, params={"deeper": True, "optimizer": "sgd"}, config=config)
tf.estimator.train_and_evaluate(
    estimator, tf.estimator.TrainSpec(input_fn(), max_steps=max_steps, hooks=[_Pace()]),
    tf.estimator.EvalSpec(input_fn(), steps=1))
print("task done", flush=True)

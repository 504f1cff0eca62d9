"""A training process for the kill-and-resume test: warm-start + freeze, then train long.

Usage: python train_worker.py SOURCE_DIR MODEL_DIR MAX_STEPS
"""
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tensorflow as tf
from conftest import input_fn, mlp_model_fn

import warmstart

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
source, model_dir, max_steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
estimator = warmstart.estimator_from(
    mlp_model_fn, model_dir=model_dir, warm_start_from=source, include="mnist/hidden/.*",
    freeze=True, params={"deeper": True},
    config=tf.estimator.RunConfig(save_checkpoints_steps=20, tf_random_seed=3))
estimator.train(input_fn(), max_steps=max_steps)
print("finished at step", estimator.get_variable_value("global_step"), flush=True)

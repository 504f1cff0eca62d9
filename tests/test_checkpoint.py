"""resolve_checkpoint and list_variables (with kinds) on real checkpoints."""
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_checkpoint

import warmstart

W = {"w": np.ones([2], np.float32)}


def test_prefix(tmp_path):
  prefix = write_checkpoint(tmp_path, W, step=7)
  ref = warmstart.resolve_checkpoint(prefix)
  assert (ref.prefix, ref.step, ref.kind) == (prefix, 7, "checkpoint")


@pytest.mark.parametrize("suffix", [".index", ".data-00000-of-00001"])
def test_file_name_of_a_checkpoint_means_its_prefix(tmp_path, suffix):
  prefix = write_checkpoint(tmp_path, W, step=7)
  assert warmstart.resolve_checkpoint(prefix + suffix).prefix == prefix


def test_directory_with_state_file_follows_it(tmp_path):
  write_checkpoint(tmp_path, W, step=5)
  newer = write_checkpoint(tmp_path, W, step=9)
  older = str(tmp_path / "model.ckpt-5")
  # Point the state file at the older one: it wins over the newest by step.
  tf.compat.v1.train.update_checkpoint_state(str(tmp_path), older, [older, newer])
  assert warmstart.resolve_checkpoint(tmp_path).step == 5


def test_directory_without_state_file_takes_newest_step(tmp_path):
  # NiftyNet users copy model.ckpt-###.* into model_dir/models/ without a state file.
  models = tmp_path / "models"
  for step in (3, 120, 40):
    write_checkpoint(models, W, step=step, state_file=False)
  assert not (models / "checkpoint").exists()
  ref = warmstart.resolve_checkpoint(models)
  assert ref.step == 120 and ref.prefix == str(models / "model.ckpt-120")
  assert warmstart.resolve_checkpoint(models, step=-1).step == 120


def test_step_picks_that_step(tmp_path):
  for step in (3, 40):
    write_checkpoint(tmp_path, W, step=step)
  assert warmstart.resolve_checkpoint(tmp_path, step=3).prefix == str(tmp_path / "model.ckpt-3")


def test_missing_step_lists_the_steps_there(tmp_path):
  for step in (3, 40):
    write_checkpoint(tmp_path, W, step=step)
  with pytest.raises(warmstart.CheckpointNotFoundError, match=r"no checkpoint of step 7 .*3, 40"):
    warmstart.resolve_checkpoint(tmp_path, step=7)


def test_index_without_data_shard_is_never_latest(tmp_path):
  write_checkpoint(tmp_path, W, step=5, state_file=False)
  broken = write_checkpoint(tmp_path, W, step=9, state_file=False)
  os.remove(broken + ".data-00000-of-00001")
  assert warmstart.resolve_checkpoint(tmp_path).step == 5
  with pytest.raises(warmstart.CheckpointNotFoundError, match="data shard .* is missing"):
    warmstart.resolve_checkpoint(broken)


def test_state_file_naming_incomplete_checkpoint_falls_back(tmp_path):
  write_checkpoint(tmp_path, W, step=5)
  broken = write_checkpoint(tmp_path, W, step=9)  # the state file names this one
  os.remove(broken + ".data-00000-of-00001")
  assert warmstart.resolve_checkpoint(tmp_path).step == 5


def test_moved_directory_with_absolute_paths_in_state_file(tmp_path):
  write_checkpoint(tmp_path / "old", W, step=1)
  write_checkpoint(tmp_path / "old", W, step=2)
  tf.compat.v1.train.update_checkpoint_state(
      str(tmp_path / "old"), str(tmp_path / "old" / "model.ckpt-1"))
  shutil.move(str(tmp_path / "old"), str(tmp_path / "new"))
  ref = warmstart.resolve_checkpoint(tmp_path / "new")
  assert ref.prefix == str(tmp_path / "new" / "model.ckpt-1")


def test_saved_model_directory(tmp_path):
  module = tf.Module()
  module.w = tf.Variable([1.0, 2.0])
  tf.saved_model.save(module, str(tmp_path / "sm"))
  ref = warmstart.resolve_checkpoint(tmp_path / "sm")
  assert ref.kind == "saved_model"
  assert ref.prefix == str(tmp_path / "sm" / "variables" / "variables")
  assert [v.shape for v in warmstart.list_variables(tmp_path / "sm")] == [(2,)]


def test_npz_source(tmp_path):
  np.savez(tmp_path / "w.npz", **{"a/kernel": np.zeros([2, 3], np.float32)})
  ref = warmstart.resolve_checkpoint(tmp_path / "w.npz")
  assert ref.kind == "npz"
  [info] = warmstart.list_variables(ref)
  assert (info.name, info.shape, info.dtype, info.nbytes) == ("a/kernel", (2, 3), "float32", 24)


def test_missing_checkpoint_lists_what_was_looked_at(tmp_path):
  with pytest.raises(warmstart.CheckpointNotFoundError) as err:
    warmstart.resolve_checkpoint(tmp_path / "nope" / "model.ckpt-3")
  assert "model.ckpt-3.index" in str(err.value) and "directory" in str(err.value)


def test_empty_directory_lists_what_was_looked_at_and_hints_models(tmp_path):
  write_checkpoint(tmp_path / "models", W, step=1)
  with pytest.raises(warmstart.CheckpointNotFoundError) as err:
    warmstart.resolve_checkpoint(tmp_path)
  message = str(err.value)
  assert "'checkpoint' state file" in message and "*.index" in message
  assert os.path.join(str(tmp_path), "models") in message


def _kinds_of(prefix):
  return {v.name: v.kind for v in warmstart.list_variables(prefix)}


@pytest.mark.parametrize("optimizer, slots", [
    ("Adam", ["Adam", "Adam_1"]),
    ("Momentum", ["Momentum"]),
    ("RMSProp", ["RMSProp", "RMSProp_1"]),
    ("Adagrad", ["Adagrad"]),
    ("Ftrl", ["Ftrl", "Ftrl_1"]),
])
def test_v1_optimizer_slots_are_optimizer_state(tmp_path, optimizer, slots):
  make = {"Adam": lambda: tf.compat.v1.train.AdamOptimizer(0.1),
          "Momentum": lambda: tf.compat.v1.train.MomentumOptimizer(0.1, 0.9),
          "RMSProp": lambda: tf.compat.v1.train.RMSPropOptimizer(0.1, momentum=0.5),
          "Adagrad": lambda: tf.compat.v1.train.AdagradOptimizer(0.1),
          "Ftrl": lambda: tf.compat.v1.train.FtrlOptimizer(0.1)}[optimizer]
  with tf.Graph().as_default():
    w = tf.compat.v1.get_variable("layer/kernel", [3, 2])
    step = tf.compat.v1.train.get_or_create_global_step()
    make().minimize(tf.reduce_sum(w * w), global_step=step)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      prefix = saver.save(session, str(tmp_path / "model.ckpt"))
  kinds = _kinds_of(prefix)
  assert kinds.pop("layer/kernel") == "weight"
  assert kinds.pop("global_step") == "step"
  for slot in slots:
    assert kinds.pop("layer/kernel/" + slot) == "optimizer_slot"
  # Whatever remains is optimizer bookkeeping such as beta1_power / beta2_power.
  assert set(kinds.values()) <= {"optimizer_slot"}, kinds
  if optimizer == "Adam":
    assert set(kinds) == {"beta1_power", "beta2_power"}


@pytest.mark.parametrize("layers", ["v1", "keras"])
def test_batch_norm_statistics_kind(tmp_path, layers):
  with tf.Graph().as_default():
    x = tf.ones([4, 3])
    if layers == "v1":
      tf.compat.v1.layers.batch_normalization(x, training=True, name="bn")
    else:
      tf.keras.layers.BatchNormalization(name="bn")(x, training=True)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      prefix = saver.save(session, str(tmp_path / "model.ckpt"))
  assert _kinds_of(prefix) == {"bn/beta": "weight", "bn/gamma": "weight",
                               "bn/moving_mean": "batchnorm_stat",
                               "bn/moving_variance": "batchnorm_stat"}


def test_list_variables_sizes(tmp_path):
  prefix = write_checkpoint(tmp_path, {"a": np.zeros([3, 4], np.float64),
                                       "n": np.zeros([5], np.int32)})
  infos = {v.name: v for v in warmstart.list_variables(prefix)}
  assert (infos["a"].nbytes, infos["a"].dtype) == (96, "float64")
  assert (infos["n"].nbytes, infos["n"].kind) == (20, "other")

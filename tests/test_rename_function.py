"""`rename` as a function model_name -> checkpoint_name or None, everywhere rename is accepted."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import input_fn, mlp_model_fn, write_checkpoint

import warmstart

F32 = np.float32
# A slim-style checkpoint of the conftest MLP: `weights`/`biases`, layers numbered from 1.
SLIM = {"net/fc1/weights": np.arange(6 * 8, dtype=F32).reshape(6, 8),
        "net/fc1/biases": np.arange(8, dtype=F32),
        "net/fc2/weights": np.ones((8, 2), F32), "net/fc2/biases": np.ones(2, F32)}
LAYERS = {"hidden": "fc1", "logits": "fc2"}


def slim_name(name):
  """mnist/hidden/kernel -> net/fc1/weights: the kind of rule a template cannot write."""
  match = re.fullmatch(r"mnist/(\w+)/(kernel|bias)", name)
  if match is None or match.group(1) not in LAYERS:
    return None
  return "net/%s/%s" % (LAYERS[match.group(1)], {"kernel": "weights", "bias": "biases"}[
      match.group(2)])


@pytest.fixture(scope="module")
def slim(tmp_path_factory):
  return write_checkpoint(tmp_path_factory.mktemp("slim"), SLIM)


def test_plan_with_a_rename_function_reports_what_it_renamed(slim):
  plan = warmstart.plan(slim, mlp_model_fn, rename=slim_name, params={}, input_fn=input_fn())
  assert {e.name: e.checkpoint_name for e in plan.report.renamed} == {
      "mnist/hidden/kernel": "net/fc1/weights", "mnist/hidden/bias": "net/fc1/biases",
      "mnist/logits/kernel": "net/fc2/weights", "mnist/logits/bias": "net/fc2/biases"}
  assert "mnist/hidden/kernel  (6, 8)" in str(plan.report)
  assert "<- net/fc1/weights" in str(plan.report)


def test_exception_inside_the_function_names_the_variable(slim):
  def broken(name):
    return "net/" + LAYERS[name.split("/")[0]]  # KeyError: the step has no layer scope
  with pytest.raises(warmstart.PatternError, match=r"rename function .*broken raised KeyError "
                     r"for model variable 'global_step'"):
    warmstart.plan(slim, mlp_model_fn, rename=broken, params={}, input_fn=input_fn(),
                   optimizer_state="keep")


def test_function_returning_a_non_string_or_renaming_nothing(slim, tmp_path):
  target = write_checkpoint(tmp_path / "t", {"net/fc1/weights": np.zeros((6, 8), F32)})
  with pytest.raises(warmstart.PatternError, match=r"returned 3 for model variable "
                     r"'net/fc1/weights'; it must return a checkpoint name"):
    warmstart.plan(slim, target, rename=lambda name: 3)
  with pytest.raises(warmstart.PlanError, match=r"rename function .* renamed no selected "
                     r"model variable: it returned None or the name itself for all 1"):
    warmstart.plan(slim, target, rename=lambda name: name)


def test_settings_and_estimator_from_accept_a_function(slim, tmp_path):
  settings = warmstart.settings(slim, rename=slim_name)
  assert isinstance(settings, tf.estimator.WarmStartSettings)
  estimator = warmstart.estimator_from(mlp_model_fn, model_dir=str(tmp_path / "m"),
                                       warm_start_from=slim, rename=slim_name, freeze=True,
                                       params={"deeper": True})
  estimator.train(input_fn(), steps=1)
  trained = tf.train.latest_checkpoint(str(tmp_path / "m"))
  reader = tf.train.load_checkpoint(trained)
  assert reader.get_tensor("mnist/hidden/kernel").tobytes() == SLIM["net/fc1/weights"].tobytes()
  assert reader.get_tensor("mnist/hidden/bias").tobytes() == SLIM["net/fc1/biases"].tobytes()


def test_diff_with_a_rename_function(slim, tmp_path):
  renamed = write_checkpoint(tmp_path / "b", {
      "mnist/hidden/kernel": SLIM["net/fc1/weights"], "mnist/hidden/bias": SLIM["net/fc1/biases"]})
  report = warmstart.diff(slim, renamed, rename=slim_name, include="net/fc1/.*")
  assert report.check(expect_same=["net/fc1/.*"]) == []
  with pytest.raises(warmstart.PatternError, match="returned None or the name itself for all 2"):
    warmstart.diff(slim, renamed, rename=lambda name: None)


def test_suggest_with_a_checkpoint_target_imports_no_tensorflow(slim, tmp_path):
  target = write_checkpoint(tmp_path / "t", {"mnist/hidden/kernel": np.zeros((6, 8), F32),
                                             "mnist/hidden/bias": np.zeros(8, F32)})
  code = ("import sys, warmstart; s = warmstart.suggest_rename(%r, %r); print(s.mapping); "
          "print(str(s)); assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
          % (slim, target))
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  assert "'mnist/hidden/kernel': 'net/fc1/weights'" in result.stdout

"""The `warmstart` command, run as `python -m warmstart` in subprocesses on real checkpoints.

Each run imports TensorFlow (~4 s), so the cases are grouped into few runs.
"""
import concurrent.futures
import json
import os
import pty
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = np.float32

A_TENSORS = {"same": np.array([1.0, 2.0, 3.0], F32), "changed": np.ones(3, F32),
             "shape": np.ones(3, F32), "dtype": np.ones(3, F32), "only_a": np.ones(1, F32),
             "global_step": np.int64(10)}
B_TENSORS = {"same": np.array([1.0, 2.0, 3.0], F32), "changed": np.array([1.0, 0.5, 1.0], F32),
             "shape": np.ones(4, F32), "dtype": np.ones(3, np.float64),
             "only_b": np.ones(1, F32), "global_step": np.int64(20)}


def env(tf_log_level="3"):
  """The environment of a run, TF_CPP_MIN_LOG_LEVEL as given (None: unset)."""
  variables = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=tf_log_level or "",
                   PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  if tf_log_level is None:
    del variables["TF_CPP_MIN_LOG_LEVEL"]
  return variables


def warmstart(*args, tf_log_level="3"):
  """Runs `python -m warmstart ARGS`; returns the CompletedProcess (text, captured)."""
  return subprocess.run([sys.executable, "-m", "warmstart", *args], capture_output=True,
                        text=True, env=env(tf_log_level), cwd=REPO, timeout=300, check=False)


def assert_clean_error(result, *words):
  """Exit status 2, one `warmstart: error:` line on stderr, no traceback."""
  assert result.returncode == 2, result
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("warmstart: error: "), result.stderr
  for word in words:
    assert word in lines[0]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  return {"a": write_checkpoint(root / "a", A_TENSORS, step=10),
          "b": write_checkpoint(root / "b", B_TENSORS, step=20),
          "a_dir": str(root / "a"),
          "a_copy": write_checkpoint(root / "a_copy", A_TENSORS, step=10),
          "renamed": write_checkpoint(root / "renamed", {
              "new/" + k: v for k, v in A_TENSORS.items()}),
          "root": str(root)}


# ---------------------------------------------------------------------------------------------
# diff


def test_diff_shows_every_status_and_exits_1(checkpoints):
  result = warmstart("diff", checkpoints["a"], checkpoints["b"])
  assert result.returncode == 1
  assert result.stderr == ""  # no progress when stderr is not a terminal
  lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[2:-1]}
  assert {name: words[0] for name, words in lines.items()} == {
      "changed": "changed", "dtype": "dtype_differs", "global_step": "changed",
      "only_a": "only_in_a", "only_b": "only_in_b", "same": "identical",
      "shape": "shape_differs"}
  assert lines["changed"][1:] == ["max|d|=0.5", "mean|d|=0.166667", "differing=1/3",
                                  "max_rel=1"]
  assert " ".join(lines["shape"][1:]) == "(3,) vs (4,)"
  assert " ".join(lines["dtype"][1:]) == "float32 vs float64"
  assert result.stdout.splitlines()[-1] == (
      "7 tensors: 1 identical, 2 changed, 1 shape_differs, 1 dtype_differs, 1 only_in_a, "
      "1 only_in_b")


def test_diff_of_identical_checkpoints_exits_0(checkpoints):
  result = warmstart("diff", checkpoints["a_dir"], checkpoints["a_copy"])
  assert (result.returncode, result.stderr) == (0, "")
  assert result.stdout.splitlines()[-1] == "6 tensors: 6 identical"


def test_diff_json_with_expectations_that_hold(checkpoints):
  result = warmstart("diff", checkpoints["a"], checkpoints["b"], "--json",
                     "--expect-same", "same", "--expect-changed=changed|global_step",
                     "--exclude", "only_.*")
  assert (result.returncode, result.stderr) == (0, "")
  data = json.loads(result.stdout)
  assert data["counts"] == {"identical": 1, "changed": 2, "shape_differs": 1,
                            "dtype_differs": 1, "only_in_a": 0, "only_in_b": 0}
  tensors = {t["name"]: t for t in data["tensors"]}
  assert set(tensors) == {"changed", "dtype", "global_step", "same", "shape"}
  assert (tensors["changed"]["num_different"], tensors["changed"]["max_abs"],
          tensors["changed"]["mean_abs"]) == (1, 0.5, pytest.approx(0.5 / 3))
  assert tensors["shape"]["shape_b"] == [4]
  assert data["expectations"] == {"expect_same": ["same"],
                                  "expect_changed": ["changed|global_step"],
                                  "failures": [], "hold": True}
  assert (data["exit_status"], data["identical"]) == (0, False)


def test_diff_expectations_that_fail_exit_1_and_are_each_printed(checkpoints):
  result = warmstart("diff", checkpoints["a"], checkpoints["b"], "--expect_same", "s.*",
                     "--expect-changed", "same", "--expect-same", "mnist/hidden")
  assert (result.returncode, result.stderr) == (1, "")
  failed = [line for line in result.stdout.splitlines() if line.startswith("expectation failed: ")]
  assert failed == [
      "expectation failed: expect-same 's.*': shape is shape_differs",
      "expectation failed: expect-same 'mnist/hidden' matches no tensor.",
      "expectation failed: expect-changed 'same': same is identical"]
  assert result.stdout.splitlines()[-1] == "expectations: 3 failed"


def test_diff_values_and_rename(checkpoints):
  result = warmstart("diff", checkpoints["a"], checkpoints["renamed"], "--rename",
                     r"new/(.*)=\1", "--expect-same", ".*", "--values", "same",
                     "--values", "global_step")
  assert (result.returncode, result.stderr) == (0, "")
  out = result.stdout
  assert "  same         identical     (B: new/same)" in out
  assert ("tensor_name:  same\n[1. 2. 3.]\ntensor_name:  new/same\n[1. 2. 3.]\n"
          "tensor_name:  global_step\n10\ntensor_name:  new/global_step\n10\n") in out
  assert out.splitlines()[-1] == "expectations: all 1 hold"


def test_diff_progress_on_a_terminal(checkpoints):
  main, child = pty.openpty()
  process = subprocess.Popen(
      [sys.executable, "-m", "warmstart", "diff", checkpoints["a"], checkpoints["b"]],
      stdout=subprocess.PIPE, stderr=child, env=env(), cwd=REPO)
  os.close(child)
  stdout, _ = process.communicate(timeout=300)
  terminal = b""
  while True:
    try:
      chunk = os.read(main, 65536)
    except OSError:  # EIO: the other side is closed
      break
    if not chunk:
      break
    terminal += chunk
  os.close(main)
  assert process.returncode == 1
  assert b"\rdiff: 7/7 tensors" in terminal and terminal.endswith(b"\r\x1b[K")
  assert b"tensors" not in stdout.split(b"\n", 1)[0]  # progress never goes to stdout


# ---------------------------------------------------------------------------------------------
# ls and plan


def test_ls(checkpoints):
  result = warmstart("ls", checkpoints["a_dir"])
  assert (result.returncode, result.stderr) == (0, "")
  lines = result.stdout.splitlines()
  assert lines[0] == "checkpoint %s (step 10)" % checkpoints["a"]
  assert lines[1].split() == ["name", "shape", "dtype", "size", "kind"]
  assert lines[2].split() == ["changed", "(3,)", "float32", "12", "B", "weight"]
  assert lines[4].split() == ["global_step", "()", "int64", "8", "B", "step"]
  assert lines[-1] == "6 variables, 60 B: 1 step (8 B), 5 weight (52 B)"


def test_ls_json_include(checkpoints):
  result = warmstart("ls", checkpoints["a"], "--include", "s.*", "--include=changed", "--json")
  assert (result.returncode, result.stderr) == (0, "")
  data = json.loads(result.stdout)
  assert [(v["name"], v["shape"], v["dtype"], v["nbytes"], v["kind"])
          for v in data["variables"]] == [("changed", [3], "float32", 12, "weight"),
                                          ("same", [3], "float32", 12, "weight"),
                                          ("shape", [3], "float32", 12, "weight")]
  assert (data["checkpoint"], data["step"], data["count"], data["total_bytes"]) == (
      checkpoints["a"], 10, 3, 36)


def test_plan_prints_the_report(checkpoints):
  result = warmstart("plan", "--from", checkpoints["a"], "--to", checkpoints["a_copy"],
                     "--include", "s.*|changed", "--on-shape-mismatch", "skip")
  assert (result.returncode, result.stderr) == (0, "")
  assert result.stdout.startswith("warm start from %s (step 10): 3 of 6 model variables "
                                  "loaded (36 B)" % checkpoints["a"])
  assert "    same " in result.stdout and "not selected (3)" in result.stdout


def test_plan_with_a_partial_copy(checkpoints):
  result = warmstart("plan", "--from", checkpoints["a"], "--to", checkpoints["b"],
                     "--include", "shape", "--on-shape-mismatch", "partial", "--json")
  assert (result.returncode, result.stderr) == (0, "")
  [entry] = json.loads(result.stdout)["partial"]
  assert (entry["name"], entry["shape"], entry["source_shape"]) == ("shape", [4], [3])
  assert entry["detail"].startswith("block [0:3] copied")


def test_plan_error_exits_2_with_the_partial_report(checkpoints):
  result = warmstart("plan", "--from", checkpoints["a"], "--to", checkpoints["b"],
                     "--include", "shape|dtype|same")
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert result.stderr.startswith("warmstart: error: cannot warm-start from %s (2 problems):"
                                  % checkpoints["a"])
  assert "shape mismatch for 'shape'" in result.stderr
  assert result.stdout.startswith("warm start from ")  # the report so far
  assert "  problems:" in result.stdout


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, one line, no traceback


def test_bad_input_exits_2_with_one_line(checkpoints):
  corrupt = os.path.join(checkpoints["root"], "corrupt")
  os.makedirs(corrupt)
  with open(os.path.join(corrupt, "model.ckpt.index"), "wb") as f:
    f.write(b"not a checkpoint index" * 3)
  with open(os.path.join(corrupt, "model.ckpt.data-00000-of-00001"), "wb") as f:
    f.write(b"\0" * 16)
  missing = os.path.join(checkpoints["root"], "nope")
  cases = {
      "missing checkpoint": (("diff", checkpoints["a"], missing), ["no checkpoint at", missing]),
      "invalid regex": (("diff", checkpoints["a"], checkpoints["b"], "--include", "same("),
                        ["invalid regex", "same("]),
      "bad flag value": (("diff", checkpoints["a"], checkpoints["b"], "--atol=-1"),
                         ["--atol"]),
      "corrupt index": (("ls", corrupt), [os.path.join(corrupt, "model.ckpt")]),
      "wrong arguments": (("diff", checkpoints["a"]), ["'diff' takes A B"]),
  }
  # Each case with another TF_CPP_MIN_LOG_LEVEL, in real `python -m warmstart` processes (every
  # case with every level: test_bad_inputs, through in-process workers).
  levels = dict(zip(cases, [None, "0", "2", "3", None]))
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = dict(zip(cases, pool.map(
        lambda name: warmstart(*cases[name][0], tf_log_level=levels[name]), cases)))
  for name, (_, words) in cases.items():
    assert_clean_error(results[name], *words), name


def test_help_exits_0():
  result = warmstart("--help")
  assert result.returncode == 0
  assert "warmstart diff A B" in result.stdout and "Exit status" in result.stdout


def test_console_script_error_is_one_line_without_tensorflow_noise(tmp_path):
  script = os.path.join(os.path.dirname(sys.executable), "warmstart")
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  result = subprocess.run([script, "ls", str(tmp_path / "nope")], capture_output=True,
                          text=True, env=env, timeout=300)
  assert result.returncode == 2
  assert result.stderr.splitlines() == [
      "warmstart: error: no checkpoint at %s: looked for the directory %s and the index file "
      "%s.index; neither exists" % ((tmp_path / "nope",) * 3)]

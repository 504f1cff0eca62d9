"""Reading and verifying never import TensorFlow: each call runs in a fresh interpreter."""
import importlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import write_checkpoint

import warmstart

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs `calls` (Python statements) after `import warmstart`; prints JSON facts.
_SCRIPT = """
import json, runpy, sys
import warmstart
facts = {"after_import": "tensorflow" in sys.modules}
%s
facts["after_call"] = "tensorflow" in sys.modules
print(json.dumps(facts))
"""


def run_python(calls):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
      REPO, os.environ.get("PYTHONPATH")])))
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  result = subprocess.run([sys.executable, "-c", _SCRIPT % textwrap.dedent(calls)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1]), result


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  root = tmp_path_factory.mktemp("no_tf")
  a = {"dense/kernel": np.ones([3, 2], np.float32), "dense/bias": np.zeros([2], np.float32),
       "words": np.array([b"a", b"bc"]), "global_step": np.int64(3)}
  b = dict(a, **{"dense/bias": np.ones([2], np.float32)})
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(root / "keras.h5", "w") as f:  # Keras' .h5 layout
    f.attrs["layer_names"] = [b"dense"]
    f.create_group("dense").attrs["weight_names"] = [b"dense/kernel:0"]
    f["dense/dense/kernel:0"] = np.ones([3, 2], np.float32)
  return {"a": write_checkpoint(root / "a", a, step=3), "a_dir": str(root / "a"),
          "b": write_checkpoint(root / "b", b, step=4), "logdir": str(root / "logs"),
          "root": str(root)}


LIBRARY_CALLS = [
    "warmstart.resolve_checkpoint({a_dir!r})",
    "warmstart.list_variables({a!r})",
    "warmstart.read_tensor({a!r}, 'words')",
    "warmstart.diff({a!r}, {b!r})",
    "warmstart.plan({a!r}, {b!r})",
    "warmstart.drift({b!r}, {a_dir!r}).write_summaries({logdir!r})",
    "warmstart.convert({a!r}, {root!r} + '/a.safetensors', exclude='words')",
    "warmstart.convert({root!r} + '/a.safetensors', {root!r} + '/a.npz')",
    "warmstart.convert({root!r} + '/a.npz', {root!r} + '/back.ckpt')",
    "warmstart.read_tensor({root!r} + '/keras.h5', 'dense/kernel')",
    "warmstart.plan({a!r}, {b!r}, on_shape_mismatch='partial', adapt={{'dense/bias': abs}})",
]


def test_library_calls_do_not_import_tensorflow(checkpoints):
  facts, _ = run_python("""
      facts["imported_by"] = []
      for call in %r:
        eval(call)
        if "tensorflow" in sys.modules:
          facts["imported_by"].append(call)
      """ % [call.format(**checkpoints) for call in LIBRARY_CALLS])
  assert facts == {"after_import": False, "imported_by": [], "after_call": False}


CLI_RUNS = [  # (argv, exit status)
    (["ls", "{a}"], 0),
    (["diff", "{a}", "{b}", "--values", "words", "--json"], 1),
    (["plan", "--from", "{a}", "--to", "{b}"], 0),
    (["drift", "--from", "{b}", "--model_dir", "{a_dir}", "--logdir", "{logdir}"], 0),
    (["ls", "{a_dir}/nope"], 2),
]


def test_cli_commands_do_not_import_tensorflow(checkpoints):
  """`python -m warmstart` as it runs, each command in turn in one interpreter."""
  runs = [(["warmstart"] + [arg.format(**checkpoints) for arg in argv], status)
          for argv, status in CLI_RUNS]
  facts, _ = run_python("""
      import contextlib, io
      from absl import flags
      facts["runs"] = []
      for argv, _ in %r:
        flags.FLAGS.unparse_flags()
        sys.argv = argv
        stderr = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
          try:
            runpy.run_module("warmstart", run_name="__main__", alter_sys=True)
          except SystemExit as exit_:
            status = exit_.code
        facts["runs"].append([status, stderr.getvalue(), "tensorflow" in sys.modules])
      """ % runs)
  nope = os.path.join(checkpoints["a_dir"], "nope")
  assert facts == {"after_import": False, "after_call": False, "runs": [
      [0, "", False], [1, "", False], [0, "", False], [0, "", False],
      [2, "warmstart: error: no checkpoint at %s: looked for the directory %s and the index "
       "file %s.index; neither exists\n" % (nope, nope, nope), False]]}


@pytest.mark.parametrize("name", ["estimator_from", "freeze", "materialize", "settings"])
def test_estimator_side_names_load_on_first_use(name):
  # Here TensorFlow is loaded already (conftest): the subprocess tests show it is not loaded by
  # `import warmstart`; this one, that the names resolve, documented, where type checkers see them.
  vars(warmstart).pop(name, None)
  value = getattr(warmstart, name)
  assert value is getattr(importlib.import_module(warmstart._LAZY[name]), name)
  assert vars(warmstart)[name] is value  # cached: __getattr__ runs once
  assert value.__doc__ and "Example" in value.__doc__
  assert name in dir(warmstart) and name in warmstart.__all__


def test_module_attributes_and_star_import():
  assert set(warmstart.__all__) <= set(dir(warmstart))
  with pytest.raises(AttributeError, match="module 'warmstart' has no attribute 'no_such_name'"):
    _ = warmstart.no_such_name
  namespace: dict = {}
  exec("from warmstart import *", namespace)
  assert set(warmstart.__all__) <= set(namespace)

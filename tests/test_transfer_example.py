"""examples/transfer_wider.py end to end on a tiny step budget (accuracy is not asserted)."""
import os
import re
import subprocess
import sys

import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_transfer_wider_example(tmp_path):
  out_dir = tmp_path / "out"
  environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(
      filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  run = subprocess.run([sys.executable, "examples/transfer_wider.py", "--out_dir=%s" % out_dir,
                        "--steps=3"], capture_output=True, text=True, env=environment,
                       cwd=REPO, timeout=600, check=False)
  assert run.returncode == 0, run.stdout + run.stderr
  out = run.stdout
  assert out.splitlines()[-1] == "expectations: all hold", out
  # The materialized model B: its report and the proof against A.
  assert re.search(r"^warm start from .*modelA/model\.ckpt-3 \(step 3\): 20 of 87 model "
                   r"variables loaded", out, re.M), out
  assert re.search(r"^ +input_channels from \(3, 3, 3, 2, 4\): 2 input channels repeated "
                   r"cyclically to 3, scaled by 2/3$", out, re.M), out
  assert re.search(r"^ +partial from \(3, 3, 3, 4, 6\): block \[:, :, :, 0:4, 0:6\] copied",
                   out, re.M), out
  assert re.search(r"^  dm/path_sub1/conv1/bias +identical +\(B: dm/path_sub2/conv1/bias\)$",
                   out, re.M), out
  assert "partially copied tensors: 13, their blocks bit-identical to A's: 13" in out
  pretrained = tf.train.latest_checkpoint(str(out_dir / "modelB.pretrained"))
  assert pretrained.endswith("model.ckpt-0")
  assert os.path.isfile(out_dir / "modelB.pretrained" / "warmstart_report.json")
  # Fine-tuned with layers 1-2 of every pathway frozen.
  assert "diff B.pretrained B: 12 identical (frozen), 16 changed" in out
  assert re.search(r"^model B: step 3, test accuracy 0\.\d{3}$", out, re.M), out

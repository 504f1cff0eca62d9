"""The README's quickstart, fine-tuning, Keras .h5 and transfer examples run verbatim."""
import json
import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _first_code_block(text, heading):
  return re.search(r"```python\n(.*?)```", text[text.index(heading):], re.S).group(1)


def test_quickstart_and_fine_tuning_run_verbatim(tmp_path):
  text = open(README).read()
  # The fine-tuning block continues the quickstart: one process, one TensorFlow import.
  code = (_first_code_block(text, "## Quickstart") + "\n"
          + _first_code_block(text, "## Fine-tuning control"))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "2 of 17 model variables loaded" in result.stdout
  assert re.search(r"mnist/hidden/kernel +identical", result.stdout)
  assert (tmp_path / "qs_ext" / "warmstart_report.json").exists()
  assert "'mnist/hidden/kernel': 0.1" in result.stdout  # ft_lr's report: lr_multipliers
  assert "optimizer slots not in the source, started fresh (4): " in result.stdout
  assert "unmoved at every step (0.0): mnist/hidden" in result.stdout
  assert len(list((tmp_path / "qs_ext" / "warmstart_drift").glob("events.out.tfevents.*"))) == 1


def test_keras_h5_example_runs_verbatim_and_loads_every_variable_bit_for_bit(tmp_path):
  """The acceptance test of Keras .h5 sources: a keras.applications model warm-starts an Estimator.

  Every one of the model's 137 variables is loaded (the report), each bit-identical to the .h5
  file at step 0 (read with h5py, not warmstart), and the frozen backbone stays so through
  training.
  """
  import h5py
  import tensorflow as tf
  text = open(README).read()
  code = _first_code_block(text, "## Pretrained weights in other formats")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().splitlines()[-1] == "[]"
  with open(tmp_path / "mobilenet_ft" / "warmstart_report.json") as f:
    report = json.load(f)
  assert len(report["loaded"]) == 137 and len(report["frozen"]) == 135
  assert report["missing"] == [] and report["not_selected"] == []
  assert sorted(e["kind"] for e in report["skipped"]) == ["optimizer_slot"] * 6 + ["step"]
  assert "137 of 144 model variables loaded" in text
  step0 = tf.train.load_checkpoint(str(tmp_path / "mobilenet_ft" / "model.ckpt-0"))
  step3 = tf.train.load_checkpoint(str(tmp_path / "mobilenet_ft" / "model.ckpt-3"))
  compared = 0
  with h5py.File(tmp_path / "mobilenet.h5", "r") as f:
    for layer in f.attrs["layer_names"]:
      for weight in f[layer].attrs["weight_names"]:
        value, name = f[layer][weight][()], weight[:-len(":0")]
        for reader in (step0, step3) if not name.startswith("conv_preds/") else (step0,):
          got = reader.get_tensor(name)
          assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), name
        compared += 1
  assert compared == 137


def test_transfer_section_runs_verbatim(tmp_path, monkeypatch, capsys):
  # In this process (TensorFlow is already imported): the section's code as a user runs it.
  code = _first_code_block(open(README).read(), "## Transfer to another architecture")
  monkeypatch.chdir(tmp_path)
  exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
  out = capsys.readouterr().out
  assert "12 of 63 model variables loaded" in out
  assert re.search(r"input_channels from \(3, 3, 3, 2, 4\): 2 input channels repeated "
                   r"cyclically to 3, scaled by 2/3", out)
  assert "path3/conv2/kernel  (3, 3, 3, 4, 16) float32  weight  <- path2/conv2/kernel" in out
  assert (tmp_path / "tr_b.pretrained" / "model.ckpt-0.index").exists()
  assert (tmp_path / "tr_b" / "warmstart_report.json").exists()

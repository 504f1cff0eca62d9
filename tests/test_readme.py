"""The README's quickstart and fine-tuning examples run verbatim."""
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

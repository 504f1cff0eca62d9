"""The README's quickstart runs verbatim."""
import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_quickstart_runs_verbatim(tmp_path):
  text = open(README).read()
  section = text[text.index("## Quickstart"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "2 of 17 model variables loaded" in result.stdout
  assert re.search(r"mnist/hidden/kernel +identical", result.stdout)
  assert (tmp_path / "qs_ext" / "warmstart_report.json").exists()

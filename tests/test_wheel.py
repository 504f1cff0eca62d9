"""The built wheel works outside the source tree: console script, `python -m`, a real `ls`.

An editable install finds modules in the source tree whatever the wheel holds, so this test builds
the wheel, installs it (without dependencies: they are the venv's) into a fresh directory, and runs
everything from a working directory that does not contain the sources, with that directory first
on the path. A module, data file or entry point missing from the wheel fails here.
"""
import importlib.metadata
import os
import subprocess
import sys
import zipfile

import numpy as np
from conftest import write_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setuptools_version():
  try:
    return tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
  except importlib.metadata.PackageNotFoundError:
    return (0,)


def _run(args, cwd, env):
  return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
  dist = tmp_path / "dist"
  # Build with the venv's setuptools when it has one (no network); pip's isolated build otherwise.
  # setuptools < 61 ignores pyproject's [project] table (Python 3.9's venv ships 58).
  isolation = ["--no-build-isolation"] if _setuptools_version() >= (61,) else []
  built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
                "--quiet", *isolation, "--wheel-dir", str(dist), ROOT], cwd=str(tmp_path),
               env=os.environ.copy())
  assert built.returncode == 0, built.stderr[-3000:]
  (wheel,) = dist.glob("warmstart-*.whl")
  contents = zipfile.ZipFile(wheel).namelist()
  assert "warmstart/py.typed" in contents
  assert "warmstart/__main__.py" in contents

  site = tmp_path / "site"
  installed = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                    "--disable-pip-version-check", "--target", str(site), str(wheel)],
                   cwd=str(tmp_path), env=os.environ.copy())
  assert installed.returncode == 0, installed.stderr[-3000:]

  elsewhere = tmp_path / "elsewhere"
  prefix = write_checkpoint(str(elsewhere / "ckpt"), {"dense/kernel": np.ones([3, 2], np.float32)},
                            step=4)
  env = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="3")
  where = _run([sys.executable, "-c", "import warmstart; print(warmstart.__file__, "
                "warmstart.__version__)"], cwd=str(elsewhere), env=env)
  assert where.returncode == 0, where.stderr[-3000:]
  path, version = where.stdout.split()
  assert path.startswith(str(site)), path  # the wheel's copy, not the source tree's
  assert version == wheel.name.split("-")[1]

  script = str(site / "bin" / "warmstart")
  for args in ([script, "--help"], [sys.executable, "-m", "warmstart", "--help"]):
    result = _run(args, cwd=str(elsewhere), env=env)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr[-3000:]
    assert "warmstart ls CKPT" in result.stdout
  listed = _run([script, "ls", prefix], cwd=str(elsewhere), env=env)
  assert listed.returncode == 0, listed.stderr[-3000:]
  assert "dense/kernel" in listed.stdout and "(step 4)" in listed.stdout

  # The console script and `python -m warmstart` are one program: the same output, and the same
  # quiet start (no TensorFlow log level set by the caller, yet one error line and nothing else).
  env.pop("TF_CPP_MIN_LOG_LEVEL")
  for args in (["ls", prefix], ["ls", prefix + "-nope"], ["diff", prefix, prefix + "-nope"]):
    by_script = _run([script, *args], cwd=str(elsewhere), env=env)
    by_module = _run([sys.executable, "-m", "warmstart", *args], cwd=str(elsewhere), env=env)
    assert (by_script.returncode, by_script.stdout, by_script.stderr) == (
        by_module.returncode, by_module.stdout, by_module.stderr)
    if by_script.returncode:
      assert by_script.returncode == 2
      assert by_script.stderr.startswith("warmstart: error: no checkpoint at ")
      assert by_script.stderr.count("\n") == 1, by_script.stderr

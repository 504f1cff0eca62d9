"""The `warmstart` console script.

It lives outside the package because importing `warmstart` imports TensorFlow, whose C++
start-up messages (CUDA, TensorRT) would bury the CLI's output and its one-line errors on stderr;
the level can only be set before that import. A level the user set is kept.
"""
import os


def run():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from warmstart import cli  # pylint: disable=g-import-not-at-top
  cli.run()

"""`python -m warmstart`: the warmstart command line (see warmstart/cli.py)."""
from warmstart import cli

__doc__ = cli.__doc__  # pylint: disable=redefined-builtin  (absl's --helpfull prints it)

if __name__ == "__main__":
  cli.run()

"""warmstart: correct, visible and verifiable warm-starting of tf.estimator models.

See README.md for the guide; the public names are re-exported here.

`import warmstart` does not import TensorFlow: reading and verifying (`resolve_checkpoint`,
`list_variables`, `read_tensor`, `diff`, `convert`, `plan` against a checkpoint) never need it. The
Estimator-side names (`settings`, `estimator_from`, `freeze`, `materialize`) load it on first use;
the others but listing and reading (`diff`, `plan`, `convert`, `drift`, `suggest_rename`, their
result types, `__version__`) load on first use too, which keeps `warmstart ls` quick.
"""
from typing import TYPE_CHECKING

from warmstart._checkpoint import CheckpointRef
from warmstart._checkpoint import VariableInfo
from warmstart._checkpoint import resolve_checkpoint
from warmstart._errors import CheckpointNotFoundError
from warmstart._errors import CheckpointReadError
from warmstart._errors import FreezeError
from warmstart._errors import PatternError
from warmstart._errors import PlanError
from warmstart._errors import WarmStartError
from warmstart._source import Source
from warmstart.sources import list_variables
from warmstart.sources import read_tensor

if TYPE_CHECKING:  # type checkers and IDEs see the lazily loaded names as ordinary imports
  from warmstart._convert import convert
  from warmstart._diff import DiffReport
  from warmstart._diff import diff
  from warmstart._drift import DriftReport
  from warmstart._drift import drift
  from warmstart._estimator import estimator_from
  from warmstart._estimator import settings
  from warmstart._freeze import freeze
  from warmstart._materialize import materialize
  from warmstart._plan import Plan
  from warmstart._plan import Report
  from warmstart._plan import plan
  from warmstart._suggest import RenameSuggestion
  from warmstart._suggest import suggest_rename

# Names loaded by __getattr__ on first use (PEP 562): the Estimator side imports TensorFlow; the
# others are loaded when used so that `warmstart ls` imports only what listing needs.
_LAZY = {
    "estimator_from": "warmstart._estimator",
    "settings": "warmstart._estimator",
    "freeze": "warmstart._freeze",
    "materialize": "warmstart._materialize",
    "convert": "warmstart._convert",
    "DiffReport": "warmstart._diff",
    "diff": "warmstart._diff",
    "DriftReport": "warmstart._drift",
    "drift": "warmstart._drift",
    "Plan": "warmstart._plan",
    "Report": "warmstart._plan",
    "plan": "warmstart._plan",
    "RenameSuggestion": "warmstart._suggest",
    "suggest_rename": "warmstart._suggest",
}

__all__ = (
    "CheckpointNotFoundError",
    "CheckpointReadError",
    "CheckpointRef",
    "DiffReport",
    "DriftReport",
    "FreezeError",
    "PatternError",
    "Plan",
    "PlanError",
    "RenameSuggestion",
    "Report",
    "Source",
    "VariableInfo",
    "WarmStartError",
    "convert",
    "diff",
    "drift",
    "estimator_from",
    "freeze",
    "list_variables",
    "materialize",
    "plan",
    "read_tensor",
    "resolve_checkpoint",
    "settings",
    "suggest_rename",
)


def __getattr__(name):
  if name == "__version__":
    value = _version()
  elif name in _LAZY:
    import importlib  # pylint: disable=g-import-not-at-top
    value = getattr(importlib.import_module(_LAZY[name]), name)
  else:
    raise AttributeError("module 'warmstart' has no attribute %r" % name)
  globals()[name] = value  # later lookups skip __getattr__
  return value


def _version() -> str:
  """The package metadata's version (pyproject.toml), so the two cannot disagree."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top  (50 ms: on first use)
  try:
    return metadata.version("warmstart")
  except metadata.PackageNotFoundError:  # a source tree that was never installed
    return "0+unknown"


def __dir__():
  return sorted(set(globals()) | set(__all__) | {"__version__"})

"""warmstart: correct, visible and verifiable warm-starting of tf.estimator models.

See README.md for the guide; the public names are re-exported here.

`import warmstart` does not import TensorFlow: reading and verifying (`resolve_checkpoint`,
`list_variables`, `read_tensor`, `diff`, `convert`, `plan` against a checkpoint) never need it. The
Estimator-side names (`settings`, `estimator_from`, `freeze`) load it on first use.
"""
from importlib import metadata as _metadata
from typing import TYPE_CHECKING

from warmstart._checkpoint import CheckpointRef
from warmstart._checkpoint import VariableInfo
from warmstart._checkpoint import resolve_checkpoint
from warmstart._convert import convert
from warmstart._diff import DiffReport
from warmstart._diff import diff
from warmstart._drift import DriftReport
from warmstart._drift import drift
from warmstart._errors import CheckpointNotFoundError
from warmstart._errors import CheckpointReadError
from warmstart._errors import FreezeError
from warmstart._errors import PatternError
from warmstart._errors import PlanError
from warmstart._errors import WarmStartError
from warmstart._plan import Plan
from warmstart._plan import Report
from warmstart._plan import plan
from warmstart._source import Source
from warmstart._suggest import RenameSuggestion
from warmstart._suggest import suggest_rename
from warmstart.sources import list_variables
from warmstart.sources import read_tensor

if TYPE_CHECKING:  # type checkers and IDEs see the lazily loaded names as ordinary imports
  from warmstart._estimator import estimator_from
  from warmstart._estimator import settings
  from warmstart._freeze import freeze
  from warmstart._materialize import materialize

# Names whose modules import TensorFlow: loaded by __getattr__ on first use (PEP 562).
_LAZY = {
    "estimator_from": "warmstart._estimator",
    "settings": "warmstart._estimator",
    "freeze": "warmstart._freeze",
    "materialize": "warmstart._materialize",
}

try:  # One version: the package metadata's (pyproject.toml), so the two cannot disagree.
  __version__ = _metadata.version("warmstart")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
  __version__ = "0+unknown"

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
  module_name = _LAZY.get(name)
  if module_name is None:
    raise AttributeError("module 'warmstart' has no attribute %r" % name)
  import importlib  # pylint: disable=g-import-not-at-top
  value = getattr(importlib.import_module(module_name), name)
  globals()[name] = value  # later lookups skip __getattr__
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))

"""warmstart: correct, visible and verifiable warm-starting of tf.estimator models.

See README.md for the guide; the public names are re-exported here.
"""
from importlib import metadata as _metadata

from warmstart._checkpoint import CheckpointRef
from warmstart._checkpoint import VariableInfo
from warmstart._checkpoint import list_variables
from warmstart._checkpoint import resolve_checkpoint
from warmstart._diff import DiffReport
from warmstart._diff import diff
from warmstart._errors import CheckpointNotFoundError
from warmstart._errors import CheckpointReadError
from warmstart._errors import FreezeError
from warmstart._errors import PatternError
from warmstart._errors import PlanError
from warmstart._errors import WarmStartError
from warmstart._estimator import estimator_from
from warmstart._estimator import plan
from warmstart._estimator import settings
from warmstart._freeze import freeze
from warmstart._plan import Plan
from warmstart._plan import Report

try:  # One version: the package metadata's (pyproject.toml), so the two cannot disagree.
  __version__ = _metadata.version("warmstart")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
  __version__ = "0+unknown"

__all__ = (
    "CheckpointNotFoundError",
    "CheckpointReadError",
    "CheckpointRef",
    "DiffReport",
    "FreezeError",
    "PatternError",
    "Plan",
    "PlanError",
    "Report",
    "VariableInfo",
    "WarmStartError",
    "diff",
    "estimator_from",
    "freeze",
    "list_variables",
    "plan",
    "resolve_checkpoint",
    "settings",
)

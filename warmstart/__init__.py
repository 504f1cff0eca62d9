"""warmstart: correct, visible and verifiable warm-starting of tf.estimator models.

See README.md for the guide; the public names are re-exported here.
"""
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

__version__ = "0.1.0"

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

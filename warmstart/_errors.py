"""The project's error types: one base class, a subclass per stage.

Every message says what failed, shows the values side by side and names the fix.
They subclass ValueError so code that guards a call with `except ValueError` keeps working.
"""


class WarmStartError(ValueError):
  """Base class of every error this library raises on bad input."""


class CheckpointNotFoundError(WarmStartError):
  """No usable checkpoint at the given source (the message lists what was looked at)."""


class CheckpointReadError(WarmStartError):
  """A checkpoint exists but cannot be read: truncated, corrupt, or not a checkpoint."""


class PatternError(WarmStartError):
  """A regex is invalid, or a pattern / rule / mapping matches nothing."""


class PlanError(WarmStartError):
  """The warm start cannot be planned as asked (the message lists every problem).

  Attributes:
    problems: one plain-language line per problem.
    report: the `Report` of the plan as far as it got, or None.
  """

  def __init__(self, message, problems=(), report=None):
    super().__init__(message)
    self.problems = list(problems)
    self.report = report


class FreezeError(WarmStartError):
  """A train_op still updates a variable that was frozen."""


def first_line(err: BaseException) -> str:
  """The first line of an exception's message, for one-line errors (its type if it has none)."""
  text = str(err).strip().splitlines()
  return text[0] if text else type(err).__name__

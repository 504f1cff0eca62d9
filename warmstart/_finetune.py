"""Fine-tuning control beyond freezing: what to schedule and scale (no TensorFlow here).

`FineTuning` holds the validated arguments `freeze_batchnorm_stats`, `unfreeze_at` and
`lr_multipliers` and decides per variable name; `TrainGraph` records what a training graph froze,
scheduled and scaled, for the report. `_update_control` applies the schedule and multipliers to
the optimizer's updates while the model_fn builds its graph; `by_name` decides the same from
names alone, for a dry run against a checkpoint of the target.
"""
import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Callable, Optional

from warmstart import _kinds, _select
from warmstart._checkpoint import VariableInfo
from warmstart._errors import PatternError, WarmStartError

# unfreeze_at: {pattern: global step}; lr_multipliers: {pattern: factor}.
UnfreezeAt = Optional[Mapping[str, int]]
LrMultipliers = Optional[Mapping[str, float]]

# What a schedule or a multiplier can apply to (optimizer slots and the step never).
_SCHEDULED_KINDS = (_kinds.WEIGHT, _kinds.BATCHNORM_STAT, _kinds.OTHER)
_SCALED_KINDS = (_kinds.WEIGHT, _kinds.OTHER)


def _compile_mapping(mapping, what, check):
  """[(Pattern, value)] in the order given; `check` validates and converts each value."""
  if mapping is None:
    return ()
  if not isinstance(mapping, Mapping):
    raise WarmStartError("%s must be a dict {pattern: value}; got %s %r"
                         % (what, type(mapping).__name__, mapping))
  return tuple((_select.compile_pattern(pattern, what), check(pattern, value))
               for pattern, value in mapping.items())


def _check_step(pattern, step):
  if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 1:
    raise WarmStartError(
        "unfreeze_at[%r] must be a global step >= 1 (an int); got %r. Step 0 would mean never "
        "frozen: leave the pattern out." % (pattern, step))
  return int(step)


def _check_factor(pattern, factor):
  if (isinstance(factor, bool) or not isinstance(factor, numbers.Real)
      or not math.isfinite(factor) or factor < 0):
    raise WarmStartError(
        "lr_multipliers[%r] must be a finite number >= 0 (0 freezes, 0.1 makes the updates a "
        "tenth as large); got %r" % (pattern, factor))
  return float(factor)


def _first(rules, name):
  return next((value for pattern, value in rules if pattern.matches(name)), None)


class FineTuning:
  """Validated fine-tuning arguments: frozen batch-norm statistics, schedule, multipliers.

  Every argument is checked at construction, so a bad call fails before any graph exists.
  Patterns fully match variable names; the first pattern that matches a variable decides.
  """

  def __init__(self, *, freeze_batchnorm_stats: bool = True, unfreeze_at: UnfreezeAt = None,
               lr_multipliers: LrMultipliers = None):
    if not isinstance(freeze_batchnorm_stats, bool):
      raise WarmStartError("freeze_batchnorm_stats must be True or False; got %r"
                           % (freeze_batchnorm_stats,))
    self.freeze_batchnorm_stats = freeze_batchnorm_stats
    self.unfreeze_at = _compile_mapping(unfreeze_at, "unfreeze_at", _check_step)
    self.lr_multipliers = _compile_mapping(lr_multipliers, "lr_multipliers", _check_factor)

  def unfreeze_step(self, name: str) -> Optional[int]:
    """The global step from which `name` trains, if a schedule holds it frozen until then."""
    kind = _kinds.kind_of(name)
    if kind not in _SCHEDULED_KINDS or (
        kind == _kinds.BATCHNORM_STAT and not self.freeze_batchnorm_stats):
      return None
    return _first(self.unfreeze_at, name)

  def multiplier(self, name: str) -> Optional[float]:
    """The learning-rate multiplier of `name`, or None."""
    return _first(self.lr_multipliers, name) if _kinds.kind_of(name) in _SCALED_KINDS else None

  def frozen_predicate(self, base: Optional[Callable[[VariableInfo], bool]]
                       ) -> Optional[Callable[[VariableInfo], bool]]:
    """Combines `base` (what freeze= freezes) with this: the predicate of what stays frozen.

    A schedule overrides freezing (frozen until its step, then trained), a factor of 0 freezes,
    and with freeze_batchnorm_stats=False batch-norm statistics are never frozen.
    """
    if base is None and not any(f == 0 for _, f in self.lr_multipliers):
      return None

    def predicate(info: VariableInfo) -> bool:
      if self.unfreeze_step(info.name) is not None:
        return False
      if info.kind == _kinds.BATCHNORM_STAT and not self.freeze_batchnorm_stats:
        return False
      if self.multiplier(info.name) == 0:
        return True
      return base is not None and base(info)
    return predicate

  def unused_patterns(self, *, scheduled, scaled, names, optimizer_calls) -> list[str]:
    """One message per unfreeze_at / lr_multipliers pattern that decided no variable.

    Args:
      scheduled: names held frozen until a step.
      scaled: names whose updates are scaled, or frozen by a factor of 0.
      names: every model variable, for the hints.
      optimizer_calls: how many `apply_gradients` calls were seen.
    """
    problems = []
    for what, rules, decided in (("unfreeze_at", self.unfreeze_at, scheduled),
                                 ("lr_multipliers", self.lr_multipliers, scaled)):
      for pattern, _ in rules:
        if any(pattern.matches(n) for n in decided):
          continue
        matched = [n for n in names if pattern.matches(n)]
        if not matched:
          problems.extend(_select.unmatched([pattern], names, what, "model variable"))
        elif not optimizer_calls:
          problems.append(
              "%s pattern %r matches %s, but no optimizer applied gradients in the model_fn: %s "
              "acts in the apply_gradients (or minimize) of a tf.compat.v1.train.Optimizer or a "
              "tf.keras.optimizers.legacy optimizer." % (what, pattern.text, ", ".join(
                  matched[:3]), what))
        else:
          problems.append(
              "%s pattern %r matches %s, which no optimizer updates (not trainable, frozen, or "
              "left out of var_list); %s acts on the variables the optimizer trains."
              % (what, pattern.text, ", ".join(matched[:3]), what))
    return problems


@dataclasses.dataclass
class TrainGraph:
  """What `build_train_spec` froze, scheduled and scaled in a training graph.

  Attributes:
    frozen: names frozen for the whole run (batch-norm statistics and factor-0 variables too).
    unfreeze_at: {name: step} of the variables frozen until a global step.
    lr_multipliers: {name: factor} of the variables whose updates are scaled (0: frozen).
  """
  frozen: list[str]
  unfreeze_at: dict[str, int]
  lr_multipliers: dict[str, float]

  def update(self, report) -> None:
    """Writes this into a `Report` (frozen, unfreeze_at, lr_multipliers)."""
    report.frozen = list(self.frozen)
    report.unfreeze_at = dict(self.unfreeze_at)
    report.lr_multipliers = dict(self.lr_multipliers)

  def describe(self) -> str:
    parts = ["frozen: %s" % (", ".join(self.frozen) or "none")]
    if self.unfreeze_at:
      parts.append("frozen until a step: %s" % ", ".join(
          "%s@%d" % kv for kv in self.unfreeze_at.items()))
    if self.lr_multipliers:
      parts.append("lr multipliers: %s" % ", ".join(
          "%s x%g" % kv for kv in self.lr_multipliers.items()))
    return "; ".join(parts)


def by_name(variables: Sequence[VariableInfo],
            predicate: Optional[Callable[[VariableInfo], bool]],
            fine_tuning: FineTuning) -> TrainGraph:
  """What training would freeze, schedule and scale, decided from the variables' names alone.

  For a dry run against a checkpoint of the target, where there is no graph: batch-norm layers
  are told by their variables' names (`<layer>/gamma`, `<layer>/beta`, `<layer>/moving_mean`...).

  Raises:
    PatternError: an unfreeze_at or lr_multipliers pattern decided no variable.
  """
  predicate = fine_tuning.frozen_predicate(predicate)
  names = [v.name for v in variables]
  frozen = {v.name: None for v in variables if predicate is not None and predicate(v)}
  scheduled: dict[str, int] = {}
  multipliers: dict[str, float] = {}
  for n in names:
    step, factor = fine_tuning.unfreeze_step(n), fine_tuning.multiplier(n)
    if step is not None:
      scheduled[n] = step
    if factor is not None and (factor == 0 or n not in frozen):
      multipliers[n] = factor
  if fine_tuning.freeze_batchnorm_stats:
    layers: dict[str, list[str]] = {}
    for v in variables:
      if v.kind == _kinds.BATCHNORM_STAT:
        layers.setdefault(v.name.rsplit("/", 1)[0], []).append(v.name)
    for layer, statistics in layers.items():
      # The statistics follow their layer: frozen with any of its variables, else scheduled
      # until the last of their steps.
      members = [layer + "/gamma", layer + "/beta", *statistics]
      steps = [scheduled[n] for n in members if n in scheduled]
      if any(n in frozen for n in members):
        frozen.update(dict.fromkeys(statistics))
        for n in statistics:
          scheduled.pop(n, None)
      elif steps:
        scheduled.update((n, max(steps)) for n in statistics)
  problems = fine_tuning.unused_patterns(scheduled=scheduled, scaled=multipliers, names=names,
                                         optimizer_calls=1)
  if problems:
    raise PatternError(" ".join(problems))
  return TrainGraph(list(frozen), scheduled, multipliers)

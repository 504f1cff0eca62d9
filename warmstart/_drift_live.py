"""Live drift: ‖w − w₀‖ / ‖w₀‖ per group, written to TensorBoard while the Estimator trains.

`estimator_from(..., track_drift=...)` calls `build_hook` in the training graph. For each tracked
warm-started variable (each part of a partitioned one) it adds a local, non-trainable copy of the
source tensor, read from the source checkpoint when the session starts (never saved in the
model's checkpoints), colocated with the variable so only two scalars per tensor leave its
device. The sums ‖w − w₀‖² and ‖w₀‖² are taken in float64 (the difference of two float32 values
is exact there) and aggregated per group by `_drift.group_values`, the same function the offline
`warmstart.drift` uses, so both write the same values under the same tags.

A hook on the chief evaluates them after the step every `save_summary_steps` steps (at the
session's first step, at multiples of it and at the last step, the steps at which
CheckpointSaverHook saves with `save_checkpoints_steps` equal to it), and writes them with the
Estimator's own summary writer for model_dir, beside the loss.
"""
import logging
from collections.abc import Mapping
from typing import Optional, Union

import tensorflow as tf

from warmstart import _apply, _drift, _plan, _select
from warmstart._errors import PatternError, WarmStartError

logger = logging.getLogger(__name__)

_human_bytes = _plan._human_bytes  # pylint: disable=protected-access

# The copies of the source tensors cost as much memory as those tensors: above this, refuse
# unless the user raises the limit (track_drift_max_bytes).
DEFAULT_MAX_BYTES = 512 << 20

# track_drift: None / False (off), True (every warm-started variable), or a regex / list of
# regexes over model variable names.
TrackDrift = Union[None, bool, str, list, tuple]


def compile_track_drift(track_drift: TrackDrift, max_bytes: Optional[int]
                        ) -> Optional[tuple[_select.Pattern, ...]]:
  """Validates the arguments: None when off, () for everything, else the compiled patterns."""
  if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                or max_bytes < 0):
    raise WarmStartError("track_drift_max_bytes must be a number of bytes >= 0, or None for no "
                         "limit; got %r" % (max_bytes,))
  if track_drift is None or track_drift is False:
    return None
  if track_drift is True:
    return ()
  patterns = _select.compile_patterns(track_drift, "track_drift")
  if not patterns:
    raise PatternError("track_drift is an empty list: pass True to track every warm-started "
                       "variable, or regexes of the ones to track")
  return patterns


def _choose(plan, variables, patterns, source_variables):
  """[(model name, source name, group)] to track, and the (name, why) left out."""
  # Weights and batch-norm statistics, as offline: optimizer state has no meaningful drift.
  loaded = {a.name: a.checkpoint_name for a in plan.assignments
            if variables[a.name][0].kind in _drift.TRACKED_KINDS}
  names = sorted(loaded)
  if patterns:
    problems = _select.unmatched(patterns, names, "track_drift",
                                 "warm-started weight or batch-norm statistic")
    if problems:
      raise PatternError(" ".join(problems))
    names = [n for n in names if _select.first_match(patterns, n)]
  tracked, left_out = [], []
  for name in names:
    info, source_info = variables[name][0], source_variables[loaded[name]]
    if info.shape != source_info.shape:
      left_out.append((name, "shape %s vs source %s" % (info.shape, source_info.shape)))
    elif not (_drift.is_float(info.dtype) and _drift.is_float(source_info.dtype)):
      left_out.append((name, "dtype %s is not floating-point" % info.dtype))
    else:
      tracked.append((name, loaded[name], _drift.layer_of(name)))
  return tracked, left_out


def build_hook(plan: _plan.Plan, variables: Mapping, source_variables: Mapping,
               patterns: tuple[_select.Pattern, ...], max_bytes: Optional[int],
               config: tf.estimator.RunConfig) -> Optional[tf.compat.v1.train.SessionRunHook]:
  """Adds the drift computation to the training graph; returns the hook that writes it.

  Args:
    plan: the warm start's plan (what was loaded from where).
    variables: the graph's variables, as `_apply.graph_variables()` returns them.
    source_variables: {name: VariableInfo} of the source.
    patterns: () for every warm-started variable, else the regexes selecting them.
    max_bytes: refuse to copy more source bytes than this (None: no limit).
    config: the Estimator's RunConfig (summary steps, model_dir, chief or not).

  Returns:
    A hook for `training_chief_hooks`, or None when there is nothing to do (not the chief,
    summaries turned off, nothing warm-started).

  Raises:
    PatternError: a track_drift pattern matches no warm-started variable.
    WarmStartError: the copies would take more than max_bytes, or nothing selected is trackable.
  """
  every_steps = config.save_summary_steps
  if not every_steps:
    logger.warning("track_drift: RunConfig.save_summary_steps is %r, so the Estimator writes no "
                   "summaries and drift is not tracked", every_steps)
    return None
  tracked, left_out = _choose(plan, variables, patterns, source_variables)
  for name, reason in left_out:
    logger.info("track_drift leaves out %s: %s", name, reason)
  if not tracked:
    if patterns:
      raise WarmStartError("track_drift: none of the warm-started variables it matches can be "
                           "tracked: %s" % "; ".join("%s: %s" % item for item in left_out))
    logger.warning("track_drift: nothing warm-started can be tracked")
    return None
  copied = sum(source_variables[source_name].nbytes for _, source_name, _ in tracked)
  largest = max(tracked, key=lambda item: source_variables[item[1]].nbytes)
  if max_bytes is not None and copied > max_bytes:
    raise WarmStartError(
        "track_drift would keep a copy of %d source tensors, %s (the largest: %s, %s), beside "
        "the model; the limit is %s (track_drift_max_bytes). Track fewer variables "
        "(track_drift=%r), or raise the limit (track_drift_max_bytes=%d, or None for none)." % (
            len(tracked), _human_bytes(copied), largest[1],
            _human_bytes(source_variables[largest[1]].nbytes), _human_bytes(max_bytes),
            _drift.layer_of(largest[0]) + "/.*", copied))
  if not config.is_chief:
    return None  # only the chief writes summaries; workers need no copies
  group_count = len({g for _, _, g in tracked})
  logger.info("track_drift: %d variable%s in %d group%s; the source copies take %s",
              len(tracked), "" if len(tracked) == 1 else "s", group_count,
              "" if group_count == 1 else "s", _human_bytes(copied))
  prefix, keys = _apply.materialize(plan.source, {source_name for _, source_name, _ in tracked})
  delta_squared, source_squared = [], []
  with tf.compat.v1.name_scope("warmstart_drift/"):
    for name, source_name, _ in tracked:
      deltas, norms = [], []
      for part in variables[name][1]:
        delta, norm = _squares(part, prefix, keys[source_name])
        deltas.append(delta)
        norms.append(norm)
      delta_squared.append(tf.add_n(deltas))
      source_squared.append(tf.add_n(norms))
  groups: dict[str, list[int]] = {}
  for index, (_, _, group) in enumerate(tracked):
    groups.setdefault(group, []).append(index)
  return DriftHook(groups, tf.stack(delta_squared), tf.stack(source_squared), every_steps,
                   config.model_dir)


def _squares(part, prefix: str, source_name: str):
  """(‖w − w₀‖², ‖w₀‖²) of one variable (or part) in float64, computed where it lives."""
  slice_info = getattr(part, "_save_slice_info", None)
  dtype = part.dtype.base_dtype
  # Restoring runs on the CPU (its only kernel); the copy and the arithmetic sit with the
  # variable, so each step's check moves two scalars, not the tensor.
  restored = tf.raw_ops.RestoreV2(
      prefix=prefix, tensor_names=[source_name],
      shape_and_slices=[slice_info.spec if slice_info is not None else ""], dtypes=[dtype])[0]
  with tf.compat.v1.colocate_with(part):
    copy = tf.compat.v1.Variable(
        tf.ensure_shape(restored, part.shape), trainable=False,
        collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES],
        name=_apply.variable_name(part).replace(":", "_"))
    source = tf.cast(copy, tf.float64)
    delta = tf.cast(part, tf.float64) - source
    return tf.reduce_sum(tf.square(delta)), tf.reduce_sum(tf.square(source))


class DriftHook(tf.compat.v1.train.SessionRunHook):
  """Writes `warmstart/drift/<group>` scalars after the step every `every_steps` steps."""

  def __init__(self, groups: dict[str, list[int]], delta_squared: tf.Tensor,
               source_squared: tf.Tensor, every_steps: int, output_dir: str):
    self._groups = groups
    self._delta_squared = delta_squared
    self._source_squared_tensor = source_squared
    self._every_steps = every_steps
    self._output_dir = output_dir
    self._source_squared: list[float] = []

  def begin(self):
    self._global_step = tf.compat.v1.train.get_global_step()
    if self._global_step is None:
      raise WarmStartError("track_drift needs a global step in the training graph")
    self._timer = tf.compat.v1.train.SecondOrStepTimer(every_steps=self._every_steps)
    self._writer = tf.compat.v1.summary.FileWriterCache.get(self._output_dir)

  def after_create_session(self, session, coord):
    del coord  # unused
    self._source_squared = [float(v) for v in session.run(self._source_squared_tensor)]
    self._write(session, force=True)

  def before_run(self, run_context):
    return tf.compat.v1.train.SessionRunArgs(self._global_step)

  def after_run(self, run_context, run_values):
    if self._timer.should_trigger_for_step(run_values.results + 1):
      self._write(run_context.session)

  def end(self, session):
    self._write(session, force=True)
    self._writer.flush()

  def _write(self, session, force=False):
    step = int(session.run(self._global_step))
    if self._timer.last_triggered_step() == step or not (
        force or self._timer.should_trigger_for_step(step)):
      return
    delta_squared = [float(v) for v in session.run(self._delta_squared)]
    values = _drift.group_values(self._groups, delta_squared, self._source_squared)
    self._writer.add_summary(_drift.summary(values), step)  # serialized: the writer takes it
    self._timer.update_last_triggered_step(step)

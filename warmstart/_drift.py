"""Drift from the pretrained weights: how far each warm-started tensor moved, step by step.

The quantity is the relative distance ‖w − w₀‖ / ‖w₀‖ of a tensor `w` of the model from the
source tensor `w₀` it was warm-started from (Frobenius norms, in float64). A group of tensors (by
default a layer: the name up to its last `/`) is measured as one vector: sqrt(Σ‖w − w₀‖²) /
sqrt(Σ‖w₀‖²), so a layer's bias does not weigh as much as its kernel. A tensor that did not move
contributes exactly 0, so a frozen group reads exactly 0.0.

`drift()` measures every checkpoint still in a model_dir, streaming tensor by tensor (memory:
one source tensor, one model tensor and a few MiB of float64 scratch). The live version
(`estimator_from(..., track_drift=...)`, in `_drift_live`) sums the same squares in the training
graph and aggregates them with `group_values` here, so both write the same numbers under the
same TensorBoard tags (`warmstart/drift/<group>`). Nothing here imports TensorFlow, not even
the events file writer (`_events`).
"""
import contextlib
import dataclasses
import glob
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Optional

import numpy as np

from warmstart import _checkpoint, _events, _kinds, _printable, _rename, _select, sources
from warmstart._checkpoint import Source, VariableInfo
from warmstart._errors import CheckpointNotFoundError, PatternError, WarmStartError

logger = logging.getLogger(__name__)

TAG_PREFIX = "warmstart/drift/"
# Written by estimator_from into the model_dir (the same name as `_estimator.REPORT_FILE`, which
# cannot be imported here without TensorFlow): its `loaded` pairs say which tensor came from where.
REPORT_FILE = "warmstart_report.json"
# Events files written by `write_summaries` end with this, so a second run replaces its own
# earlier file (TensorBoard would draw both) and never touches anyone else's.
EVENTS_SUFFIX = ".warmstart-drift"
# Kinds whose drift means something: weights and batch-norm statistics, not optimizer state.
TRACKED_KINDS = (_kinds.WEIGHT, _kinds.BATCHNORM_STAT)
# Elements converted to float64 at a time: a 2 MiB scratch array, which stays in cache.
_CHUNK = 1 << 18
# Rows and step columns of the text table.
_TABLE_ROWS = 20
_TABLE_STEPS = 6


def tag(group: str) -> str:
  """The TensorBoard tag of a group's drift."""
  return TAG_PREFIX + group


def layer_of(name: str) -> str:
  """The default group of a tensor: its name up to the last '/' (the whole name if none)."""
  return name.rpartition("/")[0] or name


def grouping(group: Optional[str]) -> Callable[[str], Optional[str]]:
  """Returns name -> group name (None: in no group) for the `group=` argument.

  Args:
    group: None for layers, or a regex (fully matched) whose first capture group names the
      group, e.g. `r"resnet/(block\\d+)/.*"`.

  Raises:
    PatternError: an invalid regex, or one without a capture group.
  """
  if group is None:
    return layer_of
  pattern = _select.compile_pattern(group, "group")
  if pattern.regex.groups < 1:
    raise PatternError("group regex %r has no capture group: its first group names the group, "
                       "e.g. %r" % (group, r"(.*)/(kernel|bias)"))

  def group_of(name):
    match = pattern.regex.fullmatch(name)
    return (match.group(1) or None) if match else None
  return group_of


def is_float(dtype: str) -> bool:
  """Whether a dtype name is a real floating-point type (drift is measured for those only)."""
  return dtype.startswith("float") or dtype == "bfloat16"


def relative_distance(delta_squared: float, source_squared: float) -> float:
  """sqrt(delta² / source²): 0.0 when nothing moved, inf when the source is all zeros."""
  if delta_squared == 0:
    return 0.0
  if source_squared == 0:
    return math.inf
  return math.sqrt(delta_squared / source_squared)


def group_values(groups: Mapping[str, Sequence[int]], delta_squared: Sequence[float],
                 source_squared: Sequence[float]) -> dict[str, float]:
  """{group: relative distance} from per-tensor sums of squares.

  Args:
    groups: {group: indices of its tensors in the two sequences}.
    delta_squared: ‖w − w₀‖² of each tensor.
    source_squared: ‖w₀‖² of each tensor.
  """
  return {group: relative_distance(math.fsum(delta_squared[i] for i in members),
                                   math.fsum(source_squared[i] for i in members))
          for group, members in groups.items()}


def squared_norm(value: np.ndarray) -> float:
  """‖value‖² in float64, chunk by chunk."""
  flat = value.reshape(-1)
  scratch = np.empty(min(_CHUNK, flat.size), np.float64)
  total = 0.0
  for start in range(0, flat.size, _CHUNK):
    chunk = scratch[:min(_CHUNK, flat.size - start)]
    np.copyto(chunk, flat[start:start + _CHUNK])
    total += float(np.dot(chunk, chunk))
  return total


def squared_distance(value: np.ndarray, source: np.ndarray) -> float:
  """‖value − source‖² in float64 (the difference is exact for float32 inputs), by chunks."""
  a, b = value.reshape(-1), source.reshape(-1)
  scratch = np.empty(min(_CHUNK, a.size), np.float64)
  total = 0.0
  for start in range(0, a.size, _CHUNK):
    chunk = scratch[:min(_CHUNK, a.size - start)]
    np.subtract(a[start:start + _CHUNK], b[start:start + _CHUNK], out=chunk, dtype=np.float64)
    total += float(np.dot(chunk, chunk))
  return total


@dataclasses.dataclass(frozen=True)
class TrackedTensor:
  """One tensor whose drift is measured.

  Attributes:
    name: its name in the model (model_dir's checkpoints).
    source_name: the source tensor it is compared with.
    group: the group it counts in.
    shape, dtype: of both.
    source_norm: ‖w₀‖.
    distances: ‖w − w₀‖ at each step of the report.
  """
  name: str
  source_name: str
  group: str
  shape: tuple[int, ...]
  dtype: str
  source_norm: float
  distances: tuple[float, ...]


def _json_number(value):
  """Strict JSON has no NaN or Infinity: those are written as the strings 'nan', 'inf'."""
  return value if math.isfinite(value) else str(value)


def _format(value: float) -> str:
  return "0" if value == 0 else "%.3g" % value


@dataclasses.dataclass
class DriftReport:
  """The drift of a model_dir's checkpoints from their warm-start source, per group and step.

  Attributes:
    source: the source checkpoint (its prefix).
    model_dir: the directory whose checkpoints were measured.
    steps: the checkpoints' global steps, ascending.
    checkpoints: the checkpoint prefixes, one per step.
    groups: the group names, largest drift at the last step first.
    tensors: a TrackedTensor per measured tensor, by name.
    left_out: (model tensor, why) for tensors paired with the source but not measured.
  """
  source: str
  model_dir: str
  steps: list[int]
  checkpoints: list[str]
  tensors: list[TrackedTensor]
  left_out: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  groups: list[str] = dataclasses.field(init=False)
  _values: dict[str, list[float]] = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    members: dict[str, list[int]] = {}
    for index, tensor in enumerate(self.tensors):
      members.setdefault(tensor.group, []).append(index)
    source_squared = [t.source_norm ** 2 for t in self.tensors]
    self._values = {group: [] for group in members}
    for column in range(len(self.steps)):
      values = group_values(members, [t.distances[column] ** 2 for t in self.tensors],
                            source_squared)
      for group, value in values.items():
        self._values[group].append(value)
    # Largest last drift first; NaN first of all (something broke), then by name.
    self.groups = sorted(members, key=lambda g: (
        not math.isnan(self._values[g][-1]),
        -self._values[g][-1] if not math.isnan(self._values[g][-1]) else 0, g))

  def value(self, group: str, step: int) -> float:
    """The drift ‖w − w₀‖ / ‖w₀‖ of `group` at the checkpoint of global step `step`.

    Raises:
      WarmStartError: no such group or step (the message lists what there is).
    """
    if group not in self._values:
      raise WarmStartError("no group %r in the drift report.%s" % (
          group, _select.closest(group, self.groups)))
    if step not in self.steps:
      raise WarmStartError("no checkpoint of step %r in the drift report; steps: %s" % (
          step, ", ".join(map(str, self.steps))))
    return self._values[group][self.steps.index(step)]

  def values(self, group: str) -> list[float]:
    """The drift of `group` at every step (aligned with `steps`)."""
    self.value(group, self.steps[0])  # the same error for an unknown group
    return list(self._values[group])

  def to_dict(self) -> dict:
    return {
        "source": self.source, "model_dir": self.model_dir, "steps": self.steps,
        "checkpoints": self.checkpoints,
        "quantity": "||w - w0|| / ||w0|| per group (Frobenius norms of the group's tensors)",
        "groups": {g: [_json_number(v) for v in self._values[g]] for g in self.groups},
        "tensors": [{"name": t.name, "source_name": t.source_name, "group": t.group,
                     "shape": list(t.shape), "dtype": t.dtype,
                     "source_norm": _json_number(t.source_norm),
                     "drift": [_json_number(relative_distance(d * d, t.source_norm ** 2))
                               for d in t.distances]}
                    for t in self.tensors],
        "left_out": [{"name": name, "reason": reason} for name, reason in self.left_out],
    }

  def to_json(self, indent: Optional[int] = 2) -> str:
    """The report as strict JSON (non-finite values as the strings 'nan', 'inf')."""
    return json.dumps(self.to_dict(), indent=indent, sort_keys=True, allow_nan=False)

  def __str__(self):
    steps = self.steps
    if len(steps) > _TABLE_STEPS:  # first, last and evenly spaced between
      picks = sorted({round(i * (len(steps) - 1) / (_TABLE_STEPS - 1))
                      for i in range(_TABLE_STEPS)})
    else:
      picks = list(range(len(steps)))
    lines = [
        "drift ||w - w0|| / ||w0|| from %s" % self.source,
        "model_dir %s: %d tensor%s in %d group%s, %d checkpoint%s (steps %s)" % (
            self.model_dir, len(self.tensors), "" if len(self.tensors) == 1 else "s",
            len(self.groups), "" if len(self.groups) == 1 else "s", len(steps),
            "" if len(steps) == 1 else "s",
            "%d-%d" % (steps[0], steps[-1]) if len(steps) > 1 else steps[0])]
    rows = [["group"] + ["step %d" % steps[i] for i in picks]]
    shown = self.groups[:_TABLE_ROWS]
    rows += [[g] + [_format(self._values[g][i]) for i in picks] for g in shown]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
      lines.append(("  %-*s" % (widths[0], row[0]) + "".join(
          "  %*s" % (w, cell) for w, cell in zip(widths[1:], row[1:]))).rstrip())
    if len(self.groups) > len(shown):
      rest = [self._values[g][-1] for g in self.groups[len(shown):]]
      lines.append("  ... %d more groups, each at most %s at step %d" % (
          len(rest), _format(max(rest)), steps[-1]))
    frozen = [g for g in self.groups if all(v == 0 for v in self._values[g])]
    if frozen:
      lines.append("unmoved at every step (0.0): %s" % _names(frozen))
    if self.left_out:
      lines.append("left out (%d): %s" % (len(self.left_out), "; ".join(
          "%s (%s)" % item for item in self.left_out[:5]) + (
              " ..." if len(self.left_out) > 5 else "")))
    return _printable.printable_lines(lines)  # names come from files: escape what they hold

  def write_summaries(self, logdir: str) -> str:
    """Writes the drift as TensorBoard scalars `warmstart/drift/<group>` at each step.

    One events file, written beside its final name first and then renamed (atomic); a file an
    earlier call wrote there is replaced, so TensorBoard does not draw both. TensorFlow is not
    needed.

    Args:
      logdir: the directory (created if missing), e.g. `<model_dir>/warmstart_drift`, so that
        `tensorboard --logdir <model_dir>` shows it beside the training curves.

    Returns:
      The path of the events file.

    Raises:
      WarmStartError: logdir cannot be written.
    """
    logdir = os.fspath(logdir)
    if "://" in logdir:
      raise WarmStartError("write_summaries writes to a local directory; got %s. Write them "
                           "locally and copy the directory (e.g. gsutil cp -r)." % logdir)
    path = os.path.join(logdir, _events.event_file_name(EVENTS_SUFFIX))
    scratch = None
    try:
      os.makedirs(logdir, exist_ok=True)
      earlier = glob.glob(os.path.join(glob.escape(logdir), "*" + EVENTS_SUFFIX))
      scratch = os.path.join(logdir, ".%s.%s.tmp" % (os.path.basename(path), secrets.token_hex(4)))
      _events.write(scratch, [(step, summary({g: self._values[g][column] for g in self.groups}))
                              for column, step in enumerate(self.steps)])
      os.replace(scratch, path)
      scratch = None
      for old in earlier:
        if old != path:
          os.remove(old)
    except OSError as err:
      raise WarmStartError("cannot write drift summaries to %s: %s" % (
          logdir, err.strerror or err)) from err
    finally:
      if scratch is not None and os.path.exists(scratch):
        os.remove(scratch)
    logger.info("wrote drift summaries of %d groups at %d steps to %s", len(self.groups),
                len(self.steps), path)
    return path

  def plot(self, *, top: int = 8) -> Any:
    """Draws the drift: one line per group over the steps, the `top` largest named.

    Needs matplotlib (`pip install 'warmstart[plot]'`); nothing is shown on screen.

    Returns:
      A `matplotlib.figure.Figure` (save it with `.savefig(path)`).

    Raises:
      WarmStartError: matplotlib is not installed.
    """
    from warmstart import _plot  # pylint: disable=g-import-not-at-top
    return _plot.plot_drift(self, top=top)


def summary(values: Mapping[str, float]) -> bytes:
  """A serialized `Summary` of `{group: drift}` scalars, tagged `warmstart/drift/<group>`."""
  return _events.scalars((tag(group), value) for group, value in values.items())


def _names(items: Sequence[str], limit: int = 8) -> str:
  return ", ".join(items[:limit]) + (" and %d more" % (len(items) - limit)
                                     if len(items) > limit else "")


# ------------------------------------------------------------------------------------------
# drift()


def checkpoints_of(model_dir: str) -> list[_checkpoint.CheckpointRef]:
  """The complete checkpoints of a model_dir that have a step, by step.

  Raises:
    CheckpointNotFoundError: there are none (the message says what is there instead).
  """
  if not os.path.isdir(model_dir):
    raise CheckpointNotFoundError("model_dir %s is not a directory%s" % (
        model_dir, "" if os.path.exists(model_dir) else " (it does not exist)"))
  complete, notes = _checkpoint._checkpoints_in(model_dir)  # pylint: disable=protected-access
  refs = [_checkpoint.CheckpointRef(prefix, step, _checkpoint.CHECKPOINT)
          for step, prefix in sorted((s, p) for s, p in complete.items() if s is not None)]
  if not refs:
    found = ["step-less checkpoint %s" % os.path.basename(p)
             for s, p in complete.items() if s is None] + notes
    raise CheckpointNotFoundError(
        "no checkpoints in model_dir %s: drift measures the checkpoints a training run saves "
        "there (model.ckpt-<step>.index with its data)%s. Train first, or pass the directory "
        "the Estimator wrote." % (model_dir, "; found " + "; ".join(found) if found else ""))
  return refs


def _report_pairs(model_dir: str) -> Optional[dict[str, str]]:
  """{model name: source name} of what the warm start loaded, from the model_dir's report."""
  path = os.path.join(model_dir, REPORT_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      loaded = json.load(f)["loaded"]
    return {entry["name"]: entry["checkpoint_name"] for entry in loaded
            if entry.get("kind", _kinds.WEIGHT) in TRACKED_KINDS}
  except (OSError, ValueError, KeyError, TypeError) as err:
    raise WarmStartError("cannot read the warm-start report %s (%s): it names the tensors that "
                         "were warm-started. Pass rename= (or include=) to pair them by name "
                         "instead, or remove the file." % (path, err)) from err


def _pairs(model: Mapping[str, VariableInfo], source: Mapping[str, VariableInfo],
           rename: _rename.Rules, model_dir: str) -> tuple[dict[str, str], str]:
  """({model name: source name}, how they were paired) before any checks."""
  candidates = [name for name, info in model.items() if info.kind in TRACKED_KINDS]
  if rename is not None:
    rules = _rename.compile_rules(rename)
    pairs, used = {}, set()
    for name in candidates:
      source_name, rule = _rename.checkpoint_name(rules, name)
      if rule is not None:
        used.add(rule)
      if source_name in source or rule is not None:
        pairs[name] = source_name
    unused = [rule for rule in rules if rule not in used]
    if unused:
      first = unused[0]
      raise PatternError("rename rule%s %s matched no weight of the model_dir's checkpoints.%s"
                         % ("s" if len(unused) > 1 else "", ", ".join(map(str, unused)),
                            " (it returned None or the name itself for all %d)" % len(candidates)
                            if isinstance(first, _rename.FunctionRule)
                            else _select.closest(first.pattern.text, candidates)))
    return pairs, "rename rules"
  pairs_from_report = _report_pairs(model_dir)
  if pairs_from_report is not None:
    return pairs_from_report, os.path.join(model_dir, REPORT_FILE)
  return {name: name for name in candidates if name in source}, "equal names"


def _check_pairs(pairs, model, source, group_of):
  """Splits pairs into tracked [(name, source name, group)] and left out [(name, why)]."""
  tracked, left_out = [], []
  for name, source_name in sorted(pairs.items()):
    info, source_info = model.get(name), source.get(source_name)
    reason = None
    if info is None:
      reason = "not in the model_dir's checkpoints"
    elif source_info is None:
      reason = "source has no %r" % source_name
    elif info.shape != source_info.shape:
      reason = "shape %s vs source %s" % (info.shape, source_info.shape)
    elif not (is_float(info.dtype) and is_float(source_info.dtype)):
      reason = "dtype %s: drift is measured for floating-point tensors" % info.dtype
    elif group_of(name) is None:
      reason = "not matched by group="
    if reason:
      left_out.append((name, reason))
    else:
      tracked.append((name, source_name, group_of(name)))
  return tracked, left_out


def drift(source: Source, model_dir: str, *, include: _select.Patterns = None,
          exclude: _select.Patterns = None, rename: _rename.Rules = None,
          group: Optional[str] = None) -> DriftReport:
  """Measures how far the warm-started tensors of every checkpoint in model_dir moved.

  For each checkpoint still in `model_dir` (each step, in order) and each group of warm-started
  tensors, the relative distance ‖w − w₀‖ / ‖w₀‖ from the source tensors (the group's tensors
  taken as one vector). Which model tensor came from which source tensor: `rename` if given (as
  for `plan`: model-name pattern -> source-name template, other names unchanged), else the
  model_dir's `warmstart_report.json` (what `estimator_from` loaded), else equal names. Measured
  are weights and batch-norm statistics (not optimizer state) of equal shape and a floating-point
  dtype. Tensors are read one at a time: memory holds one source tensor, one model tensor and a
  2 MiB float64 scratch array.

  Args:
    source: the checkpoint the model was warm-started from (anything `resolve_checkpoint`
      takes).
    model_dir: the directory the warm-started model trained in.
    include: regex or list of regexes (fully matched) of model tensor names to measure; all
      paired tensors if None.
    exclude: regex or list of regexes of model tensor names to leave out.
    rename: {model_name_pattern: source_name_template} or a list of pairs, as for `plan`.
    group: None to group by layer (the name up to its last '/'), or a regex (fully matched)
      whose first capture group names the group, e.g. `r"resnet/(block\\d+)/.*"`; tensors it
      does not match are left out (and listed in `left_out`).

  Returns:
    A DriftReport (`.steps`, `.groups`, `.value(group, step)`, `str()`, `.to_json()`,
    `.write_summaries(logdir)`, `.plot()`).

  Raises:
    CheckpointNotFoundError: no source, or no checkpoint in model_dir.
    CheckpointReadError: a checkpoint cannot be read.
    PatternError: a bad or unused pattern / rule / group regex.
    WarmStartError: the source shares no tensor with the model_dir's checkpoints.

  Example:
    >>> report = warmstart.drift("model", "model_ext")
    >>> report.value("mnist/hidden", report.steps[-1])   # frozen: exactly 0.0
    0.0
    >>> report.write_summaries("model_ext/warmstart_drift")
  """
  model_dir = os.fspath(model_dir)
  group_of = grouping(group)
  source_ref = _checkpoint.resolve_checkpoint(source)
  refs = checkpoints_of(model_dir)
  with contextlib.ExitStack() as stack:
    source_reader = stack.enter_context(sources.open_reader(source_ref))
    readers = [stack.enter_context(sources.open_reader(ref)) for ref in refs]
    model = readers[-1].variables
    pairs, paired_by = _pairs(model, source_reader.variables, rename, model_dir)
    if not pairs:
      raise WarmStartError(
          "source %s shares no tensor with the checkpoints in %s (paired by %s): nothing to "
          "measure. Its tensors: %s; the model's: %s. Pass rename= to pair differently named "
          "tensors." % (source_ref.prefix, model_dir, paired_by,
                        _names(sorted(source_reader.variables), 5), _names(sorted(model), 5)))
    selected = set(_select.select_names(sorted(pairs), include, exclude,
                                        "tensor paired with the source"))
    tracked, left_out = _check_pairs({n: s for n, s in pairs.items() if n in selected}, model,
                                     source_reader.variables, group_of)
    if not tracked:
      raise WarmStartError(
          "source %s shares no tensor with the checkpoints in %s that can be compared (paired "
          "by %s): %s%s" % (source_ref.prefix, model_dir, paired_by, "; ".join(
              "%s: %s" % item for item in left_out[:5]), " ..." if len(left_out) > 5 else ""))
    logger.info("drift of %d tensors (paired by %s) over %d checkpoints of %s", len(tracked),
                paired_by, len(refs), model_dir)
    tensors = [_measure(name, source_name, group_name, source_reader, readers)
               for name, source_name, group_name in tracked]
  steps = [int(ref.step) for ref in refs if ref.step is not None]  # checkpoints_of: all have one
  return DriftReport(source_ref.prefix, model_dir, steps, [ref.prefix for ref in refs], tensors,
                     left_out)


def _measure(name, source_name, group, source_reader, readers: Iterable) -> TrackedTensor:
  """Reads one source tensor, then the model tensor from each checkpoint in turn."""
  source_value = source_reader.read(source_name)
  info = source_reader.variables[source_name]
  distances = []
  for reader in readers:
    model_info = reader.variables.get(name)
    if model_info is None or model_info.shape != info.shape:
      raise WarmStartError(
          "checkpoint %s %s, unlike the latest checkpoint of its model_dir: drift compares the "
          "same tensors at every step. Exclude it (exclude=%r)." % (
              reader.ref.prefix, "has no tensor %r" % name if model_info is None else
              "holds %r with shape %s" % (name, model_info.shape), re.escape(name)))
    distances.append(math.sqrt(squared_distance(reader.read(name), source_value)))
  logger.debug("drift of %s from %s: %s", name, source_name, distances)
  return TrackedTensor(name, source_name, group, info.shape, info.dtype,
                       math.sqrt(squared_norm(source_value)), tuple(distances))

"""Planning a warm start: which model variable reads which checkpoint tensor, and why not.

The decision for one variable depends only on its name, shape and dtype (`Planner.decide`), so it
can be made while a model_fn creates the variable (that is how `freeze=True` knows what will be
loaded before the optimizer exists) and again for the whole graph afterwards (`Planner.plan`),
which also checks that every pattern, rule and mapping the user gave was used.
"""
import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import numpy as np

from warmstart import _checkpoint, _finetune, _hints, _kinds, _policies, _printable, _rename, _select, _source, sources
from warmstart._checkpoint import CheckpointRef, Source, VariableInfo
from warmstart._errors import CheckpointReadError, PatternError, PlanError, WarmStartError
from warmstart._rename import Rules
from warmstart._select import Patterns

if TYPE_CHECKING:
  import tensorflow as tf

logger = logging.getLogger(__name__)

LOAD = "load"
SKIP = "skip"
MISSING = "missing"
FRESH = "fresh"  # an optimizer slot the source lacks, with optimizer_state="keep"
NOT_SELECTED = "not_selected"

SHAPE_POLICIES = _policies.POLICIES
ShapePolicies = _policies.ShapePolicies
Adapters = _policies.Adapters
# freeze: False, True (exactly what is warm-started), or a regex / list of regexes.
FreezeSpec = Union[bool, str, Sequence[str]]
OPTIMIZER_STATES = ("reset", "keep")
_RESET_KINDS = (_kinds.OPTIMIZER_SLOT, _kinds.STEP)
_RESET_REASON = "%s: optimizer_state='reset' leaves it at its initializer"


@dataclasses.dataclass(frozen=True)
class Entry:
  """One model variable in a report.

  Attributes:
    name: the model variable.
    checkpoint_name: the checkpoint tensor it reads (or would read).
    shape, dtype, kind: of the model variable.
    reason: why it was skipped / not selected / missing; empty when loaded.
    policy: how a loaded tensor of another shape (or an adapted one) was fitted: 'partial',
      'input_channels', 'squeeze' or 'adapt'; empty for a plain copy.
    source_shape: the checkpoint tensor's shape, when `policy` is set.
    detail: what the policy did, e.g. 'block [0:4, 0:3, :, :] copied, ...' or "adapt['...']".
  """
  name: str
  checkpoint_name: str
  shape: tuple[int, ...]
  dtype: str
  kind: str
  reason: str = ""
  policy: str = ""
  source_shape: Optional[tuple[int, ...]] = None
  detail: str = ""


@dataclasses.dataclass
class Report:
  """What a warm start loaded, renamed, skipped (why), left missing and froze.

  `str(report)` is for people, `report.to_json()` for machines.

  Attributes:
    fresh_optimizer_slots: with optimizer_state="keep", the optimizer slots the source does not
      hold (e.g. those of variables it trained frozen): they start from their initializers.
    unfreeze_at: {variable: global step} of the variables frozen until that step.
    lr_multipliers: {variable: factor} of the variables whose updates are scaled (0: frozen).
  """
  source: str
  step: Optional[int]
  loaded: list[Entry] = dataclasses.field(default_factory=list)
  skipped: list[Entry] = dataclasses.field(default_factory=list)
  missing: list[Entry] = dataclasses.field(default_factory=list)
  fresh_optimizer_slots: list[Entry] = dataclasses.field(default_factory=list)
  not_selected: list[Entry] = dataclasses.field(default_factory=list)
  frozen: list[str] = dataclasses.field(default_factory=list)
  unfreeze_at: dict[str, int] = dataclasses.field(default_factory=dict)
  lr_multipliers: dict[str, float] = dataclasses.field(default_factory=dict)
  unused_patterns: list[str] = dataclasses.field(default_factory=list)
  unused_rules: list[str] = dataclasses.field(default_factory=list)
  unused_checkpoint_tensors: list[Entry] = dataclasses.field(default_factory=list)
  problems: list[str] = dataclasses.field(default_factory=list)
  resumed_from: Optional[str] = None
  # {checkpoint tensor: how it was read}, for loaded tensors the source converted (a PyTorch
  # layout transposed, ...) or named (a nested Keras model's weight, ...).
  notes: dict[str, str] = dataclasses.field(default_factory=dict)
  warnings: list[str] = dataclasses.field(default_factory=list)

  @property
  def renamed(self) -> list[Entry]:
    return [e for e in self.loaded if e.name != e.checkpoint_name]

  @property
  def partial(self) -> list[Entry]:
    """Loaded variables of which only a block was copied (`.detail` names it)."""
    return [e for e in self.loaded if e.policy == _policies.PARTIAL]

  @property
  def adapted(self) -> list[Entry]:
    """Loaded variables computed from a tensor of another shape: input_channels, squeeze, adapt."""
    return [e for e in self.loaded if e.policy and e.policy != _policies.PARTIAL]

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    for what in ("renamed", "partial", "adapted"):
      out[what] = [dataclasses.asdict(e) for e in getattr(self, what)]
    return out

  def to_json(self, indent: Optional[int] = 2) -> str:
    return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

  def __str__(self):
    nbytes = sum(_nbytes(e) for e in self.loaded)
    model_count = len(self.loaded) + len(self.skipped) + len(self.missing) + len(
        self.fresh_optimizer_slots) + len(self.not_selected)
    lines = []
    if self.resumed_from:
      lines.append("warm start NOT applied: model_dir holds checkpoint %s, training resumes "
                   "from it" % self.resumed_from)
    lines.append("warm start from %s%s: %d of %d model variables loaded (%s)" % (
        self.source, "" if self.step is None else " (step %d)" % self.step, len(self.loaded),
        model_count, _human_bytes(nbytes)))
    if self.loaded:
      lines.append("  loaded:")
      width = max(len(e.name) for e in self.loaded)
      for e in self.loaded:
        lines.append("    %-*s  %-16s %-8s %s%s%s" % (
            width, e.name, _shape(e.shape), e.dtype, e.kind,
            "  <- %s" % e.checkpoint_name if e.name != e.checkpoint_name else "",
            "  (%s)" % self.notes[e.checkpoint_name] if e.checkpoint_name in self.notes else ""))
        if e.policy:
          lines.append("    %-*s    %s from %s: %s" % (
              width, "", e.policy, _shape(e.source_shape or ()), e.detail))
    # Optimizer state reset by default is counted by kind, not listed name by name.
    reset = [e for e in self.skipped if e.reason == _RESET_REASON % e.kind]
    for title, entries in (("skipped", [e for e in self.skipped if e not in reset]),
                           ("missing from the checkpoint (left to their initializers)",
                            self.missing)):
      if entries:
        lines.append("  %s:" % title)
        lines.extend("    %s: %s" % (e.name, e.reason) for e in entries)
    if reset:
      lines.append("  left to their initializers by optimizer_state='reset' (%d): %s" % (
          len(reset), _summarize(reset)))
    if self.not_selected:
      lines.append("  not selected (%d): %s" % (len(self.not_selected),
                                                 _summarize(self.not_selected)))
    if self.fresh_optimizer_slots:
      lines.append("  optimizer slots not in the source, started fresh (%d): %s" % (
          len(self.fresh_optimizer_slots), ", ".join(e.name for e in self.fresh_optimizer_slots)))
    if self.frozen:
      lines.append("  frozen (not trainable): %s" % ", ".join(self.frozen))
    if self.unfreeze_at:
      lines.append("  frozen until a global step, trained from it on:")
      lines.extend("    step %d: %s" % (step, ", ".join(names))
                   for step, names in sorted(_group(self.unfreeze_at).items()))
    if self.lr_multipliers:
      lines.append("  learning-rate multipliers (each step's update scaled):")
      lines.extend("    x%g%s: %s" % (factor, " (frozen)" if factor == 0 else "", ", ".join(names))
                   for factor, names in sorted(_group(self.lr_multipliers).items()))
    if self.unused_checkpoint_tensors:
      lines.append("  checkpoint tensors nobody read (%d): %s" % (
          len(self.unused_checkpoint_tensors), _summarize(self.unused_checkpoint_tensors)))
    for title, items in (("unused patterns", self.unused_patterns),
                         ("unused rename rules", self.unused_rules),
                         ("warnings", self.warnings),
                         ("problems", self.problems)):
      if items:
        lines.append("  %s:" % title)
        lines.extend("    - " + item for item in items)
    return _printable.printable_lines(lines)  # names come from files: escape what they hold


def _group(values):
  """{value: [names]} of a {name: value} mapping, names in their order."""
  groups: dict = {}
  for name, value in values.items():
    groups.setdefault(value, []).append(name)
  return groups


def _nbytes(entry):
  return VariableInfo.make(entry.name, entry.shape, entry.dtype).nbytes


def _shape(shape):
  return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _human_bytes(n):
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return ("%d %s" if unit == "B" else "%.1f %s") % (n, unit)
    n /= 1024.0


def _summarize(entries, limit=8):
  """Entries grouped by kind: weights are named, optimizer state only counted."""
  by_kind: dict[str, list[str]] = {}
  for entry in entries:
    by_kind.setdefault(entry.kind, []).append(entry.name)
  parts = []
  for kind, members in sorted(by_kind.items()):
    if kind in _RESET_KINDS:
      parts.append("%d %s" % (len(members), kind))
    else:
      shown = ", ".join(members[:limit]) + (" ..." if len(members) > limit else "")
      parts.append("%d %s (%s)" % (len(members), kind, shown))
  return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class Assignment:
  """One model variable initialized from one checkpoint tensor.

  Attributes:
    name: the model variable.
    checkpoint_name: the source tensor it reads.
    vocab: a tf.estimator.VocabInfo, passed through to TF, or None.
    policy: '' (a plain copy), 'partial', 'input_channels', 'squeeze' or 'adapt'.
    source_shape: the source tensor's shape.
  """
  name: str
  checkpoint_name: str
  vocab: Optional[object] = None
  policy: str = ""
  source_shape: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Plan:
  """A planned warm start.

  Attributes:
    source: the resolved checkpoint.
    assignments: the variables to load, in model order.
    report: what will be loaded, skipped and why.
  """
  source: CheckpointRef
  assignments: tuple[Assignment, ...]
  report: Report
  # {model variable: value} computed by adapt functions; applying the plan writes them into a
  # private checkpoint the graph's initializers read.
  adapted: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False,
                                                        compare=False)
  # The source's files as `_checkpoint.stamp` found them before the tensors were checked
  # (None: not checked, training resumes); applying the plan refuses a source changed since.
  source_stamp: Optional[tuple] = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class _Decision:
  variable: VariableInfo
  action: str
  checkpoint_name: str
  reason: str = ""
  rule: Optional[_rename.AnyRule] = None
  problem: str = ""
  policy: str = ""  # for a LOAD of another shape, or adapted
  source_shape: tuple[int, ...] = ()
  adapter: Optional[_policies.Adapter] = None
  shape_skipped: bool = False  # skipped by an on_shape_mismatch='skip' the user gave

  def entry(self):
    v = self.variable
    if not self.policy:
      return Entry(v.name, self.checkpoint_name, v.shape, v.dtype, v.kind, self.reason)
    detail = (str(self.adapter) if self.adapter is not None
              else _policies.describe(self.policy, v.shape, self.source_shape))
    return Entry(v.name, self.checkpoint_name, v.shape, v.dtype, v.kind, self.reason,
                 self.policy, self.source_shape, detail)


class Planner:
  """Holds validated warm-start arguments and the source's variable list.

  Every argument is checked here, at construction, so a bad call fails before any graph exists.
  """

  def __init__(self, source, *, include=".*", exclude=None, rename=None, vocab=None,
               freeze=False, on_shape_mismatch="error", optimizer_state="reset", step=None,
               check_finite=False, adapt=None):
    self.check_finite = bool(check_finite)
    self.include = _select.compile_patterns(include, "include")
    if not self.include:
      raise PatternError("include is empty: nothing would be warm-started. Pass a regex such as "
                         "'.*' or a list of names.")
    self.exclude = _select.compile_patterns(exclude, "exclude")
    self.rules = _rename.compile_rules(rename)
    self.vocab = _check_vocab(vocab)
    self.shape_policies = _policies.compile_shape_policies(on_shape_mismatch)
    self.adapters = _policies.compile_adapters(adapt)
    if optimizer_state not in OPTIMIZER_STATES:
      raise WarmStartError("optimizer_state must be 'reset' (leave optimizer slots and the step "
                           "at their initializers) or 'keep'; got %r" % (optimizer_state,))
    self.optimizer_state = optimizer_state
    self.freeze_patterns: tuple[_select.Pattern, ...] = ()
    if isinstance(freeze, bool):
      self.freeze_loaded = freeze
    else:
      self.freeze_patterns = _select.compile_patterns(freeze, "freeze")
      self.freeze_loaded = False
    self.source = _checkpoint.resolve_checkpoint(source, step)
    with sources.open_reader(self.source) as reader:
      self.source_variables = reader.variables
      self.source_notes = reader.notes
      # A file key (a TF2 object path, an .h5 dataset path) names the same tensor as its name.
      self.source_keys = {reader.key_of(n): n for n in reader.variables
                          if reader.key_of(n) != n}
    if self.vocab and self.source.kind not in (_checkpoint.CHECKPOINT, _checkpoint.SAVED_MODEL):
      raise WarmStartError("vocab remapping needs a TF checkpoint; %s is a %s file"
                           % (self.source.prefix, self.source.kind))

  @property
  def freezes(self) -> bool:
    return self.freeze_loaded or bool(self.freeze_patterns)

  def is_frozen(self, variable: VariableInfo) -> bool:
    """Whether `variable` is to be frozen (decided from its name, shape and dtype alone)."""
    if self.freeze_loaded:
      return self.decide(variable).action == LOAD
    return _select.first_match(self.freeze_patterns, variable.name) is not None

  def _shape_policy(self, name):
    for pattern, policy in self.shape_policies:
      if pattern is None or pattern.matches(name):
        return policy
    return "error"

  def decide(self, variable: VariableInfo) -> _Decision:
    """Decides what happens to one model variable."""
    name = variable.name
    if _select.first_match(self.include, name) is None:
      return _Decision(variable, NOT_SELECTED, name, "not matched by include")
    excluded = _select.first_match(self.exclude, name)
    if excluded is not None:
      return _Decision(variable, NOT_SELECTED, name, "excluded by %r" % excluded.text)
    if self.optimizer_state == "reset" and variable.kind in _RESET_KINDS:
      return _Decision(variable, SKIP, name, _RESET_REASON % variable.kind)
    ckpt_name, rule = _rename.checkpoint_name(self.rules, name)
    ckpt_name = self.source_keys.get(ckpt_name, ckpt_name)
    source = self.source_variables.get(ckpt_name)
    if source is None and variable.kind == _kinds.OPTIMIZER_SLOT and rule is None:
      # optimizer_state="keep": e.g. the slots of variables the source trained frozen.
      return _Decision(variable, FRESH, ckpt_name, "optimizer slot not in the checkpoint; starts "
                       "from its initializer")
    if source is None:
      problem = ""
      if rule is not None:
        problem = ("rename rule %s maps model variable %r to %r, which is not in the checkpoint."
                   "%s" % (rule, name, ckpt_name,
                           _select.closest(ckpt_name, list(self.source_variables))))
      return _Decision(variable, MISSING, ckpt_name, "not in the checkpoint", rule, problem)
    has_vocab = name in self.vocab
    adapter = next((a for a in self.adapters if a.pattern.matches(name)), None)
    if adapter is not None:
      return _Decision(variable, LOAD, ckpt_name, "", rule, problem=(
          "vocab and %s both name %r; give it one of them." % (adapter, name)
          if has_vocab else ""), policy=_policies.ADAPT, source_shape=source.shape,
          adapter=adapter)
    if source.dtype != variable.dtype:
      return _Decision(variable, SKIP, ckpt_name, "dtype differs", rule, problem=(
          "dtype mismatch for %r: model %s vs checkpoint %r %s. Exclude it, or rename it to a "
          "tensor of dtype %s." % (name, variable.dtype, ckpt_name, source.dtype,
                                   variable.dtype)))
    if source.shape != variable.shape and not has_vocab:
      policy = self._shape_policy(name)
      reason = "shape %s vs checkpoint %s" % (_shape(variable.shape), _shape(source.shape))
      if policy == _policies.SKIP:
        return _Decision(variable, SKIP, ckpt_name, reason + " (on_shape_mismatch='skip')", rule,
                         shape_skipped=True)
      if policy != _policies.ERROR:
        problem = _policies.check(policy, name, variable.shape, variable.dtype, ckpt_name,
                                  source.shape)
        if problem:
          return _Decision(variable, SKIP, ckpt_name, reason, rule, problem=problem)
        return _Decision(variable, LOAD, ckpt_name, "", rule, policy=policy,
                         source_shape=source.shape)
      return _Decision(variable, SKIP, ckpt_name, reason, rule, problem=(
          "shape mismatch for %r: model %s vs checkpoint %r %s. Fixes: exclude it "
          "(exclude=%r), skip mismatches (on_shape_mismatch='skip' or {%r: 'skip'}), copy the "
          "overlapping block ('partial'), rename it to a tensor of the model's shape, or compute "
          "its value with adapt={pattern: fn}." % (
              name, _shape(variable.shape), ckpt_name, _shape(source.shape), name, name)))
    return _Decision(variable, LOAD, ckpt_name, "", rule)

  def plan(self, model_variables: Sequence[VariableInfo], resumed_from=None,
           target_hint: str = "") -> Plan:
    """Plans the warm start of `model_variables`.

    `target_hint` names the target in error messages that suggest a command.

    Raises:
      PlanError: listing every problem (unused patterns and rules, mismatches, ...); its
        `.report` holds the report as far as it got.
    """
    decisions = [self.decide(v) for v in model_variables]
    # A rule that maps some variables onto tensors that exist is no typo: its other matches are
    # missing (a model B deeper than A), not errors.
    loading_rules = {id(d.rule) for d in decisions if d.action == LOAD and d.rule is not None}
    decisions = [dataclasses.replace(d, problem="") if d.action == MISSING and id(d.rule)
                 in loading_rules else d for d in decisions]
    names = [v.name for v in model_variables]
    selected = [d for d in decisions if d.action != NOT_SELECTED]
    report = Report(self.source.prefix, self.source.step, resumed_from=resumed_from)
    problems = [d.problem for d in decisions if d.problem]

    for what, patterns in (("include", self.include), ("exclude", self.exclude),
                           ("freeze", self.freeze_patterns),
                           ("on_shape_mismatch", [p for p, _ in self.shape_policies if p]),
                           ("adapt", [a.pattern for a in self.adapters])):
      for pattern in patterns:
        message = _select.unmatched([pattern], names, what, "model variable")
        if message:
          report.unused_patterns.append("%s %r" % (what, pattern.text))
          problems.extend(message)
    for pattern in self.include:
      matched = [d for d in decisions if pattern.matches(d.variable.name)]
      if matched and not any(d.action == LOAD for d in matched) and not any(
          d.problem for d in matched):
        if any(d.shape_skipped for d in matched):
          # The user asked for shape mismatches to be skipped: say so, but it is no error.
          report.warnings.append("include pattern %r loads none of the %d model variable(s) it "
                                 "matches: %s" % (pattern.text, len(matched), "; ".join(
                                     "%s: %s" % (d.variable.name, d.reason)
                                     for d in matched[:4])))
          continue
        report.unused_patterns.append("include %r" % pattern.text)
        problems.append("include pattern %r matches %d model variable(s) but loads none: %s" % (
            pattern.text, len(matched), "; ".join(
                "%s: %s" % (d.variable.name, d.reason) for d in matched[:4])))
    for rule in self.rules:
      if not any(d.rule is rule for d in selected):
        report.unused_rules.append(str(rule))
        if isinstance(rule, _rename.FunctionRule):
          problems.append("%s renamed no selected model variable: it returned None or the name "
                          "itself for all %d" % (rule, len(selected)))
          continue
        matching = [n for n in names if rule.pattern.matches(n)]
        problems.append("rename rule %s was never used: %s" % (rule, (
            "it matches only variables that are not selected (%s)" % ", ".join(matching[:3])
            if matching else "it matches no model variable." + _select.closest(
                rule.pattern.text, names))))
    for adapter in self.adapters:
      matched = [d for d in decisions if adapter.pattern.matches(d.variable.name)]
      if matched and not any(d.adapter is adapter for d in decisions):
        report.unused_patterns.append("adapt %r" % adapter.pattern.text)
        problems.append("%s adapts nothing: the model variables it matches are not loaded (%s)"
                        % (adapter, "; ".join("%s: %s" % (d.variable.name, d.reason)
                                              for d in matched[:4])))
    loaded_names = {d.variable.name for d in decisions if d.action == LOAD}
    for name in self.vocab:
      if name not in loaded_names:
        problems.append("vocab names %r, which is not a warm-started model variable.%s" % (
            name, _select.closest(name, names)))

    by_action = {LOAD: report.loaded, SKIP: report.skipped, MISSING: report.missing,
                 FRESH: report.fresh_optimizer_slots, NOT_SELECTED: report.not_selected}
    for d in decisions:
      by_action[d.action].append(d.entry())
    used = {d.checkpoint_name for d in decisions if d.action == LOAD}
    report.notes = {n: self.source_notes[n] for n in sorted(used) if n in self.source_notes}
    report.unused_checkpoint_tensors = [
        Entry(n, n, v.shape, v.dtype, v.kind) for n, v in self.source_variables.items()
        if n not in used]
    report.frozen = [v.name for v in model_variables if self.freezes and self.is_frozen(v)]
    report.problems = problems
    if problems:
      raise PlanError(_hints.plan_error_message(
          self.source.prefix, problems, selected, self.source_variables, bool(self.rules),
          target_hint), problems, report)
    loads = [d for d in decisions if d.action == LOAD]
    assignments = tuple(
        Assignment(d.variable.name, d.checkpoint_name, self.vocab.get(d.variable.name),
                   d.policy, d.source_shape)
        for d in loads)
    adapted: dict[str, np.ndarray] = {}
    source_stamp = None
    if resumed_from is None:
      source_stamp = _checkpoint.stamp(self.source)
      adapted, problems = self._verify(assignments, {d.variable.name: d for d in loads})
      if problems:
        report.problems = problems
        raise PlanError(_hints.plan_error_message(
            self.source.prefix, problems, selected, self.source_variables, bool(self.rules),
            target_hint), problems, report)
    if self.freeze_loaded:
      report.warnings.extend(
          "freeze=True freezes %r, of which only the block %s was copied: the rest keeps its "
          "initializer's value for good; freeze by pattern to leave it trainable" % (
              d.variable.name, _policies.block_text(d.variable.shape, d.source_shape))
          for d in loads if d.policy == _policies.PARTIAL)
    for warning in report.warnings:
      logger.warning("%s", warning)
    return Plan(self.source, assignments, report, adapted, source_stamp)

  def _verify(self, assignments, decisions):
    """Checks every tensor to be loaded once, now, and runs the adapt functions on them.

    Each tensor's bytes are checked against their checksum (and a string tensor's layout), in
    bounded memory, so a corrupt source fails here with our error instead of later inside the
    training session, and TensorFlow's reader only ever sees tensors that passed. A tensor is
    read whole only for an adapt function, or for `check_finite` (NaN and Inf) if it is
    floating-point.

    Returns:
      ({model variable name: adapted value}, [problems with adapt functions]).
    """
    non_finite = []
    adapted: dict[str, np.ndarray] = {}
    problems = []
    # checkpoint tensor -> [(model variable, adapter)] computed from it
    adapt: dict[str, list[tuple[VariableInfo, _policies.Adapter]]] = {}
    for d in decisions.values():
      if d.adapter is not None:
        adapt.setdefault(d.checkpoint_name, []).append((d.variable, d.adapter))
    with sources.open_reader(self.source) as reader:
      self._check_same_tensors(reader.variables, {a.checkpoint_name for a in assignments})
      for name in sorted({a.checkpoint_name for a in assignments}):
        finite_check = self.check_finite and reader.variables[name].dtype.startswith(_FLOATING)
        if name not in adapt and not finite_check:
          reader.check(name)
          continue
        value = reader.read(name)
        for v, adapter in adapt.get(name, ()):
          result, problem = _policies.adapt_value(adapter, value, v.name, v.shape, v.dtype, name)
          if result is None:
            problems.append(problem)
          else:
            adapted[v.name] = result
        if finite_check:
          finite = np.count_nonzero(np.isfinite(value))
          if finite != value.size:
            non_finite.append("%s (%d of %d elements)" % (name, value.size - finite, value.size))
    if non_finite:
      raise CheckpointReadError(
          "checkpoint %s has NaN or Inf values in tensors to be loaded: %s. Exclude them, or "
          "warm-start from an earlier checkpoint (step=N)." % (self.source.prefix,
                                                                 ", ".join(non_finite)))
    return adapted, problems

  def _check_same_tensors(self, now: Mapping[str, VariableInfo], names) -> None:
    """Refuses a source whose tensors to be loaded changed since this planner listed it.

    The planner lists the source when it is made (e.g. by `estimator_from`) and plans with that
    list when the training graph is built, maybe much later.
    """
    changed = []
    for name in sorted(names):
      was, new = self.source_variables[name], now.get(name)
      if new is None:
        changed.append("%r (%s %s) is gone" % (name, was.dtype, list(was.shape)))
      elif (new.shape, new.dtype) != (was.shape, was.dtype):
        changed.append("%r was %s %s, is now %s %s" % (name, was.dtype, list(was.shape),
                                                      new.dtype, list(new.shape)))
    if changed:
      raise CheckpointReadError(
          "checkpoint %s changed after warmstart first read it (when the Estimator or settings "
          "were made): %s; nothing was loaded. Make them again (warmstart.estimator_from / "
          "warmstart.settings) to plan against the checkpoint as it is now" % (
              self.source.prefix, "; ".join(changed)))


# Names of the dtypes whose values can be NaN or Inf.
_FLOATING = ("float", "bfloat", "complex")


def _check_vocab(vocab) -> dict[str, object]:
  if vocab is None or (isinstance(vocab, Mapping) and not vocab):
    return {}
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (only vocab remapping needs it)
  if not isinstance(vocab, Mapping) or not all(
      isinstance(k, str) and isinstance(v, tf.estimator.VocabInfo) for k, v in vocab.items()):
    raise WarmStartError("vocab must be a dict {model_variable_name: tf.estimator.VocabInfo}; "
                         "got %r" % (vocab,))
  return dict(vocab)


def plan(source: Source, target: Union[Source, Any], *, include: Patterns = ".*",
         exclude: Patterns = None, rename: Rules = None,
         vocab: Optional[Mapping[str, Any]] = None, freeze: FreezeSpec = False,
         on_shape_mismatch: ShapePolicies = "error", optimizer_state: str = "reset",
         step: Optional[int] = None, params: Optional[dict] = None,
         config: Optional["tf.estimator.RunConfig"] = None,
         input_fn: Optional[Callable[[], Any]] = None, check_finite: bool = False,
         freeze_batchnorm_stats: bool = True, unfreeze_at: _finetune.UnfreezeAt = None,
         lr_multipliers: _finetune.LrMultipliers = None, adapt: Adapters = None) -> Plan:
  """Plans a warm start without training anything (a dry run).

  Against a checkpoint of the target model this needs no TensorFlow; against a model_fn or
  Estimator, TensorFlow builds its training graph.

  Args:
    source: the checkpoint to warm-start from.
    target: the model to warm-start: a checkpoint of it (prefix, directory, ...), or a model_fn
      or Estimator, whose training graph is built in a scratch graph (nothing is run) from
      `input_fn`'s features and labels.
    include, exclude, rename, vocab, freeze, on_shape_mismatch, optimizer_state, step, params,
      config, freeze_batchnorm_stats, unfreeze_at, lr_multipliers, adapt: as for
      `estimator_from`.
      Against a model_fn, the report's frozen variables, schedule and multipliers are what
      training decides; against a checkpoint, what the names say (batch-norm layers told by
      `<layer>/gamma`, `<layer>/moving_mean`, ...).
    input_fn: with a model_fn or Estimator target, the input_fn whose output it takes.
    check_finite: also refuse tensors to be loaded that hold NaN or Inf.

  Returns:
    A Plan: `.assignments` and `.report` (str() for people, .to_json() for machines).

  Raises:
    PlanError: every problem of the plan at once; `.report` holds the report so far.
    FreezeError: a model_fn target whose train_op updates a frozen variable.

  Example:
    >>> print(warmstart.plan("model", "model_ext", include="mnist/hidden/.*").report)
  """
  planner = Planner(source, include=include, exclude=exclude, rename=rename, vocab=vocab,
                    freeze=freeze, on_shape_mismatch=on_shape_mismatch,
                    optimizer_state=optimizer_state, step=step, check_finite=check_finite,
                    adapt=adapt)
  fine_tuning = _finetune.FineTuning(freeze_batchnorm_stats=freeze_batchnorm_stats,
                                     unfreeze_at=unfreeze_at, lr_multipliers=lr_multipliers)
  if isinstance(target, (str, os.PathLike, CheckpointRef, _source.Source)):
    variables = sources.list_variables(target)
    result = planner.plan(variables, target_hint=os.fspath(
        target.prefix if isinstance(target, CheckpointRef) else
        target.path if isinstance(target, _source.Source) else target))
    _finetune.by_name(variables, planner.is_frozen if planner.freezes else None,
                      fine_tuning).update(result.report)
    return result
  from warmstart import _estimator  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
  return _estimator.plan_model(planner, target, params=params, config=config, input_fn=input_fn,
                               fine_tuning=fine_tuning)

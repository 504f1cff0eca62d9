"""`suggest_rename`: rename rules between two differently named models, ready to paste.

Reads names, shapes, dtypes and kinds only (`list_variables`); TensorFlow is imported only to
build the graph of a model_fn or Estimator target. The matching is `_match`, the rules `_induce`.
"""
import dataclasses
import json
import logging
import os
import re
import shlex
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

from warmstart import _checkpoint, _induce, _match, _printable, sources
from warmstart._checkpoint import CheckpointRef, Source, VariableInfo

logger = logging.getLogger(__name__)

_SHOWN = 10  # unmatched names listed per side in str()


@dataclasses.dataclass
class RenameSuggestion:
  """Suggested renames from a model's variables to a checkpoint's tensors.

  Attributes:
    source: the checkpoint (prefix) the model would read.
    target: what the model's variables were read from (a checkpoint prefix or a model_fn).
    mapping: {model variable: checkpoint tensor}, in model order; pairs always agree in shape,
      dtype and kind. Pairs of equal names are included (they need no rule).
    rules: [(pattern, template)] for `rename=`: `plan(source, target, rename=rules,
      exclude=exclude or None)` loads exactly `mapping`. The most specific rules come first.
    exclude: exact-name regexes of unmatched model variables whose own name is in the checkpoint
      (as a different tensor): without them `plan` would try to load those. Usually empty.
    unmatched_model: model variables left unmatched (they keep their initializers).
    unmatched_checkpoint: checkpoint tensors no model variable reads.
    reasons: {unmatched model variable: why}.
    ignored: optimizer slots and step counters (both sides), never matched: a warm start
      resets them.
  """
  source: str
  target: str
  mapping: dict[str, str]
  rules: list[tuple[str, str]]
  exclude: list[str]
  unmatched_model: list[str]
  unmatched_checkpoint: list[str]
  reasons: dict[str, str]
  ignored: int = 0
  model_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict, repr=False)
  checkpoint_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict,
                                                                    repr=False)

  @property
  def renamed(self) -> dict[str, str]:
    """The pairs whose names differ."""
    return {m: c for m, c in self.mapping.items() if m != c}

  def flags(self) -> list[str]:
    """Command-line flags for `warmstart plan` / `diff`: `--rename=PATTERN=TEMPLATE`, ..."""
    return (["--rename=%s=%s" % rule for rule in self.rules]
            + ["--exclude=%s" % pattern for pattern in self.exclude])

  def to_dict(self) -> dict:
    return {
        "source": self.source, "target": self.target, "mapping": self.mapping,
        "rules": [list(rule) for rule in self.rules], "exclude": self.exclude,
        "unmatched_model": [{"name": n, "shape": list(self.model_shapes.get(n, ())),
                             "reason": self.reasons.get(n, "")} for n in self.unmatched_model],
        "unmatched_checkpoint": [{"name": n, "shape": list(self.checkpoint_shapes.get(n, ()))}
                                 for n in self.unmatched_checkpoint],
        "matched": len(self.mapping), "renamed": len(self.renamed), "ignored": self.ignored}

  def to_json(self, indent: Optional[int] = 2) -> str:
    return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

  def summary(self) -> str:
    total = len(self.mapping) + len(self.unmatched_model)
    return ("%d of %d model variables matched to tensors of %s: %d renamed by %d rule%s, %d by "
            "their own name; %d unmatched, %d checkpoint tensors unread" % (
                len(self.mapping), total, self.source, len(self.renamed), len(self.rules),
                "" if len(self.rules) == 1 else "s", len(self.mapping) - len(self.renamed),
                len(self.unmatched_model), len(self.unmatched_checkpoint)))

  def unmatched_lines(self) -> list[str]:
    """What stays unmatched and why, one line each (the checkpoint side is abbreviated)."""
    lines = []
    if self.unmatched_model:
      lines.append("unmatched model variables (%d), left to their initializers:"
                   % len(self.unmatched_model))
      lines.extend("  %s %s: %s" % (n, _shape(self.model_shapes.get(n, ())),
                                    self.reasons.get(n, "")) for n in self.unmatched_model)
    if self.unmatched_checkpoint:
      shown = self.unmatched_checkpoint[:_SHOWN]
      lines.append("unmatched checkpoint tensors (%d): %s%s" % (
          len(self.unmatched_checkpoint),
          ", ".join("%s %s" % (n, _shape(self.checkpoint_shapes.get(n, ()))) for n in shown),
          " ..." if len(self.unmatched_checkpoint) > len(shown) else ""))
    return lines

  def __str__(self):
    lines = ["rename suggestion: " + self.summary()]
    if self.rules:
      lines.append("rename = [")
      lines.extend("    (%s, %s)," % (_python_string(p), _python_string(t)) for p, t in self.rules)
      lines.append("]")
    if self.exclude:
      lines.append("exclude = [%s]" % ", ".join(_python_string(p) for p in self.exclude))
    # Names come from files: what they hold is escaped.
    return _printable.printable_lines(lines + self.unmatched_lines())


def _python_string(text: str) -> str:
  """A raw string literal when that spells `text` exactly, else repr()."""
  if '"' not in text and not text.endswith("\\") and "\n" not in text:
    return 'r"%s"' % text
  return repr(text)


def _shape(shape) -> str:
  return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def shell_lines(suggestion: RenameSuggestion) -> list[str]:
  """The flags, one per line and shell-quoted, ending in ` \\` but the last (for pasting)."""
  flags = [shlex.quote(flag) for flag in suggestion.flags()]
  return [flag + (" \\" if n < len(flags) - 1 else "") for n, flag in enumerate(flags)]


# ------------------------------------------------------------------------------------------


def suggest_rename(source: Source, target: Union[Source, Callable[..., Any], Any], *,
                   input_fn: Optional[Callable[[], Any]] = None, params: Optional[dict] = None,
                   config: Optional[Any] = None, step: Optional[int] = None) -> RenameSuggestion:
  """Suggests rename rules so that a differently named model reads a checkpoint.

  Tensors are paired only when shape, dtype and kind agree; names are read as scopes, words
  (with synonyms: weights/kernel, biases/bias, BatchNorm/bn, gamma/scale...) and numbered
  scopes (aligned with a constant offset per level, `conv2_block1` <-> `block1/unit_1`), each
  side's order is aligned, and each group of same-shaped tensors is solved as one global
  assignment. Candidates that nothing tells apart are left unmatched, and said so, rather
  than guessed. The pairs are then written as few `(pattern, template)` rules.

  Args:
    source: the checkpoint to warm-start from (anything `plan` accepts as source).
    target: the model to warm-start: a checkpoint of it (its natural name order is used), or
      a model_fn / Estimator whose training graph is built from `input_fn` (its variables'
      creation order is used; this is the only path that imports TensorFlow).
    input_fn, params, config: for a model_fn or Estimator target, as for `plan`.
    step: picks the source's step in a directory, as for `plan`.

  Returns:
    A RenameSuggestion: `.mapping`, `.rules`, `.unmatched_model`, `.unmatched_checkpoint`,
    `str()` for people, `.to_json()` for machines.

  Raises:
    CheckpointNotFoundError, CheckpointReadError: an unusable source or target checkpoint.
    WarmStartError: a model_fn target without input_fn.

  Example:
    >>> s = warmstart.suggest_rename("resnet_v2_50.ckpt", "my_resnet_init")
    >>> print(s)  # the rules, then what stays unmatched and why
    >>> warmstart.plan("resnet_v2_50.ckpt", "my_resnet_init", rename=s.rules)
  """
  ref = _checkpoint.resolve_checkpoint(source, step)
  checkpoint = sources.list_variables(ref)
  if isinstance(target, (str, os.PathLike, CheckpointRef)):
    target_ref = _checkpoint.resolve_checkpoint(target)
    model = sources.list_variables(target_ref)
    target_text, ordered = target_ref.prefix, False
  else:
    from warmstart import _estimator  # TensorFlow: only to build a model_fn's graph
    model = _estimator.model_variables(target, input_fn=input_fn, params=params, config=config)
    target_text, ordered = getattr(target, "__name__", type(target).__name__), True
  return _suggest(ref, checkpoint, model, target_text, ordered)


def _suggest(ref: CheckpointRef, checkpoint: Sequence[VariableInfo],
             model: Sequence[VariableInfo], target: str, ordered: bool) -> RenameSuggestion:
  # A TF2 object-based checkpoint is listed under the names its variables had when saved (from
  # its object graph, by the reader), so those are matched, not object paths.
  found = _match.match(model, checkpoint, model_ordered=ordered)
  matched = [v for v in model if v.kind in _match.MATCHED_KINDS]
  readable = [v for v in checkpoint if v.kind in _match.MATCHED_KINDS]
  ignored = len(model) - len(matched) + len(checkpoint) - len(readable)
  by_name = {v.name: v for v in checkpoint}
  unmatched_model = [v for v in matched if v.name not in found.mapping]
  used = set(found.mapping.values())
  unmatched_checkpoint = [v for v in readable if v.name not in used]
  exclude = [re.escape(v.name) for v in unmatched_model if v.name in by_name]
  rules = _induce.induce(found.mapping, [v.name for v in matched])
  reasons = {v.name: _reason(v, found, unmatched_checkpoint, readable)
             for v in unmatched_model}
  suggestion = RenameSuggestion(ref.prefix, target, found.mapping, rules, exclude,
                                [v.name for v in unmatched_model],
                                [v.name for v in unmatched_checkpoint], reasons, ignored,
                                {v.name: v.shape for v in model},
                                {v.name: v.shape for v in checkpoint})
  logger.info("rename suggestion: %s", suggestion.summary())
  return suggestion


def _reason(variable: VariableInfo, found: _match.Match, free: Sequence[VariableInfo],
            readable: Sequence[VariableInfo]) -> str:
  if variable.name in found.ambiguous:
    tensors, variables = found.ambiguous[variable.name]
    who = "it" if len(variables) == 1 else " and ".join(variables)
    return ("indistinguishable: %s could read %s equally well (same shape; names, numbered "
            "scopes and order give no preference), so none is suggested" % (
                who, " or ".join(tensors)))
  if variable.name in found.weak:
    best, score = found.weak[variable.name]
    return ("the only same-shaped candidate, %s, shares too little of its name or position to "
            "be suggested (score %.2f)" % (best, score))
  same = [c for c in readable if (c.shape, c.dtype, c.kind) == (
      variable.shape, variable.dtype, variable.kind)]
  if same:
    return ("every checkpoint tensor of shape %s is a better match for another variable "
            "(e.g. %s)" % (_shape(variable.shape), same[0].name))
  near = _match.closest(variable.name, [c.name for c in free if c.kind == variable.kind])
  hint = ""
  if near is not None:
    shape = next(c.shape for c in free if c.name == near)
    hint = "; the closest name, %s, has shape %s" % (near, _shape(shape))
  return "no checkpoint tensor has its shape, dtype and kind (%s %s %s)%s" % (
      _shape(variable.shape), variable.dtype, variable.kind, hint)

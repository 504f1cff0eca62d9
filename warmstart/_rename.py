"""Mapping model variable names to checkpoint names.

Rules are `{model_name_pattern: checkpoint_name_template}` or a list of such pairs. The pattern is
fully matched against the model variable name; the template is expanded with its groups (`\\1`,
`\\g<name>`). The first rule that matches wins; several model variables may read one tensor.

`rename` may also be a function `model_name -> checkpoint_name or None` (None, or the name itself:
not renamed), for changes a template cannot express ("stage - 1", `kernel` -> `weights`).
"""
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Callable, Optional, Union

from warmstart._errors import PatternError
from warmstart._select import Pattern, closest, compile_pattern

RenameFunction = Callable[[str], Optional[str]]
Rules = Union[Mapping[str, str], Sequence[tuple[str, str]], RenameFunction, None]


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: Pattern
  template: str

  def __str__(self):
    return "%r -> %r" % (self.pattern.text, self.template)


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionRule:
  """A rename function, used like one rule that decides for itself which names it renames."""
  function: RenameFunction

  def __str__(self):
    return "rename function %s" % getattr(self.function, "__qualname__", repr(self.function))


AnyRule = Union[Rule, FunctionRule]


def compile_rules(rename: Rules) -> tuple[AnyRule, ...]:
  """Validates and compiles rename rules (or wraps a rename function)."""
  if rename is None:
    return ()
  if callable(rename) and not isinstance(rename, Mapping):
    return (FunctionRule(rename),)
  if isinstance(rename, Mapping):
    pairs = list(rename.items())
  elif isinstance(rename, (list, tuple)) and all(
      isinstance(p, (list, tuple)) and len(p) == 2 for p in rename):
    pairs = [tuple(p) for p in rename]
  else:
    raise PatternError("rename must be a dict {model_name_pattern: checkpoint_name_template}, "
                       "a list of (pattern, template) pairs or a function model_name -> "
                       "checkpoint_name or None; got %r" % (rename,))
  rules: list[AnyRule] = []
  for text, template in pairs:
    pattern = compile_pattern(text, "rename")
    if not isinstance(template, str):
      raise PatternError("rename template for %r must be a string; got %r" % (text, template))
    # Expanding against a match of the pattern's own groups catches bad references early.
    references = [int(g) for g in re.findall(r"\\(\d+)", template)]
    if any(ref > pattern.regex.groups for ref in references):
      raise PatternError(
          "rename template %r refers to group \\%d but the pattern %r has %d group(s)"
          % (template, max(references), text, pattern.regex.groups))
    rules.append(Rule(pattern, template))
  return tuple(rules)


def checkpoint_name(rules: Sequence[AnyRule], name: str) -> tuple[str, Optional[AnyRule]]:
  """Returns (the checkpoint name for model variable `name`, the rule used or None).

  Raises:
    PatternError: a template that cannot expand, or a rename function that raised or returned
      something other than a string or None; the message names the variable.
  """
  for rule in rules:
    if isinstance(rule, FunctionRule):
      try:
        renamed = rule.function(name)
      except Exception as err:
        raise PatternError("%s raised %s for model variable %r: %s" % (
            rule, type(err).__name__, name, err)) from err
      if renamed is None or renamed == name:
        continue
      if not isinstance(renamed, str) or not renamed:
        raise PatternError("%s returned %r for model variable %r; it must return a checkpoint "
                           "name (a non-empty str) or None to leave the name as it is"
                           % (rule, renamed, name))
      return renamed, rule
    match = rule.pattern.regex.fullmatch(name)
    if match:
      try:
        return match.expand(rule.template), rule
      except (re.error, IndexError) as err:
        raise PatternError("rename rule %s cannot expand for %r: %s" % (rule, name, err)) from err
  return name, None



def rename_all(rules: Sequence[AnyRule], names: Sequence[str], *, of: str,
               clash: str) -> dict[str, str]:
  """{new name: old name} for every name in `names`, renamed by `rules` where one applies.

  Args:
    rules: compiled rules (`compile_rules`).
    names: the names to rename.
    of: what the names belong to, for messages (" of B").
    clash: why two names may not become one, for the message.

  Raises:
    PatternError: two names renamed to the same name, or a rule that renamed nothing.
  """
  mapping: dict[str, str] = {}
  for new, olds in rename_groups(rules, names, of=of).items():
    if len(olds) > 1:
      raise PatternError("rename maps both %r and %r%s onto %r; %s"
                         % (olds[0], olds[1], of, new, clash))
    mapping[new] = olds[0]
  return mapping


def rename_groups(rules: Sequence[AnyRule], names: Sequence[str], *,
                  of: str) -> dict[str, list[str]]:
  """{new name: [old names renamed to it]}, in the order of `names`; several may share one.

  Raises:
    PatternError: a rule that renamed nothing.
  """
  mapping: dict[str, list[str]] = {}
  used: set[AnyRule] = set()
  for name in names:
    new, rule = checkpoint_name(rules, name)
    if rule is not None:
      used.add(rule)
    mapping.setdefault(new, []).append(name)
  unused = [rule for rule in rules if rule not in used]
  if unused:
    first = unused[0]
    raise PatternError("rename rule%s %s matched no tensor%s.%s" % (
        "s" if len(unused) > 1 else "", ", ".join(map(str, unused)), of,
        " (it returned None or the name itself for all %d)" % len(names)
        if isinstance(first, FunctionRule) else closest(first.pattern.text, names)))
  return mapping

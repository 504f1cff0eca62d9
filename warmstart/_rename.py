"""Mapping model variable names to checkpoint names.

Rules are `{model_name_pattern: checkpoint_name_template}` or a list of such pairs. The pattern is
fully matched against the model variable name; the template is expanded with its groups (`\\1`,
`\\g<name>`). The first rule that matches wins; several model variables may read one tensor.
"""
import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Optional, Union

from warmstart._errors import PatternError
from warmstart._select import Pattern, compile_pattern

Rules = Union[Mapping[str, str], Sequence[tuple[str, str]], None]


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: Pattern
  template: str

  def __str__(self):
    return "%r -> %r" % (self.pattern.text, self.template)


def compile_rules(rename: Rules) -> tuple[Rule, ...]:
  """Validates and compiles rename rules."""
  if rename is None:
    return ()
  if isinstance(rename, Mapping):
    pairs = list(rename.items())
  elif isinstance(rename, (list, tuple)) and all(
      isinstance(p, (list, tuple)) and len(p) == 2 for p in rename):
    pairs = [tuple(p) for p in rename]
  else:
    raise PatternError("rename must be a dict {model_name_pattern: checkpoint_name_template} or "
                       "a list of (pattern, template) pairs; got %r" % (rename,))
  rules = []
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


def checkpoint_name(rules: Sequence[Rule], name: str) -> tuple[str, Optional[Rule]]:
  """Returns (the checkpoint name for model variable `name`, the rule used or None)."""
  for rule in rules:
    match = rule.pattern.regex.fullmatch(name)
    if match:
      try:
        return match.expand(rule.template), rule
      except (re.error, IndexError) as err:
        raise PatternError("rename rule %s cannot expand for %r: %s" % (rule, name, err)) from err
  return name, None

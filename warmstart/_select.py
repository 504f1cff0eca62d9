"""Choosing variables by regex: every pattern is fully matched (`re.fullmatch`) against a name.

So an exact name is a valid pattern, and `mnist/hidden` does not silently grab
`mnist/hidden/kernel/Adam` the way TF's prefix-matching `vars_to_warm_start` list does.
"""
import dataclasses
import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Optional, Union

from warmstart._errors import PatternError

Patterns = Union[str, Sequence[str], None]


@dataclasses.dataclass(frozen=True)
class Pattern:
  """A user's regex, kept with its source text for messages."""
  text: str
  regex: "re.Pattern"

  def matches(self, name: str) -> bool:
    return self.regex.fullmatch(name) is not None


def compile_pattern(text, what: str) -> Pattern:
  """Compiles one regex; `what` names the argument in the error ('include', 'exclude', ...)."""
  if not isinstance(text, str):
    raise PatternError("%s patterns are regex strings; got %s %r" % (what, type(text).__name__,
                                                                      text))
  try:
    return Pattern(text, re.compile(text))
  except re.error as err:
    raise PatternError("invalid regex in %s: %r: %s. Escape special characters with "
                       "re.escape() to match a literal name." % (what, text, err)) from err


def compile_patterns(patterns: Patterns, what: str) -> tuple[Pattern, ...]:
  """Compiles a regex or a list of regexes (None means none)."""
  if patterns is None:
    return ()
  if isinstance(patterns, str):
    patterns = [patterns]
  elif not isinstance(patterns, (list, tuple)):
    raise PatternError("%s must be a regex or a list of regexes; got %s %r"
                       % (what, type(patterns).__name__, patterns))
  return tuple(compile_pattern(p, what) for p in patterns)


def first_match(patterns: Iterable[Pattern], name: str) -> Optional[Pattern]:
  """The first pattern that fully matches `name`, or None."""
  return next((p for p in patterns if p.matches(name)), None)


def unmatched(patterns: Iterable[Pattern], names: Sequence[str], what: str, noun: str):
  """One message for each pattern that fully matches none of `names`, naming the closest."""
  return ["%s pattern %r matches no %s.%s" % (what, p.text, noun, closest(p.text, names))
          for p in patterns if not any(p.matches(n) for n in names)]


def select_names(names: Sequence[str], include: Patterns, exclude: Patterns, noun: str):
  """The names `include` selects (all if None) less those `exclude` matches.

  Raises:
    PatternError: a bad regex, or a pattern that matches none of `names`.
  """
  includes = compile_patterns(include, "include")
  excludes = compile_patterns(exclude, "exclude")
  problems = (unmatched(includes, names, "include", noun)
              + unmatched(excludes, names, "exclude", noun))
  if problems:
    raise PatternError(" ".join(problems))
  return [n for n in names
          if (not includes or first_match(includes, n)) and not first_match(excludes, n)]


def closest(text: str, names: Sequence[str]) -> str:
  """A hint naming the names closest to a pattern that matched nothing, for error messages."""
  names = sorted(set(names))
  hint = ""
  prefixed = [n for n in names if n.startswith(text.rstrip("/") + "/")]
  if prefixed:
    hint = " Patterns match whole names: did you mean %r?" % (text.rstrip("/") + "/.*")
  near = prefixed[:3] or difflib.get_close_matches(text, names, n=3, cutoff=0.5)
  if not near:
    # Compare with the names' leading scopes too: 'hiden' ~ 'hidden/kernel'.
    scopes = sorted({n.split("/")[0] for n in names})
    near = [n for s in difflib.get_close_matches(text.split("/")[0], scopes, n=2, cutoff=0.5)
            for n in names if n.split("/")[0] == s][:3]
  if near:
    hint = " Closest names: %s.%s" % (", ".join(repr(n) for n in near), hint)
  elif not names:
    hint = " There are no variables at all."
  return hint

"""Plan error messages that group many problems and point at the fix.

A wrong stage offset in one rename rule makes hundreds of variables miss their tensor; a list
of hundreds of lines with the same generic fix hides the one thing to change. So when a plan
has many problems, they are grouped by reason (counts, the first few names of each), and the
names that missed are compared with the checkpoint's: when most differ from a tensor of the same
shape by one consistent change (a number off by a constant, one word swapped, a prefix), the
message says which. When nothing loads because the two models name things differently, it
points at `warmstart suggest`.
"""
import collections
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

_LIST_AT_MOST = 8  # problems listed one per line; more are grouped
_NAMES_SHOWN = 3
_TOKENS = re.compile(r"([/_.\-])")
_NUMBERED = re.compile(r"([A-Za-z]*)(\d+)")


def _tokens(name: str) -> list[str]:
  return _TOKENS.split(name)


def consistent_change(wanted: Sequence[tuple[str, tuple[int, ...]]],
                      checkpoint: Mapping[str, Any]) -> Optional[str]:
  """Describes a change that turns most `wanted` names into checkpoint tensors of their shape.

  Args:
    wanted: (checkpoint name looked for, the model variable's shape), for names not found.
    checkpoint: {name: VariableInfo-like with .shape} of the checkpoint.

  Returns:
    A sentence, or None when no single change explains at least half of them (and two).
  """
  if len(wanted) < 2:
    return None
  # One token replaced by a wildcard -> the checkpoint names with that form.
  index: dict[tuple, list[tuple[str, str]]] = collections.defaultdict(list)
  suffixes: dict[str, list[str]] = collections.defaultdict(list)
  for name in checkpoint:
    tokens = _tokens(name)
    for i in range(0, len(tokens), 2):
      index[(*tokens[:i], "\0", *tokens[i + 1:])].append((name, tokens[i]))
    parts = name.split("/")
    for i in range(1, len(parts)):
      suffixes["/".join(parts[i:])].append("/".join(parts[:i]) + "/")
  votes: collections.Counter = collections.Counter()
  example: dict[tuple, tuple[str, str]] = {}
  for name, shape in wanted:
    keys: dict[tuple, str] = {}
    tokens = _tokens(name)
    for i in range(0, len(tokens), 2):
      for other, token in index.get((*tokens[:i], "\0", *tokens[i + 1:]), ()):
        if tuple(checkpoint[other].shape) != tuple(shape):
          continue
        mine, theirs = _NUMBERED.fullmatch(tokens[i]), _NUMBERED.fullmatch(token)
        if mine and theirs and mine.group(1) == theirs.group(1):  # `block3` vs `block2`
          word = mine.group(1) or next(
              (t for t in reversed(tokens[:i]) if t and t not in "/_.-"), "")
          keys[("offset", word, int(theirs.group(2)) - int(mine.group(2)))] = other
        else:
          keys[("swap", tokens[i], token)] = other
    for prefix in suffixes.get(name, ()):
      if tuple(checkpoint[prefix + name].shape) == tuple(shape):
        keys[("add", prefix, "")] = prefix + name
    parts = name.split("/")
    for i in range(1, len(parts)):
      rest = "/".join(parts[i:])
      if rest in checkpoint and tuple(checkpoint[rest].shape) == tuple(shape):
        keys[("drop", "/".join(parts[:i]) + "/", "")] = rest
    for key, other in keys.items():
      votes[key] += 1
      example.setdefault(key, (name, other))
  if not votes:
    return None
  key, count = max(votes.items(), key=lambda kv: (kv[1], kv[0][0] == "offset"))
  if count < 2 or count * 2 < len(wanted):
    return None
  name, other = example[key]
  what, a, b = key
  if what == "offset":
    change = "the number after %r is %s %d (%s)" % (
        a, "greater by" if b > 0 else "smaller by", abs(b),
        "a numbered scope counted from a different start" if abs(b) == 1 else "a constant offset")
  elif what == "swap":
    change = "%r is %r there" % (a, b)
  elif what == "add":
    change = "it has the prefix %r" % a
  else:
    change = "it lacks the prefix %r" % a
  return ("%d of these %d names have a checkpoint tensor of the same shape that differs by one "
          "consistent change: %s, e.g. %r is %r in the checkpoint" % (
              count, len(wanted), change, name, other))


def _describe(rule) -> str:
  text = str(rule)
  return text if text.startswith("rename function") else "rename rule " + text


def plan_error_message(source: str, problems: Sequence[str], decisions: Sequence[Any],
                       checkpoint: Mapping[str, Any], renamed: bool, target_hint: str = "") -> str:
  """The message of a PlanError: every problem, grouped when there are many, with hints.

  Args:
    source: the checkpoint's prefix.
    problems: one line per problem (kept as the PlanError's `.problems`).
    decisions: the planner's decisions (variable, action, checkpoint_name, reason, rule,
      problem), in model order.
    checkpoint: the source's {name: VariableInfo}.
    renamed: whether the user gave rename rules.
    target_hint: how the target can be named on the command line ('TARGET' if unknown).
  """
  header = "cannot warm-start from %s (%d problem%s)" % (
      source, len(problems), "" if len(problems) == 1 else "s")
  lines = []
  decided = {d.problem for d in decisions if d.problem}
  if len(problems) <= _LIST_AT_MOST:
    lines = ["  - " + p for p in problems]
  else:
    groups: dict[str, list[Any]] = collections.defaultdict(list)
    for d in decisions:
      if d.problem:
        groups["shape" if d.reason.startswith("shape") else d.action if d.rule is not None
               and d.action == "missing" else d.reason or "other"].append(d)
    titles = {"missing": "renamed to names that are not in the checkpoint",
              "shape": "shape differs from the checkpoint tensor's"}
    for reason, members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
      rules = list(dict.fromkeys(_describe(d.rule) for d in members if d.rule is not None))
      shown = ", ".join(
          "%s -> %s%s" % (d.variable.name, d.checkpoint_name,
                          " (%s)" % d.reason if reason == "shape" else "")
          for d in members[:_NAMES_SHOWN])
      lines.append("  - %d x %s%s: %s%s" % (
          len(members), titles.get(reason, reason),
          " (by %s%s)" % (rules[0], " and %d more rule%s" % (
              len(rules) - 1, "" if len(rules) == 2 else "s") if len(rules) > 1 else "")
          if rules else "", shown, " ..." if len(members) > _NAMES_SHOWN else ""))
      if reason in titles:
        hint = consistent_change([(d.checkpoint_name, d.variable.shape) for d in members],
                                 checkpoint)
        if hint:
          lines.append("    " + hint + (
              "; fix the rule's template, or pass rename= a function" if rules else ""))
    others = [p for p in problems if p not in decided]
    lines.extend("  - " + p for p in others[:_LIST_AT_MOST])
    if len(others) > _LIST_AT_MOST:
      lines.append("  - ... and %d more" % (len(others) - _LIST_AT_MOST))
  missing = [d for d in decisions if d.action == "missing"]
  loads = any(d.action == "load" for d in decisions)
  if missing and not loads:
    if not renamed:
      hint = consistent_change([(d.checkpoint_name, d.variable.shape) for d in missing],
                               checkpoint)
      if hint:
        lines.append("  " + hint + ".")
    lines.append(
        "  none of the %d model variables is found in the checkpoint%s: the two models name "
        "their variables differently. `warmstart suggest --from %s --to %s` (or "
        "warmstart.suggest_rename(source, target)) matches them by shape, structure and "
        "names and prints rename rules to paste." % (
            len(missing), " (after renaming)" if renamed else "", source,
            target_hint or "TARGET"))
  return header + ":\n" + "\n".join(lines)

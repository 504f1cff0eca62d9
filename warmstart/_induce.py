"""Turning a name mapping into few `(pattern, template)` rename rules that reproduce it exactly.

Each renamed pair proposes rules of its own at several levels of generality: the numbers the two
names share become groups (`block(\\d+)` -> `unit_\\1`), the run of whole segments they share
becomes one group (`layer_\\._(\\d+)/(.+)` -> `layer_\\1/\\2`), and everything else stays
literal, so a numbered scope that moves by a constant offset (`conv3_` <-> `block2/`) yields one
rule per value. Rules are then chosen greedily by how many pairs they rename correctly, a rule
that would rename some names wrongly only when more specific chosen rules catch those first.
Rules are emitted most specific first (the planner uses the first rule that matches), checked
against every model name, and any name still renamed wrongly gets an exact rule of its own.
"""
import bisect
import collections
import dataclasses
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Optional, Union

_DIGITS = re.compile(r"\d+")
_LITERAL_PREFIX = re.compile(r"[^\\()\[.*+?{|^$]*")  # what a pattern's matches all start with
_MAX_COMBINATIONS = 96


@dataclasses.dataclass
class _Candidate:
  pattern: str
  template: str
  regex: "re.Pattern"
  matched: frozenset = frozenset()  # model names it fully matches
  correct: frozenset = frozenset()  # ... of which it renames as the mapping says
  wrong: frozenset = frozenset()  # ... of which it renames otherwise (must be shadowed)


def _natural(text: str):
  return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", text)]


def _template_literal(text: str) -> str:
  return text.replace("\\", "\\\\")


def _reference(group: int, following: str) -> str:
  # `\1` followed by a digit would read as `\1x`: spell such references `\g<1>`.
  return "\\g<%d>" % group if following[:1].isdigit() else "\\%d" % group


def _common_run(a: list[str], b: list[str]) -> Optional[tuple[int, int, int]]:
  """(start in a, start in b, length) of the longest run of equal segments, latest in a."""
  best = None
  for i in range(len(a)):
    for j in range(len(b)):
      k = 0
      while i + k < len(a) and j + k < len(b) and a[i + k] == b[j + k]:
        k += 1
      if k and (best is None or k >= best[2]):
        best = (i, j, k)
  return best


def _proposals(model_name: str, checkpoint_name: str,
               constant: frozenset = frozenset()) -> Iterable[tuple[str, str]]:
  """(pattern, template) pairs that rename `model_name` to `checkpoint_name`.

  `constant`: name segments (`resnet_v2_50`) whose numbers are never copied.
  """
  a, b = model_name.split("/"), checkpoint_name.split("/")
  runs: list[Optional[tuple[int, int, int]]] = [None]
  run = _common_run(a, b)
  if run is not None:
    i, j, k = run
    runs.extend((i + d, j + d, k - d) for d in range(k))  # the run and its shorter tails
  for run in runs:
    if run is None:
      a_parts, b_parts, shared = [model_name], [checkpoint_name], None
    else:
      i, j, k = run
      shared = "/".join(a[i:i + k])
      a_parts = ["/".join(a[:i]) + ("/" if i else ""),
                 ("/" if i + k < len(a) else "") + "/".join(a[i + k:])]
      b_parts = ["/".join(b[:j]) + ("/" if j else ""),
                 ("/" if j + k < len(b) else "") + "/".join(b[j + k:])]
    yield from _with_numbers(a_parts, b_parts, shared, constant)


def _with_numbers(a_parts: list[str], b_parts: list[str], shared: Optional[str],
                  constant: frozenset):
  """Proposals that copy the model name's numbers into the checkpoint name where they agree."""
  a_numbers = [(p, m) for p, part in enumerate(a_parts) for m in _DIGITS.finditer(part)]
  b_numbers = [(p, m) for p, part in enumerate(b_parts) for m in _DIGITS.finditer(part)]
  options = [[] if _segment_at(b_parts[q], mb.start()) in constant else
             [x for x, (p, ma) in enumerate(a_numbers) if ma.group() == mb.group()
              and _segment_at(a_parts[p], ma.start()) not in constant]
             for q, mb in b_numbers]
  for choice in itertools.islice(_monotone(options, 0, -1), _MAX_COMBINATIONS):
    used = sorted({x for x in choice if x is not None})
    yield _build(a_parts, b_parts, shared, a_numbers, b_numbers, used, choice)


def _segment_at(text: str, position: int) -> str:
  start = text.rfind("/", 0, position) + 1
  end = text.find("/", position)
  return text[start:] if end < 0 else text[start:end]


def _monotone(options: list[list[int]], start: int, last: int):
  """Choices of a model number (or None) per checkpoint number, copied in the same order.

  Structure keeps order (`block2/unit_3` <-> `conv2_block3`), so numbers copied out of order
  are coincidences of value, not proposed; one number may be copied twice (`block2_conv1` <->
  `conv2/conv2_1`).
  """
  if start == len(options):
    yield ()
    return
  for x in options[start]:
    if x >= last:
      for rest in _monotone(options, start + 1, x):
        yield (x, *rest)
  for rest in _monotone(options, start + 1, last):
    yield (None, *rest)


def _build(a_parts, b_parts, shared, a_numbers, b_numbers, used, choice):
  group_of = {}
  pattern = []
  group = 0
  for p, part in enumerate(a_parts):
    position = 0
    for x, (q, match) in enumerate(a_numbers):
      if q != p:
        continue
      pattern.append(re.escape(part[position:match.start()]))
      if x in used:
        group += 1
        group_of[x] = group
        pattern.append(r"(\d+)")
      else:
        pattern.append(re.escape(match.group()))
      position = match.end()
    pattern.append(re.escape(part[position:]))
    if p == 0 and shared is not None:
      group += 1
      shared_group = group
      pattern.append("(.+)" if "/" in shared else "([^/]+)")
  pieces: list[Union[str, tuple[int]]] = []
  for p, part in enumerate(b_parts):
    position = 0
    for y, (q, match) in enumerate(b_numbers):
      if q != p:
        continue
      pieces.append(_template_literal(part[position:match.start()]))
      pieces.append(match.group() if choice[y] is None else (group_of[choice[y]],))
      position = match.end()
    pieces.append(_template_literal(part[position:]))
    if p == 0 and shared is not None:
      pieces.append((shared_group,))
  template = ""
  for n, piece in enumerate(pieces):
    if isinstance(piece, tuple):
      following = next((q for q in pieces[n + 1:] if isinstance(q, str) and q), "")
      template += _reference(piece[0], following)
    else:
      template += piece
  return "".join(pattern), template


_TEMPLATE_PART = re.compile(r"\\(?:(\d+)|g<(\d+)>|(\\))")


def _expander(template: str):
  """A fast `match.expand(template)` for the templates built here (`\\1`, `\\g<1>`, `\\\\`)."""
  parts: list = []
  position = 0
  for m in _TEMPLATE_PART.finditer(template):
    parts.append(template[position:m.start()])
    parts.append("\\" if m.group(3) else int(m.group(1) or m.group(2)))
    position = m.end()
  parts.append(template[position:])

  def expand(match: "re.Match") -> str:
    return "".join(p if isinstance(p, str) else match.group(p) for p in parts)
  return expand


def _first_result(rules: Sequence[_Candidate], name: str) -> Optional[str]:
  for rule in rules:
    match = rule.regex.fullmatch(name)
    if match:
      return match.expand(rule.template)
  return None


def induce(mapping: Mapping[str, str], model_names: Sequence[str]) -> list[tuple[str, str]]:
  """Returns ordered (pattern, template) rules renaming exactly as `mapping` says.

  Args:
    mapping: model name -> checkpoint name (pairs of equal names need no rule).
    model_names: every model name the rules will be applied to; a name outside `mapping` must
      match no rule, a name mapped to itself no rule that changes it.

  Returns:
    Rules for `plan(rename=...)`, the first matching rule winning.
  """
  todo = {t: s for t, s in mapping.items() if t != s}
  expected = {n: mapping.get(n) for n in model_names}
  expected.update((t, s) for t, s in mapping.items())
  if not todo:
    return []
  names = list(expected)
  # Segments nearly every checkpoint name has (`resnet_v2_50`, `bottleneck_v2`): their numbers
  # are part of a name, not a numbered scope.
  constant: frozenset[str] = frozenset()
  for side in (todo.keys(), todo.values()):
    segments = collections.Counter(part for name in side for part in set(name.split("/")))
    constant |= {p for p, n in segments.items() if n >= 2 and n >= 0.9 * len(todo)}
  candidates: dict[tuple[str, str], _Candidate] = {}
  for t, s in todo.items():
    for pattern, template in _proposals(t, s, constant):
      if (pattern, template) not in candidates:
        candidates[(pattern, template)] = _Candidate(pattern, template, re.compile(pattern))
  names = sorted(names)
  viable = []
  for candidate in candidates.values():
    prefix = _LITERAL_PREFIX.match(candidate.pattern)
    literal = prefix.group() if prefix else ""
    expand = _expander(candidate.template)
    matched: list[str] = []
    correct: list[str] = []
    wrong: list[str] = []
    bad = False
    for name in names[bisect.bisect_left(names, literal):]:
      if not name.startswith(literal):
        break
      match = candidate.regex.fullmatch(name)
      if not match:
        continue
      matched.append(name)
      result = expand(match)
      want = expected[name]
      if want is None or (want == name and result != name):
        bad = True  # renames a name that must keep its own (or has no counterpart)
        break
      (correct if result == want else wrong).append(name)
    if not bad:
      candidate.matched, candidate.correct = frozenset(matched), frozenset(correct)
      candidate.wrong = frozenset(wrong)
      viable.append(candidate)

  chosen: list[_Candidate] = []
  remaining = set(todo)
  # name -> the fewest names matched by a chosen rule that renames it correctly: such a rule
  # comes before (and so shadows) any rule matching more names.
  caught_by: dict[str, int] = {}

  def merit(c: _Candidate):
    uncaught = sum(1 for n in c.wrong if caught_by.get(n, len(c.matched)) >= len(c.matched))
    return (len(c.correct & remaining) - 2 * uncaught, -len(c.wrong), -c.regex.groups,
            -len(c.pattern), c.pattern)

  while remaining:
    viable = [c for c in viable if c.correct & remaining]
    best = max(viable, key=merit, default=None)
    if best is None or merit(best)[0] <= 0:
      break
    chosen.append(best)
    viable.remove(best)
    remaining -= best.correct
    for name in best.correct:
      caught_by[name] = min(caught_by.get(name, len(best.matched)), len(best.matched))

  ordered = sorted(chosen, key=lambda c: (len(c.matched), _natural(c.pattern)))
  exact = []
  for name in todo:  # names outside `todo` match no rule that changes them (see `bad` above)
    if _first_result(ordered, name) != todo[name]:
      exact.append((re.escape(name), _template_literal(todo[name])))
  exact.sort(key=lambda rule: _natural(rule[0]))
  rules = [_Candidate(p, t, re.compile(p)) for p, t in exact]
  rules += ordered
  # A rule every name of which an earlier rule takes would be an unused rule: drop it.
  used = set()
  for name in names:
    for rule in rules:
      if rule.regex.fullmatch(name):
        used.add(id(rule))
        break
  return [(r.pattern, r.template) for r in rules if id(r) in used]

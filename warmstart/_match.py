"""Matching the variables of two differently named models, from names, shapes and kinds alone.

Used by `suggest_rename`. No TensorFlow here: the inputs are (name, shape, dtype, kind) records,
as `list_variables` gives them for a checkpoint or `plan` collects them from a graph.

How a careful person matches `resnet_v2_50/block1/unit_2/bottleneck_v2/conv1/weights` to
`conv2_block2_1_conv/kernel`, and what this module does the same way:

* Only tensors of the same shape, dtype and kind can be pairs; nothing else is ever considered.
  The candidates thus fall into independent groups, one per (shape, dtype, kind).
* Names are read as scopes and words with synonyms (`weights`/`kernel`, `BatchNorm`/`bn`,
  `gamma`/`scale`, `moving_mean`/`running_mean`...) and numbered scopes (`block1`, `unit_2`,
  `layer_._0`, `conv2d_17`, `layer_with_weights-3`); numbers are not words.
* Each side has an order: the model's creation order when it comes from a graph, else the natural
  order of the names (`layer_10` after `layer_9`). Within each class of tensors (kind and leaf
  word: all kernels, all betas...) the two sequences are aligned (longest common subsequence of
  compatible tensors); a pair on every optimal alignment is order evidence, a pair on some of
  them partial evidence. Keras' `conv2d_17` and TF2's `layer_with_weights-35` meet this way.
* Numbered scopes relate by a constant offset per level (`conv2` = `block1` + 1, `block2` =
  `unit_2`, `layer_._3` = `layer_3`): the offsets are inferred from the current matching by
  majority and then score every pair; tensors of one scope should land in one scope.
* Each group is solved as a global one-to-one assignment (`linear_sum_assignment`) over a score
  combining these signals, re-solved a few times as offsets and scopes are learned. Pairs that
  an equally good alternative could replace are indistinguishable: left unmatched, said why.
"""
import collections
import dataclasses
import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import numpy as np

from warmstart import _kinds

# Only what a warm start loads is matched: optimizer state and step counters are reset.
MATCHED_KINDS = (_kinds.WEIGHT, _kinds.BATCHNORM_STAT, _kinds.OTHER)

_TF2_SUFFIX = re.compile(r"/\.ATTRIBUTES/VARIABLE_VALUE$")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z][a-z])|(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_SPLIT = re.compile(r"[_\-.\s]+")
_WORD_NUMBER = re.compile(r"([a-z]*)(\d+)")
# Multi-word names of one thing, folded before splitting into words.
_PHRASES = (
    (re.compile(r"batch_?norm(alization)?"), "bn"),
    (re.compile(r"layer_?norm(alization)?"), "ln"),
    (re.compile(r"group_?norm(alization)?"), "gn"),
    (re.compile(r"(moving|running)_mean"), "movingmean"),
    (re.compile(r"(moving|running)_var(iance)?"), "movingvariance"),
    (re.compile(r"depthwise_(kernel|weights?)"), "depthwisekernel"),
    (re.compile(r"pointwise_(kernel|weights?)"), "pointwisekernel"),
    (re.compile(r"layer_with_weights"), "layerwithweights"),
    (re.compile(r"fully_connected"), "dense"),
    (re.compile(r"self_attention"), "attention"),
)
_SYNONYMS = {
    "weights": "kernel", "weight": "kernel", "kernels": "kernel", "biases": "bias",
    "scale": "gamma", "offset": "beta", "batchnorm": "bn", "embeddings": "embedding",
    "embed": "embedding", "emb": "embedding", "conv2d": "conv", "convolution": "conv",
    "fc": "dense", "linear": "dense", "attn": "attention",
}
# Short words that mean a parameter only as the last part of a name (`conv1/W`, `bn/mean`).
_LEAF_SYNONYMS = {"w": "kernel", "b": "bias", "mean": "movingmean", "var": "movingvariance",
                  "variance": "movingvariance", "g": "gamma"}

# Weights of the signals in a pair's score (identity of names dominates everything).
# Order is evidence only between candidates that names, numbers and scopes cannot tell apart:
# within a scope the two sides often list tensors in different orders (slim's `shortcut` last,
# Keras' `0_conv` first), so it weighs less than any difference in the names.
_W_WORDS, _W_LEAF, _W_NUMBERS, _W_SCOPE, _W_SAME, _W_ORDER = 0.35, 0.15, 0.30, 0.15, 1.0, 0.05
_MIN_SCORE = 0.30  # below this, a pair is too weakly supported to be suggested
_MIN_SCORE_ALONE = 0.15  # ... unless it is the only tensor of its group on both sides
_TIE = 1e-9
_ROUNDS = 4


@dataclasses.dataclass
class _Name:
  """One tensor as the matcher reads it."""
  info: Any  # name, shape, dtype, kind
  order: int  # position in its side's order
  words: collections.Counter  # canonical words, numbers left out
  leaf: str  # the canonical last word ('kernel', 'bias', 'gamma', ...)
  fields: dict[str, int]  # numbered scope level -> number
  scope: str  # the name without its last part
  potential: list[str] = dataclasses.field(default_factory=list)  # levels of bare words

  @property
  def name(self) -> str:
    return self.info.name

  @property
  def group(self):
    return (tuple(self.info.shape), self.info.dtype, self.info.kind)


def natural_key(name: str):
  """Sort key comparing digit runs as numbers: `layer_9` < `layer_10`."""
  return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _strip(name: str) -> str:
  return _TF2_SUFFIX.sub("", name)


def _root(names: Sequence[str]) -> int:
  """Number of leading segments all names share and every name keeps one more of."""
  split = [n.split("/") for n in names]
  if len(split) < 2:
    return 0
  depth = 0
  limit = min(len(s) for s in split) - 1
  while depth < limit and len({s[depth] for s in split}) == 1:
    depth += 1
  return depth


def _segment_tokens(segment: str, leaf: bool) -> list[Any]:
  """Words (str) and numbers (int) of one name segment, canonicalized."""
  text = _CAMEL.sub("_", segment).lower()
  for pattern, replacement in _PHRASES:
    text = pattern.sub(replacement, text)
  tokens: list[Any] = []
  for part in _SPLIT.split(text):
    if not part:
      continue
    match = _WORD_NUMBER.fullmatch(part)
    if match:
      if match.group(1):
        tokens.append(_SYNONYMS.get(match.group(1), match.group(1)))
      tokens.append(int(match.group(2)))
    else:
      tokens.append(_SYNONYMS.get(part, part))
  if leaf:
    tokens = [_LEAF_SYNONYMS.get(t, t) if isinstance(t, str) else t for t in tokens]
  return tokens


def _analyse(infos: Sequence[Any], ordered: bool,
             aliases: Optional[Mapping[str, str]] = None) -> list[_Name]:
  """Reads one side's names into words, numbered scope levels, scopes and an order.

  `aliases` gives a tensor's name as its model knew it, when the checkpoint key is only a path
  of object indices (TF2's `model/layer_with_weights-3/kernel/.ATTRIBUTES/VARIABLE_VALUE` was
  `conv2d_17/kernel`); the alias is read instead of the key.
  """
  aliases = aliases or {}
  stripped = [_strip(aliases.get(i.name) or i.name) for i in infos]
  root = _root([s for s, i in zip(stripped, infos) if i.kind != _kinds.OTHER] or stripped)
  order = list(range(len(infos))) if ordered else sorted(
      range(len(infos)), key=lambda k: natural_key(stripped[k]))
  rank = {k: r for r, k in enumerate(order)}
  out = []
  for k, (info, name) in enumerate(zip(infos, stripped)):
    segments = name.split("/")
    if len(segments) > root:
      segments = segments[root:]
    path: list[str] = []
    words: collections.Counter = collections.Counter()
    fields: dict[str, int] = {}
    potential = []
    leaf = ""
    for s, segment in enumerate(segments):
      tokens = _segment_tokens(segment, s == len(segments) - 1)
      for t in tokens:
        if isinstance(t, int):
          fields[" ".join(path)] = t
          path.append("#")
        else:
          words[t] += 1
          path.append(t)
          leaf = t
      if tokens and isinstance(tokens[-1], str):
        potential.append(" ".join(path))
      path.append("/")
    out.append(_Name(info, rank[k], words, leaf, fields, "/".join(segments[:-1]), potential))
  # A level whose number never changes is no numbered scope (`bottleneck_v2`); a bare word that
  # is elsewhere numbered is its number 0 (Keras: `conv2d`, `conv2d_1`, ...).
  values = collections.defaultdict(set)
  for n in out:
    for level, value in n.fields.items():
      values[level].add(value)
  for n in out:
    for level in n.potential:
      if level in values and level not in n.fields:
        n.fields[level] = 0
        values[level].add(0)
  for n in out:
    n.fields = {lv: v for lv, v in n.fields.items() if len(values[lv]) > 1}
  return out


def _idf(model: Sequence[_Name], ckpt: Sequence[_Name]) -> dict[str, float]:
  """Weights of the words both sides use (rare ones weigh more); other words tell nothing."""
  counts: collections.Counter = collections.Counter()
  for n in [*model, *ckpt]:
    counts.update(set(n.words))
  shared = set().union(*(n.words for n in model)) & set().union(*(n.words for n in ckpt))
  total = len(model) + len(ckpt) + 1
  return {w: math.log(total / (counts[w] + 0.5)) + 0.1 for w in shared}


def _word_similarity(a: _Name, b: _Name, idf: dict[str, float]) -> float:
  """Weighted Dice similarity of two names' word multisets (rare words weigh more)."""
  common = sum(min(c, b.words[w]) * idf.get(w, 0.0) for w, c in a.words.items()
               if w in b.words)
  total = sum(c * idf.get(w, 0.0) for w, c in a.words.items()) + sum(
      c * idf.get(w, 0.0) for w, c in b.words.items())
  return 2 * common / total if total else 0.0


def _numbered_order(names: Sequence[_Name]) -> bool:
  """Whether names in natural order are mostly ordered by numbers, not by words.

  `conv2d_17` < `conv2d_18`, `layer_with_weights-3` < `-4`, `Mixed_6b` < `Mixed_6c` carry the
  model's structure; `left` < `right` or `key` < `query` only the alphabet, which is no evidence.
  """
  keys = [natural_key(_strip(n.info.name)) for n in names]
  numbered = 0
  for a, b in zip(keys, keys[1:]):
    k = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if k is None:
      continue
    x, y = a[k], b[k]
    if isinstance(x, int) and isinstance(y, int):
      numbered += 1
    elif k and isinstance(a[k - 1], int) and x[:1].isalpha() and y[:1].isalpha() and (
        x[1:2] in ("", "/", "_", "-", ".") and y[1:2] in ("", "/", "_", "-", ".")):
      numbered += 1  # a letter index after a number: `5b`, `5c`
  return numbered * 2 >= len(keys) - 1


def _order_evidence(model: Sequence[_Name], ckpt: Sequence[_Name], model_ordered: bool):
  """{(model name, ckpt name): evidence in [0, 1]} from aligning each class's sequences.

  A class is the tensors of one kind and leaf word, in each side's order; two of them may align
  if their shape, dtype and kind agree. Evidence is 1 for a pair on every longest alignment,
  1/k when one of the two could align with k partners on some longest alignment. A class whose
  names are ordered by words rather than numbers gives none.
  """
  classes: dict[tuple, tuple[list, list]] = collections.defaultdict(lambda: ([], []))
  for n in model:
    classes[(n.info.kind, n.leaf)][0].append(n)
  for n in ckpt:
    classes[(n.info.kind, n.leaf)][1].append(n)
  evidence: dict[tuple[str, str], float] = {}
  for a, b in classes.values():
    if not a or not b:
      continue
    a = sorted(a, key=lambda n: n.order)
    b = sorted(b, key=lambda n: n.order)
    if not (model_ordered or _numbered_order(a)) or not _numbered_order(b):
      continue
    ka = [n.group for n in a]
    kb = [n.group for n in b]
    rows, cols = len(a), len(b)
    forward = np.zeros((rows + 1, cols + 1), dtype=np.int32)
    for i in range(rows):
      for j in range(cols):
        forward[i + 1, j + 1] = (forward[i, j] + 1 if ka[i] == kb[j]
                                 else max(forward[i, j + 1], forward[i + 1, j]))
    backward = np.zeros((rows + 1, cols + 1), dtype=np.int32)
    for i in range(rows - 1, -1, -1):
      for j in range(cols - 1, -1, -1):
        backward[i, j] = (backward[i + 1, j + 1] + 1 if ka[i] == kb[j]
                          else max(backward[i + 1, j], backward[i, j + 1]))
    best = forward[rows, cols]
    on_path = [(i, j) for i in range(rows) for j in range(cols)
               if ka[i] == kb[j] and forward[i, j] + 1 + backward[i + 1, j + 1] == best]
    per_row = collections.Counter(i for i, _ in on_path)
    per_col = collections.Counter(j for _, j in on_path)
    for i, j in on_path:
      evidence[(a[i].name, b[j].name)] = 1.0 / max(per_row[i], per_col[j])
  return evidence


def _relations(pairs: Sequence[tuple[_Name, _Name]]) -> dict[str, tuple[str, int]]:
  """Numbered scope levels of the model that follow a checkpoint level at a constant offset.

  {model level: (checkpoint level, offset)}, accepted when most current pairs that have both
  levels agree on the offset and the number actually varies among them.
  """
  support: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  both: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  varied: dict[tuple, set] = collections.defaultdict(set)
  for t, s in pairs:
    for lt, a in t.fields.items():
      for ls, b in s.fields.items():
        support[lt][(ls, a - b)] += 1
        both[lt][ls] += 1
        varied[(lt, ls, a - b)].add(a)
  out = {}
  for lt, counter in support.items():
    (ls, offset), count = max(counter.items(), key=lambda kv: (kv[1], -abs(kv[0][1]), kv[0][0]))
    if count >= 2 and count >= 0.6 * both[lt][ls] and len(varied[(lt, ls, offset)]) >= 2:
      out[lt] = (ls, offset)
  return out


def _number_agreement(t: _Name, s: _Name, relations) -> float:
  agree = total = 0
  for level, value in t.fields.items():
    relation = relations.get(level)
    if relation is not None and relation[0] in s.fields:
      total += 1
      agree += 1 if value - s.fields[relation[0]] == relation[1] else -1
  return agree / total if total else 0.0


def _dominant_scopes(pairs: Sequence[tuple[_Name, _Name]]):
  """({model scope: ckpt scope}, {ckpt scope: model scope}) where most pairs agree."""
  def dominant(keyed):
    votes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for key, value in keyed:
      votes[key][value] += 1
    out = {}
    for key, counter in votes.items():
      ranked = counter.most_common(2)
      if len(ranked) == 1 or ranked[0][1] > ranked[1][1]:
        out[key] = ranked[0][0]
    return out
  return (dominant((t.scope, s.scope) for t, s in pairs),
          dominant((s.scope, t.scope) for t, s in pairs))


@dataclasses.dataclass
class Match:
  """The matcher's answer.

  Attributes:
    mapping: model name -> checkpoint name, in model order.
    scores: model name -> score of its pair.
    ambiguous: model name -> (checkpoint names, model names): those variables could read those
      tensors equally well.
    weak: model name -> (best candidate, its score) when that was too weakly supported.
  """
  mapping: dict[str, str]
  scores: dict[str, float]
  ambiguous: dict[str, tuple[list[str], list[str]]]
  weak: dict[str, tuple[str, float]]


def match(model: Sequence[Any], checkpoint: Sequence[Any], *, model_ordered: bool = False,
          aliases: Optional[Mapping[str, str]] = None) -> Match:
  """Matches model variables to checkpoint tensors one to one.

  Args:
    model: the model's variables (objects with .name .shape .dtype .kind), e.g. VariableInfo.
    checkpoint: the checkpoint's tensors, likewise.
    model_ordered: `model` is in creation order (from a graph); otherwise both sides are put in
      the natural order of their names.
    aliases: {checkpoint name: the variable's name when it was saved}, for checkpoints keyed
      by object paths (TF2's object graph records these names).

  Returns:
    A Match. Never pairs tensors whose shape, dtype or kind differ.
  """
  model_names = _analyse([v for v in model if v.kind in MATCHED_KINDS], model_ordered)
  ckpt_names = _analyse([v for v in checkpoint if v.kind in MATCHED_KINDS], False, aliases)
  idf = _idf(model_names, ckpt_names)
  order = _order_evidence(model_names, ckpt_names, model_ordered)
  groups: dict[tuple, tuple[list[_Name], list[_Name]]] = collections.defaultdict(
      lambda: ([], []))
  for n in model_names:
    groups[n.group][0].append(n)
  for n in ckpt_names:
    groups[n.group][1].append(n)
  groups = {k: v for k, v in groups.items() if v[0] and v[1]}
  # The parts of the score that do not change between rounds.
  static = {}
  for key, (ts, ss) in groups.items():
    static[key] = np.array([[
        _W_WORDS * _word_similarity(t, s, idf) + _W_LEAF * (t.leaf == s.leaf)
        + _W_ORDER * order.get((t.name, s.name), 0.0)
        + _W_SAME * (t.name in (s.name, (aliases or {}).get(s.name)))
        for s in ss] for t in ts])

  pairs: list[tuple[_Name, _Name]] = []
  scores: dict[tuple, np.ndarray] = {}
  relations: dict[str, tuple[str, int]] = {}
  for round_ in range(_ROUNDS):
    relations = _relations(pairs) if round_ else relations
    # Scopes are learned from a matching that numbers have already corrected: learned from the
    # first one (names and order only) they would entrench its mistakes.
    model_scope, ckpt_scope = _dominant_scopes(pairs) if round_ > 1 else ({}, {})
    previous = {(t.name, s.name) for t, s in pairs}
    pairs = []
    for key, (ts, ss) in groups.items():
      score = static[key].copy()
      if round_:
        for i, t in enumerate(ts):
          for j, s in enumerate(ss):
            score[i, j] += _W_NUMBERS * _number_agreement(t, s, relations) + _W_SCOPE * 0.5 * (
                (model_scope.get(t.scope) == s.scope) + (ckpt_scope.get(s.scope) == t.scope))
      scores[key] = score
      pairs.extend((ts[i], ss[j]) for i, j in _assign(score))
    if {(t.name, s.name) for t, s in pairs} == previous:
      break

  result = Match({}, {}, {}, {})
  for key, (ts, ss) in groups.items():
    score = scores[key]
    assigned = dict(_assign(score))
    taken = {j: i for i, j in assigned.items()}
    for i, j in assigned.items():
      rivals = [k for k in range(len(ss)) if k != j and (
          score[i, k] + (score[taken[k], j] if k in taken else 0.0)
          >= score[i, j] + (score[taken[k], k] if k in taken else 0.0) - _TIE)]
      # Unassigned model variables that could read this tensor just as well.
      others = [r for r in range(len(ts)) if r not in assigned
                and score[r, j] >= score[i, j] - _TIE]
      if rivals or others:
        tensors = [ss[k].name for k in [j, *rivals]]
        variables = [ts[r].name for r in [i, *others]]
        for name in variables:
          result.ambiguous[name] = (tensors, variables)
        continue
      alone = len(ts) == 1 and len(ss) == 1
      if score[i, j] < (_MIN_SCORE_ALONE if alone else _MIN_SCORE):
        result.weak[ts[i].name] = (ss[j].name, float(score[i, j]))
        continue
      result.mapping[ts[i].name] = ss[j].name
      result.scores[ts[i].name] = float(score[i, j])
  position = {n.name: n.order for n in model_names}
  result.mapping = dict(sorted(result.mapping.items(), key=lambda kv: position[kv[0]]))
  return result


def _assign(score: np.ndarray) -> list[tuple[int, int]]:
  """The one-to-one assignment of rows to columns with the largest total score."""
  from scipy.optimize import linear_sum_assignment  # scipy is slow to import; only here
  rows, cols = linear_sum_assignment(score, maximize=True)
  return list(zip(rows.tolist(), cols.tolist()))


@functools.lru_cache(maxsize=4096)
def _words_of(name: str) -> _Name:
  return _analyse([_Info(name)], False)[0]


def name_similarity(a: str, b: str) -> float:
  """Similarity of two names' words (for 'closest name' hints), in [0, 1]."""
  x, y = _words_of(a), _words_of(b)
  idf = {w: 1.0 for w in set(x.words) | set(y.words)}
  return _word_similarity(x, y, idf)


@dataclasses.dataclass(frozen=True)
class _Info:
  name: str
  shape: tuple = ()
  dtype: str = "float32"
  kind: str = _kinds.WEIGHT


def closest(name: str, candidates: Sequence[str]) -> Optional[str]:
  """The candidate whose words are most like `name`'s, or None."""
  return max(candidates, key=lambda c: (name_similarity(name, c), c), default=None)

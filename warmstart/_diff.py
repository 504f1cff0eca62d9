"""Comparing two checkpoints tensor by tensor: the proof of what a warm start did.

Tensors are read one pair at a time, so memory stays bounded by the largest tensors, not the
checkpoints. With atol = rtol = 0 (the default) "identical" means bit for bit.
"""
import dataclasses
import json
import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np

from warmstart import _checkpoint
from warmstart import _select
from warmstart._errors import WarmStartError

logger = logging.getLogger(__name__)

IDENTICAL = "identical"
CHANGED = "changed"
SHAPE_DIFFERS = "shape_differs"
DTYPE_DIFFERS = "dtype_differs"
ONLY_IN_A = "only_in_a"
ONLY_IN_B = "only_in_b"
STATUSES = (IDENTICAL, CHANGED, SHAPE_DIFFERS, DTYPE_DIFFERS, ONLY_IN_A, ONLY_IN_B)


@dataclasses.dataclass(frozen=True)
class TensorDiff:
  """How one tensor differs between checkpoints A and B.

  For 'changed' tensors: max_abs / mean_abs are over |A - B| (all elements), num_different counts
  elements outside the tolerance, max_rel is max |A - B| / |B| over elements where B != 0.
  """
  name: str
  status: str
  shape_a: Optional[Tuple[int, ...]] = None
  shape_b: Optional[Tuple[int, ...]] = None
  dtype_a: Optional[str] = None
  dtype_b: Optional[str] = None
  num_elements: int = 0
  num_different: int = 0
  max_abs: Optional[float] = None
  mean_abs: Optional[float] = None
  max_rel: Optional[float] = None


@dataclasses.dataclass
class DiffReport:
  """The result of `diff(a, b)`: one TensorDiff per tensor name, sorted by name."""
  a: str
  b: str
  tensors: List[TensorDiff]
  atol: float = 0.0
  rtol: float = 0.0

  def by_status(self, status) -> List[TensorDiff]:
    return [t for t in self.tensors if t.status == status]

  @property
  def identical(self) -> bool:
    """True when every compared tensor is identical (within atol/rtol)."""
    return all(t.status == IDENTICAL for t in self.tensors)

  def check(self, expect_same: Sequence[str] = (), expect_changed: Sequence[str] = ()
            ) -> List[str]:
    """Returns the expectations that fail (empty when all hold).

    Args:
      expect_same: regexes (fully matched); every tensor they match must be identical.
      expect_changed: regexes; every tensor they match must be changed (present in both,
        same shape and dtype, values differ).
    """
    failures = []
    for wanted, patterns in ((IDENTICAL, expect_same), (CHANGED, expect_changed)):
      flag = "expect-same" if wanted == IDENTICAL else "expect-changed"
      for pattern in _select.compile_patterns(list(patterns), flag):
        matched = [t for t in self.tensors if pattern.matches(t.name)]
        if not matched:
          failures.append("%s %r matches no tensor.%s" % (flag, pattern.text, _select.closest(
              pattern.text, [t.name for t in self.tensors])))
        failures.extend("%s %r: %s is %s" % (flag, pattern.text, t.name, t.status)
                        for t in matched if t.status != wanted)
    return failures

  def to_dict(self) -> dict:
    counts = {s: len(self.by_status(s)) for s in STATUSES}
    return {"a": self.a, "b": self.b, "atol": self.atol, "rtol": self.rtol, "counts": counts,
            "tensors": [dataclasses.asdict(t) for t in self.tensors]}

  def to_json(self, indent: Optional[int] = 2) -> str:
    return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

  def __str__(self):
    lines = ["A: %s" % self.a, "B: %s" % self.b]
    width = max([len(t.name) for t in self.tensors] + [4])
    for t in self.tensors:
      detail = ""
      if t.status == CHANGED:
        detail = "max|d|=%.6g mean|d|=%.6g differing=%d/%d max_rel=%s" % (
            t.max_abs, t.mean_abs, t.num_different, t.num_elements,
            "n/a" if t.max_rel is None else "%.6g" % t.max_rel)
      elif t.status == SHAPE_DIFFERS:
        detail = "%s vs %s" % (t.shape_a, t.shape_b)
      elif t.status == DTYPE_DIFFERS:
        detail = "%s vs %s" % (t.dtype_a, t.dtype_b)
      lines.append("  %-*s  %-13s %s" % (width, t.name, t.status, detail))
    counts = ", ".join("%d %s" % (len(self.by_status(s)), s) for s in STATUSES
                       if self.by_status(s))
    lines.append("%d tensors: %s" % (len(self.tensors), counts or "none"))
    return "\n".join(lines)


def _bytes_per_element(array):
  return np.ascontiguousarray(array).reshape(-1).view(np.uint8).reshape(array.size, -1)


def _compare(name, a, b, atol, rtol) -> TensorDiff:
  base = dict(name=name, shape_a=tuple(a.shape), shape_b=tuple(b.shape),
              dtype_a=str(a.dtype), dtype_b=str(b.dtype), num_elements=int(a.size))
  if a.dtype != b.dtype:
    return TensorDiff(status=DTYPE_DIFFERS, **base)
  if a.shape != b.shape:
    return TensorDiff(status=SHAPE_DIFFERS, **base)
  if a.dtype.kind in "OSU":  # strings: equal or not
    different = int(np.count_nonzero(a != b))
    return TensorDiff(status=CHANGED if different else IDENTICAL, num_different=different,
                      **base)
  if a.tobytes() == b.tobytes():
    return TensorDiff(status=IDENTICAL, **base)
  if a.dtype.kind == "b":
    a, b = a.astype(np.int8), b.astype(np.int8)
  delta = np.abs(a.astype(np.float64) - b.astype(np.float64))
  magnitude = np.abs(b.astype(np.float64))
  # Same bits (NaN == NaN included) count as equal; else the tolerance decides.
  same_bits = np.all(_bytes_per_element(a) == _bytes_per_element(b), axis=1).reshape(a.shape)
  close = same_bits | (delta <= atol + rtol * magnitude)
  different = int(close.size - np.count_nonzero(close))
  nonzero = magnitude > 0
  with np.errstate(invalid="ignore"):
    max_rel = float(np.max(delta[nonzero] / magnitude[nonzero])) if np.any(nonzero) else None
  # delta is never empty here: identical bytes (empty tensors included) returned above.
  return TensorDiff(status=CHANGED if different else IDENTICAL, num_different=different,
                    max_abs=float(np.max(delta)), mean_abs=float(np.mean(delta)),
                    max_rel=max_rel, **base)


def diff(a, b, *, include=None, exclude=None, atol=0.0, rtol=0.0) -> DiffReport:
  """Compares two checkpoints tensor by tensor.

  Args:
    a, b: checkpoints (anything `resolve_checkpoint` accepts).
    include: regex or list of regexes (fully matched) of tensor names to compare; all if None.
    exclude: regex or list of regexes of tensor names to leave out.
    atol, rtol: tolerances; elements with |A - B| <= atol + rtol * |B| count as equal. With
      both 0 (the default), identical means bit for bit.

  Returns:
    A DiffReport.

  Raises:
    CheckpointNotFoundError, CheckpointReadError, PatternError.

  Example:
    >>> report = warmstart.diff("model", "model_ext", include="mnist/.*")
    >>> report.check(expect_same=["mnist/hidden/.*"])
    []
  """
  if atol < 0 or rtol < 0:
    raise WarmStartError("atol and rtol must be >= 0; got atol=%r rtol=%r" % (atol, rtol))
  includes = _select.compile_patterns(include, "include")
  excludes = _select.compile_patterns(exclude, "exclude")
  ref_a, ref_b = _checkpoint.resolve_checkpoint(a), _checkpoint.resolve_checkpoint(b)
  with _checkpoint.Reader(ref_a) as reader_a, _checkpoint.Reader(ref_b) as reader_b:
    names = sorted(set(reader_a.variables) | set(reader_b.variables))
    for pattern in includes + excludes:
      if not any(pattern.matches(n) for n in names):
        raise _select.PatternError("pattern %r matches no tensor of either checkpoint.%s" % (
            pattern.text, _select.closest(pattern.text, names)))
    names = [n for n in names if (not includes or _select.first_match(includes, n))
             and not _select.first_match(excludes, n)]
    tensors = []
    for name in names:
      info_a, info_b = reader_a.variables.get(name), reader_b.variables.get(name)
      if info_b is None or info_a is None:
        info = info_a or info_b
        tensors.append(TensorDiff(
            name, ONLY_IN_A if info_b is None else ONLY_IN_B,
            shape_a=info_a and info_a.shape, shape_b=info_b and info_b.shape,
            dtype_a=info_a and info_a.dtype, dtype_b=info_b and info_b.dtype))
        continue
      tensors.append(_compare(name, np.asarray(reader_a.read(name)),
                              np.asarray(reader_b.read(name)), atol, rtol))
      logger.debug("%s: %s", name, tensors[-1].status)
  return DiffReport(ref_a.prefix, ref_b.prefix, tensors, atol, rtol)

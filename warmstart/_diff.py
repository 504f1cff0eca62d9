"""Comparing two checkpoints tensor by tensor: the proof of what a warm start did.

`diff` is a pipeline, and this module follows it from top to bottom:

1. list: each checkpoint's tensors, through its reader (`warmstart.sources`);
2. pair: A's names with B's (after `rename`), filtered by include / exclude;
3. compare in chunks: a TF bundle's tensors by the raw bytes of their data files, read in 2 MiB
   chunks into reused page-aligned buffers and compared with memcmp (strings and variants
   element by element where their bytes differ); anything else (other formats, partitioned
   tensors) read through the reader and compared chunk by chunk;
4. statistics: only chunks that differ are decoded (`np.frombuffer`) to accumulate a tensor's
   statistics; the bytes of a tensor that differs are checked against its stored checksum on the
   way (a flipped byte is a corrupt checkpoint, not a change);
5. report: a DiffReport, one TensorDiff per tensor.

So a diff costs little more than reading both checkpoints, and memory stays bounded by a few
chunks whatever the size of the tensors. Nothing here imports TensorFlow. With atol = rtol = 0
(the default) "identical" means bit for bit.
"""
import ctypes
import dataclasses
import itertools
import json
import logging
import math
import mmap
from collections.abc import Iterator, Sequence
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from warmstart import _bundle, _checkpoint, _drift, _printable, _rename, _select, sources
from warmstart._errors import WarmStartError

logger = logging.getLogger(__name__)

IDENTICAL = "identical"
CHANGED = "changed"
SHAPE_DIFFERS = "shape_differs"
DTYPE_DIFFERS = "dtype_differs"
ONLY_IN_A = "only_in_a"
ONLY_IN_B = "only_in_b"
STATUSES = (IDENTICAL, CHANGED, SHAPE_DIFFERS, DTYPE_DIFFERS, ONLY_IN_A, ONLY_IN_B)

# Bytes compared per step: bounds memory, and large enough that per-read overhead does not matter.
_READ_CHUNK = _bundle.READ_CHUNK
# Elements decoded at once for statistics: their temporaries (a few arrays of up to 512 KiB) are
# reused from the heap instead of being mapped and page-faulted afresh each time, which made
# 2 MiB pieces 3x slower (measured: 1.35 s vs 0.4 s for 128 Mi float32 elements).
_STATS_CHUNK = 1 << 16

# progress(done, total): called after each tensor.
ProgressFn = Callable[[int, int], None]


# ------------------------------------------------------------------------------------------
# The report


@dataclasses.dataclass(frozen=True)
class TensorDiff:
  """How one tensor differs between checkpoints A and B.

  Statistics are set when the values are not bit-for-bit identical (for strings only
  num_different). Elements whose bits are equal (NaN with the same bits included) count as equal
  and have |A - B| = 0; the others count as different unless |A - B| <= atol + rtol * |B| with a
  nonzero tolerance (so at atol = rtol = 0, -0.0 vs 0.0 is a difference).

  Attributes:
    name: the tensor name (in A, when `rename` mapped a B name onto it).
    status: one of STATUSES.
    shape_a, shape_b, dtype_a, dtype_b: of each side (None where the tensor is absent).
    num_elements: elements in the tensor (when both sides have the same shape).
    num_different: elements that differ (outside the tolerance).
    max_abs, mean_abs: max and mean of |A - B| over all elements (NaN if a NaN differs).
    max_rel: max of |A - B| / |B| over the differing elements where B != 0; None if there are
      none.
    name_b: the tensor's name in B when `rename` mapped it, else None.
    rel_change: ‖A − B‖ / ‖A‖ (Frobenius norms; inf if A is all zeros), the drift of B from A
      (as `warmstart.drift` measures it); None for strings and where the statistics are unset.
  """
  name: str
  status: str
  shape_a: Optional[tuple[int, ...]] = None
  shape_b: Optional[tuple[int, ...]] = None
  dtype_a: Optional[str] = None
  dtype_b: Optional[str] = None
  num_elements: int = 0
  num_different: int = 0
  max_abs: Optional[float] = None
  mean_abs: Optional[float] = None
  max_rel: Optional[float] = None
  name_b: Optional[str] = None
  rel_change: Optional[float] = None


def _json_number(value):
  """Strict JSON has no NaN or Infinity: they are written as the strings 'nan', 'inf', '-inf'."""
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


@dataclasses.dataclass
class DiffReport:
  """The result of `diff(a, b)`, sorted by name.

  One TensorDiff per tensor of B (named by the A tensor it is compared with, which several B
  tensors may share under `rename`) and one per A tensor no B tensor is compared with.
  """
  a: str
  b: str
  tensors: list[TensorDiff]
  atol: float = 0.0
  rtol: float = 0.0

  def by_status(self, status) -> list[TensorDiff]:
    return [t for t in self.tensors if t.status == status]

  @property
  def identical(self) -> bool:
    """True when every compared tensor is identical (within atol/rtol)."""
    return all(t.status == IDENTICAL for t in self.tensors)

  def check(self, expect_same: Sequence[str] = (), expect_changed: Sequence[str] = ()
            ) -> list[str]:
    """Returns the expectations that fail (empty when all hold).

    A regex matches a tensor when it fully matches its name (A's) or, if renamed, its name in B.

    Args:
      expect_same: regexes (fully matched); every tensor they match must be identical.
      expect_changed: regexes; every tensor they match must be changed (present in both,
        same shape and dtype, values differ).

    Raises:
      PatternError: a regex is invalid.
    """
    failures = []
    for wanted, patterns in ((IDENTICAL, expect_same), (CHANGED, expect_changed)):
      flag = "expect-same" if wanted == IDENTICAL else "expect-changed"
      for pattern in _select.compile_patterns(
          [patterns] if isinstance(patterns, str) else list(patterns), flag):
        matched = [t for t in self.tensors if pattern.matches(t.name) or (
            t.name_b is not None and pattern.matches(t.name_b))]
        if not matched:
          failures.append("%s %r matches no tensor.%s" % (flag, pattern.text, _select.closest(
              pattern.text, [t.name for t in self.tensors])))
        failures.extend("%s %r: %s%s is %s" % (
            flag, pattern.text, t.name, "" if t.name_b is None else " (B: %s)" % t.name_b,
            t.status) for t in matched if t.status != wanted)
    return failures

  def plot(self, *, by: Optional[str] = None, max_rows: int = 40) -> Any:
    """Draws the diff: horizontal bars of relative change per tensor or per layer, coloured by
    status (identical, changed, shape / dtype differs, only in A / B).

    Needs matplotlib (`pip install 'warmstart[plot]'`); nothing is shown on screen.

    Args:
      by: 'tensor', 'layer', or None: per tensor up to `max_rows` tensors, else per layer.
      max_rows: rows drawn at most; the rest are folded into one row per status.

    Returns:
      A `matplotlib.figure.Figure` (save it with `.savefig(path)`).

    Raises:
      WarmStartError: matplotlib is not installed.
    """
    from warmstart import _plot  # pylint: disable=g-import-not-at-top
    return _plot.plot_diff(self, by=by, max_rows=max_rows)

  def to_dict(self) -> dict:
    counts = {s: len(self.by_status(s)) for s in STATUSES}
    tensors = [{k: _json_number(v) for k, v in dataclasses.asdict(t).items()}
               for t in self.tensors]
    return {"a": self.a, "b": self.b, "atol": self.atol, "rtol": self.rtol, "counts": counts,
            "identical": self.identical, "tensors": tensors}

  def to_json(self, indent: Optional[int] = 2) -> str:
    """The report as strict JSON (non-finite statistics as the strings 'nan', 'inf')."""
    return json.dumps(self.to_dict(), indent=indent, sort_keys=True, allow_nan=False)

  def __str__(self):
    lines = ["A: %s" % self.a, "B: %s" % self.b]
    width = max([len(t.name) for t in self.tensors] + [4])
    for t in self.tensors:
      detail = ""
      if t.status in (CHANGED, IDENTICAL) and t.num_different is not None and (
          t.max_abs is not None or t.num_different):
        detail = "differing=%d/%d" % (t.num_different, t.num_elements)
        if t.max_abs is not None and t.mean_abs is not None:
          detail = "max|d|=%.6g mean|d|=%.6g %s max_rel=%s" % (
              t.max_abs, t.mean_abs, detail, "n/a" if t.max_rel is None else "%.6g" % t.max_rel)
      elif t.status == SHAPE_DIFFERS:
        detail = "%s vs %s" % (t.shape_a, t.shape_b)
      elif t.status == DTYPE_DIFFERS:
        detail = "%s vs %s" % (t.dtype_a, t.dtype_b)
      if t.name_b is not None:
        detail = ("(B: %s) %s" % (t.name_b, detail)).rstrip()
      lines.append(("  %-*s  %-13s %s" % (width, t.name, t.status, detail)).rstrip())
    counts = ", ".join("%d %s" % (len(self.by_status(s)), s) for s in STATUSES
                       if self.by_status(s))
    lines.append("%d tensors: %s" % (len(self.tensors), counts or "none"))
    return _printable.printable_lines(lines)  # names come from files: escape what they hold


# ------------------------------------------------------------------------------------------
# diff(): the pipeline


def diff(a: _checkpoint.Source, b: _checkpoint.Source, *, include: _select.Patterns = None,
         exclude: _select.Patterns = None, atol: float = 0.0, rtol: float = 0.0,
         rename: _rename.Rules = None, progress: Optional[ProgressFn] = None) -> DiffReport:
  """Compares two checkpoints tensor by tensor.

  Tensors are streamed: TF checkpoints are compared by the bytes of their data files in bounded
  chunks, and only differing chunks are decoded, so memory does not grow with the checkpoints.

  Args:
    a, b: checkpoints (anything `resolve_checkpoint` accepts).
    include: regex or list of regexes (fully matched) of tensor names to compare; all if None.
    exclude: regex or list of regexes of tensor names to leave out.
    atol, rtol: tolerances; elements with |A - B| <= atol + rtol * |B| count as equal. With
      both 0 (the default), identical means bit for bit.
    rename: rules mapping B's tensor names onto A's: {b_name_pattern: a_name_template}, a
      list of pairs, or a function b_name -> a_name or None, as for `warmstart.plan` (B plays
      the model, A the source). Names are then A's; include / exclude apply to them. Several B
      tensors may map onto one A tensor: each is compared with it. A rule that matches no B
      tensor is an error.
    progress: optional callable(done, total), called as each tensor's comparison completes.

  Returns:
    A DiffReport.

  Raises:
    CheckpointNotFoundError, CheckpointReadError (unreadable or corrupt: the data of a tensor
    that differs is checked against its checksum), PatternError, WarmStartError (bad tolerance).

  Example:
    >>> report = warmstart.diff("model", "model_ext", include="mnist/.*")
    >>> report.check(expect_same=["mnist/hidden/.*"])
    []
  """
  for label, value in (("atol", atol), ("rtol", rtol)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or (
        not math.isfinite(value)):
      raise WarmStartError("%s must be a finite number >= 0; got %r" % (label, value))
  rules = _rename.compile_rules(rename)
  ref_a, ref_b = _checkpoint.resolve_checkpoint(a), _checkpoint.resolve_checkpoint(b)
  with sources.open_reader(ref_a) as side_a, sources.open_reader(ref_b) as side_b:  # 1. list
    pairs = _pairs(side_a.variables, side_b.variables, rules, include, exclude)  # 2. pair
    comparer = _Comparer(side_a, side_b, atol, rtol)  # 3. compare in chunks, 4. statistics
    tensors = []
    for name, name_b in pairs:
      tensors.append(comparer.compare(name, name_b))
      logger.debug("%s: %s", name, tensors[-1].status)
      if progress is not None:
        progress(len(tensors), len(pairs))
  report = DiffReport(ref_a.prefix, ref_b.prefix, tensors, atol, rtol)  # 5. report
  logger.info("diff %s vs %s: %d tensors, %d identical", ref_a.prefix, ref_b.prefix,
              len(tensors), len(report.by_status(IDENTICAL)))
  return report


# ------------------------------------------------------------------------------------------
# 2. pair


def _b_to_a_names(rules, names_b) -> dict[str, list[str]]:
  """{name in A: [names in B compared with it]} after mapping B's names with the rename rules.

  Several B tensors may map onto one A tensor (a model B whose extra pathway was warm-started
  from A's last one): each is compared with it.
  """
  return _rename.rename_groups(rules, names_b, of=" of B")


def _pairs(variables_a, variables_b, rules, include, exclude
           ) -> list[tuple[str, Optional[str]]]:
  """[(name in A, name in B or None)], sorted by A's name, selected by include / exclude: each B
  tensor once; an A tensor once per B tensor mapped onto it."""
  b_names = _b_to_a_names(rules, list(variables_b))
  names = sorted(set(variables_a) | set(b_names))
  names = _select.select_names(names, include, exclude, "tensor of either checkpoint")
  return [(name, name_b) for name in names
          for name_b in (sorted(b_names[name]) if name in b_names else [None])]


# ------------------------------------------------------------------------------------------
# 3. compare in chunks


class _Comparer:
  """Compares tensor pairs, reading each in chunks: equal chunks cost a read and a memcmp;
  those that differ are decoded for the statistics and checksummed.

  It all runs in the calling thread: a worker thread decoding differing chunks while the caller
  read on did not pay on a shared 2-core machine (the 1 GiB diff of benchmarks/diff_bench.py:
  3.8 s vs 3.4 s under load, 0.93 s vs 0.94 s nearly idle, and more memory), so it was cut.
  """

  def __init__(self, reader_a: sources.Reader, reader_b: sources.Reader, atol, rtol):
    self._readers = (reader_a, reader_b)
    # Files of a TF bundle, read by byte ranges (None for other formats).
    self._files = tuple(getattr(r, "files", None) for r in self._readers)
    self._atol, self._rtol = atol, rtol
    # Anonymous maps: no memory is used until a chunk is read into them.
    self._buffers = (_Buffer(_READ_CHUNK), _Buffer(_READ_CHUNK), _Buffer(_READ_CHUNK))

  def compare(self, name, name_b) -> TensorDiff:
    """The TensorDiff of A's `name` and B's `name_b` (either None when absent)."""
    info_a = self._readers[0].variables.get(name)
    info_b = self._readers[1].variables.get(name_b) if name_b is not None else None
    base = dict(name=name, name_b=name_b if name_b not in (None, name) else None,
                shape_a=info_a and info_a.shape, shape_b=info_b and info_b.shape,
                dtype_a=info_a and info_a.dtype, dtype_b=info_b and info_b.dtype)
    if info_a is None or info_b is None:
      return TensorDiff(**base, status=ONLY_IN_A if info_b is None else ONLY_IN_B)
    if info_a.dtype != info_b.dtype:
      return TensorDiff(**base, status=DTYPE_DIFFERS)
    if info_a.shape != info_b.shape:
      return TensorDiff(**base, status=SHAPE_DIFFERS)
    base["num_elements"] = math.prod(info_a.shape)
    raw_a, raw_b = self._raw(0, name), self._raw(1, name_b)
    if raw_a is None or raw_b is None:
      return TensorDiff(**base, **self._compare_values(name, name_b))
    dtype = raw_a.entry.dtype
    if dtype is None or raw_b.entry.dtype is None:  # strings, variants, resources
      return TensorDiff(**base, **self._compare_elements(raw_a, raw_b))
    if dtype != raw_b.entry.dtype:  # byte orders differ
      return TensorDiff(**base, **self._compare_values(name, name_b))
    return TensorDiff(**base, **self._compare_bytes(raw_a, raw_b, dtype))

  def _raw(self, side, name) -> Optional["_Raw"]:
    """Where the stored bytes of `name` are (None if they are not its value as they stand)."""
    reader, files = self._readers[side], self._files[side]
    if files is None or name in reader.notes:
      return None
    entry = files.index.entries[reader.key_of(name)]
    return None if entry.sliced else _Raw(files, entry)

  def _compare_values(self, name, name_b) -> dict:
    """Two tensors read whole through their readers (other formats, partitioned tensors)."""
    a, b = self._readers[0].read(name), self._readers[1].read(name_b)
    if a.dtype.kind in "OSU":  # strings: equal or not, element by element
      different = int(np.count_nonzero(a != b))
      return dict(status=CHANGED if different else IDENTICAL, num_different=different)
    # Values, not bytes: a big-endian .npz holds the same values as a little-endian checkpoint.
    a, b = (x.reshape(-1).astype(x.dtype.newbyteorder("="), copy=False) for x in (a, b))
    stats = _Stats(a.dtype, self._atol, self._rtol)
    stats.add(a, b)  # in pieces; equal ones count only towards ||A|| (for rel_change)
    return stats.result(a.size)

  def _compare_elements(self, raw_a: "_Raw", raw_b: "_Raw") -> dict:
    """Strings and variants, element by element; resources by their bytes. Streamed, and never
    through TensorFlow (whose reader aborts on some of them)."""
    if raw_a.entry.size == raw_b.entry.size and self._same_bytes(raw_a, raw_b):
      return {"status": IDENTICAL}
    if raw_a.entry.dtype_name == "resource":  # no elements of its own: only its bytes
      for raw in (raw_a, raw_b):
        _bundle.verify_tensor(raw.files, raw.entry)
      return {"status": CHANGED}
    elements = itertools.zip_longest(*(
        itertools.chain.from_iterable(_bundle.iter_elements(raw.files, raw.entry))
        for raw in (raw_a, raw_b)))  # both to their ends, where their checksums are checked
    different = sum(element_a != element_b for element_a, element_b in elements)
    return dict(status=CHANGED if different else IDENTICAL, num_different=different)

  def _same_bytes(self, raw_a: "_Raw", raw_b: "_Raw") -> bool:
    """Whether two entries of equal size store the same bytes."""
    return all(equal for _, _, equal in self._chunks(raw_a, raw_b))

  def _chunks(self, raw_a: "_Raw", raw_b: "_Raw") -> Iterator[tuple[int, int, bool]]:
    """Reads both entries chunk by chunk into the first two buffers: (start, count, equal)."""
    for start in range(0, raw_a.entry.size, _READ_CHUNK):
      count = min(_READ_CHUNK, raw_a.entry.size - start)
      for raw, buffer in zip((raw_a, raw_b), self._buffers):
        raw.files.read_into(raw.entry, start, buffer.view[:count])
      yield start, count, _equal_bytes(self._buffers, count)

  def _compare_bytes(self, raw_a: "_Raw", raw_b: "_Raw", dtype: np.dtype) -> dict:
    """Two bundle entries of equal dtype and shape, by their bytes.

    From the first chunk that differs on, both sides' chunks are checksummed (the equal ones
    before it are read again for that, and for ||A||), so the data of a tensor that differs is
    checked against its stored checksum: a flipped byte is a corrupt checkpoint, not a change.
    """
    stats = _Stats(dtype, self._atol, self._rtol)
    checksums: Optional[list[int]] = None  # of both sides' bytes so far, once they differ
    for start, count, equal in self._chunks(raw_a, raw_b):
      if equal and checksums is None:
        continue
      if checksums is None:
        checksums = self._reread(raw_a, raw_b, start, stats)
      for side, buffer in enumerate(self._buffers[:2]):
        checksums[side] = _bundle.crc32c(buffer.view[:count], checksums[side])
      chunk_a, chunk_b = (np.frombuffer(buffer.memory, dtype, count // dtype.itemsize)
                          for buffer in self._buffers[:2])
      if equal:
        stats.add_norm(chunk_a)
      else:
        stats.add(chunk_a, chunk_b)
    if checksums is None:
      return {"status": IDENTICAL}
    for raw, crc in zip((raw_a, raw_b), checksums):
      _bundle.check_crc32c(raw.entry, crc, raw.files.index.data_path(raw.entry.shard_id))
    return stats.result(raw_a.entry.num_elements)

  def _reread(self, raw_a: "_Raw", raw_b: "_Raw", stop: int, stats: "_Stats") -> list[int]:
    """The CRC32C of both entries' first `stop` bytes (equal ones, before the first chunk that
    differs), read again into the third buffer; adds ||A||^2 of them to `stats`."""
    checksums, scratch = [0, 0], self._buffers[2]
    for side, raw in enumerate((raw_a, raw_b)):
      for start in range(0, stop, _READ_CHUNK):
        count = min(_READ_CHUNK, stop - start)
        raw.files.read_into(raw.entry, start, scratch.view[:count])
        checksums[side] = _bundle.crc32c(scratch.view[:count], checksums[side])
        if side == 0:
          stats.add_norm(np.frombuffer(scratch.memory, stats.dtype, count // stats.dtype.itemsize))
    return checksums


class _Raw(NamedTuple):
  """A stored tensor of a TF bundle: its entry and the files holding its bytes."""
  files: _bundle.DataFiles
  entry: _bundle.BundleEntry


class _Buffer:
  """A read buffer: an anonymous memory map, so page-aligned (see _bundle.page_aligned_empty),
  and its address for memcmp."""

  def __init__(self, size):
    self.memory = mmap.mmap(-1, size)
    self.view = memoryview(self.memory)
    self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.memory))


def _find_memcmp():
  try:
    memcmp = ctypes.CDLL(None).memcmp  # libc's; ctypes releases the GIL while it runs
  except (OSError, AttributeError, TypeError):
    return None
  memcmp.restype = ctypes.c_int
  memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
  return memcmp


_MEMCMP = _find_memcmp()


def _equal_bytes(pair, count) -> bool:
  """Whether the first `count` bytes of two buffers are equal (memcmp: 15% faster than numpy)."""
  if _MEMCMP is not None:
    return _MEMCMP(pair[0].address, pair[1].address, count) == 0
  return bool(np.array_equal(np.frombuffer(pair[0].memory, np.uint8, count),
                             np.frombuffer(pair[1].memory, np.uint8, count)))


# ------------------------------------------------------------------------------------------
# 4. statistics


class _Stats:
  """Accumulates the statistics of one tensor pair over its chunks (1-D, same dtype)."""

  def __init__(self, dtype: np.dtype, atol: float, rtol: float):
    self.dtype = dtype
    # Arithmetic type: float32 for float16/bfloat16/float32 tensors (half the memory traffic of
    # float64; statistics to ~1e-7 relative, and a chunk whose |A - B| overflows float32 is
    # redone in float64), float64 for float64 and integers, complex128 for complex.
    self.wide = (np.complex128 if dtype.kind == "c" else
                 np.float32 if (dtype.kind == "f" and dtype.itemsize <= 4) or
                 dtype.name == "bfloat16" else np.float64)
    self.atol, self.rtol = atol, rtol
    self.max_abs = 0.0
    self.sum_abs = 0.0
    self.num_different = 0
    self.max_rel: Optional[float] = None
    self.differs = False  # some bits differ (within tolerance or not)
    # ||A||^2 and ||A - B||^2 for rel_change; the caller adds ||A||^2 of chunks it found
    # bit-identical (add_norm).
    self.norms = dtype.kind in "fiuc"
    self.sum_squares_a = 0.0
    self.sum_squares_delta = 0.0

  def add(self, a: np.ndarray, b: np.ndarray):
    """Adds one chunk pair: 1-D arrays of equal length and dtype."""
    for start in range(0, a.size, _STATS_CHUNK):
      self._add(a[start:start + _STATS_CHUNK], b[start:start + _STATS_CHUNK])

  def add_norm(self, a: np.ndarray):
    """Adds ‖a‖² of a chunk of A whose bytes equal B's."""
    if self.norms:
      self.sum_squares_a += _sum_squares(a)

  def _add(self, a, b):
    same = _same_bits(a, b)
    num_same = int(np.count_nonzero(same))
    self.add_norm(a)
    if num_same == same.size:
      return
    self.differs = True
    # inf - inf, 0 / 0 and float32 overflow are expected below and handled.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
      self._add_differing(a, b, same, num_same)

  def _add_differing(self, a, b, same, num_same):
    delta, magnitude = _abs_delta(a, b, self.wide, same if num_same else None)
    largest = float(np.max(delta))
    if math.isinf(largest) and self.wide == np.float32:  # |A - B| beyond float32: use float64
      delta, magnitude = _abs_delta(a, b, np.float64, same if num_same else None)
      largest = float(np.max(delta))
    if self.norms:
      self.sum_squares_delta += _sum_squares(delta)
    self.max_abs = max(self.max_abs, largest, key=_nan_first)
    self.sum_abs += float(np.add.reduce(delta, dtype=np.float64))
    if self.atol or self.rtol:
      close = delta <= self.atol + self.rtol * magnitude
      close |= same
      self.num_different += int(close.size - np.count_nonzero(close))
    else:
      self.num_different += same.size - num_same
    # max_rel: over the differing elements where B != 0 (a NaN B is not > 0).
    relevant = magnitude > 0
    if num_same:
      relevant[same] = False
    count = int(np.count_nonzero(relevant))
    if count:
      ratio = np.divide(delta, magnitude, out=magnitude)
      rel = float(np.max(ratio) if count == ratio.size else
                  np.max(ratio, where=relevant, initial=-np.inf))
      self.max_rel = rel if self.max_rel is None else max(self.max_rel, rel, key=_nan_first)

  def result(self, num_elements) -> dict:
    if not self.differs:
      return {"status": IDENTICAL}
    return dict(status=CHANGED if self.num_different else IDENTICAL,
                num_different=self.num_different, max_abs=self.max_abs,
                mean_abs=self.sum_abs / num_elements, max_rel=self.max_rel,
                rel_change=_drift.relative_distance(self.sum_squares_delta, self.sum_squares_a)
                if self.norms else None)


def _sum_squares(x: np.ndarray) -> float:
  """‖x‖² (|x|² summed for complex).

  float32 and float64 are summed in their own type by einsum's unrolled, vectorized loop (for
  float32 ~1e-7 relative, at a tenth of the cost of converting to float64 first); other types,
  and a float32 sum that overflows, in float64.
  """
  if x.dtype.kind == "c":
    return float(np.sum(np.abs(x.astype(np.complex128)) ** 2))
  if x.dtype in (np.float32, np.float64):
    with np.errstate(over="ignore"):
      total = float(np.einsum("i,i->", x, x))
    if math.isfinite(total) or not np.all(np.isfinite(x)):
      return total
  wide = x.astype(np.float64)
  return float(np.einsum("i,i->", wide, wide))


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Elementwise: do a and b (1-D, same dtype) have the same bytes?"""
  size = a.dtype.itemsize
  if size in (1, 2, 4, 8):
    unsigned = np.dtype("u%d" % size)
    return a.view(unsigned) == b.view(unsigned)
  return np.all(a.view(np.uint8).reshape(-1, size) == b.view(np.uint8).reshape(-1, size), axis=1)


def _abs_delta(a, b, wide, same):
  """(|A - B|, |B|) in the arithmetic type `wide`; |A - B| is 0 where the bits are `same`."""
  if a.dtype.kind in "iu" and a.dtype.itemsize == 8:
    # float64 would round both sides first (2^64 - 1 vs 2^64 - 2 gave 0): the difference is
    # taken exactly, modulo 2^64 in the larger-minus-smaller order, and rounded only then.
    a, b = (x.astype(x.dtype.newbyteorder("="), copy=False) for x in (a, b))
    unsigned_a, unsigned_b = a.view(np.uint64), b.view(np.uint64)
    delta = np.where(a > b, unsigned_a - unsigned_b, unsigned_b - unsigned_a).astype(wide)
  else:
    a = a.astype(wide, copy=False)
    delta = np.subtract(a, b.astype(wide, copy=False))
    delta = np.abs(delta, out=delta) if delta.dtype.kind == "f" else np.abs(delta)
  b = b.astype(wide, copy=False)
  if same is not None:
    delta[same] = 0  # Equal bits are equal: NaN - NaN and inf - inf are not differences.
  return delta, np.abs(b)


def _nan_first(value):
  """Sort key for max(): NaN wins, so a NaN difference is never hidden."""
  return (math.isnan(value), value)

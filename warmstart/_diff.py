"""Comparing two checkpoints tensor by tensor: the proof of what a warm start did.

TF checkpoints are compared by the raw bytes of their data files, read in bounded chunks: equal
bytes mean identical tensors, and only the chunks that differ are decoded (`np.frombuffer`) to
compute statistics. So a diff costs little more than reading both checkpoints, and memory stays
bounded by a few chunks whatever the size of the tensors. The data of a tensor that differs is
checked against the checksum in the index (a flipped byte is a corrupt checkpoint, not a change).
Other formats, strings and sliced (partitioned) tensors are read whole through the source's
reader (`warmstart.sources`, which checks checksums itself), one tensor pair at a time. Nothing
here imports TensorFlow. With atol = rtol = 0 (the default) "identical" means bit for bit.
"""
import collections
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import json
import logging
import math
import mmap
import os
import queue
import threading
from collections.abc import Sequence
from typing import Any, Callable, Optional

import numpy as np

from warmstart import _bundle, _checkpoint, _drift, _rename, _select, sources
from warmstart._errors import CheckpointReadError, WarmStartError

logger = logging.getLogger(__name__)

IDENTICAL = "identical"
CHANGED = "changed"
SHAPE_DIFFERS = "shape_differs"
DTYPE_DIFFERS = "dtype_differs"
ONLY_IN_A = "only_in_a"
ONLY_IN_B = "only_in_b"
STATUSES = (IDENTICAL, CHANGED, SHAPE_DIFFERS, DTYPE_DIFFERS, ONLY_IN_A, ONLY_IN_B)

# Bytes read from each data file per step: small enough to bound memory and stay in cache while
# comparing, large enough that per-read overhead does not matter.
_READ_CHUNK = 2 << 20
# Elements decoded at once for statistics: the temporaries stay within a core's cache.
_STATS_CHUNK = 1 << 18
# Threads that decode differing chunks and check checksums while the caller reads on; with one
# read-buffer pair more than workers, at most (_WORKERS + 1) * 2 * _READ_CHUNK bytes are held.
_WORKERS = 2

# progress(done, total): called after each tensor.
ProgressFn = Callable[[int, int], None]


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
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Statistics over chunks


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Elementwise: do a and b (1-D, same dtype) have the same bytes?"""
  size = a.dtype.itemsize
  if size in (1, 2, 4, 8):
    unsigned = np.dtype("u%d" % size)
    return a.view(unsigned) == b.view(unsigned)
  return np.all(a.view(np.uint8).reshape(-1, size) == b.view(np.uint8).reshape(-1, size), axis=1)


class _Stats:
  """Accumulates the statistics of one tensor pair over chunks that are not bit-identical."""

  def __init__(self, dtype: np.dtype, atol: float, rtol: float):
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
    # ‖A‖² and ‖A − B‖² for rel_change; the caller adds ‖A‖² of chunks it found bit-identical.
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

  def merge(self, other: "_Stats"):
    """Adds the statistics of other chunks of the same tensor."""
    self.sum_squares_a += other.sum_squares_a
    self.sum_squares_delta += other.sum_squares_delta
    if other.differs:
      self.differs = True
      self.max_abs = max(self.max_abs, other.max_abs, key=_nan_first)
      self.sum_abs += other.sum_abs
      self.num_different += other.num_different
      if other.max_rel is not None:
        self.max_rel = other.max_rel if self.max_rel is None else max(
            self.max_rel, other.max_rel, key=_nan_first)

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


def _abs_delta(a, b, wide, same):
  """(|A - B|, |B|) in the arithmetic type `wide`; |A - B| is 0 where the bits are `same`."""
  a, b = a.astype(wide, copy=False), b.astype(wide, copy=False)
  delta = np.subtract(a, b)
  delta = np.abs(delta, out=delta) if delta.dtype.kind == "f" else np.abs(delta)
  if same is not None:
    delta[same] = 0  # Equal bits are equal: NaN - NaN and inf - inf are not differences.
  return delta, np.abs(b)


def _nan_first(value):
  """Sort key for max(): NaN wins, so a NaN difference is never hidden."""
  return (math.isnan(value), value)


def _compare_arrays(a: np.ndarray, b: np.ndarray, atol, rtol) -> dict:
  """Compares two decoded tensors of the same dtype and shape; returns TensorDiff fields."""
  if a.dtype.kind in "OSU":  # strings: equal or not, element by element
    different = int(np.count_nonzero(a != b))
    return dict(status=CHANGED if different else IDENTICAL, num_different=different)
  a = np.ascontiguousarray(a).reshape(-1)
  b = np.ascontiguousarray(b).reshape(-1)
  stats = _Stats(a.dtype, atol, rtol)
  step = max(1, _READ_CHUNK // max(1, a.dtype.itemsize))
  equal = []
  for start in range(0, a.size, step):
    chunk_a, chunk_b = a[start:start + step], b[start:start + step]
    if chunk_a.tobytes() != chunk_b.tobytes():
      stats.add(chunk_a, chunk_b)
    else:
      equal.append(chunk_a)
  if stats.differs:  # rel_change needs ‖A‖ over the equal chunks too
    for chunk_a in equal:
      stats.add_norm(chunk_a)
  return stats.result(a.size)


# ------------------------------------------------------------------------------------------
# One side of a diff


class _Side:
  """One checkpoint of a diff: its reader, and the raw byte locations of a TF bundle's tensors.

  Safe to use from several threads.
  """

  def __init__(self, ref: _checkpoint.CheckpointRef):
    self.ref = ref
    self._fds: dict[int, int] = {}
    self._lock = threading.Lock()  # guards the reader (an .npz's zip file is not thread-safe)
    self._reader = sources.open_reader(ref)
    self.variables = self._reader.variables
    self._index: Optional[_bundle.BundleIndex] = getattr(self._reader, "index", None)
    if self._index is None:
      return
    shards = sorted({e.shard_id for e in self._index.stored_entries()})
    try:
      for shard_id in shards:
        self._fds[shard_id] = os.open(self._index.data_path(shard_id), os.O_RDONLY)
    except OSError as err:
      self.close()
      raise CheckpointReadError("cannot read checkpoint %s: %s: %s" % (
          ref.prefix, err.filename, err.strerror)) from None

  @property
  def raw_entries(self):
    """The entries of tensors that `raw` would return."""
    if self._index is None:
      return []
    return [e for e in self._index.entries.values() if not e.sliced and e.dtype is not None]

  def raw(self, name):
    """The bundle entry of `name` if its bytes can be compared and decoded directly, else None."""
    if self._index is None or name in self._reader.notes:
      return None
    entry = self._index.entries[self._reader.key_of(name)]
    if entry.sliced or entry.dtype is None:
      return None
    return entry

  def read_into(self, entry, offset: int, view: memoryview):
    """Fills `view` with the entry's bytes from `offset` on."""
    assert self._index is not None  # raw entries come from the index
    path = self._index.data_path(entry.shard_id)
    try:
      fd = self._fds[entry.shard_id]
      done = 0
      while done < len(view):
        count = os.preadv(fd, [view[done:]], entry.offset + offset + done)
        if count == 0:
          raise CheckpointReadError(
              "cannot read tensor %r of checkpoint %s: %s ends before byte %d" % (
                  entry.name, self.ref.prefix, path, entry.offset + offset + done))
        done += count
    except OSError as err:
      raise CheckpointReadError("cannot read tensor %r of checkpoint %s: %s: %s" % (
          entry.name, self.ref.prefix, path, err.strerror or err)) from None

  def verify(self, entry):
    """Checks the entry's bytes against its checksum; CheckpointReadError if they do not match."""
    crc = 0
    assert self._index is not None  # raw entries come from the index
    path = self._index.data_path(entry.shard_id)
    for start in range(0, entry.size, _READ_CHUNK):
      count = min(_READ_CHUNK, entry.size - start)
      try:
        data = os.pread(self._fds[entry.shard_id], count, entry.offset + start)
      except OSError as err:
        raise CheckpointReadError("cannot read tensor %r of checkpoint %s: %s: %s" % (
            entry.name, self.ref.prefix, path, err.strerror or err)) from None
      if len(data) != count:  # a regular file shrinking under us
        raise CheckpointReadError("cannot read tensor %r of checkpoint %s: %s ends early" % (
            entry.name, self.ref.prefix, path))
      crc = _bundle.crc32c(data, crc)
    masked = _bundle.mask_crc32c(crc)
    if masked != entry.crc32c:
      raise CheckpointReadError(
          "cannot read tensor %r of checkpoint %s: its bytes in %s do not match their checksum "
          "(stored 0x%08x, computed 0x%08x): the checkpoint is corrupt" % (
              entry.name, self.ref.prefix, path, entry.crc32c, masked))

  def read(self, name) -> np.ndarray:
    """The decoded tensor, through the source's reader."""
    with self._lock:
      return self._reader.read(name)

  def close(self):
    for fd in self._fds.values():
      os.close(fd)
    self._fds.clear()
    with self._lock:
      self._reader.close()


# ------------------------------------------------------------------------------------------
# The pipeline: the calling thread reads and compares bytes; workers decode what differs.


class _Buffers:
  """At most `pairs` read-buffer pairs, made as needed: bounds the memory of chunks waiting for
  a worker (and a small diff allocates little).

  The buffers are anonymous memory maps, so page-aligned: on some CPUs (AMD EPYC here) the
  kernel copies file data into a buffer at another offset within its page several times slower.
  """

  def __init__(self, pairs: int, size: int):
    self._free: queue.SimpleQueue = queue.SimpleQueue()
    self._unmade = pairs
    self._size = size

  def get(self):
    if self._unmade and self._free.empty():
      self._unmade -= 1
      return _Buffer(self._size), _Buffer(self._size)
    return self._free.get()

  def put(self, pair):
    self._free.put(pair)


class _Buffer:
  """A page-aligned read buffer (`.memory`) and its address for memcmp."""

  def __init__(self, size):
    self.memory = mmap.mmap(-1, size)
    self.address = (ctypes.addressof(ctypes.c_char.from_buffer(self.memory))
                    if _MEMCMP is not None else None)


def _find_memcmp():
  try:
    memcmp = ctypes.CDLL(None).memcmp  # libc's; ctypes releases the GIL while it runs
  except (OSError, AttributeError, TypeError):
    return None
  memcmp.restype = ctypes.c_int
  memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
  return memcmp


_MEMCMP = _find_memcmp()


def _equal_bytes(buffer_a: _Buffer, buffer_b: _Buffer, count) -> bool:
  """Whether the first `count` bytes of two buffers are equal."""
  if _MEMCMP is not None:
    return _MEMCMP(buffer_a.address, buffer_b.address, count) == 0
  a = np.frombuffer(buffer_a.memory, np.uint8, count)
  b = np.frombuffer(buffer_b.memory, np.uint8, count)
  words = count // 8 * 8  # compared 8 bytes at a time: fewer, cheaper elementwise steps
  return bool(np.array_equal(a[:words].view(np.uint64), b[:words].view(np.uint64))
              and np.array_equal(a[words:], b[words:]))


def _equal_chunks_norm(side, entry, chunks, dtype, atol, rtol) -> _Stats:
  """Worker: ‖A‖² of the chunks of a differing tensor whose bytes were equal (for rel_change)."""
  stats = _Stats(dtype, atol, rtol)
  buffer = bytearray(max(count for _, count in chunks))
  for start, count in chunks:
    view = memoryview(buffer)[:count]
    side.read_into(entry, start, view)
    stats.add_norm(np.frombuffer(view, dtype))
  return stats


def _chunk_stats(buffers, pair, dtype, count, atol, rtol) -> _Stats:
  """Worker: the statistics of one differing chunk pair; gives the buffers back."""
  try:
    stats = _Stats(dtype, atol, rtol)
    stats.add(np.frombuffer(pair[0].memory, dtype, count),
              np.frombuffer(pair[1].memory, dtype, count))
    return stats
  finally:
    buffers.put(pair)


@dataclasses.dataclass
class _Pending:
  """A tensor whose comparison may still be running in the workers."""
  base: dict
  fields: Optional[dict] = None  # known now (no worker involved)
  stats: Optional[_Stats] = None
  parts: list[concurrent.futures.Future] = dataclasses.field(default_factory=list)

  def done(self) -> bool:
    return all(part.done() for part in self.parts)

  def result(self) -> TensorDiff:
    if self.fields is not None:
      return TensorDiff(**self.base, **self.fields)
    assert self.stats is not None  # set whenever fields is not
    for part in self.parts:
      value = part.result()  # re-raises a worker's error (e.g. a checksum mismatch)
      if isinstance(value, _Stats):
        self.stats.merge(value)
    return TensorDiff(**self.base, **self.stats.result(self.base["num_elements"]))


def _compare_raw(side_a, side_b, entry_a, entry_b, pool, buffers, atol, rtol, pending):
  """Compares two bundle entries of equal dtype and shape by their bytes, chunk by chunk.

  Equal chunks cost a read and a memcmp; differing ones go to the workers, which compute
  their statistics, and the data of both sides is then checked against its checksum.
  """
  dtype = entry_a.dtype
  pending.stats = _Stats(dtype, atol, rtol)
  equal_chunks = []
  for start in range(0, entry_a.size, _READ_CHUNK):
    count = min(_READ_CHUNK, entry_a.size - start)
    pair = buffers.get()  # blocks while every buffer waits for a worker: bounded memory
    try:
      side_a.read_into(entry_a, start, memoryview(pair[0].memory)[:count])
      side_b.read_into(entry_b, start, memoryview(pair[1].memory)[:count])
      equal = _equal_bytes(pair[0], pair[1], count)
    except BaseException:
      buffers.put(pair)
      raise
    if equal:
      buffers.put(pair)
      equal_chunks.append((start, count))
      continue
    pending.parts.append(pool.submit(_chunk_stats, buffers, pair, dtype,
                                     count // dtype.itemsize, atol, rtol))
  if pending.parts and equal_chunks and pending.stats.norms:
    # Only a tensor that differs needs ‖A‖ of its equal chunks: read them again (rare: most
    # tensors are equal or differ everywhere).
    pending.parts.append(pool.submit(_equal_chunks_norm, side_a, entry_a, equal_chunks, dtype,
                                     atol, rtol))
  if pending.parts:
    pending.parts.append(pool.submit(side_a.verify, entry_a))
    pending.parts.append(pool.submit(side_b.verify, entry_b))


# ------------------------------------------------------------------------------------------
# diff()


def _b_to_a_names(rules, names_b) -> dict[str, list[str]]:
  """{name in A: [names in B compared with it]} after mapping B's names with the rename rules.

  Several B tensors may map onto one A tensor (a model B whose extra pathway was warm-started
  from A's last one): each is compared with it.
  """
  return _rename.rename_groups(rules, names_b, of=" of B")


def diff(a: _checkpoint.Source, b: _checkpoint.Source, *, include: _select.Patterns = None,
         exclude: _select.Patterns = None, atol: float = 0.0, rtol: float = 0.0,
         rename: _rename.Rules = None, progress: Optional[ProgressFn] = None) -> DiffReport:
  """Compares two checkpoints tensor by tensor.

  Tensors are streamed: TF checkpoints are compared by the bytes of their data files in bounded
  chunks, and only differing chunks are decoded (by worker threads, while reading goes on), so
  memory does not grow with the checkpoints.

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
    progress: optional callable(done, total), called (in the calling thread) as each tensor's
      comparison completes.

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
  with contextlib.ExitStack() as stack:
    side_a = _Side(ref_a)
    stack.callback(side_a.close)
    side_b = _Side(ref_b)
    stack.callback(side_b.close)
    b_names = _b_to_a_names(rules, list(side_b.variables))
    names = sorted(set(side_a.variables) | set(b_names))
    names = _select.select_names(names, include, exclude, "tensor of either checkpoint")
    # (A name, B name or None): each B tensor once; an A tensor once per B tensor mapped onto it.
    pairs: list[tuple[str, Optional[str]]] = [
        (name, name_b) for name in names
        for name_b in (sorted(b_names[name]) if name in b_names else [None])]
    # Registered after the sides: on the way out the workers are waited for before the files
    # they read are closed.
    pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(
        _WORKERS, thread_name_prefix="warmstart-diff"))
    stack.callback(pool.shutdown, wait=True, cancel_futures=True)
    largest = max([e.size for side in (side_a, side_b) if side.raw_entries
                   for e in side.raw_entries] + [1])
    buffers = _Buffers(_WORKERS + 1, min(_READ_CHUNK, largest))
    tensors: list[TensorDiff] = []
    waiting: collections.deque[_Pending] = collections.deque()

    def finish(block):
      while waiting and (block or waiting[0].done()):
        tensors.append(waiting.popleft().result())
        logger.debug("%s: %s", tensors[-1].name, tensors[-1].status)
        if progress is not None:
          progress(len(tensors), len(pairs))

    for name, name_b in pairs:
      waiting.append(_start(side_a, side_b, name, name_b, pool, buffers, atol, rtol))
      finish(block=False)
    finish(block=True)
  report = DiffReport(ref_a.prefix, ref_b.prefix, tensors, atol, rtol)
  logger.info("diff %s vs %s: %d tensors, %d identical", ref_a.prefix, ref_b.prefix,
              len(tensors), len(report.by_status(IDENTICAL)))
  return report


def _start(side_a, side_b, name, name_b, pool, buffers, atol, rtol) -> _Pending:
  """Starts comparing one tensor pair."""
  info_a = side_a.variables.get(name)
  info_b = side_b.variables.get(name_b) if name_b is not None else None
  renamed = name_b if name_b is not None and name_b != name else None
  pending = _Pending(dict(name=name, name_b=renamed,
                          shape_a=info_a and info_a.shape, shape_b=info_b and info_b.shape,
                          dtype_a=info_a and info_a.dtype, dtype_b=info_b and info_b.dtype))
  if info_a is None or info_b is None:
    pending.fields = {"status": ONLY_IN_A if info_b is None else ONLY_IN_B}
  elif info_a.dtype != info_b.dtype:
    pending.fields = {"status": DTYPE_DIFFERS}
  elif info_a.shape != info_b.shape:
    pending.fields = {"status": SHAPE_DIFFERS}
  else:
    pending.base["num_elements"] = math.prod(info_a.shape)
    entry_a, entry_b = side_a.raw(name), side_b.raw(name_b)
    if entry_a is not None and entry_b is not None and entry_a.dtype == entry_b.dtype:
      _compare_raw(side_a, side_b, entry_a, entry_b, pool, buffers, atol, rtol, pending)
    else:
      pending.fields = _compare_arrays(side_a.read(name), side_b.read(name_b), atol, rtol)
  return pending

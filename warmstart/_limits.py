"""The one rule for every length, count and size read from a file.

A number read from a file (an index entry's byte range, a block size, a shape, a string element
length, a shard count, a zip member's size, a `.npy` header length) is only a claim until it is
checked against the real size of the bytes it describes: a crafted file can claim 10^8 elements
in a few KiB, or a 2^62-byte block. Every reader checks such a number with these helpers before
anything is allocated, read or handed to TensorFlow, and reads whole files only up to a limit.

A failed check is a CheckpointReadError that names what was claimed, the limit, and the file.

Example:
  >>> size = _limits.bounded(claimed_size, file_size - offset, "tensor 'w' in model.ckpt.data")
"""
import math
import os
import stat
from typing import BinaryIO

from warmstart._errors import CheckpointReadError

MAX_INT64 = (1 << 63) - 1


def bounded(value: int, limit: int, what: str) -> int:
  """Returns `value` if it is an int with 0 <= value <= limit.

  Args:
    value: a length, count or size read from a file.
    limit: what the real bytes allow (the bytes left in the file, or in the region described).
    what: what the value is and where it was read, for the error message.

  Raises:
    CheckpointReadError: `value` is negative, not an int, or larger than `limit`.
  """
  if isinstance(value, bool) or not isinstance(value, int):
    raise CheckpointReadError("%s: %r is not a size" % (what, value))
  if value < 0:
    raise CheckpointReadError("%s: negative size %d" % (what, value))
  if value > limit:
    raise CheckpointReadError("%s: claims %d bytes (or elements) but only %d exist"
                              % (what, value, limit))
  return value


def shape_nbytes(shape, itemsize: int, limit: int, what: str) -> int:
  """The byte size of an array of `shape` and `itemsize`, checked dimension by dimension.

  Every dimension must be an int >= 0, and the total no larger than `limit` (exact integer
  arithmetic, so (2^62, 2^62) cannot overflow into something small). Nor may the nonzero
  dimensions multiply past 2^63 - 1: no array (TensorFlow's or numpy's) has such a shape, even
  with another dimension 0.

  Raises:
    CheckpointReadError: a bad dimension, or more bytes than `limit`.
  """
  for dim in shape:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
      raise CheckpointReadError("%s: bad dimension %r in shape %s" % (what, dim, list(shape)))
  if math.prod(dim for dim in shape if dim) * max(itemsize, 1) > MAX_INT64:
    raise CheckpointReadError("%s: shape %s is too large for any array" % (what, list(shape)))
  return bounded(math.prod(shape) * itemsize, limit, "%s (shape %s)" % (what, list(shape)))


def open_regular(path: str, what: str) -> BinaryIO:
  """Opens a regular file for reading; never blocks on a FIFO or a device put in its place.

  Raises:
    CheckpointReadError: missing, unreadable, or not a regular file.
  """
  try:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
  except FileNotFoundError:
    raise CheckpointReadError("%s: %s does not exist" % (what, path)) from None
  except OSError as err:
    raise CheckpointReadError("%s: cannot open %s: %s" % (what, path, err.strerror)) from None
  try:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
      raise CheckpointReadError("%s: %s is not a regular file" % (what, path))
    if hasattr(os, "set_blocking"):
      os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")
  except BaseException:
    os.close(fd)
    raise


def read_file(path: str, limit: int, what: str) -> bytes:
  """The whole content of a small file, refused (unread) if it is larger than `limit` bytes.

  Raises:
    CheckpointReadError: missing, not a regular file, unreadable, or too large.
  """
  with open_regular(path, what) as f:
    try:
      bounded(os.fstat(f.fileno()).st_size, limit, "%s: %s" % (what, path))
      data = f.read(limit + 1)  # the file may grow after fstat
    except OSError as err:
      raise CheckpointReadError("%s: cannot read %s: %s" % (what, path, err.strerror)) from None
  bounded(len(data), limit, "%s: %s" % (what, path))
  return data


def read_at(f: BinaryIO, offset: int, size: int, file_size: int, what: str) -> bytes:
  """Exactly `size` bytes at `offset` of an open file whose size is `file_size`.

  Raises:
    CheckpointReadError: the range does not lie inside the file, or the file ends early.
  """
  bounded(offset, file_size, what + " (offset)")
  bounded(size, file_size - offset, "%s at offset %d" % (what, offset))
  try:
    f.seek(offset)
    data = f.read(size)
  except OSError as err:
    raise CheckpointReadError("%s: cannot read: %s" % (what, err.strerror)) from None
  if len(data) != size:
    raise CheckpointReadError("%s: the file ends at %d, %d bytes early"
                              % (what, offset + len(data), size - len(data)))
  return data

"""TensorBoard event files of scalar summaries, written without TensorFlow.

An event file is a TFRecord file of `Event` protocol buffers. The few fields a scalar needs are
encoded here by hand (Event: wall_time = 1, step = 2, file_version = 3, summary = 5; Summary:
value = 1; Summary.Value: tag = 1, simple_value = 2), the same bytes TensorFlow's
`tf.compat.v1.summary.FileWriter` writes for a `tf.compat.v1.Summary` of simple values. Importing
TensorFlow for this would cost seconds and hundreds of MB on every `warmstart drift`, and
tensorboard's own writer loads TensorFlow whenever it is installed.
"""
import os
import socket
import struct
import time
from collections.abc import Iterable

from warmstart import _bundle

_FILE_VERSION = b"brain.Event:2"


def _varint(value: int) -> bytes:
  out = bytearray()
  value &= (1 << 64) - 1  # negative int64s take ten bytes, as in protobuf
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
  return _varint(number << 3 | wire_type) + payload


def _length_delimited(number: int, payload: bytes) -> bytes:
  return _field(number, 2, _varint(len(payload)) + payload)


def _event(step: int, *, summary: bytes = b"", file_version: bytes = b"") -> bytes:
  out = _field(1, 1, struct.pack("<d", time.time())) + _field(2, 0, _varint(step))
  if file_version:
    out += _length_delimited(3, file_version)
  if summary:
    out += _length_delimited(5, summary)
  return out


def scalars(values: Iterable[tuple[str, float]]) -> bytes:
  """A serialized `Summary` of (tag, simple_value) pairs (values stored as float32)."""
  return b"".join(_length_delimited(1, _length_delimited(1, tag.encode("utf-8"))
                                    + _field(2, 5, struct.pack("<f", value)))
                  for tag, value in values)


def _record(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC32C, the data, its masked CRC32C."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", _bundle.masked_crc32c(length)) + data
          + struct.pack("<I", _bundle.masked_crc32c(data)))


def event_file_name(suffix: str = "") -> str:
  """A name TensorBoard recognizes: `events.out.tfevents.<time>.<host><suffix>`."""
  return "events.out.tfevents.%010d.%s%s" % (time.time(), socket.gethostname(), suffix)


def write(path: str, summaries: Iterable[tuple[int, bytes]]) -> None:
  """Writes a new event file of (step, serialized Summary) at `path`, and syncs it."""
  with open(path, "xb") as f:
    f.write(_record(_event(0, file_version=_FILE_VERSION)))
    for step, summary in summaries:
      f.write(_record(_event(step, summary=summary)))
    f.flush()
    os.fsync(f.fileno())

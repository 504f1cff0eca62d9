"""The protocol-buffer wire format, decoded without protobuf or TensorFlow.

A checkpoint index holds a few small protocol buffers (BundleHeaderProto, BundleEntryProto). Their
dozen fields are decoded here rather than through protobuf's runtime: describing the messages to
protobuf would take as many lines (TensorFlow's generated modules cannot be imported without
TensorFlow), importing its descriptor machinery costs tens of milliseconds on every `warmstart ls`,
and its dynamic-message API differs between the protobuf versions TensorFlow allows. Every length
and varint is bounds-checked like the rest of the index parser.

Semantics are protobuf's: the last value of a scalar field wins, the occurrences of a message
field merge (decoding their concatenation is exactly that merge), repeated scalars may come packed
or not, unknown fields are skipped. A known field with the wrong wire type is an error (protobuf
would skip it as unknown; TensorFlow never writes one).
"""
from typing import Union

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

Value = Union[int, bytes]
Fields = dict[int, list[tuple[int, Value]]]  # field number -> [(wire type, value)] in file order


class Malformed(ValueError):
  """Bytes that do not decode; the message says what and where."""


def varint(buf: bytes, pos: int, end: int, what: str, bits: int = 64) -> tuple[int, int]:
  """Decodes an unsigned varint of at most `bits` bits at `pos`; returns (value, next pos)."""
  start = pos
  result = 0
  shift = 0
  while True:
    if pos >= end:
      raise Malformed("%s: varint at offset %d runs past the end (%d)" % (what, start, end))
    byte = buf[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    if byte < 0x80:
      break
    shift += 7
    if shift >= bits:
      raise Malformed("%s: varint at offset %d is too long" % (what, start))
  if result >> bits:
    raise Malformed("%s: varint at offset %d overflows %d bits" % (what, start, bits))
  return result, pos


def decode(buf: bytes, what: str) -> Fields:
  """Splits one message into its fields."""
  fields: Fields = {}
  pos, end = 0, len(buf)
  while pos < end:
    key, pos = varint(buf, pos, end, what)
    number, wire = key >> 3, key & 7
    if not 0 < number < 1 << 29:
      raise Malformed("%s: bad field number %d" % (what, number))
    value: Value
    if wire == VARINT:
      value, pos = varint(buf, pos, end, what)
    elif wire in (FIXED64, FIXED32):
      size = 8 if wire == FIXED64 else 4
      if pos + size > end:
        raise Malformed("%s: field %d runs past the end" % (what, number))
      value = int.from_bytes(buf[pos:pos + size], "little")
      pos += size
    elif wire == LENGTH:
      size, pos = varint(buf, pos, end, what)
      if pos + size > end:
        raise Malformed("%s: field %d of %d bytes runs past the end" % (what, number, size))
      value = bytes(buf[pos:pos + size])
      pos += size
    else:  # groups (3, 4) are not used by these messages; 6 and 7 do not exist
      raise Malformed("%s: field %d has wire type %d" % (what, number, wire))
    fields.setdefault(number, []).append((wire, value))
  return fields


def _values(fields: Fields, number: int, wire: int, what: str) -> list:
  values = []
  for got, value in fields.get(number, ()):
    if got != wire:
      raise Malformed("%s: field %d has wire type %d, expected %d" % (what, number, got, wire))
    values.append(value)
  return values


def _signed(value: int, bits: int) -> int:
  value &= (1 << bits) - 1
  return value - (1 << bits) if value >> (bits - 1) else value


def int64(fields: Fields, number: int, what: str) -> int:
  """An int64 field (0 when absent)."""
  values = _values(fields, number, VARINT, what)
  return _signed(values[-1], 64) if values else 0


def int32(fields: Fields, number: int, what: str) -> int:
  """An int32 or enum field (0 when absent); like protobuf, keeps the low 32 bits."""
  values = _values(fields, number, VARINT, what)
  return _signed(values[-1], 32) if values else 0


def fixed32(fields: Fields, number: int, what: str) -> int:
  """A fixed32 field (0 when absent)."""
  values = _values(fields, number, FIXED32, what)
  return values[-1] if values else 0


def has(fields: Fields, number: int) -> bool:
  return number in fields


def message(fields: Fields, number: int, what: str) -> Fields:
  """A singular message field; every occurrence merged (empty when absent)."""
  return decode(b"".join(_values(fields, number, LENGTH, what)), what)


def messages(fields: Fields, number: int, what: str) -> list[Fields]:
  """A repeated message field."""
  return [decode(value, what) for value in _values(fields, number, LENGTH, what)]


def repeated_int32(fields: Fields, number: int, what: str) -> list[int]:
  """A repeated int32 field, packed or not."""
  out = []
  for wire, value in fields.get(number, ()):
    if wire == VARINT and isinstance(value, int):
      out.append(_signed(value, 32))
    elif wire == LENGTH and isinstance(value, bytes):
      pos = 0
      while pos < len(value):
        item, pos = varint(value, pos, len(value), what)
        out.append(_signed(item, 32))
    else:
      raise Malformed("%s: field %d has wire type %d" % (what, number, wire))
  return out

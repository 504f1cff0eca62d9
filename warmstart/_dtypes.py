"""TensorFlow's dtypes without TensorFlow: names, sizes and the numpy types values read as.

The table follows TensorFlow's `DataType` enum (tensorflow/core/framework/types.proto) and what
`tf.as_dtype(...)` and `tf.train.load_checkpoint(...).get_tensor` give for each type: quantized
types read as their storage integers, bfloat16 and the 8- and 4-bit floats and ints as
`ml_dtypes`' numpy types (imported only when such a tensor is read), strings as object arrays of
`bytes`.
"""
import functools
from typing import Any, NamedTuple, Optional

import numpy as np

from warmstart._errors import WarmStartError

STRING = "string"


class DType(NamedTuple):
  """One TensorFlow dtype.

  Attributes:
    name: TensorFlow's name ('float32', 'bfloat16', 'string', ...).
    size: bytes per element; 0 where the size is not fixed (string, resource, variant).
    numpy: the numpy type code of its values, 'ml_dtypes.<name>', 'object' (strings), or ''
      when TensorFlow gives no numpy value (resource, variant).
  """
  name: str
  size: int
  numpy: str


# DataType enum value -> DType.
BY_ENUM = {
    1: DType("float32", 4, "f4"),
    2: DType("float64", 8, "f8"),
    3: DType("int32", 4, "i4"),
    4: DType("uint8", 1, "u1"),
    5: DType("int16", 2, "i2"),
    6: DType("int8", 1, "i1"),
    7: DType(STRING, 0, "object"),
    8: DType("complex64", 8, "c8"),
    9: DType("int64", 8, "i8"),
    10: DType("bool", 1, "?"),
    11: DType("qint8", 1, "i1"),
    12: DType("quint8", 1, "u1"),
    13: DType("qint32", 4, "i4"),
    14: DType("bfloat16", 2, "ml_dtypes.bfloat16"),
    15: DType("qint16", 2, "i2"),
    16: DType("quint16", 2, "u2"),
    17: DType("uint16", 2, "u2"),
    18: DType("complex128", 16, "c16"),
    19: DType("float16", 2, "f2"),
    20: DType("resource", 0, ""),
    21: DType("variant", 0, ""),
    22: DType("uint32", 4, "u4"),
    23: DType("uint64", 8, "u8"),
    24: DType("float8_e5m2", 1, "ml_dtypes.float8_e5m2"),
    25: DType("float8_e4m3fn", 1, "ml_dtypes.float8_e4m3fn"),
    29: DType("int4", 1, "ml_dtypes.int4"),
    30: DType("uint4", 1, "ml_dtypes.uint4"),
}
BY_NAME = {dtype.name: dtype for dtype in BY_ENUM.values()}
# Other spellings TensorFlow accepts for the same types.
_ALIASES = {"half": "float16", "float": "float32", "double": "float64"}


def enum_name(value: int) -> str:
  """'float32' for 1, ...; 'DataType 77' for a value TensorFlow does not define."""
  dtype = BY_ENUM.get(value)
  return dtype.name if dtype is not None else "DataType %d" % value


def canonical_name(dtype: Any) -> str:
  """TensorFlow's name of a dtype given as a name, a numpy dtype or type, a tf.DType or an enum.

  Raises:
    WarmStartError: not a dtype TensorFlow knows.
  """
  name: Optional[str]
  if isinstance(dtype, str):
    name = _ALIASES.get(dtype, dtype)
  elif isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
    name = enum_name(int(dtype))
  elif isinstance(dtype, (np.dtype, type)):
    try:
      numpy_dtype = np.dtype(dtype)
    except TypeError:
      numpy_dtype = None
    name = None if numpy_dtype is None else (
        STRING if numpy_dtype.kind in "OSU" else numpy_dtype.name)
  else:  # a tf.DType (no TensorFlow import needed: its name is TensorFlow's name)
    name = getattr(getattr(dtype, "base_dtype", dtype), "name", None)
  if name not in BY_NAME:
    raise WarmStartError("unknown dtype %r; TensorFlow's dtypes are %s" % (
        dtype, ", ".join(sorted(BY_NAME))))
  return name


@functools.cache
def numpy_dtype(name: str) -> Optional[np.dtype]:
  """The numpy dtype TensorFlow reads a tensor of dtype `name` as; None if it has none."""
  code = BY_NAME[name].numpy
  if not code:
    return None
  if code.startswith("ml_dtypes."):
    import ml_dtypes  # pylint: disable=g-import-not-at-top  (only for tensors of these types)
    return np.dtype(getattr(ml_dtypes, code[len("ml_dtypes."):]))
  return np.dtype(code)

""".safetensors files: read with the `safetensors` package's numpy API, written tensor by tensor.

Reading: `safetensors.safe_open(path, framework="numpy")` validates the header (its length, JSON,
dtypes, and that the data offsets tile the rest of the file exactly) before anything is read, and
memory-maps the data, so listing a file reads only its header and reading a tensor copies only
that tensor. bfloat16 and the float8 types come back as `ml_dtypes` arrays.

Writing is `warmstart.sources._writers.write_safetensors` (tensor by tensor, bounded memory).
"""
import json
import struct
from typing import Any

import numpy as np

from warmstart import _dtypes
from warmstart._checkpoint import VariableInfo
from warmstart._errors import CheckpointReadError, WarmStartError, first_line
from warmstart.sources._base import Reader

# The format's dtype codes and TensorFlow's names for the same types.
DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I64": "int64", "I32": "int32",
    "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
    "BOOL": "bool", "C64": "complex64",
}
CODES = {name: code for code, name in DTYPES.items()}
# Read from the file directly: safetensors 0.8's numpy API has no float8 types.
_RAW = ("float8_e4m3fn", "float8_e5m2")


class SafetensorsReader(Reader):
  """Reads a .safetensors file."""

  def __init__(self, ref):
    super().__init__(ref)
    self._file: Any = None
    try:
      import safetensors  # pylint: disable=g-import-not-at-top  (only for .safetensors sources)
      self._file = safetensors.safe_open(ref.prefix, framework="numpy")
      infos = {}
      for name in self._file.offset_keys():
        piece = self._file.get_slice(name)
        code = piece.get_dtype()
        if code not in DTYPES:
          raise CheckpointReadError("%s: tensor %r has dtype %s, which TensorFlow has no type for"
                                    % (ref.prefix, name, code))
        infos[name] = VariableInfo.make(name, piece.get_shape(), DTYPES[code])
    except WarmStartError:
      raise
    except Exception as err:  # SafetensorError, OSError, ...
      raise CheckpointReadError("cannot read %s as a .safetensors file: %s"
                                % (ref.prefix, first_line(err))) from err
    self.variables = dict(sorted(infos.items()))

  def read(self, name: str) -> np.ndarray:
    self.info(name)
    try:
      if self.variables[name].dtype in _RAW:
        return self._read_raw(name)
      return np.asarray(self._file.get_tensor(name))
    except WarmStartError:
      raise
    except Exception as err:
      raise CheckpointReadError("cannot read tensor %r of %s: %s"
                                % (name, self.ref.prefix, first_line(err))) from err

  def _read_raw(self, name: str) -> np.ndarray:
    """Reads a tensor whose dtype the package's numpy API does not return (float8)."""
    with open(self.ref.prefix, "rb") as file:
      (size,) = struct.unpack("<Q", file.read(8))
      # safe_open has validated the header (size, JSON, offsets tiling the data) already.
      begin, end = json.loads(file.read(size))[name]["data_offsets"]
      file.seek(8 + size + begin)
      data = file.read(end - begin)
    info = self.variables[name]
    return np.frombuffer(data, dtype=_dtypes.numpy_dtype(info.dtype)).reshape(info.shape).copy()

  def close(self) -> None:
    self._file = None

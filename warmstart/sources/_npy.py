""".npy files: one array, or the pickled weight dicts of Caffe converters (opt-in only).

The tutorials that load Caffe-converted weights (kratzert's AlexNet, the slim tutorial's ".ckpt or
.npy") use a dict saved with `numpy.save`: `{layer: [W, b]}` or `{layer: {"weights": W,
"biases": b}}`. Such a file is a pickle, and unpickling can run code. It is read only when the
source says so (`warmstart.Source(path, allow_pickle=True)`), a warning says why that is risky,
and even then through an unpickler that accepts only the globals that rebuild numpy arrays
(anything else in the pickle is refused before it runs). Names: `layer/weights`, `layer/biases`
for a pair (further items `layer/2`, ...), `layer/<key>` for a dict, `layer` for a bare array.

A .npy of plain numbers is never unpickled: it is one tensor, named after the file
(`fc8.npy` -> `fc8`), checked against the file size before it is read.
"""
import logging
import os
import pickle
import warnings

import numpy as np

from warmstart._checkpoint import VariableInfo
from warmstart._errors import CheckpointReadError, WarmStartError, first_line
from warmstart.sources._base import Reader

logger = logging.getLogger(__name__)

EXTENSION = ".npy"
# The globals a pickle of numpy arrays (Python 2 or 3, numpy 1 or 2) needs, and nothing else.
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
})
_PAIR = ("weights", "biases")


class _ArraysOnlyUnpickler(pickle.Unpickler):
  """An unpickler that can rebuild numpy arrays and plain containers, nothing else."""

  def __init__(self, file, source):
    # numpy needs latin1 to read the raw array bytes of a Python 2 pickle (as Caffe converters wrote).
    super().__init__(file, encoding="latin1")
    self._source = source

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED_GLOBALS:
      raise CheckpointReadError(
          "%s: refusing to unpickle %s.%s; only numpy arrays in dicts and lists are read"
          % (self._source, module, name))
    return super().find_class(module, name)


def _header(file, source: str):
  """(shape, fortran_order, dtype) of an open .npy file, positioned at its data."""
  try:
    version = np.lib.format.read_magic(file)
    with warnings.catch_warnings():  # numpy warns of odd or Python 2 headers: not the user's
      warnings.simplefilter("ignore")
      # numpy's one header reader for every format version (1.0, 2.0 and 3.0) is private.
      return np.lib.format._read_array_header(file, version)  # type: ignore[attr-defined]
  except Exception as err:  # ValueError, SyntaxError, ... for a damaged header
    raise CheckpointReadError("%s is not a readable .npy file: %s" % (source, first_line(err))) from err


class NpyReader(Reader):
  """Reads a .npy file: one numeric array, or (with allow_pickle) a Caffe-style dict."""

  def __init__(self, ref):
    super().__init__(ref)
    self._arrays: dict[str, np.ndarray] = {}
    self._plain = None
    try:
      with open(ref.prefix, "rb") as file:
        shape, fortran, dtype = _header(file, ref.prefix)
        if dtype.hasobject:
          self._arrays = _weight_dict(file, ref)
          infos = {n: VariableInfo.make(n, a.shape, a.dtype) for n, a in self._arrays.items()}
        else:
          stem, extension = os.path.splitext(os.path.basename(ref.prefix))
          name = stem if extension == EXTENSION and stem else os.path.basename(ref.prefix)
          nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
          available = os.fstat(file.fileno()).st_size - file.tell()
          if nbytes > available:
            raise CheckpointReadError("%s declares %s %s (%d bytes) but holds %d bytes of data; "
                                      "it is truncated" % (ref.prefix, dtype, shape, nbytes, available))
          self._plain = (file.tell(), shape, fortran, dtype)
          infos = {name: VariableInfo.make(name, shape, dtype)}
    except WarmStartError:
      raise
    except Exception as err:
      raise CheckpointReadError("cannot read %s: %s" % (ref.prefix, first_line(err))) from err
    self.variables = dict(sorted(infos.items()))

  def read(self, name: str) -> np.ndarray:
    self.info(name)
    if self._plain is None:
      return self._arrays[name]
    offset, shape, fortran, dtype = self._plain
    try:
      with open(self.ref.prefix, "rb") as file:
        file.seek(offset)
        count = int(np.prod(shape, dtype=np.int64))
        data = np.fromfile(file, dtype=dtype, count=count)
    except Exception as err:
      raise CheckpointReadError("cannot read %s: %s" % (self.ref.prefix, first_line(err))) from err
    if data.size != count:
      raise CheckpointReadError("%s: read %d of %d elements; the file is truncated"
                                % (self.ref.prefix, data.size, count))
    value = data.reshape(shape[::-1]).T if fortran else data.reshape(shape)
    return np.asarray(value.astype(dtype.newbyteorder("="), copy=False), order="C")


def _weight_dict(file, ref) -> dict[str, np.ndarray]:
  """The arrays of a pickled Caffe-style weight dict, by name."""
  if not ref.allow_pickle:
    raise CheckpointReadError(
        "%s holds pickled Python objects (a Caffe-style weight dict?). Pickles can run code, so "
        "they are read only on request: warmstart.Source(%r, allow_pickle=True) (CLI: "
        "--allow_pickle), and only for a file you trust. Better: convert it once with `warmstart "
        "convert --allow_pickle %s OUT.safetensors` and use that." % (
            ref.prefix, ref.prefix, ref.prefix))
  try:
    loaded = _ArraysOnlyUnpickler(file, ref.prefix).load()
  except WarmStartError:
    raise
  except Exception as err:  # UnpicklingError, EOFError, ValueError, ...
    raise CheckpointReadError("cannot unpickle %s: %s" % (ref.prefix, first_line(err))) from err
  logger.warning("unpickled %s (allow_pickle=True): a pickle can run code when it is loaded; "
                 "warmstart accepted only numpy arrays in it, but read only files you trust "
                 "(better: convert it once to .safetensors)", ref.prefix)
  if isinstance(loaded, np.ndarray) and loaded.dtype.hasobject and loaded.shape == ():
    loaded = loaded.item()
  if not isinstance(loaded, dict):
    raise CheckpointReadError("%s holds a pickled %s; expected a dict {layer: [weights, biases]} "
                              "or {layer: {name: array}}" % (ref.prefix, type(loaded).__name__))
  arrays = {}
  for layer, value in loaded.items():
    layer = _text(layer, ref.prefix)
    if isinstance(value, dict):
      items = [(_text(k, ref.prefix), v) for k, v in value.items()]
    elif isinstance(value, (list, tuple)):
      items = [(_PAIR[i] if i < len(_PAIR) else str(i), v) for i, v in enumerate(value)]
    else:
      items = [("", value)]
    for key, array in items:
      name = layer + "/" + key if key else layer
      array = np.asarray(array)
      if array.dtype.hasobject or array.dtype.kind not in "biufc":
        raise CheckpointReadError("%s: %s is %s, not an array of numbers"
                                  % (ref.prefix, name, type(array).__name__))
      arrays[name] = np.asarray(array.astype(array.dtype.newbyteorder("="), copy=False), order="C")
  return arrays


def _text(key, source: str) -> str:
  if isinstance(key, bytes):
    key = key.decode("latin1")
  if not isinstance(key, str) or not key:
    raise CheckpointReadError("%s: dict key %r is not a layer name" % (source, key))
  return key

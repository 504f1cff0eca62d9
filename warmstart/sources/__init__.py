"""Reading sources: one reader per format behind one interface, none of them needs TensorFlow.

`open_reader(ref)` picks the reader for a resolved source by its `ref.kind` from `READERS`; a new
format is one module with a `Reader` subclass plus one line there. Code that reads a source
(`list_variables`, `read_tensor`, `diff`, the planner) never asks which format it holds.
"""
from typing import Optional

import numpy as np

from warmstart import _checkpoint, _source
from warmstart._checkpoint import CheckpointRef, Source, VariableInfo
from warmstart._errors import WarmStartError
from warmstart.sources._base import Reader
from warmstart.sources._h5 import H5Reader
from warmstart.sources._layout import TorchLayout
from warmstart.sources._npy import NpyReader
from warmstart.sources._npz import NpzReader
from warmstart.sources._safetensors import SafetensorsReader
from warmstart.sources._tf_bundle import BundleReader

# CheckpointRef.kind -> the Reader subclass that reads it.
READERS: dict[str, type[Reader]] = {
    _checkpoint.CHECKPOINT: BundleReader,
    _checkpoint.SAVED_MODEL: BundleReader,
    _checkpoint.NPZ: NpzReader,
    _checkpoint.KERAS_H5: H5Reader,
    _checkpoint.SAFETENSORS: SafetensorsReader,
    _checkpoint.NPY: NpyReader,
}


def open_reader(ref: CheckpointRef) -> Reader:
  """Opens the reader of a resolved source (use it as a context manager).

  Raises:
    CheckpointReadError: the files cannot be read (damaged, not of that format).
    WarmStartError: no reader for `ref.kind`.
  """
  reader_class = READERS.get(ref.kind)
  if reader_class is None:
    raise WarmStartError("no reader for sources of kind %r (%s); readers exist for %s" % (
        ref.kind, ref.prefix, ", ".join(sorted(READERS))))
  reader = reader_class(ref)
  # PyTorch layouts are presented in TensorFlow's (Source(path, layout="torch")).
  return TorchLayout(reader) if ref.layout == _source.TORCH else reader


def list_variables(source: Source, step: Optional[int] = None) -> list[VariableInfo]:
  """Lists the variables of a checkpoint, sorted by name.

  Args:
    source: anything `resolve_checkpoint` accepts.
    step: as for `resolve_checkpoint`.

  Returns:
    A list of VariableInfo (name, shape, dtype, nbytes, kind).

  Raises:
    CheckpointNotFoundError, CheckpointReadError.

  Example:
    >>> [v.name for v in warmstart.list_variables("model") if v.kind == "weight"]
    ['mnist/hidden/bias', 'mnist/hidden/kernel', 'mnist/logits/bias', 'mnist/logits/kernel']
  """
  with open_reader(_checkpoint.resolve_checkpoint(source, step)) as reader:
    return list(reader.variables.values())


def read_tensor(source: Source, name: str) -> np.ndarray:
  """Reads one tensor of a checkpoint, without TensorFlow.

  The value equals `tf.train.load_checkpoint(prefix).get_tensor(name)` bit for bit, for every
  dtype TensorFlow saves (bfloat16 and the 8- and 4-bit types as `ml_dtypes` arrays, strings as
  object arrays of bytes), partitioned variables assembled whole; but it is always an ndarray
  (0-d for a scalar), and its bytes are checked against the checkpoint's checksum.

  Args:
    source: anything `resolve_checkpoint` accepts (pass a CheckpointRef to pick a step).
    name: the tensor's name, as `list_variables` gives it.

  Returns:
    A numpy array.

  Raises:
    CheckpointNotFoundError, CheckpointReadError (damaged data), PatternError (no such tensor;
    the message names the closest ones).

  Example:
    >>> kernel = warmstart.read_tensor("model", "mnist/hidden/kernel")
    >>> kernel.shape, kernel.dtype
    ((784, 128), dtype('float32'))
  """
  with open_reader(_checkpoint.resolve_checkpoint(source)) as reader:
    return reader.read(name)


__all__ = ("READERS", "BundleReader", "H5Reader", "NpyReader", "NpzReader", "Reader",
           "SafetensorsReader", "list_variables", "open_reader", "read_tensor")

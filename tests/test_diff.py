"""warmstart.diff on real checkpoints: bit-for-bit semantics, tolerances, statistics, sources."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import mark_modified, write_checkpoint

import warmstart
from warmstart import _diff

F32 = np.float32


def pair(tmp_path, tensors_a, tensors_b):
  """Writes checkpoints A and B; returns their prefixes."""
  return (write_checkpoint(tmp_path / "a", tensors_a),
          write_checkpoint(tmp_path / "b", tensors_b))


def by_name(report):
  return {t.name: t for t in report.tensors}


def numpy_stats(a, b, atol=0.0, rtol=0.0):
  """The statistics diff() promises, computed with plain numpy on whole arrays."""
  a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
  unsigned = np.dtype("u%d" % a.dtype.itemsize)
  same = a.view(unsigned) == b.view(unsigned)
  delta = np.abs(a.astype(np.float64) - b.astype(np.float64))
  delta[same] = 0.0
  magnitude = np.abs(b.astype(np.float64))
  close = same | (delta <= atol + rtol * magnitude) if (atol or rtol) else same
  relevant = (magnitude > 0) & ~same
  return dict(
      num_different=int(np.count_nonzero(~close)), max_abs=float(delta.max()),
      mean_abs=float(delta.mean()),
      max_rel=float((delta[relevant] / magnitude[relevant]).max()) if relevant.any() else None)


def assert_stats(diff, expected):
  """Counts exactly; statistics to 1e-6 (float16/32 tensors are worked on in float32)."""
  assert diff.num_different == expected["num_different"]
  assert diff.max_abs == pytest.approx(expected["max_abs"], rel=1e-6)
  assert diff.mean_abs == pytest.approx(expected["mean_abs"], rel=1e-6)
  if expected["max_rel"] is None:
    assert diff.max_rel is None
  else:
    assert diff.max_rel == pytest.approx(expected["max_rel"], rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Bit-for-bit semantics


def bits(value, dtype=F32):
  """A float from its integer bit pattern."""
  return np.array([value], dtype="u%d" % np.dtype(dtype).itemsize).view(dtype)[0]


ONE_ULP_ABOVE_ONE = np.nextafter(F32(1), F32(2))
QUIET_NAN = bits(0x7FC00000)
OTHER_NAN = bits(0x7FC00001)


@pytest.mark.parametrize("value_a, value_b, atol, status", [
    (1.0, ONE_ULP_ABOVE_ONE, 0.0, "changed"),
    (1.0, ONE_ULP_ABOVE_ONE, 1e-6, "identical"),
    (0.0, -0.0, 0.0, "changed"),
    (0.0, -0.0, 1e-30, "identical"),
    (QUIET_NAN, QUIET_NAN, 0.0, "identical"),
    (QUIET_NAN, OTHER_NAN, 0.0, "changed"),
    (QUIET_NAN, OTHER_NAN, 1.0, "changed"),  # NaN is never within a tolerance
    (np.inf, np.inf, 0.0, "identical"),
    (1.0, 1.0, 0.0, "identical"),
], ids=["one_ulp", "one_ulp_within_atol", "negative_zero", "negative_zero_within_atol",
        "same_nan_bits", "other_nan_payload", "other_nan_payload_with_atol", "same_inf",
        "equal"])
def test_identical_means_bit_for_bit(tmp_path, value_a, value_b, atol, status):
  a, b = pair(tmp_path, {"x": np.array([3.0, value_a], F32)},
              {"x": np.array([3.0, value_b], F32)})
  diff = warmstart.diff(a, b, atol=atol).tensors[0]
  assert diff.status == status
  assert diff.num_different == (1 if status == "changed" else 0)


def test_same_nan_bits_count_as_zero_difference_in_a_changed_tensor(tmp_path):
  a, b = pair(tmp_path, {"x": np.array([np.nan, 1.0, 2.0], F32)},
              {"x": np.array([np.nan, 1.0, 4.0], F32)})
  diff = warmstart.diff(a, b).tensors[0]
  assert (diff.status, diff.num_different, diff.max_abs) == ("changed", 1, 2.0)
  assert diff.mean_abs == pytest.approx(2.0 / 3)
  assert diff.max_rel == 0.5


def test_nan_against_a_number_shows_in_the_statistics_and_strict_json(tmp_path):
  a, b = pair(tmp_path, {"x": np.array([np.nan, 1.0], F32)}, {"x": np.array([5.0, 1.0], F32)})
  report = warmstart.diff(a, b)
  assert np.isnan(report.tensors[0].max_abs)
  data = json.loads(report.to_json())  # allow_nan=False inside: strict JSON
  assert data["tensors"][0]["max_abs"] == "nan"


def test_identical_checkpoints(tmp_path):
  tensors = {"w": np.arange(12, dtype=F32).reshape(3, 4), "step": np.int64(7),
             "flag": np.array([True, False]), "words": np.array([b"a", b"bc"])}
  a, b = pair(tmp_path, tensors, tensors)
  report = warmstart.diff(a, b)
  assert report.identical
  assert [t.status for t in report.tensors] == ["identical"] * 4
  assert all(t.max_abs is None for t in report.tensors)


# ---------------------------------------------------------------------------------------------
# Tolerances


@pytest.mark.parametrize("atol, rtol, num_different", [
    (0.0, 0.0, 3), (0.1, 0.0, 2), (1.0, 0.0, 1), (0.0, 0.05, 1), (0.0, 0.2, 0), (10.0, 0.0, 0),
])
def test_tolerances(tmp_path, atol, rtol, num_different):
  # |A - B| = 0.1, 0.5, 2.0 with |B| = 1, 10, 20: relative 0.1, 0.05, 0.1.
  a = np.array([1.1, 10.5, 22.0, 7.0], np.float64)
  b = np.array([1.0, 10.0, 20.0, 7.0], np.float64)
  prefix_a, prefix_b = pair(tmp_path, {"x": a}, {"x": b})
  diff = warmstart.diff(prefix_a, prefix_b, atol=atol, rtol=rtol).tensors[0]
  assert diff.status == ("changed" if num_different else "identical")
  assert_stats(diff, numpy_stats(a, b, atol, rtol))


@pytest.mark.parametrize("kwargs, words", [
    (dict(atol=-1.0), ["atol", "-1"]), (dict(rtol=float("nan")), ["rtol", "nan"]),
    (dict(atol="0.1"), ["atol", "'0.1'"]),
])
def test_bad_tolerances(tmp_path, kwargs, words):
  a, b = pair(tmp_path, {"x": np.ones(2, F32)}, {"x": np.ones(2, F32)})
  with pytest.raises(warmstart.WarmStartError) as raised:
    warmstart.diff(a, b, **kwargs)
  assert all(w in str(raised.value) for w in words)


# ---------------------------------------------------------------------------------------------
# Statistics


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int32, np.int64,
                                   np.uint8, np.int8])
def test_statistics_match_numpy(tmp_path, dtype):
  rng = np.random.RandomState(0)
  a = (rng.randn(300, 7) * 50).astype(dtype)
  b = a.copy()
  changed = rng.rand(*a.shape) < 0.3
  b[changed] = (rng.randn(int(changed.sum())) * 50).astype(dtype)
  b[0, 0] = 0  # a zero in B: left out of max_rel
  prefix_a, prefix_b = pair(tmp_path, {"x": a}, {"x": b})
  diff = warmstart.diff(prefix_a, prefix_b).tensors[0]
  assert diff.status == "changed"
  assert (diff.shape_a, diff.dtype_a, diff.num_elements) == ((300, 7), np.dtype(dtype).name,
                                                             2100)
  assert_stats(diff, numpy_stats(a, b))


def test_statistics_of_a_tensor_larger_than_the_read_chunk(tmp_path):
  # 6 MiB: two read chunks and many statistics chunks; changes in the second chunk only,
  # one right after the chunk boundary.
  count = 6 * 2**20 // 4
  a = np.random.RandomState(1).rand(count).astype(F32)
  b = a.copy()
  first = _diff._READ_CHUNK // 4  # pylint: disable=protected-access
  b[[first, first + 1, count - 1]] += F32(0.25)
  b[first + 70000] = -b[first + 70000]
  prefix_a, prefix_b = pair(tmp_path, {"big": a}, {"big": b})
  diff = warmstart.diff(prefix_a, prefix_b).tensors[0]
  assert diff.num_elements == count
  assert_stats(diff, numpy_stats(a, b))
  assert diff.num_different == 4


def test_bool_complex_and_string_tensors(tmp_path):
  a, b = pair(tmp_path,
              {"flags": np.array([True, False, True]), "z": np.array([1 + 2j, 3j], np.complex64),
               "words": np.array([b"a", b"b", b"c"])},
              {"flags": np.array([True, True, True]), "z": np.array([1 + 2j, 4j], np.complex64),
               "words": np.array([b"a", b"x", b"y"])})
  tensors = by_name(warmstart.diff(a, b))
  assert (tensors["flags"].num_different, tensors["flags"].max_abs) == (1, 1.0)
  assert (tensors["z"].num_different, tensors["z"].max_abs, tensors["z"].max_rel) == (
      1, 1.0, 0.25)
  assert (tensors["words"].status, tensors["words"].num_different) == ("changed", 2)
  assert tensors["words"].max_abs is None


# ---------------------------------------------------------------------------------------------
# Statuses, selection, renames


def test_every_status(tmp_path):
  a, b = pair(tmp_path,
              {"same": np.ones(3, F32), "changed": np.ones(3, F32), "shape": np.ones(3, F32),
               "dtype": np.ones(3, F32), "only_a": np.ones(1, F32)},
              {"same": np.ones(3, F32), "changed": np.zeros(3, F32), "shape": np.ones(4, F32),
               "dtype": np.ones(3, np.float64), "only_b": np.ones(1, F32)})
  report = warmstart.diff(a, b)
  assert {t.name: t.status for t in report.tensors} == {
      "changed": "changed", "dtype": "dtype_differs", "only_a": "only_in_a",
      "only_b": "only_in_b", "same": "identical", "shape": "shape_differs"}
  tensors = by_name(report)
  assert (tensors["shape"].shape_a, tensors["shape"].shape_b) == ((3,), (4,))
  assert (tensors["dtype"].dtype_a, tensors["dtype"].dtype_b) == ("float32", "float64")
  assert (tensors["only_b"].shape_a, tensors["only_b"].shape_b) == (None, (1,))
  assert not report.identical
  assert [t.name for t in report.tensors] == sorted(t.name for t in report.tensors)
  text = str(report)
  assert "(3,) vs (4,)" in text and "float32 vs float64" in text
  assert "6 tensors: 1 identical, 1 changed, 1 shape_differs" in text


def test_include_and_exclude_fully_match(tmp_path):
  tensors = {"mnist/hidden/kernel": np.ones(2, F32), "mnist/hidden/bias": np.ones(2, F32),
             "mnist/hidden2/kernel": np.ones(2, F32), "global_step": np.int64(1)}
  a, b = pair(tmp_path, tensors, tensors)
  def names(**kw):
    return [t.name for t in warmstart.diff(a, b, **kw).tensors]
  assert names(include="mnist/hidden/.*") == ["mnist/hidden/bias", "mnist/hidden/kernel"]
  assert names(include=["mnist/.*"], exclude=".*/kernel") == ["mnist/hidden/bias"]
  assert names(exclude="mnist/.*") == ["global_step"]
  with pytest.raises(warmstart.PatternError, match="did you mean 'mnist/hidden/.*'"):
    warmstart.diff(a, b, include="mnist/hidden")
  with pytest.raises(warmstart.PatternError, match="invalid regex"):
    warmstart.diff(a, b, exclude="mnist/(")


def test_rename_maps_b_names_onto_a_names(tmp_path):
  a, b = pair(tmp_path, {"old/w": np.ones(2, F32), "keep": np.ones(1, F32)},
              {"new/w": np.ones(2, F32), "keep": np.ones(1, F32)})
  report = warmstart.diff(a, b, rename={"new/(.*)": r"old/\1"})
  assert [(t.name, t.name_b, t.status) for t in report.tensors] == [
      ("keep", None, "identical"), ("old/w", "new/w", "identical")]
  assert "(B: new/w)" in str(report)
  with pytest.raises(warmstart.PatternError, match="matched no tensor of B"):
    warmstart.diff(a, b, rename=[("nothing/(.*)", r"old/\1")])


def test_rename_many_to_one_compares_each_b_tensor(tmp_path):
  # Model B's extra pathway was warm-started from A's last one, and then trained.
  w = np.arange(4, dtype=F32)
  a, b = pair(tmp_path, {"path1/w": w, "path2/w": w + 1, "fc": w},
              {"path1/w": w, "path2/w": w + 1, "path3/w": w + 2})
  report = warmstart.diff(a, b, rename={r"path3/(.*)": r"path2/\1"})
  assert [(t.name, t.name_b, t.status) for t in report.tensors] == [
      ("fc", None, "only_in_a"), ("path1/w", None, "identical"),
      ("path2/w", None, "identical"), ("path2/w", "path3/w", "changed")]
  [changed] = report.by_status("changed")
  assert (changed.num_different, changed.max_abs) == (4, 1.0)
  # Expectations match A's name or B's.
  assert report.check(expect_same=["path3/w"]) == [
      "expect-same 'path3/w': path2/w (B: path3/w) is changed"]
  assert report.check(expect_same=["path1/.*"], expect_changed=["path3/.*"]) == []
  assert len(report.check(expect_same=["path2/w"])) == 1
  assert len(json.loads(report.to_json())["tensors"]) == 4


def test_progress_is_called_after_each_tensor(tmp_path):
  tensors = {"a": np.ones(1, F32), "b": np.ones(1, F32), "c": np.ones(1, F32)}
  a, b = pair(tmp_path, tensors, tensors)
  calls = []
  warmstart.diff(a, b, progress=lambda done, total: calls.append((done, total)))
  assert calls == [(1, 3), (2, 3), (3, 3)]


def test_check_expectations(tmp_path):
  a, b = pair(tmp_path, {"h/w": np.ones(2, F32), "o/w": np.ones(2, F32)},
              {"h/w": np.ones(2, F32), "o/w": np.zeros(2, F32)})
  report = warmstart.diff(a, b)
  assert report.check(expect_same=["h/.*"], expect_changed=["o/.*"]) == []
  assert report.check(expect_same="h/.*", expect_changed="o/.*") == []
  failures = report.check(expect_same=[".*"], expect_changed=["nothing"])
  assert failures[0] == "expect-same '.*': o/w is changed"
  assert failures[1].startswith("expect-changed 'nothing' matches no tensor")


# ---------------------------------------------------------------------------------------------
# Sources


def test_npz_sources(tmp_path):
  a = {"w": np.arange(4, dtype=F32), "b": np.zeros(2, F32)}
  np.savez(tmp_path / "a.npz", **a)
  np.savez(tmp_path / "b.npz", w=np.arange(4, dtype=F32) * 2, b=np.zeros(2, F32))
  report = warmstart.diff(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"))
  tensors = by_name(report)
  assert tensors["b"].status == "identical"
  assert_stats(tensors["w"], numpy_stats(a["w"], a["w"] * 2))
  prefix = write_checkpoint(tmp_path / "ckpt", a)
  assert warmstart.diff(str(tmp_path / "a.npz"), prefix).identical


def test_partitioned_variables_are_compared_whole(tmp_path):
  def save(directory, value):
    with tf.Graph().as_default():
      variable = tf.compat.v1.get_variable(
          "part", shape=[4, 3], partitioner=tf.compat.v1.fixed_size_partitioner(2),
          initializer=tf.compat.v1.zeros_initializer())
      saver = tf.compat.v1.train.Saver()
      with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        for i, part in enumerate(variable):
          session.run(part.assign(value[2 * i:2 * i + 2]))
        os.makedirs(directory)
        return saver.save(session, os.path.join(directory, "model.ckpt"),
                          write_meta_graph=False)

  value = np.arange(12, dtype=F32).reshape(4, 3)
  changed = value.copy()
  changed[3, 2] = 100
  a, b = save(tmp_path / "a", value), save(tmp_path / "b", changed)
  diff = by_name(warmstart.diff(a, b))["part"]
  assert (diff.status, diff.shape_a, diff.num_different, diff.max_abs) == (
      "changed", (4, 3), 1, 89.0)


def test_a_flipped_byte_in_a_differing_tensor_is_a_read_error(tmp_path):
  a, b = pair(tmp_path, {"x": np.ones(4, F32)}, {"x": np.zeros(4, F32)})
  with open(a + ".data-00000-of-00001", "r+b") as f:
    f.seek(5)
    byte = f.read(1)
    f.seek(5)
    f.write(bytes([byte[0] ^ 0x01]))
  mark_modified(a + ".data-00000-of-00001")
  with pytest.raises(warmstart.CheckpointReadError, match="x"):
    warmstart.diff(a, b)

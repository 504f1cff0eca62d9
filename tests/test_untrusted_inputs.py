"""Crafted sources (issue 8): every size a file claims is checked against the bytes that exist.

Each case is a file an attacker or a broken tool could write: the library gives one clean error
or the right result, within bounded memory, and TensorFlow's reader never sees what it cannot
read. The command line is checked the same way (one stderr line, exit 2) in test_bad_inputs.
"""
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile

import fuzz_checkpoints as fuzz  # (on the path through conftest) its helpers edit index fields
import numpy as np
import pytest
import tensorflow as tf
from conftest import assert_cli_error, cli_run, mark_modified, write_checkpoint

import warmstart
from warmstart import _apply, _bundle, _scratch

F32 = np.float32
MIB = 1 << 20


@pytest.fixture
def cli(cli_workers):
  return cli_workers


def run(cli, *argv):
  """The CLI's outcome with TF_CPP_MIN_LOG_LEVEL unset."""
  return cli_run(cli[None], argv)


def unregistered_copy(prefix, directory):
  """A copy of a checkpoint that the conftest does not fingerprint (for multi-GiB sparse files,
  which it would read whole)."""
  os.makedirs(directory)
  copy = os.path.join(directory, os.path.basename(prefix))
  for suffix in (".index", ".data-00000-of-00001"):
    shutil.copyfile(prefix + suffix, copy + suffix)
  return copy


def edit_entry(prefix, name, **fields):
  """Sets fields of one BundleEntryProto (dtype=1, shape=2, offset=4, size=5, crc32c=6)."""
  numbers = {"dtype": 1, "shape": 2, "offset": 4, "size": 5, "crc32c": 6}
  records = fuzz.read_table(prefix + ".index")
  i = next(i for i, (key, _) in enumerate(records) if key == name.encode())
  old = fuzz.decode_fields(records[i][1])
  new = [(n, w, v) for n, w, v in old if n not in {numbers[k] for k in fields}]
  for key, value in fields.items():
    wire = 5 if key == "crc32c" else 2 if key == "shape" else 0
    if key == "shape":
      value = fuzz.encode_fields([(2, 2, fuzz.encode_fields([(1, 0, d)])) for d in value])
    new.append((numbers[key], wire, value))
  records[i] = (records[i][0], fuzz.encode_fields(new))
  fuzz.write_table(prefix + ".index", records)
  mark_modified(prefix + ".index")
  return {n: v for n, _, v in old}


# -- TF bundles ---------------------------------------------------------------------------------


def test_a_string_length_beyond_the_tensor_is_an_error_not_a_crash(tmp_path, cli):
  prefix = write_checkpoint(tmp_path / "s", {"words": np.array([b"ab", b"c"]),
                                              "w": np.ones(2, F32)})
  old = edit_entry(prefix, "words")
  offset, size = old.get(4, 0), old[5]
  data_path = prefix + ".data-00000-of-00001"
  with open(data_path, "r+b") as f:  # first length: 2^62, and its checksums made to match
    f.seek(offset)
    data = f.read(size)
    lengths = [2**62, 1]
    table = b"".join(fuzz.uvarint(n) for n in lengths)
    packed = b"".join(struct.pack("<I" if n < 2**32 else "<Q", n) for n in lengths)
    crc = _bundle.crc32c(packed)
    new = table + struct.pack("<I", _bundle.mask_crc32c(crc)) + data[3 + 4:]
    f.seek(offset)
    f.write(new)
  mark_modified(data_path)
  edit_entry(prefix, "words", size=len(new),
             crc32c=_bundle.mask_crc32c(_bundle.crc32c(new[len(table):], crc)))
  with pytest.raises(warmstart.CheckpointReadError, match="string length 4611686018427387904"):
    warmstart.read_tensor(prefix, "words")
  other = write_checkpoint(tmp_path / "t", {"words": np.array([b"xy", b"z"]),
                                             "w": np.ones(2, F32)})
  assert_cli_error(cli, ["diff", prefix, other], "words", "string length")
  assert_cli_error(cli, ["plan", "--from", prefix, "--to", other], "words")


def test_resource_entries_are_listed_and_diffed_by_their_bytes(tmp_path, cli):
  a = write_checkpoint(tmp_path / "a", {"r": np.arange(4, dtype=F32), "w": np.ones(2, F32)})
  b = write_checkpoint(tmp_path / "b", {"r": np.arange(4, dtype=F32) + 1, "w": np.ones(2, F32)})
  for prefix in (a, b):
    edit_entry(prefix, "r", dtype=20)  # DT_RESOURCE: TensorFlow's reader aborts on it
  assert [(v.name, v.dtype) for v in warmstart.list_variables(a)] == [
      ("r", "resource"), ("w", "float32")]
  assert warmstart.diff(a, a).identical
  assert {t.name: t.status for t in warmstart.diff(a, b).tensors} == {
      "r": "changed", "w": "identical"}
  with pytest.raises(warmstart.CheckpointReadError, match="has dtype resource, which has no"):
    warmstart.read_tensor(a, "r")
  assert run(cli, "diff", a, b)["code"] == 1
  assert run(cli, "ls", a)["code"] == 0


def test_a_tf2_iterator_state_is_diffed_by_its_elements(tmp_path, cli):
  iterator = iter(tf.data.Dataset.range(10))
  next(iterator)
  checkpoint = tf.train.Checkpoint(iterator=iterator, v=tf.Variable([1.0, 2.0]))
  a = checkpoint.write(str(tmp_path / "a" / "ckpt"))
  next(iterator)
  b = checkpoint.write(str(tmp_path / "b" / "ckpt"))
  name = "iterator/.ATTRIBUTES/ITERATOR_STATE"
  assert {v.name: v.dtype for v in warmstart.list_variables(a)}[name] == "variant"
  assert warmstart.diff(a, a).identical
  # How many elements an iterator's state has varies with tf.data's internals: changed or not,
  # the states differ, and each one's elements decode as TensorFlow's checksum says they should.
  assert {t.name: t for t in warmstart.diff(a, b).tensors}[name].status in (
      "changed", "shape_differs")
  with warmstart.sources.open_reader(warmstart.resolve_checkpoint(a)) as reader:
    entry = reader.index.entries[name]
    elements = [e for batch in _bundle.iter_elements(reader.files, entry) for e in batch]
  assert len(elements) == entry.num_elements and all(elements)
  assert run(cli, "diff", a, a)["code"] == 0


def test_many_string_elements_in_a_sparse_file_cost_no_memory(tmp_path, cli):
  # The case claims 10^8 elements; 3 * 10^7 take the same paths in less test time.
  prefix = unregistered_copy(write_checkpoint(
      tmp_path / "s", {"words": np.array([b"ab"]), "w": np.ones(2, F32)}), tmp_path / "copy")
  old = edit_entry(prefix, "words")
  count = 3 * 10**7
  edit_entry(prefix, "words", shape=[count], size=count + 4)
  with open(prefix + ".data-00000-of-00001", "r+b") as f:
    f.truncate(old.get(4, 0) + count + 4)  # sparse: a few KiB on disk
  listed = run(cli, "ls", prefix, "--json")
  assert listed["code"] == 0 and '"shape": [\n        30000000\n      ]' in listed["stdout"]
  same = run(cli, "diff", prefix, prefix)  # equal bytes: nothing decoded
  assert same["code"] == 0 and same["peak_memory"] < 200 * MIB, same
  planned = assert_cli_error(cli, ["plan", "--from", prefix, "--to", prefix], "words",
                             "string length")
  assert planned["peak_memory"] < 300 * MIB, planned["peak_memory"] >> 20


def test_a_sparse_multi_gib_index_is_read_footer_first(tmp_path, cli):
  prefix = unregistered_copy(write_checkpoint(tmp_path / "i", {"w": np.arange(3, dtype=F32)}),
                             tmp_path / "copy")
  with open(prefix + ".index", "rb") as f:
    index = f.read()
  size = 3 << 29  # 1.5 GiB, the valid table at the start and its footer at the end
  with open(prefix + ".index", "wb") as f:
    f.write(index[:-48])
    f.truncate(size - 48)
    f.seek(size - 48)
    f.write(index[-48:])
  listed = run(cli, "ls", prefix)
  assert listed["code"] == 0 and "1 variable" in listed["stdout"]
  assert listed["peak_memory"] < 200 * MIB
  with open(prefix + ".index", "r+b") as f:  # past the 2 GiB limit: refused unread
    f.truncate(5 << 30)
  assert_cli_error(cli, ["ls", prefix], "larger than the 2147483648-byte limit")


def test_partial_slices_of_a_huge_tensor_are_refused_before_allocating(tmp_path, cli):
  prefix = str(tmp_path / "p" / "ckpt")
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["huge"], shape_and_slices=["10000000000 3 0,2:-"],
                    tensors=[tf.zeros([2, 3])])
  assert warmstart.list_variables(prefix)[0].shape == (10000000000, 3)
  with pytest.raises(warmstart.CheckpointReadError, match="do not cover the whole tensor"):
    warmstart.read_tensor(prefix, "huge")
  outcome = assert_cli_error(cli, ["diff", prefix, prefix], "do not cover")
  assert outcome["peak_memory"] < 200 * MIB


def test_a_huge_or_garbage_state_file_is_not_read_and_adds_one_line_at_most(tmp_path, cli):
  directory = tmp_path / "d"
  write_checkpoint(directory, {"w": np.ones(2, F32)}, step=3)
  with open(directory / "checkpoint", "wb") as f:
    f.write(b'model_checkpoint_path: "model.ckpt-3"\n')
    f.truncate(3 << 30)  # sparse
  assert warmstart.resolve_checkpoint(str(directory)).step == 3  # the newest, with a warning
  listed = run(cli, "ls", str(directory))
  assert listed["code"] == 0 and listed["peak_memory"] < 200 * MIB
  assert len(listed["stderr"].strip().splitlines()) == 1
  assert "a state file holds a few KiB" in listed["stderr"]
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "checkpoint").write_bytes(b"\x1b[2J garbage \xff\n" * 3)
  assert_cli_error(cli, ["ls", empty], "no checkpoint in directory",
                   "unreadable checkpoint state file")


# -- .npz ---------------------------------------------------------------------------------------


def npy(header, data=b""):
  text = repr(header).encode()
  text += b" " * ((64 - (10 + len(text) + 1) % 64) % 64) + b"\n"
  return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def write_npz(path, members):
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
    for name, data in members.items():
      archive.writestr(name, data)
  return str(path)


F4 = {"descr": "<f4", "fortran_order": False}


@pytest.mark.parametrize("members, words", [
    ({"x.npy": npy(dict(F4, shape=(-1, 4)), bytes(16))}, ["bad dimension -1"]),
    ({"x.npy": npy(dict(F4, shape=(2**31, 4)), bytes(16))}, ["claims 34359738368 bytes",
                                                             "only 16 exist"]),
    ({"x.npy": npy(dict(F4, shape=(2**62, 2**62, 0)))}, ["too large for any array"]),
    ({"x.npy": npy(dict(F4, shape=(2,)), bytes(12))}, ["describes 8 bytes of data",
                                                       "holds 12"]),
    ({"x.npy": npy(dict(F4, shape=(2,)), bytes(8)), "x": npy(dict(F4, shape=(1,)), bytes(4))},
     ["'x.npy' and 'x' both hold tensor 'x'"]),
    ({"x.npy": npy(dict(F4, shape=(8,)), bytes(8))}, ["claims 32 bytes", "only 8 exist"]),
], ids=["negative_dimension", "overflowing_dimension", "zero_sized_but_impossible",
        "trailing_bytes", "x_beside_x.npy", "header_claims_more_than_the_member"])
def test_npz_headers_that_lie_are_refused(tmp_path, cli, members, words):
  path = write_npz(tmp_path / "bad.npz", members)
  with pytest.raises(warmstart.CheckpointReadError) as raised:
    warmstart.list_variables(path)
  for word in words:
    assert word in str(raised.value)
  assert_cli_error(cli, ["ls", path], *words)


def test_npz_zip_bomb_claims_are_refused_before_decompressing(tmp_path, cli):
  path = write_npz(tmp_path / "bomb.npz", {"x.npy": npy(dict(F4, shape=(1 << 20,)),
                                                        bytes(4 << 20))})
  with open(path, "r+b") as f:  # the directory claims 4 GiB for a member of 4 KiB
    data = f.read()
    central = data.rfind(b"PK\x01\x02")
    f.seek(central + 24)
    f.write(struct.pack("<I", 0xFFFFFFF0))
  outcome = assert_cli_error(cli, ["diff", path, path], "uncompressed size, at most 1032x")
  assert outcome["peak_memory"] < 200 * MIB


def test_a_big_endian_npz_holds_the_same_values_as_a_checkpoint(tmp_path):
  values = np.linspace(-1, 1, 12, dtype=F32).reshape(3, 4)
  np.savez(tmp_path / "be.npz", w=values.astype(">f4"), n=np.arange(3, dtype=">i8"))
  prefix = write_checkpoint(tmp_path / "le", {"w": values, "n": np.arange(3, dtype=np.int64)})
  assert warmstart.diff(str(tmp_path / "be.npz"), prefix).identical


def test_uint64_differences_are_exact(tmp_path):
  a = write_checkpoint(tmp_path / "a", {"u": np.array([2**64 - 1, 5], np.uint64),
                                        "i": np.array([-2**63, 0], np.int64)})
  b = write_checkpoint(tmp_path / "b", {"u": np.array([2**64 - 2, 5], np.uint64),
                                        "i": np.array([2**63 - 1, 0], np.int64)})
  tensors = {t.name: t for t in warmstart.diff(a, b).tensors}
  assert (tensors["u"].num_different, tensors["u"].max_abs) == (1, 1.0)
  assert tensors["i"].max_abs == float(2**64 - 1)


# -- output hygiene -----------------------------------------------------------------------------


EVIL = "evil\x1b[2K\r\nforged line\u202e"


def test_names_with_escapes_and_newlines_cannot_forge_output(tmp_path, cli):
  a = write_checkpoint(tmp_path / "a", {EVIL: np.ones(2, F32), "ok": np.ones(1, F32)})
  b = write_checkpoint(tmp_path / "b", {EVIL: np.zeros(2, F32), "ok": np.ones(1, F32)})
  report = warmstart.diff(a, b)
  text = str(report)
  assert "\x1b" not in text and "\r" not in text and "\u202e" not in text
  assert len(text.splitlines()) == 2 + 2 + 1  # A, B, one line per tensor, the summary
  assert "evil\\x1b[2K\\r\\nforged line\\u202e" in text
  plan_text = str(warmstart.plan(a, b).report)
  assert "\x1b" not in plan_text and "forged line\\u202e" in plan_text
  for argv in (["ls", a], ["diff", a, b, "--values", EVIL], ["plan", "--from", a, "--to", b],
               ["diff", a, b, "--expect-same", "evil.*"]):
    outcome = run(cli, *argv)
    assert outcome["code"] in (0, 1), outcome
    for forbidden in ("\x1b", "\r", "\u202e"):
      assert forbidden not in outcome["stdout"] + outcome["stderr"]
    assert not any(line.startswith("forged") for line in outcome["stdout"].splitlines())
  failing = assert_cli_error(cli, ["diff", a, b, "--values", "nope" + EVIL], "nope")
  assert "\x1b" not in failing["stderr"]


# -- converting non-TF sources for TensorFlow's restore ------------------------------------------


def test_only_the_tensors_to_load_are_converted(tmp_path):
  np.savez(tmp_path / "w.npz", small=np.ones(3, F32), unselected=np.zeros((256, 1024), F32))
  ref = warmstart.resolve_checkpoint(str(tmp_path / "w.npz"))
  prefix, keys = _apply.materialize(ref, {"small"})
  assert keys == {"small": "small"}
  assert [v.name for v in warmstart.list_variables(prefix)] == ["small"]
  assert os.path.basename(os.path.dirname(os.path.dirname(prefix))).startswith("warmstart-")
  assert os.path.getsize(prefix + ".data-00000-of-00001") == 12


def test_a_killed_process_leaves_no_scratch_directory(tmp_path):
  code = textwrap.dedent("""
      import sys, time
      from warmstart import _scratch
      print(_scratch.make_dir("npz"), flush=True)
      time.sleep(60)
      """)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    os.environ.get("PYTHONPATH")])))
  process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=env)
  orphan = process.stdout.readline().strip()
  assert os.path.isdir(orphan)
  process.send_signal(signal.SIGKILL)  # no exit handlers run
  process.wait()
  assert os.path.isdir(orphan)
  mine = _scratch.make_dir("npz")  # the next one cleans up after the dead
  assert not os.path.exists(orphan)
  assert os.path.isdir(mine) and os.path.dirname(mine) == os.path.dirname(orphan)

"""Never a crash: crafted and damaged sources through `warmstart ls`, `diff` and `plan`.

Each case takes a small pristine source A of one format (`FORMATS`: a TF checkpoint, a directory
with its `checkpoint` state file, a `.npz`, a Keras `.h5` weights file, a `.safetensors` file, a
TF2 object-based checkpoint and a pickled Caffe-style `.npy` dict), damages or edits a copy of
it, and runs `warmstart ls A --json`, `warmstart diff A B --json` and `warmstart plan --from A
--to B --json` (B: the same tensors, for some formats with some values changed) through the real
CLI, in a worker process that never imports TensorFlow. The mutations are

- byte damage: truncate, flip one or many bytes, shuffle blocks, zero a range, append garbage,
  swap two files;
- structure-aware edits of parsed fields, written back with valid checksums so the deeper checks
  are reached: every varint, length, dtype, shape, offset and count set to 0, -1, 2^31, 2^62,
  the file size +- 1 and their neighbours; in a TF bundle the index's protocol buffers (header
  and entries) and its table framing (key and value lengths, restart points, block handles,
  footer), a string tensor's element length table in the data file; the `checkpoint` state file
  (garbage, foreign text, escapes, oversized and sparse multi-GiB files, a FIFO, a directory);
  `.npz` `.npy` headers (shape, dtype, order, header length, version) and zip directories
  (sizes, offsets, CRCs, name lengths, entry counts, duplicate, shadowing and overlapping
  members, a zip bomb); a TF2 checkpoint's serialized object graph, damaged and written back
  with a valid checksum.

Each run is one of:
- result: exit 0 or 1 (with nothing but `warmstart: warning:` lines on stderr). After byte
  damage that checksums must catch, it must equal the result for the undamaged A, else it is
  *wrong*; after an edit that keeps the checksums valid a different result can be right;
- clean error: exit 2 and exactly one `warmstart: error: ...` line on stderr;
- unclean: anything else on stderr, or TensorFlow imported;
- memory: the run's peak memory (VmHWM, reset before each run) went past 1 GiB;
- crash: the worker died (a signal), hung, or an exception escaped.

Usage: python benchmarks/fuzz_checkpoints.py [--cases 5000] [--seed 0] [--formats bundle,npz]
Exit status 0 when there were no crashes, memory failures, unclean runs or wrong results.

A new format is a class with `name`, `make(directory)` (writes A and B, returns their paths) and
`mutations()` (functions that edit A in place and say what they did), added to `FORMATS`.
"""
import argparse
import collections
import contextlib
import dataclasses
import io
import json
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
import zlib

CASE_TIMEOUT = 90  # seconds for one run before the worker counts as hung
H5_TIMEOUT = 15  # seconds the worker's HDF5 child may take (libhdf5 can hang on damaged files)
MEMORY_LIMIT = 1 << 30  # peak memory of one run beyond which it counts as a failure
COMMANDS = ("ls", "diff", "plan")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- values a structure-aware edit writes into a field -------------------------------------------

def special_values(rng, original, sizes=()):
  """0, -1, 2^31, 2^62 and friends, the file sizes +- 1, and the original value's neighbours."""
  values = [0, -1, 1, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1, -2**63, 2**64 - 1]
  for size in sizes:
    values += [size - 1, size, size + 1]
  if isinstance(original, int):
    values += [original - 1, original + 1, original * 2, original // 2]
  return rng.choice(values)


def uvarint(value):
  value &= (1 << 64) - 1  # negative: two's complement, as protobuf writes int64
  out = bytearray()
  while value >= 0x80:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def copy_tree(source, target):
  shutil.rmtree(target, ignore_errors=True)
  shutil.copytree(source, target, symlinks=True)


def byte_damage(rng, paths):
  """Damages one of `paths` (or swaps two); returns a description."""
  kind = rng.choice(("truncate", "flip", "flip_many", "shuffle_blocks", "zero_range", "append",
                     "swap_files"))
  if kind == "swap_files" and len(paths) > 1:
    first, second = rng.sample(paths, 2)
    with open(first, "rb") as f:
      first_bytes = f.read()
    with open(second, "rb") as f:
      second_bytes = f.read()
    with open(first, "wb") as f:
      f.write(second_bytes)
    with open(second, "wb") as f:
      f.write(first_bytes)
    return "swap %s %s" % (os.path.basename(first), os.path.basename(second))
  path = rng.choice(paths)
  with open(path, "rb") as f:
    content = bytearray(f.read())
  size = len(content) or 1
  if kind == "truncate":
    cut = rng.randrange(size)
    content = content[:cut]
    detail = "at %d of %d" % (cut, size)
  elif kind in ("flip", "flip_many") and content:
    offsets = [rng.randrange(size) for _ in range(1 if kind == "flip" else rng.randint(2, 16))]
    for offset in offsets:
      content[offset] ^= rng.randint(1, 255)
    detail = "offsets %s" % offsets
  elif kind == "shuffle_blocks":
    block = rng.choice((4, 8, 16, 64, 256))
    blocks = [content[i:i + block] for i in range(0, len(content), block)]
    rng.shuffle(blocks)
    content = bytearray(b"".join(blocks))
    detail = "blocks of %d" % block
  elif kind == "zero_range":
    start = rng.randrange(size)
    end = min(len(content), start + rng.randint(1, 64))
    content[start:end] = bytes(max(0, end - start))
    detail = "[%d, %d)" % (start, end)
  else:
    extra = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    content += extra
    kind, detail = "append", "%d bytes" % len(extra)
  with open(path, "wb") as f:
    f.write(bytes(content))
  return "%s %s %s" % (kind, os.path.basename(path), detail)


@dataclasses.dataclass
class Mutation:
  """What a mutation did, and for which commands checksums must keep the result unchanged."""
  description: str
  checked: tuple = ()


# -- protocol buffers and tables of a TF bundle index ---------------------------------------------

def decode_fields(data):
  """[(number, wire type, value)] of a protobuf message, in order (see warmstart._wire)."""
  from warmstart import _wire  # pylint: disable=g-import-not-at-top
  fields = _wire.decode(data, "fuzz")
  return [(number, wire, value) for number, values in fields.items() for wire, value in values]


def encode_fields(fields):
  out = bytearray()
  for number, wire, value in fields:
    out += uvarint(number << 3 | wire)
    if wire == 0:
      out += uvarint(value)
    elif wire == 1:
      out += struct.pack("<Q", value & (2**64 - 1))
    elif wire == 5:
      out += struct.pack("<I", value & (2**32 - 1))
    else:
      out += uvarint(len(value)) + value
  return bytes(out)


def edit_message(rng, data, sizes, depth=0):
  """Sets one field (at any depth) of a message to a special value; returns (bytes, path)."""
  fields = decode_fields(data)
  if not fields:
    return encode_fields([(rng.randint(1, 7), 0, special_values(rng, 0, sizes))]), "added"
  i = rng.randrange(len(fields))
  number, wire, value = fields[i]
  if wire == 2 and depth < 3 and rng.random() < 0.7:
    try:
      inner, path = edit_message(rng, value, sizes, depth + 1)
    except ValueError:  # not a message (a name, a byte string)
      inner, path = bytes(value[:rng.randrange(len(value) + 1)]), "cut"
    fields[i] = (number, wire, inner)
    return encode_fields(fields), "%d.%s" % (number, path)
  if rng.random() < 0.15:  # drop or repeat the field
    if rng.random() < 0.5:
      del fields[i]
      return encode_fields(fields), "%d dropped" % number
    fields.append(fields[i])
    return encode_fields(fields), "%d repeated" % number
  new = special_values(rng, value if isinstance(value, int) else len(value), sizes)
  if wire == 2:
    fields[i] = (number, wire, bytes(value[:max(0, min(len(value), new))]))
  else:
    fields[i] = (number, wire, new)
  return encode_fields(fields), "%d=%d" % (number, new)


def read_table(path):
  """The (key, value) records of an index file, in order."""
  from warmstart import _bundle  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    data = f.read()
  footer = data[-48:]
  _meta_offset, _meta_size, pos = _bundle._block_handle(footer, 0, 40, "footer")
  index_offset, index_size, _ = _bundle._block_handle(footer, pos, 40, "footer")
  records = []
  for _, handle in _bundle._block_entries(data[index_offset:index_offset + index_size], "index"):
    offset, size, _ = _bundle._block_handle(handle, 0, len(handle), "index")
    records += _bundle._block_entries(data[offset:offset + size], "data")
  return records


def make_block(records, restart_interval, edit=None):
  """A table block; `edit` = (what, i, value) changes one framing number before the trailer."""
  out = bytearray()
  restarts = []
  previous = b""
  for i, (key, value) in enumerate(records):
    shared = 0
    if i % restart_interval:
      while shared < min(len(previous), len(key)) and previous[shared] == key[shared]:
        shared += 1
    else:
      restarts.append(len(out))
    numbers = [shared, len(key) - shared, len(value)]
    if edit and edit[0] == "entry" and edit[1] == i:
      numbers[edit[2]] = edit[3]
    out += b"".join(uvarint(n) for n in numbers) + key[shared:] + value
    previous = key
  restarts = restarts or [0]
  if edit and edit[0] == "restart" and restarts:
    restarts[edit[1] % len(restarts)] = edit[3] & 0xFFFFFFFF
  count = len(restarts)
  if edit and edit[0] == "num_restarts":
    count = edit[3] & 0xFFFFFFFF
  return bytes(out + b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", count))


def write_table(path, records, rng=None, sizes=()):
  """Writes records as a table (a few data blocks) with valid checksums; with `rng`, first
  changes one framing number (an entry's lengths, a restart, a block handle, the footer)."""
  from warmstart import _bundle  # pylint: disable=g-import-not-at-top
  per_block = max(1, len(records) // 3)
  groups = [records[i:i + per_block] for i in range(0, len(records), per_block)] or [[]]
  target = rng.choice(("entry", "restart", "num_restarts", "handle", "footer")) if rng else None
  block_edit = rng.randrange(len(groups)) if rng else -1
  described = ""
  out = bytearray()

  def add(contents):
    handle = (len(out), len(contents))
    body = contents + b"\0"
    out.extend(body + struct.pack("<I", _bundle.masked_crc32c(body)))
    return handle

  handles = []
  for b, group in enumerate(groups):
    edit = None
    if b == block_edit and target in ("entry", "restart", "num_restarts"):
      i = rng.randrange(max(1, len(group)))
      value = special_values(rng, 0, sizes)
      edit = (target, i, rng.randrange(3), value)
      described = "%s %d of block %d = %d" % (target, i, b, value)
    handles.append((group[-1][0] if group else b"", add(make_block(group, 4, edit))))
  meta = add(make_block([], 4))
  index_records = []
  for b, (key, (offset, size)) in enumerate(handles):
    if target == "handle" and b == block_edit:
      which = rng.randrange(2)
      value = special_values(rng, (offset, size)[which], (*sizes, len(out)))
      offset, size = (value, size) if which == 0 else (offset, value)
      described = "handle of block %d: (%d, %d)" % (b, offset, size)
    index_records.append((key, uvarint(offset) + uvarint(size)))
  index = add(make_block(index_records, 1))
  footer = [*meta, *index]
  if target == "footer":
    which = rng.randrange(4)
    footer[which] = special_values(rng, footer[which], (*sizes, len(out)))
    described = "footer number %d = %d" % (which, footer[which])
  footer_bytes = b"".join(uvarint(n) for n in footer)[:40].ljust(40, b"\0")
  with open(path, "wb") as f:
    f.write(bytes(out) + footer_bytes + struct.pack("<Q", 0xDB4775248B80FB57))
  return described


# -- formats -------------------------------------------------------------------------------------

def _tensors(changed):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  tensors = {
      "dense/kernel": rng.rand(16, 8).astype(np.float32),
      "dense/bias": rng.rand(8).astype(np.float32),
      "embedding": rng.rand(40, 4).astype(np.float64),
      "counts": np.arange(12, dtype=np.int64),
      "big": np.array([2**64 - 1, 2**64 - 2, 0], np.uint64),
      "flag": np.array([True, False]),
      "scale": np.float32(0.5),
      "global_step": np.int64(100),
      "dense/kernel/Adam": rng.rand(16, 8).astype(np.float32),
  }
  if changed:
    for name in ("dense/bias", "counts", "dense/kernel/Adam"):
      tensors[name] = tensors[name] + 1
  return tensors


class Bundle:
  """A TF checkpoint (Saver, V2): the tensors above, a string tensor and a partitioned one."""
  name = "bundle"

  def make(self, directory):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    prefixes = []
    for side in ("a", "b"):
      values = _tensors(side == "b")
      with tf.Graph().as_default():
        variables = {n: tf.compat.v1.Variable(v, name="v%d" % i)
                     for i, (n, v) in enumerate(values.items())}
        variables["words"] = tf.compat.v1.Variable([b"alpha", b"", b"\x1b[31mred" * 3],
                                                   name="words")
        part = tf.compat.v1.get_variable(
            "part", shape=[6, 2], partitioner=tf.compat.v1.fixed_size_partitioner(2),
            initializer=tf.compat.v1.constant_initializer(0.5))
        saver = tf.compat.v1.train.Saver({**variables, "part": list(part)})
        os.makedirs(os.path.join(directory, side))
        with tf.compat.v1.Session() as session:
          session.run(tf.compat.v1.global_variables_initializer())
          prefixes.append(saver.save(session, os.path.join(directory, side, "model.ckpt"),
                                     global_step=100, write_meta_graph=False))
    return prefixes

  def mutations(self):
    return [self.damage, self.damage, self.edit_entry, self.edit_entry, self.edit_header,
            self.edit_framing, self.edit_string_lengths]

  @staticmethod
  def _files(prefix):
    return prefix + ".index", prefix + ".data-00000-of-00001"

  def _sizes(self, prefix):
    return tuple(os.path.getsize(p) for p in self._files(prefix))

  def damage(self, rng, prefix):
    return Mutation(byte_damage(rng, list(self._files(prefix))), COMMANDS)

  def edit_entry(self, rng, prefix):
    records = read_table(prefix + ".index")
    i = rng.randrange(1, len(records))
    value, path = edit_message(rng, records[i][1], self._sizes(prefix))
    records[i] = (records[i][0], value)
    write_table(prefix + ".index", records)
    return Mutation("entry %r field %s" % (records[i][0], path))

  def edit_header(self, rng, prefix):
    records = read_table(prefix + ".index")
    value, path = edit_message(rng, records[0][1], self._sizes(prefix))
    records[0] = (b"", value)
    write_table(prefix + ".index", records)
    return Mutation("header field %s" % path)

  def edit_framing(self, rng, prefix):
    records = read_table(prefix + ".index")
    return Mutation("table " + write_table(prefix + ".index", records, rng, self._sizes(prefix)))

  def edit_string_lengths(self, rng, prefix):
    """A string tensor's length varints set to special values; its checksums made to match."""
    from warmstart import _bundle, _wire  # pylint: disable=g-import-not-at-top
    records = read_table(prefix + ".index")
    i = next(i for i, (key, _) in enumerate(records) if key == b"words")
    fields = decode_fields(records[i][1])
    number_values = {n: v for n, _, v in fields}
    offset, size = number_values.get(4, 0), number_values[5]
    with open(self._files(prefix)[1], "r+b") as f:
      f.seek(offset)
      data = f.read(size)
      lengths, pos = [], 0
      for _ in range(3):
        length, pos = _wire.varint(data, pos, len(data), "lengths")
        lengths.append(length)
      k = rng.randrange(3)
      lengths[k] = special_values(rng, lengths[k], (size,)) & (2**64 - 1)
      table = b"".join(uvarint(n) for n in lengths)
      packed = b"".join(struct.pack("<I" if n <= 0xFFFFFFFF else "<Q", n) for n in lengths)
      lengths_crc = _bundle.crc32c(packed)
      new = table + struct.pack("<I", _bundle.mask_crc32c(lengths_crc)) + data[pos + 4:]
      f.seek(offset)
      f.write(new)
      f.truncate(max(os.fstat(f.fileno()).st_size, offset + len(new)))
    crc = _bundle.mask_crc32c(_bundle.crc32c(new[len(table):], lengths_crc))
    fields = [(n, w, (crc if n == 6 else len(new) if n == 5 and rng.random() < 0.5 else v))
              for n, w, v in fields]
    records[i] = (b"words", encode_fields(fields))
    write_table(prefix + ".index", records)
    return Mutation("string length %d = %d" % (k, lengths[k]))


class StateFile:
  """A directory of two checkpoints (steps 1 and 2) and its `checkpoint` state file."""
  name = "state"

  def make(self, directory):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    paths = []
    for side in ("a", "b"):
      values = _tensors(side == "b")
      with tf.Graph().as_default():
        variables = {n: tf.compat.v1.Variable(v, name="v%d" % i)
                     for i, (n, v) in enumerate(values.items())}
        saver = tf.compat.v1.train.Saver(variables)
        os.makedirs(os.path.join(directory, side))
        with tf.compat.v1.Session() as session:
          session.run(tf.compat.v1.global_variables_initializer())
          for step in (1, 2):
            saver.save(session, os.path.join(directory, side, "model.ckpt"), global_step=step,
                       write_meta_graph=False)
      paths.append(os.path.join(directory, side))
    return paths

  def mutations(self):
    return [self.replace, self.replace, self.oversized, self.special_file, self.damage]

  def replace(self, rng, directory):
    texts = [
        b"\x00" * rng.randint(1, 300), bytes(rng.randrange(256) for _ in range(64)),
        b'model_checkpoint_path: "model.ckpt-7"\n', b'model_checkpoint_path: "model.ckpt-1"\n',
        b'model_checkpoint_path: "/elsewhere/model.ckpt-2"\n',
        b'model_checkpoint_path: "\x1b[2J\\n\\033[31mmodel.ckpt-2"\n',
        b'model_checkpoint_path: "\\377\\400"\n', b"model_checkpoint_path: model.ckpt-2\n",
        b'unknown_field: "x"\n', b'model_checkpoint_path: "model.ckpt-2\n',
        b'{"model_checkpoint_path": "model.ckpt-2"}', b"\xef\xbb\xbf\xff\xfe",
        b'model_checkpoint_path: "' + b"a" * 5000 + b'"\n',
        b'model_checkpoint_path: "model.ckpt-2" # comment\nall_model_checkpoint_paths: "x"\n' * 40,
    ]
    text = rng.choice(texts)
    with open(os.path.join(directory, "checkpoint"), "wb") as f:
      f.write(text)
    return Mutation("state file %r" % text[:60])

  def oversized(self, rng, directory):
    from warmstart import _checkpoint  # pylint: disable=g-import-not-at-top
    limit = _checkpoint._MAX_STATE_FILE
    size = rng.choice((limit - 1, limit, limit + 1, 3 << 30))
    with open(os.path.join(directory, "checkpoint"), "wb") as f:
      f.write(b'model_checkpoint_path: "model.ckpt-1"\n')
      f.truncate(size)  # sparse: a few KiB on disk
    return Mutation("state file of %d bytes" % size)

  def special_file(self, rng, directory):
    path = os.path.join(directory, "checkpoint")
    os.remove(path)
    kind = rng.choice(("fifo", "directory", "symlink loop", "dangling symlink"))
    if kind == "fifo":
      os.mkfifo(path)
    elif kind == "directory":
      os.mkdir(path)
    elif kind == "symlink loop":
      os.symlink(path, path)
    else:
      os.symlink(os.path.join(directory, "nowhere"), path)
    return Mutation("state file is a %s" % kind)

  def damage(self, rng, directory):
    paths = [os.path.join(directory, name) for name in sorted(os.listdir(directory))]
    return Mutation(byte_damage(rng, paths))


class Npz:
  """A `.npz` of the same tensors (and a big-endian, a Fortran-order and a bytes array)."""
  name = "npz"
  _bomb = None  # compressed bytes of a 256 MiB .npy of zeros, made once

  def make(self, directory):
    import numpy as np  # pylint: disable=g-import-not-at-top
    paths = []
    for side in ("a", "b"):
      values = dict(_tensors(side == "b"))
      values["embedding_be"] = values["embedding"].astype(">f8")
      values["fortran"] = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
      values["words"] = np.array([b"alpha", b"", b"\x1b[31mred"])
      path = os.path.join(directory, side, "weights.npz")
      os.makedirs(os.path.dirname(path))
      (np.savez_compressed if side == "a" else np.savez)(path, **values)
      paths.append(path)
    return paths

  def mutations(self):
    return [self.damage, self.edit_header, self.edit_header, self.edit_directory,
            self.edit_directory, self.members, self.bomb]

  def damage(self, rng, path):
    # A flip may reach a .npy header, which `ls` reads without the member's CRC-32: only the
    # commands that read data must notice.
    return Mutation(byte_damage(rng, [path]), ("diff", "plan"))

  @staticmethod
  def _read(path):
    with zipfile.ZipFile(path) as archive:
      return [(info, archive.read(info)) for info in archive.infolist()]

  @staticmethod
  def _write(path, members, compression=zipfile.ZIP_DEFLATED):
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", compression) as archive:
      warnings.simplefilter("ignore")  # zipfile warns of the duplicate members asked for
      for name, data in members:
        archive.writestr(name, data)

  def edit_header(self, rng, path):
    """One field of one member's .npy header (written back with valid zip CRCs)."""
    members = [(info.filename, data) for info, data in self._read(path)]
    k = rng.randrange(len(members))
    name, data = members[k]
    length = struct.unpack_from("<H", data, 8)[0]
    header, body = data[10:10 + length].decode("latin1"), data[10 + length:]
    choice = rng.choice(("shape", "descr", "order", "length", "version", "garbage"))
    if choice == "shape":
      dims = [special_values(rng, 4, (len(body),)) for _ in range(rng.randint(0, 3))]
      new = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % "".join(
          "%d, " % d for d in dims)
    elif choice == "descr":
      new = header.replace(header.split("'descr': ")[1].split(",")[0], repr(rng.choice(
          ("<f8", ">f4", "|O", "|V8", "<U2", "|S0", "garbage", "<M8[s]", "<c16", "|b1"))))
    elif choice == "order":
      new = header.replace("False", rng.choice(("True", "'x'", "None")))
    elif choice == "garbage":
      new = rng.choice(("[" * 300 + "]" * 300, "{'descr': '<f4'}", "1" * 9000, "\x00" * 50,
                        "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}"))
    else:
      new = header
    raw = new.encode("latin1")
    head = data[:8] + struct.pack("<H", len(raw)) + raw
    if choice == "length":
      value = special_values(rng, length, (len(data),)) & 0xFFFF
      head = data[:8] + struct.pack("<H", value) + raw
    elif choice == "version":
      head = b"\x93NUMPY" + bytes(rng.choice(((2, 0), (3, 0), (9, 9), (0, 0)))) + head[8:]
    members[k] = (name, head + body)
    self._write(path, members)
    return Mutation("member %s header %s" % (name, choice))

  def edit_directory(self, rng, path):
    """One number of the zip's central directory or end record set to a special value."""
    with open(path, "rb") as f:
      data = bytearray(f.read())
    end = data.rfind(b"PK\x05\x06")
    count, cd_size, cd_offset = struct.unpack_from("<HII", data, end + 10)
    places = [("entries", end + 10, "<H"), ("entries on disk", end + 8, "<H"),
              ("directory size", end + 12, "<I"), ("directory offset", end + 16, "<I")]
    pos = cd_offset
    for _ in range(count):
      if data[pos:pos + 4] != b"PK\x01\x02":
        break
      name_length, extra, comment = struct.unpack_from("<HHH", data, pos + 28)
      places += [("crc", pos + 16, "<I"), ("compressed size", pos + 20, "<I"),
                 ("size", pos + 24, "<I"), ("name length", pos + 28, "<H"),
                 ("extra length", pos + 30, "<H"), ("method", pos + 10, "<H"),
                 ("local header offset", pos + 42, "<I")]
      pos += 46 + name_length + extra + comment
    what, offset, code = rng.choice(places)
    bits = 8 * struct.calcsize(code)
    original = struct.unpack_from(code, data, offset)[0]
    value = special_values(rng, original, (len(data), cd_size)) & ((1 << bits) - 1)
    struct.pack_into(code, data, offset, value)
    with open(path, "wb") as f:
      f.write(bytes(data))
    return Mutation("zip %s = %d" % (what, value))

  def members(self, rng, path):
    """Members that shadow, repeat or overlap others."""
    members = [(info.filename, data) for info, data in self._read(path)]
    kind = rng.choice(("shadow", "repeat", "overlap", "not npy", "directory"))
    if kind == "shadow":  # x beside x.npy
      name, data = rng.choice(members)
      members.append((name[:-4], rng.choice(members)[1]))
    elif kind == "repeat":
      members.append(rng.choice(members))
    elif kind == "not npy":
      members.append(("notes.txt", b"not an array"))
    elif kind == "directory":
      members.append(("dense/", b""))
    if kind != "overlap":
      self._write(path, members)
      return Mutation("members: " + kind)
    # Two directory entries for one local header: both members read the same data.
    self._write(path, members)
    with open(path, "rb") as f:
      data = bytearray(f.read())
    end = data.rfind(b"PK\x05\x06")
    count, _cd_size, cd_offset = struct.unpack_from("<HII", data, end + 10)
    second = data.find(b"PK\x01\x02", cd_offset + 4)
    first = data[cd_offset:second if 0 < second < end else end]
    name_length = struct.unpack_from("<H", first, 28)[0]
    copy = bytearray(first)
    copy[46:46 + name_length] = b"z" * (name_length - 4) + b".npy"
    new_cd = data[cd_offset:end] + copy
    tail = bytearray(data[end:])
    struct.pack_into("<HHII", tail, 8, count + 1, count + 1, len(new_cd), cd_offset)
    with open(path, "wb") as f:
      f.write(bytes(data[:cd_offset] + new_cd + tail))
    return Mutation("members: overlap")

  def bomb(self, rng, path):
    """A member replaced by 256 MiB of zeros (deflated to 256 KiB), with a true or false size."""
    if Npz._bomb is None:
      import numpy as np  # pylint: disable=g-import-not-at-top
      buffer = io.BytesIO()
      np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                    "shape": (1 << 26,)})
      compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
      zeros = bytes(1 << 20)
      parts = [compressor.compress(buffer.getvalue())]
      parts += [compressor.compress(zeros) for _ in range(256)]
      Npz._bomb = (b"".join(parts) + compressor.flush(), len(buffer.getvalue()) + (256 << 20),
                   zlib.crc32(bytes(256 << 20), zlib.crc32(buffer.getvalue())))
    compressed, size, crc = Npz._bomb
    members = [(info.filename, data) for info, data in self._read(path)]
    name = rng.choice(members)[0]
    claimed = rng.choice((size, 1000, size * 4))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
      for member, data in members:
        if member != name:
          archive.writestr(member, data)
      info = zipfile.ZipInfo(name)
      info.compress_type = zipfile.ZIP_DEFLATED
      # Written raw: the local header and the directory say `claimed` bytes.
      offset = archive.fp.tell()
      header = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(compressed),
                           claimed & 0xFFFFFFFF, len(name), 0)
      archive.fp.write(header + name.encode() + compressed)
      info.header_offset, info.CRC = offset, crc
      info.compress_size, info.file_size = len(compressed), claimed
      archive.filelist.append(info)
      archive.NameToInfo[name] = info
      archive.start_dir = archive.fp.tell()
    return Mutation("zip bomb in %s (claims %d bytes)" % (name, claimed))


def _pristine_copy(path):
  """B for the formats compared with themselves: a copy of every file of `path`."""
  import glob  # pylint: disable=g-import-not-at-top
  directory = os.path.join(os.path.dirname(os.path.dirname(path)), "b")
  os.makedirs(directory, exist_ok=True)
  for name in glob.glob(glob.escape(path) + "*"):
    shutil.copy(name, directory)
  return os.path.join(directory, os.path.basename(path))


class _Damaged:
  """A format whose files get byte damage only; B is a pristine copy of A."""
  name = ""
  commands = COMMANDS
  options: tuple = ()
  checksummed = False  # damage may give a valid, different file (no checksums to notice)

  def files(self, path):
    return [path]

  def mutations(self):
    return [self.damage]

  def damage(self, rng, path):
    return Mutation(byte_damage(rng, self.files(path)), COMMANDS if self.checksummed else ())


def _keras_model():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3, name="dense"),
                              tf.keras.layers.BatchNormalization(name="bn")])


class H5(_Damaged):
  """Keras `.h5` weights (HDF5 stores no checksums)."""
  name = "h5"

  def make(self, directory):
    path = os.path.join(directory, "a", "weights.h5")
    os.makedirs(os.path.dirname(path))
    _keras_model().save_weights(path)
    return path, _pristine_copy(path)


class Safetensors(_Damaged):
  """A `.safetensors` file (no checksums)."""
  name = "safetensors"

  def make(self, directory):
    import numpy as np  # pylint: disable=g-import-not-at-top
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    rng = np.random.RandomState(1)
    path = os.path.join(directory, "a", "model.safetensors")
    os.makedirs(os.path.dirname(path))
    safetensors.numpy.save_file({"conv.weight": rng.rand(4, 3, 2, 2).astype(np.float32),
                                 "fc.weight": rng.rand(5, 4).astype(np.float32),
                                 "bn.running_mean": rng.rand(4), "steps": np.arange(3)}, path)
    return path, _pristine_copy(path)


class CaffeNpy(_Damaged):
  """A pickled Caffe-style `.npy` dict (read with --allow_pickle; pickles have no checksums)."""
  name = "npy"
  commands = ("ls", "diff")  # plan's target is read without --allow_pickle
  options = ("--allow_pickle",)

  def make(self, directory):
    import numpy as np  # pylint: disable=g-import-not-at-top
    rng = np.random.RandomState(1)
    path = os.path.join(directory, "a", "caffe.npy")
    os.makedirs(os.path.dirname(path))
    np.save(path, {"conv1": [rng.rand(3, 3).astype(np.float32), rng.rand(3).astype(np.float32)],
                   "fc8": {"weights": rng.rand(3, 2), "biases": rng.rand(2)}}, allow_pickle=True)
    return path, _pristine_copy(path)


class ObjectGraph(_Damaged):
  """A TF2 object-based checkpoint (checksummed); its object graph is also damaged and written
  back with a valid checksum, so the graph parser itself sees the damage."""
  name = "object_graph"

  def make(self, directory):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    path = tf.train.Checkpoint(model=_keras_model()).write(os.path.join(directory, "a", "ckpt"))
    return path, _pristine_copy(path)

  def files(self, path):
    return [path + ".index", path + ".data-00000-of-00001"]

  def mutations(self):
    return [self.damage, self.damage_graph]

  def damage(self, rng, path):
    return Mutation(byte_damage(rng, self.files(path)), COMMANDS)

  def damage_graph(self, rng, prefix):
    import numpy as np  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from warmstart._checkpoint import VariableInfo  # pylint: disable=g-import-not-at-top
    from warmstart.sources import _writers  # pylint: disable=g-import-not-at-top
    reader = tf.train.load_checkpoint(prefix)
    values = {name: np.asarray(reader.get_tensor(name))
              for name in reader.get_variable_to_shape_map()}
    graph_path = os.path.join(os.path.dirname(prefix), "graph")
    with open(graph_path, "wb") as f:
      f.write(values["_CHECKPOINTABLE_OBJECT_GRAPH"].item())
    detail = byte_damage(rng, [graph_path])
    with open(graph_path, "rb") as f:
      values["_CHECKPOINTABLE_OBJECT_GRAPH"] = np.array(f.read(), dtype=object)
    os.remove(graph_path)
    for suffix in (".index", ".data-00000-of-00001"):
      os.remove(prefix + suffix)
    infos = [VariableInfo.make(n, v.shape, "string" if v.dtype == object else v.dtype)
             for n, v in values.items()]
    _writers.write_checkpoint(prefix, infos, values.__getitem__)
    return Mutation("object graph " + detail)


FORMATS = {cls.name: cls for cls in (Bundle, StateFile, Npz, H5, Safetensors, CaffeNpy,
                                     ObjectGraph)}


# -- the worker: runs the real CLI in-process, one run per stdin line -----------------------------

def worker():
  """Reads JSON argv lists from stdin; writes one JSON outcome per line to the original stdout.

  stdout and stderr are captured at the file-descriptor level (a C++ library writing to fd 2
  would show); peak memory is measured per run (VmHWM, reset through /proc/self/clear_refs).
  """
  out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
  # A safety net for the machine: a run past this limit fails with MemoryError, not the OOM
  # killer's choice of process.
  resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
  from absl import flags  # pylint: disable=g-import-not-at-top

  from warmstart import cli  # pylint: disable=g-import-not-at-top
  from warmstart.sources import _h5  # pylint: disable=g-import-not-at-top
  _h5.TIMEOUT = H5_TIMEOUT  # a hung HDF5 child ends sooner than a user's would
  out.write("ready\n")
  out.flush()
  for line in sys.stdin:
    argv = json.loads(line)
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
      outcome = run_captured(cli, flags, argv, (stdout, stderr))
    out.write(json.dumps(outcome) + "\n")
    out.flush()


def run_captured(cli, flags, argv, captured):
  """Runs the CLI once with fds 1 and 2 redirected to the files `captured`; returns the outcome."""
  saved = [os.dup(1), os.dup(2)]
  reset_peak_memory()
  code, escaped = None, None
  try:
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, file in zip((1, 2), captured):
      os.dup2(file.fileno(), fd)
    flags.FLAGS.unparse_flags()
    try:
      code = cli.main(cli._parse_flags(["warmstart", *argv]))  # pylint: disable=protected-access
    except SystemExit as exit_:
      code = exit_.code
    except BaseException as err:  # pylint: disable=broad-except
      escaped = "%s: %s" % (type(err).__name__, str(err)[:300])
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, copy in zip((1, 2), saved):
      os.dup2(copy, fd)
      os.close(copy)
  texts = []
  for file in captured:
    file.seek(0)
    texts.append(file.read().decode("utf-8", "replace"))
  return {"code": code, "stdout": texts[0], "stderr": texts[1], "escaped": escaped,
          "peak_memory": peak_memory(), "tensorflow": "tensorflow" in sys.modules}


def reset_peak_memory():
  with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
    f.write("5")


def peak_memory():
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  return 0


class Worker:
  """A worker subprocess (restarted after it dies), its environment `env` changes applied
  (a value of None removes the variable)."""

  def __init__(self, **env):
    self.process = None
    self.env = env

  def start(self):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    for name, value in self.env.items():
      if value is None:
        env.pop(name, None)
      else:
        env[name] = value
    self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, env=env, text=True)
    assert self.process.stdout.readline().strip() == "ready"

  def run(self, argv):
    """Returns (outcome dict, None) or (None, a description of the crash)."""
    if self.process is None or self.process.poll() is not None:
      self.start()
    self.process.stdin.write(json.dumps(argv) + "\n")
    self.process.stdin.flush()
    line = _readline(self.process, CASE_TIMEOUT)
    if line is None:
      self.process.kill()
      self.process.wait()
      code = self.process.returncode
      self.process = None
      return None, "hung" if code == -9 else "died with exit status %s" % code
    return json.loads(line), None

  def stop(self):
    if self.process is not None:
      self.process.stdin.close()
      self.process.wait(timeout=30)


def _readline(process, timeout):
  import selectors  # pylint: disable=g-import-not-at-top
  with selectors.DefaultSelector() as selector:
    selector.register(process.stdout, selectors.EVENT_READ)
    if not selector.select(timeout):
      return None
  line = process.stdout.readline()
  return line or None


# -- classification and the run ------------------------------------------------------------------

VERDICTS = ("result", "clean_error", "wrong", "unclean", "memory", "crash")
FAILURES = ("wrong", "unclean", "memory", "crash")


def classify(outcome, crash, expected, checked):
  """One of VERDICTS for one CLI run."""
  if crash or outcome["escaped"] or outcome["code"] not in (0, 1, 2):
    return "memory" if outcome and "MemoryError" in (outcome["escaped"] or "") else "crash"
  if outcome["peak_memory"] > MEMORY_LIMIT:
    return "memory"
  errors = outcome["stderr"].strip().splitlines()
  if outcome["tensorflow"] or "Traceback" in outcome["stderr"] + outcome["stdout"]:
    return "unclean"
  if outcome["code"] == 2:
    return "clean_error" if len(errors) == 1 and errors[0].startswith("warmstart: error:") \
        else "unclean"
  if any(not line.startswith("warmstart: warning: ") for line in errors):
    return "unclean"
  return "wrong" if checked and (outcome["code"], outcome["stdout"]) != expected else "result"


def commands(fmt, a, b):
  """The runs of one case: ls, diff and plan (those the format takes) with its options."""
  argv = {"ls": ["ls", a, "--json"], "diff": ["diff", a, b, "--json"],
          "plan": ["plan", "--from", a, "--to", b, "--json"]}
  return {command: [*argv[command], *getattr(fmt, "options", ())]
          for command in getattr(fmt, "commands", COMMANDS)}


def fuzz(cases, seed, formats=None, log=sys.stdout):
  """Runs the fuzz; returns a Counter of verdicts and the list of failure descriptions."""
  rng = random.Random(seed)
  root = tempfile.mkdtemp(prefix="warmstart-fuzz-")
  worker_ = Worker(TF_CPP_MIN_LOG_LEVEL=None)
  counts, failures = collections.Counter(), []
  try:
    samples = {}
    for name in formats or FORMATS:
      fmt = FORMATS[name]()
      a, b = fmt.make(os.path.join(root, name))
      expected = {}
      for command, argv in commands(fmt, a, b).items():
        outcome, crash = worker_.run(argv)
        assert not crash and outcome["code"] in (0, 1), (name, command, outcome, crash)
        expected[command] = (outcome["code"], outcome["stdout"].replace(a, "{A}"))
      samples[name] = (fmt, a, b, expected)
    started = time.time()
    for case in range(cases):
      fmt, pristine, b, expected = samples[rng.choice(sorted(samples))]
      case_dir = os.path.join(root, "case")
      copy_tree(os.path.dirname(pristine), case_dir)
      target = os.path.join(case_dir, os.path.basename(pristine))
      try:
        mutation = rng.choice(fmt.mutations())(rng, target)
      except Exception as err:  # pylint: disable=broad-except  (a mutation that does not apply)
        mutation = Mutation("(mutation failed: %s: %s)" % (type(err).__name__, err))
      for command, argv in commands(fmt, target, b).items():
        outcome, crash = worker_.run(argv)
        if outcome is not None:
          outcome["stdout"] = outcome["stdout"].replace(target, "{A}")
        verdict = classify(outcome, crash, expected[command], command in mutation.checked)
        counts[verdict] += 1
        if verdict in FAILURES:
          failures.append("case %d %s (%s) %s: %s %s" % (
              case, fmt.name, mutation.description, command, verdict,
              crash or outcome["escaped"] or "peak %d MiB; %s" % (
                  outcome["peak_memory"] >> 20, outcome["stderr"][-400:] or
                  outcome["stdout"][:400])))
      if log and (case + 1) % 500 == 0:
        log.write("%d cases, %.0f s: %s\n" % (case + 1, time.time() - started, dict(counts)))
        log.flush()
  finally:
    worker_.stop()
    shutil.rmtree(root, ignore_errors=True)
  return counts, failures


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", type=int, default=5000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--formats", default=",".join(FORMATS),
                      help="comma-separated, of: %s" % ", ".join(FORMATS))
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # this process writes the samples with TF
  sys.path.insert(0, REPO)
  started = time.time()
  counts, failures = fuzz(args.cases, args.seed, args.formats.split(","))
  for failure in failures:
    print("FAIL", failure)
  print("%d cases (%d runs) in %.0f s: %s" % (
      args.cases, sum(counts.values()), time.time() - started,
      ", ".join("%d %s" % (counts[v], v) for v in VERDICTS)))
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())

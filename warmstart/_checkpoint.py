"""Resolving a checkpoint source: which files a path means, and what a variable is.

A source is a checkpoint prefix (`dir/model.ckpt-123`), a directory (its `checkpoint` state file
if it has one, else the newest complete `*.index` by step), a SavedModel directory
(`variables/variables`) or a `.npz` file of name -> array. Reading the files resolved here is the
job of `warmstart.sources` (one reader per kind). Nothing here imports TensorFlow.
"""
import dataclasses
import glob
import logging
import math
import os
import re
from typing import Any, Optional, Union

import numpy as np

from warmstart import _dtypes, _kinds, _limits, _source
from warmstart._errors import CheckpointNotFoundError, CheckpointReadError, WarmStartError

logger = logging.getLogger(__name__)

# What a source may be given as: a path, a warmstart.Source (a path with options) or a resolved
# CheckpointRef.
Source = Union[str, os.PathLike, _source.Source, "CheckpointRef"]

CHECKPOINT = "checkpoint"
SAVED_MODEL = "saved_model"
NPZ = "npz"
KERAS_H5 = "keras_h5"
SAFETENSORS = "safetensors"
NPY = "npy"
# Single-file formats: by extension, else by their first bytes.
_FILE_KINDS = ((".npz", NPZ), (".safetensors", SAFETENSORS), (".h5", KERAS_H5),
               (".hdf5", KERAS_H5), (".npy", NPY))
_MAGIC = ((b"\x89HDF\r\n\x1a\n", KERAS_H5), (b"\x93NUMPY", NPY), (b"PK\x03\x04", NPZ))
# The formats that may hold PyTorch weights (layout="torch").
_TORCH_KINDS = (SAFETENSORS, NPZ, NPY)

_STEP_SUFFIX = re.compile(r"-(\d+)$")
_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
_FILE_SUFFIX = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})$")
# The `checkpoint` state file is a CheckpointState protocol buffer in text format: one
# `field: value` per line, strings in double quotes with C escapes.
_STATE_FIELD = re.compile(r'(?:\s|#[^\n]*)*(\w+)\s*:\s*("(?:[^"\\\n]|\\.)*"|[^\s"#]+)')
_STATE_END = re.compile(r"(?:\s|#[^\n]*)*")
_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{1,2})|(.))", re.S)
_SIMPLE_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", '"': b'"', "'": b"'", "\\": b"\\",
                   "a": b"\a", "b": b"\b", "f": b"\f", "v": b"\v", "?": b"?"}
_STATE_FIELDS = ("model_checkpoint_path", "all_model_checkpoint_paths",
                 "all_model_checkpoint_timestamps", "last_preserved_timestamp")
_MAX_STATE_FILE = 1 << 20


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
  """A resolved checkpoint.

  Attributes:
    prefix: the checkpoint prefix (`dir/model.ckpt-123`), or the file's path.
    step: the step parsed from the prefix (`-123`), or None.
    kind: 'checkpoint', 'saved_model', 'npz', 'keras_h5', 'safetensors' or 'npy'.
    layout: 'tf', or 'torch' to read PyTorch layouts (see `warmstart.Source`).
    allow_pickle: whether a pickled `.npy` weight dict may be read (see `warmstart.Source`).
  """
  prefix: str
  step: Optional[int]
  kind: str
  layout: str = _source.TF
  allow_pickle: bool = False

  def __str__(self):
    return self.prefix


def files_of(ref: CheckpointRef) -> list[str]:
  """The files holding checkpoint `ref`'s tensors: a bundle's index and data files, or the file."""
  if ref.kind in (CHECKPOINT, SAVED_MODEL):
    return [ref.prefix + ".index", *sorted(glob.glob(glob.escape(ref.prefix) + ".data-*"))]
  return [ref.prefix]


def stamp(ref: CheckpointRef) -> tuple:
  """What identifies the contents of `ref`'s files: each one's path, size, mtime and inode."""
  out: list[tuple] = []
  for path in files_of(ref):
    try:
      status = os.stat(path)
    except OSError:
      out.append((path,))
    else:
      out.append((path, status.st_size, status.st_mtime_ns, status.st_ino, status.st_dev))
  return tuple(out)


def check_unchanged(ref: CheckpointRef, before: tuple) -> None:
  """Raises CheckpointReadError if `ref`'s files are not as `stamp` found them (`before`).

  The tensors to be loaded were checked when the warm start was planned; TensorFlow reads them
  again when the training session starts, so a checkpoint modified, replaced or removed in
  between is refused here, before TensorFlow's reader meets it.
  """
  now = stamp(ref)
  if now != before:
    changed = sorted({entry[0] for entry in set(now) ^ set(before)})
    raise CheckpointReadError(
        "checkpoint %s was modified, replaced or removed after warmstart checked it for this "
        "warm start (%s); nothing was loaded. Leave the source as it is until training has "
        "started, or warm-start from a copy" % (ref.prefix, ", ".join(
            "%s %s" % (path, "changed" if os.path.exists(path) else "is gone")
            for path in changed)))


@dataclasses.dataclass(frozen=True)
class VariableInfo:
  """One variable of a checkpoint or model.

  Attributes:
    name: the variable name (no ':0').
    shape: its shape as a tuple of ints.
    dtype: its dtype name ('float32', 'int64', 'string', ...).
    nbytes: its size in bytes (0 for strings, whose size is not fixed).
    kind: 'weight', 'batchnorm_stat', 'optimizer_slot', 'step' or 'other'.
  """
  name: str
  shape: tuple[int, ...]
  dtype: str
  nbytes: int
  kind: str

  @classmethod
  def make(cls, name: str, shape, dtype: Any) -> "VariableInfo":
    """Builds a VariableInfo, deriving nbytes and kind.

    Args:
      name: the variable name.
      shape: a sequence of ints (a tf.TensorShape that is fully defined works too).
      dtype: TensorFlow's dtype name ('float32', 'bfloat16', 'string'), a numpy dtype or type,
        or a tf.DType; TensorFlow is not needed for any of them.

    Raises:
      WarmStartError: a dtype TensorFlow does not know.
    """
    dtype_name = _dtypes.canonical_name(dtype)
    shape = tuple(int(d) for d in shape)
    return cls(name, shape, dtype_name, math.prod(shape) * _dtypes.BY_NAME[dtype_name].size,
               _kinds.kind_of(name, dtype_name))


def _step_of(prefix):
  match = _STEP_SUFFIX.search(os.path.basename(prefix))
  return int(match.group(1)) if match else None


def _missing_shards(prefix):
  """Returns the data shard files of `prefix` that are missing (all expected ones if none exist)."""
  shards = [m for m in map(_SHARD.search, glob.glob(glob.escape(prefix) + ".data-*")) if m]
  if not shards:
    return [prefix + ".data-00000-of-00001"]
  total = int(shards[0].group(2))
  present = {int(m.group(1)) for m in shards if int(m.group(2)) == total}
  return ["%s.data-%05d-of-%05d" % (prefix, i, total) for i in range(total) if i not in present]


def _checkpoints_in(directory):
  """Returns ({step_or_None: prefix} of complete checkpoints, [notes on incomplete ones])."""
  complete: dict[Optional[int], str] = {}
  notes: list[str] = []
  for index in sorted(glob.glob(os.path.join(glob.escape(directory), "*.index"))):
    prefix = index[:-len(".index")]
    missing = _missing_shards(prefix)
    if missing:
      notes.append("%s has no data shard %s" % (os.path.basename(index),
                                                 os.path.basename(missing[0])))
      continue
    complete.setdefault(_step_of(prefix), prefix)
  return complete, notes


def _state_file_prefix(directory, complete) -> tuple[Optional[str], str]:
  """(the prefix the `checkpoint` state file names, resolved inside `directory`, if complete;
  else None and why it is not used, or "" when there is no state file)."""
  state_path = os.path.join(directory, "checkpoint")
  if not os.path.isfile(state_path):
    return None, ""
  try:
    named = _model_checkpoint_path(state_path)
  except (OSError, ValueError) as err:  # Garbled or gone: fall back to the directory listing.
    return None, "ignored the unreadable checkpoint state file %s: %s" % (state_path, err)
  if not named:
    return None, ""
  # The state file may hold absolute paths from where the directory used to be: the file
  # of that name inside the directory given is the one meant.
  inside = os.path.join(directory, os.path.basename(named))
  if inside in complete.values():
    return inside, ""
  return None, ("the checkpoint state file %s names %r, which is not a complete checkpoint in "
                "%s" % (state_path, named, directory))


def _model_checkpoint_path(state_path) -> Optional[str]:
  """The `model_checkpoint_path` of a `checkpoint` state file, as TF's get_checkpoint_state reads it.

  Like protobuf's `text_format.Merge`, a field given twice keeps its last value and an unknown
  field is an error. The file is read only if it is small (a state file is a few KiB).

  Raises:
    ValueError: the file is not a CheckpointState in text format (CheckpointReadError if it is
      too large or unreadable).
  """
  size = os.stat(state_path).st_size
  if size > _MAX_STATE_FILE:
    raise ValueError("it is %d bytes; a state file holds a few KiB (at most %d are read)"
                     % (size, _MAX_STATE_FILE))
  data = _limits.read_file(state_path, _MAX_STATE_FILE, "checkpoint state file")
  text = data.decode("utf-8")
  found = []
  pos = 0
  while True:
    match = _STATE_FIELD.match(text, pos)
    if match is None:
      break
    if match.group(1) not in _STATE_FIELDS:
      raise ValueError("unknown field %r" % match.group(1))
    if match.group(1) == "model_checkpoint_path":
      if not match.group(2).startswith('"'):
        raise ValueError("model_checkpoint_path is not a quoted string")
      found.append(_unescape(match.group(2)[1:-1]))
    pos = match.end()
  if not _STATE_END.fullmatch(text, pos):
    raise ValueError("cannot parse %r" % text[pos:pos + 40])
  return found[-1] if found else None


def _unescape(text: str) -> str:
  """Undoes protobuf's text-format C escaping of a string (octal, hex and simple escapes).

  Raises:
    ValueError: an octal escape beyond a byte, or bytes that are not UTF-8.
  """
  out = bytearray()
  pos = 0
  for match in _ESCAPE.finditer(text):
    out += text[pos:match.start()].encode("utf-8")
    octal, hexadecimal, simple = match.groups()
    if octal is not None:
      if int(octal, 8) > 0xFF:
        raise ValueError("bad escape \\%s" % octal)
      out.append(int(octal, 8))
    elif hexadecimal is not None:
      out.append(int(hexadecimal, 16))
    else:  # protobuf keeps an unknown escape as it is
      out += _SIMPLE_ESCAPES.get(simple, match.group(0).encode("utf-8"))
    pos = match.end()
  out += text[pos:].encode("utf-8")
  return out.decode("utf-8")


def _check_step(step):
  if step is None or step == -1:
    return None
  if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
    raise WarmStartError("step must be a non-negative int, -1 or None (latest); got %r" % (step,))
  return int(step)


def resolve_checkpoint(source: Source, step: Optional[int] = None) -> CheckpointRef:
  """Finds the checkpoint a source means.

  Args:
    source: a checkpoint prefix (a `.index`/`.data-*`/`.meta` file name is accepted too), a
      directory holding checkpoints (with or without a `checkpoint` state file), a SavedModel
      directory, a `.npz`, Keras `.h5`, `.safetensors` or `.npy` file (known by its extension or
      its first bytes), a `warmstart.Source` (a path with options), or a CheckpointRef (returned
      as is).
    step: in a directory, the step to pick; -1 or None for the latest.

  Returns:
    A CheckpointRef.

  Raises:
    CheckpointNotFoundError: nothing usable there; the message lists what was looked at.
    WarmStartError: an option that does not apply to the source found.

  Example:
    >>> ref = warmstart.resolve_checkpoint("model_dir/models", step=-1)
    >>> ref.prefix, ref.step
    ('model_dir/models/model.ckpt-300', 300)
  """
  if isinstance(source, CheckpointRef):
    return source
  options = _source.Source(source) if not isinstance(source, _source.Source) else source
  ref = _resolve_path(options.path, _check_step(step))
  if options.layout != _source.TF and ref.kind not in _TORCH_KINDS:
    raise WarmStartError(
        "layout=%r is for PyTorch weights (.safetensors, .npz, .npy); %s is a %s, which holds "
        "TensorFlow's layout already. Drop the layout option." % (options.layout, ref.prefix,
                                                                  ref.kind))
  return dataclasses.replace(ref, layout=options.layout, allow_pickle=options.allow_pickle)


def _file_kind(path: str) -> Optional[str]:
  """The single-file format of `path` by its extension or first bytes, or None."""
  if os.path.isdir(path):
    return None
  for extension, kind in _FILE_KINDS:
    if path.endswith(extension):
      return kind
  if not os.path.isfile(path) or _FILE_SUFFIX.search(path):
    return None
  try:
    with open(path, "rb") as f:
      head = f.read(16)
  except OSError:
    return None
  for magic, kind in _MAGIC:
    if head.startswith(magic):
      return kind
  if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 27:
    return SAFETENSORS
  return None


def _resolve_path(path: str, step: Optional[int]) -> CheckpointRef:
  kind = _file_kind(path)
  if kind is not None:
    if not os.path.isfile(path):
      raise CheckpointNotFoundError("no %s file at %s" % (kind, path))
    if step is not None:
      raise WarmStartError("step=%d was given but %s is a %s file, which has no steps"
                           % (step, path, kind))
    return CheckpointRef(path, None, kind)
  if os.path.isdir(path):
    return _resolve_directory(path, step)
  prefix = _FILE_SUFFIX.sub("", path)
  if os.path.isfile(prefix + ".index"):
    missing = _missing_shards(prefix)
    if missing:
      raise CheckpointNotFoundError(
          "checkpoint %s is incomplete: its data shard %s is missing. Copy all of "
          "%s.index and %s.data-* together." % (prefix, missing[0], os.path.basename(prefix),
                                                os.path.basename(prefix)))
    found = _step_of(prefix)
    if step is not None and found != step:
      raise WarmStartError("step=%d was given but the checkpoint prefix %s is step %s; pass its "
                           "directory to choose by step" % (step, prefix, found))
    return CheckpointRef(prefix, found, CHECKPOINT)
  raise CheckpointNotFoundError(
      "no checkpoint at %s: looked for the directory %s and the index file %s.index; neither "
      "exists" % (path, path, prefix))


def _resolve_directory(directory, step):
  variables = os.path.join(directory, "variables", "variables")
  if (os.path.exists(os.path.join(directory, "saved_model.pb"))
      or os.path.exists(os.path.join(directory, "saved_model.pbtxt"))):
    if not os.path.isfile(variables + ".index"):
      raise CheckpointNotFoundError(
          "%s is a SavedModel without variables (no variables/variables.index): it has "
          "nothing to warm-start from" % directory)
    if _missing_shards(variables):
      raise CheckpointNotFoundError("SavedModel %s is incomplete: %s is missing"
                                    % (directory, _missing_shards(variables)[0]))
    if step is not None:
      raise WarmStartError("step=%d was given but %s is a SavedModel, which has no steps"
                           % (step, directory))
    return CheckpointRef(variables, None, SAVED_MODEL)
  complete, notes = _checkpoints_in(directory)
  if step is not None:
    if step in complete:
      return CheckpointRef(complete[step], step, CHECKPOINT)
    steps = sorted(s for s in complete if s is not None)
    raise CheckpointNotFoundError(
        "no checkpoint of step %d in %s; steps there: %s%s" % (
            step, directory, ", ".join(map(str, steps)) or "none",
            "".join("; " + n for n in notes)))
  prefix, state_note = _state_file_prefix(directory, complete)
  if prefix is None and complete:
    # Newest by step; a step-less prefix only when there is nothing else.
    prefix = complete[max(complete, key=lambda s: -1 if s is None else s)]
    if state_note:
      logger.warning("%s; using the newest complete checkpoint, %s", state_note, prefix)
  if prefix is not None:
    return CheckpointRef(prefix, _step_of(prefix), CHECKPOINT)
  looked = ["a 'checkpoint' state file", "*.index files with their data shards",
            "saved_model.pb"]
  hint = ""
  for sub in ("models", "variables"):
    if glob.glob(os.path.join(glob.escape(os.path.join(directory, sub)), "*.index")):
      hint = " %s/ holds checkpoints: pass %s" % (sub, os.path.join(directory, sub))
  raise CheckpointNotFoundError("no checkpoint in directory %s: looked for %s%s%s.%s" % (
      directory, ", ".join(looked), "".join("; found " + n for n in notes),
      "; " + state_note if state_note else "", hint))

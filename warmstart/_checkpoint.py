"""Resolving a checkpoint source, listing its variables and reading its tensors.

A source is a checkpoint prefix (`dir/model.ckpt-123`), a directory (its `checkpoint` state file
if it has one, else the newest complete `*.index` by step), a SavedModel directory
(`variables/variables`) or a `.npz` file of name -> array.
"""
import dataclasses
import glob
import logging
import os
import re
from typing import Any, Optional, Union

import numpy as np
import tensorflow as tf

from warmstart import _bundle, _kinds
from warmstart._errors import CheckpointNotFoundError, CheckpointReadError, WarmStartError

logger = logging.getLogger(__name__)

Source = Union[str, os.PathLike, "CheckpointRef"]

CHECKPOINT = "checkpoint"
SAVED_MODEL = "saved_model"
NPZ = "npz"

_STEP_SUFFIX = re.compile(r"-(\d+)$")
_SHARD = re.compile(r"\.data-(\d{5})-of-(\d{5})$")
_FILE_SUFFIX = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})$")
# TF's object-graph bookkeeping entry: not a variable.
_OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
  """A resolved checkpoint.

  Attributes:
    prefix: the checkpoint prefix (`dir/model.ckpt-123`), or the `.npz` path.
    step: the step parsed from the prefix (`-123`), or None.
    kind: 'checkpoint', 'saved_model' or 'npz'.
  """
  prefix: str
  step: Optional[int]
  kind: str

  def __str__(self):
    return self.prefix


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
  def make(cls, name, shape, dtype):
    """Builds a VariableInfo, deriving nbytes and kind."""
    dtype = tf.as_dtype(dtype)
    shape = tuple(int(d) for d in shape)
    itemsize = 0 if dtype == tf.string else dtype.size
    return cls(name, shape, dtype.name, int(np.prod(shape, dtype=np.int64)) * itemsize,
               _kinds.kind_of(name, dtype.name))


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


def _state_file_prefix(directory, complete):
  """The prefix the `checkpoint` state file names, resolved inside `directory`, if complete."""
  state_path = os.path.join(directory, "checkpoint")
  if not os.path.isfile(state_path):
    return None
  try:
    state = tf.train.get_checkpoint_state(directory)
  except Exception as err:  # A garbled state file: fall back to the directory listing.
    logger.warning("ignoring unreadable checkpoint state file %s: %s", state_path, err)
    return None
  if state is None or not state.model_checkpoint_path:
    return None
  named = state.model_checkpoint_path
  # The state file may hold absolute paths from where the directory used to be: the file
  # of that name inside the directory given is the one meant.
  inside = os.path.join(directory, os.path.basename(named))
  if inside in complete.values():
    return inside
  logger.warning("checkpoint state file %s names %s, which is not a complete checkpoint in %s;"
                 " using the newest complete one instead", state_path, named, directory)
  return None


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
      directory, a `.npz` file, or a CheckpointRef (returned as is).
    step: in a directory, the step to pick; -1 or None for the latest.

  Returns:
    A CheckpointRef.

  Raises:
    CheckpointNotFoundError: nothing usable there; the message lists what was looked at.

  Example:
    >>> ref = warmstart.resolve_checkpoint("model_dir/models", step=-1)
    >>> ref.prefix, ref.step
    ('model_dir/models/model.ckpt-300', 300)
  """
  if isinstance(source, CheckpointRef):
    return source
  if not isinstance(source, (str, os.PathLike)):
    raise WarmStartError("a checkpoint source is a path (str or os.PathLike); got %s %r"
                         % (type(source).__name__, source))
  path = os.fspath(source)
  step = _check_step(step)
  if path.endswith(".npz"):
    if not os.path.isfile(path):
      raise CheckpointNotFoundError("no .npz file at %s" % path)
    if step is not None:
      raise WarmStartError("step=%d was given but %s is a .npz file, which has no steps"
                           % (step, path))
    return CheckpointRef(path, None, NPZ)
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
  prefix = _state_file_prefix(directory, complete)
  if prefix is None and complete:
    # Newest by step; a step-less prefix only when there is nothing else.
    prefix = complete[max(complete, key=lambda s: -1 if s is None else s)]
  if prefix is not None:
    return CheckpointRef(prefix, _step_of(prefix), CHECKPOINT)
  looked = ["a 'checkpoint' state file", "*.index files with their data shards",
            "saved_model.pb"]
  hint = ""
  for sub in ("models", "variables"):
    if glob.glob(os.path.join(glob.escape(os.path.join(directory, sub)), "*.index")):
      hint = " %s/ holds checkpoints: pass %s" % (sub, os.path.join(directory, sub))
  raise CheckpointNotFoundError("no checkpoint in directory %s: looked for %s%s.%s" % (
      directory, ", ".join(looked), "".join("; found " + n for n in notes), hint))


class Reader:
  """Reads the variables of a resolved checkpoint, one tensor at a time."""

  def __init__(self, ref: CheckpointRef):
    self.ref = ref
    self._npz = None
    self._tf: Any = None  # TF's CheckpointReader
    self.index = None  # the parsed .index of a TF checkpoint (a _bundle.BundleIndex)
    try:
      if ref.kind == NPZ:
        self._npz = np.load(ref.prefix, allow_pickle=False)
        self._infos = {name: VariableInfo.make(name, *_npz_header(self._npz, name))
                       for name in self._npz.files}
      else:
        # TF's C++ reader can abort the process on a crafted index: validate it first.
        self.index = _bundle.read_index(ref.prefix)
        _bundle.check_data_files(self.index)
        self._tf = tf.train.load_checkpoint(ref.prefix)
        shapes = self._tf.get_variable_to_shape_map()
        dtypes = self._tf.get_variable_to_dtype_map()
        self._infos = {name: VariableInfo.make(name, shapes[name], dtypes[name])
                       for name in sorted(shapes) if name != _OBJECT_GRAPH}
    except WarmStartError:
      raise
    except Exception as err:
      raise CheckpointReadError("cannot read checkpoint %s: %s" % (ref.prefix, _first_line(err))) from err

  @property
  def variables(self) -> dict[str, VariableInfo]:
    """name -> VariableInfo, sorted by name."""
    return self._infos

  def read(self, name) -> np.ndarray:
    """Returns one tensor's value; raises CheckpointReadError if the data is corrupt."""
    try:
      if self._npz is not None:
        return self._npz[name]
      return self._tf.get_tensor(name)
    except Exception as err:
      raise CheckpointReadError("cannot read tensor %r of checkpoint %s: %s"
                                % (name, self.ref.prefix, _first_line(err))) from err

  def close(self):
    if self._npz is not None:
      self._npz.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _npz_header(npz, name):
  """(shape, dtype) of one .npz member, read from its header without loading the data."""
  with npz.zip.open(name + ".npy") as member:
    version = np.lib.format.read_magic(member)
    # numpy's one header reader for every format version (1.0, 2.0 and 3.0) is private.
    shape, _, dtype = np.lib.format._read_array_header(member, version)  # type: ignore[attr-defined]
  if dtype.hasobject:
    raise CheckpointReadError("%s: array %r holds Python objects; only numeric and string arrays "
                              "are read (never unpickled)" % (npz.zip.filename, name))
  return shape, dtype


def _first_line(err):
  text = str(err).strip().splitlines()
  return text[0] if text else type(err).__name__


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
  with Reader(resolve_checkpoint(source, step)) as reader:
    return list(reader.variables.values())

"""Applying a plan to a graph: checkpoint-backed initializers, never constants.

Each planned variable's initializer becomes an assignment of a value read from the checkpoint
by `RestoreV2`: one op per checkpoint and device reads every tensor of that group, so the cost
stays flat as the variable count grows. A restored tensor's buffer becomes the variable's (a
variable's first assignment takes its input's buffer), so reading a whole group at once costs no
memory beside the variables (measured in `benchmarks/warm_start_bench.py`). A partitioned
variable's parts each read their slice (RestoreV2's `shape_and_slices`). Shape policies combine
the read with the variable's own initial value in the graph: a partial copy reads only the block
it copies and writes it into the initializer's value (a strided-slice update), so the rest stays
exactly what the initializer gives; 'input_channels' and 'squeeze' transform the tensor read.
Values computed by a user's adapt function are read from a derived checkpoint in a private
temporary directory. Only vocabulary remapping is left to TF's own `warm_start`. The
initializers run only when the session starts from scratch, so a model_dir that already holds a
checkpoint resumes instead.
"""
import logging
import os
import re
import weakref
from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from warmstart import _checkpoint, _policies, _scratch, sources
from warmstart._checkpoint import VariableInfo
from warmstart._errors import WarmStartError
from warmstart.sources import _writers

logger = logging.getLogger(__name__)

_PART = re.compile(r"/part_\d+$")


def variable_name(variable) -> str:
  """The checkpoint-level name of a graph variable: no ':0', no '/part_N'."""
  info = getattr(variable, "_save_slice_info", None)
  if info is not None:
    return info.full_name
  return _PART.sub("", variable.name.split(":")[0])


def graph_variables(graph=None) -> dict[str, tuple[VariableInfo, list]]:
  """Returns {name: (VariableInfo, [variables])} of a graph's global variables.

  A partitioned variable appears once, with its full shape and all its parts.
  """
  graph = graph or tf.compat.v1.get_default_graph()
  out: dict[str, tuple[VariableInfo, list]] = {}
  for variable in graph.get_collection(tf.compat.v1.GraphKeys.GLOBAL_VARIABLES):
    name = variable_name(variable)
    info = getattr(variable, "_save_slice_info", None)
    shape = info.full_shape if info is not None else variable.shape
    if not tf.TensorShape(shape).is_fully_defined():
      raise WarmStartError("model variable %r has a shape that is not fully known (%s); "
                           "warm-starting needs static shapes" % (name, shape))
    if name in out:
      out[name][1].append(variable)
    else:
      out[name] = (VariableInfo.make(name, tf.TensorShape(shape).as_list(),
                                     variable.dtype.base_dtype), [variable])
  return out


def install(plan, variables: dict[str, tuple[VariableInfo, list]]):
  """Makes the planned variables' initializers read the checkpoint, in the current graph.

  Returns:
    TF `warm_start`'s arguments (prefix, variables, vocab infos, renames) for what is left to
    it: the vocabulary-remapped variables (an empty variable list when there are none).
  """
  if plan.source_stamp is not None:
    _checkpoint.check_unchanged(plan.source, plan.source_stamp)
  source_prefix, keys = materialize(plan.source, {
      a.checkpoint_name for a in plan.assignments if a.policy != _policies.ADAPT})
  adapted_prefix = None
  if plan.adapted:  # their checkpoint lives as long as the graph whose initializers read it
    derived = DerivedCheckpoint(plan.adapted)
    _keep_alive.setdefault(tf.compat.v1.get_default_graph(), []).append(derived)
    adapted_prefix = derived.prefix
  restore = _BatchedRestore()
  with tf.name_scope("warmstart"):
    for a in plan.assignments:
      if a.vocab is None:
        info, parts = variables[a.name]
        if a.policy == _policies.ADAPT:  # the adapted value, stored under the variable's name
          _plan_reads(restore, a, info, parts, adapted_prefix, a.name)
        else:
          _plan_reads(restore, a, info, parts, source_prefix, keys[a.checkpoint_name])
    restore.build()
  vocab = [a for a in plan.assignments if a.vocab is not None]
  return (source_prefix, [v for a in vocab for v in variables[a.name][1]],
          {a.name: a.vocab for a in vocab},
          {a.name: keys[a.checkpoint_name] for a in vocab if a.name != keys[a.checkpoint_name]})


def apply(plan, variables: dict[str, tuple[VariableInfo, list]]) -> None:
  """Makes the planned variables' initializers read the checkpoint."""
  left_to_tf = install(plan, variables)
  if left_to_tf[1]:
    tf.compat.v1.train.warm_start(*left_to_tf)


# Derived checkpoints of adapted values, kept while a graph whose initializers read them lives.
_keep_alive: "weakref.WeakKeyDictionary[tf.Graph, list]" = weakref.WeakKeyDictionary()


def _parts(info: VariableInfo, variables):
  """(variable, offset, shape, slice spec) of each part ('' spec for a whole variable)."""
  for variable in variables:
    slice_info = getattr(variable, "_save_slice_info", None)
    if slice_info is None:
      yield variable, (0,) * len(info.shape), info.shape, ""
    else:
      yield (variable, tuple(slice_info.var_offset), tuple(slice_info.var_shape),
             slice_info.spec)


def _slice_spec(full_shape, begin, size) -> str:
  """RestoreV2's `shape_and_slices` entry reading [begin, begin + size) of a `full_shape` tensor."""
  return "%s %s" % (" ".join(map(str, full_shape)),
                    ":".join("%d,%d" % (b, n) for b, n in zip(begin, size)))


def _plan_reads(restore, assignment, info, variables, prefix, name):
  """Asks `restore` for what one assignment reads (tensor `name` of checkpoint `prefix`), and
  how each part of the variable is then initialized."""
  policy = assignment.policy
  parts = list(_parts(info, variables))
  dtype = parts[0][0].dtype.base_dtype
  if policy in ("", _policies.ADAPT):
    for variable, _, _, spec in parts:
      restore.read(prefix, variable, name, spec, dtype,
                   lambda value, variable=variable: _initialize(variable, value))
  elif policy == _policies.PARTIAL:
    block = _policies.block(info.shape, assignment.source_shape)
    for variable, offset, shape, _ in parts:
      end = [min(o + n, b) for o, n, b in zip(offset, shape, block)]
      if any(e <= o for e, o in zip(end, offset)):
        continue  # this part lies outside the copied block: it keeps its initializer
      size = [e - o for e, o in zip(end, offset)]
      restore.read(prefix, variable, name, _slice_spec(assignment.source_shape, offset, size),
                   dtype,
                   lambda value, variable=variable, size=size, shape=shape: _initialize(
                       variable, _into_initial_value(variable, value, size, shape)))
  else:
    restore.read(prefix, parts[0][0], name, "", dtype,
                 lambda value: _initialize_parts(parts, _transform(
                     policy, value, assignment.source_shape, info.shape)))


def _into_initial_value(variable, block, size, shape):
  """The variable's initial value with `block` written at [0:size] (the block if it is all)."""
  if list(size) == list(shape):
    return block
  block.set_shape(size)
  rank = len(shape)
  return tf.raw_ops.TensorStridedSliceUpdate(
      input=variable.initial_value, begin=[0] * rank, end=list(size), strides=[1] * rank,
      value=block)


def _transform(policy, value, source_shape, shape):
  """The model variable's whole value from the source tensor, for input_channels / squeeze."""
  value.set_shape(source_shape)
  if policy == _policies.SQUEEZE:
    return tf.reshape(value, shape)
  assert policy == _policies.INPUT_CHANNELS, policy
  source, channels = source_shape[-2], shape[-2]
  if channels == 1:
    return tf.reduce_sum(value, axis=len(shape) - 2, keepdims=True)
  repeated = tf.gather(value, [i % source for i in range(channels)], axis=len(shape) - 2)
  return repeated * tf.constant(source / channels, value.dtype)


def _initialize_parts(parts, value):
  for variable, offset, shape, spec in parts:
    _initialize(variable, tf.slice(value, offset, shape) if spec else value)


def _initialize(variable, value):
  """Installs `value` as the variable's initial value and its initializer op."""
  value.set_shape(variable.shape)
  with tf.device(variable.device):
    if getattr(variable, "handle", None) is not None:  # a resource variable
      initializer = tf.raw_ops.AssignVariableOp(resource=variable.handle, value=value)
    else:
      initializer = tf.compat.v1.assign(variable, value).op
  # As TF's checkpoint_utils._set_checkpoint_initializer does for warm starts.
  variable._initializer_op = initializer  # pylint: disable=protected-access
  variable._initial_value = value  # pylint: disable=protected-access


class _BatchedRestore:
  """Collects tensor reads, then reads each group with one RestoreV2 op.

  A group is one checkpoint read on one task's CPU (the task of the variable: RestoreV2 runs on
  CPU, and a parameter server's variables are read where they live).
  """

  def __init__(self):
    self._groups: dict[tuple[str, str], list] = {}

  def read(self, prefix, variable, name, spec, dtype, then):
    """Reads tensor `name` (slice `spec`) of `prefix` for `variable`; calls `then(tensor)`."""
    device = tf.DeviceSpec.from_string(variable.device or "").replace(
        device_type=None, device_index=None).to_string()
    self._groups.setdefault((prefix, device), []).append((name, spec, dtype, then))

  def build(self):
    for (prefix, device), reads in self._groups.items():
      with tf.device(device), tf.device("/cpu:0"):
        values = tf.raw_ops.RestoreV2(
            prefix=prefix, tensor_names=[r[0] for r in reads],
            shape_and_slices=[r[1] for r in reads], dtypes=[r[2] for r in reads],
            name="restore")
        for value, (_, _, _, then) in zip(values, reads):
          then(value)
      logger.debug("one RestoreV2 reads %d tensors of %s on %s", len(reads), prefix,
                   device or "the local CPU")
    self._groups.clear()


_materialized: dict[tuple, str] = {}


def materialize(ref, names) -> tuple[str, dict[str, str]]:
  """(a TF checkpoint prefix holding `ref`'s tensors `names`, {name: key in that checkpoint}).

  TF checkpoints are used as they are (a TF2 object-based one through its keys); any other format
  has the tensors to be loaded written to a checkpoint once per process.
  """
  if ref.kind in (_checkpoint.CHECKPOINT, _checkpoint.SAVED_MODEL):
    with sources.open_reader(ref) as reader:
      return ref.prefix, {name: reader.key_of(name) for name in names}
  key = (os.path.abspath(ref.prefix), os.path.getmtime(ref.prefix), ref.layout, ref.allow_pickle,
         frozenset(names))
  if key not in _materialized:
    # The initializers read the checkpoint when the session starts, so it must outlive this call;
    # it lives in a private scratch dir removed at exit, or by the next process that makes one
    # if this one is killed (the source is never written).
    directory = _scratch.make_dir("source")
    prefix = os.path.join(directory, "source")
    with sources.open_reader(ref) as reader:
      _writers.write_checkpoint(prefix, [reader.variables[n] for n in sorted(names)], reader.read)
    _materialized[key] = prefix
    logger.debug("wrote %d tensors of %s to checkpoint %s", len(names), ref.prefix, prefix)
  return _materialized[key], {name: name for name in names}


class DerivedCheckpoint:
  """Values computed from the source (adapted tensors) in a private temporary checkpoint.

  The initializers read it when the session starts, so it lives as long as this object (held by
  the graph it was applied to) and is removed afterwards, or at exit (see `_scratch`).
  """

  def __init__(self, tensors: Mapping[str, "np.ndarray"]):
    directory = _scratch.make_dir("adapted")
    self._cleanup = weakref.finalize(self, _scratch.remove, directory)
    self.prefix = os.path.join(directory, "adapted")
    _writers.write_checkpoint(
        self.prefix, [VariableInfo.make(n, v.shape, v.dtype) for n, v in tensors.items()],
        tensors.__getitem__)
    logger.debug("wrote %d adapted tensor(s) to %s", len(tensors), self.prefix)

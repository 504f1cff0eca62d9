"""Applying a plan to a graph: checkpoint-backed initializers, never constants.

TF's own `warm_start` does the graph work (restore ops as the variables' initializers, partitioned
variables, vocabulary remapping); we hand it the exact variables and names we planned, so none of
its prefix-regex matching is involved. The initializers only run when the session starts from
scratch, so a model_dir that already holds a checkpoint resumes from it instead.
"""
import atexit
import logging
import os
import re
import shutil
import tempfile

import tensorflow as tf

from warmstart import _checkpoint, sources
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


def warm_start_arguments(plan, variables: dict[str, tuple[VariableInfo, list]]):
  """TF's `warm_start` arguments for a plan: (prefix, variables, vocab infos, renames)."""
  var_list = [v for a in plan.assignments for v in variables[a.name][1]]
  vocab = {a.name: a.vocab for a in plan.assignments if a.vocab is not None}
  prefix, keys = materialize(plan.source, {a.checkpoint_name for a in plan.assignments})
  renames = {a.name: keys[a.checkpoint_name] for a in plan.assignments
             if a.name != keys[a.checkpoint_name]}
  return prefix, var_list, vocab, renames


def apply(plan, variables: dict[str, tuple[VariableInfo, list]]) -> None:
  """Makes the planned variables' initializers read the checkpoint."""
  if plan.assignments:
    tf.compat.v1.train.warm_start(*warm_start_arguments(plan, variables))


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
    # it lives in a private temp dir removed at exit (the source is never written).
    directory = tempfile.mkdtemp(prefix="warmstart-source-")
    atexit.register(shutil.rmtree, directory, True)
    prefix = os.path.join(directory, "source")
    with sources.open_reader(ref) as reader:
      _writers.write_checkpoint(prefix, [reader.variables[n] for n in sorted(names)], reader.read)
    _materialized[key] = prefix
    logger.debug("wrote %d tensors of %s to checkpoint %s", len(names), ref.prefix, prefix)
  return _materialized[key], {name: name for name in names}

"""Names and kinds of a TF2 object-based checkpoint, from its object graph.

`tf.train.Checkpoint`, Keras `save_weights` in TF format and TF2 SavedModels key every tensor by an
object path (`model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE`) and store a
`TrackableObjectGraph` protocol buffer under `_CHECKPOINTABLE_OBJECT_GRAPH`. For each variable the
graph records `full_name`, the variable's own name (`dense/kernel`, `Adam/m/dense/kernel`): the
name the same model's variable has in a model_fn. It also tells optimizer state apart: a slot
variable is referenced by its optimizer (`.OPTIMIZER_SLOT/` keys), and TF 2.15's Keras optimizers
keep their slots as `optimizer/_variables/N`, recognizable only by their place in the graph.

The graph is decoded from the wire format (no TensorFlow, no generated protobuf modules); every
node id is checked against the node count and the graph is walked breadth-first with a visited set,
so a crafted graph (dangling ids, cycles, a huge count) gives one error, never a crash or a hang.

    message TrackableObjectGraph { repeated TrackableObject nodes = 1; }
    message TrackableObject {
      repeated ObjectReference children = 1;        // {int32 node_id = 1; string local_name = 2;}
      repeated SerializedTensor attributes = 2;     // {name = 1; full_name = 2; checkpoint_key = 3;}
      repeated SlotVariableReference slot_variables = 3;
          // {int32 original_variable_node_id = 1; string slot_name = 2; int32 slot_variable_node_id = 3;}
    }
"""
import collections
import dataclasses
from typing import TYPE_CHECKING, Optional

from warmstart import _kinds, _wire
from warmstart._errors import CheckpointReadError

if TYPE_CHECKING:
  from warmstart._checkpoint import VariableInfo

GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VARIABLE_VALUE = "VARIABLE_VALUE"
_ATTRIBUTES = "/.ATTRIBUTES/"

# Child names under which an object is an optimizer (Keras' `model.optimizer`,
# `tf.train.Checkpoint(optimizer=...)`), and those of an optimizer's step counter.
_OPTIMIZER_EDGES = frozenset({"optimizer"})
_STEP_EDGES = frozenset({"iter", "_iterations", "iterations"})


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One tensor the object graph describes.

  Attributes:
    key: its key in the checkpoint.
    path: the object path (the key without `/.ATTRIBUTES/...`).
    attribute: the attribute name (`VARIABLE_VALUE` for a variable's value).
    full_name: the variable's own name when it was saved ('' if none was recorded).
    kind: the kind the graph implies ('optimizer_slot', 'step'), or None to judge by name.
  """
  key: str
  path: str
  attribute: str
  full_name: str
  kind: Optional[str]


@dataclasses.dataclass(frozen=True)
class _Node:
  children: tuple[tuple[int, str], ...]
  attributes: tuple[tuple[str, str, str], ...]  # (name, full_name, checkpoint_key)
  slots: tuple[int, ...]  # node ids of this optimizer's slot variables


def _text(value: bytes, what: str) -> str:
  try:
    return value.decode("utf-8")
  except UnicodeDecodeError as err:
    raise _wire.Malformed("%s is not UTF-8: %s" % (what, err)) from None


def _string(fields: _wire.Fields, number: int, what: str) -> str:
  values = [v for wire, v in fields.get(number, ()) if wire == _wire.LENGTH]
  if len(values) != len(fields.get(number, ())):
    raise _wire.Malformed("%s: field %d is not a string" % (what, number))
  return _text(values[-1], what) if values else ""  # type: ignore[arg-type]


def _parse(data: bytes) -> list[_Node]:
  nodes = []
  for node in _wire.messages(_wire.decode(data, "object graph"), 1, "object graph"):
    children = tuple(
        (_wire.int32(c, 1, "child reference"), _string(c, 2, "child name"))
        for c in _wire.messages(node, 1, "object"))
    attributes = tuple(
        (_string(a, 1, "attribute name"), _string(a, 2, "full_name"),
         _string(a, 3, "checkpoint_key"))
        for a in _wire.messages(node, 2, "object"))
    slots = tuple(_wire.int32(s, 3, "slot variable reference")
                  for s in _wire.messages(node, 3, "object"))
    nodes.append(_Node(children, attributes, slots))
  for parsed in nodes:
    for node_id in [c for c, _ in parsed.children] + list(parsed.slots):
      if not 0 <= node_id < len(nodes):
        raise _wire.Malformed("object graph refers to node %d; it has %d nodes"
                              % (node_id, len(nodes)))
  return nodes


def _optimizer_owned(nodes: list[_Node]) -> dict[int, str]:
  """{node id: kind} for the variables held by optimizers, found by walking the graph."""
  optimizers = {i for i, node in enumerate(nodes)
                if node.slots or any(name in _STEP_EDGES for _, name in node.children)}
  optimizers.update(c for node in nodes for c, name in node.children if name in _OPTIMIZER_EDGES)
  kinds: dict[int, str] = {}
  for node in nodes:
    for slot in node.slots:
      kinds[slot] = _kinds.OPTIMIZER_SLOT
  for optimizer in optimizers:
    for child, name in nodes[optimizer].children:
      if name in _STEP_EDGES:
        kinds[child] = _kinds.STEP
    seen = {optimizer}
    queue = collections.deque([optimizer])
    while queue:
      for child, _ in nodes[queue.popleft()].children:
        if child not in seen:
          seen.add(child)
          queue.append(child)
          kinds.setdefault(child, _kinds.OPTIMIZER_SLOT)
  return kinds


def tensors(data: bytes, source: str) -> dict[str, Tensor]:
  """Parses a serialized TrackableObjectGraph; returns {checkpoint key: Tensor}.

  Args:
    data: the bytes stored under `_CHECKPOINTABLE_OBJECT_GRAPH`.
    source: the checkpoint, for error messages.

  Raises:
    CheckpointReadError: the bytes are not a well-formed object graph.
  """
  try:
    nodes = _parse(data)
  except _wire.Malformed as err:
    raise CheckpointReadError("%s: the object graph (%s) is damaged: %s"
                              % (source, GRAPH_KEY, err)) from None
  owned = _optimizer_owned(nodes)
  out = {}
  for node_id, node in enumerate(nodes):
    for attribute, full_name, key in node.attributes:
      path, found, _ = key.rpartition(_ATTRIBUTES)
      out[key] = Tensor(key, path if found else key, attribute, full_name, owned.get(node_id))
  return out


def model_names(described: dict[str, Tensor], keys: list[str]) -> dict[str, str]:
  """Chooses the model-side name of every key: {name: key}.

  A variable is named by its `full_name`, the name the same model's variable has in a model_fn;
  where there is none, or two tensors share one, the object path is used instead (and the key
  itself for tensors that are not variable values or that the graph does not describe).
  """
  def fallback(key):
    tensor = described.get(key)
    if tensor is None or tensor.attribute != VARIABLE_VALUE:
      return key
    return tensor.path
  preferred = {}
  for key in keys:
    tensor = described.get(key)
    if tensor is not None and tensor.attribute == VARIABLE_VALUE and tensor.full_name:
      preferred[key] = tensor.full_name
    else:
      preferred[key] = fallback(key)
  counts = collections.Counter(preferred.values())
  names = {k: (n if counts[n] == 1 else fallback(k)) for k, n in preferred.items()}
  counts = collections.Counter(names.values())
  chosen = {(n if counts[n] == 1 else k): k for k, n in names.items()}
  # A key may equal another tensor's chosen name: then every tensor keeps its key.
  return chosen if len(chosen) == len(names) else {k: k for k in names}


def by_model_names(infos: "dict[str, VariableInfo]", graph: bytes,
                   source: str) -> "tuple[dict[str, VariableInfo], dict[str, str]]":
  """Re-keys a checkpoint's listing by model names.

  Args:
    infos: {checkpoint key: VariableInfo} of every tensor but the object graph itself.
    graph: the serialized object graph.
    source: the checkpoint, for error messages.

  Returns:
    ({model name: VariableInfo named so, with the kind the graph implies}, {model name: key}).

  Raises:
    CheckpointReadError: a damaged object graph.
  """
  described = tensors(graph, source)
  keys = model_names(described, list(infos))
  variables = {}
  for name, key in keys.items():
    info = infos[key]
    tensor = described.get(key)
    kind = tensor.kind if tensor is not None and tensor.kind else _kinds.kind_of(name, info.dtype)
    if kind == _kinds.STEP and not info.dtype.startswith("int"):
      kind = _kinds.OPTIMIZER_SLOT  # an optimizer's float counter is its state, not the step
    variables[name] = dataclasses.replace(info, name=name, kind=kind)
  return dict(sorted(variables.items())), keys

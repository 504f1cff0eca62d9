"""Gating and scaling the optimizer's updates: `unfreeze_at` and `lr_multipliers` in a graph.

Both act on the optimizer's *update*, never only on the gradients: Adam, RMSProp and Adagrad
are invariant to the scale of the gradients (a gradient times 0.1 is not a learning rate times
0.1), and momentum or weight decay still move a variable whose gradient is zero. So while the
model_fn builds its graph, `apply_gradients` of `tf.compat.v1.train.Optimizer` and of Keras'
legacy optimizers (what canned estimators use) is wrapped: for the variables concerned, the step
reads their values (and, for scheduled ones, their optimizer slots) before the update and writes
afterwards

    lr_multipliers:  before + factor * (after - before)
    unfreeze_at:     after if global_step >= N else before   (the slots too)

so a scheduled variable and its Adam moments are bit-identical until step N and its slots start
from their initial zeros there. While it is frozen its gradient is zero, so it does not count in
gradient clipping either. The gate is a comparison with the global step: one graph for every
step, and a run resumed after step N trains the variable.
"""
import contextlib
import dataclasses
import logging
import re
import threading
from typing import Any, Optional

import tensorflow as tf

from warmstart import _apply
from warmstart._errors import FreezeError
from warmstart._finetune import FineTuning

logger = logging.getLogger(__name__)

# Op types that write the variable given as their first input (and, for Apply ops, the slots
# given after it).
WRITERS = re.compile(r"(Resource)?(Sparse)?Apply\w+|Assign\w*|(Resource)?Scatter\w+"
                     r"|(Resource)?StridedSliceAssign")
# Ops that run other ops (a write inside them is invisible from outside).
_CALLS = ("If", "StatelessIf", "While", "StatelessWhile", "Case", "StatelessCase",
          "PartitionedCall", "StatefulPartitionedCall")


class Gates:
  """`global_step >= N` tensors, one per step N and graph, shared by every use in a step."""

  def __init__(self):
    self._gates: dict[tuple[Any, int], tf.Tensor] = {}

  def gate(self, step: int) -> tf.Tensor:
    # Outside any control-flow or function scope, so one tensor serves the whole graph.
    with tf.init_scope():
      graph = tf.compat.v1.get_default_graph()
      key = (graph, step)
      if key not in self._gates:
        global_step = tf.compat.v1.train.get_global_step(graph)
        if global_step is None:
          raise FreezeError(
              "unfreeze_at needs the global step, and the graph has none. Estimators create it "
              "before calling the model_fn; elsewhere call "
              "tf.compat.v1.train.get_or_create_global_step() first.")
        with tf.name_scope("warmstart_unfreeze_at_%d" % step):
          self._gates[key] = tf.greater_equal(global_step.read_value(),
                                              tf.cast(step, global_step.dtype.base_dtype))
      return self._gates[key]

  def read_before_step_increments(self, train_op) -> None:
    """Makes every gate read the global step before anything in `train_op` increments it.

    Optimizers increment it inside apply_gradients (ordered there); a model_fn may also group
    its own `assign_add` into the train_op, unordered: the gate would then see either step.
    """
    for graph in {graph for graph, _ in self._gates}:
      global_step = tf.compat.v1.train.get_global_step(graph)
      gates = [gate.op for (g, _), gate in self._gates.items() if g is graph]
      handle = getattr(global_step, "handle", None)
      step_op = (handle if handle is not None else global_step).op
      for op in ops_run_by(train_op):
        if op.graph is graph and written_variable(op) is step_op:
          op._add_control_inputs(gates)  # pylint: disable=protected-access


def static_bool(value) -> Optional[bool]:
  """A `training` argument's value when it is known while building the graph, else None."""
  if value is None or isinstance(value, (bool, int)):
    return bool(value)
  static = tf.get_static_value(value)
  return None if static is None else bool(static)


def _read(variable):
  return variable.read_value()


def _assign(variable, value):
  result = variable.assign(value, read_value=False)
  return result if isinstance(result, tf.Operation) else result.op


def _slots(optimizer, variable) -> list:
  """The optimizer's slot variables of `variable` (Adam's m and v, momentum, ...)."""
  slots = []
  for slot_name in optimizer.get_slot_names():
    try:
      slot = optimizer.get_slot(variable, slot_name)
    except KeyError:  # Keras: this variable has no slot of that name
      slot = None
    if slot is not None:
      slots.append(slot)
  return slots


def _zero_while_frozen(grad, gate):
  """The gradient from the gate's step on, zero before."""
  if grad is None:
    return None
  if isinstance(grad, tf.IndexedSlices):
    return tf.IndexedSlices(tf.where(gate, grad.values, tf.zeros_like(grad.values)),
                            grad.indices, grad.dense_shape)
  return tf.where(gate, grad, tf.zeros_like(grad))


def _ops_of(result) -> list:
  return [x if isinstance(x, tf.Operation) else x.op for x in tf.nest.flatten(result)
          if x is not None]


def ops_run_by(result, within=None) -> set:
  """The ops running `result` (ops, tensors, variables or nests of them) runs, or those of them
  in `within`."""
  todo = [op for op in _ops_of(result) if within is None or op in within]
  seen = set(todo)
  while todo:
    op = todo.pop()
    for parent in list(op.control_inputs) + [t.op for t in op.inputs]:
      if parent not in seen and (within is None or parent in within):
        seen.add(parent)
        todo.append(parent)
  return seen


def written_variable(op, stop=frozenset()):
  """The op of the variable (handle or ref) that `op` writes, or None if it writes none.

  Identity ops between are looked through, except at ops in `stop`.
  """
  if not (WRITERS.fullmatch(op.type) and op.inputs):
    return None
  target = op.inputs[0].op
  while target.type == "Identity" and target.inputs and target not in stop:
    target = target.inputs[0].op
  return target


@dataclasses.dataclass
class _Target:
  variable: Any
  name: str
  step: Optional[int]
  factor: Optional[float]
  gate: Optional[tf.Tensor] = None
  slots: list = dataclasses.field(default_factory=list)


# Held while classes are patched: model_fns building graphs in other threads wait.
PATCH_LOCK = threading.RLock()


def patch_method(stack: contextlib.ExitStack, cls, method: str, wrapper) -> None:
  """Replaces `cls.method` by `wrapper(original)` until `stack` closes."""
  original = cls.__dict__[method]
  setattr(cls, method, wrapper(original))
  stack.callback(setattr, cls, method, original)


def _optimizer_classes():
  """The classes whose apply_gradients every tf.compat.v1 and Keras-legacy optimizer runs."""
  return [tf.compat.v1.train.Optimizer, tf.keras.optimizers.legacy.Optimizer]


class UpdateControl:
  """While active, optimizers gate (unfreeze_at) and scale (lr_multipliers) their updates.

  Attributes:
    scheduled: {name: step} of the variables held frozen until a step.
    scheduled_variables: {name: [variables]} of those.
    scaled: {name: factor} of the variables whose updates are scaled.
    allowed_writers: the ops allowed to write a scheduled variable (the optimizer's own update,
      undone while the gate is closed, and the restoring assignments).
    steps: [(update ops, post op)]: whenever the train_op runs an update it must run the post op.
    optimizer_calls: how many apply_gradients calls were seen.
  """

  def __init__(self, fine_tuning: FineTuning, gates: Gates):
    self._fine_tuning = fine_tuning
    self._gates = gates
    self._depth = 0
    self.scheduled: dict[str, int] = {}
    self.scheduled_variables: dict[str, list] = {}
    self.scaled: dict[str, float] = {}
    self.allowed_writers: set = set()
    self.steps: list[tuple[frozenset, Any]] = []
    self.optimizer_calls = 0
    self._stack = contextlib.ExitStack()
    self._thread = threading.get_ident()

  def __enter__(self):
    self._stack = contextlib.ExitStack()
    self._thread = threading.get_ident()
    if self._fine_tuning.lr_multipliers or self._fine_tuning.unfreeze_at:
      self._stack.enter_context(PATCH_LOCK)
      for cls in _optimizer_classes():
        patch_method(self._stack, cls, "apply_gradients", self._wrap)
    return self

  def __exit__(self, *exc):
    self._stack.close()

  def _wrap(self, original):
    control = self

    def apply_gradients(optimizer, grads_and_vars, *args, **kwargs):
      # Only the outermost call acts (an optimizer may wrap another), and only in the thread
      # that builds this graph: the class is patched for every thread.
      if control._depth or threading.get_ident() != control._thread:
        return original(optimizer, grads_and_vars, *args, **kwargs)
      control._depth += 1
      try:
        return control._apply(original, optimizer, list(grads_and_vars), args, kwargs)
      finally:
        control._depth -= 1
    return apply_gradients

  def _apply(self, original, optimizer, pairs, args, kwargs):
    self.optimizer_calls += 1
    targets = []
    for grad, variable in pairs:
      if grad is None:
        continue
      name = _apply.variable_name(variable)
      step, factor = self._fine_tuning.unfreeze_step(name), self._fine_tuning.multiplier(name)
      if factor is not None:
        self.scaled[name] = factor
      if step is not None:
        self.scheduled[name] = step
        self.scheduled_variables.setdefault(name, []).append(variable)
      if step is not None or (factor is not None and factor != 1.0):
        if variable.dtype != variable.dtype.base_dtype:
          # A read of a reference variable aliases the buffer the update overwrites in place.
          raise FreezeError(
              "unfreeze_at / lr_multipliers need resource variables (TensorFlow 2's default); "
              "%r is a reference variable: create it with use_resource=True." % name)
        targets.append(_Target(variable, name, step, factor,
                               None if step is None else self._gates.gate(step)))
    if not targets:
      return original(optimizer, pairs, *args, **kwargs)

    by_variable = {id(t.variable): t for t in targets}
    pairs = [(_zero_while_frozen(g, by_variable[id(v)].gate) if id(v) in by_variable
              and by_variable[id(v)].gate is not None else g, v) for g, v in pairs]
    graph = tf.compat.v1.get_default_graph()
    start = len(graph.get_operations())
    result = original(optimizer, pairs, *args, **kwargs)
    created = graph.get_operations()[start:]
    update = ops_run_by(result, within=set(created))
    writers = [op for op in created
               if op in update and (WRITERS.fullmatch(op.type) or op.type in _CALLS)]

    with tf.name_scope("warmstart_update_control"):
      # The state before the update: read first, and every write of the update waits for it.
      before = {}
      for t in targets:
        if t.step is not None:
          t.slots = _slots(optimizer, t.variable)
        for variable in [t.variable, *t.slots]:
          before[id(variable)] = _read(variable)
      gates = [t.gate for t in targets if t.gate is not None]
      barrier = tf.group(*[b.op for b in before.values()], *[g.op for g in gates],
                         name="read_before_update")
      for op in writers:
        op._add_control_inputs([barrier])  # pylint: disable=protected-access
      assigns = []
      with tf.control_dependencies(_ops_of(result)):
        for t in targets:
          old, new = before[id(t.variable)], _read(t.variable)
          if t.factor is not None and t.factor != 1.0:
            new = old + tf.constant(t.factor, new.dtype) * (new - old)
          if t.gate is not None:
            new = tf.where(t.gate, new, old)
          assigns.append(_assign(t.variable, new))
          for slot in t.slots:
            assigns.append(_assign(slot, tf.where(t.gate, _read(slot), before[id(slot)])))
      post = tf.group(*assigns, name="gate_and_scale")
    self.allowed_writers.update(writers)
    self.allowed_writers.update(assigns)
    self.steps.append((frozenset(writers), post))
    logger.debug("gated/scaled the updates of %s", ", ".join(t.name for t in targets))
    if isinstance(result, tf.Operation):
      return post
    with tf.control_dependencies([post]):
      return tf.identity(result)


def check_steps_run(visited, steps) -> None:
  """Raises FreezeError if the train_op runs an optimizer update without its gate/scale step."""
  for writers, post in steps:
    if post not in visited and any(op in visited for op in writers):
      raise FreezeError(
          "the train_op runs the optimizer update %r but not warmstart's step that gates and "
          "scales it (%r): use the op apply_gradients()/minimize() returned as (part of) the "
          "train_op, not ops taken from inside it." % (next(iter(writers)).name, post.name))


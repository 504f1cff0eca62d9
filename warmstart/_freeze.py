"""Freezing variables: not trainable from the moment they exist, and a guard on the train_op.

A variable must be non-trainable before the optimizer is built, and the optimizer is built inside
the model_fn, so freezing acts while the model_fn creates its variables:
- a variable creator takes each frozen variable out of the TRAINABLE_VARIABLES collections (what
  `tf.compat.v1` optimizers and layers read);
- Keras layers decide trainability inside `Layer.add_weight` from their own argument, so while the
  model_fn runs, `add_weight` is wrapped to move a frozen variable to the layer's non-trainable
  weights (what canned estimators and `model.trainable_variables` read).
Afterwards `check_train_op` walks the train_op: if any op in it still writes a frozen variable
(an explicit `var_list`, a batch-norm moving-average update, ...), that is an error naming both.
"""
import collections
import contextlib
import logging
import re
import threading
from typing import Any, Callable, Optional, TypeVar

import tensorflow as tf

from warmstart import _apply, _model_fn, _select
from warmstart._checkpoint import VariableInfo
from warmstart._errors import FreezeError, PatternError
from warmstart._select import Patterns

logger = logging.getLogger(__name__)

# Op types that write the variable given as their first input.
_WRITERS = re.compile(r"(Resource)?(Sparse)?Apply\w+|Assign\w*|(Resource)?Scatter\w+"
                      r"|(Resource)?StridedSliceAssign")

_patch_lock = threading.RLock()

# freeze() returns the same kind as given: a model_fn or an Estimator.
_ModelOrEstimatorT = TypeVar("_ModelOrEstimatorT", Callable[..., Any], tf.estimator.Estimator)


def _keras_layer_classes():
  classes = [tf.keras.layers.Layer]
  try:  # The TF1-style Keras layer base, used under tf.compat.v1.disable_v2_behavior().
    from keras.src.engine import base_layer_v1  # pylint: disable=g-import-not-at-top
    classes.append(base_layer_v1.Layer)
  except ImportError:
    pass
  return classes


class FreezeScope:
  """While active, variables for which `predicate(VariableInfo)` holds are created frozen.

  With `predicate=None` nothing is frozen and nothing is hooked (no creator, no Keras wrap).

  Attributes:
    frozen: {name: [variables]} of what was frozen, in creation order.
  """

  def __init__(self, predicate: Optional[Callable[[VariableInfo], bool]]):
    self._predicate = predicate
    self.frozen: dict[str, list] = collections.OrderedDict()
    self._frozen_ids: set[int] = set()
    self._stack = contextlib.ExitStack()

  def __enter__(self):
    self._stack = contextlib.ExitStack()
    if self._predicate is None:
      return self
    self._stack.enter_context(tf.compat.v1.variable_creator_scope(self._creator))
    self._stack.enter_context(_patch_lock)
    for cls in _keras_layer_classes():
      original = cls.__dict__["add_weight"]
      cls.add_weight = self._wrap_add_weight(original)
      self._stack.callback(setattr, cls, "add_weight", original)
    return self

  def __exit__(self, *exc):
    self._stack.close()

  def _creator(self, next_creator, **kwargs):
    assert self._predicate is not None  # hooked only with a predicate
    variable = next_creator(**kwargs)
    name = _apply.variable_name(variable)
    info = VariableInfo.make(name, variable.shape.as_list() if variable.shape.is_fully_defined()
                             else [], variable.dtype.base_dtype)
    if self._predicate(info):
      graph = variable.graph
      for key in (tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES,
                  tf.compat.v1.GraphKeys.TRAINABLE_RESOURCE_VARIABLES):
        members = graph.get_collection_ref(key)
        members[:] = [v for v in members if v is not variable]
      if hasattr(variable, "_trainable"):
        variable._trainable = False  # pylint: disable=protected-access
      self.frozen.setdefault(name, []).append(variable)
      self._frozen_ids.add(id(variable))
      logger.debug("froze %s", name)
    return variable

  def _wrap_add_weight(self, original):
    scope = self

    def add_weight(layer, *args, **kwargs):
      variable = original(layer, *args, **kwargs)
      parts = list(variable) if isinstance(variable, (list, tuple)) else [variable]
      for part in parts:
        if id(part) in scope._frozen_ids:  # pylint: disable=protected-access
          trainable = layer._trainable_weights  # pylint: disable=protected-access
          if any(w is part for w in trainable):
            trainable[:] = [w for w in trainable if w is not part]
            layer._non_trainable_weights.append(part)  # pylint: disable=protected-access
      return variable
    return add_weight


def check_train_op(train_op, frozen: dict[str, list]) -> None:
  """Raises FreezeError if anything `train_op` runs writes a frozen variable."""
  if train_op is None or not frozen:
    return
  owners = {}
  for name, variables in frozen.items():
    for variable in variables:
      handle = getattr(variable, "handle", None)
      owners[(handle if handle is not None else variable).op] = name
  start = train_op.op if isinstance(train_op, tf.Tensor) else train_op
  seen, todo = {start}, [start]
  while todo:
    op = todo.pop()
    if _WRITERS.fullmatch(op.type) and op.inputs:
      target = op.inputs[0].op
      while target.type == "Identity" and target.inputs and target not in owners:
        target = target.inputs[0].op
      if target in owners:
        raise FreezeError(
            "the train_op still updates frozen variable %r: op %r (%s) writes it. Frozen "
            "variables are taken out of TRAINABLE_VARIABLES and Keras' trainable weights; build "
            "the optimizer on those (e.g. optimizer.minimize(loss) without var_list), build "
            "batch-norm layers of frozen scopes with training=False, or leave %r out of the "
            "freeze pattern." % (owners[target], op.name, op.type, owners[target]))
    for parent in list(op.control_inputs) + [t.op for t in op.inputs]:
      if parent not in seen:
        seen.add(parent)
        todo.append(parent)


def _pattern_predicate(pattern):
  patterns = _select.compile_patterns(pattern, "freeze")
  if not patterns:
    raise PatternError("freeze pattern is empty; pass a regex or a list of regexes")
  return patterns, lambda info: _select.first_match(patterns, info.name) is not None


def freeze(model_fn_or_estimator: _ModelOrEstimatorT, pattern: Patterns) -> _ModelOrEstimatorT:
  """Freezes the variables whose names fully match `pattern` during training.

  Args:
    model_fn_or_estimator: a model_fn or a `tf.estimator.Estimator` (canned ones too).
    pattern: a regex or list of regexes, fully matched against variable names.

  Returns:
    The same kind as given: a model_fn, or a new Estimator (same model_dir, config, params and
    warm-start settings).

  Raises:
    PatternError: bad regex, or (at graph build) a pattern that matches no variable.
    FreezeError: (at graph build) the train_op still updates a frozen variable.

  Example:
    >>> model_fn = warmstart.freeze(model_fn, "mnist/hidden/.*")
  """
  patterns, predicate = _pattern_predicate(pattern)

  def wrap(model_fn):
    def frozen_model_fn(features, labels, mode, params, config):
      if mode != tf.estimator.ModeKeys.TRAIN:
        return _model_fn.call_model_fn(model_fn, features, labels, mode, params, config)
      with FreezeScope(predicate) as scope:
        spec = _model_fn.call_model_fn(model_fn, features, labels, mode, params, config)
      unused = _select.unmatched(patterns, list(_apply.graph_variables()), "freeze",
                                 "model variable")
      if unused:
        raise PatternError(" ".join(unused))
      check_train_op(spec.train_op, scope.frozen)
      logger.info("froze %d variable(s): %s", len(scope.frozen), ", ".join(scope.frozen))
      return spec
    return frozen_model_fn

  return _model_fn.rewrap(model_fn_or_estimator, wrap)

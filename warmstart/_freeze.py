"""Freezing variables: not trainable from the moment they exist, and a guard on the train_op.

A variable must be non-trainable before the optimizer is built, and the optimizer is built inside
the model_fn, so freezing acts while the model_fn creates its variables:
- a variable creator takes each frozen variable out of the TRAINABLE_VARIABLES collections (what
  `tf.compat.v1` optimizers and layers read). A part of a partitioned variable (`emb/part_0`)
  is decided when TF sets its slice info right after creating it: only then are the logical
  name and full shape known, and the plan decides on those (the parts of one variable are
  frozen together, and listed once);
- Keras layers decide trainability inside `Layer.add_weight` from their own argument, so while the
  model_fn runs, `add_weight` is wrapped to move a frozen variable to the layer's non-trainable
  weights (what canned estimators and `model.trainable_variables` read);
- a Keras batch-norm layer (`tf.keras.layers.BatchNormalization`, `tf.compat.v1.layers` and
  canned estimators use it) any of whose variables is frozen runs in inference mode: it
  normalizes with its moving statistics, which are frozen too, and builds no update ops. Under an
  `unfreeze_at` schedule it does so until the step (its `training` argument is gated).
Afterwards `check_train_op` walks the train_op: if any op in it still writes a frozen variable
(an explicit `var_list`, a hand-written update, ...), that is an error naming both.
`_finetune` gates and scales the optimizer's updates for `unfreeze_at` and `lr_multipliers`;
`build_train_spec` runs a model_fn with both.
"""
import collections
import contextlib
import logging
import re
import threading
from typing import Any, Callable, Optional, TypeVar

import tensorflow as tf
from tensorflow.python.ops import variables as variables_lib  # pylint: disable=g-direct-tensorflow-import

from warmstart import _apply, _finetune, _model_fn, _select, _update_control
from warmstart._checkpoint import VariableInfo
from warmstart._errors import FreezeError, PatternError
from warmstart._select import Patterns

logger = logging.getLogger(__name__)

# freeze() returns the same kind as given: a model_fn or an Estimator.
_ModelOrEstimatorT = TypeVar("_ModelOrEstimatorT", Callable[..., Any], tf.estimator.Estimator)


def _batchnorm_class():
  """The base of every Keras batch-norm layer (V1, V2, tf.compat.v1.layers, canned estimators)."""
  return next(cls for cls in tf.keras.layers.BatchNormalization.__mro__
              if "_get_training_value" in cls.__dict__)


def _keras_layer_classes():
  classes = [tf.keras.layers.Layer]
  try:  # The TF1-style Keras layer base, used under tf.compat.v1.disable_v2_behavior().
    from keras.src.engine import base_layer_v1  # pylint: disable=g-import-not-at-top
    classes.append(base_layer_v1.Layer)
  except ImportError:
    pass
  return classes


# A part of a partitioned variable (or its optimizer slot): `emb/part_0`, `emb/part_0/Adam`.
_PART = re.compile(r"/part_\d+(/|:|$)")


def _info(variable):
  """The logical variable: a part of a partitioned variable gives its full name and shape."""
  slice_info = getattr(variable, "_save_slice_info", None)
  shape = (tf.TensorShape(slice_info.full_shape) if slice_info is not None
           else variable.shape)
  return VariableInfo.make(_apply.variable_name(variable),
                           shape.as_list() if shape.is_fully_defined() else [],
                           variable.dtype.base_dtype)


def _parts(variable) -> list:
  """The variables of what a Keras `add_weight` returned (the parts of a partitioned one)."""
  if isinstance(variable, (list, tuple, variables_lib.PartitionedVariable)):
    return list(variable)
  return [variable]


class FreezeScope:
  """While active, variables for which `predicate(VariableInfo)` holds are created frozen.

  With `predicate=None` and no schedule nothing is frozen and nothing is hooked (no creator, no
  Keras wrap).

  Attributes:
    frozen: {name: [variables]} of what was frozen, in creation order (batch-norm statistics
      frozen with their layer included).
    scheduled: {name: step} of batch-norm statistics frozen until their layer's unfreeze step.
    scheduled_variables: {name: [variables]} of those.
    allowed_writers: the (gated) moving-average updates of those layers.
  """

  def __init__(self, predicate: Optional[Callable[[VariableInfo], bool]], *,
               fine_tuning: Optional[_finetune.FineTuning] = None,
               gates: Optional[_update_control.Gates] = None):
    self._predicate = predicate
    self._fine_tuning = fine_tuning or _finetune.FineTuning()
    self._gates = gates or _update_control.Gates()
    self.frozen: dict[str, list] = collections.OrderedDict()
    self.scheduled: dict[str, int] = {}
    self.scheduled_variables: dict[str, list] = {}
    self.allowed_writers: set = set()
    self._frozen_ids: set[int] = set()
    self._undecided: dict[int, Any] = {}  # parts created, waiting for their slice info
    self._scheduled_layers: set[int] = set()
    self._stack = contextlib.ExitStack()
    self._thread = threading.get_ident()

  def __enter__(self):
    self._stack = contextlib.ExitStack()
    # The Keras classes are patched for every thread; the wrappers act in this one only.
    self._thread = threading.get_ident()
    batchnorm = self._fine_tuning.freeze_batchnorm_stats and (
        self._predicate is not None or bool(self._fine_tuning.unfreeze_at))
    if self._predicate is None and not batchnorm:
      return self
    self._stack.enter_context(_update_control.PATCH_LOCK)
    if self._predicate is not None:
      self._stack.enter_context(tf.compat.v1.variable_creator_scope(self._creator))
      self._stack.callback(self._decide_undecided)
      _update_control.patch_method(self._stack, tf.Variable, "_set_save_slice_info",
                                   self._wrap_set_slice_info)
      for cls in _keras_layer_classes():
        _update_control.patch_method(self._stack, cls, "add_weight", self._wrap_add_weight)
    if batchnorm:
      batchnorm_class = _batchnorm_class()
      _update_control.patch_method(self._stack, batchnorm_class, "_get_training_value",
                                   self._wrap_training_value)
      for method in ("_assign_moving_average", "_assign_new_value"):
        _update_control.patch_method(self._stack, batchnorm_class, method,
                                     self._wrap_statistics_update)
    return self

  def __exit__(self, *exc):
    self._stack.close()

  def _freeze(self, variable, name):
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

  def _decide(self, variable):
    assert self._predicate is not None  # hooked only with a predicate
    info = _info(variable)
    if self._predicate(info):
      self._freeze(variable, info.name)

  def _decide_undecided(self):
    """Decides the part-named variables that got no slice info (not partitioned after all)."""
    undecided, self._undecided = self._undecided, {}
    for variable in undecided.values():
      self._decide(variable)

  def _creator(self, next_creator, **kwargs):
    variable = next_creator(**kwargs)
    self._decide_undecided()
    if _PART.search(variable.name):
      # TF sets a part's slice info (full name and shape) right after creating it.
      self._undecided[id(variable)] = variable
    else:
      self._decide(variable)
    return variable

  def _wrap_set_slice_info(self, original):
    scope = self

    def _set_save_slice_info(variable, save_slice_info):
      original(variable, save_slice_info)
      # Only parts this scope's creator made are waiting (the creator scope is per thread).
      if scope._undecided.pop(id(variable), None) is not None:  # pylint: disable=protected-access
        scope._decide(variable)  # pylint: disable=protected-access
    return _set_save_slice_info

  def _wrap_add_weight(self, original):
    scope = self

    def add_weight(layer, *args, **kwargs):
      variable = original(layer, *args, **kwargs)
      if threading.get_ident() != scope._thread:  # pylint: disable=protected-access
        return variable
      for part in _parts(variable):
        if id(part) in scope._frozen_ids:  # pylint: disable=protected-access
          trainable = layer._trainable_weights  # pylint: disable=protected-access
          if any(w is part for w in trainable):
            trainable[:] = [w for w in trainable if w is not part]
            layer._non_trainable_weights.append(part)  # pylint: disable=protected-access
      return variable
    return add_weight

  def _wrap_training_value(self, original):
    scope = self

    def _get_training_value(layer, training=None):
      training = original(layer, training)
      if threading.get_ident() != scope._thread:  # pylint: disable=protected-access
        return training
      return scope._batchnorm_training(layer, training)  # pylint: disable=protected-access
    return _get_training_value

  def _batchnorm_training(self, layer, training):
    """The `training` a batch-norm layer runs with: False while any of its variables is frozen."""
    weights = list(layer.weights)
    statistics = [w for w in weights if w is not getattr(layer, "gamma", None)
                  and w is not getattr(layer, "beta", None)]
    if any(id(w) in self._frozen_ids for w in weights):
      for w in statistics:
        if id(w) not in self._frozen_ids:
          self._freeze(w, _apply.variable_name(w))
      return False
    steps = [s for s in (self._fine_tuning.unfreeze_step(_apply.variable_name(w))
                         for w in weights) if s is not None]
    if not steps:
      return training
    step = max(steps)  # the statistics train once all of the layer does
    for w in statistics:
      name = _apply.variable_name(w)
      self.scheduled[name] = step
      self.scheduled_variables.setdefault(name, []).append(w)
    self._scheduled_layers.add(id(layer))
    value = _update_control.static_bool(training)
    if value is False:
      return False
    gate = self._gates.gate(step)
    return gate if value else tf.logical_and(tf.cast(training, tf.bool), gate)

  def _wrap_statistics_update(self, original):
    scope = self

    def update(layer, *args, **kwargs):
      if id(layer) not in scope._scheduled_layers:  # pylint: disable=protected-access
        return original(layer, *args, **kwargs)
      graph = tf.compat.v1.get_default_graph()
      start = len(graph.get_operations())
      result = original(layer, *args, **kwargs)
      # Gated by the layer's `training`: allowed to write its scheduled statistics.
      scope.allowed_writers.update(op for op in graph.get_operations()[start:]
                                   if _update_control.WRITERS.fullmatch(op.type))
      return result
    return update


def _owners(variables_by_name):
  owners = {}
  for name, variables in variables_by_name.items():
    for variable in variables:
      handle = getattr(variable, "handle", None)
      owners[(handle if handle is not None else variable).op] = name
  return owners


def check_train_op(train_op, frozen: dict[str, list], *,
                   scheduled: Optional[dict[str, list]] = None, allowed_writers=frozenset(),
                   steps=()) -> None:
  """Raises FreezeError if anything `train_op` runs writes a frozen variable (naming them all).

  Args:
    train_op: the EstimatorSpec's train_op.
    frozen: {name: [variables]} frozen for the whole run.
    scheduled: {name: [variables]} frozen until a step: only `allowed_writers` may write them.
    allowed_writers: the gated ops that may write scheduled variables.
    steps: [(update ops, post op)] from `UpdateControl`: an update must run its post op.
  """
  if train_op is None or not (frozen or scheduled or steps):
    return
  owners = _owners(frozen)
  scheduled_owners = _owners(scheduled or {})
  stop = set(owners) | set(scheduled_owners)
  visited = _update_control.ops_run_by(train_op)
  writes: dict[str, list[str]] = {}  # frozen name -> the ops that write it
  for op in sorted(visited, key=lambda op: op.name):  # the same error every time
    target = _update_control.written_variable(op, stop)
    if target in owners:
      writes.setdefault(owners[target], []).append("op %r (%s)" % (op.name, op.type))
    if target in scheduled_owners and op not in allowed_writers:
      raise FreezeError(
          "the train_op updates %r, frozen until a global step by unfreeze_at, with op %r (%s), "
          "which the schedule does not gate. Only the update of a tf.compat.v1.train.Optimizer "
          "or tf.keras.optimizers.legacy optimizer (apply_gradients / minimize) is gated; "
          "write the variable through one, or leave it out of unfreeze_at."
          % (scheduled_owners[target], op.name, op.type))
  if writes:
    names = sorted(writes)
    raise FreezeError(
        "the train_op still updates %d frozen variable%s:\n%s\nFrozen variables are taken out "
        "of TRAINABLE_VARIABLES and Keras' trainable weights; build the optimizer on those (e.g. "
        "optimizer.minimize(loss) without var_list), build batch-norm layers of frozen scopes "
        "with training=False (Keras and tf.compat.v1 batch-norm layers are handled by "
        "freeze_batchnorm_stats=True), or leave %s out of the freeze pattern." % (
            len(names), "" if len(names) == 1 else "s", "\n".join(
                "  - frozen variable %r: %s write%s it" % (
                    name, ", ".join(writes[name]), "s" if len(writes[name]) == 1 else "")
                for name in names), ", ".join(map(repr, names))))
  _update_control.check_steps_run(visited, steps)


def build_train_spec(model_fn, features, labels, mode, params, config, *,
                     predicate: Optional[Callable[[VariableInfo], bool]],
                     fine_tuning: Optional[_finetune.FineTuning] = None):
  """Calls a model_fn in TRAIN mode with freezing, schedule and multipliers; checks the result.

  Args:
    model_fn: the model_fn.
    features, labels, mode, params, config: its arguments.
    predicate: what `freeze` freezes (None: nothing).
    fine_tuning: batch-norm statistics, unfreeze_at and lr_multipliers.

  Returns:
    (EstimatorSpec, TrainGraph).

  Raises:
    PatternError: an unfreeze_at or lr_multipliers pattern decided no variable.
    FreezeError: the train_op writes a frozen variable, or a scheduled one outside its gate.
  """
  fine_tuning = fine_tuning or _finetune.FineTuning()
  gates = _update_control.Gates()
  scope = FreezeScope(fine_tuning.frozen_predicate(predicate), fine_tuning=fine_tuning,
                      gates=gates)
  control = _update_control.UpdateControl(fine_tuning, gates)
  with scope, control:
    spec = _model_fn.call_model_fn(model_fn, features, labels, mode, params, config)
  if spec.train_op is not None:
    gates.read_before_step_increments(spec.train_op)
  scheduled = {**control.scheduled, **scope.scheduled}
  multipliers = dict(control.scaled)
  multipliers.update((n, 0.0) for n in scope.frozen if fine_tuning.multiplier(n) == 0)
  problems = fine_tuning.unused_patterns(
      scheduled=scheduled, scaled=multipliers, names=list(_apply.graph_variables()),
      optimizer_calls=control.optimizer_calls)
  if problems:
    raise PatternError(" ".join(problems))
  check_train_op(spec.train_op, scope.frozen,
                 scheduled={**control.scheduled_variables, **scope.scheduled_variables},
                 allowed_writers=control.allowed_writers | scope.allowed_writers,
                 steps=control.steps)
  return spec, _finetune.TrainGraph(list(scope.frozen), scheduled, multipliers)


def _pattern_predicate(pattern):
  patterns = _select.compile_patterns(pattern, "freeze")
  if not patterns:
    raise PatternError("freeze pattern is empty; pass a regex or a list of regexes")
  return patterns, lambda info: _select.first_match(patterns, info.name) is not None


def freeze(model_fn_or_estimator: _ModelOrEstimatorT, pattern: Patterns, *,
           freeze_batchnorm_stats: bool = True, unfreeze_at: _finetune.UnfreezeAt = None,
           lr_multipliers: _finetune.LrMultipliers = None) -> _ModelOrEstimatorT:
  """Freezes the variables whose names fully match `pattern` during training.

  Args:
    model_fn_or_estimator: a model_fn or a `tf.estimator.Estimator` (canned ones too).
    pattern: a regex or list of regexes, fully matched against variable names; None freezes
      nothing (for `unfreeze_at` / `lr_multipliers` alone).
    freeze_batchnorm_stats: a batch-norm layer any of whose variables is frozen keeps its moving
      statistics bit-identical and normalizes with them (inference mode); False lets them
      update as the model_fn says.
    unfreeze_at: {pattern: global step}: the matching variables stay frozen (values and
      optimizer slots) until that step and train from then on, in the same graph.
    lr_multipliers: {pattern: factor}: the optimizer's update of the matching variables is
      scaled by factor (0.1: a tenth of the step, for any optimizer; 0: frozen).

  Returns:
    The same kind as given: a model_fn, or a new Estimator (same model_dir, config, params and
    warm-start settings).

  Raises:
    WarmStartError: a bad unfreeze_at / lr_multipliers value, now.
    PatternError: bad regex, or (at graph build) a pattern that matches no variable.
    FreezeError: (at graph build) the train_op still updates a frozen variable.

  Example:
    >>> model_fn = warmstart.freeze(model_fn, "mnist/hidden/.*")
    >>> canned = warmstart.freeze(tf.estimator.DNNClassifier(...), None,
    ...                           unfreeze_at={"dnn/hiddenlayer_0/.*": 500})
  """
  fine_tuning = _finetune.FineTuning(freeze_batchnorm_stats=freeze_batchnorm_stats,
                                     unfreeze_at=unfreeze_at, lr_multipliers=lr_multipliers)
  if pattern is None:
    if not (fine_tuning.unfreeze_at or fine_tuning.lr_multipliers):
      raise PatternError("freeze pattern is None and neither unfreeze_at nor lr_multipliers is "
                         "given: nothing to do")
    patterns, predicate = (), None
  else:
    patterns, predicate = _pattern_predicate(pattern)

  def wrap(model_fn):
    def frozen_model_fn(features, labels, mode, params, config):
      if mode != tf.estimator.ModeKeys.TRAIN:
        return _model_fn.call_model_fn(model_fn, features, labels, mode, params, config)
      spec, graph = build_train_spec(model_fn, features, labels, mode, params, config,
                                     predicate=predicate, fine_tuning=fine_tuning)
      unused = _select.unmatched(patterns, list(_apply.graph_variables()), "freeze",
                                 "model variable")
      if unused:
        raise PatternError(" ".join(unused))
      logger.info("%s", graph.describe())
      return spec
    return frozen_model_fn

  return _model_fn.rewrap(model_fn_or_estimator, wrap)

"""The tf.estimator entry points: `settings`, `estimator_from`, and `plan` against a model_fn."""
import errno
import json
import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

import tensorflow as tf

from warmstart import _apply, _checkpoint, _drift_live, _finetune, _freeze, _model_fn
from warmstart._checkpoint import Source, VariableInfo
from warmstart._errors import WarmStartError
from warmstart._model_fn import ModelFnOrEstimator
from warmstart._plan import Adapters, FreezeSpec, Plan, Planner, ShapePolicies
from warmstart._rename import Rules
from warmstart._select import Patterns
from warmstart.sources import _writers

logger = logging.getLogger(__name__)

REPORT_FILE = "warmstart_report.json"


class _Settings(tf.estimator.WarmStartSettings):
  """A real `tf.estimator.WarmStartSettings` that plans against the graph when TF applies it.

  Estimators apply warm-start settings as `warm_start(*settings)` right after the model_fn has
  built the training graph. Unpacking this tuple plans the warm start against that graph's
  variables (full-match patterns, renames, kinds, every check and the report) and hands TF the
  exact variables to load, so none of TF's prefix-regex matching is involved.
  """

  def __new__(cls, planner: Planner, arguments: str):
    self = super().__new__(cls, ckpt_to_initialize_from=planner.source.prefix,
                           vars_to_warm_start=[])
    self._planner = planner
    self._arguments = arguments
    return self

  def __iter__(self):
    graph = tf.compat.v1.get_default_graph()
    if tf.executing_eagerly() or not graph.get_collection(
        tf.compat.v1.GraphKeys.GLOBAL_VARIABLES):
      return super().__iter__()  # Not inside a graph being warm-started: the plain tuple.
    variables = _apply.graph_variables(graph)
    plan = self._planner.plan([info for info, _ in variables.values()])
    logger.info("%s", plan.report)
    # Our initializers are installed now; TF's warm_start is left only vocabulary remapping.
    return iter(_apply.install(plan, variables))

  def __reduce__(self):
    raise TypeError("warmstart settings cannot be pickled; call warmstart.settings() again")

  def __repr__(self):
    return "warmstart.settings(%r, %s)" % (self._planner.source.prefix, self._arguments)


def settings(source: Source, *, include: Patterns = ".*", exclude: Patterns = None,
             rename: Rules = None, vocab: Optional[Mapping[str, Any]] = None,
             optimizer_state: str = "reset", step: Optional[int] = None,
             check_finite: bool = False, on_shape_mismatch: ShapePolicies = "error",
             adapt: Adapters = None) -> tf.estimator.WarmStartSettings:
  """Returns a `tf.estimator.WarmStartSettings` for any Estimator, canned ones included.

  Unlike TF's own, patterns fully match names (a list is a list of regexes, not prefixes),
  batch-norm moving statistics are warm-started, optimizer state is reset unless
  `optimizer_state="keep"`, and every pattern or rule that matches nothing is an error. The
  plan is made against the training graph when the Estimator applies the settings, and the
  report is logged at INFO.

  Args:
    source: a checkpoint prefix, directory, SavedModel directory or .npz file.
    include: regex or list of regexes over model variable names (fully matched).
    exclude: regex or list of regexes removed from what `include` selected.
    rename: {model_name_pattern: checkpoint_name_template}, a list of pairs, or a function
      model_name -> checkpoint_name or None (None: not renamed); see `suggest_rename`.
    vocab: {model_variable_name: tf.estimator.VocabInfo}, passed through to TF.
    optimizer_state: 'reset' (optimizer slots, beta powers and global_step keep their
      initializers) or 'keep'.
    step: pick this step in a directory source; -1 or None for the latest.
    check_finite: also refuse tensors to be loaded that hold NaN or Inf.
    on_shape_mismatch: 'error', 'skip', 'partial', 'input_channels' or 'squeeze', or a dict
      {pattern: policy}, as for `estimator_from` (e.g. a canned DNN with wider hidden layers).
    adapt: {pattern: fn}, as for `estimator_from`.

  Returns:
    A `tf.estimator.WarmStartSettings` to pass as `warm_start_from`.

  Raises:
    WarmStartError: (a subclass) for a bad argument or checkpoint, now; for a plan that does
      not fit the model, when training builds its graph.

  Example:
    >>> est = tf.estimator.DNNClassifier(..., warm_start_from=warmstart.settings(
    ...     "base_model", exclude="dnn/logits/.*"))
  """
  arguments = dict(include=include, exclude=exclude, rename=rename, vocab=vocab,
                   optimizer_state=optimizer_state, step=step, check_finite=check_finite,
                   on_shape_mismatch=on_shape_mismatch, adapt=adapt)
  planner = Planner(source, **arguments)
  return _Settings(planner, ", ".join("%s=%r" % kv for kv in arguments.items()
                                      if kv[1] is not None))


def _write_report(model_dir, report):
  """Writes the report as JSON into model_dir, atomically (whole or not at all)."""
  path = os.path.join(model_dir, REPORT_FILE)
  text = report.to_json()
  try:
    return _write_atomically(model_dir, path, text)
  except OSError as err:
    space = ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
      space = " (it needs %d bytes; %d are free)" % (len(text.encode()),
                                                    shutil.disk_usage(model_dir).free)
    raise WarmStartError("cannot write the warm-start report %s: %s%s. Free the space or move "
                         "what is in the way, then train again."
                         % (path, err.strerror or err, space)) from err


def _write_atomically(model_dir, path, text):
  if "://" in model_dir:  # Remote file systems: through tf.io.gfile, rename is atomic there.
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
      f.write(text)
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
    return path
  os.makedirs(model_dir, exist_ok=True)
  with _writers.atomic_file(path) as f:
    f.write(text.encode("utf-8"))
  logger.info("wrote warm-start report %s", path)
  return path


def _location(ref: _checkpoint.CheckpointRef) -> str:
  """The file or directory a resolved source lives in (symlinks resolved)."""
  if ref.kind == _checkpoint.SAVED_MODEL:  # <dir>/variables/variables
    return os.path.realpath(os.path.dirname(os.path.dirname(ref.prefix)))
  if ref.kind == _checkpoint.CHECKPOINT:
    return os.path.realpath(os.path.dirname(ref.prefix))
  return os.path.realpath(ref.prefix)


def _check_apart(model_dir: str, ref: _checkpoint.CheckpointRef, what: str = "model_dir") -> None:
  """Refuses a model_dir that is, contains or lies inside the source's location.

  Training there would treat the source as a checkpoint to resume, and TensorFlow's checkpoint
  rotation would then delete source files.
  """
  if "://" in model_dir:
    return
  target, source = os.path.realpath(model_dir), _location(ref)
  relation = ("is" if target == source else
              "contains" if source.startswith(target.rstrip(os.sep) + os.sep) else
              "lies inside" if target.startswith(source.rstrip(os.sep) + os.sep) else None)
  if relation:
    raise WarmStartError(
        "%s %s %s the warm-start source %s (%s): training there would resume from the source "
        "and checkpoint rotation would delete its files. Pick a %s outside it."
        % (what, model_dir, relation, ref.prefix, source, what))


def _check_writable(model_dir):
  """Fails now, not after the first training step, if model_dir cannot be written."""
  if "://" in model_dir:
    return  # Remote file systems report their own errors.
  existing = model_dir
  while not os.path.exists(existing):
    existing = os.path.dirname(os.path.abspath(existing))
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise WarmStartError(
        "model_dir %s cannot be written: %s is %s. Pick a directory you can write to."
        % (model_dir, existing, "not a directory" if not os.path.isdir(existing)
           else "not writable"))


def _frozen_from_report(model_dir):
  """The frozen names recorded by the first run, for resuming when the source is gone."""
  path = os.path.join(model_dir, REPORT_FILE)
  try:
    with tf.io.gfile.GFile(path) as f:
      frozen = json.load(f)["frozen"]
    if not isinstance(frozen, list) or not all(isinstance(name, str) for name in frozen):
      raise ValueError("'frozen' is not a list of names: %r" % (frozen,))
    return set(frozen)
  except (tf.errors.OpError, OSError, ValueError, KeyError, TypeError) as err:
    raise WarmStartError(
        "model_dir %s holds a checkpoint, the warm-start source is gone and %s cannot be read "
        "(%s): cannot tell which variables to freeze" % (model_dir, path, err)) from err


def estimator_from(model_fn_or_estimator: ModelFnOrEstimator, *,
                   model_dir: Union[str, os.PathLike], warm_start_from: Source,
                   include: Patterns = ".*", exclude: Patterns = None, rename: Rules = None,
                   vocab: Optional[Mapping[str, Any]] = None, freeze: FreezeSpec = False,
                   on_shape_mismatch: ShapePolicies = "error", optimizer_state: str = "reset",
                   step: Optional[int] = None, params: Optional[dict] = None,
                   config: Optional[tf.estimator.RunConfig] = None,
                   check_finite: bool = False, freeze_batchnorm_stats: bool = True,
                   unfreeze_at: _finetune.UnfreezeAt = None,
                   lr_multipliers: _finetune.LrMultipliers = None,
                   track_drift: _drift_live.TrackDrift = None,
                   track_drift_max_bytes: Optional[int] = _drift_live.DEFAULT_MAX_BYTES,
                   adapt: Adapters = None) -> tf.estimator.Estimator:
  """Builds an Estimator that warm-starts from a checkpoint once, and optionally fine-tunes.

  On the first training run the planned variables are initialized from `warm_start_from`
  (checkpoint-backed initializers, never constants in the graph), the report is logged once at
  INFO, written to `model_dir/warmstart_report.json` and shown in TensorBoard's Text tab. When
  `model_dir` already holds a checkpoint, training resumes from it, nothing is warm-started
  again, and the report says so; frozen variables stay frozen and the schedule goes on from the
  checkpoint's global step.

  Beyond freezing for the whole run: a frozen batch-norm layer keeps its moving statistics and
  normalizes with them; `unfreeze_at` trains variables from a global step on (gradual
  unfreezing); `lr_multipliers` scales their updates (discriminative fine-tuning). Both act on
  the update of any `tf.compat.v1.train.Optimizer` or `tf.keras.optimizers.legacy` optimizer,
  not on the gradients, so they mean the same for SGD, momentum and Adam.

  Args:
    model_fn_or_estimator: a model_fn, or an Estimator (canned too) whose model_fn is used.
    model_dir: where the new model trains.
    warm_start_from: the source checkpoint (prefix, directory, SavedModel or .npz).
    include, exclude, rename, vocab, optimizer_state, step: as for `settings`.
    freeze: False; True to freeze exactly what is warm-started; or a regex / list of regexes.
    on_shape_mismatch: 'error', 'skip', 'partial', 'input_channels' or 'squeeze', or a dict
      {pattern: policy} (first match wins); see the README's "Transfer to another
      architecture".
    params: params for the model_fn (default: the estimator's).
    config: a `tf.estimator.RunConfig` (default: the estimator's); its model_dir is replaced.
    check_finite: also refuse tensors to be loaded that hold NaN or Inf.
    freeze_batchnorm_stats: True (default): a batch-norm layer any of whose variables is frozen
      (Keras, tf.compat.v1.layers, canned estimators) keeps `moving_mean` / `moving_variance`
      bit-identical and normalizes with them, as in inference; under `unfreeze_at` until the
      layer's step. False: the statistics are never frozen and update as the model_fn says.
    unfreeze_at: {pattern: global step}: the matching variables stay bit-identical until that
      global step and train from it on (the update made at step N is the first to move them).
      Their optimizer slots stay at their initial values until then too, so Adam starts from
      zero moments at step N (its bias correction follows the shared step counter). Overrides
      `freeze` for the variables it matches, so `freeze=True` plus a schedule loads everything
      and unfreezes layer by layer. A run resumed after step N trains them.
    lr_multipliers: {pattern: factor}: the optimizer's update of the matching variables is
      scaled: they become `before + factor * (after - before)` after every step, which for SGD,
      momentum, Adam, RMSProp and Adagrad is training them with `learning_rate * factor`. A
      factor of 0 freezes them (listed as frozen). Combine with `unfreeze_at` for "train the
      backbone from step N, at a tenth of the rate".
    track_drift: True, or a regex / list of regexes of warm-started variables: write their drift
      from the source, ‖w − w₀‖ / ‖w₀‖ per layer, as TensorBoard scalars
      `warmstart/drift/<layer>` beside the loss, every `save_summary_steps` steps (the same
      values `warmstart.drift` computes from the checkpoints later). Memory: a copy of each
      tracked source tensor (as many bytes as those tensors; `warmstart ls` shows them), on the
      device of its variable, plus float64 scratch while the values are computed.
    track_drift_max_bytes: refuse a track_drift whose copies would take more than this many
      bytes (default 512 MiB); None for no limit.

    adapt: {pattern: fn}: fn(the checkpoint tensor as a numpy array) returns the matching model
      variable's value (e.g. `lambda w: w[..., 1:]` drops a background class).

  The first pattern of `unfreeze_at` or `lr_multipliers` that matches a variable decides for
  it; a pattern that decides no variable the optimizer trains is an error.

  Returns:
    A `tf.estimator.Estimator`.

  Raises:
    WarmStartError: (a subclass) for bad arguments or source now; PlanError / FreezeError when
      the training graph is built and does not fit.

  Example:
    >>> est = warmstart.estimator_from(model_fn, model_dir="model_ext",
    ...                                warm_start_from="model", include="mnist/hidden/.*",
    ...                                freeze=True)
    >>> est.train(input_fn, max_steps=1000)
    >>> est = warmstart.estimator_from(model_fn, model_dir="model_ext2",
    ...                                warm_start_from="model", freeze=True,
    ...                                unfreeze_at={"mnist/hidden/.*": 500},
    ...                                lr_multipliers={"mnist/hidden/.*": 0.1})
  """
  if not model_dir:
    raise WarmStartError("model_dir is required: the warm-started model trains there")
  model_dir = os.fspath(model_dir)
  _check_writable(model_dir)
  drift_patterns = _drift_live.compile_track_drift(track_drift, track_drift_max_bytes)
  arguments = dict(include=include, exclude=exclude, rename=rename, vocab=vocab, freeze=freeze,
                   on_shape_mismatch=on_shape_mismatch, optimizer_state=optimizer_state,
                   step=step, check_finite=check_finite, adapt=adapt)
  fine_tuning = _finetune.FineTuning(freeze_batchnorm_stats=freeze_batchnorm_stats,
                                     unfreeze_at=unfreeze_at, lr_multipliers=lr_multipliers)
  try:
    planner = Planner(warm_start_from, **arguments)
    _check_apart(model_dir, planner.source)
  except _checkpoint.CheckpointNotFoundError:
    if not tf.train.latest_checkpoint(model_dir):
      raise
    # Resuming: the source is not needed any more (it may have been moved or deleted).
    logger.warning("warm-start source %s is gone; model_dir %s holds a checkpoint, so training "
                   "resumes from it", warm_start_from, model_dir)
    planner = None

  def wrap(model_fn):
    def warm_started_model_fn(features, labels, mode, params, config):
      if mode != tf.estimator.ModeKeys.TRAIN:
        return _model_fn.call_model_fn(model_fn, features, labels, mode, params, config)
      resumed_from = tf.train.latest_checkpoint(config.model_dir)
      if planner is not None:
        predicate = planner.is_frozen if planner.freezes else None
      elif freeze is not False:
        frozen_names = _frozen_from_report(config.model_dir)
        def predicate(info):
          return info.name in frozen_names
      else:
        predicate = None
      spec, graph = _freeze.build_train_spec(model_fn, features, labels, mode, params, config,
                                             predicate=predicate, fine_tuning=fine_tuning)
      if planner is None:
        logger.info("warm start NOT applied: training resumes from %s (%s)", resumed_from,
                    graph.describe())
        if drift_patterns is not None:
          logger.warning("track_drift: the warm-start source is gone, so drift is not tracked")
        return spec
      variables = _apply.graph_variables()
      plan = planner.plan([info for info, _ in variables.values()], resumed_from=resumed_from)
      graph.update(plan.report)
      if not resumed_from:
        _apply.apply(plan, variables)
        if config.is_chief:
          _write_report(config.model_dir, plan.report)
        # The chief's session start runs the initializers that read the source: one more look.
        spec = spec._replace(training_chief_hooks=(*spec.training_chief_hooks,
                                                   _SourceUnchanged(plan)))
      text = str(plan.report)
      logger.info("%s", text)
      # Indented lines render as preformatted text in TensorBoard's Text tab.
      tf.compat.v1.summary.text(
          "warmstart_report", tf.constant("\n".join("    " + line for line in text.splitlines())))
      if drift_patterns is not None:
        hook = _drift_live.build_hook(plan, variables, planner.source_variables, drift_patterns,
                                      track_drift_max_bytes, config)
        if hook is not None:
          spec = spec._replace(training_chief_hooks=(*spec.training_chief_hooks, hook))
      return spec
    return warm_started_model_fn

  wrapped = _model_fn.rewrap(model_fn_or_estimator, wrap, model_dir=model_dir, params=params,
                            config=config, warm_start_from=warm_start_from)
  if isinstance(wrapped, tf.estimator.Estimator):
    return wrapped
  config = (config or tf.estimator.RunConfig()).replace(model_dir=model_dir)
  return tf.estimator.Estimator(wrapped, model_dir=model_dir, config=config, params=params)


class _SourceUnchanged(tf.compat.v1.train.SessionRunHook):
  """Refuses, before the session starts, a source changed since its tensors were checked."""

  def __init__(self, plan):
    self._plan = plan

  def begin(self):
    if self._plan.source_stamp is not None:
      _checkpoint.check_unchanged(self._plan.source, self._plan.source_stamp)


def plan_model(planner: Planner, target: ModelFnOrEstimator, *, params: Optional[dict],
               config: Optional[tf.estimator.RunConfig],
               input_fn: Optional[Callable[[], Any]],
               fine_tuning: Optional[_finetune.FineTuning] = None) -> Plan:
  """`warmstart.plan` against a model_fn or Estimator: builds its training graph, then plans."""
  with tf.Graph().as_default():
    model_fn, features, labels, params, config = _training_inputs("plan", target, input_fn,
                                                                  params, config)
    _, graph = _freeze.build_train_spec(
        model_fn, features, labels, tf.estimator.ModeKeys.TRAIN, params or {},
        config or tf.estimator.RunConfig(),
        predicate=planner.is_frozen if planner.freezes else None, fine_tuning=fine_tuning)
    result = planner.plan([info for info, _ in _apply.graph_variables().values()])
    graph.update(result.report)
    return result


def model_variables(target: ModelFnOrEstimator, *, input_fn: Optional[Callable[[], Any]],
                    params: Optional[dict] = None,
                    config: Optional[tf.estimator.RunConfig] = None) -> list[VariableInfo]:
  """The variables a model_fn or Estimator creates for training, in creation order."""
  with tf.Graph().as_default():
    model_fn, features, labels, params, config = _training_inputs(
        "suggest_rename", target, input_fn, params, config)
    _model_fn.call_model_fn(model_fn, features, labels, tf.estimator.ModeKeys.TRAIN,
                            params or {}, config or tf.estimator.RunConfig())
    return [info for info, _ in _apply.graph_variables().values()]


def _training_inputs(caller, target, input_fn, params, config):
  """(model_fn, features, labels, params, config) to build `target`'s training graph with.

  Creates the global step first, as Estimator does before calling the model_fn.
  """
  if input_fn is None:
    raise WarmStartError("%s() needs input_fn to build the graph of a model_fn or Estimator "
                         "target (or pass a checkpoint of the target model instead)" % caller)
  tf.compat.v1.train.get_or_create_global_step()
  features, labels = _input(input_fn)
  model_fn = target
  if isinstance(target, tf.estimator.Estimator):
    params = target.params if params is None else params
    config = config or target.config
    model_fn = target.model_fn
  elif not callable(target):
    raise WarmStartError("%s() target must be a checkpoint path, a model_fn or an "
                         "Estimator; got %s %r" % (caller, type(target).__name__, target))
  return model_fn, features, labels, params, config


def _input(input_fn):
  """(features, labels) from an input_fn returning a Dataset, a tuple, or features alone."""
  result = input_fn()
  if isinstance(result, tf.data.Dataset):
    result = tf.compat.v1.data.make_one_shot_iterator(result).get_next()
  if isinstance(result, (tuple, list)) and len(result) == 2:
    return result[0], result[1]
  return result, None

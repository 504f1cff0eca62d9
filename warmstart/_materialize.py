"""`materialize`: a warm-started model written as a step-0 checkpoint, before any training.

DeepMedic's `-newModel ... -pretrained modelA` saves `modelB.pretrained`: model B with model A's
weights transferred, ready to inspect, diff, train or transfer again. Here that is a directory
holding `model.ckpt-0` (+ the `checkpoint` state file, so it is a valid model_dir) and the
`warmstart_report.json` of the transfer. It is built in a temporary directory beside `out_dir`
and renamed into place, so no crash leaves a partial checkpoint that `resolve_checkpoint` picks.
"""
import glob
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

import tensorflow as tf

from warmstart import _apply, _estimator, _freeze
from warmstart._checkpoint import Source
from warmstart._errors import WarmStartError
from warmstart._model_fn import ModelFnOrEstimator
from warmstart._plan import Adapters, Plan, Planner, ShapePolicies
from warmstart._rename import Rules
from warmstart._select import Patterns

logger = logging.getLogger(__name__)


def materialize(model_fn_or_estimator: ModelFnOrEstimator, *,
                out_dir: Union[str, os.PathLike], warm_start_from: Source,
                input_fn: Callable[[], Any], params: Optional[dict] = None,
                config: Optional[tf.estimator.RunConfig] = None, include: Patterns = ".*",
                exclude: Patterns = None, rename: Rules = None,
                vocab: Optional[Mapping[str, Any]] = None,
                on_shape_mismatch: ShapePolicies = "error", adapt: Adapters = None,
                optimizer_state: str = "reset", step: Optional[int] = None,
                check_finite: bool = False) -> Plan:
  """Writes a model warm-started from a checkpoint as a step-0 checkpoint in `out_dir`.

  Builds the model's training graph (so optimizer slots exist, at their initializers unless
  `optimizer_state="keep"`), applies the warm start, and saves every variable as
  `out_dir/model.ckpt-<global step>` (step 0 unless the step was kept) with a `checkpoint` state
  file and `warmstart_report.json`. The result can be diffed, used as a model_dir (training
  resumes from it) or as `warm_start_from`. Freezing is a training-time choice: pass `freeze` to
  `estimator_from` when training from it.

  Args:
    model_fn_or_estimator: the new model (model B): a model_fn or an Estimator.
    out_dir: the directory to create; it must not exist or be empty. Written in a temporary
      directory beside it and renamed into place.
    warm_start_from: the source checkpoint (model A).
    input_fn: gives the features and labels the model_fn builds its graph from (nothing is read
      from it).
    params, config: for the model_fn (default: the Estimator's); `config.tf_random_seed` seeds
      the initializers of what is not warm-started.
    include, exclude, rename, vocab, on_shape_mismatch, adapt, optimizer_state, step,
      check_finite: as for `estimator_from`.

  Returns:
    The Plan that was applied (`.report` is also in `out_dir/warmstart_report.json`).

  Raises:
    WarmStartError: `out_dir` holds a checkpoint or other files (it is left untouched), or bad
      arguments; PlanError: the warm start does not fit the model (nothing is written).

  Example:
    >>> warmstart.materialize(model_fn, out_dir="modelB.pretrained", warm_start_from="modelA",
    ...                       input_fn=input_fn, exclude="cls/.*",
    ...                       on_shape_mismatch="partial")
  """
  if not out_dir:
    raise WarmStartError("out_dir is required: the warm-started checkpoint is written there")
  out_dir = os.fspath(out_dir)
  if "://" in out_dir:
    raise WarmStartError("materialize writes a local directory (built beside it and renamed "
                         "atomically); got %s. Materialize locally and copy the directory." %
                         out_dir)
  out_dir = os.path.abspath(out_dir)
  _check_out_dir(out_dir)
  _estimator._check_writable(out_dir)  # pylint: disable=protected-access
  if not callable(input_fn):
    raise WarmStartError("materialize() needs input_fn (features and labels to build the model's "
                         "graph from); got %r" % (input_fn,))
  if not isinstance(model_fn_or_estimator, tf.estimator.Estimator) and not callable(
      model_fn_or_estimator):
    raise WarmStartError("materialize() takes a model_fn or an Estimator; got %s %r" % (
        type(model_fn_or_estimator).__name__, model_fn_or_estimator))
  if isinstance(model_fn_or_estimator, tf.estimator.Estimator) and (
      model_fn_or_estimator._warm_start_settings is not None):  # pylint: disable=protected-access
    raise WarmStartError(
        "the estimator already has warm_start_from=%r; materializing it from %r would apply two "
        "warm starts. Build the estimator without warm_start_from." % (
            model_fn_or_estimator._warm_start_settings,  # pylint: disable=protected-access
            warm_start_from))
  planner = Planner(warm_start_from, include=include, exclude=exclude, rename=rename,
                    vocab=vocab, on_shape_mismatch=on_shape_mismatch, adapt=adapt,
                    optimizer_state=optimizer_state, step=step, check_finite=check_finite)
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  # A hidden name beside out_dir: never the directory a user or resolve_checkpoint looks in.
  temporary = tempfile.mkdtemp(prefix=".%s.tmp-" % os.path.basename(out_dir), dir=parent)
  try:
    with tf.Graph().as_default():
      # pylint: disable-next=protected-access
      model_fn, features, labels, params, config = _estimator._training_inputs(
          "materialize", model_fn_or_estimator, input_fn, params, config)
      config = config or tf.estimator.RunConfig()
      if config.tf_random_seed is not None:  # as Estimator does
        tf.compat.v1.set_random_seed(config.tf_random_seed)
      _freeze.build_train_spec(model_fn, features, labels, tf.estimator.ModeKeys.TRAIN,
                               params or {}, config, predicate=None)
      variables = _apply.graph_variables()
      plan = planner.plan([info for info, _ in variables.values()])
      _apply.apply(plan, variables)
      saver = tf.compat.v1.train.Saver(sharded=True, save_relative_paths=True)
      with tf.compat.v1.Session() as session:
        session.run([tf.compat.v1.global_variables_initializer(),
                     tf.compat.v1.local_variables_initializer(),
                     tf.compat.v1.tables_initializer()])
        global_step = int(session.run(tf.compat.v1.train.get_global_step()))
        prefix = saver.save(session, os.path.join(temporary, "model.ckpt"),
                            global_step=global_step, write_meta_graph=False)
    # No temporary file needed: the whole directory appears at once.
    with open(os.path.join(temporary, _estimator.REPORT_FILE), "w") as f:
      f.write(plan.report.to_json())
    _sync_directory(temporary)
    try:
      os.rename(temporary, out_dir)  # atomic; replaces out_dir only if it is an empty directory
    except OSError as err:
      raise WarmStartError("cannot create out_dir %s: %s (it was created or filled meanwhile?); "
                           "nothing was written there" % (out_dir, err.strerror)) from err
    _sync(parent)
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    raise
  logger.info("%s", plan.report)
  logger.info("materialized the warm-started model as %s", os.path.join(
      out_dir, os.path.basename(prefix)))
  return plan


def _check_out_dir(out_dir):
  """Refuses an out_dir that holds a checkpoint or anything else (and leaves it untouched)."""
  if not os.path.lexists(out_dir):
    return
  if not os.path.isdir(out_dir):
    raise WarmStartError("out_dir %s exists and is not a directory; pick a new out_dir" % out_dir)
  checkpoints = sorted(glob.glob(os.path.join(glob.escape(out_dir), "*.index")))
  if checkpoints or os.path.exists(os.path.join(out_dir, "checkpoint")):
    raise WarmStartError(
        "out_dir %s already holds a checkpoint (%s); materialize never writes over one. Pick a "
        "new out_dir, or delete this one first." % (
            out_dir, os.path.basename(checkpoints[-1]) if checkpoints else "a 'checkpoint' file"))
  existing = sorted(os.listdir(out_dir))
  if existing:
    raise WarmStartError("out_dir %s is not empty (it holds %s): materialize creates the whole "
                         "directory. Pick a new or empty out_dir." % (
                             out_dir, ", ".join(existing[:5]) + (" ..." if len(existing) > 5
                                                                 else "")))


def _sync_directory(directory):
  """Flushes a directory's files and entries to disk, so the rename never publishes lost data."""
  for name in os.listdir(directory):
    _sync(os.path.join(directory, name))
  _sync(directory)


def _sync(path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)

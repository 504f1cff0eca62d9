"""Calling and wrapping model_fns the way tf.estimator does."""
from typing import Any, Callable, Union

import tensorflow as tf
from tensorflow.python.util import function_utils  # pylint: disable=g-direct-tensorflow-import

from warmstart._errors import WarmStartError

# A model_fn (features, labels, mode, params, config -> EstimatorSpec) or an Estimator.
ModelFnOrEstimator = Union[Callable[..., Any], tf.estimator.Estimator]


def call_model_fn(model_fn, features, labels, mode, params, config):
  """Calls `model_fn` with the arguments it declares, like `Estimator._call_model_fn`."""
  args = function_utils.fn_args(model_fn)
  kwargs = {}
  if "labels" in args:
    kwargs["labels"] = labels
  elif labels is not None:
    raise WarmStartError("model_fn does not take labels, but input_fn returns labels")
  for name, value in (("mode", mode), ("params", params), ("config", config)):
    if name in args:
      kwargs[name] = value
  return model_fn(features=features, **kwargs)


def rewrap(model_fn_or_estimator, wrap, model_dir=None, params=None, config=None,
           warm_start_from=None):
  """Applies `wrap` to a model_fn, or to an Estimator's model_fn giving a new Estimator.

  Returns the same kind as given. An Estimator keeps its model_dir, config, params and
  warm-start settings unless overridden. `warm_start_from` names the source the wrapped model_fn
  warm-starts from itself: an Estimator that has warm-start settings of its own is then refused.
  """
  if isinstance(model_fn_or_estimator, tf.estimator.Estimator):
    estimator = model_fn_or_estimator
    existing = estimator._warm_start_settings  # pylint: disable=protected-access
    if warm_start_from is not None and existing is not None:
      raise WarmStartError(
          "the estimator already has warm_start_from=%r; warm-starting it again from %r would "
          "apply two warm starts. Build the estimator without warm_start_from."
          % (existing, warm_start_from))
    model_dir = model_dir or estimator.model_dir
    config = (config or estimator.config).replace(model_dir=model_dir)
    return tf.estimator.Estimator(
        model_fn=wrap(estimator.model_fn), model_dir=model_dir, config=config,
        params=estimator.params if params is None else params,
        warm_start_from=existing)
  if callable(model_fn_or_estimator):
    return wrap(model_fn_or_estimator)
  raise WarmStartError("expected a model_fn or a tf.estimator.Estimator; got %s %r"
                       % (type(model_fn_or_estimator).__name__, model_fn_or_estimator))

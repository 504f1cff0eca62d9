"""What kind of state a variable holds, judged from its name and dtype.

Kinds decide what `optimizer_state="reset"` leaves alone: optimizer slots (Adam's m and v,
momentum, accumulators, `beta1_power`...) and the step counter are reset, while weights and
batch-norm moving statistics are warm-started.
"""
import re

WEIGHT = "weight"
BATCHNORM_STAT = "batchnorm_stat"
OPTIMIZER_SLOT = "optimizer_slot"
STEP = "step"
OTHER = "other"
KINDS = (WEIGHT, BATCHNORM_STAT, OPTIMIZER_SLOT, STEP, OTHER)

# Slot names of tf.compat.v1.train optimizers: `<var>/<Optimizer>` (the `_1` forms are the
# second slot, e.g. Adam's v).
_V1_SLOTS = (
    "Adam", "Adam_1", "Momentum", "RMSProp", "RMSProp_1", "Adagrad", "AdagradDA",
    "AdagradDA_1", "Ftrl", "Ftrl_1", "Adadelta", "Adadelta_1", "ProximalAdagrad",
    "ProximalAdagrad_1", "Nadam", "Nadam_1", "AdaMax", "AdaMax_1", "LazyAdam", "LazyAdam_1")
# Keras optimizers built in graph mode keep their state under `training/<Optimizer>/...`.
_KERAS_SLOT_PATH = re.compile(r"(^|.*/)training(_\d+)?/[A-Za-z]+\w*/.+")
_STEP = re.compile(r"(^|.*/)(global_step|iter|iterations)(/\.ATTRIBUTES/VARIABLE_VALUE)?")
_OPTIMIZER_SCALAR = re.compile(r"(^|.*/)(beta1_power|beta2_power)(_\d+)?")
# `running_mean` / `running_var`: the same statistics as named by PyTorch-converted checkpoints
# (`layer1.0.bn1.running_mean`), so that suggest_rename can pair them with `moving_mean`.
_BATCHNORM = re.compile(
    r"(^|.*[/.])(moving_mean|moving_variance|running_mean|running_var|renorm_mean|renorm_stddev"
    r"|renorm_stddev_weight|renorm_mean_weight)(/\.ATTRIBUTES/VARIABLE_VALUE)?")
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64", "half", "float", "double",
                 "complex64", "complex128", "float8_e5m2", "float8_e4m3fn")


def kind_of(name, dtype=None):
  """Returns the kind of a variable: 'weight', 'batchnorm_stat', 'optimizer_slot', 'step' or 'other'.

  Args:
    name: the variable name, without ':0'.
    dtype: its dtype name ('float32', ...), or None when unknown.
  """
  if _STEP.fullmatch(name) and (dtype is None or dtype.startswith("int")):
    return STEP
  last = name.rsplit("/", 1)[-1]
  if (".OPTIMIZER_SLOT/" in name or last in _V1_SLOTS or _OPTIMIZER_SCALAR.fullmatch(name)
      or _KERAS_SLOT_PATH.fullmatch(name)):
    return OPTIMIZER_SLOT
  if _BATCHNORM.fullmatch(name):
    return BATCHNORM_STAT
  if dtype is None or dtype in _FLOAT_DTYPES:
    return WEIGHT
  return OTHER

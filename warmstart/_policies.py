"""Shape policies and adapters: how a checkpoint tensor of another shape fills a model variable.

`on_shape_mismatch` picks one policy per variable (globally, or `{pattern: policy}`, first match
wins):

- "error" (default): a mismatch is a plan problem that shows both shapes and the fixes.
- "skip": the variable keeps its initializer; the report says why.
- "partial": equal ranks; the block `[0:min(a_i, b_i)]` on every axis is copied and the rest of
  the variable keeps its initializer's value (DeepMedic: "if B is twice as wide, half its kernels
  stay random"). For a kernel of rank >= 3 the spatial axes (all but the last two) must be equal:
  a 3x3x3 kernel never lands in a 5x5x5 one.
- "input_channels": only axis -2 (`[..., in, out]`) differs, as in a first layer trained on
  another number of input channels: a target of 1 channel gets the sum over the source's input
  channels; N channels get the source's channels repeated cyclically and scaled by
  `source_in / N`, so a constant input gives the same response (timm's `adapt_input_conv`).
- "squeeze": the shapes differ only by axes of size 1 (slim's 1x1-conv classifier
  `[1, 1, 2048, C]` and a Dense `[2048, C]`).

The choice is made from the two shapes alone, so it is known before any graph exists (that is
what `freeze=True` needs). `adapt={pattern: fn}` covers the rest: `fn` maps the source's numpy
array to the model variable's value; it runs when the plan is made.
"""
import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

import numpy as np

from warmstart import _dtypes, _select
from warmstart._errors import WarmStartError

ERROR = "error"
SKIP = "skip"
PARTIAL = "partial"
INPUT_CHANNELS = "input_channels"
SQUEEZE = "squeeze"
POLICIES = (ERROR, SKIP, PARTIAL, INPUT_CHANNELS, SQUEEZE)
# The policy recorded for a variable whose value a user's adapt function computed.
ADAPT = "adapt"

# on_shape_mismatch: one policy for every variable, or {pattern: policy} (first match wins).
ShapePolicies = Union[str, Mapping[str, str]]
# adapt: {pattern: fn(numpy array of the checkpoint tensor) -> the model variable's value}.
Adapters = Optional[Mapping[str, Callable[[np.ndarray], Any]]]

Shape = tuple[int, ...]


def _shape(shape) -> str:
  return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def compile_shape_policies(on_shape_mismatch: ShapePolicies):
  """Returns [(Pattern or None for 'every variable', policy)] in the order to try."""
  def check(policy):
    if policy not in POLICIES:
      raise WarmStartError("on_shape_mismatch must be one of %s (or a dict {pattern: policy}); "
                           "got %r" % (", ".join(map(repr, POLICIES)), policy))
    return policy
  if isinstance(on_shape_mismatch, Mapping):
    return [(_select.compile_pattern(p, "on_shape_mismatch"), check(policy))
            for p, policy in on_shape_mismatch.items()]
  return [(None, check(on_shape_mismatch))]


@dataclasses.dataclass(frozen=True)
class Adapter:
  """A user's adapt function and the pattern that chose it."""
  pattern: _select.Pattern
  fn: Callable[[np.ndarray], Any]

  def __str__(self):
    return "adapt[%r]" % self.pattern.text


def compile_adapters(adapt: Adapters) -> tuple[Adapter, ...]:
  """Validates `adapt={pattern: fn}`."""
  if adapt is None:
    return ()
  if not isinstance(adapt, Mapping):
    raise WarmStartError("adapt must be a dict {pattern: fn}, fn taking the checkpoint tensor "
                         "as a numpy array and returning the model variable's value; got %r"
                         % (adapt,))
  adapters = []
  for text, fn in adapt.items():
    if not callable(fn):
      raise WarmStartError("adapt[%r] must be a function (numpy array -> numpy array); got %s "
                           "%r" % (text, type(fn).__name__, fn))
    adapters.append(Adapter(_select.compile_pattern(text, "adapt"), fn))
  return tuple(adapters)


def block(shape: Shape, source_shape: Shape) -> Shape:
  """The block a partial copy fills: min(model, source) on every axis."""
  return tuple(min(a, b) for a, b in zip(shape, source_shape))


def block_text(shape: Shape, source_shape: Shape) -> str:
  """The copied block as an index: `[0:4, 0:3, :, :]` (':' where the axis is whole on both)."""
  return "[%s]" % ", ".join(":" if a == b else "0:%d" % min(a, b)
                            for a, b in zip(shape, source_shape))


def describe(policy: str, shape: Shape, source_shape: Shape) -> str:
  """What a policy does to one variable, for the report."""
  if policy == PARTIAL:
    return "block %s copied, the rest keeps its initializer" % block_text(shape, source_shape)
  if policy == INPUT_CHANNELS:
    if shape[-2] == 1:
      return "sum over the %d input channels" % source_shape[-2]
    return "%d input channels repeated cyclically to %d, scaled by %d/%d" % (
        source_shape[-2], shape[-2], source_shape[-2], shape[-2])
  if policy == SQUEEZE:
    return "reshaped (axes of size 1)"
  return ""


def check(policy: str, name: str, shape: Shape, dtype: str, checkpoint_name: str,
          source_shape: Shape) -> str:
  """The problem with filling model variable `name` under `policy`, or '' if it can be done.

  Only called for 'partial', 'input_channels' and 'squeeze' and shapes that differ.
  """
  sides = "model %s vs checkpoint %r %s" % (_shape(shape), checkpoint_name, _shape(source_shape))
  fix = ("Exclude it (exclude=%r), skip it ({%r: 'skip'}), rename it to a tensor that fits, or "
         "compute its value with adapt={%r: fn}." % (name, name, name))
  if policy == PARTIAL:
    if len(shape) != len(source_shape):
      return ("on_shape_mismatch='partial' cannot copy into %r: the ranks differ (%s). %s%s" % (
          name, sides, "They differ only by axes of size 1: use 'squeeze'. " if _squeezed(
              shape) == _squeezed(source_shape) else "", fix))
    if len(shape) >= 3 and shape[:-2] != source_shape[:-2]:
      return ("on_shape_mismatch='partial' cannot copy into %r: the spatial axes (all but the "
              "last two) differ (%s); a %s kernel does not land in a %s one. %s" % (
                  name, sides, "x".join(map(str, source_shape[:-2])),
                  "x".join(map(str, shape[:-2])), fix))
    return ""
  if policy == INPUT_CHANNELS:
    if len(shape) < 2 or len(shape) != len(source_shape) or (
        shape[:-2] + shape[-1:] != source_shape[:-2] + source_shape[-1:]):
      return ("on_shape_mismatch='input_channels' cannot adapt %r: only axis -2 (the input "
              "channels of [..., in, out]) may differ (%s). %s" % (name, sides, fix))
    if dtype not in _FLOATS:
      return ("on_shape_mismatch='input_channels' cannot adapt %r: it is %s, and the channels "
              "are summed and scaled. %s" % (name, dtype, fix))
    return ""
  if policy == SQUEEZE:
    if _squeezed(shape) != _squeezed(source_shape):
      return ("on_shape_mismatch='squeeze' cannot reshape into %r: the shapes differ by more "
              "than axes of size 1 (%s). %s" % (name, sides, fix))
    return ""
  raise AssertionError(policy)


_FLOATS = ("float16", "bfloat16", "float32", "float64")


def _squeezed(shape):
  return tuple(d for d in shape if d != 1)


def adapt_value(adapter: Adapter, value: np.ndarray, name: str, shape: Shape, dtype: str,
                checkpoint_name: str) -> tuple[Optional[np.ndarray], str]:
  """Runs a user's adapt function; returns (the model variable's value, '') or (None, problem).

  The result must have the model variable's shape; it is cast to the variable's dtype where
  numpy's 'same_kind' rule allows (float64 to float32, int to float), never otherwise (complex
  to float, float to int).
  """
  try:
    result = np.asarray(adapter.fn(value))
  except Exception as err:  # The user's function: its error becomes a plan problem.
    return None, "%s raised %s for %r (checkpoint %r %s): %s" % (
        adapter, type(err).__name__, name, checkpoint_name, _shape(value.shape), err)
  if result.shape != tuple(shape):
    return None, ("%s returned shape %s for %r but the model variable is %s (checkpoint %r "
                  "is %s). Make the function return the model variable's shape." % (
                      adapter, _shape(result.shape), name, _shape(shape), checkpoint_name,
                      _shape(value.shape)))
  target = _dtypes.numpy_dtype(dtype)
  if target is None:
    return None, "%s cannot fill %r: its dtype %s has no numpy values" % (adapter, name, dtype)
  if result.dtype != target:
    if not np.can_cast(result.dtype, target, casting="same_kind"):
      return None, ("%s returned dtype %s for %r, which is %s; cast the result (e.g. "
                    ".astype(np.%s))." % (adapter, result.dtype, name, dtype, target.name))
    result = result.astype(target)
  return result, ""

"""PyTorch's tensor layouts, presented in TensorFlow's (`Source(path, layout="torch")`).

PyTorch stores a `Linear` weight as [out, in] and a `ConvNd` weight as [out, in, *kernel];
TensorFlow's `Dense` kernel is [in, out] and its `ConvNd` kernel [*kernel, in, out]. With
`layout="torch"` the tensors named `...weight` of rank 2 to 5 are transposed accordingly (a
`ConvTransposeNd` weight, [in, out, *kernel], lands in TensorFlow's [*kernel, out, in] by the same
permutation); embedding tables ([num, dim] in both) and every other tensor stay as they are. Each
transposed tensor says so in `notes`, which listings and warm-start reports show. Nothing is
transposed without the option.

Caveat: a depthwise convolution's weight ([channels * multiplier, 1, *kernel] in PyTorch) becomes
[*kernel, 1, channels * multiplier]; TensorFlow's depthwise kernel is [*kernel, channels,
multiplier]: the same bytes, reshaped.
"""
import re
from typing import Optional

import numpy as np

from warmstart._checkpoint import VariableInfo
from warmstart.sources._base import Reader

_EMBEDDING = re.compile(r".*embed.*|wte|wpe")  # a name component of an embedding table
_CONV = {3: "Conv1d", 4: "Conv2d", 5: "Conv3d"}


def _shape(shape) -> str:
  return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def permutation(name: str, shape: tuple[int, ...]) -> tuple[Optional[tuple[int, ...]], str]:
  """(axes to transpose a PyTorch tensor by, or None; a note saying what was done or kept)."""
  parts = re.split(r"[./]", name)
  if parts[-1] != "weight" or not 2 <= len(shape) <= 5:
    return None, ""
  if len(shape) == 2:
    if any(_EMBEDDING.fullmatch(p) for p in parts[:-1]):
      return None, "kept: an embedding table is [num, dim] in PyTorch and TensorFlow"
    return (1, 0), "transposed from torch Linear [out, in] %s to [in, out]" % _shape(shape)
  axes = (*range(2, len(shape)), 1, 0)
  return axes, "transposed from torch %s [out, in, *k] %s to [*k, in, out]" % (
      _CONV[len(shape)], _shape(shape))


class TorchLayout(Reader):
  """Presents a reader of PyTorch-layout tensors in TensorFlow's layout."""

  def __init__(self, inner: Reader):
    super().__init__(inner.ref)
    self._inner = inner
    self._axes: dict[str, tuple[int, ...]] = {}
    self.notes = dict(inner.notes)
    for name, info in inner.variables.items():
      axes, note = permutation(name, info.shape)
      shape = info.shape if axes is None else tuple(info.shape[a] for a in axes)
      self.variables[name] = VariableInfo(name, shape, info.dtype, info.nbytes, info.kind)
      if axes is not None:
        self._axes[name] = axes
      if note:
        self.notes[name] = "; ".join(filter(None, (inner.notes.get(name), note)))

  def read(self, name: str) -> np.ndarray:
    value = self._inner.read(name)
    axes = self._axes.get(name)
    return value if axes is None else np.ascontiguousarray(value.transpose(axes))

  def key_of(self, name: str) -> str:
    return self._inner.key_of(name)

  def close(self) -> None:
    self._inner.close()

"""`Source`: a source path with the options that say how to read it.

Options take one form everywhere: `warmstart.Source(path, layout="torch")` is accepted wherever a
source path is (plan, estimator_from, settings, diff, convert, list_variables, ...).
"""
import os
from typing import Union

from warmstart._errors import WarmStartError

TF = "tf"
TORCH = "torch"
LAYOUTS = (TF, TORCH)


class Source:
  """A source path and how to read it.

  Attributes:
    path: the source (anything `warmstart.resolve_checkpoint` accepts as a path).
    layout: "tf" (tensors are in TensorFlow's layout; nothing is changed) or "torch" (PyTorch's:
      `Linear` weights [out, in] are transposed to [in, out] and `ConvNd` weights [out, in, *k]
      to [*k, in, out]; the listing and the report say which). Only for formats that can hold
      PyTorch weights (.safetensors, .npz, .npy).
    allow_pickle: read a `.npy` that holds pickled Python objects (a Caffe-style weight dict).
      Pickles can run code: set it only for a file you trust.

  Example:
    >>> warmstart.plan(warmstart.Source("resnet18.safetensors", layout="torch"), "model_dir",
    ...                rename={"(.*)/kernel": r"\\1.weight"})
  """

  __slots__ = ("allow_pickle", "layout", "path")
  path: str
  layout: str
  allow_pickle: bool

  def __init__(self, path: Union[str, os.PathLike], *, layout: str = TF,
               allow_pickle: bool = False):
    if isinstance(path, Source):
      raise WarmStartError("Source(Source(...)): pass the path, e.g. Source(%r, layout=%r)"
                           % (path.path, layout))
    if not isinstance(path, (str, os.PathLike)):
      raise WarmStartError("Source needs a path (str or os.PathLike); got %s %r"
                           % (type(path).__name__, path))
    if layout not in LAYOUTS:
      raise WarmStartError("layout must be one of %s; got %r" % (", ".join(map(repr, LAYOUTS)),
                                                                 layout))
    if not isinstance(allow_pickle, bool):
      raise WarmStartError("allow_pickle must be True or False; got %r" % (allow_pickle,))
    object.__setattr__(self, "path", os.fspath(path))
    object.__setattr__(self, "layout", layout)
    object.__setattr__(self, "allow_pickle", allow_pickle)

  def __setattr__(self, name, value):
    raise AttributeError("Source is immutable")

  def __eq__(self, other):
    return isinstance(other, Source) and (self.path, self.layout, self.allow_pickle) == (
        other.path, other.layout, other.allow_pickle)

  def __hash__(self):
    return hash((self.path, self.layout, self.allow_pickle))

  def __repr__(self):
    options = "".join([", layout=%r" % self.layout if self.layout != TF else "",
                       ", allow_pickle=True" if self.allow_pickle else ""])
    return "Source(%r%s)" % (self.path, options)

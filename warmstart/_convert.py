"""`convert`: a source's tensors written as `.safetensors`, `.npz` or a TF checkpoint.

The way out of (and into) Estimator checkpoints: weights go to Keras 3, JAX or PyTorch tooling
as `.safetensors` / `.npz`, and weights from there (or from Keras `.h5`, TF2 object-based
checkpoints, Caffe `.npy` dicts) come back as a name-based TF checkpoint any Estimator reads.
Tensors are read and written one at a time (memory for the largest one), the output appears
atomically, and values are copied bit for bit.
"""
import logging
import os
from typing import Union

from warmstart import _checkpoint, _rename, _select, sources
from warmstart._checkpoint import CheckpointRef, Source, VariableInfo
from warmstart._errors import WarmStartError
from warmstart._rename import Rules
from warmstart._select import Patterns
from warmstart.sources import _writers

logger = logging.getLogger(__name__)

SAFETENSORS = ".safetensors"
NPZ = ".npz"
# Extensions that name a format convert does not write (rather than a checkpoint prefix).
_NOT_WRITTEN = (".h5", ".hdf5", ".npy", ".keras", ".pt", ".pth", ".bin", ".index", ".json")


def _output(out: str) -> tuple[str, list[str]]:
  """(the output format, the files it will create); refuses outputs that exist."""
  if os.path.isdir(out):
    raise WarmStartError("convert output %s is a directory; name a file in it: "
                         "%s/model.safetensors, %s/model.npz or the checkpoint prefix "
                         "%s/model.ckpt" % (out, out, out, out))
  if out.endswith(SAFETENSORS) or out.endswith(NPZ):
    form, files = os.path.splitext(out)[1], [out]
  elif out.endswith(_NOT_WRITTEN) or ".data-" in os.path.basename(out):
    raise WarmStartError("convert writes .safetensors, .npz or a TF checkpoint prefix (any other "
                         "name, e.g. model.ckpt); got %s" % out)
  else:
    form, files = "checkpoint", [out + ".index", out + ".data-00000-of-00001"]
  existing = [f for f in files if os.path.exists(f)]
  if existing:
    raise WarmStartError("convert output %s exists; convert never replaces files (and so never "
                         "writes over a source). Remove it or choose another name." % existing[0])
  return form, files


def convert(source: Source, out: Union[str, os.PathLike], *, include: Patterns = None,
            exclude: Patterns = None, rename: Rules = None) -> CheckpointRef:
  """Writes a source's tensors to `.safetensors`, `.npz` or a TF checkpoint, chosen by `out`.

  Tensors keep their names (the names a model uses: for a Keras `.h5` or a TF2 object-based
  checkpoint, not the keys inside the file), dtypes, shapes and bytes; with
  `warmstart.Source(path, layout="torch")` they are transposed to TensorFlow's layout first. A
  `.npz` records the dtypes numpy cannot hold (bfloat16, float8) in a member
  `__warmstart_dtypes__`, which warmstart reads back; `.safetensors` and `.npz` cannot hold string
  tensors (exclude them). Memory holds one tensor at a time; the output appears whole or not at
  all, and an existing output is never replaced.

  Args:
    source: anything `resolve_checkpoint` accepts (a `warmstart.Source` for options).
    out: `NAME.safetensors`, `NAME.npz`, or a checkpoint prefix (`dir/model.ckpt`: writes
      `.index` and `.data-00000-of-00001`).
    include: regex or list of regexes over source tensor names (fully matched); default all.
    exclude: regex or list of regexes removed from those.
    rename: {source_name_pattern: output_name_template} or a list of pairs (`\\1` for groups);
      every rule must be used.

  Returns:
    The CheckpointRef of the output.

  Raises:
    WarmStartError: (a subclass) an unreadable source, a pattern or rule that matches nothing,
      an output that exists, a tensor the output format cannot hold.

  Example:
    >>> warmstart.convert("model_dir", "mnist.safetensors", exclude=".*/Adam(_1)?|.*_power")
    >>> warmstart.convert(warmstart.Source("resnet18.safetensors", layout="torch"),
    ...                   "pretrained/resnet18.ckpt")
  """
  ref = _checkpoint.resolve_checkpoint(source)
  out = os.fspath(out)
  form, files = _output(out)
  rules = _rename.compile_rules(rename)
  with sources.open_reader(ref) as reader:
    names = _select.select_names(list(reader.variables), include, exclude,
                                 "tensor of %s" % ref.prefix)
    mapping = _rename.rename_all(rules, names, of=" of the source",
                                 clash="output names must be unique")
    infos = []
    for new, old in sorted(mapping.items()):
      info = reader.variables[old]
      infos.append(VariableInfo(new, info.shape, info.dtype, info.nbytes, info.kind))
    def read(name):
      return reader.read(mapping[name])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if form == SAFETENSORS:
      _writers.write_safetensors(out, infos, read, {"producer": "warmstart"})
    elif form == NPZ:
      _writers.write_npz(out, infos, read)
    else:
      _writers.write_checkpoint(out, infos, read)
    transposed = [n for n in names if "transposed from torch" in reader.notes.get(n, "")]
  logger.info("converted %d tensors (%d bytes) of %s to %s%s", len(infos),
              sum(i.nbytes for i in infos), ref.prefix, ", ".join(files),
              "; transposed from torch layout: %s" % ", ".join(transposed) if transposed else "")
  return _checkpoint.resolve_checkpoint(out)

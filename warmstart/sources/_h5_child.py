"""The HDF5 side of reading Keras weight files, run in a child process by `_h5.H5Reader`.

libhdf5 (a C library) can loop forever or crash on a crafted file -- a fuzzed Keras file made it
hang while reading an attribute -- and neither can be stopped from Python in the same process.
So every call into it happens here, in a child process with a time limit, and a hang or a crash
becomes one clear error in the parent. This file imports only h5py and numpy (not warmstart, not
TensorFlow), so the child starts fast.

One child serves a process's requests, one JSON line each on stdin (see `_serve`):
["list", FILE] answers {"layout": ..., "entries": [...]}, ["read", FILE, DATASET] the dataset's
bytes (C order, native byte order); a refusal (a file that is not Keras weights, a dataset that
cannot be read safely) answers {"error": message}.
"""
import collections
import json
import os
import re
import sys
from typing import Optional

import h5py
import numpy as np

_SUFFIX = re.compile(r":\d+$")
_COUNTER = re.compile(r"_\d+$")
# HDF5's own filters (and h5py's lzf): deflate, shuffle, fletcher32, szip, nbit, scaleoffset, lzf.
_BUILTIN_FILTERS = {1, 2, 3, 4, 5, 6, 32000}
# Deflate expands at most ~1032:1; a dataset claiming more than this per stored byte is crafted.
_MAX_EXPANSION = 1100
_MAX_DEPTH = 64
_MAX_OBJECTS = 1_000_000
# Keras 3 files name variables only by position: the names of the common layers' variables, in
# the order Keras stores them (trainable, then non-trainable). Kernels may come without a bias.
_KERNEL_BIAS = ("kernel", "bias")
_POSITIONS = {
    **{name: _KERNEL_BIAS for name in (
        "dense", "einsum_dense", "conv1d", "conv2d", "conv3d", "conv1d_transpose",
        "conv2d_transpose", "conv3d_transpose")},
    "depthwise_conv1d": ("depthwise_kernel", "bias"),
    "depthwise_conv2d": ("depthwise_kernel", "bias"),
    "separable_conv1d": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "separable_conv2d": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "layer_normalization": ("gamma", "beta"),
    "embedding": ("embeddings",),
}


class Refused(Exception):
  """A file or dataset this reader will not read; the message says why."""


def _child(group, name: str, where: str):
  """group[name], refusing soft and external links (Keras writes neither)."""
  if not isinstance(group, h5py.Group):
    raise Refused("%s: %s is not a group" % (where, group.name))
  link = group.get(name, getlink=True)
  if link is None:
    raise Refused("%s: %s has no member %r" % (where, group.name, name))
  if not isinstance(link, h5py.HardLink):
    raise Refused("%s: %s/%s is a %s; only plain members are read (a link could point outside "
                  "the file)" % (where, group.name, name, type(link).__name__))
  return group[name]


def _strings(value, what: str) -> list[str]:
  """An attribute holding a list of names (bytes or str elements)."""
  array = np.asarray(value)
  if array.size == 0:
    return []
  out = []
  for item in array.ravel():
    if isinstance(item, (bytes, np.bytes_)):
      try:
        item = bytes(item).decode("utf-8")
      except UnicodeDecodeError:
        raise Refused("%s holds a name that is not UTF-8" % what) from None
    if not isinstance(item, str) or not item:
      raise Refused("%s holds %r; expected non-empty names" % (what, item))
    out.append(str(item))
  return out


def _list(file: h5py.File, source: str) -> tuple[str, list[tuple[str, str, str]]]:
  """(layout, [(name, dataset path, note)]) of a Keras weights file."""
  group = file
  layout = "keras_h5"
  if "layer_names" not in file.attrs and "model_weights" in file:
    group = _child(file, "model_weights", source)
    layout = "keras_model_h5"
  if "layer_names" in getattr(group, "attrs", {}):
    return layout, _unique(_legacy(group, source))
  if "layers" in file or "vars" in file:
    return "keras_v3_h5", _unique(_v3(file, source))
  raise Refused(
      "%s is an HDF5 file but not Keras weights: it has no 'layer_names' attribute (Keras "
      "save_weights .h5), no 'model_weights' group (a Keras model .h5) and no 'layers' group (a "
      "Keras 3 .weights.h5); its top-level entries: %s"
      % (source, ", ".join(list(file)[:8]) or "none"))


def _legacy_name(layer: str, weight: str) -> str:
  """The model_fn name of weight `weight` (as Keras recorded it) of layer group `layer`."""
  name = _SUFFIX.sub("", weight)
  parts = name.split("/")
  if len(parts) == 1:  # Keras 3's legacy .h5 records bare variable names
    return layer + "/" + name
  if _COUNTER.sub("", parts[0]) == layer and parts[0] != layer:
    parts[0] = layer  # a layer built twice in one TF1 graph was saved as `conv1_1/kernel`
  return "/".join(parts)


def _legacy(group, source: str) -> list[tuple[str, str, str, str]]:
  """[(name, dataset path, prefixed name, note)] of the Keras 2 layouts."""
  out = []
  prefix = group.name.strip("/")
  layers = _strings(group.attrs["layer_names"], "%s: layer_names" % source)
  if "top_level_model_weights" in group:
    layers.append("top_level_model_weights")
  for layer in layers:
    layer_group = _child(group, layer, source)
    weights = _strings(layer_group.attrs.get("weight_names", ()),
                       "%s: weight_names of %s" % (source, layer))
    for weight in weights:
      path = "/".join(p for p in (prefix, layer, weight) if p)
      name = _legacy_name(layer, weight) if layer != "top_level_model_weights" else \
          _SUFFIX.sub("", weight)
      note = "" if name.split("/")[0] == layer else "in nested model %r" % layer
      if name != _SUFFIX.sub("", weight):
        note = "stored as %s" % weight
      out.append((name, path, layer + "/" + _SUFFIX.sub("", weight), note))
  return out


def _v3(file, source: str) -> list[tuple[str, str, str, str]]:
  """[(name, dataset path, prefixed name, note)] of the Keras 3 layout."""
  out = []
  seen = set()
  pending: list[tuple[h5py.Group, tuple[str, ...]]] = [(file, ())]
  while pending:
    group, path = pending.pop()
    info = h5py.h5o.get_info(group.id)
    if (info.fileno, info.addr) in seen:
      continue
    seen.add((info.fileno, info.addr))
    if len(path) > _MAX_DEPTH or len(seen) > _MAX_OBJECTS:
      raise Refused("%s: groups nest deeper than %d levels or number more than %d"
                    % (source, _MAX_DEPTH, _MAX_OBJECTS))
    for member in sorted(group):
      child = _child(group, member, source)
      if not isinstance(child, h5py.Group):
        continue
      if member == "vars":
        out.extend(_v3_variables(child, path, source))
      else:
        pending.append((child, (*path, member)))
  return out


def _v3_variables(group, path: tuple[str, ...], source: str):
  """The variables of one object at `path` (its `layers` containers are not names)."""
  indices = sorted(group, key=lambda i: int(i) if i.isdigit() else -1)
  if any(not i.isdigit() for i in indices):
    raise Refused("%s: %s holds %r; Keras numbers its variables 0, 1, ..."
                  % (source, group.name, next(i for i in indices if not i.isdigit())))
  layers = [p for p in path if p != "layers"]
  layer = layers[-1] if layers else ""
  known = _POSITIONS.get(_COUNTER.sub("", layer), ())
  fits = indices == [str(k) for k in range(len(indices))] and (
      len(indices) == len(known) or (known == _KERNEL_BIAS and len(indices) == 1))
  for i in indices:
    variable = known[int(i)] if fits else "vars/" + i
    name = "/".join(p for p in (layer, variable) if p)
    note = "Keras 3 file: layer named from its class, variable from its position (%s)" % i
    yield name, "/".join((*path, "vars", i)), "/".join((*layers, variable)), note


def _unique(entries) -> list[tuple[str, str, str]]:
  """Keeps each name unless two datasets share it; those get their nested model's prefix."""
  counts = collections.Counter(name for name, _, _, _ in entries)
  out = []
  for name, path, prefixed, note in entries:
    if counts[name] > 1:
      note = "named with its nested model's prefix: %d datasets are named %s" % (counts[name], name)
      name = prefixed
    out.append((name, path, note))
  names = collections.Counter(name for name, _, _ in out)
  return [(n if names[n] == 1 else p, p, note) for n, p, note in out]


def _checked(dataset: h5py.Dataset, path: str, file_size: int) -> dict:
  """{shape, dtype, offset (None unless contiguous), nbytes} of a dataset checked to be safe."""
  dtype = dataset.dtype
  if dtype.kind not in "biufc" or dtype.fields is not None:
    raise Refused("%s has dtype %s; weights are numbers" % (path, dtype))
  if dataset.shape is None:
    raise Refused("%s has no shape (an empty HDF5 dataspace)" % path)
  if dataset.external or dataset.is_virtual:
    raise Refused("%s keeps its data in other files (external or virtual storage); "
                  "only data inside the file is read" % path)
  plist = dataset.id.get_create_plist()
  filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
  unknown = [f for f in filters if f not in _BUILTIN_FILTERS]
  if unknown:
    raise Refused("%s needs HDF5 filter %d, which is not built in; only HDF5's own "
                  "filters are used" % (path, unknown[0]))
  shape = tuple(int(d) for d in dataset.shape)
  nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
  stored = dataset.id.get_storage_size()
  offset: Optional[int] = dataset.id.get_offset()
  limit = stored * _MAX_EXPANSION if filters else stored
  if nbytes > limit and nbytes > 64:  # tiny datasets may live in the object header
    raise Refused("%s declares %d bytes (shape %s, %s) but stores %d; the file is "
                  "damaged or crafted" % (path, nbytes, shape, dtype, stored))
  if stored > file_size or (offset is not None and offset + stored > file_size):
    raise Refused("%s: its %d bytes at offset %s lie past the end of the file (%d "
                  "bytes); the file is truncated" % (path, stored, offset, file_size))
  return {"shape": list(shape), "dtype": dtype.str, "offset": offset, "nbytes": nbytes}


def _dataset(file, path: str) -> h5py.Dataset:
  node = file
  for part in path.split("/"):
    node = _child(node, part, path)
  if not isinstance(node, h5py.Dataset):
    raise Refused("%s is not a dataset" % path)
  return node


def list_file(path: str) -> dict:
  """The layout and every weight of a Keras weights file, checked to be readable."""
  size = os.path.getsize(path)
  with h5py.File(path, "r") as file:
    layout, entries = _list(file, path)
    out = []
    for name, dataset_path, note in entries:
      out.append({"name": name, "path": dataset_path, "note": note,
                  **_checked(_dataset(file, dataset_path), dataset_path, size)})
  return {"layout": layout, "entries": out}


def read_dataset(path: str, dataset_path: str) -> bytes:
  with h5py.File(path, "r") as file:
    dataset = _dataset(file, dataset_path)
    _checked(dataset, dataset_path, os.path.getsize(path))
    value = np.asarray(dataset[()])
  return np.ascontiguousarray(value.astype(value.dtype.newbyteorder("="), copy=False)).tobytes()


def _serve(requests, responses) -> None:
  """Answers one request per line until stdin closes.

  A request is a JSON list: ["list", FILE] or ["read", FILE, DATASET]. A response is a status
  byte (0 ok, 3 refused), the payload's length (8 bytes, little-endian) and the payload: the
  listing as JSON, the dataset's bytes, or {"error": message} as JSON.
  """
  for line in requests:
    try:
      request = json.loads(line)
      if request[0] == "list" and len(request) == 2:
        status, payload = 0, json.dumps(list_file(request[1])).encode()
      elif request[0] == "read" and len(request) == 3:
        status, payload = 0, read_dataset(request[1], request[2])
      else:
        raise Refused("unknown request %r" % (request,))
    except Exception as err:  # every refusal and h5py error goes back as one message
      text = str(err).strip().splitlines()
      status, payload = 3, json.dumps({"error": text[0] if text else type(err).__name__}).encode()
    responses.write(bytes([status]) + len(payload).to_bytes(8, "little") + payload)
    responses.flush()


if __name__ == "__main__":
  _serve(sys.stdin.buffer, sys.stdout.buffer)

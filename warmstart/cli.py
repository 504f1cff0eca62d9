"""warmstart: list, dry-run warm starts, diff, measure drift and convert checkpoints.

Usage:
  warmstart ls CKPT [--include RE]... [--exclude RE]... [--json]
      Variables of a checkpoint: name, shape, dtype, size, kind, and totals.

  warmstart plan --from SRC --to TARGET_CKPT [--include RE]... [--exclude RE]...
                 [--rename 'PATTERN=TEMPLATE']... [--optimizer_state reset|keep]
                 [--on_shape_mismatch error|skip|partial|input_channels|squeeze] [--json]
      What warm-starting the model saved in TARGET_CKPT from SRC would load, rename, skip
      (and why) and leave missing; nothing is trained. Rename rules map model (TARGET) names
      to SRC names.

  warmstart suggest --from SRC --to TARGET_CKPT [--json]
      Rename rules that map the model saved in TARGET_CKPT onto SRC's differently named
      tensors, printed as --rename flags to paste after 'warmstart plan --from SRC --to
      TARGET_CKPT' (then, as comments, what stays unmatched and why).

  warmstart diff A B [--include RE]... [--exclude RE]... [--atol X] [--rtol Y]
                 [--expect-same RE]... [--expect-changed RE]... [--values NAME]...
                 [--rename 'PATTERN=TEMPLATE']... [--json] [--plot OUT.png]
      Tensor by tensor: identical, changed (max |d|, mean |d|, differing elements, max
      relative d), shape_differs, dtype_differs, only_in_a, only_in_b. --expect-same and
      --expect-changed check that every tensor a regex matches is identical / changed;
      --values prints a tensor of both sides; --rename maps B's names onto A's (several B
      tensors may map onto one A tensor: each is compared with it); --plot draws
      the relative change ||B - A|| / ||A|| of each tensor (or layer) coloured by status.

  warmstart convert SRC OUT [--include RE]... [--exclude RE]... [--rename 'PATTERN=TEMPLATE']...
      Writes SRC's tensors to OUT: OUT.safetensors, OUT.npz, or else a TF checkpoint prefix
      (OUT.index + OUT.data-00000-of-00001), tensor by tensor, atomically, bit for bit.
      Rename rules map SRC names to OUT names. OUT must not exist.

  warmstart drift --from SRC --model_dir DIR [--logdir LOGDIR] [--include RE]...
                  [--exclude RE]... [--rename 'PATTERN=TEMPLATE']... [--group RE] [--json]
                  [--plot OUT.png]
      How far the warm-started tensors of every checkpoint in DIR moved from SRC:
      ||w - w0|| / ||w0|| per layer (or per --group: a regex whose first group names it),
      written as TensorBoard scalars warmstart/drift/<group> to LOGDIR (default
      DIR/warmstart_drift, so `tensorboard --logdir DIR` shows them beside the loss).

--plot needs matplotlib: pip install 'warmstart[plot]'. The picture's type follows its
extension (.png, .svg, .pdf); it is written whole or not at all.

CKPT, SRC, A, B: a checkpoint prefix (dir/model.ckpt-100), a directory (its latest
checkpoint), a SavedModel directory (TF1 or TF2), a TF2 object-based checkpoint
(tf.train.Checkpoint, Keras save_weights), a Keras .h5 / .weights.h5 file, a .safetensors,
.npz or .npy file. Tensors are named as the model's variables are (`ls` shows the key in the
file beside). ls, plan, suggest, diff and convert take the source options
  --layout tf|torch   'torch': SRC (diff: A and B where they are .safetensors/.npz/.npy) holds
                      PyTorch layouts; Linear [out, in] and ConvNd [out, in, *k] weights are
                      transposed to TensorFlow's, and listings say which.
  --allow_pickle      read a .npy holding a pickled weight dict (Caffe converters); pickles
                      can run code, so only for files you trust.
Regexes match whole names ('mnist/hidden/.*'); flags may be repeated and written with '-' or
'_'.

Exit status, like diff(1): 0 identical / every expectation holds / plan is fine / drift
measured; 1 differences / an expectation fails; 2 bad usage or unreadable input.
"""
import json
import logging
import math
import os
import shlex
import sys
import time
import warnings

from absl import flags
from absl import logging as absl_logging  # defines --verbosity; its handler prints the logs

import warmstart
from warmstart import _checkpoint, _plot, _printable, _select, sources

_INCLUDE = flags.DEFINE_multi_string(
    "include", None, "Regex (fully matched) of tensor / variable names to take; repeatable.")
_EXCLUDE = flags.DEFINE_multi_string(
    "exclude", None, "Regex of names to leave out; repeatable.")
_JSON = flags.DEFINE_boolean("json", False, "Print JSON instead of text.")
_FROM = flags.DEFINE_string(
    "from", None, "plan, suggest, drift: the checkpoint to warm-start from (drift: that was "
    "warm-started from).")
_TO = flags.DEFINE_string("to", None, "plan, suggest: a checkpoint of the model to warm-start.")
_RENAME = flags.DEFINE_multi_string(
    "rename", None, "'PATTERN=TEMPLATE': plan: model names matching PATTERN read the checkpoint "
    "tensor TEMPLATE (\\1 for groups); diff: B names matching PATTERN are compared with A's "
    "TEMPLATE; drift: as for plan (model = MODEL_DIR). Repeatable.")
_OPTIMIZER_STATE = flags.DEFINE_enum(
    "optimizer_state", "reset", ["reset", "keep"],
    "plan: 'reset' leaves optimizer slots and the step to their initializers; 'keep' loads them.")
_ON_SHAPE_MISMATCH = flags.DEFINE_enum(
    "on_shape_mismatch", "error", ["error", "skip", "partial", "input_channels", "squeeze"],
    "plan: what a shape mismatch does: 'error', 'skip' the variable, copy the overlapping block "
    "('partial'), adapt the input channels, or 'squeeze' axes of size 1.")
_ATOL = flags.DEFINE_float("atol", 0.0, "diff: absolute tolerance.", lower_bound=0.0)
_RTOL = flags.DEFINE_float("rtol", 0.0, "diff: relative tolerance (of |B|).", lower_bound=0.0)
_EXPECT_SAME = flags.DEFINE_multi_string(
    "expect_same", None, "diff: regex; every tensor it matches must be identical. Repeatable.")
_EXPECT_CHANGED = flags.DEFINE_multi_string(
    "expect_changed", None, "diff: regex; every tensor it matches must be changed. Repeatable.")
_VALUES = flags.DEFINE_multi_string(
    "values", None, "diff: print this tensor of A and of B. Repeatable.")
_PLOT = flags.DEFINE_string(
    "plot", None, "diff, drift: also draw the result into this picture (.png, .svg, .pdf); "
    "needs matplotlib (pip install 'warmstart[plot]').")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "drift: the directory the warm-started model trained in.")
_LOGDIR = flags.DEFINE_string(
    "logdir", None, "drift: where to write the TensorBoard scalars (default: "
    "MODEL_DIR/warmstart_drift).")
_LAYOUT = flags.DEFINE_enum(
    "layout", "tf", ["tf", "torch"],
    "'torch': the source holds PyTorch layouts (.safetensors, .npz, .npy); Linear and ConvNd "
    "weights are transposed to TensorFlow's.")
_ALLOW_PICKLE = flags.DEFINE_boolean(
    "allow_pickle", False, "Read a .npy that holds a pickled weight dict (only files you trust).")
_GROUP = flags.DEFINE_string(
    "group", None, "drift: a regex (fully matched) whose first group names a tensor's group; "
    "default: its layer (the name up to the last '/').")

PROGRAM = "warmstart"
# drift's default --logdir, inside --model_dir: TensorBoard shows it as a run beside training.
_DRIFT_LOGDIR = "warmstart_drift"
EXIT_SAME, EXIT_DIFFERENT, EXIT_TROUBLE = 0, 1, 2

# Which of our flags each command takes (anything else given is a usage error).
_SOURCE_OPTIONS = (_LAYOUT, _ALLOW_PICKLE)
_COMMAND_FLAGS = {
    "ls": (_INCLUDE, _EXCLUDE, _JSON, *_SOURCE_OPTIONS),
    "plan": (_FROM, _TO, _INCLUDE, _EXCLUDE, _RENAME, _OPTIMIZER_STATE, _ON_SHAPE_MISMATCH,
             _JSON, *_SOURCE_OPTIONS),
    "diff": (_INCLUDE, _EXCLUDE, _ATOL, _RTOL, _EXPECT_SAME, _EXPECT_CHANGED, _VALUES, _RENAME,
             _JSON, _PLOT, *_SOURCE_OPTIONS),
    "suggest": (_FROM, _TO, _JSON, *_SOURCE_OPTIONS),
    "drift": (_FROM, _MODEL_DIR, _LOGDIR, _INCLUDE, _EXCLUDE, _RENAME, _GROUP, _JSON, _PLOT),
    "convert": (_INCLUDE, _EXCLUDE, _RENAME, *_SOURCE_OPTIONS),
}
_POSITIONALS = {"ls": ("CKPT",), "plan": (), "diff": ("A", "B"), "suggest": (), "drift": (),
                "convert": ("SRC", "OUT")}
_OWN_FLAGS = sorted({holder.name for holders in _COMMAND_FLAGS.values() for holder in holders})
_HELP = ("-h", "-help", "--help", "--helpshort", "--helpfull", "-?", "help")


class _Trouble(Exception):
  """Bad usage or unreadable input: reported as one line on stderr, exit status 2."""


def _error_line(message) -> str:
  """One line on stderr, whatever the message: a PlanError's list of problems is joined, and
  what a name from a file holds is escaped."""
  return "%s: error: %s\n" % (PROGRAM, _printable.printable(" ".join(
      line.strip() for line in str(message).strip().splitlines())))


def _normalize(argv):
  """Spells hyphenated long flags the absl way: `--expect-same` -> `--expect_same`."""
  out = list(argv[:1])
  rest = iter(argv[1:])
  for arg in rest:
    if arg == "--":
      out.append(arg)
      out.extend(rest)
      break
    if arg.startswith("-") and "-" in arg.lstrip("-"):
      dashes = "--" if arg.startswith("--") else "-"
      name, equals, value = arg[len(dashes):].partition("=")
      underscored = name.replace("-", "_")
      if name not in flags.FLAGS and underscored in flags.FLAGS:
        arg = dashes + underscored + equals + value
    out.append(arg)
  return out


def _parse_flags(argv):
  """absl flags parser: one error line and exit status 2 on bad flags, usage on --help."""
  argv = _normalize(argv)
  if any(arg in _HELP for arg in argv[1:argv.index("--") if "--" in argv else None]):
    sys.stdout.write(__doc__)
    sys.exit(EXIT_SAME)
  try:
    return flags.FLAGS(argv)
  except flags.Error as err:
    sys.stderr.write(_error_line(str(err).splitlines()[0] if str(err) else err))
    sys.exit(EXIT_TROUBLE)


def _check_usage(command, args):
  if command not in _COMMAND_FLAGS:
    raise _Trouble("unknown command %r; the commands are ls, plan, suggest, diff, drift and "
                   "convert (see --help)" % command)
  allowed = {holder.name for holder in _COMMAND_FLAGS[command]}
  for name in _OWN_FLAGS:
    if name not in allowed and flags.FLAGS[name].present:
      raise _Trouble("--%s does not apply to '%s'" % (name, command))
  wanted = _POSITIONALS[command]
  if len(args) != len(wanted):
    raise _Trouble("'%s' takes %s; got %d argument%s%s" % (
        command, " ".join(wanted) if wanted else "no positional arguments", len(args),
        "" if len(args) == 1 else "s", (": " + " ".join(args)) if args else ""))


def _rename_rules(values):
  """['PATTERN=TEMPLATE', ...] -> [(pattern, template)]; split at the last '='."""
  rules = []
  for value in values or ():
    pattern, equals, template = value.rpartition("=")
    if not equals or not pattern or not template:
      raise _Trouble("--rename takes 'PATTERN=TEMPLATE' (e.g. 'new/(.*)=old/\\1'); got %r"
                     % value)
    rules.append((pattern, template))
  return rules or None


def _human_bytes(count):
  for unit in ("B", "KiB", "MiB", "GiB"):
    if count < 1024 or unit == "TiB":
      return ("%d %s" if unit == "B" else "%.1f %s") % (count, unit)
    count /= 1024.0
  return "%.1f TiB" % count


def _shape(shape):
  return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _jsonable(value):
  """numpy values -> JSON-safe Python values (non-finite floats as strings, bytes decoded)."""
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, bytes):
    return value.decode("utf-8", "backslashreplace")
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if isinstance(value, complex):
    return [_jsonable(value.real), _jsonable(value.imag)]
  return value


def _print_json(data):
  print(json.dumps(data, indent=2, sort_keys=True, allow_nan=False))  # JSON escapes itself


def _say(line):
  """Prints one line for people; what names from files hold is escaped (no forged lines)."""
  print(_printable.printable(line))


def _source(path, *, torch_only=False):
  """`path` with the --layout / --allow_pickle options (a warmstart.Source when any is given).

  With `torch_only` (diff: A and B), layout 'torch' applies only to the files that can hold
  PyTorch weights, so converted weights can be compared with their PyTorch originals.
  """
  layout = _LAYOUT.value
  if layout == "tf" and not _ALLOW_PICKLE.value:
    return path
  if torch_only and layout != "tf" and warmstart.resolve_checkpoint(path).kind not in (
      _checkpoint.SAFETENSORS, _checkpoint.NPZ, _checkpoint.NPY):
    layout = "tf"
  return warmstart.Source(path, layout=layout, allow_pickle=_ALLOW_PICKLE.value)


# ------------------------------------------------------------------------------------------
# ls


def _ls(path):
  ref = warmstart.resolve_checkpoint(_source(path))
  with sources.open_reader(ref) as reader:
    variables = list(reader.variables.values())
    keys = {v.name: reader.key_of(v.name) for v in variables}
    notes = dict(reader.notes)
  selected = set(_select.select_names([v.name for v in variables], _INCLUDE.value,
                                      _EXCLUDE.value, "variable of %s" % ref.prefix))
  variables = [v for v in variables if v.name in selected]
  total = sum(v.nbytes for v in variables)
  by_kind: dict[str, tuple[int, int]] = {}
  for v in variables:
    count, nbytes = by_kind.get(v.kind, (0, 0))
    by_kind[v.kind] = (count + 1, nbytes + v.nbytes)
  if _JSON.value:
    _print_json({"checkpoint": ref.prefix, "step": ref.step, "kind": ref.kind,
                 "variables": [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype,
                                "nbytes": v.nbytes, "kind": v.kind, "key": keys[v.name],
                                "note": notes.get(v.name, "")} for v in variables],
                 "count": len(variables), "total_bytes": total,
                 "by_kind": {k: {"count": c, "nbytes": n} for k, (c, n) in by_kind.items()}})
    return EXIT_SAME
  _say("%s %s%s" % (ref.kind, ref.prefix, "" if ref.step is None else " (step %d)" % ref.step))
  # The key in the file, where it is not the name (TF2 object paths, .h5 dataset paths).
  show_keys = any(keys[v.name] != v.name for v in variables)
  rows = [(_printable.printable(v.name), _shape(v.shape), v.dtype,
           _human_bytes(v.nbytes) if v.nbytes or v.dtype != "string" else "?", v.kind,
           _printable.printable("  ".join(filter(None, (keys[v.name] if show_keys else "",
                                                  notes.get(v.name))))))
          for v in variables]
  header = ("name", "shape", "dtype", "size", "kind",
            "key in file" if show_keys else ("note" if notes else ""))
  widths = [max(len(row[i]) for row in [*rows, header]) for i in range(5)]
  for row in [header, *rows]:
    _say(("  %-*s  %-*s  %-*s  %*s  %-*s  %s" % (
        widths[0], row[0], widths[1], row[1], widths[2], row[2], widths[3], row[3], widths[4],
        row[4], row[5])).rstrip())
  _say("%d variable%s, %s: %s" % (
      len(variables), "" if len(variables) == 1 else "s", _human_bytes(total),
      ", ".join("%d %s (%s)" % (c, k, _human_bytes(n)) for k, (c, n) in sorted(by_kind.items()))
      or "none"))
  return EXIT_SAME


# ------------------------------------------------------------------------------------------
# plan


def _plan():
  if not _FROM.value or not _TO.value:
    raise _Trouble("'plan' needs --from SRC and --to TARGET_CKPT")
  arguments = dict(exclude=_EXCLUDE.value, rename=_rename_rules(_RENAME.value),
                   optimizer_state=_OPTIMIZER_STATE.value,
                   on_shape_mismatch=_ON_SHAPE_MISMATCH.value)
  if _INCLUDE.value:
    arguments["include"] = _INCLUDE.value
  try:
    report = warmstart.plan(_source(_FROM.value), _TO.value, **arguments).report
  except warmstart.PlanError as err:
    if err.report is not None:
      _show_report(err.report)
    raise
  _show_report(report)
  return EXIT_SAME


def _show_report(report):
  if _JSON.value:
    print(report.to_json())
  else:
    print(report)  # str() of a report escapes the names in it


# ------------------------------------------------------------------------------------------
# suggest


def _suggest():
  if not _FROM.value or not _TO.value:
    raise _Trouble("'suggest' needs --from SRC and --to TARGET_CKPT")
  suggestion = warmstart.suggest_rename(_source(_FROM.value), _TO.value)
  if _JSON.value:
    _print_json(suggestion.to_dict())
    return EXIT_SAME
  # Flags first, so the whole output pastes after `warmstart plan --from SRC --to TARGET \`;
  # the rest as shell comments, harmless when pasted along.
  from warmstart import _suggest as _suggest_module  # pylint: disable=g-import-not-at-top
  for line in _suggest_module.shell_lines(suggestion):
    _say(line)
  _say("# warmstart suggest: " + suggestion.summary())
  if suggestion.rules or suggestion.exclude:
    _say("# the flags above go after: warmstart plan --from %s --to %s" % (
        shlex.quote(_FROM.value), shlex.quote(_TO.value)))
  for line in suggestion.unmatched_lines():
    _say("# " + line)
  return EXIT_SAME


# ------------------------------------------------------------------------------------------
# diff


class _Progress:
  """`i/n tensors` on a terminal's stderr, updated in place (at most 10 times a second)."""

  def __init__(self, stream):
    self._stream = stream
    self._last = 0.0
    self._shown = False

  def __call__(self, done, total):
    now = time.monotonic()
    if done < total and now - self._last < 0.1:
      return
    self._last = now
    self._stream.write("\rdiff: %d/%d tensors" % (done, total))
    self._stream.flush()
    self._shown = True

  def clear(self):
    if self._shown:
      self._stream.write("\r\x1b[K")
      self._stream.flush()


def _read_values(report, names, source_a, source_b):
  """[(name, [(label, prefix, name_in_that_checkpoint, array or None)])] for --values."""
  # NAME is an A name (its first B tensor under --rename) or a renamed B name (its A tensor).
  b_names: dict[str, str] = {}
  a_names: dict[str, str] = {}
  for t in report.tensors:
    if t.name_b is not None:
      b_names.setdefault(t.name, t.name_b)
      a_names[t.name_b] = t.name
  out = []
  with sources.open_reader(warmstart.resolve_checkpoint(source_a)) as reader_a, \
       sources.open_reader(warmstart.resolve_checkpoint(source_b)) as reader_b:
    for wanted_name in names:
      name, name_b = ((a_names[wanted_name], wanted_name) if wanted_name in a_names
                      else (wanted_name, b_names.get(wanted_name, wanted_name)))
      if name not in reader_a.variables and name_b not in reader_b.variables:
        raise warmstart.PatternError("--values %r: no tensor of that name in A or B.%s" % (
            name, _select.closest(name, list(reader_a.variables) + list(reader_b.variables))))
      sides = []
      for label, reader, wanted in (("A", reader_a, name), ("B", reader_b, name_b)):
        value = reader.read(wanted) if wanted in reader.variables else None
        sides.append((label, reader.ref.prefix, wanted, value))
      out.append((name, sides))
  return out


def _diff(path_a, path_b):
  if _PLOT.value:
    _plot.check_plot_path(_PLOT.value)  # before the (possibly long) diff
  expect_same, expect_changed = _EXPECT_SAME.value or [], _EXPECT_CHANGED.value or []
  # Bad expectation regexes are usage errors: find them before the (possibly long) diff.
  warmstart.DiffReport("", "", []).check(expect_same, expect_changed)
  rename = _rename_rules(_RENAME.value)
  source_a, source_b = _source(path_a, torch_only=True), _source(path_b, torch_only=True)
  progress = _Progress(sys.stderr) if sys.stderr.isatty() else None
  try:
    report = warmstart.diff(source_a, source_b, include=_INCLUDE.value, exclude=_EXCLUDE.value,
                            atol=_ATOL.value, rtol=_RTOL.value, rename=rename,
                            progress=progress)
  finally:
    if progress is not None:
      progress.clear()
  values = _read_values(report, _VALUES.value or [], source_a, source_b)
  expecting = bool(expect_same or expect_changed)
  failures = report.check(expect_same, expect_changed) if expecting else []
  status = (EXIT_DIFFERENT if failures else EXIT_SAME) if expecting else (
      EXIT_SAME if report.identical else EXIT_DIFFERENT)

  plot = _plot.save(report.plot(), _PLOT.value) if _PLOT.value else None
  if _JSON.value:
    data = report.to_dict()
    if plot:
      data["plot"] = plot
    if expecting:
      data["expectations"] = {"expect_same": expect_same, "expect_changed": expect_changed,
                              "failures": failures, "hold": not failures}
    if values:
      data["values"] = {name: {label: None if value is None else {
          "name": wanted, "checkpoint": prefix, "dtype": str(value.dtype),
          "shape": list(value.shape), "value": _jsonable(value.tolist())}
                               for label, prefix, wanted, value in sides}
                        for name, sides in values}
    data["exit_status"] = status
    _print_json(data)
    return status
  print(report)  # str() of a report escapes the names in it
  for _name, sides in values:
    for label, prefix, wanted, value in sides:
      _say("tensor_name:  %s" % wanted)
      if value is None:
        _say("(not in %s: %s)" % (label, prefix))
      else:
        print(value)  # numpy prints strings with their escapes
  if expecting:
    for failure in failures:
      _say("expectation failed: %s" % failure)
    total = len(expect_same) + len(expect_changed)
    _say("expectations: %s" % ("%d failed" % len(failures) if failures else
                                "all %d hold" % total))
  if plot:
    _say("plot: %s" % plot)
  return status


# ------------------------------------------------------------------------------------------
# drift


def _drift():
  if not _FROM.value or not _MODEL_DIR.value:
    raise _Trouble("'drift' needs --from SRC (the warm-start source) and --model_dir DIR (where "
                   "the warm-started model trained)")
  if _PLOT.value:
    _plot.check_plot_path(_PLOT.value)
  report = warmstart.drift(_FROM.value, _MODEL_DIR.value, include=_INCLUDE.value,
                           exclude=_EXCLUDE.value, rename=_rename_rules(_RENAME.value),
                           group=_GROUP.value)
  events = report.write_summaries(
      _LOGDIR.value or os.path.join(_MODEL_DIR.value, _DRIFT_LOGDIR))
  plot = _plot.save(report.plot(), _PLOT.value) if _PLOT.value else None
  if _JSON.value:
    data = report.to_dict()
    data["summaries"] = events
    if plot:
      data["plot"] = plot
    _print_json(data)
    return EXIT_SAME
  print(report)  # str() of a report escapes the names in it
  _say("TensorBoard scalars warmstart/drift/<group>: %s" % events)
  _say("  see them: tensorboard --logdir %s" % (
      _MODEL_DIR.value if _LOGDIR.value is None else os.path.dirname(events)))
  if plot:
    _say("plot: %s" % plot)
  return EXIT_SAME


# ------------------------------------------------------------------------------------------
# convert


def _convert(source, out):
  ref = warmstart.convert(_source(source), out, include=_INCLUDE.value, exclude=_EXCLUDE.value,
                          rename=_rename_rules(_RENAME.value))
  with sources.open_reader(warmstart.resolve_checkpoint(_source(source))) as reader:
    transposed = sorted(n for n, note in reader.notes.items() if "transposed from torch" in note)
  variables = warmstart.list_variables(ref)
  _say("wrote %d tensor%s (%s) to %s %s" % (
      len(variables), "" if len(variables) == 1 else "s",
      _human_bytes(sum(v.nbytes for v in variables)), ref.kind, ref.prefix))
  if transposed:
    _say("transposed from PyTorch layout (%d): %s" % (len(transposed), ", ".join(transposed)))
  return EXIT_SAME


# ------------------------------------------------------------------------------------------


class _Warnings(logging.Handler):
  """Holds the library's warnings while a command runs: printed after a result, or folded into
  the one error line when the command fails (a stderr of exactly one line)."""

  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages: list[str] = []

  def emit(self, record):
    message = record.getMessage()
    if message not in self.messages:  # a source resolved twice warns twice
      self.messages.append(message)


def main(argv):
  """Runs one command; returns the exit status (0 same, 1 different, 2 trouble)."""
  if len(argv) < 2:
    sys.stderr.write(_error_line("no command given; usage: warmstart "
                                 "ls|plan|suggest|diff|drift|convert ... (see --help)"))
    return EXIT_TROUBLE
  command, args = argv[1], argv[2:]
  library_logger = logging.getLogger("warmstart")
  held = _Warnings()
  if not flags.FLAGS["verbosity"].present:
    # The CLI prints the reports itself; the library's INFO summaries would repeat them.
    library_logger.setLevel(logging.WARNING)
    library_logger.addHandler(held)
    library_logger.propagate = False
  try:
    with warnings.catch_warnings(record=True) as caught:  # numpy's, h5py's: as ours
      warnings.simplefilter("default")
      try:
        status = _run(command, args)
      finally:
        for warning in caught:
          held.emit(logging.makeLogRecord({"msg": str(warning.message).split("\n")[0]}))
  except (_Trouble, warmstart.WarmStartError) as err:
    sys.stderr.write(_error_line("%s%s" % (err, "".join(
        " (warning: %s)" % message for message in held.messages))))
    return EXIT_TROUBLE
  except BrokenPipeError:  # `warmstart ... | head`: stop quietly, like other tools
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_TROUBLE
  except OSError as err:  # unreadable input that the library did not wrap
    sys.stderr.write(_error_line("%s%s" % (err.strerror or err, ": %s" % err.filename
                                           if err.filename else "")))
    return EXIT_TROUBLE
  finally:
    library_logger.removeHandler(held)
    library_logger.propagate = True
  for message in held.messages:
    sys.stderr.write("%s: warning: %s\n" % (PROGRAM, _printable.printable(message)))
  return status


def _run(command, args):
  _check_usage(command, args)
  if command == "ls":
    return _ls(*args)
  if command == "plan":
    return _plan()
  if command == "suggest":
    return _suggest()
  if command == "drift":
    return _drift()
  if command == "convert":
    return _convert(*args)
  return _diff(*args)


def run():
  """The entry point of the `warmstart` console script and of `python -m warmstart`.

  Importing `warmstart` does not import TensorFlow, and no command the CLI runs needs it; should
  TensorFlow be imported all the same, its C++ start-up messages (CUDA, TensorRT) would bury the
  CLI's output and its one-line errors on stderr, so their level is set first (a level the user
  set is kept).
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  # Not absl.app.run: it imports pdb and more (a tenth of `warmstart ls`) for features the CLI
  # does not use; flags, help and exit status are handled here.
  argv = _parse_flags(sys.argv)
  if flags.FLAGS["verbosity"].present:
    absl_logging.use_absl_handler()  # the library's logs, at the level asked for
    absl_logging.set_verbosity(flags.FLAGS.verbosity)
  sys.exit(main(argv))


if __name__ == "__main__":
  run()

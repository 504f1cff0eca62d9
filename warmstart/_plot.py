"""Pictures of a diff and of a drift, drawn with matplotlib (the optional extra `warmstart[plot]`).

matplotlib is imported only inside the functions that draw, so the rest of the library never
needs it. Figures are built with `matplotlib.figure.Figure` directly (no pyplot): nothing is
shown on screen, no global figure state is kept, and any backend works.
"""
import dataclasses
import math
import os
import secrets
from collections.abc import Sequence
from typing import Any, Optional

from warmstart import _diff, _drift
from warmstart._errors import WarmStartError

EXTRA = "pip install 'warmstart[plot]'"

# Status colours (colour-blind-safe Okabe-Ito, identical in neutral grey) and legend names.
_COLORS = {
    _diff.CHANGED: "#0072B2",
    _diff.IDENTICAL: "#999999",
    _diff.SHAPE_DIFFERS: "#D55E00",
    _diff.DTYPE_DIFFERS: "#CC79A7",
    _diff.ONLY_IN_A: "#E69F00",
    _diff.ONLY_IN_B: "#009E73",
}
_NAMES = {
    _diff.CHANGED: "changed", _diff.IDENTICAL: "identical", _diff.SHAPE_DIFFERS: "shape differs",
    _diff.DTYPE_DIFFERS: "dtype differs", _diff.ONLY_IN_A: "only in A",
    _diff.ONLY_IN_B: "only in B",
}
# A layer of mixed statuses takes the colour of its most notable one.
_SEVERITY = (_diff.SHAPE_DIFFERS, _diff.DTYPE_DIFFERS, _diff.ONLY_IN_A, _diff.ONLY_IN_B,
             _diff.CHANGED, _diff.IDENTICAL)
_ROW_INCHES = 0.24
_WIDTH_INCHES = 10.0


def _matplotlib():
  """Imports matplotlib's Figure, or explains how to install it."""
  try:
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  except ImportError as err:
    raise WarmStartError("plotting needs matplotlib, which is not installed: %s" % EXTRA) from err
  return Figure


def check_plot_path(path: str) -> None:
  """Fails now, before any work, if a picture cannot be written to `path`.

  Raises:
    WarmStartError: matplotlib is missing, the directory does not exist, or the file type is
      not one matplotlib writes.
  """
  figure_class = _matplotlib()
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise WarmStartError("cannot write the plot %s: directory %s does not exist; create it first"
                         % (path, directory))
  extension = os.path.splitext(path)[1].lstrip(".").lower()
  supported = figure_class().canvas.get_supported_filetypes()
  if extension not in supported:
    raise WarmStartError("cannot write the plot %s: the file type is taken from its extension, "
                         "and %r is not one of %s"
                         % (path, extension, ", ".join(sorted(supported))))


def save(figure: Any, path: str, dpi: int = 100) -> str:
  """Writes a figure to `path` atomically (a temp file beside it, then renamed); returns path.

  Raises:
    WarmStartError: the file cannot be written.
  """
  check_plot_path(path)
  extension = os.path.splitext(path)[1].lstrip(".").lower()
  # Beside the target (same file system, so the rename is atomic), created by open() so the
  # file gets the usual permissions.
  scratch = os.path.join(os.path.dirname(os.path.abspath(path)), ".%s.%s.tmp" % (
      os.path.basename(path), secrets.token_hex(4)))
  try:
    with open(scratch, "xb") as f:
      figure.savefig(f, format=extension, dpi=dpi)
      f.flush()
      os.fsync(f.fileno())
    os.replace(scratch, path)
  except OSError as err:
    raise WarmStartError("cannot write the plot %s: %s" % (path, err.strerror or err)) from err
  finally:
    if os.path.exists(scratch):
      os.remove(scratch)
  return path


# ------------------------------------------------------------------------------------------
# diff


@dataclasses.dataclass
class _Row:
  label: str
  status: str
  value: Optional[float]  # relative change, when there is one
  note: str = ""  # drawn where a bar would be, for rows without a value


def _tensor_row(t: _diff.TensorDiff) -> _Row:
  if t.status == _diff.SHAPE_DIFFERS:
    note = "shape %s → %s" % (t.shape_a, t.shape_b)
  elif t.status == _diff.DTYPE_DIFFERS:
    note = "dtype %s → %s" % (t.dtype_a, t.dtype_b)
  elif t.status == _diff.CHANGED:
    note = "" if t.rel_change is not None else "changed (%s: no norm)" % t.dtype_a
  else:
    note = _NAMES[t.status]
  value = t.rel_change if t.status == _diff.CHANGED else None
  return _Row(t.name, t.status, value, note)


def _layer_rows(tensors: Sequence[_diff.TensorDiff]) -> list[_Row]:
  layers: dict[str, list[_diff.TensorDiff]] = {}
  for t in tensors:
    layers.setdefault(_drift.layer_of(t.name), []).append(t)
  rows = []
  for layer, members in layers.items():
    statuses = [t.status for t in members]
    status = next(s for s in _SEVERITY if s in statuses)
    values = [t.rel_change for t in members
              if t.status == _diff.CHANGED and t.rel_change is not None]
    counts = ", ".join("%d %s" % (statuses.count(s), _NAMES[s]) for s in _SEVERITY if s in statuses)
    value = max(values) if values else None
    rows.append(_Row("%s  (%d)" % (layer, len(members)), status, value,
                     counts if len(set(statuses)) > 1 or value is None else ""))
  return rows


def _fold(rows: list[_Row], max_rows: int) -> tuple[list[_Row], list[_Row]]:
  """(rows to draw, rows to fold), at most max_rows drawn.

  Drawn first: the largest changes; then what did not carry over (shape / dtype differs, only
  in A / B), which is never folded while it fits in half the rows; identical rows last, folded
  first.
  """
  numeric = sorted((r for r in rows if r.value is not None and not math.isnan(r.value)),
                   key=lambda r: (-r.value, r.label))  # type: ignore[operator]
  structural = sorted((r for r in rows if r.value is None and r.status not in (
      _diff.CHANGED, _diff.IDENTICAL)), key=lambda r: (_SEVERITY.index(r.status), r.label))
  plain = sorted((r for r in rows if r not in numeric and r not in structural),
                 key=lambda r: (r.status != _diff.CHANGED, r.label))  # NaN, no norm, identical
  keep_structural = structural[:max(max_rows // 2, max_rows - len(numeric) - len(plain))]
  keep_numeric = numeric[:max_rows - len(keep_structural)]
  keep_plain = plain[:max_rows - len(keep_structural) - len(keep_numeric)]
  shown = keep_numeric + keep_structural + keep_plain
  return shown, [r for r in rows if r not in shown]


def plot_diff(report: _diff.DiffReport, *, by: Optional[str] = None, max_rows: int = 40) -> Any:
  """Draws a DiffReport: horizontal bars of relative change ‖B − A‖ / ‖A‖, coloured by status.

  Args:
    report: what `warmstart.diff` returned.
    by: 'tensor' (a bar per tensor), 'layer' (per layer: its largest tensor change, coloured
      by its most notable status), or None: per tensor up to `max_rows` tensors, else per layer.
    max_rows: rows drawn at most; the smallest changes and the identical rows beyond it are
      folded into one row per status that says how many.

  Returns:
    A matplotlib Figure.

  Raises:
    WarmStartError: matplotlib is not installed, or `by` is not one of the above.
  """
  figure_class = _matplotlib()
  if by not in (None, "tensor", "layer"):
    raise WarmStartError("by must be 'tensor', 'layer' or None (automatic); got %r" % (by,))
  if by is None:
    by = "tensor" if len(report.tensors) <= max_rows else "layer"
  rows = _layer_rows(report.tensors) if by == "layer" else [_tensor_row(t) for t in report.tensors]
  total_rows = len(rows)
  shown, folded = _fold(rows, max_rows)
  for status in _SEVERITY:
    hidden = [r for r in folded if r.status == status]
    if hidden:
      largest = max((r.value for r in hidden if r.value is not None), default=None)
      shown.append(_Row("… %d more %s%s" % (len(hidden), by, "" if len(hidden) == 1 else "s"),
                        status, None, "%s%s" % (_NAMES[status], "" if largest is None else
                                                 ", each ≤ %.3g" % largest)))

  figure = figure_class(figsize=(_WIDTH_INCHES, max(3.0, 1.6 + _ROW_INCHES * len(shown))),
                        layout="constrained")
  axes = figure.subplots()
  positions = list(range(len(shown)))[::-1]  # first row at the top
  values = [r.value for r in shown
            if r.value is not None and math.isfinite(r.value) and r.value > 0]
  logarithmic = bool(values) and max(values) / min(values) > 30
  if logarithmic:
    axes.set_xscale("log")
    low, high = min(values) / 3, max(values) * 6
  else:
    low, high = 0.0, (max(values) if values else 1.0) * 1.25
  axes.set_xlim(low, high)
  for y, row in zip(positions, shown):
    color = _COLORS[row.status]
    folded_row = row.label.startswith("…")
    if row.value is not None and math.isfinite(row.value) and row.value > 0:
      axes.barh(y, row.value - low, left=low, color=color, height=0.7)
      axes.text(row.value, y, " %.3g%s" % (row.value, "   " + row.note if row.note else ""),
                va="center", fontsize=8)
    else:
      axes.text(0.005, y, row.note, transform=axes.get_yaxis_transform(), va="center",
                fontsize=8, color=color, style="italic" if folded_row else "normal")
  axes.set_yticks(positions)
  axes.set_yticklabels([r.label for r in shown], fontsize=8)
  for label, row in zip(axes.get_yticklabels(), shown):
    if row.label.startswith("…"):
      label.set_style("italic")
  axes.set_ylim(-0.7, len(shown) - 0.3)
  axes.set_xlabel("relative change ‖B − A‖ / ‖A‖ (Frobenius norm%s)" % (
      "; a layer's bar is its largest tensor's" if by == "layer" else ""))
  axes.grid(axis="x", color="#dddddd", linewidth=0.6)
  axes.set_axisbelow(True)
  for side in ("top", "right"):
    axes.spines[side].set_visible(False)
  counts = [(s, len(report.by_status(s))) for s in _diff.STATUSES]
  handles = [_patch(_COLORS[s], "%s (%d)" % (_NAMES[s], n)) for s, n in counts if n]
  if handles:
    axes.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(handles),
                fontsize=8, frameon=False, borderaxespad=0.3)
  layers = len({_drift.layer_of(t.name) for t in report.tensors})
  fold_note = "; %d of %d %s folded" % (len(folded), total_rows, "layers" if by == "layer"
                                        else "tensors") if folded else ""
  figure.suptitle("warmstart diff — A: %s   B: %s\n%s in %s, one bar per %s%s%s" % (
      _short(report.a), _short(report.b), _count(len(report.tensors), "tensor"),
      _count(layers, "layer"), by,
      " (its tensor count in parentheses)" if by == "layer" else "", fold_note),
      fontsize=9, x=0.01, ha="left")
  return figure


def _patch(color, label):
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top
  return Patch(color=color, label=label)


def _short(path: str, limit: int = 60) -> str:
  return path if len(path) <= limit else "…" + path[-(limit - 1):]


# ------------------------------------------------------------------------------------------
# drift


def plot_drift(report: "_drift.DriftReport", *, top: int = 8) -> Any:
  """Draws a DriftReport: one line per group over the steps; the `top` largest are named in
  colour, the rest drawn faint, unmoved groups (0.0 at every step) counted in the legend.

  Returns:
    A matplotlib Figure.

  Raises:
    WarmStartError: matplotlib is not installed.
  """
  figure_class = _matplotlib()
  figure = figure_class(figsize=(_WIDTH_INCHES, 5.0), layout="constrained")
  axes = figure.subplots()
  steps = report.steps
  unmoved = [g for g in report.groups if all(v == 0 for v in report.values(g))]
  moving = [g for g in report.groups if g not in unmoved]
  named, faint = moving[:top], moving[top:]
  marker = "o" if len(steps) <= 40 else None
  for group in faint:
    axes.plot(steps, _finite(report.values(group)), color="#bbbbbb", linewidth=0.8, alpha=0.7)
  if unmoved:
    axes.plot(steps, [0.0] * len(steps), color="#555555", linewidth=1.5, linestyle="--",
              marker=marker, markersize=3,
              label=("%s: 0.0 at every step" % unmoved[0] if len(unmoved) == 1 else
                     "%d groups at 0.0 at every step (%s)" % (
                         len(unmoved), ", ".join(unmoved[:3]) + (" ..." if len(unmoved) > 3
                                                                 else ""))))
  palette = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
             "#000000"]
  for index, group in enumerate(named):
    values = report.values(group)
    axes.plot(steps, _finite(values), color=palette[index % len(palette)], linewidth=2,
              marker=marker, markersize=3.5,
              label="%s  %.3g at step %d" % (group, values[-1], steps[-1]))
  if faint:
    axes.plot([], [], color="#bbbbbb", linewidth=0.8,
              label="%d more groups, each ≤ %.3g at step %d" % (
                  len(faint), max(report.values(g)[-1] for g in faint), steps[-1]))
  from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top
  axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
  axes.set_xlabel("global step (one point per checkpoint)")
  axes.set_ylabel("‖w − w₀‖ / ‖w₀‖")
  if moving:  # from 0 (a cut axis would exaggerate small changes), the 0 line in full view
    highest = max([v for g in moving for v in report.values(g) if math.isfinite(v)] + [0.0])
    if highest > 0:
      axes.set_ylim(-0.03 * highest, 1.05 * highest)
  else:
    axes.set_ylim(-0.05, 1.0)
  axes.grid(color="#dddddd", linewidth=0.6)
  for side in ("top", "right"):
    axes.spines[side].set_visible(False)
  axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
  figure.suptitle("warmstart drift — distance from the warm-start source per group\n"
                  "source: %s   model_dir: %s (%s in %s)" % (
                      _short(report.source), _short(report.model_dir),
                      _count(len(report.tensors), "tensor"), _count(len(report.groups), "group")),
                  fontsize=9, x=0.01, ha="left")
  return figure


def _count(number: int, noun: str) -> str:
  return "%d %s%s" % (number, noun, "" if number == 1 else "s")


def _finite(values):
  return [v if math.isfinite(v) else math.nan for v in values]

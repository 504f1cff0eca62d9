"""Benchmark of `warmstart.drift`: memory bounded by the largest tensor, not by the model.

Writes a source checkpoint of --gib GiB (one large embedding of --largest_mib MiB, the rest in
--tensors kernels of lognormally varied sizes) and a model_dir of --checkpoints checkpoints of
the same tensors moved a little more at each step, then measures side by side, --repeats times
each with the runs interleaved, each run in a fresh subprocess (no TensorFlow in any of them):

  drift      `warmstart.drift(source, model_dir)`, the library call
  naive      the obvious script: every source tensor read into a dict first (np.load-style), then
             each checkpoint's tensors compared with it (the same float64 arithmetic)
  floor      every byte of the source and of each checkpoint read once (16 MiB `f.read`)
  baseline   `import warmstart, numpy` alone (its peak RSS is the memory baseline)

and prints medians, the ratios and each peak RSS (VmHWM) against the target:
peak RSS(drift) <= RSS(baseline) + 2 x largest tensor + 64 MiB, whatever the model's size.

  python benchmarks/drift_bench.py                  # 1 GiB model, 3 checkpoints
  python benchmarks/drift_bench.py --gib=0.1 --largest_mib=16 --repeats=1   # a quick run
"""
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import (
  app,
  flags,
)

flags.DEFINE_float("gib", 1.0, "Size of the model (each checkpoint), GiB.")
flags.DEFINE_integer("largest_mib", 128, "Size of its largest tensor (an embedding), MiB.")
flags.DEFINE_integer("tensors", 200, "Number of other tensors.")
flags.DEFINE_integer("checkpoints", 3, "Checkpoints in the model_dir.")
flags.DEFINE_integer("repeats", 3, "Repetitions of each measurement (medians are reported).")
flags.DEFINE_string("work_dir", None, "Where to write the checkpoints (default: a new "
                    "temporary directory, removed at the end).")
flags.DEFINE_string("child", None, "Internal: run one measurement and print it as JSON.")
FLAGS = flags.FLAGS

MIB = 1 << 20
KINDS = ("drift", "naive", "floor", "baseline")


def peak_rss():
  """This process's peak resident set size (VmHWM), bytes."""
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("no VmHWM in /proc/self/status")


def write_checkpoints(directory):
  """Writes source/ and model_dir/; returns (source prefix, model_dir, facts)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  width = 256
  largest = FLAGS.largest_mib * MIB
  rest = max(0, int(FLAGS.gib * 2**30) - largest)
  weights = rng.lognormal(0.0, 0.6, FLAGS.tensors)
  rows = np.maximum(1, (weights / weights.sum() * rest / 4 / width).astype(np.int64))
  source = {"model/embedding/table": rng.standard_normal((largest // 4 // width, width),
                                                         dtype=np.float32)}
  for index, height in enumerate(rows):
    source["model/layer%03d/kernel" % index] = rng.standard_normal((int(height), width),
                                                                   dtype=np.float32)
  names = sorted(source)

  def save(prefix, tensors):
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tensors[n] for n in names])

  source_prefix = os.path.join(directory, "source", "model.ckpt-0")
  save(source_prefix, source)
  model_dir = os.path.join(directory, "model_dir")
  for step in range(1, FLAGS.checkpoints + 1):
    save(os.path.join(model_dir, "model.ckpt-%d" % (100 * step)),
         {n: v + np.float32(1e-3 * step) for n, v in source.items()})
  total = sum(v.nbytes for v in source.values())
  facts = dict(tensors=len(source), model_bytes=total, largest_bytes=source[
      "model/embedding/table"].nbytes, checkpoints=FLAGS.checkpoints)
  return source_prefix, model_dir, facts


# ---------------------------------------------------------------------------------------------
# Measurements (each in its own process)


def measure_drift(source, model_dir):
  import warmstart  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  report = warmstart.drift(source, model_dir)
  seconds = time.perf_counter() - start
  return seconds, {"groups": len(report.groups),
                   "last": report.value("model/embedding", report.steps[-1])}


def measure_naive(source, model_dir):
  import numpy as np  # pylint: disable=g-import-not-at-top

  import warmstart  # pylint: disable=g-import-not-at-top
  from warmstart import _drift, sources  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  with sources.open_reader(warmstart.resolve_checkpoint(source)) as reader:
    originals = {name: reader.read(name) for name in reader.variables}
  last = None
  for ref in _drift.checkpoints_of(model_dir):
    with sources.open_reader(ref) as reader:
      values = {name: reader.read(name) for name in reader.variables}  # the whole checkpoint
      delta = sum(_drift.squared_distance(values[n], originals[n]) for n in originals)
      last = float(np.sqrt(delta))
  return time.perf_counter() - start, {"last_distance": last}


def measure_floor(source, model_dir):
  files = glob.glob(source + ".data-*") + glob.glob(os.path.join(model_dir, "*.data-*"))
  start = time.perf_counter()
  total = 0
  for path in files:
    with open(path, "rb", buffering=0) as f:
      while True:
        data = f.read(16 * MIB)
        if not data:
          break
        total += len(data)
  return time.perf_counter() - start, {"bytes": total}


def measure_baseline(source, model_dir):
  del source, model_dir
  import importlib  # pylint: disable=g-import-not-at-top
  for module in ("numpy", "warmstart"):
    importlib.import_module(module)
  return 0.0, {}


def child(kind, source, model_dir):
  seconds, facts = globals()["measure_" + kind](source, model_dir)
  facts.update(seconds=seconds, peak_rss=peak_rss(),
               tensorflow_imported="tensorflow" in sys.modules)
  print(json.dumps(facts))


def run_child(kind, source, model_dir):
  environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      os.environ.get("PYTHONPATH")])))
  result = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "--child=" + kind, source, model_dir],
      capture_output=True, text=True, env=environment, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv):
  if FLAGS.child:
    child(FLAGS.child, argv[1], argv[2])
    return
  directory = FLAGS.work_dir or tempfile.mkdtemp(prefix="drift-bench-")
  try:
    source, model_dir, facts = write_checkpoints(directory)
    print("model: %(tensors)d tensors, %(model_bytes)d bytes, largest %(largest_bytes)d bytes, "
          "%(checkpoints)d checkpoints" % facts)
    # Warm the page cache, so every method reads from memory.
    run_child("floor", source, model_dir)
    runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    for _ in range(FLAGS.repeats):
      for kind in KINDS:
        runs[kind].append(run_child(kind, source, model_dir))
    medians = {kind: (statistics.median(r["seconds"] for r in results),
                      statistics.median(r["peak_rss"] for r in results) / MIB)
               for kind, results in runs.items()}
    print("| median of %d | seconds | peak RSS MiB |" % FLAGS.repeats)
    print("| --- | --- | --- |")
    for kind, (seconds, rss) in medians.items():
      print("| `%s` | %.3f | %.0f |" % (kind, seconds, rss))
    largest = facts["largest_bytes"] / MIB
    budget = medians["baseline"][1] + 2 * largest + 64
    print("wall(drift) / wall(floor) = %.2f; wall(naive) / wall(drift) = %.2f" % (
        medians["drift"][0] / medians["floor"][0], medians["naive"][0] / medians["drift"][0]))
    print("peak RSS above baseline: drift %.0f MiB, naive %.0f MiB; target for drift <= "
          "2 x %.0f + 64 = %.0f MiB above baseline (%.0f MiB): %s" % (
              medians["drift"][1] - medians["baseline"][1],
              medians["naive"][1] - medians["baseline"][1], largest, 2 * largest + 64, budget,
              "met" if medians["drift"][1] <= budget else "NOT met"))
    print("TensorFlow imported by a measured process: %s" % any(
        r["tensorflow_imported"] for results in runs.values() for r in results))
  finally:
    if not FLAGS.work_dir:
      shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)

"""Benchmark of `warmstart.diff` against the I/O floor and a naive TensorFlow loop.

Writes two checkpoints of --gib GiB each (--tensors tensors: kernels of varied sizes and their
small biases; every other layer changed in every element, as fine-tuning does, the rest
identical) into a temporary directory, then measures side by side, --repeats times each with
the runs interleaved, each run in a fresh subprocess:

  floor       a raw byte comparison of the two data files: both read in 16 MiB chunks
              (`f.read`) and compared, to the end
  floor_tight the same done as fast as Python can: 2 MiB reads into reused page-aligned
              buffers (os.preadv) compared with libc's memcmp; the real I/O floor
  diff        `warmstart.diff(a, b)`, the library call (the import is not timed)
  cli         `warmstart diff A B > /dev/null`, the whole command (TensorFlow import included)
  naive       `tf.train.load_checkpoint(...).get_tensor` for every name + `np.array_equal`
  import_tf   `import tensorflow` alone (its peak RSS is the memory baseline)
  *_same      floor_tight and diff of A against a byte-for-byte copy of A (no tensor changed)

and prints medians, the ratios and the peak RSS (VmHWM) of each against the targets:
wall(diff) <= 1.15 x wall(floor), peak RSS(diff) <= RSS(import tensorflow) + 2 x largest tensor
+ 64 MiB. The temporary directory is removed at the end.

  python benchmarks/diff_bench.py              # 2 x 1 GiB
  python benchmarks/diff_bench.py --gib=0.05   # a quick run
"""
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

flags.DEFINE_float("gib", 1.0, "Size of each checkpoint, GiB.")
flags.DEFINE_integer("tensors", 400, "Number of tensors per checkpoint (half kernels, half "
                     "biases).")
flags.DEFINE_integer("repeats", 3, "Repetitions of each measurement (medians are reported).")
flags.DEFINE_string("work_dir", None, "Where to write the checkpoints (default: a new "
                    "temporary directory, removed at the end).")
flags.DEFINE_list("only", [], "Measure only these (floor, floor_tight, diff, cli, naive, "
                  "import_tf).")
flags.DEFINE_string("child", None, "Internal: run one measurement and print it as JSON.")
FLAGS = flags.FLAGS

MIB = 1 << 20
KINDS = ("floor", "floor_tight", "diff", "cli", "naive", "import_tf", "floor_tight_same",
         "diff_same")
# The *_same kinds compare A with a byte-for-byte copy of A: the fast path alone.
SAME = ("floor_tight_same", "diff_same")


def peak_rss():
  """This process's peak resident set size (VmHWM), bytes."""
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("no VmHWM in /proc/self/status")


# ---------------------------------------------------------------------------------------------
# Checkpoints


def write_checkpoints(directory, gib, count):
  """Writes checkpoints a and b; returns (prefix_a, prefix_b, largest tensor bytes, facts)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  layers = max(1, count // 2)
  width = 256
  weights = rng.lognormal(0.0, 0.6, layers)
  rows = np.maximum(1, (weights / weights.sum() * gib * 2**30 / 4 / width).astype(np.int64))
  tensors_a, tensors_b, changed_bytes = {}, {}, 0
  for layer, height in enumerate(rows):
    for name, shape in (("kernel", (int(height), width)), ("bias", (width,))):
      full = "model/layer%03d/%s" % (layer, name)
      value = rng.standard_normal(shape, dtype=np.float32)
      tensors_a[full] = value
      if layer % 2:  # fine-tuned layer: every element moves a little
        tensors_b[full] = value + rng.standard_normal(shape, dtype=np.float32) * np.float32(1e-3)
        changed_bytes += value.nbytes
      else:
        tensors_b[full] = value
  prefixes = []
  for label, tensors in (("a", tensors_a), ("b", tensors_b)):
    prefix = os.path.join(directory, label, "model.ckpt-1")
    os.makedirs(os.path.dirname(prefix))
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tensors[n] for n in names])
    prefixes.append(prefix)
  largest = max(v.nbytes for v in tensors_a.values())
  total = sum(v.nbytes for v in tensors_a.values())
  facts = dict(tensors=len(tensors_a), total_bytes=total, changed_bytes=changed_bytes,
               changed_tensors=sum(1 for n in tensors_a if int(n[11:14]) % 2),
               largest_bytes=largest)
  return prefixes[0], prefixes[1], facts


# ---------------------------------------------------------------------------------------------
# Measurements (each in its own process)


def measure_floor(a, b):
  chunk, differing = 16 * MIB, 0
  with open(a + ".data-00000-of-00001", "rb", buffering=0) as file_a, \
       open(b + ".data-00000-of-00001", "rb", buffering=0) as file_b:
    start = time.perf_counter()
    while True:
      data_a, data_b = file_a.read(chunk), file_b.read(chunk)
      if not data_a and not data_b:
        break
      differing += data_a != data_b
    return time.perf_counter() - start, {"differing_chunks": differing}


def measure_floor_tight(a, b):
  import ctypes  # pylint: disable=g-import-not-at-top
  import mmap  # pylint: disable=g-import-not-at-top
  memcmp = ctypes.CDLL(None).memcmp
  memcmp.restype, memcmp.argtypes = ctypes.c_int, [ctypes.c_void_p] * 2 + [ctypes.c_size_t]
  chunk, differing = 2 * MIB, 0
  # Page-aligned buffers (fresh malloc'ed ones are several times slower to read into here).
  buffer_a, buffer_b = mmap.mmap(-1, chunk), mmap.mmap(-1, chunk)
  address_a = ctypes.addressof(ctypes.c_char.from_buffer(buffer_a))
  address_b = ctypes.addressof(ctypes.c_char.from_buffer(buffer_b))
  fd_a = os.open(a + ".data-00000-of-00001", os.O_RDONLY)
  fd_b = os.open(b + ".data-00000-of-00001", os.O_RDONLY)
  start = time.perf_counter()
  offset = 0
  while True:
    count = os.preadv(fd_a, [buffer_a], offset)
    if os.preadv(fd_b, [buffer_b], offset) != count:
      raise RuntimeError("data files differ in size")
    if not count:
      break
    differing += memcmp(address_a, address_b, count) != 0
    offset += count
  seconds = time.perf_counter() - start
  os.close(fd_a)
  os.close(fd_b)
  return seconds, {"differing_chunks": differing}


def measure_floor_tight_same(a, b):
  return measure_floor_tight(a, b)


def measure_diff_same(a, b):
  return measure_diff(a, b)


def measure_diff(a, b):
  import warmstart  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  report = warmstart.diff(a, b)
  seconds = time.perf_counter() - start
  return seconds, {"identical": len(report.by_status("identical")),
                   "changed": len(report.by_status("changed"))}


def measure_naive(a, b):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  reader_a, reader_b = tf.train.load_checkpoint(a), tf.train.load_checkpoint(b)
  identical = 0
  for name in reader_a.get_variable_to_shape_map():
    identical += bool(np.array_equal(reader_a.get_tensor(name), reader_b.get_tensor(name)))
  return time.perf_counter() - start, {"identical": identical}


def measure_import_tf(a, b):
  del a, b
  start = time.perf_counter()
  return time.perf_counter() - start, {}


def measure_cli(a, b):
  """The whole `warmstart diff` command; its peak RSS from wait4 (this small process forks it)."""
  command = os.path.join(os.path.dirname(sys.executable), "warmstart")
  start = time.perf_counter()
  with open(os.devnull, "w") as devnull:
    process = subprocess.Popen([command, "diff", a, b], stdout=devnull)
    _, status, usage = os.wait4(process.pid, 0)
  seconds = time.perf_counter() - start
  process.returncode = os.waitstatus_to_exitcode(status)
  if process.returncode not in (0, 1):
    raise RuntimeError("warmstart diff failed with exit status %d" % process.returncode)
  return seconds, {"child_peak_rss": usage.ru_maxrss * 1024}


def run_child(kind, a, b):
  """Runs one measurement in a fresh process; returns {seconds, peak_rss, ...}."""
  output = subprocess.run([sys.executable, os.path.abspath(__file__), "--child=" + kind,
                           "--", a, b], check=True, capture_output=True, text=True).stdout
  result = json.loads(output.strip().splitlines()[-1])
  if "child_peak_rss" in result:  # cli: the command's own peak, not the wrapper's
    result["peak_rss"] = result.pop("child_peak_rss")
  return result


# ---------------------------------------------------------------------------------------------


def machine():
  with open("/proc/cpuinfo") as cpuinfo:
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                 "unknown CPU")
  with open("/proc/meminfo") as meminfo:
    memory = int(meminfo.readline().split()[1]) * 1024
  return "%d CPUs (%s), %.1f GiB RAM, Python %s" % (
      os.cpu_count(), model, memory / 2**30, sys.version.split()[0])


def main(argv):
  if FLAGS.child:
    seconds, extra = globals()["measure_" + FLAGS.child](*argv[1:3])
    print(json.dumps(dict(seconds=seconds, peak_rss=peak_rss(), **extra)))
    return 0
  kinds = [k for k in KINDS if not FLAGS.only or k in FLAGS.only]
  directory = FLAGS.work_dir or tempfile.mkdtemp(prefix="warmstart_diff_bench_")
  try:
    print("machine: %s" % machine())
    try:
      import google_crc32c  # pylint: disable=g-import-not-at-top,unused-import
      print("checksums of differing tensors: google-crc32c (%s)" % google_crc32c.implementation)
    except ImportError:
      print("checksums of differing tensors: TensorFlow's reader (google-crc32c not installed)")
    start = time.perf_counter()
    a, b, facts = write_checkpoints(directory, FLAGS.gib, FLAGS.tensors)
    print("checkpoints: 2 x %d tensors, %.2f GiB each (%.2f GiB in %d tensors changed), "
          "largest tensor %.1f MiB; written in %.1f s" % (
              facts["tensors"], facts["total_bytes"] / 2**30, facts["changed_bytes"] / 2**30,
              facts["changed_tensors"], facts["largest_bytes"] / MIB,
              time.perf_counter() - start))
    a_copy = os.path.join(directory, "a_copy", os.path.basename(a))
    if any(kind in SAME for kind in kinds):
      os.makedirs(os.path.dirname(a_copy))
      for suffix in (".index", ".data-00000-of-00001"):
        shutil.copyfile(a + suffix, a_copy + suffix)
    # Every method reads from the page cache: flush the writes, then read the files once.
    os.sync()
    for prefix in (a, b) + ((a_copy,) if os.path.exists(a_copy + ".index") else ()):
      with open(prefix + ".data-00000-of-00001", "rb", buffering=0) as data:
        while data.read(16 * MIB):
          pass
    results = {kind: [] for kind in kinds}
    for repeat in range(FLAGS.repeats):
      for kind in kinds:
        results[kind].append(run_child(kind, a, a_copy if kind in SAME else b))
        print("  run %d %-16s %7.3f s  peak RSS %6.0f MiB" % (
            repeat + 1, kind, results[kind][-1]["seconds"], results[kind][-1]["peak_rss"] / MIB),
            flush=True)
    median = {k: {"seconds": statistics.median(r["seconds"] for r in runs),
                  "peak_rss": statistics.median(r["peak_rss"] for r in runs)}
              for k, runs in results.items()}
    print("\nmedians of %d runs:" % FLAGS.repeats)
    for kind, m in median.items():
      ratios = "".join(
          "  %5.2f x %s" % (m["seconds"] / median[floor]["seconds"], floor)
          for floor in ("floor", "floor_tight") if floor in median and kind != "import_tf"
          and (kind in SAME) == (floor in SAME))
      if kind == "diff_same" and "floor_tight_same" in median:
        ratios = "  %5.2f x floor_tight_same" % (
            m["seconds"] / median["floor_tight_same"]["seconds"])
      print("  %-16s %7.3f s  peak RSS %6.0f MiB%s" % (kind, m["seconds"], m["peak_rss"] / MIB,
                                                        ratios))
    print()
    for diff_kind, floor_kind in (("diff", "floor"), ("diff", "floor_tight"),
                                  ("diff_same", "floor_tight_same")):
      if {diff_kind, floor_kind} <= set(median):
        ratio = median[diff_kind]["seconds"] / median[floor_kind]["seconds"]
        print("wall(%s) / wall(%s) = %.2f (target <= 1.15): %s" % (
            diff_kind, floor_kind, ratio, "met" if ratio <= 1.15 else "NOT met"))
    if "naive" in median and "diff" in median:
      print("wall(naive) / wall(diff) = %.2f" % (
          median["naive"]["seconds"] / median["diff"]["seconds"]))
    if {"diff", "import_tf"} <= set(median):
      budget = median["import_tf"]["peak_rss"] + 2 * facts["largest_bytes"] + 64 * MIB
      for kind in ("diff", "diff_same", "cli"):
        if kind in median:
          used = median[kind]["peak_rss"]
          print("peak RSS(%s) = %.0f MiB; budget RSS(import tensorflow) %.0f MiB + 2 x largest "
                "tensor %.1f MiB + 64 MiB = %.0f MiB: %s" % (
                    kind, used / MIB, median["import_tf"]["peak_rss"] / MIB,
                    facts["largest_bytes"] / MIB, budget / MIB,
                    "met" if used <= budget else "NOT met"))
  finally:
    if not FLAGS.work_dir:
      shutil.rmtree(directory, ignore_errors=True)
  return 0


if __name__ == "__main__":
  app.run(main)

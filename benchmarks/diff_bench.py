"""Benchmark of the verification commands: `warmstart ls` and `warmstart diff`.

`warmstart ls` of a small checkpoint (7 variables, as the demo's) against TensorFlow's own
`python -m tensorflow.python.tools.inspect_checkpoint --file_name=...` on the same file, both
whole commands from start to exit.

`warmstart.diff` against the I/O floor and a naive TensorFlow loop, and the whole `warmstart
diff` command against the library call. Writes two checkpoints of --gib GiB each (--tensors
tensors: kernels of varied sizes and their small biases; every other layer changed in every
element, as fine-tuning does, the rest identical) into a temporary directory, then measures side
by side, --repeats times each with the runs interleaved, each run in a fresh subprocess:

  floor       a raw byte comparison of the two data files: both read in 16 MiB chunks
              (`f.read`) and compared, to the end
  floor_tight the same done as fast as Python can: 2 MiB reads into reused page-aligned
              buffers (os.preadv) compared with libc's memcmp; the real I/O floor
  diff        `warmstart.diff(a, b)`, the library call (the import is not timed)
  cli         `warmstart diff A B > /dev/null`, the whole command (interpreter start-up, imports)
  ls          `warmstart ls SMALL > /dev/null`, the whole command, on the small checkpoint
  inspect_checkpoint  `python -m tensorflow.python.tools.inspect_checkpoint --file_name=SMALL`
  naive       `tf.train.load_checkpoint(...).get_tensor` for every name + `np.array_equal`
  import_tf   `import tensorflow` alone (its peak RSS is the memory baseline)
  *_same      floor_tight and diff of A against a byte-for-byte copy of A (no tensor changed)

and prints medians, the ratios and the peak RSS (VmHWM; for commands ru_maxrss) of each against
the targets: wall(ls) <= 0.5 s, peak RSS(ls) <= 80 MiB, wall(inspect_checkpoint) >= 8 x
wall(ls); wall(cli) <= 1.3 x wall(diff), peak RSS(cli) <= 150 MiB; wall(diff) <= 1.15 x
wall(floor). The load average before and after is printed: the figures are only as quiet as
the machine. The temporary directory is removed at the end.

  python benchmarks/diff_bench.py              # 2 x 1 GiB
  python benchmarks/diff_bench.py --gib=0.05   # a quick run
  python benchmarks/diff_bench.py --work_dir=/tmp/bench --only=ls,inspect_checkpoint,diff,cli
      # keeps (and on a second run reuses) the checkpoints
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
flags.DEFINE_list("only", [], "Measure only these (see KINDS).")
flags.DEFINE_string("child", None, "Internal: run one measurement and print it as JSON.")
FLAGS = flags.FLAGS

MIB = 1 << 20
KINDS = ("ls", "inspect_checkpoint", "floor", "floor_tight", "diff", "cli", "naive", "import_tf",
         "floor_tight_same", "diff_same")
# Run on the small checkpoint.
SMALL = ("ls", "inspect_checkpoint")
# Targets of issue 13.
LS_SECONDS, LS_RSS, LS_SPEEDUP = 0.5, 80 * (1 << 20), 8.0
CLI_OVER_DIFF, CLI_RSS = 1.3, 150 * (1 << 20)
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


def write_small_checkpoint(directory):
  """The demo's 7-variable MLP checkpoint (784-128-10 and Adam's beta powers)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  tensors = {"mnist/hidden/kernel": rng.standard_normal((784, 128), dtype=np.float32),
             "mnist/hidden/bias": np.zeros(128, np.float32),
             "mnist/logits/kernel": rng.standard_normal((128, 10), dtype=np.float32),
             "mnist/logits/bias": np.zeros(10, np.float32),
             "beta1_power": np.float32(0.9**300), "beta2_power": np.float32(0.999**300),
             "global_step": np.int64(300)}
  prefix = os.path.join(directory, "small", "model.ckpt-300")
  os.makedirs(os.path.dirname(prefix))
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tensors[n] for n in names])
  return prefix


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
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return time.perf_counter() - start, {"tensorflow": tf.__version__}


def measure_command(argv):
  """A whole command, start to exit; its peak RSS from wait4 (this small process forks it)."""
  start = time.perf_counter()
  with open(os.devnull, "w") as devnull:
    process = subprocess.Popen(argv, stdout=devnull)
    _, status, usage = os.wait4(process.pid, 0)
  seconds = time.perf_counter() - start
  code = os.waitstatus_to_exitcode(status)
  if code not in (0, 1):
    raise RuntimeError("%s failed with exit status %d" % (" ".join(argv), code))
  return seconds, {"child_peak_rss": usage.ru_maxrss * 1024}


def warmstart_command():
  return os.path.join(os.path.dirname(sys.executable), "warmstart")


def measure_cli(a, b):
  return measure_command([warmstart_command(), "diff", a, b])


def measure_ls(small, _):
  return measure_command([warmstart_command(), "ls", small])


def measure_inspect_checkpoint(small, _):
  return measure_command([sys.executable, "-m", "tensorflow.python.tools.inspect_checkpoint",
                          "--file_name=" + small])


def run_child(kind, a, b):
  """Runs one measurement in a fresh process; returns {seconds, peak_rss, ...}."""
  output = subprocess.run([sys.executable, os.path.abspath(__file__), "--child=" + kind,
                           "--", a, b], check=True, capture_output=True, text=True).stdout
  result = json.loads(output.strip().splitlines()[-1])
  if "child_peak_rss" in result:  # commands: their own peak, not the wrapper's
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


def load_average():
  return "%.2f %.2f %.2f" % os.getloadavg()


def prepare(directory):
  """Writes (or, in a --work_dir that has them, reuses) the checkpoints; returns their paths."""
  start = time.perf_counter()
  facts_path = os.path.join(directory, "facts.json")
  if os.path.exists(facts_path):
    with open(facts_path) as f:
      paths = json.load(f)
    print("checkpoints: reused from %s" % directory)
  else:
    a, b, facts = write_checkpoints(directory, FLAGS.gib, FLAGS.tensors)
    paths = dict(a=a, b=b, facts=facts, small=write_small_checkpoint(directory))
    paths["a_copy"] = os.path.join(directory, "a_copy", os.path.basename(a))
    os.makedirs(os.path.dirname(paths["a_copy"]))
    for suffix in (".index", ".data-00000-of-00001"):
      shutil.copyfile(a + suffix, paths["a_copy"] + suffix)
    with open(facts_path, "w") as f:
      json.dump(paths, f)
  facts = paths["facts"]
  print("checkpoints: 2 x %d tensors, %.2f GiB each (%.2f GiB in %d tensors changed), "
        "largest tensor %.1f MiB; ready in %.1f s" % (
            facts["tensors"], facts["total_bytes"] / 2**30, facts["changed_bytes"] / 2**30,
            facts["changed_tensors"], facts["largest_bytes"] / MIB, time.perf_counter() - start))
  # Every method reads from the page cache: flush the writes, then read the files once.
  os.sync()
  for prefix in (paths["a"], paths["b"], paths["a_copy"], paths["small"]):
    with open(prefix + ".data-00000-of-00001", "rb", buffering=0) as data:
      while data.read(16 * MIB):
        pass
  return paths


def arguments(kind, paths):
  if kind in SMALL:
    return paths["small"], paths["small"]
  return paths["a"], paths["a_copy"] if kind in SAME else paths["b"]


def report(median, facts):
  """Prints the ratios and checks against the targets."""
  def line(text, ok):
    print("%s: %s" % (text, "met" if ok else "NOT met"))

  if "ls" in median:
    ls = median["ls"]
    line("wall(ls) = %.3f s (target <= %.1f s)" % (ls["seconds"], LS_SECONDS),
         ls["seconds"] <= LS_SECONDS)
    line("peak RSS(ls) = %.0f MiB (target <= %.0f MiB)" % (ls["peak_rss"] / MIB, LS_RSS / MIB),
         ls["peak_rss"] <= LS_RSS)
    if "inspect_checkpoint" in median:
      speedup = median["inspect_checkpoint"]["seconds"] / ls["seconds"]
      line("wall(inspect_checkpoint) / wall(ls) = %.1f (target >= %.0f)" % (speedup, LS_SPEEDUP),
           speedup >= LS_SPEEDUP)
  if {"cli", "diff"} <= set(median):
    ratio = median["cli"]["seconds"] / median["diff"]["seconds"]
    line("wall(cli) / wall(diff) = %.2f (target <= %.1f)" % (ratio, CLI_OVER_DIFF),
         ratio <= CLI_OVER_DIFF)
  for kind in ("cli", "diff", "diff_same"):
    if kind in median:
      line("peak RSS(%s) = %.0f MiB (target <= %.0f MiB; largest tensor %.1f MiB)" % (
          kind, median[kind]["peak_rss"] / MIB, CLI_RSS / MIB, facts["largest_bytes"] / MIB),
           median[kind]["peak_rss"] <= CLI_RSS)
  for diff_kind, floor_kind in (("diff", "floor"), ("diff", "floor_tight"),
                                ("diff_same", "floor_tight_same")):
    if {diff_kind, floor_kind} <= set(median):
      ratio = median[diff_kind]["seconds"] / median[floor_kind]["seconds"]
      line("wall(%s) / wall(%s) = %.2f (target <= 1.15)" % (diff_kind, floor_kind, ratio),
           ratio <= 1.15)
  if "naive" in median and "diff" in median:
    print("wall(naive) / wall(diff) = %.2f" % (
        median["naive"]["seconds"] / median["diff"]["seconds"]))


def main(argv):
  if FLAGS.child:
    seconds, extra = globals()["measure_" + FLAGS.child](*argv[1:3])
    print(json.dumps(dict(seconds=seconds, peak_rss=peak_rss(), **extra)))
    return 0
  kinds = [k for k in KINDS if not FLAGS.only or k in FLAGS.only]
  directory = FLAGS.work_dir or tempfile.mkdtemp(prefix="warmstart_diff_bench_")
  try:
    print("machine: %s" % machine())
    print("date: %s; load average before: %s" % (time.strftime("%Y-%m-%d %H:%M"),
                                                   load_average()))
    paths = prepare(directory)
    results = {kind: [] for kind in kinds}
    for repeat in range(FLAGS.repeats):
      for kind in kinds:
        results[kind].append(run_child(kind, *arguments(kind, paths)))
        print("  run %d %-18s %7.3f s  peak RSS %6.0f MiB  (load %s)" % (
            repeat + 1, kind, results[kind][-1]["seconds"], results[kind][-1]["peak_rss"] / MIB,
            load_average()), flush=True)
    median = {k: {"seconds": statistics.median(r["seconds"] for r in runs),
                  "peak_rss": statistics.median(r["peak_rss"] for r in runs)}
              for k, runs in results.items()}
    print("\nmedians of %d runs (load average after: %s):" % (FLAGS.repeats, load_average()))
    for kind, m in median.items():
      print("  %-18s %7.3f s  peak RSS %6.0f MiB" % (kind, m["seconds"], m["peak_rss"] / MIB))
    print()
    report(median, paths["facts"])
  finally:
    if not FLAGS.work_dir:
      shutil.rmtree(directory, ignore_errors=True)
  return 0


if __name__ == "__main__":
  app.run(main)

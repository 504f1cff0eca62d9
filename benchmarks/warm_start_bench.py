"""Benchmark: the cost of warm-starting an Estimator, ours against TF's `WarmStartSettings`.

For models of --variables N small variables (and, with --gib, one with that many GiB of weights in
64 MiB kernels), each run in a fresh subprocess, interleaved, --repeats times:

  none      a plain `tf.estimator.Estimator`, no warm start
  tf        `warm_start_from=tf.estimator.WarmStartSettings(SOURCE, vars_to_warm_start=".*")`
  warmstart `warmstart.estimator_from(model_fn, warm_start_from=SOURCE)`

It measures the time from building the Estimator to the end of its first training step (the
first `train(steps=1)` from an empty model_dir, with checkpoint saving off: graph building,
planning, session creation, restore, one step), the peak RSS (VmHWM), and the phases: graph
building (to the hooks' `begin`), session creation (the initializers: the restore) and the
first step's run. It prints medians and the overhead ratio (warmstart - none) / (tf - none) per
size, over the whole time and over graph + session (the first step's run is the same work in
every mode, and the noisiest): 1.0 is "as costly as TF's own warm start", below 1 is cheaper,
below 0 cheaper than no warm start.

  python benchmarks/warm_start_bench.py                           # 200 and 2000 variables
  python benchmarks/warm_start_bench.py --variables=10000 --repeats=1
  python benchmarks/warm_start_bench.py --variables= --gib=1      # one model of 1 GiB
  python benchmarks/warm_start_bench.py --variables=2000 --profile=warmstart   # where time goes
"""
import cProfile
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags

MODES = ("none", "tf", "warmstart")
flags.DEFINE_list("variables", ["200", "2000"], "Model sizes, in variables.")
flags.DEFINE_float("gib", 0.0, "Also a model with this many GiB of weights (0: none).")
flags.DEFINE_integer("repeats", 3, "Interleaved repetitions of each measurement (medians).")
flags.DEFINE_enum("profile", None, MODES,
                  "Instead: run this mode once per size under cProfile and print its top costs.")
flags.DEFINE_string("child", None, "Internal: run one measurement (JSON) and print the result.")
FLAGS = flags.FLAGS

_BIG = 1 << 24  # float32 elements in one 64 MiB kernel


def _shapes(spec):
  """[(name, shape)] of a model: N tiny kernels, or GiB of 64 MiB kernels."""
  if spec["gib"]:
    count = max(1, round(spec["gib"] * (1 << 30) / (4 * _BIG)))
    return [("big_%d/kernel" % i, [_BIG // 1024, 1024]) for i in range(count)]
  return [("layer_%d/kernel" % i, [4, 4]) for i in range(spec["variables"])]


def _model_fn(features, labels, mode, params):
  import tensorflow as tf
  total = tf.constant(0.0)
  for name, shape in _shapes(params):
    variable = tf.compat.v1.get_variable(name, shape, initializer=tf.compat.v1.zeros_initializer())
    total += tf.reduce_sum(variable[:1, :1]) * tf.reduce_mean(features["x"])
  loss = tf.square(total - 1.0)
  train_op = tf.compat.v1.train.GradientDescentOptimizer(0.01).minimize(
      loss, global_step=tf.compat.v1.train.get_or_create_global_step())
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def _input_fn():
  import tensorflow as tf
  return tf.data.Dataset.from_tensors(({"x": tf.ones([1, 4])}, tf.zeros([1]))).repeat()


def _write_source(spec, directory):
  import numpy as np
  import tensorflow as tf
  with tf.Graph().as_default():
    names, values = zip(*[(n, np.full(s, 0.5, np.float32)) for n, s in _shapes(spec)])
    save = tf.raw_ops.SaveV2(prefix=os.path.join(directory, "model.ckpt-1"),
                             tensor_names=list(names), shape_and_slices=[""] * len(names),
                             tensors=[tf.constant(v) for v in values])
    with tf.compat.v1.Session() as session:
      session.run(save)
  tf.compat.v1.train.update_checkpoint_state(directory, os.path.join(directory, "model.ckpt-1"))


def _peak_rss():
  with open("/proc/self/status") as status:
    for line in status:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  return 0


def _child(job):
  import tensorflow as tf

  import warmstart
  tf.get_logger().setLevel("ERROR")
  spec, mode = job["spec"], job["mode"]
  if mode == "write":
    _write_source(spec, job["source"])
    return
  # No checkpoints: the time ends with the first training step, not with writing the model.
  config = tf.estimator.RunConfig(save_summary_steps=None, log_step_count_steps=None,
                                  save_checkpoints_steps=None, save_checkpoints_secs=None)
  start = time.perf_counter()
  if mode == "warmstart":
    estimator = warmstart.estimator_from(_model_fn, model_dir=job["model_dir"],
                                         warm_start_from=job["source"], params=spec,
                                         config=config)
  else:
    warm = (tf.estimator.WarmStartSettings(job["source"], vars_to_warm_start=".*")
            if mode == "tf" else None)
    estimator = tf.estimator.Estimator(_model_fn, model_dir=job["model_dir"], params=spec,
                                       config=config, warm_start_from=warm)
  phases = _phases(start)
  estimator.train(_input_fn, steps=1, hooks=[phases])
  print(json.dumps({"seconds": time.perf_counter() - start, "rss": _peak_rss(),
                    "phases": phases.seconds}))


def _phases(start):
  """A hook timing, from `start`: graph building, session creation (the initializers: the
  restore) and the first step's run. Its class is made here: TensorFlow is imported late."""
  import tensorflow as tf

  class Phases(tf.compat.v1.train.SessionRunHook):
    def __init__(self):
      self.seconds, self._last = {}, start

    def _mark(self, phase):
      now = time.perf_counter()
      self.seconds[phase], self._last = now - self._last, now

    def begin(self):
      self._mark("graph")

    def after_create_session(self, session, coord):
      self._mark("session")

    def after_run(self, run_context, run_values):
      self._mark("step")

  return Phases()


def _profiled_child(job):
  profile = cProfile.Profile()
  profile.runcall(_child, job)
  out = io.StringIO()
  stats = pstats.Stats(profile, stream=out).sort_stats("cumulative")
  stats.print_stats(r"/warmstart/|estimator\.py:(282|1145|1398)|monitored_session\.py:1261", 30)
  print(out.getvalue(), file=sys.stderr)


def _run(job):
  result = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)],
                          capture_output=True, text=True, check=False)
  if result.returncode:
    raise SystemExit("%s failed:\n%s" % (job["mode"], result.stderr[-3000:]))
  if job.get("profile"):
    print(result.stderr[result.stderr.find("   Ordered by"):])
  lines = result.stdout.strip().splitlines()
  return json.loads(lines[-1]) if lines else None


def _ratio(seconds):
  extra = seconds["tf"] - seconds["none"]
  if extra <= 0:
    return "n/a (TF's warm start cost nothing measurable)"
  return "%.2f" % ((seconds["warmstart"] - seconds["none"]) / extra)


def main(argv):
  del argv
  if FLAGS.child:
    job = json.loads(FLAGS.child)
    (_profiled_child if job.get("profile") else _child)(job)
    return
  specs = [{"variables": int(n), "gib": 0.0} for n in FLAGS.variables if n]
  if FLAGS.gib:
    specs.append({"variables": 0, "gib": FLAGS.gib})
  work = tempfile.mkdtemp(prefix="warm_start_bench-")
  try:
    for spec in specs:
      label = "%.2g GiB" % spec["gib"] if spec["gib"] else "%d variables" % spec["variables"]
      source = os.path.join(work, "source")
      os.makedirs(source)
      _run({"spec": spec, "mode": "write", "source": source})
      if FLAGS.profile:
        model_dir = os.path.join(work, "profile")
        print("%s, %s, under cProfile (cumulative seconds):" % (label, FLAGS.profile))
        _run({"spec": spec, "mode": FLAGS.profile, "source": source, "model_dir": model_dir,
              "profile": True})
        shutil.rmtree(model_dir, ignore_errors=True)
        shutil.rmtree(source)
        continue
      results = {mode: [] for mode in MODES}
      for repeat in range(FLAGS.repeats):
        for mode in MODES:
          model_dir = os.path.join(work, "%s-%d" % (mode, repeat))
          results[mode].append(_run({"spec": spec, "mode": mode, "source": source,
                                     "model_dir": model_dir}))
          shutil.rmtree(model_dir, ignore_errors=True)
      seconds = {m: statistics.median(r["seconds"] for r in results[m]) for m in MODES}
      rss = {m: statistics.median(r["rss"] for r in results[m]) for m in MODES}
      print("%s (medians of %d):" % (label, FLAGS.repeats))
      for mode in MODES:
        phases = {p: statistics.median(r["phases"][p] for r in results[mode])
                  for p in ("graph", "session", "step")}
        print("  %-9s %7.2f s   peak RSS %7.1f MiB   (graph %.2f s, session %.2f s, step %.2f s;"
              " each run: %s)" % (mode, seconds[mode], rss[mode] / 2**20, phases["graph"],
                                   phases["session"], phases["step"],
                                   " ".join("%.1f" % r["seconds"] for r in results[mode])))
      # The first step's run (TensorFlow optimizing the training graph) is the same work in
      # every mode and the noisiest part; the warm start acts in the other two phases.
      touched = {m: statistics.median(r["phases"]["graph"] + r["phases"]["session"]
                                      for r in results[m]) for m in MODES}
      print("  overhead ratio (warmstart - none) / (tf - none): %s in all, %s in graph + session;"
            " RSS warmstart / tf = %.3f" % (_ratio(seconds), _ratio(touched),
                                            rss["warmstart"] / rss["tf"]), flush=True)
      shutil.rmtree(source)
  finally:
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)

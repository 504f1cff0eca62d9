"""Never a crash: damaged sources through `warmstart ls` and `warmstart diff`, in every format.

Makes one small source per format -- a TF checkpoint A (and B, a copy with some tensors changed),
a Keras `.h5` weights file, a `.safetensors` file, a TF2 object-based checkpoint and a pickled
Caffe-style `.npy` dict -- then for each case damages a copy of one of them (round robin) and runs
`warmstart ls SRC --json` and `warmstart diff SRC OTHER --json` in a worker subprocess that
imports TensorFlow once and runs the real CLI per case. Damage is: truncate, flip one or many
bytes, shuffle blocks, zero a range, append garbage, swap the index for the data file; for the TF2
checkpoint also the same done to its serialized object graph, written back with a valid checksum
(so the graph parser itself sees the damage). Each run is one of:

- result: exit 0 or 1 and the same output as for the undamaged source;
- changed: exit 0 or 1 with another output, where the format has no checksums to notice damage
  (HDF5, .safetensors and pickles store none; a rewritten object graph is a valid, different
  one). For the TF checkpoint, whose data is checksummed, this counts as *wrong* instead;
- clean error: exit 2 with a single `warmstart: error: ...` line on stderr;
- crash: the worker died (signal), hung, or an exception escaped (a traceback).

Usage: python benchmarks/fuzz_checkpoints.py [--cases 2000] [--seed 0]
Exit status 0 when there were no crashes and no wrong results.
"""
import argparse
import collections
import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CASE_TIMEOUT = 90  # seconds for one case (ls + diff) before the worker counts as hung
H5_TIMEOUT = 15  # seconds the worker's HDF5 child may take (libhdf5 can hang on damaged files)


def make_checkpoints(directory):
  """Writes A and B (B: same names, some values changed); returns their prefixes."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  tensors = {
      "dense/kernel": rng.rand(16, 8).astype(np.float32),
      "dense/bias": rng.rand(8).astype(np.float32),
      "embedding": rng.rand(40, 4).astype(np.float64),
      "counts": np.arange(12, dtype=np.int64),
      "flag": np.array([True, False]),
      "scale": np.float32(0.5),
      "global_step": np.int64(100),
      "dense/kernel/Adam": rng.rand(16, 8).astype(np.float32),
  }
  changed = {"dense/bias", "counts", "dense/kernel/Adam"}
  prefixes = []
  for side in ("a", "b"):
    values = {n: (v + 1 if side == "b" and n in changed else v) for n, v in tensors.items()}
    with tf.Graph().as_default():
      variables = {n: tf.compat.v1.Variable(v, name="v%d" % i)
                   for i, (n, v) in enumerate(values.items())}
      saver = tf.compat.v1.train.Saver(variables)
      with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        prefixes.append(saver.save(session, os.path.join(directory, side, "model.ckpt"),
                                   global_step=100, write_meta_graph=False))
  return prefixes


def make_sources(directory):
  """{format: (pristine file or prefix, files to damage, argv after the path for ls/diff)}."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  prefix_a, prefix_b = make_checkpoints(directory)
  out = {"checkpoint": (prefix_a, [prefix_a + ".index", prefix_a + ".data-00000-of-00001"],
                        prefix_b)}
  model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3, name="dense"),
                               tf.keras.layers.BatchNormalization(name="bn")])
  h5 = os.path.join(directory, "h5", "weights.h5")
  os.makedirs(os.path.dirname(h5))
  model.save_weights(h5)
  out["h5"] = (h5, [h5], _copy(h5))
  rng = np.random.RandomState(1)
  st = os.path.join(directory, "st", "model.safetensors")
  os.makedirs(os.path.dirname(st))
  safetensors.numpy.save_file({"conv.weight": rng.rand(4, 3, 2, 2).astype(np.float32),
                               "fc.weight": rng.rand(5, 4).astype(np.float32),
                               "bn.running_mean": rng.rand(4), "steps": np.arange(3)}, st)
  out["safetensors"] = (st, [st], _copy(st))
  tf2 = tf.train.Checkpoint(model=model).write(os.path.join(directory, "tf2", "ckpt"))
  out["object_graph"] = (tf2, [tf2 + ".index", tf2 + ".data-00000-of-00001", GRAPH], _copy(tf2))
  npy = os.path.join(directory, "npy", "caffe.npy")
  os.makedirs(os.path.dirname(npy))
  np.save(npy, {"conv1": [rng.rand(3, 3).astype(np.float32), rng.rand(3).astype(np.float32)],
                "fc8": {"weights": rng.rand(3, 2), "biases": rng.rand(2)}}, allow_pickle=True)
  out["npy"] = (npy, [npy], _copy(npy))
  return out


GRAPH = "object graph"  # stands for the TF2 checkpoint's serialized object graph
OPTIONS = {"npy": ["--allow_pickle"]}
CHECKSUMMED = ("checkpoint",)


def _copy(path):
  """A pristine copy of a source (every file of a prefix) to diff against."""
  import glob  # pylint: disable=g-import-not-at-top
  directory = os.path.join(os.path.dirname(path), "pristine")
  os.makedirs(directory, exist_ok=True)
  for name in glob.glob(glob.escape(path) + "*"):
    shutil.copy(name, directory)
  return os.path.join(directory, os.path.basename(path))


MUTATIONS = ("truncate", "flip", "flip_many", "shuffle_blocks", "zero_range", "append",
             "swap_files")


def _damage(rng, content, kind):
  """Damaged bytes of `content`; returns (bytes, description)."""
  size = len(content)
  content = bytearray(content)
  if kind == "truncate":
    cut = rng.randrange(size)
    return content[:cut], "at %d of %d" % (cut, size)
  if kind in ("flip", "flip_many"):
    offsets = [rng.randrange(size) for _ in range(1 if kind == "flip" else rng.randint(2, 16))]
    for offset in offsets:
      content[offset] ^= rng.randint(1, 255)
    return content, "offsets %s" % offsets
  if kind == "shuffle_blocks":
    block = rng.choice((4, 8, 16, 64, 256))
    blocks = [content[i:i + block] for i in range(0, size, block)]
    rng.shuffle(blocks)
    return bytearray(b"".join(blocks)), "blocks of %d" % block
  if kind == "zero_range":
    start = rng.randrange(size)
    end = min(size, start + rng.randint(1, 64))
    content[start:end] = bytes(end - start)
    return content, "[%d, %d)" % (start, end)
  extra = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
  return content + extra, "append %d bytes" % len(extra)


def mutate(rng, prefix, files=None):
  """Damages one of `files` (default: a TF checkpoint's two) in place; returns a description."""
  files = files or [prefix + ".index", prefix + ".data-00000-of-00001"]
  path = rng.choice(files)
  kind = rng.choice(MUTATIONS if len(files) > 1 else MUTATIONS[:-1])
  if path == GRAPH:
    return _mutate_graph(rng, prefix, rng.choice(MUTATIONS[:-1]))
  if kind == "swap_files":  # the index where the data should be and vice versa
    index, data = files[0], files[1]
    with open(index, "rb") as f:
      index_bytes = f.read()
    with open(data, "rb") as f:
      data_bytes = f.read()
    with open(index, "wb") as f:
      f.write(data_bytes)
    with open(data, "wb") as f:
      f.write(index_bytes)
    return "swap_files"
  with open(path, "rb") as f:
    content, detail = _damage(rng, f.read(), kind)
  with open(path, "wb") as f:
    f.write(bytes(content))
  return "%s %s %s" % (kind, os.path.basename(path), detail)


def _mutate_graph(rng, prefix, kind):
  """Rewrites the TF2 checkpoint at `prefix` with a damaged object graph (valid checksums)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from warmstart._checkpoint import VariableInfo  # pylint: disable=g-import-not-at-top
  from warmstart.sources import _writers  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(prefix)
  values = {name: np.asarray(reader.get_tensor(name))
            for name in reader.get_variable_to_shape_map()}
  graph, detail = _damage(rng, values["_CHECKPOINTABLE_OBJECT_GRAPH"].item(), kind)
  values["_CHECKPOINTABLE_OBJECT_GRAPH"] = np.array(bytes(graph), dtype=object)
  for suffix in (".index", ".data-00000-of-00001"):
    os.remove(prefix + suffix)
  infos = [VariableInfo.make(n, v.shape, "string" if v.dtype == object else v.dtype)
           for n, v in values.items()]
  _writers.write_checkpoint(prefix, infos, values.__getitem__)
  return "%s object graph %s" % (kind, detail)


# -- the worker: runs the real CLI in-process, one case per stdin line -------------------------

def worker():
  """Reads JSON argv lists from stdin; writes one JSON outcome per line to the original stdout."""
  out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
  from absl import flags  # pylint: disable=g-import-not-at-top

  from warmstart import cli  # pylint: disable=g-import-not-at-top
  from warmstart.sources import _h5  # pylint: disable=g-import-not-at-top
  _h5.TIMEOUT = H5_TIMEOUT  # a hung HDF5 child ends sooner than a user's would
  out.write("ready\n")
  out.flush()
  for line in sys.stdin:
    argv = json.loads(line)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      flags.FLAGS.unparse_flags()
      try:
        code = cli.main(cli._parse_flags(["warmstart", *argv]))  # pylint: disable=protected-access
        escaped = None
      except SystemExit as exit_:
        code, escaped = exit_.code, None
      except BaseException as err:  # pylint: disable=broad-except
        code, escaped = None, "%s: %s" % (type(err).__name__, err)
    out.write(json.dumps({"code": code, "stdout": stdout.getvalue(),
                          "stderr": stderr.getvalue(), "escaped": escaped}) + "\n")
    out.flush()


class Worker:
  """A worker subprocess, restarted after it dies."""

  def __init__(self):
    self.process = None

  def start(self):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, env=env, text=True)
    assert self.process.stdout.readline().strip() == "ready"

  def run(self, argv):
    """Returns (outcome dict) or ('crash', description)."""
    if self.process is None or self.process.poll() is not None:
      self.start()
    self.process.stdin.write(json.dumps(argv) + "\n")
    self.process.stdin.flush()
    line = _readline(self.process, CASE_TIMEOUT)
    if line is None:
      self.process.kill()
      self.process.wait()
      code = self.process.returncode
      self.process = None
      return None, "hung" if code == -9 else "died with exit status %s" % code
    return json.loads(line), None

  def stop(self):
    if self.process is not None:
      self.process.stdin.close()
      self.process.wait(timeout=30)


def _readline(process, timeout):
  import selectors  # pylint: disable=g-import-not-at-top
  with selectors.DefaultSelector() as selector:
    selector.register(process.stdout, selectors.EVENT_READ)
    if not selector.select(timeout):
      return None
  line = process.stdout.readline()
  return line or None


def classify(outcome, crash, expected, checksummed=True):
  """'result', 'changed', 'wrong', 'clean_error' or 'crash' for one CLI run."""
  if crash or outcome["escaped"] or outcome["code"] not in (0, 1, 2):
    return "crash"
  if "Traceback" in outcome["stderr"] or "Traceback" in outcome["stdout"]:
    return "crash"
  if outcome["code"] == 2:
    lines = outcome["stderr"].strip().splitlines()
    return "clean_error" if len(lines) == 1 and lines[0].startswith("warmstart: error:") else \
        "crash"
  if (outcome["code"], outcome["stdout"]) == expected:
    return "result"
  return "wrong" if checksummed else "changed"


def fuzz(cases, seed, log=sys.stdout):
  """Runs the fuzz; returns a Counter of outcomes and the list of failure descriptions."""
  rng = random.Random(seed)
  root = tempfile.mkdtemp(prefix="warmstart-fuzz-")
  worker_ = Worker()
  counts, failures = collections.Counter(), []
  try:
    formats = make_sources(root)
    names = sorted(formats)
    expected = {}
    for form, (pristine, _, other) in formats.items():
      for command, argv in _commands(form, pristine, other).items():
        outcome, crash = worker_.run(argv)
        assert not crash and outcome["code"] in (0, 1), (form, outcome, crash)
        expected[form, command] = (outcome["code"], outcome["stdout"].replace(pristine, "{A}"))
    started = time.time()
    for case in range(cases):
      form = names[case % len(names)]
      pristine, files, other = formats[form]
      case_dir = os.path.join(root, "case")
      shutil.rmtree(case_dir, ignore_errors=True)
      shutil.copytree(os.path.dirname(pristine), case_dir,
                      ignore=shutil.ignore_patterns("pristine"))
      path = os.path.join(case_dir, os.path.basename(pristine))
      description = form + ": " + mutate(rng, path, [
          f if f == GRAPH else os.path.join(case_dir, os.path.basename(f)) for f in files])
      for command, argv in _commands(form, path, other).items():
        outcome, crash = worker_.run(argv)
        if outcome is not None:
          outcome["stdout"] = outcome["stdout"].replace(path, "{A}")
        verdict = classify(outcome, crash, expected[form, command], form in CHECKSUMMED)
        counts[verdict] += 1
        if verdict in ("crash", "wrong"):
          failures.append("case %d (%s) %s: %s %s" % (
              case, description, command, verdict,
              crash or outcome["escaped"] or outcome["stderr"][-500:] or outcome["stdout"][:500]))
      if log and (case + 1) % 200 == 0:
        log.write("%d cases, %.0f s: %s\n" % (case + 1, time.time() - started, dict(counts)))
        log.flush()
  finally:
    worker_.stop()
    shutil.rmtree(root, ignore_errors=True)
  return counts, failures


def _commands(form, path, other):
  options = OPTIONS.get(form, [])
  return {"ls": ["ls", path, "--json", *options],
          "diff": ["diff", path, other, "--json", *options]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", type=int, default=2000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return worker()
  started = time.time()
  counts, failures = fuzz(args.cases, args.seed)
  for failure in failures:
    print("FAIL", failure)
  print("%d cases (%d runs) in %.0f s: %d results, %d changed (no checksum to notice), %d clean "
        "errors, %d wrong, %d crashes" % (
            args.cases, sum(counts.values()), time.time() - started, counts["result"],
            counts["changed"], counts["clean_error"], counts["wrong"], counts["crash"]))
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())

"""Never a crash: damaged checkpoints through `warmstart ls` and `warmstart diff`.

Makes a small checkpoint A (and B, a copy with some tensors changed), then for each case damages
a copy of A's files (truncate, flip bytes, shuffle blocks, zero a range, append garbage, swap the
index for the data file) and runs `warmstart ls A --json` and `warmstart diff A B --json` in a
worker subprocess that imports TensorFlow once and runs the real CLI per case. Each run is one of:

- result: exit 0 or 1; it must equal the result for the undamaged A, else it counts as *wrong*
  (damage the checks did not notice);
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

CASE_TIMEOUT = 60  # seconds for one case (ls + diff) before the worker counts as hung


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


MUTATIONS = ("truncate", "flip", "flip_many", "shuffle_blocks", "zero_range", "append",
             "swap_files")


def mutate(rng, prefix):
  """Damages one file of the checkpoint at `prefix` in place; returns a description."""
  index, data = prefix + ".index", prefix + ".data-00000-of-00001"
  kind = rng.choice(MUTATIONS)
  path = rng.choice((index, data))
  with open(path, "rb") as f:
    content = bytearray(f.read())
  size = len(content)
  if kind == "truncate":
    cut = rng.randrange(size)
    content = content[:cut]
    detail = "at %d of %d" % (cut, size)
  elif kind in ("flip", "flip_many"):
    offsets = [rng.randrange(size) for _ in range(1 if kind == "flip" else rng.randint(2, 16))]
    for offset in offsets:
      content[offset] ^= rng.randint(1, 255)
    detail = "offsets %s" % offsets
  elif kind == "shuffle_blocks":
    block = rng.choice((4, 8, 16, 64, 256))
    blocks = [content[i:i + block] for i in range(0, size, block)]
    rng.shuffle(blocks)
    content = bytearray(b"".join(blocks))
    detail = "blocks of %d" % block
  elif kind == "zero_range":
    start = rng.randrange(size)
    end = min(size, start + rng.randint(1, 64))
    content[start:end] = bytes(end - start)
    detail = "[%d, %d)" % (start, end)
  elif kind == "append":
    extra = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    content += extra
    detail = "%d bytes" % len(extra)
  else:  # swap_files: the index where the data should be and vice versa
    with open(index, "rb") as f:
      index_bytes = f.read()
    with open(data, "rb") as f:
      data_bytes = f.read()
    with open(index, "wb") as f:
      f.write(data_bytes)
    with open(data, "wb") as f:
      f.write(index_bytes)
    return "swap_files"
  with open(path, "wb") as f:
    f.write(bytes(content))
  return "%s %s %s" % (kind, os.path.basename(path), detail)


# -- the worker: runs the real CLI in-process, one case per stdin line -------------------------

def worker():
  """Reads JSON argv lists from stdin; writes one JSON outcome per line to the original stdout."""
  out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
  from absl import flags  # pylint: disable=g-import-not-at-top

  from warmstart import cli  # pylint: disable=g-import-not-at-top
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


def classify(outcome, crash, expected):
  """'result', 'wrong', 'clean_error' or 'crash' for one CLI run."""
  if crash or outcome["escaped"] or outcome["code"] not in (0, 1, 2):
    return "crash"
  if "Traceback" in outcome["stderr"] or "Traceback" in outcome["stdout"]:
    return "crash"
  if outcome["code"] == 2:
    lines = outcome["stderr"].strip().splitlines()
    return "clean_error" if len(lines) == 1 and lines[0].startswith("warmstart: error:") else \
        "crash"
  return "result" if (outcome["code"], outcome["stdout"]) == expected else "wrong"


def fuzz(cases, seed, log=sys.stdout):
  """Runs the fuzz; returns a Counter of outcomes and the list of failure descriptions."""
  rng = random.Random(seed)
  root = tempfile.mkdtemp(prefix="warmstart-fuzz-")
  worker_ = Worker()
  counts, failures = collections.Counter(), []
  try:
    pristine_a, prefix_b = make_checkpoints(root)
    commands = {"ls": lambda a: ["ls", a, "--json"],
                "diff": lambda a: ["diff", a, prefix_b, "--json"]}
    expected = {}
    for name, command in commands.items():
      outcome, crash = worker_.run(command(pristine_a))
      assert not crash and outcome["code"] in (0, 1), (outcome, crash)
      expected[name] = (outcome["code"], outcome["stdout"].replace(pristine_a, "{A}"))
    started = time.time()
    for case in range(cases):
      case_dir = os.path.join(root, "case")
      shutil.rmtree(case_dir, ignore_errors=True)
      shutil.copytree(os.path.dirname(pristine_a), case_dir)
      prefix = os.path.join(case_dir, os.path.basename(pristine_a))
      description = mutate(rng, prefix)
      for name, command in commands.items():
        outcome, crash = worker_.run(command(prefix))
        if outcome is not None:
          outcome["stdout"] = outcome["stdout"].replace(prefix, "{A}")
        verdict = classify(outcome, crash, expected[name])
        counts[verdict] += 1
        if verdict in ("crash", "wrong"):
          failures.append("case %d (%s) %s: %s %s" % (
              case, description, name, verdict,
              crash or outcome["escaped"] or outcome["stderr"][-500:] or outcome["stdout"][:500]))
      if log and (case + 1) % 200 == 0:
        log.write("%d cases, %.0f s: %s\n" % (case + 1, time.time() - started, dict(counts)))
        log.flush()
  finally:
    worker_.stop()
    shutil.rmtree(root, ignore_errors=True)
  return counts, failures


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
  print("%d cases (%d runs) in %.0f s: %d results, %d clean errors, %d wrong, %d crashes" % (
      args.cases, sum(counts.values()), time.time() - started, counts["result"],
      counts["clean_error"], counts["wrong"], counts["crash"]))
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())

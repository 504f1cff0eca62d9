"""`warmstart convert`: memory bounded by the largest tensor, not by the checkpoint.

Writes a checkpoint of `--mib` MiB in 64 float32 tensors (the largest `--largest-mib`), then
converts it to `.safetensors`, `.npz` and back to a checkpoint, each in a fresh interpreter, and,
side by side, does what one would write by hand: read every tensor into a dict, then
`safetensors.numpy.save_file` / `numpy.savez`. Reports wall time and peak RSS above the
interpreter's resident set after its imports, medians of `--repeats` interleaved runs.

Usage: python benchmarks/convert_bench.py [--mib 512] [--largest-mib 32] [--repeats 3]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter: imports, baseline RSS, the job, peak RSS.
_RUNNER = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np, safetensors.numpy, warmstart
    from warmstart import sources
    def rss_kib():  # the resident set now (ru_maxrss would include the imports' peak)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() // 1024
    baseline = rss_kib()
    job, source, out = sys.argv[1:4]
    started = time.perf_counter()
    if job == "convert":
        warmstart.convert(source, out)
    else:  # by hand: everything in memory, then one save call
        ref = warmstart.resolve_checkpoint(source)
        with sources.open_reader(ref) as reader:
            tensors = {name: reader.read(name) for name in reader.variables}
        if out.endswith(".safetensors"):
            safetensors.numpy.save_file(tensors, out)
        else:
            np.savez(out, **tensors)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "rss_mib": (peak - baseline) / 1024}))
""")


def make_checkpoint(prefix, mib, largest_mib):
  """64 float32 tensors: one of `largest_mib`, the rest sharing what is left of `mib`."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from warmstart._checkpoint import VariableInfo  # pylint: disable=g-import-not-at-top
  from warmstart.sources import _writers  # pylint: disable=g-import-not-at-top
  rest = (mib - largest_mib) * (1 << 20) // 4 // 63
  sizes = [largest_mib * (1 << 20) // 4] + [rest] * 63
  infos = [VariableInfo.make("layer_%02d/kernel" % i, (n,), "float32") for i, n in enumerate(sizes)]
  _writers.write_checkpoint(prefix, infos, lambda name: np.full(
      dict(zip((i.name for i in infos), sizes))[name], 0.5, np.float32))


def run(job, source, out):
  env = dict(os.environ, PYTHONPATH=REPO)
  done = subprocess.run([sys.executable, "-c", _RUNNER, job, source, out], capture_output=True,
                        text=True, env=env, check=True)
  return json.loads(done.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mib", type=int, default=512)
  parser.add_argument("--largest-mib", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  sys.path.insert(0, REPO)
  root = tempfile.mkdtemp(prefix="warmstart-convert-bench-")
  try:
    source = os.path.join(root, "model.ckpt")
    make_checkpoint(source, args.mib, args.largest_mib)
    cases = [("convert", "model.safetensors"), ("by_hand", "model.safetensors"),
             ("convert", "model.npz"), ("by_hand", "model.npz"), ("convert", "back.ckpt")]
    results = {case: [] for case in cases}
    for _ in range(args.repeats):
      for job, name in cases:
        out = os.path.join(root, name)
        for path in (out, out + ".index", out + ".data-00000-of-00001"):
          if os.path.exists(path):
            os.remove(path)
        results[job, name].append(run(job, source, out))
    print("checkpoint: %d MiB in 64 float32 tensors, the largest %d MiB; medians of %d runs"
          % (args.mib, args.largest_mib, args.repeats))
    print("| job | output | seconds | peak RSS above baseline (MiB) |")
    print("| --- | --- | --- | --- |")
    for (job, name), runs in results.items():
      print("| %s | %s | %.2f | %.0f |" % (
          job, ".safetensors" if name.endswith(".safetensors") else ".npz" if name.endswith(
              ".npz") else "checkpoint",
          statistics.median(r["seconds"] for r in runs),
          statistics.median(r["rss_mib"] for r in runs)))
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  main()

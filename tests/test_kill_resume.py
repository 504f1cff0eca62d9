"""A training process killed with SIGKILL resumes from model_dir, without warming up again."""
import os
import signal
import subprocess
import sys
import time

import tensorflow as tf
from conftest import read, same_bits, train

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")


def test_sigkill_then_resume(tmp_path):
  source = str(tmp_path / "source")
  base = train(source, {}, steps=5)
  model_dir = str(tmp_path / "ext")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  worker = subprocess.Popen([sys.executable, WORKER, source, model_dir, "1000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
  try:
    deadline = time.time() + 120
    while time.time() < deadline:
      saved = tf.train.latest_checkpoint(model_dir) if os.path.isdir(model_dir) else None
      if saved and int(saved.rsplit("-", 1)[1]) >= 20:
        break
      assert worker.poll() is None, worker.stdout.read().decode()[-2000:]
      time.sleep(0.2)
    else:
      raise AssertionError("no checkpoint past step 20 within 120 s")
    worker.send_signal(signal.SIGKILL)
  finally:
    worker.kill()
    first_output = worker.communicate()[0].decode()
  assert worker.returncode == -signal.SIGKILL
  assert "2 of" in first_output and "NOT applied" not in first_output
  saved = tf.train.latest_checkpoint(model_dir)
  saved_step = int(saved.rsplit("-", 1)[1])

  resumed = subprocess.run([sys.executable, WORKER, source, model_dir, str(saved_step + 10)],
                           capture_output=True, text=True, env=env, timeout=300)
  assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
  assert "warm start NOT applied: model_dir holds checkpoint %s" % saved in resumed.stdout
  assert "finished at step %d" % (saved_step + 10) in resumed.stdout
  final = tf.train.latest_checkpoint(model_dir)
  for name in ("mnist/hidden/kernel", "mnist/hidden/bias"):
    assert same_bits(read(final, name), read(base, name)), name
  assert not same_bits(read(final, "mnist/hidden2/kernel"), read(saved, "mnist/hidden2/kernel"))

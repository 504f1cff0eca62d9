"""A TF_CONFIG cluster on loopback: parameter server, chief and worker as separate processes.

`tf.estimator.train_and_evaluate` with `warmstart.estimator_from(..., freeze=True)`: the chief
warm-starts the variables on the parameter server, the worker trains with them, the report is
written once (by the chief), and a worker killed with SIGKILL and restarted joins the running
training without re-initializing anything (the global step, never warm-started, would fall back
to 0 if it did).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import tensorflow as tf
from conftest import read, same_bits, train

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cluster_worker.py")
FROZEN = ("mnist/hidden/kernel", "mnist/hidden/bias")
MAX_STEPS = 1000


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


class _Task:
  """One cluster task in its own process, its output collected in a file."""

  def __init__(self, tmp_path, cluster, task_type, source, model_dir, attempt=0):
    self.log = tmp_path / ("%s-%d.log" % (task_type, attempt))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
        {"cluster": cluster, "task": {"type": task_type, "index": 0}}))
    with open(self.log, "w") as out:
      self.process = subprocess.Popen([sys.executable, WORKER, source, model_dir, str(MAX_STEPS)],
                                      stdout=out, stderr=subprocess.STDOUT, env=env)

  def output(self):
    return self.log.read_text()

  def steps(self):
    return [int(line.split()[1]) for line in self.output().splitlines()
            if line.startswith("step ")]

  def stop(self):
    if self.process.poll() is None:
      self.process.kill()
    self.process.wait(timeout=30)


def _wait(condition, tasks, what, timeout=150):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return
    for task in tasks:
      assert task.process.poll() is None, "%s exited early:\n%s" % (task.log.name,
                                                                    task.output()[-3000:])
    time.sleep(0.2)
  raise AssertionError("timed out waiting for %s:\n%s" % (
      what, "\n".join("%s: %s" % (t.log.name, t.output()[-1500:]) for t in tasks)))


def test_parameter_server_cluster_warm_starts_once_and_survives_a_killed_worker(tmp_path):
  source = str(tmp_path / "source")
  base = train(source, {"optimizer": "sgd"}, steps=5)
  model_dir = str(tmp_path / "ext")
  chief_port, worker_port, ps_port = _free_ports(3)
  cluster = {"chief": ["127.0.0.1:%d" % chief_port], "worker": ["127.0.0.1:%d" % worker_port],
             "ps": ["127.0.0.1:%d" % ps_port]}
  hold = tmp_path / "hold"  # the chief trains slowly until the restarted worker trains
  hold.write_text("")
  tasks = {}
  try:
    for task_type in ("ps", "chief", "worker"):
      tasks[task_type] = _Task(tmp_path, cluster, task_type, source, model_dir)
    worker = tasks["worker"]
    _wait(lambda: worker.steps() and worker.steps()[-1] >= 200, list(tasks.values()),
          "the worker to train past step 200")
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(timeout=30)
    killed_at = worker.steps()[-1]
    saved = tf.train.latest_checkpoint(model_dir)
    before = {name: read(saved, name) for name in ("mnist/logits/bias", "mnist/hidden2/kernel")}

    restarted = tasks["worker_again"] = _Task(tmp_path, cluster, "worker", source, model_dir, 1)
    chief = tasks["chief"]
    _wait(restarted.steps, [chief, restarted], "the restarted worker to train")
    hold.unlink()
    # Re-initializing would have set the global step back to 0.
    assert restarted.steps()[0] > killed_at, (restarted.steps()[:3], killed_at)
    _wait(lambda: "task done" in chief.output(), [chief], "the chief to finish", timeout=200)
    restarted.process.wait(timeout=60)
  finally:
    for task in tasks.values():
      task.stop()

  final = tf.train.latest_checkpoint(model_dir)
  # Asynchronous training: the last step of one task may land after another reached MAX_STEPS.
  assert MAX_STEPS <= int(final.rsplit("-", 1)[1]) <= MAX_STEPS + 2, final
  for name in FROZEN:
    assert same_bits(read(final, name), read(base, name)), name
  for name, value in before.items():  # trained on after the kill
    assert not same_bits(read(final, name), value), name
  report = json.load(open(os.path.join(model_dir, "warmstart_report.json")))
  assert sorted(report["frozen"]) == sorted(FROZEN)
  writers = [name for name, task in tasks.items() if "wrote warm-start report" in task.output()]
  assert writers == ["chief"], writers

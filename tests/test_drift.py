"""Drift from the warm-start source: offline over checkpoints, live in TensorBoard, and plots.

Expected values are computed here with numpy from the checkpoints, read with TensorFlow's own
reader; events are read back with `tf.compat.v1.train.summary_iterator`. One warm-started model
(a partitioned variable, a frozen layer, a trained layer) is shared by the module.
"""
import glob
import json
import math
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import input_fn, register_source, write_checkpoint

import warmstart
from warmstart import _plot, cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F = np.float32
STEPS, EVERY = 8, 2  # train 8 steps; summaries and checkpoints every 2; keep the last 3
GROUPS = ("net/embed", "net/hidden", "net/logits")
FROZEN = "net/hidden"


def model_fn(features, labels, mode, params):
  """6 -> embed (partitioned in 2) -> hidden -> logits, plain SGD."""
  with tf.compat.v1.variable_scope("net"):
    embed = tf.compat.v1.get_variable(
        "embed/kernel", [6, 4], partitioner=tf.compat.v1.fixed_size_partitioner(2))
    h = tf.nn.relu(tf.matmul(features["x"], tf.concat(list(embed), axis=0)))
    h = tf.compat.v1.layers.dense(h, 4, tf.nn.relu, name="hidden")
    logits = tf.compat.v1.layers.dense(h, 2, name="logits")
  loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
  train_op = tf.compat.v1.train.GradientDescentOptimizer(params["lr"]).minimize(
      loss, global_step=tf.compat.v1.train.get_global_step())
  return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A base model, and a model warm-started from it with hidden frozen and drift tracked."""
  root = tmp_path_factory.mktemp("drift")
  base = tf.estimator.Estimator(model_fn, str(root / "base"), params={"lr": 0.1},
                                config=tf.estimator.RunConfig(tf_random_seed=1))
  base.train(input_fn(), steps=3)
  register_source(base.latest_checkpoint(), keep=True)
  ext = warmstart.estimator_from(
      model_fn, model_dir=str(root / "ext"), warm_start_from=str(root / "base"),
      include="net/.*(kernel|bias)", freeze="net/hidden/.*", track_drift=True,
      params={"lr": 0.5}, config=tf.estimator.RunConfig(
          tf_random_seed=2, save_summary_steps=EVERY, save_checkpoints_steps=EVERY,
          keep_checkpoint_max=3))
  ext.train(input_fn(), steps=STEPS)
  return {"base": base.latest_checkpoint(), "ext": str(root / "ext"), "root": root}


def expected_drift(source, prefix, group_of):
  """{group: ||w - w0|| / ||w0||} with numpy, over the float tensors both checkpoints share."""
  a, b = tf.train.load_checkpoint(source), tf.train.load_checkpoint(prefix)
  delta, norm = {}, {}
  shapes = a.get_variable_to_shape_map()
  for name, shape in b.get_variable_to_shape_map().items():
    group = group_of(name)
    if group is None or shapes.get(name) != shape or name == "global_step":
      continue
    w0 = a.get_tensor(name).astype(np.float64)
    w = b.get_tensor(name).astype(np.float64)
    delta[group] = delta.get(group, 0.0) + np.sum((w - w0) ** 2)
    norm[group] = norm.get(group, 0.0) + np.sum(w0 ** 2)
  return {g: math.sqrt(delta[g]) / math.sqrt(norm[g]) for g in delta}


def events(directory):
  """{tag: {step: value}} of the drift scalars in a directory's events files."""
  out: dict = {}
  for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.tag.startswith("warmstart/drift/"):
          out.setdefault(value.tag, {})[event.step] = value.simple_value
  return out


def check_png(path, colors=()):
  """A PNG of sensible size, with ink on it, showing each of `colors` (hex) somewhere."""
  with open(path, "rb") as f:
    head = f.read(24)
  assert head[:8] == b"\x89PNG\r\n\x1a\n"
  width, height = struct.unpack(">II", head[16:24])
  assert 600 <= width <= 2000 and 250 <= height <= 3000, (width, height)
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  pixels = matplotlib.image.imread(path)[..., :3]
  ink = np.mean(np.any(pixels < 0.9, axis=-1))
  assert 0.01 < ink < 0.6, ink
  for color in colors:
    rgb = np.array([int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)])
    assert np.any(np.all(np.abs(pixels - rgb) < 0.02, axis=-1)), color
  return width, height


# ---------------------------------------------------------------------------------------------
# Offline


def test_offline_drift_matches_numpy_and_frozen_is_exactly_zero(trained):
  report = warmstart.drift(trained["base"], trained["ext"])
  assert report.steps == [4, 6, 8]  # keep_checkpoint_max=3 kept these
  assert sorted(report.groups) == sorted(GROUPS)
  assert [t.name for t in report.tensors] == [
      "net/embed/kernel", "net/hidden/bias", "net/hidden/kernel", "net/logits/bias",
      "net/logits/kernel"]  # paired by the model_dir's warmstart_report.json
  for step, prefix in zip(report.steps, report.checkpoints):
    expected = expected_drift(trained["base"], prefix, warmstart._drift.layer_of)
    for group in GROUPS:
      assert report.value(group, step) == pytest.approx(expected[group], rel=1e-12, abs=0)
    assert report.value(FROZEN, step) == 0.0 and expected[FROZEN] == 0.0
  assert all(report.value("net/logits", s) > 0 for s in report.steps)
  assert report.groups[-1] == FROZEN  # largest drift first


def test_live_summaries_have_every_point_and_agree_with_offline(trained):
  live = events(trained["ext"])
  assert set(live) == {"warmstart/drift/" + g for g in GROUPS}
  steps = list(range(0, STEPS + 1, EVERY))
  report = warmstart.drift(trained["base"], trained["ext"])
  for group in GROUPS:
    values = live["warmstart/drift/" + group]
    assert sorted(values) == steps  # every summary step, not only the kept checkpoints
    assert values[0] == 0.0  # the session starts at the source's values
    for step in report.steps:
      assert values[step] == pytest.approx(report.value(group, step), rel=1e-6, abs=0)
  assert set(live["warmstart/drift/" + FROZEN].values()) == {0.0}


def test_resumed_training_keeps_tracking(trained, tmp_path):
  model_dir = str(tmp_path / "ext")
  shutil.copytree(trained["ext"], model_dir)
  # TF names an events file by the second it opens and the host: a resumed run within the same
  # second as the copied run's writer would reopen (truncate) the copied file.
  for path in glob.glob(os.path.join(model_dir, "events.out.tfevents.*")):
    os.rename(path, path + ".copied")
  warmstart.estimator_from(
      model_fn, model_dir=model_dir, warm_start_from=trained["base"],
      include="net/.*(kernel|bias)", freeze="net/hidden/.*", track_drift="net/(embed|logits)/.*",
      params={"lr": 0.5}, config=tf.estimator.RunConfig(
          tf_random_seed=2, save_summary_steps=EVERY, save_checkpoints_steps=EVERY)
  ).train(input_fn(), steps=2)
  live = events(model_dir)
  before = events(trained["ext"])
  report = warmstart.drift(trained["base"], model_dir)
  assert report.steps[-1] == STEPS + 2 and set(live) == set(before)  # hidden: copied events
  for group in ("net/embed", "net/logits"):
    values = live["warmstart/drift/" + group]
    assert sorted(values) == list(range(0, STEPS + 3, EVERY))
    assert values[STEPS] == before["warmstart/drift/" + group][STEPS]  # resumed: same weights
    assert values[STEPS + 2] == pytest.approx(report.value(group, STEPS + 2), rel=1e-6, abs=0)


def test_write_summaries_round_trip_and_replace_their_own_file(trained, tmp_path):
  report = warmstart.drift(trained["base"], trained["ext"])
  logdir = tmp_path / "logs"
  logdir.mkdir()
  foreign = logdir / "events.out.tfevents.1.other"
  foreign.write_bytes(b"")
  first = report.write_summaries(str(logdir))
  second = report.write_summaries(str(logdir))
  assert sorted(os.listdir(logdir)) == sorted([os.path.basename(second), foreign.name])
  assert first == second or not os.path.exists(first)
  written = events(str(logdir))
  assert written == {"warmstart/drift/" + g: {s: float(np.float32(report.value(g, s)))
                                              for s in report.steps} for g in GROUPS}


def test_json_and_text(trained):
  report = warmstart.drift(trained["base"], trained["ext"])
  data = json.loads(report.to_json())
  assert data["steps"] == [4, 6, 8] and set(data["groups"]) == set(GROUPS)
  assert data["groups"][FROZEN] == [0.0, 0.0, 0.0]
  assert data["groups"]["net/logits"][-1] == report.value("net/logits", 8)
  embed = next(t for t in data["tensors"] if t["name"] == "net/embed/kernel")
  assert embed["shape"] == [6, 4] and embed["group"] == "net/embed"
  lines = str(report).splitlines()
  assert lines[2].split() == ["group", "step", "4", "step", "6", "step", "8"]
  assert [line.split()[0] for line in lines[3:6]] == report.groups
  assert lines[5].split() == [FROZEN, "0", "0", "0"]
  assert "unmoved at every step (0.0): net/hidden" in str(report)


# Small hand-made checkpoints: w0 and w = w0 + step * direction, so the drift is known exactly.
W0 = {"model/block1/conv/kernel": np.full([2, 3], 2.0, F), "model/block1/conv/bias": np.ones(3, F),
      "model/block2/conv/kernel": np.full([4], 3.0, F), "model/head/kernel": np.ones([3, 2], F),
      "model/zero/bias": np.zeros(2, F), "global_step": np.int64(0)}


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
  root = tmp_path_factory.mktemp("handmade")
  source = write_checkpoint(root / "source", W0, step=100)
  register_source(source, keep=True)
  for step in (10, 20, 30):
    tensors = {name: value + (F(step / 10) if name.startswith("model/block1") else 0)
               for name, value in W0.items() if name != "global_step"}
    tensors["model/head/kernel"] = np.ones([3, 5], F)  # shape differs from the source
    tensors["model/zero/bias"] = np.full(2, step, F)  # the source is all zeros
    tensors["global_step"] = np.int64(step)
    write_checkpoint(root / "model_dir", tensors, step=step)
  renamed = {"new/" + name: value for name, value in W0.items()}
  write_checkpoint(root / "renamed", renamed, step=5)
  return {"source": source, "model_dir": str(root / "model_dir"),
          "renamed": str(root / "renamed"), "root": root}


def test_groups_by_regex_include_and_left_out(handmade):
  report = warmstart.drift(handmade["source"], handmade["model_dir"],
                           group=r"model/(block\d)/.*")
  assert report.groups == ["block1", "block2"]
  for step in (10, 20, 30):
    k = step / 10  # block1's 9 elements (6 of value 2, 3 of value 1) moved by k; block2 did not
    expected = math.sqrt(9 * k * k) / math.sqrt(6 * 4.0 + 3 * 1.0)
    assert report.value("block1", step) == pytest.approx(expected, rel=1e-12)
    assert report.value("block2", step) == 0.0
  left = dict(report.left_out)
  assert left["model/head/kernel"] == "shape (3, 5) vs source (3, 2)"
  assert left["model/zero/bias"] == "not matched by group="
  layers = warmstart.drift(handmade["source"], handmade["model_dir"],
                           include="model/(zero|block2)/.*")
  assert layers.groups == ["model/zero", "model/block2/conv"]
  assert layers.value("model/zero", 10) == math.inf  # moved away from an all-zero source
  assert json.loads(layers.to_json())["groups"]["model/zero"] == ["inf"] * 3


@pytest.mark.parametrize("rename", [{r"new/(.*)": r"\1"}, lambda name: name[len("new/"):]],
                         ids=["rules", "function"])
def test_rename_pairs_differently_named_tensors(handmade, rename):
  report = warmstart.drift(handmade["source"], handmade["renamed"], rename=rename,
                           exclude="new/model/head/.*")
  assert {t.source_name for t in report.tensors} == {
      "model/block1/conv/kernel", "model/block1/conv/bias", "model/block2/conv/kernel",
      "model/zero/bias"}
  assert all(report.value(g, 5) == 0.0 for g in report.groups)


@pytest.mark.parametrize("call, error, words", [
    ("empty", warmstart.CheckpointNotFoundError, ["no checkpoints in model_dir"]),
    ("missing", warmstart.CheckpointNotFoundError, ["does not exist"]),
    ("unshared", warmstart.WarmStartError, ["shares no tensor", "rename="]),
    ("no_group", warmstart.PatternError, ["no capture group"]),
    ("unused_rule", warmstart.PatternError, ["'nothing/(.*)'", "matched no weight"]),
    ("include", warmstart.PatternError, ["'model/block3/.*'", "matches no tensor"]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_input(handmade, tmp_path, call, error, words):
  (tmp_path / "empty").mkdir()
  write_checkpoint(tmp_path / "other", {"other/kernel": np.ones(2, F)}, step=1)
  source, model_dir = handmade["source"], handmade["model_dir"]
  calls = {
      "empty": lambda: warmstart.drift(source, str(tmp_path / "empty")),
      "missing": lambda: warmstart.drift(source, str(tmp_path / "nope")),
      "unshared": lambda: warmstart.drift(str(tmp_path / "other"), model_dir),
      "no_group": lambda: warmstart.drift(source, model_dir, group="model/block.*"),
      "unused_rule": lambda: warmstart.drift(source, model_dir, rename={"nothing/(.*)": r"\1"}),
      "include": lambda: warmstart.drift(source, model_dir, include="model/block3/.*"),
  }
  with pytest.raises(error) as raised:
    calls[call]()
  for word in words:
    assert word in str(raised.value)


def test_value_of_an_unknown_group_or_step(handmade):
  report = warmstart.drift(handmade["source"], handmade["model_dir"])
  with pytest.raises(warmstart.WarmStartError, match="no group 'model/block1'.*model/block1/conv"):
    report.value("model/block1", 10)
  with pytest.raises(warmstart.WarmStartError, match="no checkpoint of step 11.*10, 20, 30"):
    report.value("model/block1/conv", 11)


# ---------------------------------------------------------------------------------------------
# Live: refusals


def test_track_drift_refuses_more_than_the_limit_and_bad_arguments(trained, tmp_path):
  estimator = warmstart.estimator_from(
      model_fn, model_dir=str(tmp_path / "big"), warm_start_from=trained["base"],
      include="net/.*(kernel|bias)", track_drift="net/(embed|logits)/.*",
      track_drift_max_bytes=100, params={"lr": 0.1})
  with pytest.raises(warmstart.WarmStartError) as raised:
    estimator.train(input_fn(), steps=1)
  message = str(raised.value)
  # embed 6x4 + logits 4x2 and 2 float32 values: 136 bytes.
  assert "keep a copy of 3 source tensors, 136 B" in message
  assert "the limit is 100 B (track_drift_max_bytes)" in message
  assert "track_drift_max_bytes=136, or None" in message
  with pytest.raises(warmstart.PatternError, match="track_drift"):
    warmstart.estimator_from(model_fn, model_dir=str(tmp_path / "x"),
                             warm_start_from=trained["base"], track_drift="net/(")
  with pytest.raises(warmstart.WarmStartError, match="track_drift_max_bytes must be"):
    warmstart.estimator_from(model_fn, model_dir=str(tmp_path / "x"),
                             warm_start_from=trained["base"], track_drift=True,
                             track_drift_max_bytes=-1)


# ---------------------------------------------------------------------------------------------
# Plots


def test_drift_plot_is_a_png_with_a_line_per_group(trained, tmp_path):
  report = warmstart.drift(trained["base"], trained["ext"])
  figure = report.plot()
  labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
  assert labels[0] == "net/hidden: 0.0 at every step"
  assert labels[1].startswith("net/") and "at step 8" in labels[1]
  path = _plot.save(figure, str(tmp_path / "drift.png"))
  check_png(path, colors=["#0072B2", "#D55E00"])  # the two moving groups' lines
  assert os.listdir(tmp_path) == ["drift.png"]  # no temp file left


def test_diff_plot_colours_by_status(trained, tmp_path):
  a = write_checkpoint(tmp_path / "a", {"l/same": np.ones(3, F), "l/changed": np.ones(3, F),
                                        "l/shape": np.ones(3, F), "m/only_a": np.ones(1, F)})
  b = write_checkpoint(tmp_path / "b", {"l/same": np.ones(3, F),
                                        "l/changed": np.array([1, 1, 3], F),
                                        "l/shape": np.ones(4, F), "m/only_b": np.ones(1, F)})
  report = warmstart.diff(a, b)
  changed = next(t for t in report.tensors if t.name == "l/changed")
  assert changed.rel_change == pytest.approx(2 / math.sqrt(3), rel=1e-7)
  figure = report.plot()
  assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == [
      "l/changed", "l/shape", "m/only_a", "m/only_b", "l/same"]
  check_png(_plot.save(figure, str(tmp_path / "diff.png")),
            colors=["#0072B2", "#999999", "#D55E00", "#E69F00", "#009E73"])


@pytest.mark.parametrize("npz", [False, True], ids=["checkpoint", "npz"])
def test_diff_rel_change_counts_the_equal_chunks_of_a_changed_tensor(tmp_path, npz):
  a = np.random.RandomState(0).randn(1 << 20).astype(F)  # 4 MiB: read in two 2 MiB chunks
  b = a.copy()
  b[-10:] += 1  # only the second chunk differs
  if npz:
    np.savez(tmp_path / "a.npz", w=a)
    np.savez(tmp_path / "b.npz", w=b)
    report = warmstart.diff(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"))
  else:
    report = warmstart.diff(write_checkpoint(tmp_path / "a", {"w": a}),
                            write_checkpoint(tmp_path / "b", {"w": b}))
  expected = np.linalg.norm(b.astype(np.float64) - a) / np.linalg.norm(a.astype(np.float64))
  assert report.tensors[0].rel_change == pytest.approx(expected, rel=1e-6)


def test_diff_plot_of_300_tensors_groups_layers_and_says_what_it_folded(tmp_path):
  rng = np.random.RandomState(0)
  a, b = {}, {}
  for block in range(64):  # relative change block/1000 (conv) and block/2000 (bn); block00: 0
    for name in ("conv/kernel", "bn/gamma", "bn/beta", "bn/moving_mean", "bn/moving_variance"):
      full = "net/block%02d/%s" % (block, name)
      a[full] = rng.randn(8).astype(F)
      b[full] = a[full] * F(1 + block / (1000 if name.startswith("conv") else 2000))
  b["net/head/kernel"] = np.ones(2, F)
  np.savez(tmp_path / "a.npz", **a)
  np.savez(tmp_path / "b.npz", **b)
  report = warmstart.diff(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"))
  assert len(report.tensors) == 321
  figure = report.plot(max_rows=30)
  labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
  assert len(labels) == 30 + 2  # 30 layers, then one folded row per status
  assert labels[:2] == ["net/block63/conv  (1)", "net/block62/conv  (1)"]  # largest first
  assert labels[29] == "net/head  (1)"  # what is only in B is never folded
  # 129 layers: 126 changed (29 shown), 2 identical (block00's), net/head.
  assert labels[-2:] == ["… 97 more layers", "… 2 more layers"]
  assert "; 99 of 129 layers folded" in figure.texts[0].get_text()
  _, height = check_png(_plot.save(figure, str(tmp_path / "big.png")))
  assert height < 1500


def test_cli_drift_and_diff_plots(trained, tmp_path, capsys, monkeypatch):
  """In this process (test_cli.py runs the command line itself in subprocesses)."""
  def run(*args, block_matplotlib=False):
    with monkeypatch.context() as patch:
      if block_matplotlib:
        patch.setitem(sys.modules, "matplotlib.figure", None)  # `import` raises ImportError
      flags.FLAGS.unparse_flags()
      capsys.readouterr()
      status = cli.main(cli._parse_flags(["warmstart", *args]))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, status, out, err)
  drift_png, diff_png = str(tmp_path / "drift.png"), str(tmp_path / "diff.png")
  logdir = os.path.join(trained["ext"], "warmstart_drift")
  result = run("drift", "--from", trained["base"], "--model_dir", trained["ext"], "--json",
               "--plot", drift_png)
  assert (result.returncode, result.stderr) == (0, ""), result.stderr
  data = json.loads(result.stdout)
  assert data["plot"] == drift_png and os.path.dirname(data["summaries"]) == logdir
  assert set(events(logdir)) == {"warmstart/drift/" + g for g in GROUPS}
  check_png(drift_png)
  result = run("diff", trained["base"], trained["ext"], "--plot", diff_png)
  assert result.returncode == 1 and result.stdout.splitlines()[-1] == "plot: " + diff_png
  check_png(diff_png)
  missing = str(tmp_path / "no" / "where.png")
  other = write_checkpoint(tmp_path / "other", {"other/kernel": np.ones(2, F)}, step=1)
  untouched = sorted(os.listdir(tmp_path))
  for args, words in [
      (("drift", "--from", trained["base"], "--model_dir", str(tmp_path)),
       "no checkpoints in model_dir"),
      (("drift", "--from", other, "--model_dir", trained["ext"]), "shares no tensor"),
      (("diff", trained["base"], trained["ext"], "--plot", missing),
       "directory %s does not exist" % os.path.dirname(missing)),
  ]:
    result = run(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("warmstart: error: ") and words in result.stderr
    assert len(result.stderr.splitlines()) == 1
  result = run("diff", trained["base"], trained["ext"], "--plot", diff_png, block_matplotlib=True)
  assert (result.returncode, result.stdout) == (2, "")
  assert result.stderr == ("warmstart: error: plotting needs matplotlib, which is not installed: "
                           "pip install 'warmstart[plot]'\n")
  assert sorted(os.listdir(tmp_path)) == untouched

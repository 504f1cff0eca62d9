"""model_dir and source safety: never train inside (or around) the source, report-file failures
are clean, and a source that changes under a warm start is refused before TensorFlow reads it."""
import errno
import os
import shutil

import pytest
import tensorflow as tf
from conftest import input_fn, mlp_model_fn, train

import warmstart


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  directory = tmp_path_factory.mktemp("overlap")
  return train(str(directory / "src"), {}, steps=3)


def _files(directory):
  return sorted(os.path.join(d, f) for d, _, files in os.walk(directory) for f in files)


@pytest.mark.parametrize("where, relation", [
    ("{src}", "is"),
    ("{src}/../..", "contains"),
    ("{src}/finetune", "lies inside"),
    ("{link}", "is"),
    ("{link}/sub", "lies inside"),
])
def test_model_dir_overlapping_the_source_is_refused_before_anything_runs(source, where,
                                                                           relation):
  src = os.path.dirname(source)
  link = src + "-link"
  if not os.path.islink(link):
    os.symlink(src, link)
  before = _files(os.path.dirname(src))
  model_dir = where.format(src=src, link=link)
  for warm_start_from in (src, source):  # the directory and the prefix mean the same files
    with pytest.raises(warmstart.WarmStartError, match=r"model_dir .* %s the warm-start source .*"
                       r"rotation would delete its files" % relation):
      warmstart.estimator_from(mlp_model_fn, model_dir=model_dir,
                               warm_start_from=warm_start_from, include="mnist/hidden/.*")
  assert _files(os.path.dirname(src)) == before


def test_a_model_dir_beside_the_source_is_fine(source, tmp_path):
  estimator = warmstart.estimator_from(mlp_model_fn, model_dir=str(tmp_path / "beside"),
                                       warm_start_from=source, include="mnist/hidden/.*")
  assert estimator.model_dir == str(tmp_path / "beside")


def test_report_path_taken_by_a_directory_is_a_clean_error(source, tmp_path):
  model_dir = tmp_path / "m"
  (model_dir / "warmstart_report.json").mkdir(parents=True)
  estimator = warmstart.estimator_from(mlp_model_fn, model_dir=str(model_dir),
                                       warm_start_from=source, include="mnist/hidden/.*")
  with pytest.raises(warmstart.WarmStartError,
                     match=r"cannot write the warm-start report .*warmstart_report.json: Is a "
                           r"directory\. Free the space or move what is in the way"):
    estimator.train(input_fn(), steps=1)
  assert sorted(os.listdir(model_dir)) == ["warmstart_report.json"]  # no temp file left


def test_full_disk_while_writing_the_report_names_the_file_and_the_space(source, tmp_path,
                                                                          monkeypatch):
  def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(os, "fsync", full)  # where the filesystem reports a full disk
  model_dir = tmp_path / "m"
  estimator = warmstart.estimator_from(mlp_model_fn, model_dir=str(model_dir),
                                       warm_start_from=source, include="mnist/hidden/.*")
  with pytest.raises(warmstart.WarmStartError,
                     match=r"warmstart_report.json: No space left on device \(it needs \d+ "
                           r"bytes; \d+ are free\)"):
    estimator.train(input_fn(), steps=1)
  assert not [f for f in os.listdir(model_dir) if "warmstart_report" in f]


@pytest.mark.parametrize("content", ["[1, 2]", '{"frozen": "mnist/hidden/kernel"}', "{",
                                     '{"frozen": [3]}'])
def test_corrupt_report_read_back_on_resume_is_a_clean_error(source, tmp_path, content):
  copy = tmp_path / "copy"
  copy.mkdir()
  for name in os.listdir(os.path.dirname(source)):
    if os.path.basename(source) in name:
      (copy / name).write_bytes(open(os.path.join(os.path.dirname(source), name), "rb").read())
  model_dir = str(tmp_path / "m")
  warmstart.estimator_from(mlp_model_fn, model_dir=model_dir, warm_start_from=str(copy),
                           include="mnist/hidden/.*", freeze=True).train(input_fn(), steps=1)
  assert tf.train.latest_checkpoint(model_dir)
  with open(os.path.join(model_dir, "warmstart_report.json"), "w") as f:
    f.write(content)
  for name in os.listdir(copy):  # the source is gone: the frozen list must come from the report
    os.unlink(copy / name)
  resumed = warmstart.estimator_from(mlp_model_fn, model_dir=model_dir,
                                     warm_start_from=str(copy), include="mnist/hidden/.*",
                                     freeze=True)
  with pytest.raises(warmstart.WarmStartError, match=r"cannot tell which variables to freeze"):
    resumed.train(input_fn(), steps=1)


# -- a source that changes under a warm start ----------------------------------------------

def _replace(prefix, hidden):
  """Replaces the checkpoint at `prefix` by a newly trained one whose hidden layer has `hidden`
  units (as another job writing the same path would)."""
  directory = os.path.dirname(prefix)
  shutil.rmtree(directory)
  replaced = train(directory, {"hidden": hidden}, steps=1)
  assert replaced == prefix.rsplit("-", 1)[0] + "-1"
  return replaced


def test_source_changed_between_the_estimator_and_train_is_a_clean_error(tmp_path):
  source = train(str(tmp_path / "src"), {}, steps=1)
  estimator = warmstart.estimator_from(mlp_model_fn, model_dir=str(tmp_path / "m"),
                                       warm_start_from=source)
  _replace(source, hidden=5)
  with pytest.raises(warmstart.CheckpointReadError,
                     match=r"checkpoint .*src/model.ckpt-1 changed after warmstart first read it "
                           r"\(when the Estimator or settings were made\): 'mnist/hidden/bias' was "
                           r"float32 \[8\], is now float32 \[5\]; 'mnist/hidden/kernel' was "
                           r"float32 \[6, 8\], is now float32 \[6, 5\]; 'mnist/logits/kernel' "
                           r".*Make them again"):
    estimator.train(input_fn(), steps=1)
  assert tf.train.latest_checkpoint(str(tmp_path / "m")) is None


class _ReplaceSource(tf.compat.v1.train.SessionRunHook):
  """A chief hook that replaces the source right before the session starts."""

  def __init__(self, prefix):
    self.prefix = prefix

  def begin(self):
    _replace(self.prefix, hidden=8)  # the same shapes: only the files tell


def test_source_replaced_after_planning_is_refused_before_the_session_reads_it(tmp_path):
  source = train(str(tmp_path / "src"), {}, steps=1)

  def model_fn(features, labels, mode, params):
    spec = mlp_model_fn(features, labels, mode, params)
    return spec._replace(training_chief_hooks=[_ReplaceSource(source)])

  estimator = warmstart.estimator_from(model_fn, model_dir=str(tmp_path / "m"),
                                       warm_start_from=source)
  with pytest.raises(warmstart.CheckpointReadError,
                     match=r"checkpoint .*src/model.ckpt-1 was modified, replaced or removed after "
                           r"warmstart checked it for this warm start \(.*model.ckpt-1.data-00000-"
                           r"of-00001 changed, .*model.ckpt-1.index changed\); nothing was loaded"):
    estimator.train(input_fn(), steps=1)
  assert tf.train.latest_checkpoint(str(tmp_path / "m")) is None


def test_written_files_get_the_mode_open_gives_not_mkstemps(source, tmp_path):
  old = os.umask(0o027)
  try:
    model_dir = tmp_path / "m"
    warmstart.estimator_from(mlp_model_fn, model_dir=str(model_dir), warm_start_from=source,
                             include="mnist/hidden/.*").train(input_fn(), steps=1)
    warmstart.convert(source, str(tmp_path / "out.safetensors"))
  finally:
    os.umask(old)
  for path in (model_dir / "warmstart_report.json", tmp_path / "out.safetensors"):
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o640), path

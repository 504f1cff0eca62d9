"""Selection (full match), kinds, renames, shape/dtype policies and the report, via plan()."""
import json

import numpy as np
import pytest
from conftest import write_checkpoint

import warmstart

F = np.float32


def ckpt(tmp_path, name, tensors):
  return write_checkpoint(tmp_path / name, tensors, step=1)


@pytest.fixture
def source(tmp_path):
  return ckpt(tmp_path, "source", {
      "mnist/hidden/kernel": np.ones([4, 3], F), "mnist/hidden/bias": np.ones([3], F),
      "mnist/hidden/kernel/Adam": np.ones([4, 3], F), "mnist/logits/kernel": np.ones([3, 2], F),
      "global_step": np.int64(50), "beta1_power": F(0.9)})


@pytest.fixture
def target(tmp_path):
  return ckpt(tmp_path, "target", {
      "mnist/hidden/kernel": np.zeros([4, 3], F), "mnist/hidden/bias": np.zeros([3], F),
      "mnist/hidden/kernel/Adam": np.zeros([4, 3], F),
      "mnist/hidden_1/kernel": np.zeros([3, 3], F),
      "mnist/logits/kernel": np.zeros([3, 5], F), "global_step": np.int64(0),
      "beta1_power": F(0.9)})


def loaded(plan):
  return sorted(a.name for a in plan.assignments)


def test_exact_name_does_not_grab_slots_or_siblings(source, target):
  # TF's list form would treat 'mnist/hidden/kernel' as a prefix regex and also load '/Adam'.
  plan = warmstart.plan(source, target, include=["mnist/hidden/kernel"],
                        optimizer_state="keep")
  assert loaded(plan) == ["mnist/hidden/kernel"]


def test_prefix_without_wildcard_matches_nothing_and_suggests(source, target):
  with pytest.raises(warmstart.PlanError) as err:
    warmstart.plan(source, target, include="mnist/hidden")
  message = str(err.value)
  assert "include pattern 'mnist/hidden' matches no model variable" in message
  assert "did you mean 'mnist/hidden/.*'" in message
  assert "'mnist/hidden/bias'" in message


def test_misspelled_pattern_names_closest(source, target):
  with pytest.raises(warmstart.PlanError, match=r"'mnist/hiden/kernel'.*Closest names: "
                     r"'mnist/hidden/kernel'"):
    warmstart.plan(source, target, include="mnist/hiden/kernel")


def test_exclude_matching_nothing_is_an_error(source, target):
  with pytest.raises(warmstart.PlanError, match="exclude pattern 'mnist/head/.*' matches no"):
    warmstart.plan(source, target, exclude="mnist/head/.*")


def test_invalid_regex(source, target):
  with pytest.raises(warmstart.PatternError, match=r"invalid regex in include: 'mnist/\['"):
    warmstart.plan(source, target, include="mnist/[")


@pytest.mark.parametrize("pattern, expected", [
    (r"^.*(hidden|logits).*$", ["mnist/hidden/bias", "mnist/hidden/kernel"]),
    (r"^((?!mnist\/(logits|hidden_1)).)*$", ["mnist/hidden/bias", "mnist/hidden/kernel"]),
], ids=["niftynet-include", "niftynet-negative-lookahead"])
def test_niftynet_regexes_work_as_written(source, target, pattern, expected):
  plan = warmstart.plan(source, target, include=pattern, on_shape_mismatch="skip")
  assert loaded(plan) == expected


def test_reset_leaves_optimizer_state_and_step(source, target):
  plan = warmstart.plan(source, target, exclude="mnist/logits/.*")
  assert loaded(plan) == ["mnist/hidden/bias", "mnist/hidden/kernel"]
  skipped = {e.name: e.reason for e in plan.report.skipped}
  assert set(skipped) == {"mnist/hidden/kernel/Adam", "global_step", "beta1_power"}
  assert "optimizer_state='reset'" in skipped["global_step"]


def test_keep_carries_optimizer_state_and_step(source, target):
  plan = warmstart.plan(source, target, exclude="mnist/logits/.*", optimizer_state="keep")
  assert loaded(plan) == ["beta1_power", "global_step", "mnist/hidden/bias",
                          "mnist/hidden/kernel", "mnist/hidden/kernel/Adam"]


def test_include_matching_only_reset_state_explains(source, target):
  with pytest.raises(warmstart.PlanError, match=r"'global_step' matches 1 model variable.*"
                     r"loads none: global_step: step: optimizer_state='reset'"):
    warmstart.plan(source, target, include=["mnist/hidden/.*", "global_step"])


def test_missing_variables_are_reported_not_fatal(source, target):
  plan = warmstart.plan(source, target, exclude="mnist/logits/.*")
  assert [e.name for e in plan.report.missing] == ["mnist/hidden_1/kernel"]


def test_several_model_variables_read_one_tensor(source, target):
  plan = warmstart.plan(source, target, include=r"mnist/hidden/kernel(/Adam)?",
                        rename={r"mnist/hidden/kernel/Adam": "mnist/hidden/kernel"},
                        optimizer_state="keep")
  assert {(a.name, a.checkpoint_name) for a in plan.assignments} == {
      ("mnist/hidden/kernel", "mnist/hidden/kernel"),
      ("mnist/hidden/kernel/Adam", "mnist/hidden/kernel")}
  assert [e.name for e in plan.report.renamed] == ["mnist/hidden/kernel/Adam"]
  assert "mnist/hidden/kernel/Adam  (4, 3)" in str(plan.report)
  assert "<- mnist/hidden/kernel" in str(plan.report)


def test_renamed_variable_with_other_shape_is_skipped_by_policy(source, target):
  plan = warmstart.plan(source, target, include=r"mnist/hidden(_1)?/kernel",
                        rename={r"mnist/hidden_1/(kernel)": r"mnist/logits/\1"},
                        on_shape_mismatch="skip")
  assert loaded(plan) == ["mnist/hidden/kernel"]
  [skipped] = plan.report.skipped
  assert (skipped.name, skipped.checkpoint_name) == ("mnist/hidden_1/kernel", "mnist/logits/kernel")


def test_rename_expands_groups(tmp_path):
  source = ckpt(tmp_path, "s", {"old/layer_0/w": np.ones([2], F), "old/layer_1/w": np.ones([2], F)})
  target = ckpt(tmp_path, "t", {"new/block0/w": np.ones([2], F), "new/block1/w": np.ones([2], F)})
  plan = warmstart.plan(source, target, rename={r"new/block(\d)/(\w+)": r"old/layer_\1/\2"})
  assert [(a.name, a.checkpoint_name) for a in plan.assignments] == [
      ("new/block0/w", "old/layer_0/w"), ("new/block1/w", "old/layer_1/w")]


def test_unused_rename_rule_is_an_error(source, target):
  with pytest.raises(warmstart.PlanError) as err:
    warmstart.plan(source, target, include="mnist/hidden/.*",
                   rename={"mnist/hiden/(.*)": r"mnist/hidden/\1"})
  assert "rename rule 'mnist/hiden/(.*)' -> 'mnist/hidden/\\\\1' was never used" in str(err.value)
  assert err.value.report.unused_rules == ["'mnist/hiden/(.*)' -> 'mnist/hidden/\\\\1'"]


def test_rename_to_a_name_not_in_the_checkpoint(source, target):
  with pytest.raises(warmstart.PlanError, match=r"maps model variable 'mnist/hidden/bias' to "
                     r"'mnist/hidden/b', which is not in the checkpoint"):
    warmstart.plan(source, target, include="mnist/hidden/(kernel|bias)",
                   rename={"mnist/hidden/bias": "mnist/hidden/b"})


def test_rename_template_with_a_missing_group(source, target):
  with pytest.raises(warmstart.PatternError, match=r"refers to group \\2 but the pattern"):
    warmstart.plan(source, target, rename={"(a)": r"\2"})


def test_shape_mismatch_error_names_both_shapes_and_fixes(source, target):
  with pytest.raises(warmstart.PlanError) as err:
    warmstart.plan(source, target)
  message = str(err.value)
  assert ("shape mismatch for 'mnist/logits/kernel': model (3, 5) vs checkpoint "
          "'mnist/logits/kernel' (3, 2)") in message
  assert "exclude='mnist/logits/kernel'" in message and "on_shape_mismatch='skip'" in message


@pytest.mark.parametrize("policy", ["skip", {"mnist/logits/.*": "skip"}], ids=["global", "dict"])
def test_shape_mismatch_skip(source, target, policy):
  plan = warmstart.plan(source, target, on_shape_mismatch=policy)
  [skipped] = [e for e in plan.report.skipped if e.kind == "weight"]
  assert skipped.name == "mnist/logits/kernel"
  assert "shape (3, 5) vs checkpoint (3, 2)" in skipped.reason


def test_bad_policy_values(source, target):
  with pytest.raises(warmstart.WarmStartError, match="on_shape_mismatch must be one of"):
    warmstart.plan(source, target, on_shape_mismatch="ignore")
  with pytest.raises(warmstart.WarmStartError, match="optimizer_state must be"):
    warmstart.plan(source, target, optimizer_state="drop")


def test_dtype_mismatch(tmp_path):
  source = ckpt(tmp_path, "s", {"w": np.ones([2], np.float64)})
  target = ckpt(tmp_path, "t", {"w": np.ones([2], F)})
  with pytest.raises(warmstart.PlanError, match=r"dtype mismatch for 'w': model float32 vs "
                     r"checkpoint 'w' float64"):
    warmstart.plan(source, target)


def test_report_lists_everything_and_round_trips_json(source, target):
  report = warmstart.plan(source, target, exclude="mnist/logits/.*", freeze=True).report
  data = json.loads(report.to_json())
  assert [e["name"] for e in data["loaded"]] == ["mnist/hidden/bias", "mnist/hidden/kernel"]
  assert [e["name"] for e in data["not_selected"]] == ["mnist/logits/kernel"]
  assert data["not_selected"][0]["reason"] == "excluded by 'mnist/logits/.*'"
  assert data["frozen"] == ["mnist/hidden/bias", "mnist/hidden/kernel"]
  assert data["missing"][0]["name"] == "mnist/hidden_1/kernel"
  assert sorted(e["name"] for e in data["unused_checkpoint_tensors"]) == [
      "beta1_power", "global_step", "mnist/hidden/kernel/Adam", "mnist/logits/kernel"]
  text = str(report)
  assert text.startswith("warm start from %s (step 1): 2 of 7 model variables loaded" % source)
  for piece in ("mnist/hidden/kernel  (4, 3)", "frozen (not trainable): mnist/hidden/bias, mnist/hidden/kernel",
                "missing from the checkpoint", "mnist/hidden_1/kernel: not in the checkpoint",
                "checkpoint tensors nobody read (4)"):
    assert piece in text


def test_plan_error_carries_the_report(source, target):
  with pytest.raises(warmstart.PlanError) as err:
    warmstart.plan(source, target, include=["mnist/hidden/.*", "nope"])
  assert err.value.report.unused_patterns == ["include 'nope'"]
  assert [e.name for e in err.value.report.loaded] == ["mnist/hidden/bias", "mnist/hidden/kernel"]


def test_freeze_pattern_matching_nothing(source, target):
  with pytest.raises(warmstart.PlanError, match="freeze pattern 'mnist/hiden/.*' matches no"):
    warmstart.plan(source, target, include="mnist/hidden/.*", freeze="mnist/hiden/.*")


def test_npz_source(tmp_path, target):
  np.savez(tmp_path / "w.npz", **{"mnist/hidden/kernel": np.full([4, 3], 2, F)})
  plan = warmstart.plan(str(tmp_path / "w.npz"), target, include="mnist/hidden/kernel")
  assert loaded(plan) == ["mnist/hidden/kernel"]


def test_report_summarizes_unused_tensors_by_their_kind(tmp_path):
  source = ckpt(tmp_path, "s", {"w": np.ones([2], F), "vocab": np.array([b"a", b"b"]),
                                "w/Adam": np.ones([2], F)})
  target = ckpt(tmp_path, "t", {"w": np.ones([2], F)})
  text = str(warmstart.plan(source, target).report)
  assert "checkpoint tensors nobody read (2): 1 optimizer_slot; 1 other (vocab)" in text


def test_include_whose_matches_are_all_skipped_for_shape_is_a_warning(source, target, caplog):
  # The user asked for shape mismatches to be skipped: that is what happens, with a warning.
  with caplog.at_level("WARNING", logger="warmstart"):
    plan = warmstart.plan(source, target, include=["mnist/hidden/.*", "mnist/logits/.*"],
                          on_shape_mismatch="skip")
  assert loaded(plan) == ["mnist/hidden/bias", "mnist/hidden/kernel"]
  [warning] = plan.report.warnings
  assert warning.startswith("include pattern 'mnist/logits/.*' loads none of the 1 model "
                            "variable(s) it matches: mnist/logits/kernel: shape (3, 5) vs "
                            "checkpoint (3, 2) (on_shape_mismatch='skip')")
  assert warning in caplog.text and "warnings:" in str(plan.report)
  assert json.loads(plan.report.to_json())["warnings"] == [warning]
  assert plan.report.unused_patterns == []

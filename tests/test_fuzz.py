"""A smaller run of benchmarks/fuzz_checkpoints.py: crafted and damaged sources of every format
never crash the CLI, never take more than 1 GiB, and fail with one clean error line."""
import fuzz_checkpoints  # on the path through conftest


def test_crafted_and_damaged_sources_give_clean_errors_or_correct_results():
  counts, failures = fuzz_checkpoints.fuzz(cases=200, seed=7, log=None)
  assert failures == []
  assert sum(counts.values()) >= 200 * 2  # ls and diff always, plan for most formats
  # Both kinds of outcome happen: the fuzz reaches the readers, not only the first check.
  assert counts["clean_error"] > 120 and counts["result"] > 80, counts

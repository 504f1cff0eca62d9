"""A smaller run of benchmarks/fuzz_checkpoints.py: damaged sources of every format never crash the CLI."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))

import fuzz_checkpoints


def test_damaged_checkpoints_give_clean_errors_or_correct_results():
  counts, failures = fuzz_checkpoints.fuzz(cases=120, seed=7, log=None)
  assert failures == []
  assert sum(counts.values()) == 240
  # Both kinds of outcome happen: the fuzz reaches the readers, not only the first check.
  assert counts["clean_error"] > 50 and counts["result"] > 10, counts

#!/usr/bin/env bash
# Compares two checkpoints: `warmstart diff A B [flags]`, exit status 0 same / expectations
# hold, 1 differences / an expectation fails, 2 bad usage or unreadable input.
#
#   scripts/diff.sh demo_out/model demo_out/model_ext --expect-same 'mnist/hidden/.*'
#
# Uses the project's .venv/bin/warmstart when there is one, else `warmstart` on PATH.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -x "$repo/.venv/bin/warmstart" ]]; then
  warmstart="$repo/.venv/bin/warmstart"
elif command -v warmstart >/dev/null 2>&1; then
  warmstart="$(command -v warmstart)"
else
  echo "diff.sh: error: no warmstart command: neither $repo/.venv/bin/warmstart nor one on" \
       "PATH; run 'make venv' (or pip install -e .) first" >&2
  exit 2
fi

# TensorFlow's C++ start-up chatter (CUDA plugin registration, CPU features) hides the result.
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
exec "$warmstart" diff "$@"

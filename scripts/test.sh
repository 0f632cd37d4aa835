#!/usr/bin/env bash
# The whole test suite, once per Keras backend. pytest exits 5 when it collects no
# test; that, like any failure, fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${SMOOTHL1_TEST_JOBS:-2}
for backend in ${SMOOTHL1_BACKENDS:-tensorflow jax torch}; do
    echo "=== KERAS_BACKEND=$backend"
    KERAS_BACKEND=$backend python -m pytest -q -n "$jobs" "$@"
done

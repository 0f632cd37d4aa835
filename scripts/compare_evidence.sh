#!/usr/bin/env bash
# The README's "Does Smooth L1 help? Measured": the default grid of `smoothl1
# compare` on three built-in real tables, written to docs/compare/<data>/.
# stackloss has 21 rows (13 for training), so it gets small batches, more epochs
# and more seeds; diamonds has 53,940 rows, so it gets larger batches and fewer
# epochs. Everything else is the default.
set -euo pipefail
cd "$(dirname "$0")/.."
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
smoothl1 compare diabetes --out docs/compare/diabetes --overwrite --quiet
smoothl1 compare stackloss --seeds 10 --epochs 300 --batch-size 4 \
    --out docs/compare/stackloss --overwrite --quiet
smoothl1 compare diamonds --epochs 20 --batch-size 256 \
    --out docs/compare/diamonds --overwrite --quiet

#!/usr/bin/env bash
# Metrix as the paper measured it (issue 25): none vs feature mixing under both epoch-selection
# protocols (ours: the epoch chosen on validation classes; the official code's: the best epoch on
# the test classes, reported only), for the official code's variant (metrix-code), the full-cpu
# recipe and the cached cpu recipe. Every run records the test classes at every epoch.
# Resumable: finished runs are kept in bench/results/protocols-RECIPE-SET/results.json and not
# repeated. The order puts three seeds of one comparison before the next comparison, so an
# interrupted grid still answers questions with a spread. Run it from a separate git worktree:
#     git worktree add ../metrix-grid HEAD && cd ../metrix-grid && bench/protocols.sh
# Usage: bench/protocols.sh   (PYTHON, SHARED and RESULTS override the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
shared=${SHARED:-../shared}
results=${RESULTS:-bench/results}
grid() {
    local recipe=$1 dataset=$2
    shift 2
    "$python" bench/recipe_grid.py --recipe "$recipe" --data "$shared/datasets/$dataset" \
        --out "$results/protocols-$recipe-$dataset" --seeds 0 1 2 "$@"
}
for dataset in cub100 omniglot_small; do
    grid metrix-code "$dataset" --runs contrastive:none contrastive:feature
    grid metrix-code "$dataset" --runs ms:none ms:feature
    grid full-cpu "$dataset" --runs ms:none ms:feature
    grid full-cpu "$dataset" --runs contrastive:none contrastive:feature
done
grid cpu cub100 --runs ms:none ms:feature

#!/usr/bin/env bash
# Flips or no flips (issue 31): the full-cpu recipe (MS, no mixing) on omniglot_small (handwritten
# characters) and cub100 (birds), --flip against --no-flip, seeds 0-2, test R@1 / MAP@R at the
# epoch chosen on the validation classes. Seed by seed, so an interrupted grid has whole
# comparisons. Resumable (bench/recipe_grid.py keeps finished runs). What the automatic choice
# picks on each set: bench/flip_check.py. Run it from a separate git worktree, as bench/protocols.sh.
# Usage: bench/flip_grid.sh   (PYTHON, SHARED and RESULTS override the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
shared=${SHARED:-../shared}
results=${RESULTS:-bench/results}
for seed in 0 1 2; do
    for dataset in omniglot_small cub100; do
        for flip in true false; do
            "$python" bench/recipe_grid.py --recipe full-cpu --data "$shared/datasets/$dataset" \
                --out "$results/flip-full-cpu-$dataset" --seeds "$seed" --runs ms:none \
                --set "flip=$flip" --tag "flip-$flip"
        done
    done
done

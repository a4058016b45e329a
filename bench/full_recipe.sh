#!/usr/bin/env bash
# Metrix in the full-training regime (issue 13): the full-cpu recipe (every layer trains, fresh
# augmentation, 96 px) on omniglot_small and cub100, balanced P x K batches and the paper's random
# batches with the official coin flip between pair kinds. Resumable: finished runs are kept in
# bench/results/full_cpu-*/results.json and not repeated. The main comparison (MS none vs feature)
# comes first, seed by seed on every set, so an interrupted grid still answers the question.
# Usage: bench/full_recipe.sh   (PYTHON, SHARED and RESULTS override the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
shared=${SHARED:-../shared}
results=${RESULTS:-bench/results}
grid() {
    local dataset=$1
    shift
    "$python" bench/recipe_grid.py --recipe full-cpu --data "$shared/datasets/$dataset" \
        --out "$results/full_cpu-$dataset" "$@"
}
random_batches=(--tag random --set 'sampler="random"' 'pair_choice="coin"')
for seed in 0 1 2; do
    grid omniglot_small --runs ms:none ms:feature --seeds "$seed"
    grid cub100 --runs ms:none ms:feature --seeds "$seed"
    grid cub100 --runs ms:none ms:feature --seeds "$seed" "${random_batches[@]}"
done
# Then, seed 0, judged on validation classes: an attempt at making Metrix help, a stronger mixed
# term (bench/metrix_gradients.py finds w x mixed at 15-20% of the clean gradient); the other
# losses; input mixing, the one variant whose mixes pass through every layer, where the whole
# network over-fits (it embeds one mixed image per positive pair: about 4x a clean step); and
# twice the epochs.
for dataset in cub100 omniglot_small; do
    grid "$dataset" --runs ms:feature --seeds 0 --tag w1 --set 'mixup_weight=1.0'
done
for dataset in omniglot_small cub100; do
    grid "$dataset" --runs contrastive:none contrastive:feature pa:none pa:feature ms:embed pml-ms:none --seeds 0
done
for dataset in omniglot_small cub100; do
    grid "$dataset" --runs ms:input --seeds 0
done
for dataset in cub100 omniglot_small; do
    grid "$dataset" --runs ms:none ms:feature --seeds 0 --tag e40 --set 'epochs=40'
done

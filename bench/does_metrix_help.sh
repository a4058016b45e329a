#!/usr/bin/env bash
# Issue 4's benchmark, one command: the CPU recipe grid on cub100 and omniglot_small (floor; MS,
# contrastive, PA without and with Metrix feature mixing; MS embed; the pytorch-metric-learning
# MS peer; 3 seeds each), then the retrieval picture. Resumable: finished runs are kept in
# bench/results/cpu_recipe-*/results.json and not repeated. Several hours on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${SHARED:-../shared}
for dataset in cub100 omniglot_small; do
    .venv/bin/python bench/cpu_recipe.py --data "$shared/datasets/$dataset" --out "bench/results/cpu_recipe-$dataset"
done
.venv/bin/python bench/retrieval_examples.py bench/results/cpu_recipe-cub100/ms-none-s0 \
    bench/results/cpu_recipe-cub100/ms-feature-s0 --out docs/retrievals-cub100.png
.venv/bin/python bench/retrieval_examples.py bench/results/cpu_recipe-omniglot_small/ms-none-s0 \
    bench/results/cpu_recipe-omniglot_small/ms-feature-s0 --out docs/retrievals-omniglot_small.png

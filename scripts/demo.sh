#!/usr/bin/env bash
# Set up .venv and run the main job, offline: `metrix demo` generates the built-in synthetic
# dataset, trains Metrix (the CPU recipe without a GPU), exports it to ONNX, indexes the unseen
# classes, prints R@1 against the untrained backbone and serves the web UI on 127.0.0.1:7860.
# Arguments go to `metrix demo`, e.g. scripts/demo.sh --no-serve, scripts/demo.sh --data ./my_images
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/metrix demo "$@"

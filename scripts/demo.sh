#!/usr/bin/env bash
# Set up .venv and run the main job: train Metrix on the built-in synthetic dataset (offline,
# a few minutes on 2 CPU cores), measure it on the unseen test classes next to the untrained
# backbone, and export it to a verified ONNX model. `metrix demo` (issue 7) will replace this
# with the whole train -> export -> index -> serve path.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
run="runs/demo-$(date +%Y%m%d-%H%M%S)"
.venv/bin/metrix train --out "$run"
.venv/bin/metrix evaluate "$run" --floor
.venv/bin/metrix export "$run"

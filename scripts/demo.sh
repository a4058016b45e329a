#!/usr/bin/env bash
# Set up .venv and run the main job. Until `metrix demo` lands (issue 7) the main job is the CLI
# itself: it lists what is there and reports the environment it runs in.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/metrix --help
.venv/bin/metrix info

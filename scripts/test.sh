#!/usr/bin/env bash
# Set up .venv (pinned dependencies + test tools) and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k losses
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh dev
exec .venv/bin/python -m pytest "$@"

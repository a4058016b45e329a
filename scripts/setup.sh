#!/usr/bin/env bash
# Create .venv if needed and install metrix with the exact, tested dependency set
# (requirements.lock). Usage: scripts/setup.sh [dev]   (dev adds the test tools)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade "pip>=25"
extras=""
if [ "${1:-}" = "dev" ]; then extras="[dev]"; fi  # dev pulls in the ray and s3 extras
.venv/bin/python -m pip install -q -c requirements.lock -e ".${extras}"

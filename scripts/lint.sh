#!/usr/bin/env bash
# Lint, format check and the import contracts between the layers (pyproject.toml,
# docs/architecture.md). Needs the dev tools: scripts/setup.sh dev.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# import-linter reads the package from disk; app/, index/ and export/ install as metrix.app,
# metrix.index and metrix.export, so check a plain (non-editable) copy of the installed layout.
staged=$(mktemp -d)
trap 'rm -rf "$staged"' EXIT
.venv/bin/python -m pip install -q --no-deps --no-compile --target "$staged/site" . >"$staged/pip.log" 2>&1 \
    || { cat "$staged/pip.log"; exit 1; }
(cd "$staged" && PYTHONPATH="$staged/site" "$OLDPWD/.venv/bin/lint-imports" --no-cache "$OLDPWD/pyproject.toml")

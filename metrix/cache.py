"""Where Metrix keeps what it can compute again: $METRIX_CACHE, or ~/.cache/metrix."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("METRIX_CACHE") or Path.home() / ".cache" / "metrix")

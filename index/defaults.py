"""Where build-index and search look when not told: the newest exported model under runs/, an
index under indexes/<gallery folder name>, the most recently built index under indexes/."""

from __future__ import annotations

from pathlib import Path

from .store import CURRENT, GalleryIndexError

RUNS, INDEXES = Path("runs"), Path("indexes")


def default_model(runs: Path = RUNS) -> Path:
    """The most recently exported model (model*.onnx) of the newest run that has one."""
    exported = sorted(runs.glob("*/checkpoints/*/model*.onnx"), key=lambda p: p.stat().st_mtime)
    if not exported:
        raise GalleryIndexError(f"no exported model under {runs}/: run `metrix export RUN_DIR` or pass --model")
    newest_run = max({p.parents[2] for p in exported}, key=lambda run: max(p.stat().st_mtime for p in exported if p.parents[2] == run))
    return [p for p in exported if p.parents[2] == newest_run][-1]


def default_index_dir(gallery: Path | str) -> Path:
    from .source import default_name

    return INDEXES / default_name(gallery)


def newest_index(indexes: Path = INDEXES) -> Path:
    built = sorted(indexes.glob(f"*/{CURRENT}"), key=lambda p: p.stat().st_mtime)
    if not built:
        raise GalleryIndexError(f"no index under {indexes}/: build one with `metrix build-index GALLERY` or pass --index")
    return built[-1].parent

"""Where build-index and search look when not told: the newest exported model under runs/ (or,
with no run, the untrained pretrained backbone exported to models/), an index under
indexes/<gallery folder name>, the most recently built index under indexes/."""

from __future__ import annotations

from pathlib import Path

from ..index.store import CURRENT, GalleryIndexError

RUNS, INDEXES, MODELS = Path("runs"), Path("indexes"), Path("models")
#: The backbone a gallery is indexed with when nothing was trained: its weights install offline.
FLOOR_BACKBONE = "efficientnet_lite0"


def default_model(runs: Path = RUNS) -> Path:
    """The most recently exported model (model*.onnx) of the newest run that has one."""
    exported = sorted(runs.glob("*/checkpoints/*/model*.onnx"), key=lambda p: p.stat().st_mtime)
    if not exported:
        raise GalleryIndexError(f"no exported model under {runs}/: run `metrix export RUN_DIR` or pass --model")
    newest_run = max(
        {p.parents[2] for p in exported},
        key=lambda run: max(p.stat().st_mtime for p in exported if p.parents[2] == run),
    )
    return [p for p in exported if p.parents[2] == newest_run][-1]


def default_index_dir(gallery: Path | str) -> Path:
    from ..index.source import default_name

    return INDEXES / default_name(gallery)


def newest_index(indexes: Path = INDEXES) -> Path:
    built = sorted(indexes.glob(f"*/{CURRENT}"), key=lambda p: p.stat().st_mtime)
    if not built:
        raise GalleryIndexError(
            f"no index under {indexes}/: build one with `metrix build-index GALLERY` or pass --index"
        )
    return built[-1].parent


def floor_model_path(backbone: str, models: Path = MODELS) -> Path:
    """Where `metrix export --backbone NAME` writes the untrained backbone by default."""
    return models / f"{backbone.replace(':', '-').replace('/', '-')}-floor.onnx"


def floor_model(backbone: str = FLOOR_BACKBONE, models: Path = MODELS) -> tuple[Path, bool]:
    """The untrained pretrained `backbone` as an exported model, exported on first use; returns
    (path, whether it was exported now)."""
    path = floor_model_path(backbone, models)
    if path.is_file():
        return path, False
    from metrix.export.onnx_export import export_backbone

    export_backbone(backbone, path)
    return path, True

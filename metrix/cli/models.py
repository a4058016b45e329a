"""Where build-index and search look when not told: the newest exported model of a run under runs/
trained on the gallery (or on a folder that holds it; else the untrained pretrained backbone
exported to models/), an index under
indexes/<gallery folder name>, the most recently built index under indexes/."""

from __future__ import annotations

import json
from pathlib import Path

from ..index.store import CURRENT, GalleryIndexError

RUNS, INDEXES, MODELS = Path("runs"), Path("indexes"), Path("models")
#: The backbone a gallery is indexed with when nothing was trained: its weights install offline.
FLOOR_BACKBONE = "efficientnet_lite0"


def default_model(gallery: Path | str, runs: Path = RUNS) -> tuple[Path, str]:
    """(the most recently exported model of the newest run trained on `gallery` or on a folder that
    holds it, that folder). A run trained on other data is never chosen for it: GalleryIndexError."""
    exported = sorted(runs.glob("*/checkpoints/*/model*.onnx"), key=lambda p: p.stat().st_mtime)
    roots = {run: trained_on(run) for run in {p.parents[2] for p in exported}}
    fitting = [p for p in exported if roots[p.parents[2]] and holds(roots[p.parents[2]], gallery)]
    if not fitting:
        others = sorted({root for root in roots.values() if root})
        used_only = f"; runs trained on {', '.join(others[:3])} are used only with --model" if others else ""
        raise GalleryIndexError(f"no exported run under {runs}/ trained on {gallery} or a folder holding it{used_only}")
    newest_run = max(
        {p.parents[2] for p in fitting},
        key=lambda run: max(p.stat().st_mtime for p in fitting if p.parents[2] == run),
    )
    return [p for p in fitting if p.parents[2] == newest_run][-1], roots[newest_run]


def trained_on(run: Path) -> str | None:
    """The folder (or object-store URL) a run trained on, from its config.json."""
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("data") or config.get("data_root")


def holds(root: str, gallery: Path | str) -> bool:
    """Whether `gallery` is the folder `root` or lies inside it."""
    root, gallery = str(root), str(gallery)
    if "://" in root or "://" in gallery:
        return gallery.rstrip("/") == root.rstrip("/") or gallery.startswith(root.rstrip("/") + "/")
    inside, folder = Path(gallery).resolve(), Path(root).resolve()
    return inside == folder or folder in inside.parents


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

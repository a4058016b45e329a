"""Where build-index and search look when not told: the best measured exported model of a run under
runs/ trained on the gallery (or on a folder that holds it; else the untrained pretrained backbone
exported to models/), an index under indexes/<gallery folder name>, the most recently built index
under indexes/."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..evaluation.bootstrap import Difference
from ..evaluation.card import gain, read_card
from ..index.store import CURRENT, GalleryIndexError

RUNS, INDEXES, MODELS = Path("runs"), Path("indexes"), Path("models")
#: The backbone a gallery is indexed with when nothing was trained: its weights install offline.
FLOOR_BACKBONE = "efficientnet_lite0"


@dataclass(frozen=True)
class ModelChoice:
    """What build-index uses when no --model is given, and why."""

    model: Path | None  # None: the untrained pretrained backbone (the floor)
    why: str
    floor_backbone: str = FLOOR_BACKBONE
    floor_size: int | None = None  # the floor's best input size, where a run measured it


def choose_model(gallery: Path | str, runs: Path = RUNS) -> ModelChoice:
    """The best measured model for `gallery`: among the exported runs trained on it (or on a folder
    that holds it), the one whose model card shows the largest MAP@R gain over the untrained
    backbone on its validation classes, never one that measured worse than no training; runs
    trained without labels (nothing to measure with) come next, newest first; else the floor."""
    exported = sorted(runs.glob("*/checkpoints/*/model*.onnx"), key=lambda p: p.stat().st_mtime)
    by_run: dict[Path, list[Path]] = {}
    for path in exported:
        by_run.setdefault(path.parents[2], []).append(path)
    roots = {run: trained_on(run) for run in by_run}
    fitting = {run: paths for run, paths in by_run.items() if roots[run] and holds(roots[run], gallery)}
    if not fitting:
        others = sorted({root for root in roots.values() if root})
        used_only = f"; runs trained on {', '.join(others[:3])} are used only with --model" if others else ""
        return ModelChoice(
            None, f"no exported run under {runs}/ trained on {gallery} or a folder holding it{used_only}"
        )
    better, unlabelled, notes, floors = [], [], [], []
    for run, paths in fitting.items():
        card = read_card(run)
        check = (card or {}).get("floor_check", {})
        if card is None:
            notes.append(f"{run} was never compared with no training (`metrix evaluate {run} --against-floor`)")
        elif check.get("verdict") == "not measured":
            unlabelled.append(paths[-1])
        elif gain(card) <= 0:
            notes.append(
                f"{run} measured worse than no training (MAP@R {Difference(**check['difference']['map_at_r'])})"
            )
            floors.append(check["floor"])
        elif chosen := [p for p in paths if p.parent.name == card["checkpoint"]]:
            better.append((gain(card), run, chosen[-1], check))
        else:
            notes.append(
                f"{run} measured better than no training, but its checkpoint {card['checkpoint']} is not exported"
            )
    if better:
        _, run, model, check = max(better, key=lambda b: b[0])
        of = f"the {len(better)} runs" if len(better) > 1 else "the one run"
        return ModelChoice(
            model,
            f"{model}, of {of} trained on {roots[run]} that measured better than no training, the one that gains most: "
            f"MAP@R {check['trained']['map_at_r']:.2f} vs {check['floor']['map_at_r']:.2f} for the untrained "
            f"{check['floor']['backbone']} on {check['validation_queries']} validation images "
            f"({Difference(**check['difference']['map_at_r'])}, 95% interval)",
        )
    if unlabelled:
        model = max(unlabelled, key=lambda p: p.stat().st_mtime)
        return ModelChoice(
            model,
            f"{model}, the newest exported run trained without labels on {roots[model.parents[2]]} "
            "(nothing labelled to compare it with no training)",
        )
    floor = floors[-1] if floors else {}
    return ModelChoice(None, "; ".join(notes), floor.get("backbone", FLOOR_BACKBONE), floor.get("image_size"))


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


def floor_model_path(backbone: str, models: Path = MODELS, image_size: int | None = None) -> Path:
    """Where `metrix export --backbone NAME` writes the untrained backbone by default (at its own
    input size, or NAME-SIZE-floor.onnx at another)."""
    name = backbone.replace(":", "-").replace("/", "-") + (f"-{image_size}" if image_size else "")
    return models / f"{name}-floor.onnx"


def floor_model(
    backbone: str = FLOOR_BACKBONE, models: Path = MODELS, image_size: int | None = None
) -> tuple[Path, bool]:
    """The untrained pretrained `backbone` (at `image_size`, None: its own) as an exported model,
    exported on first use; returns (path, whether it was exported now)."""
    path = floor_model_path(backbone, models, image_size)
    if path.is_file():
        return path, False
    from metrix.export.onnx_export import export_backbone

    export_backbone(backbone, path, image_size=image_size)
    return path, True

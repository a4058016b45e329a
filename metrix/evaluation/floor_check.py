"""Does a trained run retrieve better than no training? Its model card says.

At the end of `metrix train` (and with `metrix evaluate RUN --against-floor`) the run's chosen
checkpoint and the untrained pretrained backbone it started from embed the same validation
classes (held-out training classes, never the test classes). The floor is tried at a few input
sizes and keeps its best, measured on those same classes, since a backbone trained at 96 px
competes with the same backbone untrained at its best size, not at 96 px. The two are compared
query by query with a paired bootstrap (metrix.evaluation.bootstrap) on MAP@R, the measure that
chose the epoch, with R@1 beside it: a handful of validation images gives "cannot be told apart".

The card (metrix.evaluation.card) records the data, recipe, figures and date.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..datasets.base import Sample
from ..training.checkpoint import build_model, load_checkpoint
from ..training.config import TrainConfig
from ..training.data import load_training_data
from .bootstrap import Difference, paired_difference
from .card import write_card
from .metrics import query_scores
from .run import embed_split, untrained_backbone

#: The floor's input sizes besides the run's own and the backbone's: 160 px, the CPU recipe's. The
#: choice among them is made on each run's own validation classes.
FLOOR_SIZES = (160,)
#: At most this many validation images (whole classes, in order) are embedded per model.
MAX_IMAGES = 3000


def check_against_floor(run_dir: Path | str, log=print, num_workers: int = 2) -> dict:
    """Measure the run's chosen checkpoint against the untrained backbone, write RUN/model_card.json
    and return the card."""
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir, "best")
    config = TrainConfig.from_dict(ckpt.config["train_config"])
    card = {
        "run": str(run_dir),
        "checkpoint": ckpt.path.name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": config.data or config.dataset or "synthetic",
        "recipe": config.recipe,
        "loss": config.loss,
        "mixup": config.mixup,
        "epochs": config.epochs,
        "image_size": config.image_size,
        "backbone": config.backbone,
    }
    samples = _validation_samples(config, log) if config.labels == "folder" else []
    if not samples:
        why = "trained without labels" if config.labels != "folder" else "no validation classes (--val-fraction 0)"
        card["floor_check"] = {"verdict": "not measured", "why": f"{why}: nothing labelled to compare on"}
        write_card(run_dir, card)
        return card
    device = "cuda" if torch.cuda.is_available() else "cpu"
    num_workers = num_workers if len(samples) > 256 else 0  # starting workers costs more than a few images
    trained = build_model(ckpt).to(device)
    frozen = config.frozen_stages(len(trained.backbone.stages()))
    trained_scores = query_scores(*embed_split(trained, samples, device, num_workers, frozen))
    card["image_size"] = trained.preprocessing.image_size
    sizes = sorted({trained.preprocessing.image_size, untrained_backbone(ckpt).preprocessing.image_size, *FLOOR_SIZES})
    floors = {}
    for size in sizes:
        floor = untrained_backbone(ckpt, size).to(device)
        floors[size] = query_scores(*embed_split(floor, samples, device, num_workers))
    best_size = max(sizes, key=lambda size: floors[size]["map_at_r"].mean())
    floor_scores = floors[best_size]
    r1: Difference = paired_difference(100 * trained_scores["r1"], 100 * floor_scores["r1"])
    map_at_r: Difference = paired_difference(100 * trained_scores["map_at_r"], 100 * floor_scores["map_at_r"])
    card["floor_check"] = {
        "verdict": map_at_r.verdict,
        "validation_queries": r1.n,
        "validation_classes": len({s.label for s in samples}),
        "trained": {"recall_at_1": _mean(trained_scores["r1"]), "map_at_r": _mean(trained_scores["map_at_r"])},
        "floor": {
            "backbone": config.backbone,
            "image_size": best_size,
            "recall_at_1": _mean(floor_scores["r1"]),
            "map_at_r": _mean(floor_scores["map_at_r"]),
            "map_at_r_by_size": {str(size): _mean(floors[size]["map_at_r"]) for size in sizes},
        },
        "difference": {"recall_at_1": r1.to_dict(), "map_at_r": map_at_r.to_dict()},
    }
    write_card(run_dir, card)
    return card


def _validation_samples(config: TrainConfig, log) -> list[Sample]:
    samples = load_training_data(config, log=lambda *a, **k: None).val.samples
    if len(samples) <= MAX_IMAGES:
        return samples
    kept, labels = [], sorted({s.label for s in samples})
    for label in labels:
        members = [s for s in samples if s.label == label]
        if kept and len(kept) + len(members) > MAX_IMAGES:
            break
        kept.extend(members)
    log(f"comparing with the floor on {len(kept)} of {len(samples)} validation images (whole classes)")
    return kept


def _mean(values: np.ndarray) -> float:
    return 100 * float(values.mean())

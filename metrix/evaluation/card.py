"""A run's model card (RUN/model_card.json): what it trained on, how, and how it measured against
no training (metrix.evaluation.floor_check writes it). Plain JSON, read without torch: `metrix
export` copies its comparison into the model's metadata and `metrix build-index` chooses its
default model by it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .bootstrap import Difference

CARD_FILE = "model_card.json"


def read_card(run_dir: Path | str) -> dict | None:
    path = Path(run_dir) / CARD_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def describe(card: dict) -> list[str]:
    """What `metrix train` prints about the comparison: the figures, the verdict, what to try."""
    check = card["floor_check"]
    if check["verdict"] == "not measured":
        return [f"not compared with the untrained backbone: {check['why']}"]
    trained, floor, diff = check["trained"], check["floor"], check["difference"]
    on = f"{check['validation_queries']} validation images of {check['validation_classes']} held-out training classes"
    untrained = f"the untrained {floor['backbone']} at {floor['image_size']} px"
    lines = [
        f"against no training, on {on} (95% intervals over those images):",
        f"  MAP@R {trained['map_at_r']:.2f} vs {floor['map_at_r']:.2f} for {untrained}: "
        f"{Difference(**diff['map_at_r'])}",
        f"  R@1   {trained['recall_at_1']:.2f} vs {floor['recall_at_1']:.2f}: {Difference(**diff['recall_at_1'])}",
    ]
    if check["verdict"] == "better":
        lines.append(f"better than no training at {card['image_size']} px")
    elif check["verdict"] == "tied":
        lines.append(
            f"cannot be told apart from no training on {check['validation_queries']} images (the MAP@R interval "
            "holds 0); more validation images would say which is better"
        )
    else:
        lines.append(
            f"WORSE THAN NO TRAINING: {untrained} retrieves better on these classes, and `metrix build-index` "
            f"will not choose this run by default. Try: {advice(card)}"
        )
    return lines


def gain(card: dict | None) -> float | None:
    """The run's MAP@R gain over the floor on its validation classes; None where not measured."""
    check = (card or {}).get("floor_check", {})
    return check["difference"]["map_at_r"]["mean"] if "difference" in check else None


def advice(card: dict) -> str:
    tries = []
    if card["recipe"] == "full-cpu":
        tries.append("--recipe cpu (it keeps the pretrained early layers: best on photos)")
    elif card["recipe"] == "cpu":
        tries.append("--recipe full-cpu (the whole network trains: best on images far from ImageNet)")
    if card["image_size"] < card["floor_check"]["floor"]["image_size"]:
        tries.append(f"--image-size {card['floor_check']['floor']['image_size']} (the floor's best size here)")
    tries.append("more images per class")
    return "; ".join(tries)


def write_card(run_dir: Path, card: dict) -> None:
    path = run_dir / CARD_FILE
    tmp = path.with_name(f".{CARD_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(card, indent=1) + "\n")
    tmp.replace(path)

"""`metrix demo`: the whole product on one machine, offline: data -> train (Metrix, the CPU recipe
without a GPU) -> export to ONNX -> index a gallery of the classes training never saw -> R@1 of
the trained model next to the untrained backbone -> the web UI."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

#: On the built-in synthetic data the demo trains at the images' own size (96 px) with 3 cached
#: views: the CPU recipe's 160 px and 5 views would triple the time for a demonstration.
SYNTHETIC_SETTINGS = {"image_size": 96, "cached_views": 3}


def run_demo(data: Path | None = None, out: Path | None = None, log=print) -> tuple[Path, Path]:
    """Train, export, index and measure; returns (run directory, index directory)."""
    from ..evaluation.run import evaluate_run
    from ..index.build import build_index
    from ..training.checkpoint import load_checkpoint
    from ..training.config import TrainConfig, resolve_config
    from ..training.data import load_training_data
    from ..training.trainer import train
    from .run_export import export_run

    out = Path(out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
    # The demo shows the method the tool is named for; the CPU recipe's own default is no mixing.
    settings = {"mixup": "feature", **({} if data is not None else SYNTHETIC_SETTINGS)}
    started = time.perf_counter()
    log(f"1/4 training on {'the built-in synthetic dataset' if data is None else data} -> {out}")
    config = resolve_config(None, data=None if data is None else str(data), out=str(out), **settings)
    run = train(config, log=log)

    log("2/4 exporting the best checkpoint (chosen on held-out training classes) to ONNX")
    model = Path(export_run(run, checkpoint="best")["model"])
    log(f"    {model}")

    log("3/4 indexing the gallery of unseen (test) classes")
    split = load_training_data(
        TrainConfig.from_dict(load_checkpoint(run, "best").config["train_config"]), log=lambda *a: None
    )
    gallery = _gallery(split, out / "gallery")
    report = build_index(gallery, model, out / "index", progress=False)
    log(
        f"    {report.count} images of {len(split.test.classes)} classes in {report.index_dir} ({report.index['type']})"
    )

    log("4/4 measuring: each test image searched against all the others")
    trained = evaluate_run(run, "best", log=lambda *a: None)
    floor = evaluate_run(run, "best", floor=True, log=lambda *a: None)
    log(
        f"    R@1 trained {trained['recall_at_1']:.1f} vs untrained backbone {floor['recall_at_1']:.1f}; "
        f"MAP@R {trained['map_at_r']:.1f} vs {floor['map_at_r']:.1f} ({trained['num_queries']} queries, "
        f"{trained['num_classes']} unseen classes)"
    )
    log(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    return run, out / "index"


def _gallery(data, target: Path) -> Path:
    """The test split as an image folder (hard links where the file system allows, else copies),
    so the index and the web UI serve files from one folder of their own."""
    for sample in data.test.samples:
        destination = target / Path(sample.path).relative_to(data.root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if destination.exists():
            continue
        try:
            os.link(sample.path, destination)
        except OSError:
            shutil.copy2(sample.path, destination)
    return target

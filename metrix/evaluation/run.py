"""`metrix evaluate`: a trained run on the test classes of its data (or of other data).

Recall@K with the K of the dataset (METRIX.md section 3), MAP@R, R-precision, NMI, and the
paper's utilization u(test, train): the mean squared distance from each test embedding to its
nearest training embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..backbones import create_backbone
from ..datasets.base import DataError, RetrievalData
from ..model import PooledBackbone
from ..training.checkpoint import build_model, load_checkpoint
from ..training.config import TrainConfig
from ..training.data import load_training_data
from ..training.embedding import embed_samples
from .metrics import RECALL_KS, RetrievalReport, evaluate_retrieval, utilization


@dataclass
class RunEmbeddings:
    """One model's embeddings of a run's evaluation data: what the metrics are computed from."""

    run_dir: Path
    checkpoint: str  # the checkpoint folder, or "untrained backbone (floor)"
    checkpoint_choice: str
    data: RetrievalData
    query: np.ndarray
    query_labels: np.ndarray
    gallery: np.ndarray | None
    gallery_labels: np.ndarray | None
    train: np.ndarray


def evaluate_run(
    run_dir: Path,
    checkpoint: str = "best",
    data: str | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    floor: bool = False,
    batch_size: int = 64,
    num_workers: int = 2,
    log=print,
) -> dict:
    """Metrics of the run's model (by default the checkpoint chosen on the validation classes);
    with floor=True, of the untrained pretrained backbone instead (pooled features, same split,
    same input size): what training has to beat."""
    run = embed_run(run_dir, checkpoint, data, dataset, data_root, floor, batch_size, num_workers, log)
    return summarise(run, retrieval_metrics(run))


def embed_run(
    run_dir: Path,
    checkpoint: str = "best",
    data: str | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    floor: bool = False,
    batch_size: int = 64,
    num_workers: int = 2,
    log=print,
) -> RunEmbeddings:
    """The test split (queries, and the gallery where there is one) and the training split embedded
    by the run's model, or with floor=True by the untrained backbone."""
    ckpt = load_checkpoint(run_dir, checkpoint)
    if not floor:
        log(ckpt.choice)
    model = build_model(ckpt)
    if floor:
        model = untrained_backbone(ckpt, preprocessing=model.preprocessing)
    config = TrainConfig.from_dict(ckpt.config["train_config"])
    if data is not None or dataset is not None:
        config.data, config.dataset, config.data_root = data, dataset, data_root
        config.train_classes = config.split_file = None
        config.labels = "folder"  # other data is evaluated on its test classes, however the run trained
    retrieval_data = load_training_data(config, log=log)
    if not len(retrieval_data.test):
        raise DataError(
            f"{run_dir} trained without labels on {retrieval_data.root}, which has no test classes; "
            "evaluate it on labelled images: --data DIR (one sub-folder per class)"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    frozen = config.frozen_stages(len(model.backbone.stages()))

    def embed(split):
        return embed_split(model, split.samples, device, num_workers, frozen, batch_size)

    query, query_labels = embed(retrieval_data.test)
    gallery, gallery_labels = embed(retrieval_data.gallery) if retrieval_data.gallery is not None else (None, None)
    train, _ = embed(retrieval_data.train)
    return RunEmbeddings(
        run_dir,
        "untrained backbone (floor)" if floor else ckpt.path.name,
        ckpt.choice,
        retrieval_data,
        query,
        query_labels,
        gallery,
        gallery_labels,
        train,
    )


def retrieval_metrics(run: RunEmbeddings, per_query: bool = False, neighbours: int = 0) -> RetrievalReport:
    """R@K (the dataset's K), MAP@R, R-precision and NMI of the test split, each query searched
    against the gallery or against all other test images."""
    ks = RECALL_KS.get(run.data.name, (1, 2, 4, 8))
    reference_size = len(run.gallery_labels) if run.gallery is not None else len(run.query_labels) - 1
    ks = tuple(k for k in ks if k <= reference_size)
    return evaluate_retrieval(
        run.query,
        run.query_labels,
        run.gallery,
        run.gallery_labels,
        ks=ks,
        nmi=True,
        per_query=per_query,
        neighbours=min(neighbours, reference_size),
    )


def summarise(run: RunEmbeddings, report: RetrievalReport) -> dict:
    """`metrix evaluate`'s result (what --json prints) from the run's embeddings and its metrics."""
    return {
        "run": str(run.run_dir),
        "checkpoint": run.checkpoint,
        "checkpoint_choice": run.checkpoint_choice,
        "data": run.data.name,
        "split": "test (query vs gallery)" if run.gallery is not None else "test (each image against all others)",
        "num_queries": len(run.query_labels),
        "num_classes": len(set(run.query_labels.tolist())),
        **{f"recall_at_{k}": v for k, v in report.recall_at.items()},
        "map_at_r": report.map_at_r,
        "r_precision": report.r_precision,
        "nmi": report.nmi,
        "utilization": utilization(run.query if run.gallery is None else run.gallery, run.train),
    }


def format_table(reports: list[dict]) -> list[str]:
    """`metrix evaluate`'s text table: one column per report, titled by its checkpoint in full."""
    titles = [r["checkpoint"] for r in reports]
    widths = [max(len(t), 8) for t in titles]
    keys = [k for k, v in reports[0].items() if isinstance(v, float)]
    key_width = max(len(k) for k in keys)
    lines = [f"  {'':<{key_width}}  " + "  ".join(f"{t:>{w}}" for t, w in zip(titles, widths))]
    for key in keys:
        lines.append(f"  {key:<{key_width}}  " + "  ".join(f"{r[key]:>{w}.2f}" for r, w in zip(reports, widths)))
    return lines


def embed_split(
    model, samples, device: str, num_workers: int = 2, frozen_stages: int = 0, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, labels) of `samples` as evaluation sees them (the model's own resize and crop)."""
    return embed_samples(
        model,
        samples,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        channels_last=device == "cpu",
        frozen_stages=frozen_stages,
    )


def untrained_backbone(ckpt, image_size: int | None = None, preprocessing=None) -> PooledBackbone:
    """The backbone the run started from, with no training (the floor): pretrained, or (a
    --no-pretrained run) its seeded random initialisation; at `image_size` (None: the backbone's
    own) or with the trained model's `preprocessing`."""
    config = TrainConfig.from_dict(ckpt.config["train_config"])
    if preprocessing is not None:
        image_size = preprocessing.image_size
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        backbone = create_backbone(ckpt.config["model"]["backbone"], config.pretrained, image_size, config.weights)
    if preprocessing is not None:
        backbone.preprocessing = preprocessing
    return PooledBackbone(backbone).eval()

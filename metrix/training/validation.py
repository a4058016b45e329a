"""What is measured after each epoch: retrieval on the validation classes (or view agreement
without labels), on training classes, and, for reports only, on the test classes."""

from __future__ import annotations

import numpy as np

from ..evaluation.metrics import RECALL_KS, evaluate_retrieval
from .embedding import embed_samples
from .setup import TrainingRun, channels_last
from .view_agreement import embed_views, view_agreement


def validate(run: TrainingRun, samples: list, split: str) -> dict:
    if run.val_views is not None and split == "val":
        embeddings = embed_views(run.model, run.val_views, run.first_trained_stage, channels_last=channels_last(run))
        return {"view_agreement": view_agreement(embeddings)}
    ks = tuple(k for k in (1, 2, 4, 8) if k < len(samples))  # a few images (a small folder): fewer neighbours
    report = evaluate_retrieval(*_embed(run, samples, split), ks=ks, nmi=False)
    return {"recall_at_1": report.recall_at[1], "map_at_r": report.map_at_r, "r_precision": report.r_precision}


def test_class_metrics(run: TrainingRun) -> dict:
    """The test classes, measured as `metrix evaluate` measures them (each query against the
    gallery or against every other test image), for the best-epoch-on-test protocol's report."""
    query, query_labels = _embed(run, run.data.test.samples, "test")
    gallery, gallery_labels = _embed(run, run.data.gallery.samples, "gallery") if run.data.gallery else (None, None)
    reference_size = len(gallery_labels) if gallery is not None else len(query_labels) - 1
    ks = tuple(k for k in RECALL_KS.get(run.data.name, (1, 2, 4, 8)) if k <= reference_size)
    report = evaluate_retrieval(query, query_labels, gallery, gallery_labels, ks=ks, nmi=False)
    return {
        **{f"recall_at_{k}": v for k, v in report.recall_at.items()},
        "map_at_r": report.map_at_r,
        "r_precision": report.r_precision,
    }


def _embed(run: TrainingRun, samples: list, split: str) -> tuple[np.ndarray, np.ndarray]:
    decoded = run.decoded.get(split) if run.decoded else None
    return embed_samples(
        run.model,
        samples,
        batch_size=64,
        num_workers=0 if decoded else run.config.num_workers,
        device=str(run.device),
        channels_last=channels_last(run),
        frozen_stages=run.first_trained_stage,
        images=decoded,
    )

"""Embedding the new files of a build on a Ray cluster (`build-index --engine ray`): the files to
embed become a Ray Dataset, an actor pool reads, decodes and embeds them (one onnxruntime session
per actor, the CUDA provider when the actor has a GPU), and the vectors stream back to the driver
in input order, which spools them to disk and commits the generation exactly as a local build
does. Listing stays on the driver: the incremental rules need the whole listing there, and only
new or changed files go to the cluster.

Each actor reads its files itself through the gallery's source (a folder every node mounts, or
object storage), so a bad file becomes a line in the report rather than a failed Ray task. Ray is
an optional extra (`pip install "metrix[ray]"`) and imported only here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metrix.export.runtime import load_embedder

from .errors import GalleryIndexError
from .gallery import GalleryFile
from .local_engine import Embedded, decode
from .source import open_source


@dataclass
class RayOptions:
    address: str | None = None  # None: the cluster in RAY_ADDRESS, else a local one on this machine
    workers: int = 2  # actors
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 64


class _EmbedActor:
    """One per Ray worker: the model session and the source, opened once."""

    def __init__(self, model: str, root: str, threads: int, gpu: bool):
        self.embedder = load_embedder(model, threads, gpu=gpu)
        self.source = open_source(root)

    def __call__(self, batch: dict) -> dict:
        files = [GalleryFile(path, 0, 0) for path in batch["path"]]
        decoded = [decode(self.source, file, self.embedder.metadata) for file in files]
        ok = [i for i, item in enumerate(decoded) if item[0] is not None]
        vectors = np.zeros((len(files), self.embedder.metadata.embedding_size), np.float32)
        if ok:
            vectors[ok] = self.embedder.embed(np.stack([decoded[i][0] for i in ok]))
        return {
            "position": batch["position"],
            "vector": vectors,
            "sha256": np.array([item[1] for item in decoded], dtype=object),
            "width": np.array([item[2] for item in decoded], np.int64),
            "height": np.array([item[3] for item in decoded], np.int64),
            "reason": np.array([item[4] for item in decoded], dtype=object),
        }


def embed_with_ray(model: Path, root: str, todo: list[GalleryFile], options: RayOptions) -> Iterator[Embedded]:
    """One Embedded per file of `todo`, in order. A cluster failure that Ray's retries do not
    absorb raises GalleryIndexError in one line (the build then commits nothing)."""
    if not todo:
        return
    try:
        import ray
        import ray.data
    except ImportError:
        raise GalleryIndexError("--engine ray needs Ray Data: install metrix[ray]") from None
    # Ray Data logs every dataset's plan at INFO; its full logs stay in Ray's session folder
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if not ray.is_initialized():
        ray.init(address=options.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # ids follow path order, as in a local build
    context.enable_progress_bars = False
    items = [{"position": i, "path": file.path} for i, file in enumerate(todo)]
    dataset = ray.data.from_items(items).map_batches(
        _EmbedActor,
        batch_size=options.batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={
            "model": str(Path(model).resolve()),
            "root": root,
            "threads": max(1, int(options.cpus_per_worker)),
            "gpu": options.gpus_per_worker > 0,
        },
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_cpus=options.cpus_per_worker,
        num_gpus=options.gpus_per_worker,
    )
    try:
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for position, vector, sha, width, height, reason in zip(
                batch["position"], batch["vector"], batch["sha256"], batch["width"], batch["height"], batch["reason"]
            ):
                file = todo[int(position)]
                yield (
                    Embedded(file, None, "", 0, 0, str(reason))
                    if reason
                    else Embedded(file, np.asarray(vector, np.float32), str(sha), int(width), int(height), "")
                )
    except Exception as error:  # Ray wraps worker failures in its own exception types
        if isinstance(error, GalleryIndexError):
            raise
        first = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise GalleryIndexError(
            f"the Ray build failed ({type(error).__name__}: {first[:300]}); "
            "nothing was committed, the previous generation is intact"
        ) from None

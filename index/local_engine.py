"""Embedding the new files of a build in this process: decode threads read and decode while
onnxruntime runs on full batches. Yields one `Embedded` per file, a failure as a reason."""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from metrix.export.runtime import load_for_model
from metrix.images import ImageDecodeError

from .gallery import GalleryFile


class Embedded(NamedTuple):
    file: GalleryFile
    vector: np.ndarray | None  # None when the file failed
    sha256: str
    width: int
    height: int
    reason: str  # why it failed, "" when it did not


def decode(source, file: GalleryFile, metadata) -> tuple[np.ndarray | None, str, int, int, str]:
    """(model input or None, sha256, width, height, failure reason) of one gallery file."""
    try:
        data = source.read(file.path)
        array, (width, height) = load_for_model(source.name(file.path), metadata, data)
        return array, hashlib.sha256(data).hexdigest(), width, height, ""
    except ImageDecodeError as error:
        return None, "", 0, 0, error.reason
    except OSError as error:
        return None, "", 0, 0, f"cannot read ({error.strerror or error})"


def embed_locally(
    embedder, source, todo: list[GalleryFile], batch_size: int, workers: int | None = None
) -> Iterator[Embedded]:
    """Successes come in `todo` order (failures may come earlier than their place)."""
    batch: list[tuple] = []

    def flush():
        vectors = embedder.embed(np.stack([item[1] for item in batch]))
        done = [
            Embedded(file, vector, sha, width, height, "")
            for (file, _, sha, width, height), vector in zip(batch, vectors)
        ]
        batch.clear()
        return done

    with ThreadPoolExecutor(workers or max(2, len(os.sched_getaffinity(0)))) as pool:
        pending = deque()
        files = iter(todo)
        while True:
            while (
                len(pending) < 4 * batch_size and (file := next(files, None)) is not None
            ):  # bounded decodes in flight
                pending.append((file, pool.submit(decode, source, file, embedder.metadata)))
            if not pending:
                break
            file, future = pending.popleft()
            array, sha, width, height, reason = future.result()
            if array is None:
                yield Embedded(file, None, "", 0, 0, reason)
                continue
            batch.append((file, array, sha, width, height))
            if len(batch) >= batch_size:
                yield from flush()
        if batch:
            yield from flush()

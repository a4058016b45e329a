"""New vectors on their way into the index, spooled to disk in chunks, so that a build holds at
most one chunk of them in memory however many images it embeds; they are added to faiss chunk by
chunk. The spool lives in INDEX_DIR/.spool-PID/ and goes with the build (a killed build's spool is
removed by the next one, as other uncommitted files are)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CHUNK = 16_384  # vectors per file: 84 MB at 1280-d


class VectorSpool:
    def __init__(self, folder: Path, dim: int, chunk: int = CHUNK):
        self.folder, self.dim, self.chunk = Path(folder), dim, chunk
        self.folder.mkdir(parents=True)
        self.files: list[Path] = []
        self.count = 0
        self._ids: list[int] = []
        self._vectors = np.empty((chunk, dim), np.float32)

    def __len__(self) -> int:
        return self.count

    def append(self, id: int, vector: np.ndarray) -> None:
        self._vectors[len(self._ids)] = vector
        self._ids.append(id)
        self.count += 1
        if len(self._ids) == self.chunk:
            self._write()

    def _write(self) -> None:
        if not self._ids:
            return
        path = self.folder / f"chunk-{len(self.files):06d}.npz"
        np.savez(path, ids=np.array(self._ids, np.int64), vectors=self._vectors[: len(self._ids)])
        self.files.append(path)
        self._ids = []

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids int64 [n], vectors float32 [n, dim]) chunk by chunk, in the order appended."""
        self._write()
        for path in self.files:
            with np.load(path) as chunk:
                yield chunk["ids"], chunk["vectors"]

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

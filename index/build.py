"""`metrix build-index GALLERY`: embed a folder of images with an exported model into a faiss
index with SQLite metadata, incrementally: only new or changed files are embedded, deleted ones
are removed, an unchanged gallery writes nothing. Bad files are reported, never fatal."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from metrix.export.runtime import file_sha256, load_embedder, load_for_model
from metrix.images import ImageDecodeError

from .gallery import GalleryFile, find_images
from .store import (REPORT_FILE, FORMAT, GalleryIndexError, copy_rows, current_generation, open_index,
                    remove_uncommitted, write_generation, write_text_atomically)
from .vectors import choose_kind, flat_index, kind_of, rebuilt, tune_nprobe

DEFAULT_BATCH = 64


@dataclass
class BuildReport:
    index_dir: Path
    generation: str | None = None
    count: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded_per_s: float = 0.0
    seconds: float = 0.0
    index: dict = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if k != "failed"}, "index_dir": str(self.index_dir),
                "failed": [{"path": p, "reason": r} for p, r in self.failed]}


class _Lock:
    """An exclusive lock on INDEX_DIR/.lock for the length of a build."""

    def __init__(self, index_dir: Path):
        self.file = open(index_dir / ".lock", "w")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            raise GalleryIndexError(f"{index_dir}: another build holds its lock; wait for it to finish") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def build_index(gallery: Path | str, model: Path | str, index_dir: Path | str, index_type: str | None = None,
                rebuild: bool = False, batch_size: int = DEFAULT_BATCH, workers: int | None = None,
                progress: bool = True, threads: int | None = None) -> BuildReport:
    started = time.perf_counter()
    gallery, index_dir = Path(gallery).resolve(), Path(index_dir)
    if not gallery.is_dir():
        raise GalleryIndexError(f"{gallery}: not a folder")
    embedder = load_embedder(model, threads)
    index_dir.mkdir(parents=True, exist_ok=True)
    report = BuildReport(index_dir)
    with _Lock(index_dir):
        remove_uncommitted(index_dir)
        old = None if rebuild or current_generation(index_dir) is None else open_index(index_dir)
        if old is not None:
            _check_same_build(old, gallery, embedder.metadata)
        requested = index_type or (old.manifest["index"]["requested"] if old else "auto")
        files, skipped = find_images(gallery)
        report.failed += skipped
        known = _known_rows(old)
        todo, touched, keep = _diff(gallery, files, known, report)
        removed_ids = [row[0] for path, row in known.items() if path not in keep]
        report.removed = len(removed_ids) - report.changed

        ids, vectors, rows = _embed(embedder, gallery, todo, _next_id(old, known), batch_size, workers, progress, report)
        report.added = sum(1 for r in rows if r[1] not in known)
        index = old.index if old is not None else None
        count = (len(old) if old else 0) - len(removed_ids) + len(ids)
        kind = choose_kind(requested, count)
        nothing_to_do = old is not None and not ids and not removed_ids and not touched and kind == kind_of(index)
        if nothing_to_do:
            report.generation, report.count, report.index = old.generation, len(old), old.manifest["index"]
        else:
            index = _updated_index(index, removed_ids, ids, vectors, kind, embedder.metadata.embedding_size)
            params = {"type": "IDMap2,Flat" if kind == "flat" else f"IVF{index.nlist},Flat", "kind": kind,
                      "requested": requested, "metric": "inner_product"}
            if kind == "ivf":
                params["nprobe"], params["recall_at_10"] = tune_nprobe(index)
            rows_file = index_dir / f".rows-{os.getpid()}.sqlite"
            database = copy_rows(index_dir, old.generation if old else None, rows_file)
            with database:
                database.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in removed_ids])
                database.executemany("UPDATE images SET size = ?, mtime_ns = ? WHERE id = ?",
                                     [(f.size, f.mtime_ns, known[f.path][0]) for f in touched])
                database.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            database.close()
            report.count, report.index = index.ntotal, params
            next_id = ids[-1] + 1 if ids else _next_id(old, known)
            report.generation = write_generation(index_dir, index, rows_file,
                                                 _manifest(old, gallery, embedder, params, index.ntotal, next_id))
        if old is not None:
            old.close()
        report.seconds = time.perf_counter() - started
        write_text_atomically(index_dir / REPORT_FILE, json.dumps(report.to_dict(), indent=1, ensure_ascii=False))
    return report


def _updated_index(index, removed_ids: list[int], ids: list[int], vectors: np.ndarray, kind: str, dim: int):
    """The old index (or a new flat one) with the removals and additions, in the kind asked for."""
    index = index if index is not None else flat_index(dim)
    if removed_ids:
        index.remove_ids(np.array(removed_ids, dtype=np.int64))
    if ids:
        index.add_with_ids(vectors, np.array(ids, dtype=np.int64))
    return index if kind == kind_of(index) else rebuilt(index, kind, dim)


def _check_same_build(old, gallery: Path, metadata) -> None:
    if Path(old.manifest["gallery_root"]) != gallery:
        raise GalleryIndexError(f"{old.dir}: indexes {old.manifest['gallery_root']}, not {gallery}; "
                                "give another --out or --rebuild")
    old.check_model(metadata)


def _known_rows(old) -> dict[str, tuple]:
    if old is None:
        return {}
    return {row[1]: row for row in old.db.execute("SELECT id, path, size, mtime_ns, sha256 FROM images")}


def _next_id(old, known: dict) -> int:
    """Ids are never reused, so an id in an old search result never names another image."""
    if old is None:
        return 0
    return max(old.manifest.get("next_id", 0), max((row[0] for row in known.values()), default=-1) + 1)


def _diff(gallery: Path, files: list[GalleryFile], known: dict, report: BuildReport):
    """(files to embed, files whose size/mtime changed but content did not, paths still present)."""
    todo, touched = [], []
    for file in files:
        row = known.get(file.path)
        if row is None:
            todo.append(file)
        elif (row[2], row[3]) == (file.size, file.mtime_ns):
            report.unchanged += 1
        else:
            try:
                same = file_sha256(gallery / file.path) == row[4]
            except OSError:
                same = False
            if same:
                touched.append(file)
                report.unchanged += 1
            else:
                todo.append(file)
                report.changed += 1
    present = {f.path for f in files}
    # a changed file's old vector goes: keep only the unchanged (and touched) ones
    keep = present - {f.path for f in todo}
    return todo, touched, keep


def _embed(embedder, gallery: Path, todo: list[GalleryFile], first_id: int, batch_size: int, workers: int | None,
           progress: bool, report: BuildReport):
    """Decode in `workers` threads while the model runs on full batches; failures are reported."""
    def load(file: GalleryFile):
        path = gallery / file.path
        try:
            data = path.read_bytes()
            array, (width, height) = load_for_model(path, embedder.metadata, data)
            return file, array, hashlib.sha256(data).hexdigest(), width, height, None
        except ImageDecodeError as error:
            return file, None, None, 0, 0, error.reason
        except OSError as error:
            return file, None, None, 0, 0, f"cannot read ({error.strerror or error})"

    ids, vectors, rows = [], [], []
    batch: list = []
    next_id = first_id
    started = time.perf_counter()

    def flush():
        nonlocal next_id
        if not batch:
            return
        embedded = embedder.embed(np.stack([item[1] for item in batch]))
        for (file, _, sha, width, height, _), vector in zip(batch, embedded):
            ids.append(next_id)
            vectors.append(vector)
            rows.append((next_id, file.path, file.size, file.mtime_ns, sha, file.label, width, height))
            next_id += 1
        batch.clear()

    with _progress(progress, len(todo)) as advance, ThreadPoolExecutor(workers or _decode_workers()) as pool:
        pending = deque()
        files = iter(todo)
        for file in files:  # keep a bounded number of decodes in flight
            pending.append(pool.submit(load, file))
            if len(pending) >= 4 * batch_size:
                _take(pending.popleft().result(), batch, report, flush, batch_size, advance)
        while pending:
            _take(pending.popleft().result(), batch, report, flush, batch_size, advance)
        flush()
    seconds = time.perf_counter() - started
    report.embedded_per_s = len(ids) / seconds if ids and seconds > 0 else 0.0
    matrix = np.stack(vectors).astype(np.float32) if vectors else np.empty((0, embedder.metadata.embedding_size), np.float32)
    return ids, matrix, rows


def _take(result, batch, report, flush, batch_size, advance) -> None:
    file, array, _, _, _, reason = result
    if array is None:
        report.failed.append((file.path, reason))
    else:
        batch.append(result)
        if len(batch) >= batch_size:
            flush()
    advance()


def _decode_workers() -> int:
    return max(2, len(os.sched_getaffinity(0)))


class _progress:
    """A rich progress bar with images/s, or nothing."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total = enabled and total > 0, total

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
        from rich.text import Text

        class Speed(ProgressColumn):
            def render(self, task):
                return Text(f"{task.speed or 0:.1f} images/s")

        self.bar = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), Speed(), TimeRemainingColumn())
        self.bar.start()
        task = self.bar.add_task("embed", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()


def _manifest(old, gallery: Path, embedder, params: dict, count: int, next_id: int) -> dict:
    from dataclasses import asdict

    import faiss

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = embedder.metadata
    return {
        "format": FORMAT, "gallery_root": str(gallery), "count": count, "next_id": next_id,
        "dim": meta.embedding_size, "metric": "inner_product (L2-normalised vectors: cosine)", "index": params,
        "model": {"path": str(Path(embedder.path).resolve()), **asdict(meta)},
        "faiss_version": faiss.__version__,
        "created": old.manifest["created"] if old else now, "updated": now,
    }

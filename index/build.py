"""`metrix build-index GALLERY`: embed a folder of images with an exported model into a faiss
index with SQLite metadata, incrementally: only new or changed files are embedded, deleted ones
are removed, an unchanged gallery writes nothing. Bad files are reported, never fatal."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from metrix.export.runtime import load_embedder
from metrix.files import write_atomically
from metrix.progress import ProgressBar

from .choose import check_target, plan_with_choice, planned_index
from .errors import IndexIntegrityError, write_fault
from .gallery import GalleryFile
from .integrity import build_command
from .local_engine import embed_locally
from .match_probability import match_calibration
from .plan import human, plan_index
from .source import open_source
from .spool import VectorSpool
from .store import (
    DEFAULT_KEEP,
    FORMAT,
    REPORT_FILE,
    GalleryIndexError,
    copy_rows,
    current_generation,
    open_index,
    open_newest_verified,
    remove_uncommitted,
    write_generation,
)
from .upgrade_check import describe as describe_upgrade
from .upgrade_check import upgrade_check
from .vectors import TARGET_RECALL

if TYPE_CHECKING:
    from .ray_engine import RayOptions

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
    choice: str = ""  # why this build chose its index kind, when it measured candidates
    recovered: str = ""  # which generation was damaged and which one this update started from
    upgrade: dict | None = None  # a new model against the serving one (index/upgrade_check.py)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, most_failures: int = 20) -> list[str]:
        """What `metrix build-index` prints: the index, what changed, and the files skipped."""
        index = self.index
        kind = index.get("type", "?")
        for name, label in (("nprobe", "nprobe"), ("ef_search", "efSearch")):
            if name in index:
                kind += f", {label} {index[name]}, recall@10 {index['recall_at_10']:.3f} vs exact"
        if "rerank" in index:
            kind += f" after an exact re-rank of {index['rerank']}"
        if "estimated_bytes" in index:
            kind += f"; about {human(index['estimated_bytes'])} of RAM"
        lines = [f"{self.index_dir}: {self.count} images ({kind}), generation {self.generation}"]
        if self.recovered:
            lines.append(f"  {self.recovered}")
        if self.choice:
            lines.append(f"  {self.choice}")
        if self.upgrade:
            lines += ["  " + line for line in describe_upgrade(self.upgrade)]
        target = index.get("target_recall", TARGET_RECALL)
        if index.get("recall_at_10", 1.0) < target:
            lines.append(
                f"  warning: recall@10 {index['recall_at_10']:.3f} is below the {target} target even at the "
                "slowest setting tried; give a larger --max-index-memory, a lower --target-recall or --index-type flat"
            )
        lines.append(
            f"  added {self.added}, changed {self.changed}, removed {self.removed}, unchanged {self.unchanged}; "
            f"{self.embedded_per_s:.1f} images/s embedding, {self.seconds:.1f} s in all"
        )
        if self.failed:
            lines.append(f"  skipped {len(self.failed)} file(s) (list in {self.index_dir / REPORT_FILE}):")
            lines += [f"    {path}: {reason}" for path, reason in self.failed[:most_failures]]
            if len(self.failed) > most_failures:
                lines.append(f"    ... and {len(self.failed) - most_failures} more")
        return lines

    def to_dict(self) -> dict:
        return {
            **{k: v for k, v in self.__dict__.items() if k != "failed"},
            "index_dir": str(self.index_dir),
            "failed": [{"path": p, "reason": r} for p, r in self.failed],
        }


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


def build_index(
    gallery: Path | str,
    model: Path | str,
    index_dir: Path | str,
    index_type: str | None = None,
    rebuild: bool = False,
    batch_size: int = DEFAULT_BATCH,
    workers: int | None = None,
    progress: bool = True,
    threads: int | None = None,
    ray: "RayOptions | None" = None,
    max_memory: int | None = None,
    keep: int = DEFAULT_KEEP,
    target_recall: float | None = None,
    retune: bool = False,
    accept_worse: bool = False,
) -> BuildReport:
    """Index GALLERY (a folder or an object-store URL) into INDEX_DIR. With `ray`, the new files
    are embedded on a Ray cluster (index/ray_engine.py), else in this process; either way the
    vectors are spooled to disk and the same generation is committed. `index_type` and
    `max_memory` (bytes of RAM the loaded index may take) choose the index (index/plan.py); both
    are remembered for the next update, as is `target_recall`, the recall@10 against exact search
    that approximate indexes are tuned to and chosen by (index/choose.py). `keep`: generations left on disk after the commit.
    `retune`: commit even if no file changed, tuned again (index/served_recall.py). A rebuild with
    another model than the serving one is compared with it first (index/upgrade_check.py) and not
    committed when it measures worse, unless `accept_worse`. A write
    that fails for want of room or rights (disk full, file-size limit, read-only folder) ends in
    one line saying so and where the index stands; nothing half-written stays behind."""
    started = time.perf_counter()
    if target_recall is not None:
        check_target(target_recall)
    source, index_dir = open_source(gallery), Path(index_dir)
    source.check()
    embedder = load_embedder(model, threads)
    report = BuildReport(index_dir)
    before = current_generation(index_dir) if index_dir.is_dir() else None
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        with _Lock(index_dir):
            _update(
                source,
                model,
                embedder,
                index_dir,
                index_type,
                rebuild,
                batch_size,
                workers,
                progress,
                ray,
                max_memory,
                target_recall,
                keep,
                report,
                retune=retune,
                accept_worse=accept_worse,
            )
            report.seconds = time.perf_counter() - started
            write_atomically(index_dir / REPORT_FILE, json.dumps(report.to_dict(), indent=1, ensure_ascii=False))
    except (OSError, RuntimeError, sqlite3.Error) as error:
        fault = write_fault(error, index_dir)
        if fault is None:
            raise
        now = current_generation(index_dir) if index_dir.is_dir() else None
        state = (
            f"the index was updated to {now}, but its build report was not written"
            if now != before
            else f"the index is unchanged at {before}"
            if before
            else "no index was written"
        )
        raise GalleryIndexError(f"{fault}: {state}") from None
    return report


def _update(
    source,
    model,
    embedder,
    index_dir: Path,
    index_type,
    rebuild: bool,
    batch_size: int,
    workers,  # fmt: skip
    progress: bool,
    ray,
    max_memory,
    target,
    keep: int,
    report: BuildReport,
    retune: bool = False,
    accept_worse: bool = False,
) -> None:
    """The build under its lock: the diff against the current generation (or the newest that
    verifies, where it does not), the embedding of what is new, and the commit of a new generation
    (none when nothing changed)."""
    remove_uncommitted(index_dir)
    old, damaged = None, []
    if not rebuild and current_generation(index_dir) is not None:
        old, damaged = _base(index_dir, source.root, model, report)
    if old is not None:
        _check_same_build(old, source.root, embedder.metadata)
    requested, max_memory, target = _remembered(old, index_type, max_memory, target)
    files, skipped = source.list()
    report.failed += skipped
    known = _known_rows(old)
    todo, touched, present = _diff(source, files, known, report)
    removed_ids = [row[0] for path, row in known.items() if path not in present]
    report.removed = len(removed_ids) - report.changed

    # fail before embedding for hours when the index cannot fit (failures only make it smaller)
    plan_index(
        (len(old) if old else 0) - len(removed_ids) + len(todo), embedder.metadata.embedding_size, requested, max_memory
    )
    spool = VectorSpool(index_dir / f".spool-{os.getpid()}", embedder.metadata.embedding_size)
    rows_file, staging = index_dir / f".rows-{os.getpid()}.sqlite", index_dir / f".tmp-vectors-{os.getpid()}"
    database = None
    try:
        database = copy_rows(index_dir, old.generation if old else None, rows_file)
        _remove_and_touch(database, removed_ids, touched, known)
        if ray is None:
            embedded = embed_locally(embedder, source, todo, batch_size, workers)
        else:
            from .ray_engine import embed_with_ray

            embedded = embed_with_ray(model, source.root, todo, ray)
        first_id = _next_id(old, known)
        next_id = _collect(embedded, first_id, spool, database, known, len(todo), progress, report)
        count, dim = (len(old) if old else 0) - len(removed_ids) + len(spool), embedder.metadata.embedding_size
        planned = plan_with_choice(count, dim, requested, max_memory, target, old.manifest["index"] if old else None)
        plan, old_kind = planned.plan, old.manifest["index"]["kind"] if old else None
        unchanged = next_id == first_id and not removed_ids and not touched
        nothing_to_do = old is not None and unchanged and plan.kind == old_kind and not retune and not damaged
        if nothing_to_do:
            report.generation, report.count, report.index = old.generation, len(old), old.manifest["index"]
        else:
            args = (planned, staging, requested, max_memory, target)
            index, full, params = planned_index(old, removed_ids, spool, count, *args)
            report.choice = params["choice"]["reason"] if planned.candidates else ""
            database.close()
            report.count, report.index = index.ntotal - params.get("masked", 0), params
            report.generation = write_generation(
                index_dir,
                index,
                rows_file,
                _manifest(old, source.root, embedder, params, report.count, next_id),
                staging if full is not None else None,
                keep,
                damaged,
                [
                    *([upgrade_check(index_dir, embedder, accept_worse, report)] if rebuild else []),
                    match_calibration(index_dir),
                ],
            )
    finally:
        if database is not None:
            database.close()
        rows_file.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        spool.close()
        if old is not None:
            old.close()


def _base(index_dir: Path, root: str, model, report: BuildReport) -> tuple:
    """(the generation an update starts from, the damaged generations the commit removes): the
    current one, or where it fails verification, the newest before it that verifies, which
    report.recovered names. GalleryIndexError naming the command that re-embeds the gallery when
    none verifies."""
    try:
        return open_index(index_dir), []
    except IndexIntegrityError as damage:
        old, failed = open_newest_verified(index_dir, skip={damage.generation})
        if old is None:
            known = {"gallery_root": root, "model": {"path": str(Path(model).resolve())}}
            again = build_command(index_dir, known, rebuild=True)
            raise GalleryIndexError(
                f"{index_dir / damage.generation} is damaged ({damage.reason}) and no generation before it "
                f"verifies; re-embed the gallery with {again}"
            ) from None
        report.recovered = (
            f"{damage.generation} is damaged ({damage.reason}); updated from {old.generation}, the newest "
            "generation that verifies"
        )
        return old, [damage.generation, *(error.generation for error in failed)]


def _remembered(old, index_type, max_memory, target) -> tuple:
    """(index type, memory budget, recall target): as given, else as the old index was built."""
    params = old.manifest["index"] if old else {}
    if max_memory is None:
        max_memory = params.get("max_memory")
    return (
        index_type or params.get("requested", "auto"),
        max_memory,
        target or params.get("target_recall", TARGET_RECALL),
    )


def _remove_and_touch(database, removed_ids: list[int], touched: list, known: dict) -> None:
    """The rows of removed (and changed) files go, first, so that a changed file's new row can take
    its path; files touched but unchanged get their new size and mtime."""
    with database:
        database.executemany("DELETE FROM images WHERE id = ?", [(i,) for i in removed_ids])
        database.executemany(
            "UPDATE images SET size = ?, mtime_ns = ? WHERE id = ?",
            [(f.size, f.mtime_ns, known[f.path][0]) for f in touched],
        )


def _collect(
    embedded, first_id: int, spool: VectorSpool, database, known: dict, total: int, progress: bool, report: BuildReport
) -> int:
    """Give each embedded file the next id (in the engine's order, which is path order), spool its
    vector and write its row to `database` as it comes; failures go to the report. Returns the
    next free id."""
    rows, next_id, started = [], first_id, time.perf_counter()

    def write():
        with database:
            database.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        rows.clear()

    with ProgressBar(progress, "embedding", total) as advance:
        for item in embedded:
            if item.vector is None:
                report.failed.append((item.file.path, item.reason))
            else:
                spool.append(next_id, item.vector)
                file = item.file
                rows.append(
                    (next_id, file.path, file.size, file.mtime_ns, item.sha256, file.label, item.width, item.height)
                )
                report.added += file.path not in known
                next_id += 1
                if len(rows) == 1000:
                    write()
            advance()
    write()
    seconds = time.perf_counter() - started
    report.embedded_per_s = (next_id - first_id) / seconds if next_id > first_id and seconds > 0 else 0.0
    return next_id


def _check_same_build(old, root: str, metadata) -> None:
    if old.manifest["gallery_root"] != root:
        raise GalleryIndexError(
            f"{old.dir}: indexes {old.manifest['gallery_root']}, not {root}; give another --out or --rebuild"
        )
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


def _diff(source, files: list[GalleryFile], known: dict, report: BuildReport):
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
                same = hashlib.sha256(source.read(file.path)).hexdigest() == row[4]
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


def _manifest(old, root: str, embedder, params: dict, count: int, next_id: int) -> dict:
    from dataclasses import asdict

    import faiss

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    meta = embedder.metadata
    return {
        "format": FORMAT,
        "gallery_root": root,
        "count": count,
        "next_id": next_id,
        "dim": meta.embedding_size,
        "metric": "inner_product (L2-normalised vectors: cosine)",
        "index": params,
        "model": {
            "path": str(Path(embedder.path).resolve()),
            **asdict(meta),
            "provenance": meta.provenance,
            "training_path": meta.training_path,
        },
        "faiss_version": faiss.__version__,
        "created": old.manifest["created"] if old else now,
        "updated": now,
    }

"""The index on disk, and reading it.

    INDEX_DIR/CURRENT              "gen-000007": the generation readers open
    INDEX_DIR/gen-000007/          index.faiss, metadata.sqlite, manifest.json: one complete state
                                   (+ vectors.npy, vector_ids.npy: an IVF-PQ index's full vectors)
    INDEX_DIR/report.json          the last build's bad-file report
    INDEX_DIR/.lock                held by a build, so two builds never interleave

A build writes a whole new generation into a temporary folder, fsyncs it, renames it to
gen-NNNNNN and only then replaces CURRENT (an atomic rename). A kill -9 at any moment leaves
CURRENT naming a complete generation, and a reader that resolved CURRENT sees that generation's
three files, never a mix of two builds. The manifest records the size and CRC32 of every other
file and its own (index/integrity.py); a generation is verified whenever it is opened, and one
that fails is never searched. A generation's files are read-only (0444) from its commit on: no
one writes into a committed generation. The newest `keep` generations stay (by default the
current one and the one before it, so a reader that opened that one just before a switch can
finish); older ones are removed after each commit.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from metrix.files import fsync_path, write_atomically

from .errors import GalleryIndexError, IndexIntegrityError
from .guard import FileGuard, file_stats
from .integrity import build_command, check_scores, file_entries, manifest_text, read_manifest, verified, verify_files

log = logging.getLogger("metrix.index")
INDEX_FILE, METADATA_FILE, MANIFEST_FILE, CURRENT, REPORT_FILE = (
    "index.faiss",
    "metadata.sqlite",
    "manifest.json",
    "CURRENT",
    "report.json",
)
FORMAT = "metrix-index/1"
SCHEMA = """CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,      -- the faiss id
    path TEXT NOT NULL UNIQUE,   -- relative to the gallery root, "/" separators
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    label TEXT NOT NULL,         -- the top-level sub-folder, "" for files in the root
    width INTEGER NOT NULL,
    height INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS images_by_label ON images (label)"""
COLUMNS = ("id", "path", "size", "mtime_ns", "sha256", "label", "width", "height")
#: Generations kept on disk after a commit (build-index --keep): the new one and the one before it.
DEFAULT_KEEP = 2
#: A committed generation's files: read-only for everyone (the folder stays writable, for its removal).
READ_ONLY = 0o444
__all__ = ["GalleryIndexError", "IndexIntegrityError"]  # re-exported: most callers import them from here


@dataclass
class Hit:
    id: int
    score: float
    path: str
    label: str
    width: int
    height: int
    size: int  # bytes, as indexed
    mtime_ns: int
    match_probability: float | None = None  # calibrated on a labelled gallery (index/match_probability.py)


#: What to do about hits left out because their file is gone or changed since indexing.
REBUILD_HINT = "re-run `metrix build-index` to bring the index up to date"


@dataclass
class Answer:
    """One query's hits whose files are still as indexed, and what was left out (path, reason)."""

    hits: list[Hit]
    left_out: list[tuple[str, str]]
    vector: np.ndarray | None = None  # the query's embedding, as searched


#: Candidates beyond k that search_present fetches in its first round (left-out files make room).
FIRST_ROUND_EXTRA = 8


class GalleryIndex:
    """One generation of an index, opened for searching."""

    def __init__(
        self,
        index_dir: Path,
        generation: str,
        manifest: dict,
        index,
        database: sqlite3.Connection,
        full=None,
        files: FileGuard | None = None,
    ):
        self.dir, self.generation, self.manifest, self.index, self.db = index_dir, generation, manifest, index, database
        self.full = full  # vectors.FullVectors of an IVF-PQ index (its exact re-rank), else None
        self.files = files  # its files as verified at open (index/guard.py)
        self._source = None

    @property
    def gallery_root(self) -> str:
        """The folder or object-store URL the gallery was indexed from."""
        return self.manifest["gallery_root"]

    @property
    def source(self):
        """The gallery's files (index/source.py), opened on first use."""
        if self._source is None:
            from .source import open_source

            self._source = open_source(self.gallery_root)
        return self._source

    def __len__(self) -> int:
        """Images searched: an HNSW graph also holds the masked vectors of removed ones (index/hnsw.py)."""
        return self.index.ntotal - self.manifest["index"].get("masked", 0)

    def set_search(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Search wider (or narrower) than the build tuned: IVF's nprobe, HNSW's efSearch, where the
        index has them; the manifest's index entry says so (`search_set`)."""
        import faiss

        params = self.manifest["index"]
        changed = {}
        if nprobe and "nprobe" in params:
            faiss.extract_index_ivf(self.index).nprobe = changed["nprobe"] = nprobe
        if ef_search and "ef_search" in params:
            changed["ef_search"] = ef_search
        if changed:
            self.manifest = {**self.manifest, "index": {**params, **changed, "search_set": changed}}

    def check_model(self, metadata) -> None:
        """Refuse a model other than the one the gallery was embedded with (wrong results, silently)."""
        want = self.manifest["model"]
        got = {
            "weights_sha256": metadata.weights_sha256,
            "quantization": metadata.quantization,
            "embedding_size": metadata.embedding_size,
        }
        for key, value in got.items():
            if want.get(key) != value:
                raise GalleryIndexError(
                    f"{self.dir}: built with a model whose {key} is {want.get(key)!r}, this "
                    f"model's is {value!r}; use the index's model, or re-embed the gallery with "
                    + build_command(self.dir, {**self.manifest, "model": {"path": "NEW_MODEL"}}, rebuild=True)
                )

    def search(self, vectors: np.ndarray, k: int = 10, only: np.ndarray | None = None) -> list[list[Hit]]:
        """The k nearest hits of each query; `only`: ids to search among, exactly (index/filters.py)."""
        k = min(k, len(self) if only is None else len(only))
        if k == 0:
            return [[] for _ in vectors]
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if only is not None:
            from .filters import search_subset

            scores, ids = search_subset(self.index, self.full, vectors, k, only)
        elif self.full is not None:
            from .vectors import search_reranked

            scores, ids = search_reranked(self.index, self.full, vectors, k, max(k, self.manifest["index"]["rerank"]))
        elif "ef_search" in self.manifest["index"]:
            from .hnsw import search

            scores, ids = search(self.index, vectors, k, self.manifest["index"]["ef_search"])
        else:
            scores, ids = self.index.search(vectors, k)
        check_scores(scores, ids, self.dir / self.generation / INDEX_FILE, self.manifest)
        rows = self.rows(int(i) for i in np.unique(ids) if i >= 0)
        chances = np.full(scores.shape, None, dtype=object)
        if calibration := self.manifest.get("match_calibration"):
            from .match_probability import probabilities

            chances = probabilities(calibration, scores)
        return [
            [Hit(int(i), float(s), *rows[int(i)], _optional(p)) for s, i, p in zip(sc, row, ps) if i >= 0]
            for sc, row, ps in zip(scores, ids, chances)
        ]

    def search_present(self, vector: np.ndarray, k: int = 10, search_filter=None) -> Answer:
        """The k nearest hits whose files are still in the gallery unchanged since indexing (size and
        mtime): a moved, deleted or rewritten file is left out and reported, and more candidates are
        fetched so that k hits still come back where the index has them. `search_filter`
        (index/filters.SearchFilter): only the images it lets through, searched exactly."""
        only = None
        if search_filter:
            from .filters import matching_ids

            only = matching_ids(self.db, search_filter)
        total = len(self) if only is None else len(only)
        left_out: dict[str, str] = {}
        fetch = k + FIRST_ROUND_EXTRA
        while True:
            present = self.present(self.search(vector[None], fetch, only)[0], left_out)
            if len(present) >= k or fetch >= total:
                return Answer(present[:k], list(left_out.items()), vector)
            fetch = min(total, 4 * fetch)

    def present(self, hits: list[Hit], left_out: dict[str, str]) -> list[Hit]:
        """The hits whose files are unchanged since indexing; the others go into `left_out` (path: reason)."""
        present = []
        for hit in hits:
            reason = left_out.get(hit.path) or self.stale(hit)
            if reason:
                left_out[hit.path] = reason
            else:
                present.append(hit)
        return present

    def vectors(self, ids) -> np.ndarray:
        """The stored vectors of `ids` (float32 [n, d], in their order); KeyError for an id not in the index."""
        ids = np.asarray(list(ids), dtype=np.int64)
        if self.full is not None:
            return self.full.lookup(ids)
        out = np.empty((len(ids), self.index.d), np.float32)
        for row, i in enumerate(ids):
            try:
                out[row] = self.index.reconstruct(int(i))
            except RuntimeError:  # faiss: "key not found"
                raise KeyError(f"id {int(i)} is not in the index ({self.generation})") from None
        return out

    def labels(self) -> list[tuple[str, int]]:
        """(label, number of images) of every label in the index, by label."""
        return self.db.execute("SELECT label, COUNT(*) FROM images GROUP BY label ORDER BY label").fetchall()

    def stale(self, hit: Hit) -> str | None:
        """Why the hit's file no longer is the image that was indexed, or None."""
        try:
            stat = self.source.stat(hit.path)
        except FileNotFoundError:
            return "missing"
        except OSError as error:
            return f"unreadable ({error.strerror or error})"
        return None if stat == (hit.size, hit.mtime_ns) else "changed"

    def rows(self, ids) -> dict[int, tuple]:
        ids = list(ids)
        found = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = f"SELECT id, path, label, width, height, size, mtime_ns FROM images WHERE id IN ({','.join('?' * len(chunk))})"
            found.update({row[0]: row[1:] for row in self.db.execute(query, chunk)})
        return found

    def close(self) -> None:
        self.db.close()


def current_generation(index_dir: Path) -> str | None:
    pointer = Path(index_dir) / CURRENT
    return pointer.read_text().strip() if pointer.is_file() else None


def open_index(index_dir: Path | str, metadata=None, mmap: bool = False) -> GalleryIndex:
    """The current generation, opened by open_generation."""
    index_dir = Path(index_dir)
    for attempt in range(3):  # a build may remove the generation between reading CURRENT and opening it
        generation = current_generation(index_dir)
        if generation is None:
            raise GalleryIndexError(
                f"{index_dir}: no index here (no {CURRENT} file); build one with `metrix build-index`"
            )
        try:
            return open_generation(index_dir, generation, metadata, mmap)
        except FileNotFoundError:
            if attempt == 2:
                raise GalleryIndexError(
                    f"{index_dir / generation}: generation vanished while opening it; is a build deleting it?"
                ) from None


def open_generation(index_dir: Path, generation: str, metadata=None, mmap: bool = False) -> GalleryIndex:
    """A generation, its files verified against their checksums; with a model's metadata, also
    checks it is the index's model. `mmap`: the faiss index memory-mapped read-only (faiss's
    IO_FLAG_MMAP_IFC: the flat codes of IDMap2,Flat and HNSW, the inverted lists of IVF and
    IVF-PQ), so that processes serving one generation share its pages; it must never be written to
    (faiss would fault), which serving never does. FileNotFoundError when the folder is gone."""
    import faiss

    folder = Path(index_dir) / generation
    stats = file_stats(folder)  # before verifying: a change from here on is seen by the guard
    try:
        manifest = read_manifest(folder / MANIFEST_FILE)
        verify_files(folder, manifest)
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(folder / INDEX_FILE), flags)
        database = sqlite3.connect(f"file:{folder / METADATA_FILE}?mode=ro", uri=True, check_same_thread=False)
    except GalleryIndexError:
        raise
    except (ValueError, RuntimeError, sqlite3.Error) as error:
        raise GalleryIndexError(f"{folder}: unreadable index ({str(error).splitlines()[0]})") from None
    if not verified(manifest):
        log.warning("%s: built before checksums, so it cannot be verified; the next build-index adds them", folder)
    if manifest.get("format") != FORMAT:
        raise GalleryIndexError(
            f"{folder}: index format {manifest.get('format')!r} is not {FORMAT!r}; rebuild it with "
            + build_command(Path(index_dir), manifest, rebuild=True)
        )
    if "nprobe" in manifest["index"]:
        faiss.extract_index_ivf(index).nprobe = manifest["index"]["nprobe"]
    if "ef_search" in manifest["index"]:
        faiss.downcast_index(index.index).hnsw.efSearch = manifest["index"]["ef_search"]
    full = None
    if manifest["index"]["kind"] == "ivfpq":
        from .vectors import FullVectors

        try:
            full = FullVectors.open(folder)
        except (OSError, ValueError) as error:
            raise GalleryIndexError(f"{folder}: unreadable full vectors ({str(error).splitlines()[0]})") from None
    files = FileGuard(folder, manifest, MANIFEST_FILE, stats)
    opened = GalleryIndex(Path(index_dir), generation, manifest, index, database, full, files)
    if metadata is not None:
        opened.check_model(metadata)
    return opened


def open_newest_verified(
    index_dir: Path, skip=(), mmap: bool = False
) -> tuple[GalleryIndex | None, list[IndexIntegrityError]]:
    """The newest committed generation (up to CURRENT's) not in `skip` that verifies, opened (None
    when none does), and the integrity errors of the newer ones that did not."""
    current, damaged = _number(current_generation(index_dir)), []
    for generation in reversed(generations(index_dir)):
        if generation in skip or _number(generation) > current:
            continue
        try:
            return open_generation(index_dir, generation, mmap=mmap), damaged
        except IndexIntegrityError as error:
            damaged.append(error)
        except (FileNotFoundError, GalleryIndexError) as error:  # removed meanwhile, or unreadable
            log.warning("%s: cannot open it: %s", index_dir / generation, error)
    return None, damaged


def open_with_model(index_dir: Path | str, model: Path | str | None = None, mmap: bool = False):
    """(the index, an Embedder for its model): the model recorded in the manifest, or `model`,
    which must be the same model (weights, quantization, size). `mmap`: as open_index's."""
    from metrix.export.runtime import load_embedder

    opened = open_index(index_dir, mmap=mmap)
    embedder = load_embedder(model or opened.manifest["model"]["path"])
    opened.check_model(embedder.metadata)
    return opened, embedder


def write_generation(
    index_dir: Path,
    index,
    rows_database: Path,
    manifest: dict,
    vectors_folder: Path | None = None,
    keep: int = DEFAULT_KEEP,
    damaged=(),
    finish: Sequence[Callable[[str], dict]] = (),
) -> str:
    """Write a complete new generation, its files read-only, and make it current; returns its name.
    `rows_database` is a finished SQLite file, moved into the generation, as are the files of
    `vectors_folder` (an IVF-PQ index's full vectors). Each of `finish` is given the staged
    generation's folder name before the commit (index/upgrade_check.py, index/match_probability.py):
    what it returns joins the manifest, what it raises stops the commit. Any failure removes the staging folder and leaves CURRENT as
    it was; after the commit, the `damaged` generations are removed and only the newest `keep` of
    the others stay."""
    import faiss

    previous = current_generation(index_dir)
    name = f"gen-{_number(previous) + 1:06d}"
    tmp = index_dir / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    try:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        os.replace(rows_database, tmp / METADATA_FILE)
        files = [INDEX_FILE, METADATA_FILE]
        if vectors_folder is not None:
            for file in sorted(vectors_folder.iterdir()):
                os.replace(file, tmp / file.name)
                files.append(file.name)
            vectors_folder.rmdir()
        for file in files:
            os.chmod(tmp / file, READ_ONLY)
            fsync_path(tmp / file)
        entries = file_entries(tmp, files)
        manifest = {**manifest, "generation": name, "files": entries}
        _write_manifest(tmp, manifest)
        added = {}
        for step in finish:
            added.update(step(tmp.name))
        if added:
            _write_manifest(tmp, {**manifest, **added})
        fsync_path(tmp)
        os.replace(tmp, index_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_atomically(index_dir / CURRENT, name)
    remove_old_generations(index_dir, keep, damaged)
    return name


def _optional(value) -> float | None:
    return None if value is None else float(value)


def _write_manifest(folder: Path, manifest: dict) -> None:
    staged = folder / f".{MANIFEST_FILE}.tmp"
    staged.write_text(manifest_text(manifest))
    os.chmod(staged, READ_ONLY)
    fsync_path(staged)
    os.replace(staged, folder / MANIFEST_FILE)


def _number(generation: str | None) -> int:
    return int(generation.split("-")[1]) if generation else 0


def remove_uncommitted(index_dir: Path) -> None:
    """What a killed build left behind: temporary files and folders, and a generation written
    but never made current. Call with the build lock held."""
    current = _number(current_generation(index_dir))
    for entry in index_dir.iterdir():
        if entry.name.startswith((".tmp-", ".rows-", ".spool-")) or (
            entry.name.startswith("gen-") and _number(entry.name) > current
        ):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def generations(index_dir: Path) -> list[str]:
    """The committed generations on disk, oldest first."""
    return sorted(e.name for e in Path(index_dir).iterdir() if e.is_dir() and e.name.startswith("gen-"))


def remove_old_generations(index_dir: Path, keep: int, damaged=()) -> None:
    """The `damaged` generations, and all but the newest `keep` of the others up to the current one
    (at least the current one). The folders are writable, so their read-only files go too."""
    current = _number(current_generation(index_dir))
    committed = [g for g in generations(index_dir) if _number(g) <= current and g not in damaged]
    for generation in [*damaged, *committed[: -max(1, keep)]]:
        shutil.rmtree(index_dir / generation, ignore_errors=True)


def copy_rows(index_dir: Path, generation: str | None, destination: Path) -> sqlite3.Connection:
    """A writable copy of a generation's metadata (or a new, empty table) at `destination`."""
    destination.unlink(missing_ok=True)
    database = sqlite3.connect(destination)
    if generation is not None:
        with sqlite3.connect(f"file:{index_dir / generation / METADATA_FILE}?mode=ro", uri=True) as source:
            source.backup(database)
    database.executescript(SCHEMA)
    database.commit()
    return database

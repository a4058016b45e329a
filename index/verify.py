"""`metrix index verify INDEX`: every generation on disk checked as a reader would find it: the
manifest against its own checksum, each file against the size and CRC32 the build recorded, the
faiss index readable, and SQLite's own `PRAGMA integrity_check` on the metadata."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GalleryIndexError
from .integrity import build_command, read_manifest, verified, verify_files
from .store import CURRENT, INDEX_FILE, MANIFEST_FILE, METADATA_FILE, current_generation, generations


@dataclass
class Verification:
    index_dir: Path
    current: str | None
    checked: dict[str, int] = field(default_factory=dict)  # generation: files verified
    problems: list[str] = field(default_factory=list)  # one line each, naming the file


def verify_index(index_dir: Path | str) -> Verification:
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise GalleryIndexError(f"{index_dir}: no such folder")
    result = Verification(index_dir, current_generation(index_dir))
    on_disk = generations(index_dir)
    if result.current is None:
        result.problems.append(f"{index_dir / CURRENT}: missing: no generation is current")
    elif result.current not in on_disk:
        result.problems.append(f"{index_dir / CURRENT}: names {result.current}, which is not on disk")
    for generation in on_disk:
        folder = index_dir / generation
        try:
            manifest = read_manifest(folder / MANIFEST_FILE)
            if not verified(manifest):
                result.problems.append(
                    f"{folder / MANIFEST_FILE}: built before checksums, cannot be verified; "
                    f"rebuild it with {build_command(index_dir, manifest, rebuild=True)}"
                )
            verify_files(folder, manifest)
        except FileNotFoundError as error:
            result.problems.append(f"{error.filename}: missing")
            continue
        except GalleryIndexError as error:
            result.problems.append(str(error))
            continue
        problem = _readable(folder)
        if problem:
            result.problems.append(problem)
        else:
            result.checked[generation] = len(manifest.get("files", {})) + 1
    return result


def _readable(folder: Path) -> str | None:
    """What the checksums cannot say: that faiss reads the index and SQLite finds its file sound."""
    import faiss

    try:
        faiss.read_index(str(folder / INDEX_FILE))
    except RuntimeError as error:
        return f"{folder / INDEX_FILE}: faiss cannot read it ({str(error).splitlines()[0][:160]})"
    try:
        with sqlite3.connect(f"file:{folder / METADATA_FILE}?mode=ro", uri=True) as database:
            answer = [row[0] for row in database.execute("PRAGMA integrity_check")]
    except sqlite3.Error as error:
        return f"{folder / METADATA_FILE}: SQLite cannot read it ({error})"
    if answer != ["ok"]:
        return f"{folder / METADATA_FILE}: SQLite integrity check: {'; '.join(answer)[:200]}"
    return None

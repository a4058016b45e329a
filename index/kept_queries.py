"""The query images a server was asked, with their marks, kept in the index folder so that a new
model can be tried on the searches people actually make before it serves them (issue 40).

INDEX_DIR/kept-queries/ holds, per distinct query (its bytes and region), the image as uploaded
(KEY.bin) and a record (KEY.json: its name, region, the right and wrong marks of its latest
marked round as gallery paths, which outlive the ids of one generation, and when). Rounds of one
query send the same image, so its marks follow the newest round that carries marks; asking it
again without marks makes it newest and keeps them. Only the newest `limit` queries stay (`metrix serve --keep-queries N`, default DEFAULT_KEEP; 0 keeps none);
deleting the folder, or the index, deletes them. One file per query, written atomically, so the
processes of `serve --workers` share the folder without a lock. A folder the server cannot write
keeps nothing and says so once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("metrix.index")

KEPT_DIR = "kept-queries"
DEFAULT_KEEP = 300


@dataclass(frozen=True)
class KeptQuery:
    name: str
    data: bytes
    box: tuple[float, float, float, float] | None
    right: tuple[str, ...]  # gallery paths marked right
    wrong: tuple[str, ...]
    time: float
    path: Path  # the image file, KEY.bin


class KeptQueries:
    def __init__(self, index_dir: Path | str, limit: int = DEFAULT_KEEP):
        self.dir, self.limit = Path(index_dir) / KEPT_DIR, limit
        self._failed, self._made = False, False

    def keep(self, data: bytes | None, name: str, box=None, right=(), wrong=()) -> None:
        """Keep one query (an upload's bytes) with its region and marks (gallery paths); never raises."""
        if self.limit <= 0 or not data or self._failed:
            return
        key = hashlib.sha256(data + repr(tuple(box) if box else None).encode()).hexdigest()[:32]
        record = {"name": name, "box": list(box) if box else None, "right": list(right), "wrong": list(wrong)}
        try:
            if not self._made:  # once, not at every query
                self.dir.mkdir(exist_ok=True)
                self._made = True
            new = not (self.dir / f"{key}.bin").exists()
            if new:
                _write(self.dir / f"{key}.bin", data)
            if new or right or wrong:
                _write(self.dir / f"{key}.json", json.dumps({**record, "time": time.time()}).encode())
            else:  # asked again without marks: newest again, its earlier marks kept
                os.utime(self.dir / f"{key}.json")
            if new:  # a new query: drop the oldest beyond the limit (a listing of at most ~limit files)
                prune(self.dir, self.limit)
        except FileNotFoundError:  # the folder was deleted under the server: made again at the next query
            self._made = False
        except OSError as error:
            self._failed = True
            log.warning("not keeping queries in %s: %s", self.dir, error.strerror or error)


def prune(folder: Path, limit: int) -> None:
    """Leave the newest `limit` queries in `folder`."""
    records = sorted(folder.glob("*.json"), key=_mtime)
    for record in records[: max(0, len(records) - limit)]:
        record.unlink(missing_ok=True)
        record.with_suffix(".bin").unlink(missing_ok=True)


def read_kept(index_dir: Path | str, limit: int | None = None) -> list[KeptQuery]:
    """The kept queries, oldest first (the newest `limit` of them where given)."""
    folder = Path(index_dir) / KEPT_DIR
    kept = []
    for path in sorted(folder.glob("*.json"), key=_mtime) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text())
            data = path.with_suffix(".bin").read_bytes()
        except (OSError, ValueError):  # pruned or half-written by another process meanwhile
            continue
        box = tuple(record["box"]) if record.get("box") else None
        right, wrong = (tuple(p for p in record[key] if isinstance(p, str)) for key in ("right", "wrong"))
        kept.append(KeptQuery(record["name"], data, box, right, wrong, record["time"], path.with_suffix(".bin")))
    return kept[-limit:] if limit else kept


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _write(path: Path, content: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)

"""Checksums of a generation's files: written at commit, verified whenever a generation is opened
(`metrix search`, `metrix serve` at start and at every switch), again in the background while it
is served (index/guard.py) and by `metrix index verify`.

The manifest lists every other file of its generation with its size and CRC32, and carries the
CRC32 of its own canonical JSON; it must also be byte for byte the text that was written, so a
changed byte anywhere in a generation is found before anything is answered from it. CRC32 (zlib)
is what Lucene writes in every segment footer: it detects every burst of up to 32 changed bits,
other damage with probability 1 - 2^-32, and runs at several GB/s, faster than the files can be
read (docs/index.md has the measured cost).
"""

from __future__ import annotations

import json
import shlex
import zlib
from pathlib import Path

import numpy as np

from .errors import IndexIntegrityError

CHUNK = 16 * 2**20
#: The largest |cosine| a search may return: unit vectors give [-1, 1]; the slack covers float32
#: rounding of a dot product of normalised vectors (and IVF-PQ's exact re-rank).
MAX_ABS_SCORE = 1.0001


def crc32_of(path: Path) -> str:
    crc = 0
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def file_entries(folder: Path, names: list[str]) -> dict[str, dict]:
    """{name: {"bytes": size, "crc32": hex}} of the named files of `folder`."""
    return {name: {"bytes": (folder / name).stat().st_size, "crc32": crc32_of(folder / name)} for name in names}


def _canonical(manifest: dict) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_text(manifest: dict) -> str:
    """The manifest as written: its own checksum added (over everything else)."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return json.dumps({**body, "checksum": f"{zlib.crc32(_canonical(body)):08x}"}, indent=1, ensure_ascii=False)


def build_command(index_dir: Path, manifest: dict | None = None, rebuild: bool = False) -> str:
    """The `metrix build-index` command that updates (or with `rebuild`, re-embeds) the index in
    `index_dir`, with its gallery and model where the manifest gives them."""
    manifest = manifest or {}
    gallery, model = manifest.get("gallery_root", "GALLERY"), manifest.get("model", {}).get("path", "MODEL")
    words = ["metrix", "build-index", gallery, "--model", model, "--out", str(index_dir)]
    return "`" + shlex.join(words + ["--rebuild"] * rebuild) + "`"


def repair(folder: Path, manifest: dict | None = None) -> str:
    """What to run about a damaged generation in `folder`."""
    return (
        f"{build_command(folder.parent, manifest)} updates the index from the newest generation that verifies "
        f"(`metrix index verify {shlex.quote(str(folder.parent))}` lists them)"
    )


def read_manifest(path: Path) -> dict:
    """The manifest at `path`, checked against its own checksum when it has one (an index built
    before checksums has none: see `verified`)."""
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise IndexIntegrityError(path, "not valid JSON: the file is damaged", repair(path.parent)) from None
    if not isinstance(manifest, dict):
        raise IndexIntegrityError(path, "not a manifest: the file is damaged", repair(path.parent))
    if "checksum" in manifest and manifest_text(manifest).encode() != raw:
        raise IndexIntegrityError(path, "does not match its checksum: the file is damaged", repair(path.parent))
    return manifest


def verified(manifest: dict) -> bool:
    return "checksum" in manifest


def verify_files(folder: Path, manifest: dict) -> None:
    """Every file the manifest lists has its recorded size and CRC32; raises naming the first that
    does not."""
    for name, entry in manifest.get("files", {}).items():
        path = folder / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise IndexIntegrityError(path, "missing from its generation", repair(folder, manifest)) from None
        if size != entry["bytes"]:
            problem = f"{size:,} bytes, but {entry['bytes']:,} were written: the file is truncated or damaged"
            raise IndexIntegrityError(path, problem, repair(folder, manifest))
        if crc32_of(path) != entry["crc32"]:
            raise IndexIntegrityError(
                path, "does not match its checksum: the file is damaged", repair(folder, manifest)
            )


def check_scores(scores: np.ndarray, ids: np.ndarray, index_file: Path, manifest: dict | None = None) -> None:
    """A cosine outside [-1, 1] (beyond rounding) comes from damaged data, never from a search.
    Places without a result (id -1) are not scores."""
    real = scores[ids >= 0]
    bad = real[~np.isfinite(real) | (np.abs(real) > MAX_ABS_SCORE)]
    if bad.size:
        problem = f"a search scored {bad[0]:.6g}, outside the cosine range [-1, 1]: the index is damaged"
        folder = index_file.parent
        again = build_command(folder.parent, manifest, rebuild=True)
        raise IndexIntegrityError(
            index_file, problem, f"{repair(folder, manifest)}; where every generation verifies, re-embed with {again}"
        )

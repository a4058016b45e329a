"""Galleries of 100k to 1M images whose query neighbourhoods are real, for bench/load.py and
bench/autofaiss_compare.py (a helper module, not a benchmark).

Real part: the images of --images (default ../shared/datasets/cub100), split once (seeded) into
held-out query images and gallery images, the gallery ones copied into WORK/base-gallery and
embedded by the model with the public `metrix build-index` (exact index).

Filler part: the rest of the N vectors are drawn around the real embeddings: a random real
embedding plus Gaussian noise in the span of the real embeddings' principal components (at most
256), each component's noise `spread` (default 0.5) times that component's standard deviation
over the real embeddings, then L2-normalised. So the fillers follow the shape of real embeddings
(a kernel density sample of them), and a held-out query's nearest neighbours are real images and
fillers near them. bench/api_latency.py's grow_to is not reused for this: its filler vectors are
uniform random unit vectors, far from every query (so they never enter an exact top k), and they
leave an IVF index nothing to cluster, so build-index's nprobe tuning would probe every list.

As a gallery (bench/load.py), each filler vector is a real file: a hard link to the real image
whose embedding it was drawn around, under FOLDER/filler/, with its row in the index's SQLite,
so that the server's check that each hit's file is still there stats real files. The index is
then re-planned by the public `metrix build-index` with the chosen --index-type/--max-index-memory
(nothing is embedded: every file is already indexed and unchanged).

Without ../shared the real part falls back to bench/api_latency.py's 20 synthetic pictures,
with a message saying so: the numbers then say nothing about real neighbourhoods.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DEFAULT_IMAGES = REPO.parent / "shared" / "datasets" / "cub100"
SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
#: ext4 refuses more hard links to one inode than this (65,000); stay below it
MAX_LINKS = 60_000
COMPONENTS = 256
CHUNK = 65_536


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def default_model() -> Path:
    """The untrained pretrained backbone build-index falls back to (exported on first use)."""
    from metrix.cli.models import floor_model

    return floor_model()[0]


def split_images(images: Path | None, work: Path, queries: int, real: int | None, seed: int = 0) -> dict:
    """Copy the gallery's real images to WORK/base-gallery and the held-out queries to
    WORK/queries (once; a second call with the same WORK reuses them). Returns
    {"gallery": folder, "queries": [paths], "source": what, "synthetic": bool}."""
    marker = work / "split.json"
    asked = {"asked": [str(images or DEFAULT_IMAGES), queries, real, seed]}
    if marker.is_file():
        split = json.loads(marker.read_text())
        if split.get("asked") != asked["asked"]:
            raise SystemExit(
                f"{work} was made with (images, queries, real, seed) = {split.get('asked')}, not {asked['asked']}: "
                "pass the same --images/--queries/--real or another --work"
            )
        split["gallery"] = Path(split["gallery"])
        split["queries"] = [Path(p) for p in split["queries"]]
        return split
    gallery, query_dir = work / "base-gallery", work / "queries"
    images = images or DEFAULT_IMAGES
    synthetic = not images.is_dir()
    if synthetic:
        log(
            f"{images} is absent: falling back to bench/api_latency.py's 20 SYNTHETIC pictures (noise blocks); "
            "the numbers then say nothing about real neighbourhoods. Pass --images FOLDER of real images."
        )
        sys.path.insert(0, str(BENCH))
        from api_latency import make_pictures

        files = make_pictures(work / "synthetic" / "pictures")
        root = work / "synthetic"
    else:
        root = images
        files = sorted(p for p in images.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    order = np.random.default_rng(seed).permutation(len(files))
    held = min(queries, max(1, len(files) // 5))
    chosen_queries = [files[i] for i in order[:held]]
    rest = [files[i] for i in order[held:]]
    chosen_gallery = rest[:real] if real else rest
    for folder, chosen in ((gallery, chosen_gallery), (query_dir, chosen_queries)):
        for path in chosen:
            target = folder / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    split = {
        "gallery": str(gallery),
        "queries": [str(query_dir / p.relative_to(root)) for p in chosen_queries],
        "source": str(images if not synthetic else "bench/api_latency.py make_pictures (synthetic)"),
        "synthetic": synthetic,
        "real_images": len(chosen_gallery),
        **asked,
    }
    marker.write_text(json.dumps(split, indent=1))
    return split_images(images, work, queries, real, seed)


def metrix_cli(*args: str, quiet: bool = False) -> None:
    """Run `metrix ARGS` (this interpreter's); its output goes to stderr; fails loudly."""
    command = [sys.executable, "-m", "metrix", *args]
    log("$ metrix " + " ".join(args))
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not quiet or done.returncode:
        sys.stderr.write(done.stdout)
    if done.returncode:
        raise SystemExit(f"metrix {' '.join(args)} failed with exit code {done.returncode}")


def build_real(gallery: Path, index_dir: Path, model: Path) -> None:
    """The exact index of the real images, with the public CLI (skipped when already built)."""
    if (index_dir / "CURRENT").is_file():
        return
    metrix_cli("build-index", str(gallery), "--model", str(model), "--out", str(index_dir), "--index-type", "flat",
               "--no-progress")  # fmt: skip


def real_vectors(index_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of the exact index at INDEX_DIR, in id order."""
    from metrix.index.store import open_index
    from metrix.index.vectors import stored

    opened = open_index(index_dir)
    try:
        ids, vectors = stored(opened.index)
    finally:
        opened.close()
    order = np.argsort(ids)
    return ids[order], np.ascontiguousarray(vectors[order])


def filler_vectors(
    real: np.ndarray, count: int, seed: int = 1, spread: float = 0.5, chunk: int = CHUNK
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`count` vectors around the `real` ones (see the module docstring), in chunks of
    (row of the real vector each was drawn around int64 [m], vectors float32 [m, d])."""
    rng = np.random.default_rng(seed)
    real = np.asarray(real, dtype=np.float32)
    centred = real - real.mean(axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    keep = min(COMPONENTS, len(singular))
    std = singular[:keep] / np.sqrt(max(1, len(real) - 1))
    basis = (components[:keep] * std[:, None]).astype(np.float32)  # [keep, d]
    for start in range(0, count, chunk):
        m = min(chunk, count - start)
        source = rng.integers(0, len(real), m)
        vectors = real[source] + spread * (rng.standard_normal((m, keep), dtype=np.float32) @ basis)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        yield source, vectors


def vectors_file(real: np.ndarray, size: int, path: Path, spread: float = 0.5) -> np.ndarray:
    """The `size` gallery vectors (real ones first, then fillers) as a .npy file; a memory map."""
    from numpy.lib.format import open_memmap

    if path.is_file():
        out = np.load(path, mmap_mode="r")
        if out.shape == (size, real.shape[1]):
            return out
    if size < len(real):
        raise SystemExit(f"--sizes {size}: smaller than the {len(real)} real vectors; pass a smaller --real")
    out = open_memmap(path, mode="w+", dtype=np.float32, shape=(size, real.shape[1]))
    out[: len(real)] = real
    row = len(real)
    for _, block in filler_vectors(real, size - len(real), spread=spread):
        out[row : row + len(block)] = block
        row += len(block)
    out.flush()
    return np.load(path, mmap_mode="r")


def grow(base_index: Path, base_gallery: Path, gallery: Path, index_dir: Path, size: int, spread: float = 0.5) -> None:
    """A gallery of `size` files at GALLERY (copies of the real images, hard links to them for the
    fillers; kept and reused, GALLERY.complete marks it whole) and its exact index at INDEX_DIR
    (one generation: the real vectors plus the fillers'), written with the index's own store
    functions. Skipped when INDEX_DIR already holds `size` images."""
    import faiss

    from metrix.index.store import MANIFEST_FILE, copy_rows, current_generation, write_generation

    if (index_dir / "CURRENT").is_file():
        manifest = json.loads((index_dir / current_generation(index_dir) / MANIFEST_FILE).read_text())
        if manifest["count"] == size:
            return
        raise SystemExit(f"{index_dir} holds {manifest['count']} images, not {size}: remove it or use another --work")
    marker = gallery.with_name(gallery.name + ".complete")
    create = not marker.is_file()
    if create:
        shutil.rmtree(gallery, ignore_errors=True)
    started = time.perf_counter()
    generation = current_generation(base_index)
    manifest = json.loads((base_index / generation / MANIFEST_FILE).read_text())
    if manifest["index"]["kind"] != "flat":
        raise SystemExit(f"{base_index}: expected the exact index of the real images, found {manifest['index']}")
    index = faiss.read_index(str(base_index / generation / "index.faiss"))
    extra = size - index.ntotal
    if extra < 0:
        raise SystemExit(f"--sizes {size}: smaller than the {index.ntotal} real images; pass a smaller --real")
    index_dir.mkdir(parents=True, exist_ok=True)
    rows_file = index_dir / ".rows-bench"
    rows_file.unlink(missing_ok=True)
    database = copy_rows(base_index, generation, rows_file)
    real_rows = database.execute(
        "SELECT id, path, size, mtime_ns, sha256, width, height FROM images ORDER BY id"
    ).fetchall()
    if extra and extra / len(real_rows) > MAX_LINKS:
        raise SystemExit(f"{size} images from {len(real_rows)} real ones: over {MAX_LINKS} hard links per file")
    if create:
        for _, path, *_ in real_rows:
            (gallery / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(base_gallery / path, gallery / path)  # keeps size and mtime_ns, as the row has them
    ids, real = real_vectors(base_index)
    if not np.array_equal(ids, [row[0] for row in real_rows]):
        raise SystemExit(f"{base_index}: its vectors and rows disagree")
    first = manifest["next_id"]
    number = 0
    for source, vectors in filler_vectors(real, extra, spread=spread):
        rows = []
        for s in source.tolist():
            _, path, file_size, mtime_ns, sha256, width, height = real_rows[s]
            relative = f"filler/{number // 1000:04d}/{number:07d}{Path(path).suffix}"
            if create:
                if number % 1000 == 0:
                    (gallery / relative).parent.mkdir(parents=True, exist_ok=True)
                os.link(gallery / path, gallery / relative)
            rows.append((first + number, relative, file_size, mtime_ns, sha256, "filler", width, height))
            number += 1
        database.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        index.add_with_ids(vectors, np.arange(first + number - len(rows), first + number, dtype=np.int64))
    database.commit()
    database.close()
    marker.write_text(str(size))
    manifest = {**manifest, "gallery_root": str(gallery.resolve()), "count": index.ntotal, "next_id": first + extra}
    manifest["index"] = {**manifest["index"], "estimated_bytes": _flat_bytes(index.ntotal, index.d)}
    for key in ("generation", "files"):
        manifest.pop(key, None)
    write_generation(index_dir, index, rows_file, manifest)
    log(
        f"grew {index_dir} to {index.ntotal:,} images ({len(real_rows):,} real) in {time.perf_counter() - started:.0f} s"
    )


def _flat_bytes(count: int, dim: int) -> int | None:
    from metrix.index.plan import plan_index

    try:
        return plan_index(count, dim, "flat").bytes
    except (TypeError, ValueError):  # the chooser's API changed: leave the estimate out
        return None


def prepare_exact(args, size: int, work: Path, name: str = "index") -> tuple[Path, Path, dict]:
    """(WORK/gallery-SIZE, WORK/NAME-SIZE: its exact index, the split)."""
    split = split_images(args.images, work, args.queries, args.real)
    build_real(split["gallery"], work / "base-index", args.model)
    gallery, index_dir = work / f"gallery-{size}", work / f"{name}-{size}"
    grow(work / "base-index", split["gallery"], gallery, index_dir, size, args.spread)
    return gallery, index_dir, split


def build_args(gallery: Path, index_dir: Path, model: Path, index_type: str, budget: str | None, more=()) -> list[str]:
    """`metrix build-index` arguments that re-plan INDEX_DIR (nothing is embedded)."""
    plan = ["--index-type", index_type] + (["--max-index-memory", budget] if budget else [])
    return ["build-index", str(gallery), "--model", str(model), "--out", str(index_dir), *plan, "--no-progress", *more]


def prepare(
    args,
    size: int,
    work: Path,
    more: list[str] | None = None,
    index_type: str = "auto",
    budget: str | None = None,
) -> tuple[Path, dict]:
    """WORK/index-SIZE: the grown gallery's index, re-planned by build-index with `index_type`,
    `budget` and `more` flags. Returns (index folder, the split)."""
    gallery, index_dir, split = prepare_exact(args, size, work)
    metrix_cli(*build_args(gallery, index_dir, args.model, index_type, budget, more or []))
    return index_dir, split


def add_gallery_arguments(parser) -> None:
    parser.add_argument("--images", type=Path, default=None, help=f"real images [default: {DEFAULT_IMAGES}]")
    parser.add_argument("--model", type=Path, default=None, help="an exported model [default: the floor model]")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200, help="held-out query images")
    parser.add_argument("--real", type=int, default=None, help="real gallery images [default: all not held out]")
    parser.add_argument("--spread", type=float, default=0.5, help="filler noise, in real standard deviations")
    parser.add_argument("--work", type=Path, default=None, help="keep galleries here to reuse [default: a temp dir]")


def write_results(result: dict, out: Path, footer: str, table: str) -> None:
    """Write a bench's JSON to `out` and print its footer and markdown table (and a note when the
    pictures were synthetic)."""
    if result.get("synthetic"):
        print("NOTE: synthetic pictures (no ../shared/datasets): not a measurement of real neighbourhoods")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\n{result['machine']['cpu']}, {result['machine']['cores']} cores; {footer}")
    print(table)

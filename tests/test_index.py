"""`metrix build-index` and `metrix search` on real files the tests write: a gallery of good
images in every format and mode plus a zoo of bad files; incremental updates; a real build
process killed with SIGKILL; readers during a build; model mismatches; IVF against exact search."""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metrix.cli.models import choose_model, newest_index
from metrix.export.runtime import load_embedder, load_for_model
from metrix.index import store
from metrix.index.build import build_index
from metrix.index.gallery import find_images
from metrix.index.served_recall import MIN_SAMPLES, SERVED_QUERIES
from metrix.index.store import GalleryIndexError, open_index
from metrix.index.vectors import flat_index, ivf_index, stored, tune_nprobe

from .pictures import assert_apart, blocks
from .training_helpers import metrix_cli


def write_good(root: Path) -> dict[str, tuple[int, int]]:
    """Good images in every format and mode the indexer must read; {relative path: (w, h) as displayed}."""
    good = {}

    def save(relative, image, **kwargs):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, **kwargs)
        good[relative] = kwargs.pop("_size", None) or image.size

    for i in range(6):
        save(f"birds/{i:02d}.jpg", blocks(i))
        save(f"cars/{i:02d}.png", blocks(100 + i, (80, 48)))
    save("birds/cmyk.jpg", blocks(200).convert("CMYK"))
    save("birds/grey.png", blocks(201).convert("L"))
    save("birds/rgba.png", blocks(202).convert("RGBA"))
    save("cars/palette.gif", blocks(203).convert("P"))
    save("cars/pic.webp", blocks(204))
    save("cars/pic.bmp", blocks(205))
    save("cars/pic.tiff", blocks(206))
    deep = np.asarray(blocks(207).convert("L"), dtype=np.uint16) * 257
    save("cars/sixteen bit.png", Image.fromarray(deep))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    save("cars/rotated.jpg", blocks(208, (64, 40)), exif=exif.tobytes())
    good["cars/rotated.jpg"] = (40, 64)
    save("ünïcode name é.png", blocks(209))
    save("with space.jpg", blocks(210))
    return good


def write_bad(root: Path) -> set[str]:
    """Files that must be reported and skipped, never fatal; returns their relative paths."""
    buffer = root / "birds" / "00.jpg"
    (root / "bad").mkdir()
    (root / "bad" / "truncated.jpg").write_bytes(buffer.read_bytes()[: buffer.stat().st_size // 2])
    (root / "bad" / "zero.jpg").write_bytes(b"")
    (root / "bad" / "text.jpg").write_text("this is not an image\n")
    (root / "bad" / "huge.png").write_bytes(_png_header(100_000, 100_000))
    os.symlink("..", root / "bad" / "loop")  # a folder link back up
    os.symlink("self.jpg", root / "bad" / "self.jpg")  # a link to itself
    (root / "empty").mkdir()
    return {"bad/truncated.jpg", "bad/zero.jpg", "bad/text.jpg", "bad/huge.png", "bad/loop", "bad/self.jpg"}


def _png_header(width: int, height: int) -> bytes:
    """A small PNG file that declares width x height: valid chunks, almost no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def rows(index_dir: Path) -> dict[str, tuple]:
    opened = open_index(index_dir)
    try:
        return {r[1]: r for r in opened.db.execute("SELECT * FROM images")}
    finally:
        opened.close()


def index_ids(index) -> set[int]:
    """The ids an index holds, read from faiss's own structures (any kind, IVF-PQ included)."""
    import faiss

    if not isinstance(index, (faiss.IndexIVF, faiss.IndexPreTransform)):  # -1: masked in an HNSW graph
        return {i for i in faiss.vector_to_array(index.id_map).tolist() if i >= 0}
    lists = faiss.extract_index_ivf(index).invlists
    return {int(i) for n in range(lists.nlist) for i in faiss.rev_swig_ptr(lists.get_ids(n), lists.list_size(n))}


def consistent_state(index_dir: Path) -> int:
    """Open the index and check its files agree; return its count."""
    opened = open_index(index_dir)
    try:
        (count,) = opened.db.execute("SELECT COUNT(*) FROM images").fetchone()
        assert count == len(opened) == opened.manifest["count"]
        assert opened.index.ntotal == count + opened.manifest["index"].get("masked", 0)
        ids = {r[0] for r in opened.db.execute("SELECT id FROM images")}
        assert ids == index_ids(opened.index)
        if opened.full is not None:
            assert ids == set(opened.full.ids.tolist())
        return count
    finally:
        opened.close()


def contents(index_dir: Path) -> tuple[dict, dict, set]:
    """({path: row}, {id: vector}, {(path, reason)} of the report) of an index's current generation."""
    opened = open_index(index_dir)
    try:
        rows = {r[1]: r for r in opened.db.execute("SELECT * FROM images")}
        ids, vectors = stored(opened.index)
        report = json.loads((index_dir / "report.json").read_text())
        return rows, dict(zip(ids.tolist(), vectors)), {(f["path"], f["reason"]) for f in report["failed"]}
    finally:
        opened.close()


def assert_same(a: Path, b: Path) -> None:
    rows_a, vectors_a, failed_a = contents(a)
    rows_b, vectors_b, failed_b = contents(b)
    assert rows_a == rows_b and failed_a == failed_b
    assert vectors_a.keys() == vectors_b.keys()
    for id, vector in vectors_a.items():
        np.testing.assert_allclose(vector, vectors_b[id], atol=1e-6)


@pytest.fixture
def gallery(tmp_path, tiny_model):
    """The zoo; its good images are checked to be told apart by the test model (self-retrieval)."""
    root = tmp_path / "gallery"
    good = write_good(root)
    assert_apart(tiny_model, root, good)
    return root, good, write_bad(root)


def test_zoo_every_good_file_once_every_bad_file_reported(gallery, tiny_model, tmp_path):
    root, good, bad = gallery
    result = metrix_cli("build-index", root, "--model", tiny_model, "--out", tmp_path / "idx", "--no-progress")
    assert (
        f"{len(good)} images (IDMap2,Flat; about " in result.stdout and f"skipped {len(bad)} file(s)" in result.stdout
    )
    report = json.loads((tmp_path / "idx" / "report.json").read_text())
    assert {f["path"] for f in report["failed"]} == bad
    reasons = {f["path"]: f["reason"] for f in report["failed"]}
    assert reasons["bad/zero.jpg"] == "empty file" and "not an image" in reasons["bad/text.jpg"]
    assert "bomb" in reasons["bad/huge.png"] or "pixel limit" in reasons["bad/huge.png"]
    assert "truncated" in reasons["bad/truncated.jpg"].lower() and "loop" in reasons["bad/loop"]
    indexed = rows(tmp_path / "idx")
    assert set(indexed) == set(good)
    assert consistent_state(tmp_path / "idx") == len(good)
    for path, (width, height) in good.items():
        row = indexed[path]
        assert (row[6], row[7]) == (width, height), path
        assert row[5] == (path.split("/")[0] if "/" in path else "")
        assert row[4] == __import__("hashlib").sha256((root / path).read_bytes()).hexdigest()
    embedder, opened = load_embedder(tiny_model), open_index(tmp_path / "idx")
    for path in good:
        query, _ = load_for_model(root / path, embedder.metadata)
        top = opened.search(embedder.embed(query[None]), 3)[0]
        assert top[0].path == path and top[0].score > 0.9999, (path, top)


def test_search_command(gallery, tiny_model, tmp_path):
    root, good, _ = gallery
    build_index(root, tiny_model, tmp_path / "idx", progress=False)
    query = root / "cars" / "03.png"
    result = metrix_cli("search", query, "--index", tmp_path / "idx", "-k", "4", "--json")
    hits = json.loads(result.stdout)["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert hits[0]["path"] == "cars/03.png" and hits[0]["label"] == "cars"
    assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
    text = metrix_cli("search", query, "--index", tmp_path / "idx", "-k", "2").stdout.splitlines()
    assert len(text) == 2 and text[0].split()[2] == "cars/03.png"
    failed = metrix_cli("search", root / "bad" / "text.jpg", "--index", tmp_path / "idx", check=False)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "text.jpg: not an image" in failed.stderr


def test_incremental_updates(gallery, tiny_model, tmp_path):
    root, good, _ = gallery
    index_dir = tmp_path / "idx"
    first = build_index(root, tiny_model, index_dir, progress=False)
    before = rows(index_dir)

    again = build_index(root, tiny_model, index_dir, progress=False)
    assert (again.added, again.changed, again.removed, again.unchanged) == (0, 0, 0, len(good))
    assert again.generation == first.generation  # nothing written

    (root / "birds" / "00.jpg").unlink()
    blocks(300).save(root / "birds" / "01.jpg")  # new content, same path
    os.utime(root / "birds" / "02.jpg", ns=(1, 1))  # touched, same content
    blocks(301).save(root / "new.png")
    update = build_index(root, tiny_model, index_dir, progress=False)
    assert (update.added, update.changed, update.removed, update.unchanged) == (1, 1, 1, len(good) - 2)
    assert update.generation != first.generation
    after = rows(index_dir)
    assert set(after) == set(good) - {"birds/00.jpg"} | {"new.png"}
    assert after["birds/01.jpg"][0] not in {r[0] for r in before.values()}  # re-embedded: a fresh id
    assert after["birds/02.jpg"][0] == before["birds/02.jpg"][0] and after["birds/02.jpg"][3] == 1
    unchanged = set(good) - {"birds/00.jpg", "birds/01.jpg", "birds/02.jpg"}
    assert all(after[p][0] == before[p][0] for p in unchanged)
    assert consistent_state(index_dir) == len(good)
    assert_apart(tiny_model, root, after)
    embedder, opened = load_embedder(tiny_model), open_index(index_dir)
    for path in ("birds/01.jpg", "new.png"):
        top = opened.search(embedder.embed(load_for_model(root / path, embedder.metadata)[0][None]), 1)[0][0]
        assert top.path == path

    rebuilt_report = build_index(root, tiny_model, index_dir, rebuild=True, progress=False)
    assert rebuilt_report.added == len(good) and rebuilt_report.unchanged == 0


@pytest.mark.slow
def test_another_model_is_refused(gallery, tiny_run, tiny_model, tmp_path):
    root, _, _ = gallery
    build_index(root, tiny_model, tmp_path / "idx", progress=False)
    other = tmp_path / "other.onnx"
    (other_checkpoint,) = {p.name for p in (tiny_run / "checkpoints").iterdir()} - {tiny_model.parent.name}
    metrix_cli("export", tiny_run, "--checkpoint", other_checkpoint, "-o", other)
    failed = metrix_cli("build-index", root, "--model", other, "--out", tmp_path / "idx", check=False)
    assert failed.returncode == 2 and "weights_sha256" in failed.stderr and "--rebuild" in failed.stderr
    meta = load_embedder(tiny_model).metadata
    for changed in (replace(meta, embedding_size=meta.embedding_size + 1), replace(meta, quantization="int8")):
        with pytest.raises(GalleryIndexError, match="built with a model whose"):
            open_index(tmp_path / "idx", changed)
    open_index(tmp_path / "idx", meta).close()
    searched = metrix_cli(
        "search", root / "cars" / "01.png", "--index", tmp_path / "idx", "--model", other, check=False
    )
    assert searched.returncode == 2 and "built with a model whose weights_sha256" in searched.stderr


def test_a_failed_commit_leaves_the_previous_index(gallery, tiny_model, tmp_path, monkeypatch):
    """A crash at each step of writing a generation: the index stays the previous, complete one."""
    root, good, _ = gallery
    index_dir = tmp_path / "idx"
    build_index(root, tiny_model, index_dir, progress=False)
    blocks(400).save(root / "added.png")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("simulated crash")

    import faiss

    # the generation half written; then complete but not yet current
    for target, attribute in ((faiss, "write_index"), (store, "write_atomically")):
        monkeypatch.setattr(target, attribute, crash)
        with pytest.raises(KeyboardInterrupt):
            build_index(root, tiny_model, index_dir, progress=False)
        monkeypatch.undo()
        assert consistent_state(index_dir) == len(good) and "added.png" not in rows(index_dir)
    final = build_index(root, tiny_model, index_dir, progress=False)
    assert final.added == 1 and consistent_state(index_dir) == len(good) + 1
    assert not [p for p in index_dir.iterdir() if p.name.startswith(".tmp-") or p.name.startswith(".rows-")]


def test_ivfpq_within_a_memory_budget(tiny_model, tmp_path):
    """A budget below the full vectors' size gives IVF-PQ; the exact re-rank from the full vectors
    finds every image itself with its exact score; updates keep the codes; a later flat index is
    rebuilt from the full vectors alone."""
    root, index_dir = tmp_path / "gallery", tmp_path / "idx"
    _many_images(root, 0, 300)
    result = metrix_cli(
        "build-index", root, "--model", tiny_model, "--out", index_dir, "--max-index-memory", "45kB", "--no-progress"
    )
    opened = open_index(index_dir)
    params = opened.manifest["index"]
    assert params["kind"] == "ivfpq" and "PQ" in params["type"] and params["estimated_bytes"] <= 45_000
    assert params["max_memory"] == 45_000 and params["recall_at_10"] >= 0.95 and "exact re-rank" in result.stdout
    with pytest.raises(ValueError, match="keeps codes"):  # codes, not vectors: those are memory-mapped beside it
        stored(opened.index)
    assert len(opened.full) == 300 and (index_dir / opened.generation / "vectors.npy").is_file()
    embedder = load_embedder(tiny_model)
    paths = sorted(rows(index_dir))
    queries = np.stack([load_for_model(root / p, embedder.metadata)[0] for p in paths[:40]])
    vectors = embedder.embed(queries)
    exact = open_index(index_dir).full.vectors @ vectors.T
    for path, hits, column in zip(paths, opened.search(vectors, 5), exact.T):
        assert hits[0].path == path and abs(hits[0].score - float(column.max())) < 1e-5

    (root / "many" / "00007.png").unlink()
    _many_images(root, 300, 2)
    update = build_index(root, tiny_model, index_dir, progress=False)  # the budget is remembered
    assert update.index["kind"] == "ivfpq" and update.index["type"] == params["type"]
    assert (update.added, update.removed) == (2, 1) and consistent_state(index_dir) == 301
    flat = build_index(root, tiny_model, index_dir, index_type="flat", max_memory=10**9, progress=False)
    assert flat.index["kind"] == "flat" and flat.added == 0 and consistent_state(index_dir) == 301
    again = open_index(index_dir)
    assert again.full is None and again.search(vectors[:1], 1)[0][0].path == paths[0]
    too_small = metrix_cli(
        "build-index",
        root,
        "--model",
        tiny_model,
        "--out",
        index_dir,
        "--max-index-memory",
        "2kB",
        "--no-progress",
        check=False,
    )
    assert (
        too_small.returncode == 2
        and too_small.stderr.count("\n") == 1
        and "flat index of 301 x 32 needs" in too_small.stderr
    )
    assert consistent_state(index_dir) == 301  # nothing lost


def _many_images(root: Path, start: int, count: int) -> None:
    (root / "many").mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        blocks(10_000 + i).save(root / "many" / f"{i:05d}.png")


def _build_process(root, model, index_dir) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metrix",
            "build-index",
            str(root),
            "--model",
            str(model),
            "--out",
            str(index_dir),
            "--no-progress",
            "--batch-size",
            "16",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_a_complete_index(tiny_model, tmp_path):
    root, index_dir = tmp_path / "gallery", tmp_path / "idx"
    _many_images(root, 0, 300)
    build_index(root, tiny_model, index_dir, progress=False)
    _many_images(root, 300, 600)
    killed = 0
    for delay in np.arange(0.05, 20, 0.05):  # later and later, until a build finishes before its kill
        process = _build_process(root, tiny_model, index_dir)
        time.sleep(delay)
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        killed += 1
        assert consistent_state(index_dir) in (300, 900)
    assert killed >= 3
    build_index(root, tiny_model, index_dir, progress=False)
    assert consistent_state(index_dir) == 900


def test_readers_during_a_build_see_old_or_new_never_a_mix(tiny_model, tmp_path):
    root, index_dir = tmp_path / "gallery", tmp_path / "idx"
    _many_images(root, 0, 200)
    build_index(root, tiny_model, index_dir, progress=False)
    _many_images(root, 200, 300)
    process = _build_process(root, tiny_model, index_dir)
    seen = set()
    while process.poll() is None:
        seen.add(consistent_state(index_dir))
    assert process.returncode == 0, process.stderr.read()
    seen.add(consistent_state(index_dir))
    assert seen <= {200, 500} and 500 in seen and len(seen) >= 1


def test_a_second_build_waits_for_no_one(gallery, tiny_model, tmp_path):
    import fcntl

    root, _, _ = gallery
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    with open(index_dir / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(GalleryIndexError, match="another build holds its lock"):
            build_index(root, tiny_model, index_dir, progress=False)


def test_walk_follows_links_once_and_skips_hidden(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    blocks(1).save(tmp_path / "a" / "b" / "x.png")
    blocks(2).save(tmp_path / "a" / ".hidden.png")
    (tmp_path / "a" / "notes.txt").write_text("no")
    os.symlink(tmp_path / "a", tmp_path / "link_to_a")
    os.symlink(tmp_path, tmp_path / "a" / "b" / "up")
    files, skipped = find_images(tmp_path)
    assert [f.path for f in files] == ["a/b/x.png"]
    assert {path for path, _ in skipped} == {"a/b/up", "link_to_a"}
    assert all("symlink loop" in reason for _, reason in skipped)


def test_ivf_recall_against_exact_search(tmp_path):
    """IVF's measured recall@10 equals a brute-force numpy count; ids and vectors survive conversions."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.permutation(10_000)[:3000].astype(np.int64)
    flat = flat_index(32)
    flat.add_with_ids(vectors, ids)
    ivf = ivf_index(vectors)
    ivf.add_with_ids(*stored(flat)[::-1])
    got_ids, got_vectors = stored(ivf)
    order = np.argsort(got_ids)
    np.testing.assert_array_equal(got_ids[order], np.sort(ids))
    np.testing.assert_allclose(got_vectors[order], vectors[np.argsort(ids)], atol=0)
    nprobe, recall = tune_nprobe(ivf)
    assert recall >= 0.95 and 1 <= nprobe <= ivf.nlist
    queries = np.random.default_rng(0).permutation(3000)[:1000]  # as tune_nprobe samples them
    ivf.nprobe = nprobe
    _, found = ivf.search(got_vectors[queries], 11)
    truth = np.argsort(-(got_vectors[queries] @ got_vectors.T), axis=1)[:, :11]
    hits = 0
    for q, want, got in zip(queries, truth, found):
        want = [got_ids[i] for i in want if i != q][:10]
        hits += len(set(want) & set(got.tolist()))
    assert abs(hits / 10_000 - recall) < 1e-9
    ivf.remove_ids(ids[:100])
    assert ivf.ntotal == 2900 and set(stored(ivf)[0].tolist()) == set(ids[100:].tolist())
    back = flat_index(32)
    back.add_with_ids(*stored(ivf)[::-1])
    assert back.ntotal == 2900 and set(stored(back)[0].tolist()) == set(ids[100:].tolist())


def test_ivf_index_type_on_a_gallery(tiny_model, tmp_path):
    root = tmp_path / "gallery"
    _many_images(root, 0, 120)
    report = build_index(root, tiny_model, tmp_path / "idx", index_type="ivf", progress=False)
    assert report.index["kind"] == "ivf" and report.index["recall_at_10"] >= 0.95
    manifest = json.loads((tmp_path / "idx" / report.generation / "manifest.json").read_text())
    assert manifest["index"]["nprobe"] == report.index["nprobe"] and manifest["count"] == 120
    assert {"weights_sha256", "embedding_size", "backbone"} <= manifest["model"].keys()
    assert manifest["faiss_version"] and manifest["created"] and manifest["updated"]
    (root / "many" / "00007.png").unlink()
    update = build_index(root, tiny_model, tmp_path / "idx", progress=False)  # keeps the requested type
    assert update.index["kind"] == "ivf" and update.removed == 1 and consistent_state(tmp_path / "idx") == 119


def test_retune_tunes_on_the_queries_a_server_kept_and_only_when_asked(tiny_model, tmp_path):
    root, index_dir = tmp_path / "gallery", tmp_path / "idx"
    _many_images(root, 0, 120)
    first = build_index(root, tiny_model, index_dir, index_type="ivf", progress=False)
    dim = json.loads((index_dir / first.generation / "manifest.json").read_text())["dim"]
    kept = np.random.default_rng(0).standard_normal((MIN_SAMPLES, dim)).astype(np.float32)
    np.save(index_dir / SERVED_QUERIES, kept / np.linalg.norm(kept, axis=1, keepdims=True))
    same = build_index(root, tiny_model, index_dir, progress=False)
    assert same.generation == first.generation  # nothing changed, nothing asked
    retuned = build_index(root, tiny_model, index_dir, progress=False, retune=True)
    assert retuned.generation != first.generation and consistent_state(index_dir) == 120
    params = json.loads((index_dir / retuned.generation / "manifest.json").read_text())["index"]
    assert params["served_queries"] == MIN_SAMPLES and params["nprobe"] >= first.index["nprobe"]
    assert params["served_recall_at_10"] >= params["target_recall"] or params["nprobe"] == int(
        params["type"][3:].split(",")[0]
    )


def test_hnsw_index_type_on_a_gallery(tiny_model, tmp_path):
    """--index-type hnsw and --target-recall through the CLI; a removal is masked, and the update
    searches as a fresh build does; a filter returns its label only; "fastest" measures and says
    what it chose."""
    root, index_dir = tmp_path / "gallery", tmp_path / "idx"
    _many_images(root, 0, 120)
    args = ("--model", tiny_model, "--no-progress")
    result = metrix_cli(
        "build-index", root, "--out", index_dir, "--index-type", "hnsw", "--target-recall", "0.95", *args
    )
    assert "IDMap2,HNSW32, efSearch" in result.stdout
    (root / "many" / "00007.png").unlink()
    update = build_index(root, tiny_model, index_dir, progress=False)  # type and target remembered
    assert update.index["kind"] == "hnsw" and update.index["target_recall"] == 0.95 and update.index["masked"] == 1
    assert update.removed == 1 and consistent_state(index_dir) == 119
    fresh = build_index(root, tiny_model, tmp_path / "fresh", index_type="hnsw", target_recall=0.95, progress=False)
    assert fresh.index["masked"] == 0
    embedder = load_embedder(tiny_model)
    paths = sorted(rows(index_dir))
    vectors = embedder.embed(np.stack([load_for_model(root / p, embedder.metadata)[0] for p in paths[:30]]))
    incremental, rebuilt = open_index(index_dir), open_index(tmp_path / "fresh")
    for a, b in zip(incremental.search(vectors, 5), rebuilt.search(vectors, 5)):
        assert len({h.path for h in a} ^ {h.path for h in b}) <= 2  # approximate: one neighbour either way
        assert "many/00007.png" not in {h.path for h in a}
    bad = metrix_cli("build-index", root, "--out", index_dir, "--target-recall", "1.5", *args, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("--target-recall 1.5: must be in (0, 1]")
    chosen = metrix_cli("build-index", root, "--out", tmp_path / "chosen", "--index-type", "fastest", *args)
    choice = open_index(tmp_path / "chosen").manifest["index"]["choice"]
    assert choice["reason"] in chosen.stdout and choice["queries"] == 11  # a tenth of 119 images
    assert {c["kind"] for c in choice["candidates"]} == {"flat", "ivf", "hnsw"} and choice["target_recall"] == 0.99


def test_defaults_find_a_model_trained_on_the_gallery_and_the_newest_index(tmp_path, monkeypatch):
    """A run trained on other data is never the default for a gallery (issue 28); among runs trained
    on the gallery's folder, or a folder holding it, the best measured one is (issue 40,
    tests/test_floor_check.py): the newest where none could be measured (no labels)."""
    monkeypatch.chdir(tmp_path)
    choice = choose_model("photos")
    assert choice.model is None and "no exported run under runs/ trained on photos" in choice.why
    not_measured = {"checkpoint": "epoch-0001", "floor_check": {"verdict": "not measured", "why": "no labels"}}
    for run, stamp, data in (("old", 1, "photos"), ("new", 3, str(tmp_path / "photos")), ("newest", 5, "demo-shapes")):
        folder = tmp_path / "runs" / run / "checkpoints" / "epoch-0001"
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"x")
        os.utime(folder / "model.onnx", (stamp, stamp))
        (tmp_path / "runs" / run / "config.json").write_text(json.dumps({"data": data}))
        (tmp_path / "runs" / run / "model_card.json").write_text(json.dumps(not_measured))
    expected = Path("runs/new/checkpoints/epoch-0001/model.onnx")
    assert choose_model("photos").model == expected and choose_model(tmp_path / "photos" / "birds").model == expected
    other = choose_model("holiday")
    assert other.model is None and re.search("runs trained on .*demo-shapes.* are used only with --model", other.why)
    assert choose_model("demo-shapes/circles").model == Path("runs/newest/checkpoints/epoch-0001/model.onnx")
    with pytest.raises(GalleryIndexError, match="no index under indexes/"):
        newest_index()
    for name, stamp in (("a", 5), ("b", 2)):
        (tmp_path / "indexes" / name).mkdir(parents=True)
        (tmp_path / "indexes" / name / "CURRENT").write_text("gen-000001")
        os.utime(tmp_path / "indexes" / name / "CURRENT", (stamp, stamp))
    assert newest_index() == Path("indexes/a")


def test_not_a_folder_and_no_index(tmp_path, tiny_model):
    failed = metrix_cli(
        "build-index", tmp_path / "missing", "--model", tiny_model, "--out", tmp_path / "i", check=False
    )
    assert failed.returncode == 2 and "missing: not a folder" in failed.stderr
    with pytest.raises(GalleryIndexError, match="no index here"):
        open_index(tmp_path)

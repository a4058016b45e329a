"""LiveIndex: a reader that follows CURRENT switches to each new whole generation, keeps answering
from the old one when a new one cannot be opened (and says so once), and lets a query that took a
snapshot finish on it after later builds remove its files. A served generation found damaged (by
the periodic verification, or an integrity error in a query) is never answered from again: the
newest generation that verifies is, or nothing (IndexUnavailable)."""

import logging
import os
import shutil
import time

import numpy as np
import pytest

from metrix.index.build import build_index
from metrix.index.errors import IndexUnavailable
from metrix.index.guard import file_stats
from metrix.index.live import LiveIndex
from metrix.index.store import CURRENT, generations, write_atomically

from .service_helpers import make_gallery


@pytest.fixture
def built(tmp_path, tiny_model):
    gallery = tmp_path / "gallery"
    make_gallery(gallery, per_label=3)
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, progress=False)
    return gallery, index_dir


def test_switches_to_each_new_generation_and_old_snapshots_stay_usable(built, tiny_model):
    gallery, index_dir = built
    live = LiveIndex(index_dir)
    first = live.snapshot()
    assert not live.refresh() and len(first.index) == 6
    shutil.copy2(gallery / "ants" / "00.png", gallery / "ants" / "copy.png")
    build_index(gallery, tiny_model, index_dir, progress=False)
    (gallery / "bees" / "02.png").unlink()
    build_index(gallery, tiny_model, index_dir, progress=False)  # removes the first generation's folder
    assert not (index_dir / first.index.generation).exists()
    assert live.refresh() and live.snapshot().index.generation == (index_dir / CURRENT).read_text().strip()
    assert len(live.snapshot().index) == 6 and not live.refresh()
    # the old snapshot still answers whole from its own (deleted) files
    hits = first.index.search(np.asarray(first.index.index.reconstruct(0))[None], 6)[0]
    assert len(hits) == 6 and {h.path for h in hits} == {
        f"{label}/{i:02d}.png" for label in ("ants", "bees") for i in range(3)
    }


def test_a_generation_that_cannot_be_opened_is_refused_once_and_the_old_one_serves(built, caplog):
    _, index_dir = built
    live = LiveIndex(index_dir)
    serving = live.snapshot().index.generation
    broken = index_dir / "gen-000099"
    broken.mkdir()
    (broken / "manifest.json").write_text("{}")
    (broken / "index.faiss").write_bytes(b"not faiss")
    (broken / "metadata.sqlite").write_bytes(b"")
    write_atomically(index_dir / CURRENT, broken.name)
    with caplog.at_level(logging.WARNING, logger="metrix.index"):
        assert not live.refresh() and not live.refresh()
    assert live.snapshot().index.generation == serving
    warnings = [r.getMessage() for r in caplog.records if "cannot switch" in r.getMessage()]
    assert len(warnings) == 1 and serving in warnings[0] and "gen-000099" in warnings[0]


@pytest.mark.slow
def test_a_rebuild_with_another_model_switches_the_model_too_unless_one_is_pinned(
    built, tiny_model, other_model, caplog
):
    gallery, index_dir = built
    following, pinned = LiveIndex(index_dir), LiveIndex(index_dir, model=tiny_model)
    before = following.snapshot().embedder.metadata.weights_sha256
    build_index(gallery, other_model, index_dir, rebuild=True, progress=False, accept_worse=True)
    assert following.refresh()
    after = following.snapshot()
    assert after.embedder.metadata.weights_sha256 != before
    assert after.embedder.metadata.weights_sha256 == after.index.manifest["model"]["weights_sha256"]
    with caplog.at_level(logging.WARNING, logger="metrix.index"):
        assert not pinned.refresh()
    assert pinned.snapshot().embedder.metadata.weights_sha256 == before
    assert any("weights_sha256" in r.getMessage() for r in caplog.records)


# ---- a served generation that turns out damaged ------------------------------------------------


@pytest.fixture
def two_generations(built, tiny_model):
    """gen-000001 (6 images) and the current gen-000002 (7)."""
    gallery, index_dir = built
    shutil.copy2(gallery / "ants" / "00.png", gallery / "ants" / "copy.png")
    build_index(gallery, tiny_model, index_dir, progress=False)
    assert generations(index_dir) == ["gen-000001", "gen-000002"]
    return gallery, index_dir


def _flip_in_place(path) -> None:
    os.chmod(path, 0o644)  # committed files are read-only
    with open(path, "r+b") as file:
        file.seek(file.seek(0, os.SEEK_END) // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0x80]))


def test_damage_no_stat_shows_is_found_by_the_periodic_verification(two_generations, caplog):
    _, index_dir = two_generations
    live = LiveIndex(index_dir, verify_interval=0.3)
    served = live.snapshot().index
    path = index_dir / served.generation / "index.faiss"
    _flip_in_place(path)
    served.files.stats = file_stats(path.parent)  # as bit rot would: no size, time or inode changed
    live.check()
    assert live.snapshot().index.generation == "gen-000002"  # the stat check cannot see it
    time.sleep(0.3)
    with caplog.at_level(logging.WARNING, logger="metrix.index"):
        live.check()  # the verification is due
        live.check()
        assert not live.refresh()  # CURRENT still names the damaged generation: not opened again
    assert live.snapshot().index.generation == "gen-000001" and live.damaged == {
        "gen-000002": "index.faiss: does not match its checksum: the file is damaged"
    }
    logged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(logged) == 1 and "serving gen-000001" in logged[0] and str(path) in logged[0]
    # a new process (a restarted worker) opens the newest generation that verifies, not CURRENT's
    assert LiveIndex(index_dir).snapshot().index.generation == "gen-000001"


def test_an_integrity_error_in_a_query_switches_generation_and_none_left_is_unavailable(two_generations):
    import faiss

    from metrix.app.access import Access
    from metrix.app.page import Page

    gallery, index_dir = two_generations
    live = LiveIndex(index_dir)
    damaged = live.snapshot().index
    query = damaged.vectors([0])
    ids = faiss.vector_to_array(damaged.index.id_map)
    scaled = faiss.IndexIDMap2(faiss.IndexFlatIP(damaged.index.d))
    scaled.add_with_ids(3 * np.stack([damaged.index.reconstruct(int(i)) for i in ids]), ids)
    damaged.index = scaled  # what the score check catches: vectors that are no longer unit length
    searched = []

    def search(snapshot):
        searched.append(snapshot.index.generation)
        return snapshot.index.search(query, 3)[0]

    hits = live.answer(search)
    assert searched == ["gen-000002", "gen-000001"] and hits[0].id == 0 and hits[0].score <= 1.0001
    assert live.damaged["gen-000002"].startswith("index.faiss: a search scored")

    _flip_in_place(index_dir / "gen-000001" / "metadata.sqlite")  # the one left: its stat changed
    with pytest.raises(IndexUnavailable) as raised:
        live.answer(search)
    message = str(raised.value)
    assert message.startswith("no generation of index index verifies (gen-000001: metadata.sqlite: does not match")
    assert "gen-000002: index.faiss" in message and str(index_dir) not in message
    with pytest.raises(IndexUnavailable):
        live.snapshot()
    # the page says so, without the server's folders
    upload = (gallery / "bees" / "01.png").read_bytes()
    _, status, _ = Page(live, Access()).search({"name": "q.png", "data": upload}, "", 3, [], "", {}, None)
    assert status.startswith("The server cannot search now: no generation") and str(index_dir) not in status

"""LiveIndex: a reader that follows CURRENT switches to each new whole generation, keeps answering
from the old one when a new one cannot be opened (and says so once), and lets a query that took a
snapshot finish on it after later builds remove its files."""

import logging
import shutil

import numpy as np
import pytest

from metrix.index.build import build_index
from metrix.index.live import LiveIndex
from metrix.index.store import CURRENT, write_atomically

from .service_helpers import make_gallery
from .training_helpers import metrix_cli


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


@pytest.fixture
def other_model(tiny_run, tiny_model, tmp_path):
    """The tiny run's other checkpoint, exported: a model with other weights."""
    other = next(c for c in (tiny_run / "checkpoints").iterdir() if c.name != tiny_model.parent.name)
    metrix_cli("export", tiny_run, "--checkpoint", other.name, "--output", tmp_path / "other.onnx")
    return tmp_path / "other.onnx"


def test_a_rebuild_with_another_model_switches_the_model_too_unless_one_is_pinned(
    built, tiny_model, other_model, caplog
):
    gallery, index_dir = built
    following, pinned = LiveIndex(index_dir), LiveIndex(index_dir, model=tiny_model)
    before = following.snapshot().embedder.metadata.weights_sha256
    build_index(gallery, other_model, index_dir, rebuild=True, progress=False)
    assert following.refresh()
    after = following.snapshot()
    assert after.embedder.metadata.weights_sha256 != before
    assert after.embedder.metadata.weights_sha256 == after.index.manifest["model"]["weights_sha256"]
    with caplog.at_level(logging.WARNING, logger="metrix.index"):
        assert not pinned.refresh()
    assert pinned.snapshot().embedder.metadata.weights_sha256 == before
    assert any("weights_sha256" in r.getMessage() for r in caplog.records)

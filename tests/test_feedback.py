"""Marks as training data (issue 40): `metrix train --data GALLERY --feedback INDEX` trains on the
classes that marked queries and their right-marked gallery images make, joined where they share
an image; region queries, files gone, exact copies and images only ever marked wrong are left out."""

import shutil

import pytest

from metrix.datasets.base import DataError
from metrix.export.runtime import load_embedder, load_for_model
from metrix.index.build import build_index
from metrix.index.kept_queries import KeptQueries, read_kept
from metrix.index.store import open_index
from metrix.training.feedback import load_feedback

from .pictures import blocks
from .training_helpers import metrix_cli, tiny_dataset, write_config


def _gallery(root, count=16):
    for i in range(count):
        (root / f"g{i % 2}").mkdir(parents=True, exist_ok=True)
        blocks(800 + i).save(root / f"g{i % 2}" / f"{i:02d}.png")
    return root


def _picture(seed: int) -> bytes:
    import io

    buffer = io.BytesIO()
    blocks(seed).save(buffer, format="PNG")
    return buffer.getvalue()


def test_marked_queries_and_their_right_images_make_classes_joined_where_they_share_one(tmp_path, tiny_model):
    gallery = _gallery(tmp_path / "gallery")
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, progress=False)
    kept = KeptQueries(index_dir)
    g = [f"g{i % 2}/{i:02d}.png" for i in range(16)]
    kept.keep(_picture(1), "a.png", right=(g[0], g[2]), wrong=(g[1],))
    kept.keep(_picture(2), "b.png", right=(g[2], g[4]))  # shares g[2] with a: one class
    kept.keep(_picture(3), "c.png", right=(g[5],), wrong=(g[7], g[9]))
    kept.keep(_picture(4), "d.png", right=(g[6], "gone.png"))
    kept.keep(_picture(5), "e.png", right=(g[8],), box=(0, 0, 10, 10))  # a region: left out
    kept.keep(_picture(6), "f.png", wrong=(g[11],))  # only wrong marks: nothing to train on
    kept.keep((gallery / g[10]).read_bytes(), "copy.png", right=(g[10], g[12]))  # a gallery image as query
    kept.keep(_picture(7), "h.png", right=(g[13], g[14]))
    data = load_feedback(index_dir, gallery, val_fraction=0)
    names = {query.path: query.name for query in read_kept(index_dir)}
    classes = {}
    for sample in data.train.samples:
        name = (
            sample.path.relative_to(gallery).as_posix() if sample.path.is_relative_to(gallery) else names[sample.path]
        )
        classes.setdefault(sample.label, []).append(name)
    assert sorted(sorted(members) for members in classes.values()) == [
        ["a.png", "b.png", "g0/00.png", "g0/02.png", "g0/04.png"],
        ["c.png", "g1/05.png"],
        ["d.png", "g0/06.png"],
        ["g0/10.png", "g0/12.png"],  # the query, a copy of g0/10.png, is left out
        ["g0/14.png", "g1/13.png", "h.png"],
    ]
    assert len(data.val) == 0 and len(data.test) == 0 and data.labelled
    queries = [s for s in data.train.samples if not s.path.is_relative_to(gallery)]
    assert all(s.path.parent == index_dir / "kept-queries" and s.path.suffix == ".bin" for s in queries)


def test_too_few_marks_or_another_gallery_are_one_line_errors(tmp_path, tiny_model):
    gallery = _gallery(tmp_path / "gallery")
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, progress=False)
    KeptQueries(index_dir).keep(_picture(1), "a.png", right=("g0/00.png",))
    with pytest.raises(DataError, match=r"1 marked queries give 1 classes .* needs at least 4 \(mark more"):
        load_feedback(index_dir, gallery, 0.2)
    other = shutil.copytree(gallery, tmp_path / "other")
    with pytest.raises(DataError, match=r"indexes .*gallery, not .*other; give --data the gallery the index holds"):
        load_feedback(index_dir, other, 0.2)
    with pytest.raises(DataError, match="no index here"):
        load_feedback(tmp_path / "nothing", gallery, 0.2)
    failed = metrix_cli("train", "--feedback", index_dir, check=False)
    assert failed.returncode == 2 and "--feedback INDEX trains on the marks kept in INDEX: give --data" in failed.stderr


@pytest.mark.slow
def test_metrix_train_learns_from_the_marks_a_simulated_user_gave(tmp_path, tiny_model):
    """Marks on the top 8 of 40 queries (the labels as the oracle) train a run whose classes are
    those the marks make; the run records where its data came from."""
    data = tiny_dataset(tmp_path / "data")
    index_dir = tmp_path / "index"
    build_index(data, tiny_model, index_dir, progress=False)
    index, embedder, kept = open_index(index_dir), load_embedder(tiny_model), KeptQueries(index_dir)
    for query in sorted(data.rglob("*.png"))[::6]:
        hits = index.search(embedder.embed(load_for_model(query, embedder.metadata)[0][None]), 8)[0]
        right = tuple(h.path for h in hits if h.label == query.parent.name)
        kept.keep(
            query.read_bytes(),
            query.name,
            right=right,
            wrong=tuple(h.path for h in hits if h.label != query.parent.name),
        )
    index.close()
    run = tmp_path / "run"
    trained = metrix_cli(
        "train",
        "--data",
        data,
        "--feedback",
        index_dir,
        "--config",
        write_config(tmp_path / "c.json"),
        "--out",
        run,
        "--no-progress",
        "--no-floor-check",
    )
    assert "training on feedback:index:" in trained.stdout and (run / "checkpoints").is_dir()
    expected = load_feedback(index_dir, data, 0.2)
    assert f"{len(expected.train)} train images / {len(expected.train.classes)} classes" in trained.stdout

"""`from metrix import Index` (issue 28): open an index and search it from Python with a path, a PIL
image or an array; filters, a region and feedback as the CLI has them; the embedder alone; no
torch imported."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from metrix import Index, Result
from metrix.index.build import build_index
from metrix.index.store import GalleryIndexError

from .service_helpers import make_gallery


@pytest.fixture(scope="module")
def opened(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("python-api")
    make_gallery(root / "gallery", per_label=4)
    build_index(root / "gallery", tiny_model, root / "index", progress=False)
    with Index.open(root / "index") as index:
        yield index, root / "gallery"


def test_a_path_a_pil_image_and_an_array_find_the_image_itself_first(opened):
    index, gallery = opened
    query = gallery / "bees" / "02.png"
    by_path = index.search(query, k=5)
    assert isinstance(by_path[0], Result) and by_path[0].path == "bees/02.png" and by_path[0].rank == 1
    assert by_path[0].score == pytest.approx(1.0, abs=1e-4) and len(by_path) == 5 and len(index) == 8
    with Image.open(query) as picture:
        by_image = index.search(picture.convert("RGB"), k=5)
        by_array = index.search(np.asarray(picture.convert("RGB")), k=5)
    for other in (by_image, by_array):
        assert [r.id for r in other] == [r.id for r in by_path]
        assert [r.score for r in other] == pytest.approx([r.score for r in by_path], abs=1e-5)


def test_filters_region_and_feedback(opened):
    index, gallery = opened
    query = gallery / "ants" / "01.png"
    assert {r.label for r in index.search(query, k=8, labels=["bees"])} == {"bees"}
    assert all(r.path.startswith("ants/0") for r in index.search(query, k=8, path_prefix="ants/0"))
    assert index.search(query, k=3, box=(0, 0, 36, 28))[0].label in ("ants", "bees")
    first = index.search(query, k=8)
    moved = index.search(query, k=8, right=[first[-1].path], wrong=[first[1].id])
    assert [r.id for r in moved] != [r.id for r in first]
    with pytest.raises(GalleryIndexError, match="right: 'nope.png' is not an image"):
        index.search(query, right=["nope.png"])


def test_embed_gives_the_indexed_vectors(opened):
    index, gallery = opened
    paths = [gallery / "ants" / "00.png", gallery / "bees" / "03.png"]
    vectors = index.embed(paths)
    hits = [index.search(path, k=1)[0] for path in paths]
    stored = index.index.vectors([hit.id for hit in hits])
    assert vectors.shape == stored.shape and np.allclose(vectors, stored, atol=1e-5)


def test_a_folder_that_is_no_index_is_one_line(tmp_path):
    with pytest.raises(GalleryIndexError, match="no index here"):
        Index.open(tmp_path)


def test_the_python_api_imports_no_torch(opened, tmp_path):
    _, gallery = opened
    code = (
        "import sys\nfrom metrix import Index\n"
        f"index = Index.open({str(opened[0].index.dir)!r})\n"
        f"print(index.search({str(gallery / 'ants' / '00.png')!r}, k=1)[0].path)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ants/00.png"

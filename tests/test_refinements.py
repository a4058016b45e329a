"""Search beyond the k nearest, through the index, the CLI and the JSON API: a region of the query,
filters by label and path prefix (exact on every index kind), relevance feedback (Rocchio), and
why a result matched (the exported model's cells output and its heat maps). Each is compared
with an independent computation: pixels cropped by PIL, brute force over embeddings the test
computes itself, the Rocchio formula in numpy, the feature map in PyTorch."""

import json

import httpx
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from metrix.export.explain import explain
from metrix.export.runtime import ModelError, load_embedder, load_for_model
from metrix.images import ImageDecodeError, decode_rgb, parse_box
from metrix.index.build import build_index
from metrix.index.feedback import ALPHA, BETA, GAMMA, rocchio
from metrix.index.filters import SearchFilter
from metrix.index.query import Refinement, search_image
from metrix.index.store import open_index, open_with_model

from .pictures import assert_apart, blocks
from .service_helpers import serve_process
from .training_helpers import metrix_cli

FOLDERS = {"ants": 12, "bees": 12, "cats": 6, "cats/big": 6}
ROOT_FILES = 3
FILTERS = [
    SearchFilter(("ants",)),
    SearchFilter(("ants", "bees")),
    SearchFilter(path_prefix="cats/big/"),
    SearchFilter(path_prefix="bees/0"),
    SearchFilter(("",)),
    SearchFilter(("cats",), "cats/0"),
    SearchFilter(("nosuchlabel",)),
]


def write_gallery(root, extra: int = 0):
    """Labelled folders (a nested one), pictures in the root, and `extra` more under "many/"."""
    paths, seed = [], 7000
    for folder, count in FOLDERS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            seed += 1
            blocks(seed, (72, 56)).save(root / folder / f"{i:02d}.png")
            paths.append(f"{folder}/{i:02d}.png")
    for i in range(ROOT_FILES):
        blocks(8000 + i, (72, 56)).save(root / f"loose{i}.png")
        paths.append(f"loose{i}.png")
    if extra:
        (root / "many").mkdir(exist_ok=True)
        for i in range(extra):
            blocks(9000 + i, (72, 56)).save(root / "many" / f"{i:03d}.png")
            paths.append(f"many/{i:03d}.png")
    return sorted(paths)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("refine") / "gallery"
    paths = write_gallery(root)
    assert_apart(tiny_model, root, paths)
    index_dir = root.parent / "index"
    build_index(root, tiny_model, index_dir, progress=False)
    return root, index_dir, paths


def embed_paths(model, root, paths, box=None):
    embedder = load_embedder(model)
    return embedder.embed(np.stack([load_for_model(root / p, embedder.metadata, box=box)[0] for p in paths]))


def brute_force(vectors: dict, query: np.ndarray, k: int, keep=lambda path: True):
    """(paths, scores) of the k best of `vectors` {path: vector} that `keep` lets through."""
    kept = [p for p in sorted(vectors) if keep(p)]
    if not kept:
        return [], np.empty(0)
    scores = np.stack([vectors[p] for p in kept]) @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [kept[i] for i in order], scores[order]


def assert_same_ranking(hits, paths, scores, tolerance=1e-5):
    """Same scores in order, and the same paths wherever a score is not within `tolerance` of a
    neighbour's (so the check never rests on how a CPU orders near-ties)."""
    got = np.array([h.score for h in hits])
    assert len(hits) == len(paths) and np.allclose(got, scores, atol=tolerance), ([h.path for h in hits], paths)
    for i, (hit, path) in enumerate(zip(hits, paths)):
        near = [j for j in (i - 1, i + 1) if 0 <= j < len(scores) and abs(scores[j] - scores[i]) < tolerance]
        if not near:
            assert hit.path == path, (i, [h.path for h in hits], paths)


def passes(search_filter: SearchFilter, path: str) -> bool:
    label = path.split("/", 1)[0] if "/" in path else ""
    return (not search_filter.labels or label in search_filter.labels) and path.startswith(search_filter.path_prefix)


# --- region ----------------------------------------------------------------------------------


def test_decoded_box_is_the_region_of_the_displayed_picture(tmp_path):
    picture = blocks(3, (90, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: 60 x 90
    path = tmp_path / "rotated.jpg"
    picture.save(path, quality=95, exif=exif.tobytes())
    displayed = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    region, size = decode_rgb(path, box=(10, 20, 50, 80))
    assert size == (60, 90) and region.size == (40, 60)
    assert np.array_equal(np.asarray(region), np.asarray(displayed.crop((10, 20, 50, 80))))
    clipped, _ = decode_rgb(path, box=(-5, 70, 100, 200))  # clipped to the picture
    assert np.array_equal(np.asarray(clipped), np.asarray(displayed.crop((0, 70, 60, 90))))
    with pytest.raises(ImageDecodeError, match=r"rotated.jpg: box 70,0,80,10 lies outside the 60x90 picture"):
        decode_rgb(path, box=(70, 0, 80, 10))
    for bad in ("1,2,3", "a,b,c,d", "5,5,5,9", "9,1,2,4"):
        with pytest.raises(ValueError, match=f"box '{bad}'"):
            parse_box(bad)


def test_a_small_region_of_a_large_jpeg_keeps_its_detail(tmp_path):
    """A JPEG decodes at a reduced scale (draft) unless a box asks for a region: then the draft
    keeps the region's short side, not the picture's, at twice what the model needs."""
    path = tmp_path / "big.jpg"
    y, x = np.mgrid[0:1600, 0:2400]
    waves = np.stack([np.sin(x / 40), np.cos(y / 30), np.sin((x + y) / 55)], axis=-1)
    Image.fromarray(np.uint8(127.5 + 127 * waves)).save(path, quality=92)
    whole, _ = decode_rgb(path, min_short_side=100)
    assert min(whole.size) < 400  # without a box the draft drops most pixels
    region, _ = decode_rgb(path, min_short_side=100, box=(1000, 600, 1400, 1000))
    assert min(region.size) >= 200
    full = Image.open(path).convert("RGB").crop((1000, 600, 1400, 1000)).resize(region.size, Image.Resampling.BILINEAR)
    assert np.abs(np.asarray(region, np.float32) - np.asarray(full, np.float32)).mean() < 4


def test_a_box_searches_that_part_of_a_composite(gallery, tiny_model, tmp_path):
    """Two gallery pictures side by side: the left box finds the left one's label, the right box the right one's."""
    root, index_dir, _ = gallery
    left, right = Image.open(root / "ants" / "03.png"), Image.open(root / "bees" / "05.png")
    composite = Image.new("RGB", (left.width + right.width, 56))
    composite.paste(left, (0, 0))
    composite.paste(right, (left.width, 0))
    query = tmp_path / "composite.png"
    composite.save(query)
    for box, path, label in (("0,0,72,56", "ants/03.png", "ants"), ("72,0,144,56", "bees/05.png", "bees")):
        found = json.loads(metrix_cli("search", query, "--index", index_dir, "-k", "3", "--box", box, "--json").stdout)
        assert found["results"][0]["path"] == path and found["results"][0]["label"] == label
        assert found["results"][0]["score"] > 0.9999 and found["applied"] == f"region {box}"
    whole = json.loads(metrix_cli("search", query, "--index", index_dir, "-k", "1", "--json").stdout)
    assert whole["results"][0]["score"] < 0.999  # the whole composite is neither picture
    failed = metrix_cli("search", query, "--index", index_dir, "--box", "200,0,300,10", check=False)
    assert (
        failed.returncode == 2
        and failed.stderr.strip() == f"error: {query}: box 200,0,300,10 lies outside the 144x56 picture"
    )


# --- filters ---------------------------------------------------------------------------------


def _filtered_equals_brute_force(index_dir, model, root, paths, nprobe=None):
    opened, embedder = open_with_model(index_dir)
    if nprobe is not None:  # probing few lists: an unfiltered search would be approximate
        import faiss

        faiss.extract_index_ivf(opened.index).nprobe = nprobe
    vectors = dict(zip(paths, embed_paths(model, root, paths)))
    for query_path in ("ants/01.png", "cats/big/02.png", "loose1.png"):
        for search_filter in FILTERS:
            answer = opened.search_present(vectors[query_path], 7, search_filter)
            want, scores = brute_force(vectors, vectors[query_path], 7, lambda p: passes(search_filter, p))
            assert_same_ranking(answer.hits, want, scores)
            assert all(passes(search_filter, hit.path) for hit in answer.hits)
    return opened


def test_filters_are_exact_on_a_flat_index(gallery, tiny_model):
    import faiss.contrib.torch_utils  # noqa: F401  (as pytorch-metric-learning does: it rewraps faiss's search)

    root, index_dir, paths = gallery
    opened = _filtered_equals_brute_force(index_dir, tiny_model, root, paths)
    assert opened.labels() == [("", 3), ("ants", 12), ("bees", 12), ("cats", 12)]


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_filters_are_exact_on_ivf_and_ivfpq(tiny_model, tmp_path, kind):
    """Even when the IVF probes one list only, a filtered search scans the whole subset."""
    root = tmp_path / "gallery"
    paths = write_gallery(root, extra=260)
    options = {"index_type": "ivf"} if kind == "ivf" else {"max_memory": 45_000}
    report = build_index(root, tiny_model, tmp_path / "idx", progress=False, **options)
    assert report.index["kind"] == kind
    opened = _filtered_equals_brute_force(tmp_path / "idx", tiny_model, root, paths, nprobe=1)
    assert opened.manifest["index"]["kind"] == kind


def test_filters_from_the_command_line(gallery, tiny_model):
    root, index_dir, paths = gallery
    query = root / "cats" / "big" / "01.png"
    args = ("search", query, "--index", index_dir, "-k", "50", "--json")
    both = json.loads(metrix_cli(*args, "--label", "ants", "--label", "cats").stdout)["results"]
    assert {h["label"] for h in both} == {"ants", "cats"} and len(both) == 24
    prefixed = json.loads(metrix_cli(*args, "--path-prefix", "cats/big/").stdout)["results"]
    assert sorted(h["path"] for h in prefixed) == [p for p in paths if p.startswith("cats/big/")]
    assert prefixed[0]["path"] == "cats/big/01.png"
    none = json.loads(metrix_cli(*args, "--label", "nosuchlabel").stdout)["results"]
    assert none == []


# --- relevance feedback ----------------------------------------------------------------------


def test_rocchio_is_the_formula():
    rng = np.random.default_rng(0)
    query, right, wrong = rng.normal(size=16), rng.normal(size=(3, 16)), rng.normal(size=(2, 16))
    moved = ALPHA * query + BETA * right.mean(axis=0) - GAMMA * wrong.mean(axis=0)
    assert np.allclose(rocchio(query, right, wrong), moved / np.linalg.norm(moved), atol=1e-6)
    only_right = ALPHA * query + BETA * right.mean(axis=0)
    assert np.allclose(rocchio(query, right, np.empty((0, 16))), only_right / np.linalg.norm(only_right), atol=1e-6)
    assert np.allclose(
        rocchio(query / np.linalg.norm(query), np.empty((0, 16)), np.empty((0, 16))),
        query / np.linalg.norm(query),
        atol=1e-6,
    )


def test_feedback_moves_the_query_as_rocchio_says(gallery, tiny_model):
    root, index_dir, paths = gallery
    opened, embedder = open_with_model(index_dir)
    vectors = dict(zip(paths, embed_paths(tiny_model, root, paths)))
    ids = dict(opened.db.execute("SELECT path, id FROM images"))
    right, wrong = ["ants/04.png", "ants/07.png"], ["bees/02.png"]
    moved = rocchio(
        vectors["ants/01.png"], np.stack([vectors[p] for p in right]), np.stack([vectors[p] for p in wrong])
    )
    refinement = Refinement(right=tuple(ids[p] for p in right), wrong=tuple(ids[p] for p in wrong))
    answer = search_image(opened, embedder, root / "ants" / "01.png", 10, refinement=refinement)
    assert_same_ranking(answer.hits, *brute_force(vectors, moved, 10))
    # by path on the command line, the same ranking
    found = json.loads(
        metrix_cli(
            "search",
            root / "ants" / "01.png",
            "--index",
            index_dir,
            "-k",
            "10",
            "--json",
            "--right",
            "ants/04.png",
            "--right",
            str(ids["ants/07.png"]),
            "--wrong",
            "bees/02.png",
        ).stdout
    )
    assert [h["path"] for h in found["results"]] == [h.path for h in answer.hits]
    assert found["applied"] == "feedback 2 right, 1 wrong"
    failed = metrix_cli("search", root / "ants" / "01.png", "--index", index_dir, "--right", "ants/99.png", check=False)
    assert (
        failed.returncode == 2
        and failed.stderr.count("\n") == 1
        and "--right: 'ants/99.png' is not an image" in failed.stderr
    )


# --- the JSON API --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api(gallery):
    _, index_dir, _ = gallery
    with serve_process(index_dir) as (url, _), httpx.Client(timeout=30) as client:
        yield url, client


def _post(client, url, path, route="search", **fields):
    data = {key: [str(v) for v in value] if isinstance(value, list) else str(value) for key, value in fields.items()}
    return client.post(f"{url}api/{route}", files={"image": (path.name, path.read_bytes())}, data=data)


@pytest.mark.slow
def test_api_region_filters_and_feedback(api, gallery, tiny_model):
    url, client = api
    root, index_dir, paths = gallery
    query = root / "cats" / "03.png"
    cli = json.loads(
        metrix_cli(
            "search",
            query,
            "--index",
            index_dir,
            "-k",
            "6",
            "--json",
            "--box",
            "10,5,60,50",
            "--label",
            "cats",
            "--label",
            "bees",
            "--right",
            "cats/04.png",
            "--wrong",
            "bees/01.png",
        ).stdout
    )
    ids = {h["path"]: h["id"] for h in _post(client, url, query, k=50).json()["results"]}
    body = _post(
        client,
        url,
        query,
        k=6,
        box="10,5,60,50",
        label=["cats", "bees"],
        right=ids["cats/04.png"],
        wrong=str(ids["bees/01.png"]),
    ).json()
    assert [h["path"] for h in body["results"]] == [h["path"] for h in cli["results"]]
    assert np.allclose([h["score"] for h in body["results"]], [h["score"] for h in cli["results"]], atol=1e-6)
    assert body["applied"] == cli["applied"] == "region 10,5,60,50; labels cats, bees; feedback 1 right, 1 wrong"
    prefixed = _post(client, url, query, k=50, path_prefix="cats/big/").json()["results"]
    assert sorted(h["path"] for h in prefixed) == [p for p in paths if p.startswith("cats/big/")]
    labels = client.get(f"{url}api/labels").json()["labels"]
    assert labels == [
        {"label": "", "images": 3},
        {"label": "ants", "images": 12},
        {"label": "bees", "images": 12},
        {"label": "cats", "images": 12},
    ]
    for fields, status, message in (
        ({"box": "1,2,3"}, 400, "box '1,2,3': expected x0,y0,x1,y1"),
        ({"box": "500,0,600,9"}, 400, "03.png: box 500,0,600,9 lies outside the 72x56 picture"),
        ({"right": "x"}, 400, "right: expected image ids"),
        ({"wrong": "99999"}, 400, "wrong: id 99999 is not in"),
    ):
        response = _post(client, url, query, **fields)
        assert response.status_code == status and message in response.json()["error"], response.text
        assert "\n" not in response.json()["error"]


# --- why this match ----------------------------------------------------------------------------


def test_cells_are_each_location_embedded_alone(tiny_run):
    """The PyTorch side, from the feature map: a cell is the head applied to that location's
    features pooled alone (GAP + GMP of one location = twice it), L2-normalised."""
    from metrix.training.checkpoint import build_model, load_checkpoint

    model = build_model(load_checkpoint(tiny_run, "best")).eval()
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        embeddings, cells = model.with_cells(images)
        features = model.features(images)  # [3, C, 2, 2] at 64 px
        by_hand = F.normalize(model.embedding_head.linear(2 * features.permute(0, 2, 3, 1)), dim=-1)
    assert cells.shape == (3, 2, 2, model.embedding_size) and torch.allclose(cells, by_hand, atol=1e-5)
    assert torch.allclose(embeddings, model(images), atol=1e-6)


def _uniform_cells_equal_the_pooled(backbone, features):
    with torch.no_grad():
        pooled, cells = backbone.pool(features), backbone.pool_cells(features)
    assert torch.allclose(cells, pooled[:, None, None, :].expand_as(cells), atol=1e-5)


def test_a_uniform_picture_has_every_cell_equal_to_its_embedding():
    """What "as if it were the whole picture" means, for a CNN and for ViTs whose pooling is the CLS
    token, the patch mean or attention pooling: a feature map (token sequence) equal everywhere
    pools to what each of its cells pools to."""
    from metrix.backbones import create_backbone

    lite = create_backbone("efficientnet_lite0", pretrained=False, image_size=64)
    _uniform_cells_equal_the_pooled(lite, torch.randn(2, lite.num_features, 1, 1).expand(2, lite.num_features, 3, 3))
    for name, options in (
        ("vit_tiny_patch16_224", {}),
        ("vit_tiny_patch16_224", {"global_pool": "avg"}),
        ("vit_tiny_patch16_224", {"global_pool": "map"}),
    ):
        backbone = create_backbone(f"timm:{name}", pretrained=False, image_size=64)
        if options:
            import timm

            backbone.net = timm.create_model(name, pretrained=False, num_classes=0, img_size=64, **options).eval()
        backbone.eval()
        tokens = 4 * 4 + backbone.net.num_prefix_tokens
        _uniform_cells_equal_the_pooled(backbone, torch.randn(2, 1, backbone.num_features).expand(2, tokens, -1))
        with torch.no_grad():
            assert backbone.pool_cells(backbone(torch.rand(1, 3, 64, 64))).shape == (1, 4, 4, backbone.num_features)


@pytest.mark.slow
def test_heat_maps_are_cells_against_the_other_embedding(floor_model, tmp_path):
    embedder = load_embedder(floor_model)
    a, b = blocks(11, (200, 160)), blocks(12, (160, 200))
    a.save(tmp_path / "a.png")
    b.save(tmp_path / "b.png")
    inputs = [load_for_model(tmp_path / name, embedder.metadata)[0] for name in ("a.png", "b.png")]
    explanation = explain(embedder, *inputs)
    (ea, eb), (ca, cb) = embedder.embed_with_cells(np.stack(inputs))
    assert explanation.query_map.shape == (5, 5) and np.isclose(explanation.score, float(ea @ eb), atol=1e-6)
    assert np.allclose(explanation.query_map, np.einsum("hwd,d->hw", ca, eb), atol=1e-6)
    assert np.allclose(explanation.result_map, np.einsum("hwd,d->hw", cb, ea), atol=1e-6)
    query, result = explanation.overlays(128)
    assert query.size == result.size == (128, 128)


def test_the_matching_half_of_a_composite_is_hotter(floor_model, tmp_path):
    """A query made of a picture (left) beside an unrelated one (right): against the left picture,
    the left half of the query's heat map is the hotter."""
    from metrix.datasets.synthetic import render_image

    embedder = load_embedder(floor_model)
    hits, total = 0, 0
    for seed in range(6):  # pictures of two synthetic classes that differ in shape, pattern and colours
        left, right = render_image(seed * 7 % 120, seed, 160), render_image((seed * 7 + 61) % 120, seed + 50, 160)
        composite = Image.new("RGB", (320, 320), (128, 128, 128))
        composite.paste(left, (0, 80))
        composite.paste(right, (160, 80))
        composite.save(tmp_path / "composite.png")
        left.save(tmp_path / "left.png")
        query = load_for_model(tmp_path / "composite.png", embedder.metadata)[0]
        result = load_for_model(tmp_path / "left.png", embedder.metadata)[0]
        heat = explain(embedder, query, result).query_map
        hits += heat[1:4, :2].mean() > heat[1:4, 3:].mean() + 0.02  # measured margins 0.05 to 0.2
        total += 1
    assert hits == total


def test_explain_through_the_cli_and_the_api(api, gallery, tiny_model, tmp_path):
    url, client = api
    root, index_dir, _ = gallery
    query = root / "bees" / "02.png"
    cli = json.loads(
        metrix_cli("explain", query, "bees/06.png", "--index", index_dir, "--json", "-o", tmp_path / "why.png").stdout
    )
    assert Image.open(tmp_path / "why.png").size == (4 * 256 + 24, 256)
    body = _post(client, url, query, route="explain", id=cli["id"]).json()
    assert body["path"] == "bees/06.png" and np.allclose(body["query_heatmap"], cli["query_heatmap"], atol=1e-4)
    assert np.allclose(body["result_heatmap"], cli["result_heatmap"], atol=1e-4) and body["grid"] == cli["grid"]
    assert body["query_overlay"].startswith("data:image/png;base64,")
    missing = _post(client, url, query, route="explain", id=99999)
    assert missing.status_code == 404 and "image 99999: not in" in missing.json()["error"]
    text = metrix_cli("explain", query, "bees/06.png", "--index", index_dir).stdout
    assert text.startswith("bees/06.png (id ") and "query:" in text and "result:" in text


def test_a_model_without_cells_says_to_re_export(gallery, tiny_model, tmp_path):
    """Models exported before the cells output still search; explaining says what to do."""
    root, _, _ = gallery
    old = onnx.load(str(tiny_model))
    kept = [output for output in old.graph.output if output.name == "embeddings"]
    del old.graph.output[:]
    old.graph.output.extend(kept)
    onnx.save(old, str(tmp_path / "old.onnx"))
    assert not load_embedder(tmp_path / "old.onnx").has_cells
    build_index(root, tmp_path / "old.onnx", tmp_path / "idx", progress=False)
    assert open_index(tmp_path / "idx").manifest["model"]["path"].endswith("old.onnx")
    failed = metrix_cli("explain", root / "ants" / "01.png", "ants/02.png", "--index", tmp_path / "idx", check=False)
    assert (
        failed.returncode == 2
        and failed.stderr.count("\n") == 1
        and "re-export it with `metrix export`" in failed.stderr
    )
    with pytest.raises(ModelError, match="exported before models had a cells output"):
        load_embedder(tmp_path / "old.onnx").embed_with_cells(np.zeros((1, 32, 32, 3), np.uint8))

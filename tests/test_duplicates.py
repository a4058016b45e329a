"""Near-duplicates (index/duplicates.py, `metrix duplicates`, the service's /duplicates page and
/api/duplicates): the groups at a given threshold against SciPy's complete-linkage clustering on
planted vectors, for flat, IVF and IVF-PQ indexes built by build_index; end to end on pictures with
planted copies (re-encoded, resized, cropped, flipped) embedded by the untrained efficientnet_lite0,
at a given threshold and calibrated (index/calibration.py, index/copy_check.py); the service
against the command; access control; and the page in headless Chromium."""

import base64
import io
import json
import shutil
import time
from pathlib import Path
from unittest import mock

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from metrix.index import build as build_module
from metrix.index import duplicates as duplicates_module
from metrix.index.build import build_index
from metrix.index.duplicates import find_duplicates
from metrix.index.local_engine import Embedded
from metrix.index.store import open_index

from .browser import headless_chromium
from .service_helpers import free_port, serve_process
from .training_helpers import metrix_cli

CUB = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cub100"
T = 0.9
#: No pair of the planted vectors lies this close to T, so rounding cannot decide a group.
MARGIN = 0.02


# --- planted vectors against brute force ---


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def planted_vectors(dim: int, seed: int = 0) -> np.ndarray:
    """2,000 clustered unit vectors (so IVF probes few lists) and copies planted near 40 of them:
    20 pairs and 10 triples at 10 degrees (cosine ~0.97), 9 chains of steps of 14, 18 and 22
    degrees (cosine 0.97, 0.95, 0.93; two steps apart 0.85 or less: two groups of two, never one
    chain of four), and two tight clusters of 120 (2 degrees) 18 degrees apart: one group of 240
    whose two halves an IVF-PQ search at its re-rank depth of 100 would never join (each image's
    100 nearest are in its own half), shuffled."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    background = unit(centres[rng.integers(0, 40, 2000)] + 1.2 * rng.standard_normal((2000, dim)))
    originals = background[rng.choice(2000, 40, replace=False)]

    def away(u, degrees):  # a unit vector at `degrees` from u, in a random direction
        w = rng.standard_normal(dim)
        w = unit(w - (w @ u) * u)
        return np.cos(np.radians(degrees)) * u + np.sin(np.radians(degrees)) * w

    copies = []
    for number, original in enumerate(originals):
        if number < 20:
            copies.append(away(original, 10))
        elif number < 30:
            copies += [away(original, 10), away(original, 10)]
        elif number < 39:
            step = unit(away(original, 90))
            copies += [np.cos(np.radians(a)) * original + np.sin(np.radians(a)) * step for a in (14, 32, 54)]
        else:
            other = np.cos(np.radians(18)) * original + np.sin(np.radians(18)) * unit(away(original, 90))
            copies += [away(original, 2) for _ in range(119)] + [away(other, 2) for _ in range(120)]
    vectors = np.concatenate([background, unit(np.stack(copies))])
    return vectors[rng.permutation(len(vectors))]


def complete_linkage_groups(vectors: np.ndarray, threshold: float) -> set[frozenset[int]]:
    """SciPy's complete-linkage clustering cut at cosine distance 1 - threshold: groups (of 2 or
    more) in which every two vectors are at >= threshold."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    labels = fcluster(linkage(pdist(vectors, "cosine"), "complete"), 1 - threshold, criterion="distance")
    groups: dict[int, set[int]] = {}
    for number, label in enumerate(labels.tolist()):
        groups.setdefault(label, set()).add(number)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def build_from_vectors(root: Path, vectors: np.ndarray, model: Path, index_dir: Path, **options):
    """build_index on a gallery of empty files v/NNNNN.png whose "embedding" is vectors[NNNNN]:
    the real build (plan, faiss index, nprobe tuning, full vectors, manifest, generation), with
    only the model's forward pass replaced."""
    (root / "v").mkdir(parents=True, exist_ok=True)
    for number in range(len(vectors)):
        (root / "v" / f"{number:05d}.png").touch()

    def embed(embedder, source, todo, batch_size, workers=None):
        for file in todo:
            yield Embedded(file, vectors[int(Path(file.path).stem)], "0" * 64, 1, 1, "")

    with mock.patch.object(build_module, "embed_locally", embed):
        return build_index(root, model, index_dir, progress=False, **options)


def numbers(group) -> list[int]:
    return [int(Path(image.path).stem) for image in group.images]


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tiny_model):
    """(vectors, {kind: index folder}) for flat, IVF and IVF-PQ indexes of the same planted vectors."""
    from metrix.export.runtime import read_metadata

    vectors = planted_vectors(read_metadata(tiny_model).embedding_size)
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, 0)
    assert not (np.abs(similarity - T) < MARGIN).any(), "planted data too close to the threshold: a tie could decide"
    tmp = tmp_path_factory.mktemp("planted")
    indexes = {}
    for kind in ("flat", "ivf", "ivfpq"):
        indexes[kind] = tmp / kind
        report = build_from_vectors(tmp / "gallery", vectors, tiny_model, indexes[kind], index_type=kind)
        assert report.index["kind"] == kind
    return vectors, indexes


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_groups_are_scipys_complete_linkage(planted, kind):
    vectors, indexes = planted
    truth = complete_linkage_groups(vectors, T)
    assert len(truth) == 49 and sorted(len(g) for g in truth)[-1] == 240  # the data is what it says
    opened = open_index(indexes[kind])
    if kind == "ivf":  # approximate for real: the lists probed are a fraction of them
        assert opened.manifest["index"]["nprobe"] < opened.index.nlist
    result = find_duplicates(opened, T)
    assert {frozenset(numbers(group)) for group in result.groups} == truth
    assert [len(g.images) for g in result.groups] == sorted((len(g.images) for g in result.groups), reverse=True)

    similarity = vectors @ vectors.T
    for group in result.groups:
        members = numbers(group)
        inside = similarity[np.ix_(members, members)]
        np.fill_diagonal(inside, np.nan)
        # every two images of a group are alike (no chains), and the similarities are exact, also from IVF-PQ's codes
        assert group.min_similarity == pytest.approx(float(np.nanmin(inside)), abs=1e-5) and group.min_similarity >= T
        for image, row in zip(group.images, inside):
            assert image.similarity == pytest.approx(float(np.nanmax(row)), abs=1e-5)
        ids = {image.id: number for image, number in zip(group.images, members)}
        assert len(group.links) == len(members) - 1
        for a, b, s in group.links:
            assert s == pytest.approx(float(similarity[ids[a], ids[b]]), abs=1e-5) and s >= T
        assert group.weakest_link == min(s for _, _, s in group.links)
    assert result.calibration is None and result.checked_pairs == 0  # a threshold given: nothing calibrated


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_small_blocks_and_a_small_pair_budget_give_the_same_groups(planted, monkeypatch, kind):
    """Queries in blocks of 37 (IVF lists cut and joined into blocks) and the pairs reduced to a
    spanning forest whenever they pass 50: the bounded-memory path gives the same groups and
    similarities (the links that joined a group may be others)."""
    _, indexes = planted
    opened = open_index(indexes[kind])
    whole = find_duplicates(opened, T).to_json()
    monkeypatch.setattr(duplicates_module, "MAX_PAIRS", 50)
    small = find_duplicates(opened, T, block=37).to_json()
    # products of other sub-matrices: the last float bits may differ
    similarities = [[], []]
    for result, found in zip((whole, small), similarities):
        del result["seconds"]
        for group in result["groups"]:
            del group["links"], group["weakest_link"]
            found.append(group.pop("min_similarity"))
            found += [image.pop("similarity") for image in group["images"]]
    assert small == whole and np.allclose(*similarities, atol=1e-5)


def test_thresholds(planted):
    vectors, indexes = planted
    opened = open_index(indexes["flat"])
    assert {frozenset(numbers(g)) for g in find_duplicates(opened, 0.8).groups} == complete_linkage_groups(vectors, 0.8)
    assert find_duplicates(opened, 1.0).groups == []  # no two vectors are identical
    for bad in (0, -0.5, 1.01, float("nan"), "x"):
        with pytest.raises(ValueError, match="threshold"):
            find_duplicates(opened, bad)


# --- pictures with planted copies, end to end ---


def scene(seed: int, size=(160, 120)) -> Image.Image:
    """A distinct picture: a colour gradient under a few random shapes, drawn at twice the size
    and reduced (antialiased). The blocks() pictures of tests/pictures.py are colour noise to an
    ImageNet model: two different ones embed at cosine 0.93-0.97, above their own re-encoded copies."""
    rng = np.random.default_rng(seed)
    w, h = 2 * size[0], 2 * size[1]
    ramp = np.linspace(0, 1, h)[:, None, None]
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    picture = Image.fromarray(np.broadcast_to(top * (1 - ramp) + bottom * ramp, (h, w, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(rng.integers(4, 8)):
        (x0, x1), (y0, y1) = sorted(rng.integers(-w // 4, w + w // 4, 2)), sorted(rng.integers(-h // 4, h + h // 4, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = rng.integers(0, 4)
        if shape == 0:
            draw.ellipse((x0, y0, x1 + 8, y1 + 8), fill=colour)
        elif shape == 1:
            draw.rectangle((x0, y0, x1 + 8, y1 + 8), fill=colour)
        elif shape == 2:
            draw.polygon([tuple(map(int, p)) for p in rng.integers(0, w, (rng.integers(3, 6), 2))], fill=colour)
        else:
            draw.line(
                [tuple(map(int, p)) for p in rng.integers(0, w, (3, 2))], fill=colour, width=int(rng.integers(2, 8))
            )
    return picture.resize(size, Image.Resampling.LANCZOS)


def save_copy(picture: Image.Image, kind: str, path: Path) -> None:
    """A near-duplicate of `picture`: re-encoded JPEG, half size, cropped to 90% around the centre, or mirrored."""
    if kind == "jpeg":
        picture.save(path, "JPEG", quality=85)
        return
    if kind == "half":
        picture = picture.resize((picture.width // 2, picture.height // 2), Image.Resampling.LANCZOS)
    elif kind == "crop":
        dx, dy = round(picture.width * 0.05), round(picture.height * 0.05)
        picture = picture.crop((dx, dy, picture.width - dx, picture.height - dy))
    elif kind == "flip":
        picture = ImageOps.mirror(picture)
    picture.save(path)


#: Which originals get which copies; a threshold between the copies' similarity to their original
#: (0.90 and above with this model) and that of different pictures (0.82 at most).
PLANTED = {0: ("jpeg",), 1: ("half",), 2: ("crop",), 3: ("flip",), 4: ("jpeg", "flip")}
PICTURE_THRESHOLD = 0.86


def write_pictures(root: Path) -> set[frozenset[str]]:
    """16 originals under park/ and beach/, copies of five of them; returns the planted groups."""
    groups = set()
    for number in range(16):
        label = ("park", "beach")[number % 2]
        (root / label).mkdir(parents=True, exist_ok=True)
        picture = scene(3000 + number)
        picture.save(root / label / f"{number:02d}.png")
        group = {f"{label}/{number:02d}.png"}
        for kind in PLANTED.get(number, ()):
            name = f"{label}/{number:02d}-{kind}.{'jpg' if kind == 'jpeg' else 'png'}"
            save_copy(picture, kind, root / name)
            group.add(name)
        if len(group) > 1:
            groups.add(frozenset(group))
    return groups


@pytest.fixture(scope="module")
def floor_model(tmp_path_factory):
    """The untrained efficientnet_lite0 (ImageNet weights, installed offline): the session's tiny
    32 px model puts different pictures closer than a picture and its cropped copy."""
    from metrix.export.onnx_export import export_backbone

    path = tmp_path_factory.mktemp("floor") / "efficientnet_lite0-floor.onnx"
    export_backbone("efficientnet_lite0", path)
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, floor_model):
    """(gallery root, index folder, planted groups of paths)."""
    root = tmp_path_factory.mktemp("pictures") / "gallery"
    planted_groups = write_pictures(root)
    index_dir = root.parent / "index"
    build_index(root, floor_model, index_dir, progress=False)
    return root, index_dir, planted_groups


def path_groups(result: dict) -> set[frozenset[str]]:
    return {frozenset(image["path"] for image in group["images"]) for group in result["groups"]}


def cli_json(index_dir: Path, threshold: float | None = PICTURE_THRESHOLD) -> dict:
    given = ("--threshold", threshold) if threshold is not None else ()
    return json.loads(metrix_cli("duplicates", index_dir, *given, "--json").stdout)


@pytest.mark.slow
def test_command_finds_each_planted_group(pictures, tmp_path):
    root, index_dir, planted_groups = pictures
    result = cli_json(index_dir)
    assert path_groups(result) == planted_groups
    assert (
        result["images"] == 22 and result["threshold"] == PICTURE_THRESHOLD and result["search"] == "exact (flat index)"
    )
    first = result["groups"][0]
    assert first["size"] == 3 and {image["path"] for image in first["images"]} == {
        "park/04.png",
        "park/04-jpeg.jpg",
        "park/04-flip.png",
    }
    assert all(image["label"] == "park" and image["similarity"] >= PICTURE_THRESHOLD for image in first["images"])

    text = metrix_cli(
        "duplicates", index_dir, "--threshold", PICTURE_THRESHOLD, "--html", tmp_path / "groups.html"
    ).stdout
    assert (
        "5 groups of near-duplicates (11 images)" in text
        and "group 1: 3 images" in text
        and "beach/01-half.png" in text
    )
    page = (tmp_path / "groups.html").read_text()
    # self-contained: every picture is an embedded JPEG, nothing is fetched
    sources = [part.split("'", 1)[0] for part in page.split("<img src='")[1:]]
    assert len(sources) == 11 and all(s.startswith("data:image/jpeg;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page
    thumbnail = Image.open(io.BytesIO(base64.b64decode(sources[0].split(",", 1)[1])))
    assert thumbnail.format == "JPEG" and max(thumbnail.size) <= 160
    assert all(path in page for group in planted_groups for path in group)


@pytest.mark.slow
def test_the_default_is_calibrated_on_the_gallery_and_confirms_each_pair(pictures, floor_model, tmp_path):
    """No threshold given: the thresholds come from the gallery's own edited copies, every pair is
    confirmed by the copy check, and the planted groups come out; the same pictures without their
    copies give no group at all."""
    root, index_dir, planted_groups = pictures
    result = cli_json(index_dir, None)
    calibration = result["calibration"]
    assert path_groups(result) == planted_groups and calibration["separable"]
    assert calibration["originals"] == 22 and calibration["copies"] == 7 * 22 and result["checked_pairs"] >= 5
    assert calibration["candidate_threshold"] == pytest.approx(result["threshold"], abs=1e-6)
    assert all(group["min_similarity"] >= result["threshold"] for group in result["groups"])
    text = metrix_cli("duplicates", index_dir).stdout
    assert "calibrated on 154 edited copies of 22" in text and "5 groups of near-duplicates (11 images)" in text

    clean = tmp_path / "clean"
    for original in root.rglob("[0-9][0-9].png"):
        (clean / original.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(original, clean / original.parent.name / original.name)
    build_index(clean, floor_model, tmp_path / "clean-index", progress=False)
    assert cli_json(tmp_path / "clean-index", None)["groups"] == []


def copy_similarities(pictures: dict) -> tuple[dict, list[float]]:
    """({(picture, edit): the copy check's NCC of the picture and that copy}, [NCC of two different pictures])."""
    from metrix.index.calibration import EDITS, edited_copy
    from metrix.index.copy_check import CopyCheck

    files = {}
    for name, picture in pictures.items():
        out = io.BytesIO()
        picture.save(out, "PNG")
        files[name] = out.getvalue()
    rng = np.random.default_rng(0)
    files |= {(name, edit): edited_copy(pictures[name], edit, rng) for name in pictures for edit in EDITS}
    check = CopyCheck(files.__getitem__)
    copies = {(name, edit): check.similarity(name, (name, edit)) for name in pictures for edit in EDITS}
    return copies, [check.similarity(a, b) for a in pictures for b in pictures if str(a) < str(b)]


def test_the_copy_check_on_flat_synthetic_pictures():
    """Shapes on gradients have few corners: copies that keep the frame (re-encoded, resized,
    mirrored, brightened) align frame to frame; cropped, rotated and framed ones need keypoints,
    and most find enough. Different pictures never align."""
    copies, others = copy_similarities({n: scene(4000 + n) for n in range(6)})
    framed = [v for (_, edit), v in copies.items() if edit in ("jpeg", "resize", "flip", "brightness")]
    moved = [v for (_, edit), v in copies.items() if edit in ("crop", "rotate", "border")]
    assert min(framed) > 0.95, copies
    assert np.mean(np.array(moved) > 0.9) >= 0.6, copies
    assert max(others) < 0.5, others


@pytest.mark.skipif(not CUB.is_dir(), reason="needs ../shared/datasets/cub100")
def test_the_copy_check_on_photos():
    """Bird photos of cub100, two per species for six species: every edit's copy aligns at NCC >=
    0.9, and two photos of one species never do (the check's floor is 0.8)."""
    folders = sorted(p for p in CUB.iterdir() if p.is_dir())[50:56]
    pictures = {
        f"{f.name}/{p.name}": Image.open(p).convert("RGB") for f in folders for p in sorted(f.glob("*.jpg"))[:2]
    }
    copies, others = copy_similarities(pictures)
    assert np.mean(np.array(list(copies.values())) > 0.9) >= 0.95, copies
    assert max(others) < 0.8, others


def test_command_errors_are_one_line(pictures, tmp_path):
    _, index_dir, _ = pictures
    for args, message in (
        ((tmp_path,), "no index here"),
        ((index_dir, "--threshold", "0"), "must be in (0, 1]"),
        ((index_dir, "--threshold", "1.5"), "must be in (0, 1]"),
    ):
        failed = metrix_cli("duplicates", *args, check=False)
        assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and message in failed.stderr, failed.stderr


# --- the service ---

TOKEN = "a-test-token-of-enough-length"


@pytest.fixture(scope="module")
def served(pictures):
    from metrix.app.server import Server
    from metrix.index.live import LiveIndex

    server = Server(LiveIndex(pictures[1]), port=free_port()).start()
    with httpx.Client(timeout=60) as client:
        yield server.url, client
    server.stop()


def without_times_and_urls(result: dict) -> dict:
    result = {key: value for key, value in result.items() if key != "seconds"}
    result["groups"] = [
        {**group, "images": [{k: v for k, v in image.items() if k != "url"} for image in group["images"]]}
        for group in result["groups"]
    ]
    return result


@pytest.mark.slow
def test_api_answers_what_the_command_prints(served, pictures, monkeypatch):
    from metrix.app import duplicates as service

    url, client = served
    response = client.get(f"{url}api/duplicates", params={"threshold": PICTURE_THRESHOLD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert without_times_and_urls(body) == without_times_and_urls(cli_json(pictures[1]))
    image = body["groups"][0]["images"][0]
    assert client.get(image["url"]).status_code == 200
    calibrated = client.get(f"{url}api/duplicates").json()
    assert path_groups(calibrated) == pictures[2] and calibrated["calibration"]["separable"]
    assert without_times_and_urls(calibrated)["groups"] == without_times_and_urls(cli_json(pictures[1], None))["groups"]

    searches = []  # the server runs in this process: count its searches
    monkeypatch.setattr(
        service, "find_duplicates", lambda *args, **kw: searches.append(args) or find_duplicates(*args, **kw)
    )
    for _ in range(3):  # a page and its reloads, at a threshold not asked for before
        assert client.get(f"{url}duplicates", params={"threshold": "0.861"}).status_code == 200
    assert client.get(f"{url}api/duplicates", params={"threshold": "0.8610"}).status_code == 200
    assert len(searches) == 1


@pytest.mark.parametrize("threshold", ["0", "1.5", "-1", "abc", "nan"])
def test_a_bad_threshold_is_a_400_in_one_line(served, threshold):
    url, client = served
    for route in ("api/duplicates", "duplicates"):
        response = client.get(f"{url}{route}", params={"threshold": threshold})
        assert response.status_code == 400, (route, response.text)
        message = response.json()["error"] if route.startswith("api") else response.text
        assert "threshold" in message and "\n" not in message.strip() and "Traceback" not in message


def test_access_control(pictures):
    _, index_dir, planted_groups = pictures
    with (
        serve_process(index_dir, "--auth", "ann:s3cret-pass", "--token", TOKEN) as (url, _),
        httpx.Client(timeout=60) as client,
    ):
        refused = client.get(f"{url}api/duplicates")
        assert refused.status_code == 401 and "\n" not in refused.json()["error"]
        page = client.get(f"{url}duplicates")
        assert page.status_code == 401 and page.headers["www-authenticate"].startswith("Basic")
        assert client.get(f"{url}duplicates", auth=("ann", "wrong")).status_code == 401
        params = {"threshold": PICTURE_THRESHOLD}
        body = client.get(f"{url}api/duplicates", params=params, headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert path_groups(body) == planted_groups
        page = client.get(f"{url}duplicates", params=params, auth=("ann", "s3cret-pass"))
        assert page.status_code == 200 and all(path in page.text for group in planted_groups for path in group)
        # the thumbnails are signed links: a browser's <img> request carries no credentials
        sources = [part.split("'", 1)[0].replace("&amp;", "&") for part in page.text.split("<img src='")[1:]]
        assert len(sources) == 11 and all("sig=" in source and "thumbnail=" in source for source in sources)
        thumbnail = client.get(sources[0])
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        assert client.get(sources[0].split("?")[0]).status_code == 401  # unsigned


def test_follows_a_rebuilt_index(pictures, floor_model, tmp_path):
    """The service answers from the live index's current generation: a rebuild with another copy
    planted shows up without a restart."""
    from metrix.app.server import Server
    from metrix.index.live import LiveIndex

    root = tmp_path / "gallery"
    shutil.copytree(pictures[0], root)
    index_dir = tmp_path / "index"
    build_index(root, floor_model, index_dir, progress=False)
    server = Server(LiveIndex(index_dir, interval=0.2), port=free_port()).start()
    try:
        with httpx.Client(timeout=60) as client:
            params = {"threshold": PICTURE_THRESHOLD}
            before = client.get(f"{server.url}api/duplicates", params=params).json()
            save_copy(scene(3007), "half", root / "beach" / "07-half.png")
            build_index(root, floor_model, index_dir, progress=False)
            deadline = time.monotonic() + 30
            while (after := client.get(f"{server.url}api/duplicates", params=params).json())["generation"] == before[
                "generation"
            ]:
                assert time.monotonic() < deadline, "the service did not switch to the new generation"
                time.sleep(0.2)
        assert path_groups(after) == path_groups(before) | {frozenset({"beach/07.png", "beach/07-half.png"})}
    finally:
        server.stop()


@pytest.mark.slow
def test_browser_from_the_search_page_to_the_groups_and_another_threshold(served, pictures, tmp_path):
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, client = served
    planted_groups = pictures[2]
    browser = headless_chromium()
    try:
        browser.get(url)
        wait = WebDriverWait(browser, 60)

        def click_link(b):  # the header is re-rendered on load, under a loading overlay for a moment
            try:
                b.find_element(By.LINK_TEXT, "near-duplicates").click()
                return True
            except (NoSuchElementException, ElementClickInterceptedException, StaleElementReferenceException):
                return False

        wait.until(click_link)
        if len(browser.window_handles) > 1:  # a Markdown link may open a new tab
            browser.switch_to.window(browser.window_handles[-1])
        wait.until(EC.presence_of_element_located((By.ID, "threshold")))
        assert browser.current_url.split("?")[0] == f"{url}duplicates"

        def shown():
            return {
                frozenset(e.text for e in section.find_elements(By.CSS_SELECTOR, ".path"))
                for section in browser.find_elements(By.CSS_SELECTOR, "section.group")
            }

        def all_thumbnails_loaded(b):
            return b.execute_script(
                "const i = [...document.querySelectorAll('section.group img')];"
                "i.forEach(x => x.scrollIntoView());"  # they load lazily
                "return i.length > 0 && i.every(x => x.complete && x.naturalWidth > 0"
                " && x.src.includes('/api/images/') && x.src.includes('thumbnail='));"
            )

        # the page opens at the default threshold; ask for the pictures' one through the form
        field = browser.find_element(By.ID, "threshold")
        field.clear()
        field.send_keys(str(PICTURE_THRESHOLD))
        field.submit()
        wait.until(lambda b: f"threshold={PICTURE_THRESHOLD}" in b.current_url and shown() == planted_groups)
        wait.until(all_thumbnails_loaded)
        assert len(browser.find_elements(By.CSS_SELECTOR, "section.group img")) == 11
        browser.save_screenshot(str(tmp_path / "duplicates.png"))

        stricter = 0.95
        expected = path_groups(client.get(f"{url}api/duplicates", params={"threshold": stricter}).json())
        assert expected != planted_groups  # the test would not see a change otherwise
        field = browser.find_element(By.ID, "threshold")
        field.clear()
        field.send_keys(str(stricter))
        browser.find_element(By.CSS_SELECTOR, "#threshold-form button").click()
        wait.until(lambda b: f"threshold={stricter}" in b.current_url and shown() == expected)
        if expected:
            wait.until(all_thumbnails_loaded)
        browser.find_element(By.ID, "back").click()
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
    finally:
        browser.quit()

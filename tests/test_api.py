"""The JSON API of a real `metrix serve` process on localhost, over real HTTP (httpx, keep-alive): search, info,
health, OpenAPI, bad uploads, which files can be fetched, path tricks, and access control."""

import base64
import hashlib
import io
import struct
import zlib

import httpx
import pytest

from metrix.images import MAX_PIXELS
from metrix.index.build import build_index

from .pictures import assert_apart, blocks
from .service_helpers import make_gallery, post_image, serve_process

TOKEN = "a-test-token-of-enough-length"
SECRET = "SECRET=hunter2"


@pytest.fixture(scope="module")
def gallery_index(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("api") / "gallery"
    paths = make_gallery(root)
    assert_apart(tiny_model, root, [p.relative_to(root) for p in paths])
    (root / "notes.env").write_text(SECRET)  # not an image: never indexed, so never served
    (root / "ants" / "notes.env").write_text(SECRET)
    index_dir = root.parent / "index"
    build_index(root, tiny_model, index_dir, progress=False)
    return root, index_dir


@pytest.fixture(scope="module")
def open_server(gallery_index):
    with serve_process(gallery_index[1]) as (url, _), httpx.Client(timeout=30) as client:
        yield url, client


@pytest.fixture(scope="module")
def guarded_server(gallery_index):
    with (
        serve_process(gallery_index[1], "--auth", "ann:s3cret-pass", "--token", TOKEN) as (url, _),
        httpx.Client(timeout=30) as client,
    ):
        yield url, client


@pytest.mark.slow
def test_search_returns_the_image_first_with_a_url_that_serves_it(open_server, gallery_index):
    url, client = open_server
    root, _ = gallery_index
    response = post_image(client, url, root / "bees" / "03.png", k=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["images"] == 20 and body["k"] == 5 and body["generation"].startswith("gen-") and body["left_out"] == []
    hits = body["results"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0]["path"] == "bees/03.png" and hits[0]["label"] == "bees" and hits[0]["score"] > 0.999
    assert (hits[0]["width"], hits[0]["height"]) == (72, 56)
    assert hits[0]["bytes"] == (root / "bees" / "03.png").stat().st_size
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    image = client.get(hits[0]["url"])
    assert (
        image.status_code == 200
        and hashlib.sha256(image.content).digest() == hashlib.sha256((root / "bees" / "03.png").read_bytes()).digest()
    )
    thumbnail = client.get(hits[0]["url"] + "?thumbnail=32")
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"


def test_info_health_and_openapi(open_server, gallery_index, tiny_model):
    url, client = open_server
    response = client.get(f"{url}api/info")
    info = response.json()
    assert info["images"] == 20 and info["gallery_root"] == gallery_index[0].name and info["model"]["weights_sha256"]
    # no server path: the gallery folder, the index and the model file by name only
    assert str(gallery_index[0].parent) not in response.text and str(tiny_model.parent) not in response.text
    assert info["served_recall"]["measured"] == 0  # an exact index: nothing to check
    assert client.get(f"{url}api/health").json() == {"status": "ok", "generation": info["generation"], "images": 20}
    paths = client.get(f"{url}openapi.json").json()["paths"]
    assert {"/api/search", "/api/info", "/api/health", "/api/images/{image_id}"} <= set(paths)
    assert client.get(f"{url}docs").status_code == 200


def _truncated_jpeg() -> bytes:
    encoded = io.BytesIO()
    blocks(7, (200, 160)).save(encoded, "JPEG", quality=90)
    return encoded.getvalue()[: len(encoded.getvalue()) // 2]


def _pixel_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG whose header claims width x height pixels (the data is never reached)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "name, content, k, status, reason",
    [
        ("notes.jpg", b"not a picture", 5, 415, "notes.jpg: not an image"),
        ("cut.jpg", _truncated_jpeg(), 5, 400, "cut.jpg: cannot decode"),
        ("empty.png", b"", 5, 400, "empty.png: empty file"),
        ("big.png", b"\0" * (21 * 1024 * 1024), 5, 413, "larger than the 20 MB"),
        ("bomb.png", _pixel_bomb(), 5, 400, f"bomb.png: 900,000,000 pixels exceeds the {MAX_PIXELS:,}-pixel limit"),
        ("q.png", None, 0, 400, "k: "),
        ("q.png", None, 51, 400, "k: "),
    ],
)
def test_bad_uploads_get_a_status_and_one_line(open_server, gallery_index, name, content, k, status, reason):
    url, client = open_server
    content = (gallery_index[0] / "ants" / "01.png").read_bytes() if content is None else content
    response = client.post(f"{url}api/search", files={"image": (name, content)}, data={"k": str(k)})
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert reason in message and "\n" not in message and "Traceback" not in response.text


def test_missing_image_field_is_a_400(open_server):
    url, client = open_server
    response = client.post(f"{url}api/search", data={"k": "3"})
    assert response.status_code == 400 and response.json()["error"].startswith("image: ")


def test_the_frameworks_own_errors_come_in_the_apis_shape(open_server):
    """A multipart body that does not parse and an unknown route: {"error": one line}, not FastAPI's
    {"detail": ...} (issue 28)."""
    url, client = open_server
    broken = client.post(
        f"{url}api/search",
        content=b'--xyz\r\nContent-Disposition: form-data; name="image"\r\n',
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    missing = client.get(f"{url}api/nothing-here")
    for response, status in ((broken, 400), (missing, 404)):
        assert response.status_code == status and set(response.json()) == {"error"}, response.text
        assert response.json()["error"] and "\n" not in response.json()["error"]


def test_only_indexed_images_can_be_fetched(open_server, gallery_index):
    url, client = open_server
    root, index_dir = gallery_index
    ids = [h["id"] for h in post_image(client, url, root / "ants" / "01.png", k=20).json()["results"]]
    assert len(ids) == 20
    for image_id in ids:
        assert client.get(f"{url}api/images/{image_id}").status_code == 200
    assert client.get(f"{url}api/images/{max(ids) + 1}").status_code == 404
    for path in (
        root / "notes.env",
        root / "ants" / "notes.env",
        root / "ants" / "01.png",
        "/etc/passwd",
        index_dir / "CURRENT",
        root / ".." / "index" / "CURRENT",
    ):
        response = client.get(f"{url}gradio_api/file={path}")  # Gradio's file route: nothing of the gallery
        assert response.status_code in (403, 404) and SECRET not in response.text, path
    for trick in (
        "api/images/..%2F..%2Fetc%2Fpasswd",
        "api/images/../../etc/passwd",
        "api/images/-1",
        "api/images/1%2F..%2Fnotes.env",
        f"api/images/{ids[0]}?thumbnail=..%2Fnotes.env",
        "api/images/notes.env",
        "gradio_api/file=..%2F..%2Fetc%2Fpasswd",
        "api/images/%2e%2e/notes.env",
    ):
        response = client.get(url + trick)
        assert response.status_code in (400, 403, 404), trick
        assert SECRET not in response.text and "root:" not in response.text, trick


def test_access_control_on_the_api(guarded_server, gallery_index):
    url, client = guarded_server
    query = gallery_index[0] / "ants" / "02.png"
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-wrong-token"},
        {"Authorization": "Basic " + base64.b64encode(b"ann:nope").decode()},
    ):
        response = post_image(client, url, query, headers=headers)
        assert response.status_code == 401 and "Authorization" in response.json()["error"], headers
        assert client.get(f"{url}api/info", headers=headers).status_code == 401
    assert client.get(f"{url}api/health").status_code == 200  # liveness stays open
    for headers in (
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": "Basic " + base64.b64encode(b"ann:s3cret-pass").decode()},
    ):
        response = post_image(client, url, query, headers=headers)
        assert response.status_code == 200 and response.json()["results"][0]["path"] == "ants/02.png"
    hit = response.json()["results"][0]
    assert "sig=" in hit["url"] and client.get(hit["url"]).status_code == 200  # a signed link needs no header
    assert client.get(f"{url}api/images/{hit['id']}").status_code == 401
    tampered = hit["url"].replace(f"/images/{hit['id']}?", f"/images/{hit['id'] + 1}?")
    assert client.get(tampered).status_code == 401
    assert client.get(f"{url}api/images/{hit['id']}", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


@pytest.mark.slow
def test_access_control_on_the_page(guarded_server, gallery_index):
    gradio_client = pytest.importorskip("gradio_client")
    url, _ = guarded_server
    with pytest.raises(Exception):
        gradio_client.Client(url, verbose=False)
    client = gradio_client.Client(url, auth=("ann", "s3cret-pass"), verbose=False)
    answer = client.predict(gradio_client.handle_file(str(gallery_index[0] / "bees" / "05.png")), 3, api_name="/search")
    top = answer["results"][0]
    assert top["gallery_path"] == "bees/05.png" and "sig=" in top["url"]

"""Galleries in object storage, against a real local S3 server (moto in server mode, its own
process, spoken to over HTTP by s3fs and boto3; no mocked client): `build-index s3://...` with
the local engine and with Ray, incremental rules on objects, search, and the API serving images
from the bucket."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from metrix.index.build import build_index
from metrix.index.store import open_index

from .service_helpers import free_port, make_gallery, serve_process
from .test_index import assert_same
from .training_helpers import metrix_cli

boto3 = pytest.importorskip("boto3", reason="the s3 extra is not installed")
pytest.importorskip("s3fs", reason="the s3 extra is not installed")
pytestmark = pytest.mark.slow
BUCKET = "photos"


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on a free localhost port; the process environment points every client at
    it (AWS_ENDPOINT_URL, dummy credentials), as a user's shell would."""
    server = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
    if server is None:
        pytest.skip("moto[server] is not installed")
    port = free_port()
    process = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    settings = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError("the moto S3 server did not come up")
            time.sleep(0.1)
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    process.terminate()
    process.wait(10)
    for key, value in saved.items():
        os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


def upload(client, root: Path, prefix: str) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(root).as_posix()}")


def test_build_search_and_update_a_gallery_in_the_bucket(s3_server, tmp_path, tiny_model):
    root = tmp_path / "gallery"
    make_gallery(root, per_label=6)
    (root / "bad").mkdir()
    (root / "bad" / "text.jpg").write_text("not an image\n")
    (root / ".hidden.png").write_bytes((root / "ants" / "00.png").read_bytes())
    upload(s3_server, root, "g1")
    url = f"s3://{BUCKET}/g1"

    report = build_index(url, tiny_model, tmp_path / "s3", progress=False)
    build_index(root, tiny_model, tmp_path / "local", progress=False)
    assert report.count == 12 and [path for path, _ in report.failed] == ["bad/text.jpg"]
    s3_rows, local_rows = (
        json.loads(
            json.dumps(list(open_index(d).db.execute("SELECT id, path, sha256, label, width, height FROM images")))
        )
        for d in (tmp_path / "s3", tmp_path / "local")
    )
    assert s3_rows == local_rows
    assert open_index(tmp_path / "s3").manifest["gallery_root"] == url

    found = json.loads(
        metrix_cli("search", root / "bees" / "03.png", "--index", tmp_path / "s3", "-k", "3", "--json").stdout
    )
    assert found["results"][0]["path"] == "bees/03.png" and found["results"][0]["score"] > 0.9999

    s3_server.delete_object(Bucket=BUCKET, Key="g1/ants/00.png")
    s3_server.put_object(Bucket=BUCKET, Key="g1/ants/01.png", Body=(root / "bees" / "05.png").read_bytes())
    s3_server.put_object(Bucket=BUCKET, Key="g1/new.png", Body=(root / "bees" / "04.png").read_bytes())
    update = build_index(url, tiny_model, tmp_path / "s3", progress=False)
    assert (update.added, update.changed, update.removed, update.unchanged) == (1, 1, 1, 10)
    again = build_index(url, tiny_model, tmp_path / "s3", progress=False)
    assert again.generation == update.generation


def test_the_api_serves_images_from_the_bucket(s3_server, tmp_path, tiny_model):
    import httpx

    root = tmp_path / "gallery"
    make_gallery(root, per_label=3)
    upload(s3_server, root, "g2")
    build_index(f"s3://{BUCKET}/g2", tiny_model, tmp_path / "idx", progress=False)
    opened = open_index(tmp_path / "idx")
    (image_id,) = opened.db.execute("SELECT id FROM images WHERE path = 'bees/01.png'").fetchone()
    with serve_process(tmp_path / "idx") as (server, _), httpx.Client(timeout=60) as client:
        served = client.get(f"{server}api/images/{image_id}")
        assert served.status_code == 200 and served.content == (root / "bees" / "01.png").read_bytes()
        assert client.get(f"{server}api/images/{image_id}?thumbnail=32").headers["content-type"] == "image/jpeg"
        hits = client.post(
            f"{server}api/search", files={"image": ("q.png", (root / "ants" / "02.png").read_bytes())}, data={"k": "2"}
        ).json()["results"]
        assert hits[0]["path"] == "ants/02.png"
        s3_server.delete_object(Bucket=BUCKET, Key="g2/bees/01.png")
        gone = client.get(f"{server}api/images/{image_id}")
        assert gone.status_code == 404 and "missing" in gone.json()["error"]


def test_ray_build_of_a_bucket_from_the_command_line(s3_server, tmp_path, tiny_model):
    """The command a cluster user runs; Ray here is a local one that the command starts itself."""
    root = tmp_path / "gallery"
    make_gallery(root, per_label=4)
    upload(s3_server, root, "g3")
    result = metrix_cli(
        "build-index",
        f"s3://{BUCKET}/g3",
        "--engine",
        "ray",
        "--workers",
        "2",
        "--model",
        tiny_model,
        "--out",
        tmp_path / "ray",
        "--no-progress",
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert "8 images (IDMap2,Flat; about " in result.stdout, result.stdout + result.stderr
    build_index(f"s3://{BUCKET}/g3", tiny_model, tmp_path / "local", progress=False)
    assert_same(tmp_path / "ray", tmp_path / "local")


def test_bad_urls_fail_in_one_line(s3_server, tmp_path, tiny_model):
    for url, reason in (
        (f"s3://{BUCKET}/nothing-here", "no such bucket or prefix"),
        ("s3://no-such-bucket/x", "no such bucket"),
    ):
        failed = metrix_cli("build-index", url, "--model", tiny_model, "--out", tmp_path / "idx", check=False)
        assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and reason in failed.stderr, failed.stderr
    assert not (tmp_path / "idx" / "CURRENT").exists()

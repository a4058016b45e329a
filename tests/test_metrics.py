"""/metrics of a real `metrix serve`, alone and with --workers 2 (prometheus-client's multiprocess
mode), scraped after real requests and read with prometheus-client's own text parser; behind the
token when one is set."""

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metrix.index.build import build_index

from .service_helpers import make_gallery, post_image, serve_process

TOKEN = "metrics-token-0123456789"


def _samples(text: str) -> dict:
    """{(sample name, sorted labels): value} of every sample in the scrape."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def pids(responses) -> set:
    return {response.headers.get("x-metrix-worker") for response in responses}


def _value(samples: dict, name: str, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels` (over every other label)."""
    return sum(v for (n, have), v in samples.items() if n == name and set(labels.items()) <= set(have))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_a_scrape_counts_every_request_of_every_process(tmp_path, tiny_model, workers):
    gallery = tmp_path / "gallery"
    pictures = make_gallery(gallery, per_label=5)
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, index_type="flat", progress=False)
    scale = ("--workers", 2) if workers == 2 else ()
    with serve_process(index_dir, *scale) as (url, _), httpx.Client(timeout=30) as client:
        before = _samples(client.get(f"{url}metrics").text)
        searches = []  # a new connection each (keep-alive would stay with one worker), until both answered
        while len(searches) < len(pictures) or (workers == 2 and len(searches) < 200 and len(pids(searches)) < 2):
            picture = pictures[len(searches) % len(pictures)]
            searches.append(post_image(client, url, picture, k=3, headers={"Connection": "close"}))
        assert all(response.status_code == 200 for response in searches)
        assert client.get(f"{url}api/images/99999").status_code == 404
        scrape = client.get(f"{url}metrics")
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    after = _samples(scrape.text)
    search = {"method": "POST", "route": "/api/search", "status": "200"}
    counted = _value(after, "metrix_http_requests_total", **search) - _value(
        before, "metrix_http_requests_total", **search
    )
    assert counted == len(searches)
    assert _value(after, "metrix_http_requests_total", route="/api/images/{image_id}", status="404") == 1 + _value(
        before, "metrix_http_requests_total", route="/api/images/{image_id}", status="404"
    )
    timed = _value(after, "metrix_http_request_duration_seconds_count", method="POST", route="/api/search")
    assert timed - _value(
        before, "metrix_http_request_duration_seconds_count", method="POST", route="/api/search"
    ) == len(searches)
    queries = _value(after, "metrix_query_batch_size_sum") - _value(before, "metrix_query_batch_size_sum")
    assert queries == len(searches)  # every query was in one batch
    assert _value(after, "metrix_embed_seconds_count") == _value(after, "metrix_query_batch_size_count") >= 1
    assert _value(after, "metrix_gallery_images") == len(pictures)
    assert _value(after, "metrix_generation_info", generation="gen-000001") == 1
    assert 0 <= _value(after, "metrix_generation_age_seconds") < 600
    assert _value(after, "metrix_refused_generations") == 0
    assert len(pids(searches)) == workers  # with 2, the sums span both processes


@pytest.mark.slow
def test_metrics_need_the_token_when_one_is_set(tmp_path, tiny_model):
    gallery = tmp_path / "gallery"
    make_gallery(gallery, per_label=2)
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, progress=False)
    with serve_process(index_dir, "--token", TOKEN) as (url, _), httpx.Client(timeout=30) as client:
        assert client.get(f"{url}metrics").status_code == 401
        scrape = client.get(f"{url}metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert scrape.status_code == 200 and "metrix_gallery_images 4.0" in scrape.text
        assert client.get(f"{url}readyz").status_code in (200, 503)  # probes carry no token

"""`/metrics` in Prometheus' text format, with prometheus-client (the reference library).

Counted as they happen: requests per route and status and their latency, the size of each query
batch and the time its embedding and its search took (app/batching.py; with `--max-batch 1`
queries are not batched and only the request latency is timed). Read at each scrape from the
process that answers it: the generation served with its age, images and model, the recall the
server measured on its own queries (index/served_recall.py), the generations it refused.

With `metrix serve --workers N`, every process writes its counts to PROMETHEUS_MULTIPROC_DIR
(prometheus-client's multiprocess mode, set up by app/workers.py before the workers start) and a
scrape of any worker sums them all. Open like the API: on localhost by default, behind `--token`
when one is set.
"""

from __future__ import annotations

import os
import time
from datetime import datetime

from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from metrix.index.errors import IndexUnavailable

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("metrix_http_requests", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "metrix_http_request_duration_seconds",
    "Time to answer a request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BATCH_SIZE = Histogram(
    "metrix_query_batch_size", "Queries embedded and searched together", buckets=(1, 2, 4, 8, 16, 32, 64)
)
EMBED = Histogram(
    "metrix_embed_seconds",
    "Time to embed one batch of queries",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SEARCH = Histogram(
    "metrix_search_seconds",
    "Time to search one batch of queries",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)

router = APIRouter(tags=["operations"])


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


def record_batch(size: int, embed_seconds: float, search_seconds: float) -> None:
    BATCH_SIZE.observe(size)
    EMBED.observe(embed_seconds)
    SEARCH.observe(search_seconds)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request):
    from .api import refused, service  # app/api.py imports the batcher, which records here

    if (denied := refused(request)) is not None:
        return denied
    state = CollectorRegistry()
    state.register(_ServedState(service(request).live))
    return Response(_counted() + generate_latest(state), media_type=CONTENT_TYPE_LATEST)


def _counted() -> bytes:
    if os.environ.get(MULTIPROCESS_DIR):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


class _ServedState:
    """The served generation, as the answering process sees it at the scrape."""

    def __init__(self, live):
        self.live = live

    def collect(self):
        refused = GaugeMetricFamily("metrix_refused_generations", "Generations found damaged and not served")
        refused.add_metric([], len(self.live.damaged))
        yield refused
        try:
            snapshot = self.live.snapshot()
        except IndexUnavailable:
            return
        manifest = snapshot.index.manifest
        info = GaugeMetricFamily(
            "metrix_generation_info", "The generation served", labels=["generation", "model_sha256"]
        )
        info.add_metric([snapshot.index.generation, manifest["model"]["weights_sha256"][:12]], 1)
        yield info
        age = GaugeMetricFamily("metrix_generation_age_seconds", "Seconds since the served generation was built")
        age.add_metric([], time.time() - datetime.fromisoformat(manifest["updated"]).timestamp())
        yield age
        images = GaugeMetricFamily("metrix_gallery_images", "Images in the served generation")
        images.add_metric([], len(snapshot.index))
        yield images
        recall = self.live.recall.stats()
        if "recall_at_10" in recall:
            served = GaugeMetricFamily(
                "metrix_served_recall_at_10", "Recall@10 of the served queries against exact search"
            )
            served.add_metric([], recall["recall_at_10"])
            yield served

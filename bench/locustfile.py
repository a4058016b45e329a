"""The locust user bench/load.py drives `metrix serve` with: each user POSTs a real query image
(multipart `image`, form field k=10, as bench/api_latency.py does) to /api/search, back to back
(no think time, a closed loop), and checks that 10 hits came back.

Environment (bench/load.py sets it):
  METRIX_LOAD_QUERIES  a text file of query image paths, one a line
  METRIX_LOAD_TIMES    where to write each successful request's response time in ms (JSON list), for exact
                       percentiles (locust's own are rounded to two significant digits)

By hand, against a server already running on port 7860:
    METRIX_LOAD_QUERIES=queries.txt .venv/bin/locust -f bench/locustfile.py --headless \
        -u 8 -r 8 -t 60s --host http://127.0.0.1:7860 --csv /tmp/load
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from locust import HttpUser, constant, events, task

K = 10
QUERIES = [
    (Path(p).name, Path(p).read_bytes()) for p in Path(os.environ["METRIX_LOAD_QUERIES"]).read_text().split("\n") if p
]
TIMES: list[float] = []


@events.request.add_listener
def _record(request_type, name, response_time, response_length, exception, **_):
    if exception is None:  # successful searches only; failures are counted by locust
        TIMES.append(response_time)


@events.quitting.add_listener
def _write(environment, **_):
    out = os.environ.get("METRIX_LOAD_TIMES")
    if out:
        Path(out).write_text(json.dumps(TIMES))


class Searcher(HttpUser):
    wait_time = constant(0)

    def on_start(self):
        self.random = random.Random(id(self))

    @task
    def search(self):
        name, data = self.random.choice(QUERIES)
        with self.client.post(
            "/api/search", files={"image": (name, data)}, data={"k": str(K)}, name="/api/search", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif len(response.json().get("results", [])) != K:
                response.failure(f"{len(response.json().get('results', []))} hits, not {K}")

"""What the service tests share: a small gallery of distinct pictures, a free port, and a real
`metrix serve` process (or an in-process Server) on localhost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from .pictures import blocks

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
LABELS = ("ants", "bees")


def make_gallery(root: Path, per_label: int = 10, seed: int = 500) -> list[Path]:
    """per_label noisy block pictures under each of ants/ and bees/ (tests/pictures.py)."""
    paths = []
    for label in LABELS:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            path = root / label / f"{i:02d}.png"
            blocks(seed + 10 * len(label) * i + (label == "bees"), (72, 56)).save(path)
            paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen | None = None, timeout: float = 90) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            urllib.request.urlopen(f"{url}api/health", timeout=2)
            return time.perf_counter() - started
        except (urllib.error.URLError, ConnectionError):
            if process is not None and process.poll() is not None:
                raise AssertionError(f"metrix serve exited with {process.returncode}: {process.stdout.read()}")
            time.sleep(0.2)
    raise AssertionError(f"{url} did not come up within {timeout} s")


def launch_serve(index_dir: Path, *args, env: dict | None = None) -> tuple[str, subprocess.Popen]:
    """A real `metrix serve` process on a free port, started, not yet waited for: (url, process)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "metrix", "serve", "--index", str(index_dir), "--port", str(port), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    return f"http://127.0.0.1:{port}/", process


@contextmanager
def serve_process(index_dir: Path, *args, env: dict | None = None):
    """A real `metrix serve` process; yields (url, process)."""
    url, process = launch_serve(index_dir, *args, env=env)
    try:
        wait_until_up(url, process)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def post_image(client, url: str, path: Path, k: int = 5, **kwargs):
    """POST /api/search with a file, as `curl -F image=@path -F k=5` does."""
    return client.post(
        f"{url}api/search", files={"image": (path.name, path.read_bytes())}, data={"k": str(k)}, **kwargs
    )

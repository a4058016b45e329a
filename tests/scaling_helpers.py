"""What the tests of serving from several processes share (test_workers.py, test_ray_serve.py):
a real `metrix serve` started with extra options, a gallery that grows between builds, and asking
one address until several distinct processes have answered."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from metrix.index.store import CURRENT

from .service_helpers import launch_serve, make_gallery, post_image
from .training_helpers import metrix_cli


def build(gallery: Path, model: Path, index_dir: Path) -> str:
    """`metrix build-index` as a user runs it; the generation it made current."""
    metrix_cli("build-index", gallery, "--model", model, "--out", index_dir, "--no-progress")
    return (index_dir / CURRENT).read_text().strip()


def grow(gallery: Path, tmp: Path, per_label: int = 2) -> int:
    """Add per_label new pictures under each label of the gallery; how many were added."""
    added = make_gallery(tmp / "more", per_label=per_label, seed=900)
    for path in added:
        shutil.copy2(path, gallery / path.parent.name / f"new-{path.name}")
    return len(added)


def start_serve(index_dir: Path, *args, timeout: float = 90, env: dict | None = None) -> tuple[str, subprocess.Popen]:
    url, process = launch_serve(index_dir, *args, env=env)
    try:
        wait_until_up(url, process, timeout)
    except BaseException:
        stop(process)
        raise
    return url, process


def wait_until_up(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Until /api/health answers 200. A proxy (Ray Serve's) may accept and then hold a request
    while its replicas start, so a slow answer is waited out too, not only a refused connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}api/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise AssertionError(f"metrix serve exited with {process.returncode}: {process.stdout.read()}")
        time.sleep(0.2)
    raise AssertionError(f"{url} did not come up within {timeout} s")


def stop(process: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    """SIGTERM, as a service manager stops it; (exit status, everything it printed)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return process.returncode, output


def answers_by_process(
    url: str, header: str, want: int, picture: Path, deadline_s: float = 60, headers: dict | None = None
) -> dict[str, dict]:
    """Search on fresh connections until `want` distinct values of `header` have answered;
    {header value: that process's last answer}. Every search must succeed."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + deadline_s
    while len(seen) < want:
        assert time.monotonic() < deadline, f"only {sorted(seen)} answered within {deadline_s} s"
        with httpx.Client(timeout=30, headers=headers) as client:
            response = post_image(client, url, picture, k=3)
        assert response.status_code == 200, response.text
        seen[response.headers[header]] = response.json()
    return seen


def until_all_serve(url: str, header: str, processes: set[str], generation: str, deadline_s: float = 30) -> None:
    """Ask /api/health on fresh connections until every one of `processes` reports `generation`."""
    pending = set(processes)
    deadline = time.monotonic() + deadline_s
    while pending:
        assert time.monotonic() < deadline, f"{sorted(pending)} still not serving {generation}"
        response = httpx.get(f"{url}api/health", timeout=30, headers={"Connection": "close"})
        assert response.status_code == 200, response.text
        if response.json()["generation"] == generation:
            pending.discard(response.headers[header])
        else:
            time.sleep(0.1)

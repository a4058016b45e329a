"""`build-index --engine ray` on a real local Ray cluster (2 CPUs, started by the test): the same
index as a local build of the same gallery (ids, paths, metadata, vectors to 1e-6, bad-file
report), the same incremental rules, and a worker killed with SIGKILL mid-build retried by Ray."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from metrix.index.build import build_index
from metrix.index.ray_engine import RayOptions

from .pictures import blocks
from .test_index import assert_same, consistent_state, write_bad, write_good

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_build_equals_the_local_build(cluster, tmp_path, tiny_model):
    root = tmp_path / "gallery"
    good = write_good(root)
    bad = write_bad(root)
    options = RayOptions(workers=2, batch_size=4)
    ray_report = build_index(root, tiny_model, tmp_path / "ray", ray=options, progress=False)
    build_index(root, tiny_model, tmp_path / "local", progress=False)
    assert ray_report.count == len(good) and {path for path, _ in ray_report.failed} == bad
    assert_same(tmp_path / "ray", tmp_path / "local")
    assert consistent_state(tmp_path / "ray") == len(good)

    (root / "birds" / "00.jpg").unlink()
    blocks(300).save(root / "birds" / "01.jpg")  # new content, same path
    blocks(301).save(root / "new.png")
    again = build_index(root, tiny_model, tmp_path / "ray", ray=options, progress=False)
    build_index(root, tiny_model, tmp_path / "local", progress=False)
    assert (again.added, again.changed, again.removed) == (1, 1, 1)
    assert_same(tmp_path / "ray", tmp_path / "local")
    unchanged = build_index(root, tiny_model, tmp_path / "ray", ray=options, progress=False)
    assert unchanged.generation == again.generation and unchanged.unchanged == len(good)


def _map_workers() -> list[int]:
    """Pids of Ray Data's actor processes (their title names the map they run)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"MapWorker" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_worker_killed_mid_build_is_retried(cluster, tmp_path, tiny_model):
    """The kill comes as soon as an actor process exists: 600 images in batches of one keep the
    build busy for seconds after that on any machine, so the kill always lands mid-build."""
    root = tmp_path / "gallery"
    for label in range(6):
        (root / f"c{label}").mkdir(parents=True)
    for i in range(600):
        blocks(i).save(root / f"c{i % 6}" / f"{i:03d}.png")
    build_index(root, tiny_model, tmp_path / "local", progress=False)
    outcome = {}

    def build():
        try:
            outcome["report"] = build_index(
                root, tiny_model, tmp_path / "ray", ray=RayOptions(workers=2, batch_size=1), progress=False
            )
        except Exception as error:  # noqa: BLE001 - the assertion below says what was raised
            outcome["error"] = error

    thread = threading.Thread(target=build)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not (victims := _map_workers()) and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert victims and thread.is_alive(), "the build ended before a worker could be killed"
        os.kill(victims[0], signal.SIGKILL)
    finally:
        thread.join(300)
    assert not thread.is_alive()
    assert "error" not in outcome, outcome.get("error")
    assert outcome["report"].count == 600
    assert_same(tmp_path / "ray", tmp_path / "local")

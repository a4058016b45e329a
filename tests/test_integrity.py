"""An index never serves corruption (issue 26), with real processes and real files:

- a fault-injection matrix: every file of a generation, a byte flipped in the middle or the end
  cut off; each fault must be found by `metrix search`, by a running `metrix serve` (which keeps
  answering from the good generation while a client queries throughout) and by `metrix index
  verify`;
- scores outside the cosine range are integrity errors on every kind of search;
- writes that fail (a file-size limit at many sizes, a read-only folder, a full disk) end in one
  line, leave the previous generation intact and searchable, and leave nothing behind;
- `metrix serve` stops gracefully on SIGTERM; `--keep` retention.
"""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from metrix.index.build import build_index
from metrix.index.errors import IndexIntegrityError
from metrix.index.integrity import check_scores, crc32_of, manifest_text
from metrix.index.live import LiveIndex
from metrix.index.store import CURRENT, generations, open_index, write_atomically
from metrix.index.vectors import FullVectors

from .service_helpers import make_gallery, post_image, serve_process
from .training_helpers import metrix_cli

GOOD = "gen-000001"


@pytest.fixture(scope="module")
def ivfpq_index(tmp_path_factory, tiny_model):
    """An IVF-PQ index, so that a generation holds every kind of file: index, SQLite, manifest and
    the full vectors with their ids."""
    root = tmp_path_factory.mktemp("integrity")
    gallery = root / "gallery"
    make_gallery(gallery, per_label=150)
    build_index(gallery, tiny_model, root / "index", max_memory=45_000, progress=False)
    files = sorted(p.name for p in (root / "index" / GOOD).iterdir())
    assert files == ["index.faiss", "manifest.json", "metadata.sqlite", "vector_ids.npy", "vectors.npy"]
    return gallery, root / "index", files


def _writable(*paths: Path) -> None:
    """A committed generation's files are read-only (0444); a test that damages one says so first."""
    for path in paths:
        os.chmod(path, 0o644)


def _damage(path: Path, fault: str) -> None:
    _writable(path)
    data = bytearray(path.read_bytes())
    if fault == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) * 9 // 10]
    path.write_bytes(bytes(data))


class Client(threading.Thread):
    """Queries the server throughout; records the generation and largest |score| of every answer."""

    def __init__(self, url: str, query: Path):
        super().__init__(daemon=True)
        self.url, self.query, self.answers, self.failures = url, query, [], []
        self.stop = threading.Event()

    def run(self):
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                response = post_image(client, self.url, self.query, k=5)
                if response.status_code != 200:
                    self.failures.append(response.text)
                else:
                    body = response.json()
                    self.answers.append((body["generation"], max(abs(h["score"]) for h in body["results"])))
                time.sleep(0.05)


@pytest.mark.slow
def test_fault_matrix_no_damaged_file_is_ever_searched(ivfpq_index, tmp_path):
    gallery, index_dir, files = ivfpq_index
    index_dir = Path(shutil.copytree(index_dir, tmp_path / "index"))
    query = sorted((gallery / "ants").iterdir())[3]
    tally = {"tried": 0, "search": 0, "serve": 0, "verify": 0, "tracebacks": 0}
    with serve_process(index_dir) as (url, process):
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
        client = Client(url, query)
        client.start()
        number = 1
        for name in files:
            for fault in ("flip", "truncate"):
                number += 1
                generation = f"gen-{number:06d}"
                shutil.copytree(index_dir / GOOD, index_dir / generation)
                _damage(index_dir / generation / name, fault)
                write_atomically(index_dir / CURRENT, generation)
                tally["tried"] += 1

                searched = metrix_cli("search", query, "--index", index_dir, check=False)
                tally["tracebacks"] += "Traceback" in searched.stderr + searched.stdout
                error = searched.stderr.strip().splitlines()
                if searched.returncode != 0 and len(error) == 1 and name in error[0]:
                    tally["search"] += 1

                verified = metrix_cli("index", "verify", index_dir, check=False)
                tally["tracebacks"] += "Traceback" in verified.stderr + verified.stdout
                if verified.returncode == 1 and any(
                    f"{generation}/{name}" in line for line in verified.stdout.splitlines()
                ):
                    tally["verify"] += 1

                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not any(
                    f"cannot switch to {generation}" in line for line in lines
                ):
                    time.sleep(0.1)
                refusals = [line for line in lines if f"cannot switch to {generation}" in line]
                tally["serve"] += len(refusals) == 1 and name in refusals[0]
        time.sleep(1.5)  # the watcher looks again: a refused generation is not retried (nor logged again)
        client.stop.set()
        client.join(30)
        tally["tracebacks"] += sum("Traceback" in line for line in lines)
        damaged_answers = [a for a in client.answers if a[0] != GOOD or a[1] > 1.0001]
    print(
        f"\nfault matrix: {tally}, {len(client.answers)} answers during it, {len(damaged_answers)} from a damaged file"
    )
    assert tally == {"tried": 10, "search": 10, "serve": 10, "verify": 10, "tracebacks": 0}
    assert len(client.answers) > 20 and not damaged_answers and not client.failures
    assert sum("cannot switch to" in line for line in lines) == 10


def test_a_good_index_verifies_and_its_manifest_is_sealed(ivfpq_index):
    _, index_dir, files = ivfpq_index
    result = metrix_cli("index", "verify", index_dir)
    assert result.stdout.strip() == f"ok: {GOOD} (current): {len(files)} files verified"
    raw = (index_dir / GOOD / "manifest.json").read_text()
    manifest = json.loads(raw)
    assert set(manifest["files"]) == set(files) - {"manifest.json"} and manifest_text(manifest) == raw
    assert all(len(entry["crc32"]) == 8 for entry in manifest["files"].values())
    assert {stat.S_IMODE((index_dir / GOOD / name).stat().st_mode) for name in files} == {0o444}  # read-only


def test_a_changed_manifest_value_is_caught_even_when_it_still_parses(ivfpq_index, tmp_path):
    _, index_dir, _ = ivfpq_index
    index_dir = Path(shutil.copytree(index_dir, tmp_path / "index"))
    path = index_dir / GOOD / "manifest.json"
    _writable(path)
    path.write_text(path.read_text().replace('"nprobe": ', '"nprobe": 1', 1))  # still valid JSON
    with pytest.raises(IndexIntegrityError, match=r"manifest\.json: does not match its checksum"):
        open_index(index_dir)


def test_scores_outside_the_cosine_range_are_integrity_errors_on_every_search(ivfpq_index, tmp_path, tiny_model):
    """What the checksums cannot see (a writer's bug, say) is still never answered."""
    import faiss

    gallery, index_dir, _ = ivfpq_index
    opened = open_index(index_dir)
    query = opened.vectors([0])
    assert opened.search(query, 5)[0][0].id == 0  # sound first
    opened.full = FullVectors(opened.full.ids, 3 * np.asarray(opened.full.vectors))  # the exact re-rank's vectors
    with pytest.raises(IndexIntegrityError, match="outside the cosine range"):
        opened.search(query, 5)
    with pytest.raises(IndexIntegrityError, match="outside the cosine range"):
        opened.search(query, 5, only=np.arange(10))
    # a flat index whose file was rewritten with its checksum: `metrix search` says so in one line
    flat_dir = tmp_path / "flat"
    build_index(gallery, tiny_model, flat_dir, index_type="flat", progress=False)
    folder = flat_dir / GOOD
    flat = faiss.read_index(str(folder / "index.faiss"))
    ids = faiss.vector_to_array(flat.id_map)
    vectors = np.stack([flat.reconstruct(int(i)) for i in ids])
    scaled = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    scaled.add_with_ids(50 * vectors, ids)
    _writable(folder / "index.faiss", folder / "manifest.json")
    faiss.write_index(scaled, str(folder / "index.faiss"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["index.faiss"] = {
        "bytes": (folder / "index.faiss").stat().st_size,
        "crc32": crc32_of(folder / "index.faiss"),
    }
    (folder / "manifest.json").write_text(manifest_text(manifest))
    searched = metrix_cli("search", next((gallery / "bees").iterdir()), "--index", flat_dir, check=False)
    assert searched.returncode != 0 and "outside the cosine range" in searched.stderr
    assert len(searched.stderr.strip().splitlines()) == 1 and "Traceback" not in searched.stderr


def test_check_scores_ignores_empty_places_and_catches_nan():
    ids = np.array([[3, -1]])
    check_scores(np.array([[0.5, -3.4e38]], np.float32), ids, Path("x"))
    with pytest.raises(IndexIntegrityError):
        check_scores(np.array([[np.nan, 0.0]], np.float32), ids, Path("x"))
    with pytest.raises(IndexIntegrityError):
        check_scores(np.array([[-1.01, 0.0]], np.float32), ids, Path("x"))


# ---- writes that fail -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """The untrained Lite0 floor at 32 px: 1280-d vectors, so the vector files of a build outgrow
    its SQLite file and a file-size limit can land in each of them."""
    path = tmp_path_factory.mktemp("floor") / "floor.onnx"
    metrix_cli("export", "--backbone", "efficientnet_lite0", "--image-size", 32, "--output", path)
    return path


@pytest.fixture
def updatable(tmp_path, wide_model):
    """A committed generation of a flat index over 60 images, and 60 new images waiting."""
    gallery = tmp_path / "gallery"
    make_gallery(gallery, per_label=30)
    index_dir = tmp_path / "index"
    build_index(gallery, wide_model, index_dir, index_type="flat", progress=False)
    make_gallery(gallery / "more", per_label=30, seed=900)
    return gallery, index_dir


def _build_in_subprocess(gallery, index_dir, model, preexec=None, wrap=()):
    return subprocess.run(
        [
            *wrap,
            sys.executable,
            "-m",
            "metrix",
            "build-index",
            str(gallery),
            "--model",
            str(model),
            "--out",
            str(index_dir),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        preexec_fn=preexec,
    )


def _assert_unchanged(index_dir, result, count=60):
    error = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(error) == 1, result.stderr
    assert "Traceback" not in result.stderr and f"the index is unchanged at {GOOD}" in error[0]
    assert (index_dir / CURRENT).read_text().strip() == GOOD and generations(index_dir) == [GOOD]
    assert sorted(p.name for p in index_dir.iterdir()) == [".lock", CURRENT, GOOD, "report.json"]
    opened = open_index(index_dir)  # verified, and still answers
    assert len(opened) == count and opened.search(opened.vectors([0]), 3)[0][0].id == 0
    return error[0]


@pytest.mark.slow
def test_a_file_size_limit_anywhere_in_a_build_leaves_the_index_as_it_was(updatable, wide_model):
    """The limits land in SQLite's copy of the rows, the rows added, the spooled vectors (60 x
    1280-d) and the new index (120 x 1280-d), in the order the build writes them."""
    import resource

    gallery, index_dir = updatable
    index_bytes = (index_dir / GOOD / "index.faiss").stat().st_size
    messages = set()
    for limit in (1024, 8192, 20_000, 100_000, 300_000, index_bytes, 2 * index_bytes - 100_000):

        def cap(limit=limit):
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

        result = _build_in_subprocess(gallery, index_dir, wide_model, preexec=cap)
        if result.returncode == 0:  # every file of the new generation fitted: then nothing is left to test here
            pytest.fail(f"a build under a {limit}-byte limit succeeded: {result.stdout}")
        messages.add(_assert_unchanged(index_dir, result).split(" in ")[0])
    print(f"\nfile-size limits gave: {sorted(messages)}")
    assert len(messages) >= 2  # the failure landed in different files (SQLite's copy, the index, the vectors)
    assert _build_in_subprocess(gallery, index_dir, wide_model).returncode == 0  # and then a build goes through
    assert len(open_index(index_dir)) == 120


def _in_private_mount(*commands: str) -> list[str] | None:
    """`unshare -m` runs commands with mounts of their own, gone with the process; None where that
    is not allowed (no root, or a container that forbids it)."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1k tmpfs /mnt"], capture_output=True)
    if probe.returncode != 0 or os.geteuid() != 0:
        return None
    return ["unshare", "-m", "sh", "-c", " && ".join(commands) + ' && exec "$0" "$@"']


@pytest.mark.slow
def test_a_read_only_index_folder_leaves_the_index_as_it_was(updatable, wide_model):
    gallery, index_dir = updatable
    wrap = _in_private_mount(f"mount --bind {index_dir} {index_dir}", f"mount -o remount,bind,ro {index_dir}")
    if wrap is None:
        pytest.skip("no private mounts here (needs root and unshare -m)")
    result = _build_in_subprocess(gallery, index_dir, wide_model, wrap=wrap)
    assert "read-only file system" in _assert_unchanged(index_dir, result)


@pytest.mark.slow
def test_a_full_disk_leaves_the_index_as_it_was(updatable, wide_model, tmp_path):
    gallery, index_dir = updatable
    size = sum(p.stat().st_size for p in index_dir.rglob("*") if p.is_file())
    full = tmp_path / "full"
    full.mkdir()
    # a file system with room for the index as it is and a little more, not for a second generation
    wrap = _in_private_mount(f"mount -t tmpfs -o size={size + 16384} tmpfs {full}", f"cp -a {index_dir} {full}/index")
    if wrap is None:
        pytest.skip("no private mounts here (needs root and unshare -m)")
    script = (
        f'"$0" -m metrix build-index {gallery} --model {wide_model} --out {full}/index --no-progress; '
        f'echo "exit $?"; ls -A {full}/index; "$0" -m metrix index verify {full}/index'
    )
    result = subprocess.run(
        [*wrap[:-1], wrap[-1].replace('exec "$0" "$@"', script), sys.executable], capture_output=True, text=True
    )
    assert f"no space left on {full}: the index is unchanged at {GOOD}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout.splitlines()
    assert out[0] != "exit 0" and out[0].startswith("exit ")
    assert sorted(out[1:5]) == [".lock", CURRENT, GOOD, "report.json"]
    assert out[5] == f"ok: {GOOD} (current): 3 files verified"


# ---- retention and shutdown -------------------------------------------------------------------


def test_keep_leaves_that_many_generations_and_an_open_older_one_still_answers(tmp_path, tiny_model):
    gallery = tmp_path / "gallery"
    make_gallery(gallery, per_label=3)
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, progress=False, keep=2)
    live = None
    for round_ in range(4):
        make_gallery(gallery / f"r{round_}", per_label=1, seed=700 + round_)
        build_index(gallery, tiny_model, index_dir, progress=False, keep=2)
        if round_ == 2:
            live = LiveIndex(index_dir)  # opens gen-000004
    assert generations(index_dir) == ["gen-000004", "gen-000005"]
    snapshot = live.snapshot().index
    assert snapshot.generation == "gen-000004" and len(snapshot.search(snapshot.vectors([0]), 3)[0]) == 3
    build_index(gallery, tiny_model, index_dir, progress=False, keep=1, rebuild=True)
    assert generations(index_dir) == ["gen-000006"]


@pytest.mark.slow
def test_sigterm_lets_queries_finish_and_exits_zero(tmp_path, tiny_model):
    gallery = tmp_path / "gallery"
    make_gallery(gallery, per_label=5)
    build_index(gallery, tiny_model, tmp_path / "index", progress=False)
    query = next((gallery / "ants").iterdir())
    outcomes: list[str] = []
    stop = threading.Event()

    def ask():
        while not stop.is_set():
            try:  # a new connection each time: a refused one is the clean answer of a stopped server
                with httpx.Client(timeout=30) as client:
                    status = post_image(client, url, query).status_code
                outcomes.append("200" if status == 200 else f"status {status}")
            except httpx.ConnectError:
                outcomes.append("refused")
                time.sleep(0.05)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                # a connection the kernel had queued when the listening socket closed is reset
                # unread; a request cut short in the server would show in its log (below)
                outcomes.append("reset")
            except httpx.HTTPError as error:
                outcomes.append(f"{type(error).__name__}")

    with serve_process(tmp_path / "index") as (url, process):
        clients = [threading.Thread(target=ask, daemon=True) for _ in range(4)]
        for client in clients:
            client.start()
        time.sleep(3)
        answered_before = outcomes.count("200")
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        time.sleep(0.5)
        stop.set()
        for client in clients:
            client.join(30)
        output = process.stdout.read()
    assert code == 0, output
    assert answered_before > 4 and "refused" in outcomes
    assert set(outcomes) <= {"200", "refused", "reset"}, sorted(set(outcomes))
    assert outcomes.count("reset") <= len(clients)  # at most one queued connection per client
    assert "Traceback" not in output and "Cancel" not in output and "graceful shutdown exceeded" not in output, output


# ---- damage under a running server ------------------------------------------------------------------


def _flip_signs_in_the_middle(path: Path) -> None:
    """In place, the size kept: the top bit of every 4th byte of 4 kB in the middle (float32 signs
    where the codes are aligned so, else other bits): the vectors there change."""
    _writable(path)
    with open(path, "r+b") as file:
        middle = file.seek(0, os.SEEK_END) // 2 & ~3
        file.seek(middle)
        block = bytearray(file.read(4096))
        block[3::4] = bytes(byte ^ 0x80 for byte in block[3::4])
        file.seek(middle)
        file.write(block)


def _truncate(path: Path) -> None:
    _writable(path)
    os.truncate(path, path.stat().st_size * 9 // 10)


def _rewritten(path: Path, scale: float, signs: bool, in_place: bool) -> None:
    """The index rewritten with other vectors: scaled, or a twentieth of each one's components
    negated (what a user saw: the query's own image at 0.94, another in the top 5); in place (the
    same size and inode) or as a new file renamed over it."""
    import faiss

    index = faiss.read_index(str(path))
    ids = faiss.vector_to_array(index.id_map)
    vectors = scale * np.stack([index.reconstruct(int(i)) for i in ids])
    if signs:
        vectors[:, : max(1, index.d // 20)] *= -1
    other = faiss.IndexIDMap2(faiss.IndexFlatIP(index.d))
    other.add_with_ids(vectors, ids)
    data = faiss.serialize_index(other).tobytes()
    if in_place:
        _writable(path)
        with open(path, "r+b") as file:
            file.write(data)
    else:
        path.with_suffix(".new").write_bytes(data)
        os.replace(path.with_suffix(".new"), path)


FAULTS = {
    "flip": _flip_signs_in_the_middle,
    "truncate": _truncate,
    "signs in place": lambda path: _rewritten(path, 1.0, signs=True, in_place=True),
    "scaled, renamed": lambda path: _rewritten(path, 3.0, signs=False, in_place=False),
}


class Recorder(threading.Thread):
    """Searches throughout, one query at a time, on fresh connections (so every worker is met);
    records (status, body or None, the answer's generation and (id, score) pairs)."""

    def __init__(self, url: str, query: Path):
        super().__init__(daemon=True)
        self.url, self.query, self.answers, self.dropped = url, query, [], 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                with httpx.Client(timeout=30, headers={"Connection": "close"}) as client:
                    response = post_image(client, self.url, self.query, k=5)
            except httpx.TransportError:  # a worker killed mid-answer (SIGBUS on a truncated map) is restarted
                self.dropped += 1
                continue
            self.answers.append((response.status_code, response.text, *_hits(response)))
            time.sleep(0.02)


def _hits(response) -> tuple[str | None, list[tuple[int, float]]]:
    if response.status_code != 200:
        return None, []
    body = response.json()
    return body["generation"], [(hit["id"], hit["score"]) for hit in body["results"]]


def _until(url: str, want, seconds: float = 20, times: int = 8) -> None:
    """Until /api/health, asked on fresh connections, answers `want` (a generation, or 503) `times`
    in a row: every process of the server has taken it."""
    deadline, streak = time.monotonic() + seconds, 0
    while streak < times:
        assert time.monotonic() < deadline, f"the server did not come to {want}"
        try:
            response = httpx.get(f"{url}api/health", timeout=10, headers={"Connection": "close"})
        except httpx.TransportError:
            streak = 0
            continue
        got = response.json().get("generation") if response.status_code == 200 else response.status_code
        streak = streak + 1 if got == want else 0
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_damage_after_the_server_opened_the_generation_is_never_answered(tmp_path, tiny_model, workers):
    """Files of the served generation damaged under a running `metrix serve` (memory-mapped with
    --workers 2): no answer from changed bytes, the previous generation that verifies serves at
    once, 503 when none does, and no answer names a folder of the server."""
    gallery = tmp_path / "gallery"
    make_gallery(gallery, per_label=6)
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, index_type="flat", progress=False)
    make_gallery(gallery / "more", per_label=2, seed=900)
    build_index(gallery, tiny_model, index_dir, index_type="flat", progress=False)
    pristine = Path(shutil.copytree(index_dir / "gen-000002", tmp_path / "pristine"))
    write_atomically(index_dir / CURRENT, GOOD)
    query = gallery / "ants" / "03.png"
    scale = ("--workers", 2) if workers == 2 else ()
    with serve_process(index_dir, "--verify-interval", 1, *scale) as (url, process):
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True).start()
        with httpx.Client(timeout=30) as client:
            good = {GOOD: _hits(post_image(client, url, query))[1]}
            write_atomically(index_dir / CURRENT, "gen-000002")
            _until(url, "gen-000002")
            good["copy"] = _hits(post_image(client, url, query))[1]
            info = client.get(f"{url}api/info")
            bad_id = client.post(
                f"{url}api/search", files={"image": ("q.png", query.read_bytes())}, data={"right": "99999999"}
            )
        assert info.json()["index"] == "index" and bad_id.status_code == 400
        assert bad_id.json()["error"] == "right: id 99999999 is not in the index (gen-000002)"
        client_thread = Recorder(url, query)
        client_thread.start()
        damaged = []
        for number, (fault, damage) in enumerate(FAULTS.items(), 2):
            generation = f"gen-{number:06d}"
            if number > 2:  # a fresh good copy to serve, then damaged in turn
                shutil.copytree(pristine, index_dir / generation)
                write_atomically(index_dir / CURRENT, generation)
                _until(url, generation)
            time.sleep(0.3)  # answers from the good copy
            damage(index_dir / generation / "index.faiss")
            damaged.append(generation)
            _until(url, GOOD)  # the previous generation that verifies, in every process
            time.sleep(0.3)
        _flip_signs_in_the_middle(index_dir / GOOD / "index.faiss")  # and now the last one that verified
        _until(url, 503)
        time.sleep(0.3)
        client_thread.stop.set()
        client_thread.join(30)
        with httpx.Client(timeout=30) as client:
            unavailable = [client.get(f"{url}api/{route}") for route in ("health", "info", "labels")]
        output = "".join(lines)
    answers = client_thread.answers
    reference = {generation: good[GOOD if generation == GOOD else "copy"] for generation in [GOOD, *damaged]}
    served = [a for a in answers if a[0] == 200]
    corrupted = [
        a
        for a in served
        if [i for i, _ in a[3]] != [i for i, _ in reference[a[2]]]
        or not np.allclose([s for _, s in a[3]], [s for _, s in reference[a[2]]], atol=1e-5)
        or max(abs(s) for _, s in a[3]) > 1.0001
    ]
    errors = [a for a in answers if a[0] != 200] + [(r.status_code, r.text) for r in unavailable]
    folders = {str(index_dir), str(index_dir.resolve())}
    leaks = [text for _, text, *_ in [*errors, (0, info.text)] if any(folder in text for folder in folders)]
    print(
        f"\nworkers {workers}: {len(served)} answers ({sum(a[2] == GOOD for a in served)} from {GOOD}), "
        f"{len(corrupted)} corrupted, {len(errors)} errors ({sorted({a[0] for a in errors})}), {len(leaks)} naming "
        f"a server path, {client_thread.dropped} dropped connections"
    )
    assert good[GOOD][0][0] == good["copy"][0][0] and good["copy"][0][1] > 0.999  # the query's own image
    assert not corrupted and not leaks and len(served) > 20
    assert {a[0] for a in errors} == {503} and all("no generation of index index verifies" in a[1] for a in errors)
    assert "Traceback" not in output, output
    for generation in [*damaged, GOOD]:
        logged = [line for line in lines if f"{generation} is damaged" in line]
        assert logged and all(f"{generation}/index.faiss" in line for line in logged), (generation, output)
        assert len(logged) <= (1 if workers == 1 else workers + 1), logged  # once per process (the supervisor's too)
    if workers == 1:
        assert client_thread.dropped == 0


# ---- recovery ------------------------------------------------------------------------------------


def test_build_index_updates_from_the_newest_generation_that_verifies(tmp_path, tiny_model):
    gallery = tmp_path / "gallery"
    make_gallery(gallery, per_label=4)
    index_dir = tmp_path / "index"
    build_index(gallery, tiny_model, index_dir, progress=False)
    make_gallery(gallery / "more", per_label=2, seed=900)
    build_index(gallery, tiny_model, index_dir, progress=False)
    make_gallery(gallery / "later", per_label=1, seed=950)  # in no generation yet
    _damage(index_dir / "gen-000002" / "index.faiss", "flip")
    with pytest.raises(IndexIntegrityError) as raised:
        open_index(index_dir)
    manifest = json.loads((index_dir / GOOD / "manifest.json").read_text())
    command = f"`metrix build-index {manifest['gallery_root']} --model {manifest['model']['path']} --out {index_dir}`"
    assert command in str(raised.value)  # the exact command, as the user runs it

    built = metrix_cli("build-index", gallery, "--model", tiny_model, "--out", index_dir, "--no-progress")
    assert (
        "gen-000002 is damaged (index.faiss: does not match its checksum: the file is damaged); updated "
        f"from {GOOD}, the newest generation that verifies"
    ) in built.stdout
    assert "added 6, changed 0, removed 0, unchanged 8" in built.stdout  # only what gen-000001 lacks is embedded
    assert generations(index_dir) == [GOOD, "gen-000003"]  # the damaged one is gone, the sound one kept
    verified = metrix_cli("index", "verify", index_dir)
    assert verified.stdout.splitlines()[-1] == "ok: gen-000003 (current): 3 files verified"
    assert len(open_index(index_dir)) == 14

    for generation in generations(index_dir):  # none left that verifies: the command that re-embeds
        _damage(index_dir / generation / "metadata.sqlite", "truncate")
    failed = metrix_cli("build-index", gallery, "--model", tiny_model, "--out", index_dir, "--no-progress", check=False)
    error = failed.stderr.strip().splitlines()
    assert failed.returncode != 0 and len(error) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert "gen-000003 is damaged (metadata.sqlite: " in error[0] and "no generation before it verifies" in error[0]
    assert error[0].endswith(f"{command[:-1]} --rebuild`"), error[0]

"""Load test of a real `metrix serve` under concurrent users (issue 30: serving at scale).

For each gallery size (default 100,000 and 1,000,000 images) it builds a gallery whose query
neighbourhoods are real (bench/scale_gallery.py: the real images embedded by the model with
`metrix build-index`, plus filler files with vectors drawn around the real embeddings), lets
`metrix build-index --index-type T [--max-index-memory M]` plan its index, starts `metrix serve`
on it on a free loopback port, and drives it with locust (headless, its CLI, bench/locustfile.py):
closed-loop users that POST held-out query images to /api/search with k=10, back to back.

Per level (default 1, 8 and 32 users, --duration seconds each): queries/s, p50 and p99 latency
of the successful searches (exact, from every response time), errors (non-200 or fewer than 10
hits), and the server's RSS (VmRSS of /proc/PID/status, summed over the server and its child
processes, e.g. with --workers; sampled every 0.5 s): at the level's start, its maximum during
the level, and the growth in %; the JSON also has the PSS sum (smaps_rollup), which counts pages
shared between worker processes once. --soak MINUTES adds, on the largest gallery only, a run of
--soak-users (default 32) users that long, with the RSS every 10 s. The server's start (loading
and checksumming the index) is timed too. Locust runs on the same machine as the server and takes
some of its CPU (little at these rates: a search costs far more than a request).

    # the measurement (a trained model's export; without --model: the untrained floor model, 1280-d)
    .venv/bin/python bench/load.py --model runs/RUN/checkpoints/epoch-NNNN/model.onnx \
        --sizes 100000 1000000 --levels 1 8 32 --duration 60 --soak 10 --work /tmp/metrix-load
    # before/after a server change, on the same galleries (--work keeps and reuses them)
    .venv/bin/python bench/load.py --model M --work /tmp/metrix-load --serve-args "--workers 2" \
        --out bench/results/load-workers2.json
    # another index (build-index re-plans the kept gallery in place; nothing is re-embedded)
    .venv/bin/python bench/load.py --model M --work /tmp/metrix-load --index-type hnsw --out bench/results/load-hnsw.json
    # smoke test
    .venv/bin/python bench/load.py --sizes 2000 --real 300 --queries 20 --levels 1 4 --duration 5 --out /tmp/load.json

On 2 idle cores: embedding cub100 (~5,700 images) 2-3 min once; growing to 1M files 3-5 min
once; build-index's plan at 1M (auto measures IVF and HNSW) tens of minutes; each size's levels
3 x --duration plus the server's start; the soak --soak minutes.

Writes --out (default bench/results/load.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from scale_gallery import REPO, add_gallery_arguments, default_model, log, prepare, write_results  # noqa: E402

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
SAMPLE_S = 0.5


def _status_kb(pid: int, field: str, file: str = "status") -> int | None:
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process in kB, None once it is gone."""
    return _status_kb(pid, "VmRSS")


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (a server with --workers runs its API in child processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def tree_kb(pid: int) -> tuple[int, int, int] | None:
    """(VmRSS summed over the server's process tree, PSS summed likewise, processes) in kB: the
    RSS sum counts pages shared between processes (the forked code, a memory-mapped index) once
    per process, PSS divides them among their sharers. None once the server is gone."""
    if rss_kb(pid) is None:
        return None
    pids = tree(pid)
    rss = sum(_status_kb(p, "VmRSS") or 0 for p in pids)
    pss = sum(_status_kb(p, "Pss", "smaps_rollup") or 0 for p in pids)
    return rss, pss, len(pids)


class RssSampler:
    """tree_kb(pid) every SAMPLE_S seconds in a thread, as (seconds since start, rss kB, pss kB, processes)."""

    def __init__(self, pid: int):
        self.pid, self.samples, self.stop = pid, [], threading.Event()
        self.started = time.perf_counter()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            value = tree_kb(self.pid)
            if value is not None:
                self.samples.append((time.perf_counter() - self.started, *value))
            self.stop.wait(SAMPLE_S)

    def close(self) -> list[tuple[float, int, int, int]]:
        self.stop.set()
        self.thread.join()
        return self.samples


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index_dir: Path, serve_args: list[str], log_file: Path) -> tuple[subprocess.Popen, str, float]:
    """`metrix serve` on a free loopback port; (process, base URL, seconds until /api/health answered)."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "metrix", "serve", "--index", str(index_dir), "--port", str(port), *serve_args]
    log("$ " + shlex.join(["metrix", *command[3:]]))
    started = time.perf_counter()
    server = subprocess.Popen(command, stdout=log_file.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    while time.perf_counter() - started < 1800:
        if server.poll() is not None:
            raise SystemExit(f"metrix serve exited with {server.returncode}; its log:\n{log_file.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                return server, base, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit("metrix serve did not answer /api/health within 30 minutes")


def warm_up(base: str, queries: list[Path], count: int = 20) -> None:
    import httpx

    with httpx.Client(timeout=120) as client:
        for n in range(count):
            path = queries[n % len(queries)]
            response = client.post(
                f"{base}/api/search", files={"image": (path.name, path.read_bytes())}, data={"k": "10"}
            )
            if response.status_code != 200:
                raise SystemExit(f"warm-up query {path}: HTTP {response.status_code} {response.text[:300]}")


def run_level(
    base: str, server: subprocess.Popen, users: int, seconds: float, queries_file: Path, out: Path, name: str
) -> dict:
    """One locust run of `users` users for `seconds`; the row of the table."""
    prefix, times_file = out / f"{name}-locust", out / f"{name}-times.json"
    command = [
        str(Path(sys.executable).with_name("locust")),
        "-f", str(LOCUSTFILE), "--headless",
        "-u", str(users), "-r", str(users), "-t", f"{int(round(seconds))}s",
        "--host", base, "--csv", str(prefix), "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "10",
    ]  # fmt: skip
    env = {**os.environ, "METRIX_LOAD_QUERIES": str(queries_file), "METRIX_LOAD_TIMES": str(times_file)}
    start = tree_kb(server.pid) or (0, 0, 0)
    sampler = RssSampler(server.pid)
    log(f"{name}: {users} user(s) for {seconds:.0f} s")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 300)
    samples = sampler.close() or [(0.0, *start)]
    stats_file = Path(f"{prefix}_stats.csv")
    if not stats_file.is_file():
        raise SystemExit(f"locust wrote no {stats_file} (exit {done.returncode}):\n{done.stderr[-3000:]}")
    with stats_file.open() as f:
        total = next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")
    times = sorted(json.loads(times_file.read_text())) if times_file.is_file() else []
    rss_start = start[0] or samples[0][1]
    rss_max = max(s[1] for s in samples)
    row = {
        "level": name,
        "users": users,
        "seconds": seconds,
        "requests": int(total["Request Count"]),
        "errors": int(total["Failure Count"]),
        "queries_per_s": float(total["Requests/s"]) - float(total["Failures/s"]),
        "p50_ms": statistics.median(times) if times else None,
        "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))] if times else None,
        "rss_start_mb": rss_start / 1024,
        "rss_max_mb": rss_max / 1024,
        "rss_end_mb": samples[-1][1] / 1024,
        "rss_growth_pct": 100 * (rss_max - rss_start) / rss_start,
        "pss_start_mb": (start[1] or samples[0][2]) / 1024,
        "pss_max_mb": max(s[2] for s in samples) / 1024,
        "processes": max(s[3] for s in samples),
        "server_alive": server.poll() is None,
    }
    row["served_recall"] = _served_recall(base)  # the server's own check of its answers (index/served_recall.py)
    if row["errors"]:
        failures = Path(f"{prefix}_failures.csv")
        row["failures"] = failures.read_text()[-2000:] if failures.is_file() else done.stderr[-2000:]
    if name == "soak":  # the RSS curve, every 10 s
        row["rss_mb_every_10s"] = [round(kb / 1024, 1) for t, kb, *_ in samples if t % 10 < SAMPLE_S]
    return row


def _served_recall(base: str) -> dict | None:
    import httpx

    try:
        return httpx.get(f"{base}/api/info", timeout=30).json().get("served_recall")
    except (httpx.HTTPError, ValueError):
        return None


def machine() -> dict:
    from metrix.machine import cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()}


def markdown(result: dict) -> str:
    lines = [
        "| gallery | index | users | queries/s | p50 ms | p99 ms | errors | RSS start MB | RSS max MB | RSS growth |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in result["cases"]:
        for row in case["levels"]:
            ms = lambda v: f"{v:.1f}" if v is not None else "-"  # noqa: E731
            lines.append(
                f"| {case['size']:,} | {case['index'].get('type', '?')} | {row['users']}"
                + (f" (soak {row['seconds'] / 60:g} min)" if row["level"] == "soak" else "")
                + f" | {row['queries_per_s']:.1f} | {ms(row['p50_ms'])} | {ms(row['p99_ms'])} | {row['errors']}"
                f" | {row['rss_start_mb']:.0f} | {row['rss_max_mb']:.0f} | {row['rss_growth_pct']:+.1f}% |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_gallery_arguments(parser)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32], help="concurrent users per level")
    parser.add_argument("--duration", type=float, default=60, help="seconds per level")
    parser.add_argument("--soak", type=float, default=0, help="minutes of a soak run after the levels (0: none)")
    parser.add_argument("--soak-users", type=int, default=32)
    parser.add_argument("--index-type", default="auto", help="build-index --index-type")
    parser.add_argument("--max-index-memory", default=None, help="build-index --max-index-memory")
    parser.add_argument("--build-args", default="", help='more build-index flags, e.g. "--keep 1"')
    parser.add_argument("--serve-args", default="", help='more `metrix serve` flags, e.g. "--max-batch 32"')
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "load.json")
    args = parser.parse_args()
    args.model = (args.model or default_model()).resolve()
    work = args.work or Path(tempfile.mkdtemp(prefix="metrix-load-"))
    work.mkdir(parents=True, exist_ok=True)
    result = {
        "command": shlex.join(["bench/load.py", *sys.argv[1:]]),
        "machine": machine(),
        "model": str(args.model),
        "locust": _version("locust"),
        "k": 10,
        "index_type": args.index_type,
        "max_index_memory": args.max_index_memory,
        "build_args": args.build_args,
        "serve_args": args.serve_args,
        "cases": [],
    }
    try:
        for size in sorted(args.sizes):
            index_dir, split = prepare(
                args, size, work, shlex.split(args.build_args), args.index_type, args.max_index_memory
            )
            result.update(images=split["source"], synthetic=split["synthetic"], real_images=split["real_images"])
            result["query_images"] = len(split["queries"])
            queries_file = work / "queries.txt"
            queries_file.write_text("\n".join(str(p) for p in split["queries"]) + "\n")
            manifest = _manifest(index_dir)
            out = work / f"locust-{size}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            server, base, startup = start_server(index_dir, shlex.split(args.serve_args), work / f"serve-{size}.log")
            case = {"size": size, "index": manifest["index"], "dim": manifest["dim"], "startup_s": startup}
            try:
                case["rss_loaded_mb"] = (tree_kb(server.pid) or (0,))[0] / 1024
                warm_up(base, split["queries"])
                case["levels"] = [
                    run_level(base, server, users, args.duration, queries_file, out, f"u{users}")
                    for users in args.levels
                ]
                if args.soak and size == max(args.sizes):  # the soak: on the largest gallery only
                    case["levels"].append(
                        run_level(base, server, args.soak_users, args.soak * 60, queries_file, out, "soak")
                    )
            finally:
                server.terminate()
                server.wait(60)
            result["cases"].append(case)
            print(markdown({"cases": [case]}).splitlines()[-1], flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    write_results(result, args.out, f"model {args.model.name}; k=10", markdown(result))


def _manifest(index_dir: Path) -> dict:
    from metrix.index.store import MANIFEST_FILE, current_generation

    return json.loads((index_dir / current_generation(index_dir) / MANIFEST_FILE).read_text())


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()

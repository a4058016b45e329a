"""Metrix's own index chooser against autofaiss (issue 30): the same gallery vectors, the same
memory budget, the same held-out queries.

The vectors (default 100,000 and 1,000,000, of the model's dimension): real embeddings of real
images plus filler vectors drawn around them (bench/scale_gallery.py). The queries: embeddings of
--queries held-out images (not in the gallery). The truth: their exact top 10 by inner product
over all the gallery vectors.

  Metrix     the public `metrix build-index --index-type auto --max-index-memory BUDGET` (plus
             --target-recall R when given), run on the gallery as files (bench/scale_gallery.py;
             nothing is embedded, the chooser plans, builds and tunes from the stored vectors).
             Build time: that command's wall time less the wall time of the same command run
             again with nothing to do (listing and checking 1M files, opening the index), both
             reported. Search: the current generation opened with open_index, GalleryIndex.search
             (includes the SQLite lookup of the 10 hits' rows, ~0.05 ms).
  autofaiss  autofaiss.build_index(vectors, max_index_memory_usage=BUDGET,
             current_memory_available=AVAILABLE, metric_type="ip", max_index_query_time_ms=10,
             its default), in its own virtual environment (autofaiss 2.18.0 requires numpy<2 and
             pandas<3; Metrix needs numpy 2, so it cannot share .venv). Search: the index read
             with faiss.read_index and its tuned index_param set with autofaiss's
             set_search_hyperparameters.

Per side: build wall time and peak RSS (ru_maxrss of the build process), the serialized size,
the RSS delta of loading the index in a fresh process (VmRSS, and its anonymous part: an IVF-PQ
index's memory-mapped full vectors count as file pages), recall@10 against exact search, and the
p50 and p99 latency of single-query searches (k=10, after 50 warm-up; one faiss thread by default,
--search-threads, as a service answers one query per request and as Metrix's chooser times them:
faiss's default, every core, is up to 100x slower per single query on a busy 2-core machine).

    # once: autofaiss's own environment
    python3.11 -m venv ~/.cache/metrix-bench/autofaiss-venv
    ~/.cache/metrix-bench/autofaiss-venv/bin/pip install "autofaiss==2.18.0" "pyarrow<26"
    # the measurement (a trained model's export; without --model: the untrained floor model, 1280-d)
    .venv/bin/python bench/autofaiss_compare.py --model runs/RUN/checkpoints/epoch-NNNN/model.onnx \
        --sizes 100000 1000000 --budget 4G --work /tmp/metrix-compare
    # smoke test
    .venv/bin/python bench/autofaiss_compare.py --sizes 3000 --real 300 --queries 50 --out /tmp/compare.json

When the chooser keeps the exact index (auto up to 100,000 vectors if it fits the budget), the
re-plan has nothing to do and Metrix's build time is ~0: a flat index is its vectors, added as a
build embeds them. --work may be the same folder as bench/load.py's: the galleries are shared.

On 2 idle cores: embedding cub100 (~5,900 images) 2-3 min once; 100k a few minutes; at 1M the
builds dominate, tens of minutes each (Metrix's auto builds and times both IVF and HNSW;
autofaiss trains its IVF and tunes its search parameters).

Writes --out (default bench/results/autofaiss_compare.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
AUTOFAISS_PYTHON = Path.home() / ".cache" / "metrix-bench" / "autofaiss-venv" / "bin" / "python"
AUTOFAISS_SETUP = (
    "python3.11 -m venv ~/.cache/metrix-bench/autofaiss-venv && "
    "~/.cache/metrix-bench/autofaiss-venv/bin/pip install 'autofaiss==2.18.0' 'pyarrow<26'"
)
WARM_UP = 50
K = 10


# --- measurements in fresh processes (--case), so that each RSS is the index's own ---


def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def latencies(search, queries: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """(ids [q, K], seconds per query) of one query at a time."""
    for q in queries[:WARM_UP]:
        search(q[None])
    found, seconds = np.full((len(queries), K), -1, np.int64), []
    for row, q in enumerate(queries):
        start = time.perf_counter()
        ids = search(q[None])
        seconds.append(time.perf_counter() - start)
        found[row, : len(ids)] = ids[:K]
    return found, seconds


def search_report(found: np.ndarray, seconds: list[float], truth: np.ndarray, loaded: dict) -> dict:
    hits = sum(len(set(t.tolist()) & set(f[f >= 0].tolist())) for t, f in zip(truth[:, :K], found))
    ms = sorted(s * 1000 for s in seconds)
    return {
        "recall_at_10": hits / (K * len(truth)),
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "queries": len(ms),
        **loaded,
        "rss_after_search_mb": status_kb("VmRSS") / 1024,
    }


def case_metrix_search(index_dir: Path, queries: Path, truth: Path, threads: int) -> dict:
    import faiss

    from metrix.index.store import open_index

    if threads:
        faiss.omp_set_num_threads(threads)

    queries_, truth_ = np.load(queries), np.load(truth)
    before = (status_kb("VmRSS"), status_kb("RssAnon"))
    opened = open_index(index_dir)
    loaded = {
        "load_rss_delta_mb": (status_kb("VmRSS") - before[0]) / 1024,
        "load_rss_anon_delta_mb": (status_kb("RssAnon") - before[1]) / 1024,
        "faiss_threads": faiss.omp_get_max_threads(),
    }

    def search(q):
        return np.array([hit.id for hit in opened.search(q, K)[0]], np.int64)

    return search_report(*latencies(search, queries_), truth_, loaded)


def case_autofaiss_build(vectors: Path, folder: Path, budget: str, available: str, query_ms: float) -> dict:
    from autofaiss import build_index

    data = np.load(vectors)
    started = time.perf_counter()
    _, infos = build_index(
        embeddings=data,
        index_path=str(folder / "knn.index"),
        index_infos_path=str(folder / "index_infos.json"),
        max_index_memory_usage=budget,
        current_memory_available=available,
        max_index_query_time_ms=query_ms,
        metric_type="ip",
        verbose=30,
    )
    seconds = time.perf_counter() - started
    return {"build_s": seconds, "build_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "infos": infos}  # fmt: skip


def case_autofaiss_search(folder: Path, queries: Path, truth: Path, threads: int) -> dict:
    import faiss
    from autofaiss.indices.index_utils import set_search_hyperparameters

    if threads:
        faiss.omp_set_num_threads(threads)

    queries_, truth_ = np.load(queries), np.load(truth)
    infos = json.loads((folder / "index_infos.json").read_text())
    before = (status_kb("VmRSS"), status_kb("RssAnon"))
    index = faiss.read_index(str(folder / "knn.index"))
    set_search_hyperparameters(index, infos["index_param"], False)
    loaded = {
        "load_rss_delta_mb": (status_kb("VmRSS") - before[0]) / 1024,
        "load_rss_anon_delta_mb": (status_kb("RssAnon") - before[1]) / 1024,
        "faiss_threads": faiss.omp_get_max_threads(),
    }

    def search(q):
        return index.search(q, K)[1][0]

    return search_report(*latencies(search, queries_), truth_, loaded)


def run_case(python: str | Path, *args: str) -> dict:
    """This script's --case ARGS in a fresh `python` process; its JSON answer."""
    done = subprocess.run([str(python), __file__, "--case", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"--case {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed(command: list[str], log_file: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a command, its output to `log_file`; fails loudly."""
    started = time.perf_counter()
    with log_file.open("a") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{shlex.join(command)} failed; its output:\n{log_file.read_text()[-4000:]}")
    return seconds, usage.ru_maxrss / 1024


def folder_bytes(folder: Path, names) -> int:
    return sum((folder / name).stat().st_size for name in names if (folder / name).is_file())


# --- the comparison ---


def check_autofaiss(python: Path) -> str:
    """autofaiss's version in `python`, or SystemExit with one line saying why not."""
    if not Path(python).is_file():
        raise SystemExit(
            f"autofaiss: no Python at {python}; autofaiss==2.18.0 cannot go into .venv (it requires numpy<2 and "
            f"pandas<3, Metrix numpy>=2), so create its own: {AUTOFAISS_SETUP}"
        )
    done = subprocess.run(
        [str(python), "-c", "import autofaiss, faiss; print(autofaiss.__version__ if hasattr(autofaiss, '__version__') "
         "else '?', faiss.__version__)"], capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        why = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise SystemExit(f"autofaiss does not import in {python}: {why}; (re)create it: {AUTOFAISS_SETUP}")
    version = subprocess.run(
        [str(python), "-m", "pip", "show", "autofaiss"], capture_output=True, text=True
    ).stdout.split("Version:")[-1].split()[0]  # fmt: skip
    return f"autofaiss {version}, faiss {done.stdout.split()[-1]}"


def metrix_budget(budget: str) -> str:
    """autofaiss reads "4G" as 4 GiB; the same bytes for --max-index-memory."""
    return budget + "iB" if budget[-1:].upper() in "KMGT" else budget


def query_vectors(work: Path, model: Path) -> np.ndarray:
    """Embeddings of the held-out query images, by the public build-index (exact index)."""
    from scale_gallery import build_real, real_vectors

    build_real(work / "queries", work / "queries-index", model)
    return real_vectors(work / "queries-index")[1]


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    rows = max(1, 2**27 // (vectors.shape[1] * 4))
    blocks = (np.ascontiguousarray(vectors[i : i + rows]) for i in range(0, len(vectors), rows))
    return knn_ground_truth(queries, blocks, k, metric_type=faiss.METRIC_INNER_PRODUCT, ngpu=0)[1]


def compare(args, size: int, work: Path, queries: np.ndarray, python: Path) -> dict:
    from scale_gallery import build_args, log, prepare_exact, real_vectors, vectors_file

    gallery, index_dir, split = prepare_exact(args, size, work, name="compare-index")
    ids, real = real_vectors(work / "base-index")
    if not np.array_equal(ids, np.arange(len(ids))):
        raise SystemExit(f"{work / 'base-index'}: ids are not 0..n-1; remove --work and start over")
    vectors_path = work / f"vectors-{size}.npy"
    vectors = vectors_file(real, size, vectors_path, args.spread)  # the grown index's vectors, in id order
    np.save(work / "queries.npy", queries)
    truth_path = work / f"truth-{size}.npy"
    np.save(truth_path, exact_top(vectors, queries, K))
    case: dict = {"size": size, "dim": int(vectors.shape[1]), "real_vectors": len(real)}

    # Metrix: the public CLI, timed, then again with nothing to do
    more = ["--target-recall", str(args.target_recall)] if args.target_recall else []
    command = [sys.executable, "-m", "metrix", *build_args(gallery, index_dir, args.model, "auto", metrix_budget(args.budget), more)]  # fmt: skip
    log("$ " + shlex.join(["metrix", *command[3:]]))
    build_s, peak = timed(command, work / f"metrix-build-{size}.log")
    noop_s, _ = timed(command, work / f"metrix-build-{size}.log")
    from metrix.index.store import MANIFEST_FILE, current_generation

    generation = index_dir / current_generation(index_dir)
    manifest = json.loads((generation / MANIFEST_FILE).read_text())
    names = [entry for entry in os.listdir(generation) if entry not in (MANIFEST_FILE, "metadata.sqlite")]
    metrix = {
        "index": manifest["index"],
        "build_s": build_s - noop_s,
        "build_cli_s": build_s,
        "noop_cli_s": noop_s,
        "build_peak_rss_mb": peak,
        "serialized_bytes": folder_bytes(generation, names),
        "serialized_files": {name: (generation / name).stat().st_size for name in sorted(names)},
        "metadata_sqlite_bytes": folder_bytes(generation, ["metadata.sqlite"]),
    }
    log(f"metrix: {manifest['index'].get('type')} built in {build_s:.0f} s (no-op {noop_s:.0f} s)")
    metrix.update(
        run_case(
            sys.executable,
            "metrix-search",
            str(index_dir),
            str(work / "queries.npy"),
            str(truth_path),
            str(args.search_threads),
        )
    )

    # autofaiss: the same vectors in memory, its own environment
    folder = work / f"autofaiss-{size}"
    folder.mkdir(exist_ok=True)
    for name in ("knn.index", "index_infos.json"):
        (folder / name).unlink(missing_ok=True)
    log(f"autofaiss: build_index on {size:,} x {vectors.shape[1]}, budget {args.budget}")
    started = time.perf_counter()
    built = run_case(python, "autofaiss-build", str(vectors_path), str(folder), args.budget, args.available,
                     str(args.max_query_ms))  # fmt: skip
    auto = {
        "index": built["infos"],
        "build_s": built["build_s"],
        "build_process_s": time.perf_counter() - started,
        "build_peak_rss_mb": built["build_peak_rss_mb"],
        "serialized_bytes": folder_bytes(folder, ["knn.index"]),
    }
    auto.update(
        run_case(
            python,
            "autofaiss-search",
            str(folder),
            str(work / "queries.npy"),
            str(truth_path),
            str(args.search_threads),
        )
    )
    case.update(metrix=metrix, autofaiss=auto)
    return case


def markdown(result: dict) -> str:
    lines = [
        "| vectors | system | index | recall@10 | p50 ms | p99 ms | build s | build peak RSS MB | serialized MB | load RSS Δ MB (anon) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in result["cases"]:
        for system in ("metrix", "autofaiss"):
            row = case[system]
            index = row["index"]
            name = index.get("type") or index.get("index_key", "?")
            if system == "metrix":
                name += "".join(f", {k} {index[k]}" for k in ("nprobe", "ef_search", "rerank") if k in index)
            else:
                name += f", {index.get('index_param', '')}"
            lines.append(
                f"| {case['size']:,} | {system} | {name} | {row['recall_at_10']:.3f} | {row['p50_ms']:.2f} | "
                f"{row['p99_ms']:.2f} | {row['build_s']:.1f} | {row['build_peak_rss_mb']:.0f} | "
                f"{row['serialized_bytes'] / 1e6:.0f} | {row['load_rss_delta_mb']:.0f} ({row['load_rss_anon_delta_mb']:.0f}) |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--case", nargs="+", help=argparse.SUPPRESS)  # a measurement in this fresh process
    args, _ = parser.parse_known_args()
    if args.case:
        name, rest = args.case[0], args.case[1:]
        cases = {
            "metrix-search": lambda: case_metrix_search(*map(Path, rest[:3]), int(rest[3])),
            "autofaiss-build": lambda: case_autofaiss_build(
                Path(rest[0]), Path(rest[1]), rest[2], rest[3], float(rest[4])
            ),  # fmt: skip
            "autofaiss-search": lambda: case_autofaiss_search(*map(Path, rest[:3]), int(rest[3])),
        }
        print(json.dumps(cases[name]()))
        return

    sys.path.insert(0, str(BENCH))
    from scale_gallery import REPO, add_gallery_arguments, default_model, split_images, write_results

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_gallery_arguments(parser)
    parser.set_defaults(queries=1000)
    parser.add_argument("--budget", default="4G", help='autofaiss max_index_memory_usage ("4G" = 4 GiB), both sides')
    parser.add_argument("--available", default="16G", help="autofaiss current_memory_available")
    parser.add_argument("--max-query-ms", type=float, default=10.0, help="autofaiss max_index_query_time_ms")
    parser.add_argument("--target-recall", type=float, default=None, help="build-index --target-recall")
    parser.add_argument(
        "--search-threads", type=int, default=1, help="faiss threads for the timed searches (0: faiss's default)"
    )
    parser.add_argument("--autofaiss-python", type=Path, default=AUTOFAISS_PYTHON)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "autofaiss_compare.json")
    args = parser.parse_args()
    versions = check_autofaiss(args.autofaiss_python)
    args.model = (args.model or default_model()).resolve()
    work = args.work or Path(tempfile.mkdtemp(prefix="metrix-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    from metrix.machine import cpu_name

    result = {
        "command": shlex.join(["bench/autofaiss_compare.py", *sys.argv[1:]]),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "model": str(args.model),
        "autofaiss": versions,
        "budget": args.budget,
        "search_threads": args.search_threads,
        "cases": [],
    }
    try:
        split = split_images(args.images, work, args.queries, args.real)
        queries = query_vectors(work, args.model)
        result.update(images=split["source"], synthetic=split["synthetic"], query_images=len(queries))
        for size in sorted(args.sizes):
            result["cases"].append(compare(args, size, work, queries, args.autofaiss_python))
            print(markdown({"cases": result["cases"][-1:]}), flush=True)
    finally:
        if args.work is None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    write_results(result, args.out, f"{versions}; budget {args.budget}; k={K}", markdown(result))


if __name__ == "__main__":
    main()

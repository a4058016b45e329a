"""One client, one query at a time, against a real `metrix serve`: the whole HTTP query against
decode + embed alone (issue 30's single-client target: HTTP p50 at most 1.3x decode + embed), in
one sitting, with a plain keep-alive httpx client instead of locust (whose own Python client
shares the two cores in bench/load.py's single-user row).

    .venv/bin/python bench/one_client.py --index /tmp/metrix-load/index-100000 --queries /tmp/metrix-load/queries \
        [--rounds 5] [--serve-args "--max-batch 1"] [--out bench/results/one_client.json]

Per query: POST /api/search (multipart image, k=10); the answer's own `seconds` (the server's
run_query: decode, embed, search and file checks) is kept too, so the rows split the time into
the server's work and the HTTP around it. Then decode + embed alone in this process, the server
stopped. p50 and p99 in ms.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

SUFFIXES = {".jpg", ".jpeg", ".png"}


def percentiles(values: list[float]) -> dict:
    values = sorted(values)
    return {"p50_ms": statistics.median(values), "p99_ms": values[min(len(values) - 1, int(0.99 * len(values)))]}


def main() -> None:
    import httpx
    from load import machine, start_server

    from metrix.export.runtime import load_embedder, load_for_model
    from metrix.index.store import current_generation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True, help="a folder of query images")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--serve-args", default="")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "one_client.json")
    args = parser.parse_args()
    queries = sorted(p for p in args.queries.rglob("*") if p.suffix.lower() in SUFFIXES)
    payloads = [(p.name, p.read_bytes()) for p in queries]
    log_file = Path(tempfile.gettempdir()) / "metrix-one-client-serve.log"
    server, base, _ = start_server(args.index, shlex.split(args.serve_args), log_file)
    wall, handler = [], []
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            for round_ in range(args.rounds + 1):  # the first round warms up
                for name, data in payloads:
                    started = time.perf_counter()
                    answer = client.post("/api/search", files={"image": (name, data)}, data={"k": "10"})
                    seconds = time.perf_counter() - started
                    answer.raise_for_status()
                    if round_:
                        wall.append(1000 * seconds)
                        handler.append(answer.json()["took_ms"])
    finally:
        server.terminate()
        server.wait(60)
    manifest = json.loads((args.index / current_generation(args.index) / "manifest.json").read_text())
    embedder = load_embedder(manifest["model"]["path"])
    alone = []
    for round_ in range(args.rounds + 1):
        for path in queries:
            started = time.perf_counter()
            array, _ = load_for_model(path, embedder.metadata)
            embedder.embed(array[None])
            if round_:
                alone.append(1000 * (time.perf_counter() - started))
    result = {
        "command": shlex.join(["bench/one_client.py", *sys.argv[1:]]),
        "machine": machine(),
        "index": manifest["index"].get("type"),
        "images": manifest["count"],
        "queries": len(queries),
        "rounds": args.rounds,
        "http": percentiles(wall),
        "server_handler": percentiles(handler),
        "decode_embed": percentiles(alone),
    }
    result["ratio_p50"] = result["http"]["p50_ms"] / result["decode_embed"]["p50_ms"]
    args.out.write_text(json.dumps(result, indent=1))
    print(
        f"{manifest['count']:,} images, {result['index']}: HTTP p50 {result['http']['p50_ms']:.2f} ms "
        f"(server's handler {result['server_handler']['p50_ms']:.2f}), decode + embed alone "
        f"{result['decode_embed']['p50_ms']:.2f} ms: {result['ratio_p50']:.2f}x"
    )


if __name__ == "__main__":
    main()

"""Ray's overhead and scaling for `build-index`: the same gallery built by the local engine and by
the Ray engine with 1 and 2 actors, each a fresh build (--rebuild) of real image files.

    .venv/bin/python bench/ray_scaling.py --model MODEL.onnx --images ../shared/datasets/cub100 --count 2000 \
        --out bench/results/ray_scaling.json

The local engine gets every core as onnxruntime threads; Ray's 1 actor gets every core too, its
2 actors one each, so all three use the whole machine. Ray is started once, before the timed
builds (its start-up is reported on its own), and the cases are repeated --repeats times in
turn so that the ratios come from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from metrix.index.build import build_index
from metrix.index.ray_engine import RayOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True, help="an image folder; its first --count images are used")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import ray

    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "gallery"
        for source in sorted(p for p in args.images.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[
            : args.count
        ]:
            link = gallery / source.relative_to(args.images)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, link) if source.stat().st_dev == Path(tmp).stat().st_dev else link.write_bytes(
                source.read_bytes()
            )
        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start = time.perf_counter() - started
        cases = {
            "local": None,
            "ray, 1 actor": RayOptions(workers=1, cpus_per_worker=cores),
            "ray, 2 actors": RayOptions(workers=2, cpus_per_worker=max(1, cores // 2)),
        }
        seconds = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, options in cases.items():
                report = build_index(
                    gallery,
                    args.model,
                    Path(tmp) / name.replace(" ", "").replace(",", "-"),
                    rebuild=True,
                    progress=False,
                    threads=cores,
                    ray=options,
                )
                seconds[name].append(report.seconds)
                count = report.count
        ray.shutdown()
    base = statistics.median(seconds["local"])
    rows = [
        {
            "engine": name,
            "images": count,
            "seconds": statistics.median(s),
            "images_per_s": count / statistics.median(s),
            "vs_local": base / statistics.median(s),
            "all_seconds": s,
        }
        for name, s in seconds.items()
    ]
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    result = {
        "command": " ".join(["bench/ray_scaling.py", *sys.argv[1:]]),
        "machine": f"{cpu}, {cores} cores",
        "ray_start_seconds": ray_start,
        "cases": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    print(f"{result['machine']}; Ray started in {ray_start:.1f} s\n")
    print("| engine | images | build s (median) | images/s | speed vs local |\n|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['engine']} | {row['images']} | {row['seconds']:.1f} | {row['images_per_s']:.1f} | {row['vs_local']:.2f}x |"
        )


if __name__ == "__main__":
    main()

"""Near-duplicates calibrated per gallery (issue 29): the default `metrix duplicates` (thresholds
calibrated on the gallery's own edited copies, every pair confirmed by the copy check, groups in
which every two images pass) against the fixed threshold it replaces (0.88, connected components),
the same threshold without chaining, the calibrated embedding threshold alone, and imagededup's
hashes, on four galleries:

    planted-cub        cub100 classes 50-99 with 400 planted copies (bench/duplicates.py's "test")
    planted-omniglot   omniglot_small (all 242 characters) with 400 planted copies, the same kinds
    clean-cub          cub100 classes 50-99 as they are (CUB holds a few photos twice of its own)
    clean-omniglot     omniglot_small as it is (every image a different person's drawing)

    .venv/bin/python bench/duplicates_calibrated.py      # -> bench/results/duplicates_calibrated.json

Planted galleries: precision and recall of the planted pairs (every pair inside a reported group
predicted). Clean galleries: pairs reported per 1,000 images, and how many show one photograph
(CUB_SAME_PHOTO, judged by eye in bench/duplicates.py; for omniglot, identical pixels). The model
is the untrained efficientnet_lite0, the model a gallery gets with no training.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import duplicates as planted  # noqa: E402  (bench/duplicates.py: galleries, truth, scoring, imagededup)

ROOT = Path(__file__).resolve().parents[1]
BEFORE = 0.88  # the fixed default this replaces
HASHES = (("PHash", 10), ("PHash", 6), ("DHash", 10))  # imagededup's default, PHash tuned on cub (docs/duplicates.md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--work", type=Path, default=Path("/tmp/metrix-duplicates-calibrated"))
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "efficientnet_lite0-floor.onnx")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "duplicates_calibrated.json")
    parser.add_argument("--no-imagededup", action="store_true")
    args = parser.parse_args()
    galleries = make_galleries(args.shared, args.work)
    result = {"command": " ".join(["bench/duplicates_calibrated.py", *sys.argv[1:]]), "cpu": _cpu(), "galleries": {}}
    for name, gallery in galleries.items():
        index_dir = args.work / f"index-{name}"
        planted._metrix("build-index", gallery["folder"], "--model", args.model, "--out", index_dir, "--no-progress")
        result["galleries"][name] = measure(name, gallery, index_dir, not args.no_imagededup)
        args.out.write_text(json.dumps(result, indent=1))
        print(json.dumps({name: {k: _brief(v) for k, v in result["galleries"][name]["methods"].items()}}, indent=1))
    print(markdown(result))


def make_galleries(shared: Path, work: Path) -> dict[str, dict]:
    cub, omniglot = shared / "cub100", shared / "omniglot_small"
    characters = sum(1 for p in omniglot.iterdir() if p.is_dir())
    return {
        "planted-cub": planted.make_gallery(cub, range(50, 100), work / "planted-cub", 300, seed=1),
        "planted-omniglot": planted.make_gallery(
            omniglot, range(0, characters), work / "planted-omniglot", 300, seed=2
        ),
        "clean-cub": planted.make_gallery(cub, range(50, 100), work / "clean-cub", 0, seed=1),
        "clean-omniglot": planted.make_gallery(omniglot, range(0, characters), work / "clean-omniglot", 0, seed=2),
    }


def measure(name: str, gallery: dict, index_dir: Path, imagededup: bool) -> dict:
    from metrix.index.calibration import sample_copies
    from metrix.index.duplicates import find_duplicates
    from metrix.index.store import open_with_model

    index, embedder = open_with_model(index_dir)
    started = time.perf_counter()
    copies = sample_copies(index, embedder)
    calibration_seconds = time.perf_counter() - started
    default = {}

    def calibrated():
        default["result"] = find_duplicates(index, copies=copies)
        return _groups_of(default["result"])

    runs = {
        f"before: components at {BEFORE}": lambda: components(index, BEFORE),
        f"cliques at {BEFORE}": lambda: _groups_of(find_duplicates(index, BEFORE)),
        "calibrated cosine only": lambda: _groups_of(find_duplicates(index, copies.candidate_threshold)),
        "calibrated + copy check (default)": calibrated,
    }
    methods = {}
    for method, run in runs.items():
        started = time.perf_counter()
        groups = run()
        methods[method] = {"seconds": time.perf_counter() - started, **score(groups, gallery)}
    methods["calibrated + copy check (default)"]["seconds"] += calibration_seconds
    if gallery["groups"]:
        methods["before: the best fixed threshold at precision >= 0.95 (chosen on the truth)"] = best_fixed(
            index, gallery
        )
    if imagededup:
        for method, threshold in HASHES:
            started = time.perf_counter()
            found = planted._hasher(method).find_duplicates(
                image_dir=gallery["folder"], max_distance_threshold=threshold, recursive=True
            )
            pairs = [sorted(pair) for pair in planted.pairs_of(found)]
            methods[f"imagededup {method} at {threshold}"] = {
                "seconds": time.perf_counter() - started,
                **score(pairs, gallery),
            }
    return {"images": len(index), "calibration": default["result"].calibration.to_json(), "methods": methods}


def best_fixed(index, gallery: dict) -> dict:
    """The grouping this replaces at its best: the fixed threshold (0.80-0.99) with the most recall
    at precision >= 0.95, chosen on the planted truth itself (an oracle no user has)."""
    rows = []
    for threshold in np.round(np.arange(0.80, 1.0, 0.01), 2):
        started = time.perf_counter()
        row = score(components(index, float(threshold)), gallery)
        rows.append({"threshold": float(threshold), "seconds": time.perf_counter() - started, **row})
    good = [row for row in rows if row["precision"] >= 0.95]
    return (
        max(good, key=lambda row: row["recall"])
        if good
        else {**min(rows, key=lambda r: -r["precision"]), "none_reaches_0.95": True}
    )


def components(index, threshold: float) -> list[list[str]]:
    """The fixed-threshold grouping this replaces: every pair at >= threshold, connected components."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from metrix.index.duplicates import BLOCK, _pairs

    parts = list(_pairs(index, threshold, BLOCK))
    a = np.concatenate([p[0] for p in parts]) if parts else np.empty(0, np.int64)
    b = np.concatenate([p[1] for p in parts]) if parts else np.empty(0, np.int64)
    keep = a != b
    a, b = a[keep], b[keep]
    nodes = np.unique(np.concatenate([a, b]))
    if not len(nodes):
        return []
    n = len(nodes)
    graph = coo_matrix((np.ones(len(a)), (np.searchsorted(nodes, a), np.searchsorted(nodes, b))), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    rows = index.rows(nodes.tolist())
    groups: dict[int, list[str]] = {}
    for node, group in zip(nodes.tolist(), label.tolist()):
        groups.setdefault(group, []).append(rows[node][0])
    return list(groups.values())


def _groups_of(result) -> list[list[str]]:
    return [[image.path for image in group.images] for group in result.groups]


def score(groups: list[list[str]], gallery: dict) -> dict:
    """Planted galleries: precision / recall of the planted pairs. Clean ones: pairs per 1,000
    images and how many show one picture. Both: the reported pairs (for a look by eye)."""
    pairs = sorted({tuple(sorted((a, b))) for g in groups for i, a in enumerate(g) for b in g[i + 1 :]})
    out = {"groups": len(groups), "pairs": len(pairs), "largest_group": max(map(len, groups), default=0)}
    if gallery["groups"]:
        scored = planted.score_groups([list(g) for g in groups], gallery)
        out.update({k: scored[k] for k in ("precision", "recall", "f1")})
        out["recall_by_kind"] = {kind: row["recall"] for kind, row in scored["by_kind"].items()}
    else:
        real = [pair for pair in pairs if same_picture(pair, gallery["folder"])]
        out.update(pairs_per_1000=1000 * len(pairs) / gallery["images"], real_pairs=len(real))
        out["false_pairs_per_1000"] = 1000 * (len(pairs) - len(real)) / gallery["images"]
        out["pair_list"] = [list(p) for p in pairs[:200]]
    return out


def same_picture(pair, folder: str) -> bool:
    """One photograph twice: a pair CUB holds twice (judged by eye), or identical pixels."""
    if frozenset(pair) in planted.CUB_SAME_PHOTO:
        return True
    from PIL import Image

    digests = {hashlib.sha256(Image.open(Path(folder) / p).convert("RGB").tobytes()).hexdigest() for p in pair}
    return len(digests) == 1


def _brief(row: dict) -> dict:
    return {
        k: round(v, 3) if isinstance(v, float) else v
        for k, v in row.items()
        if k not in ("pair_list", "recall_by_kind")
    }


def _cpu() -> str:
    return next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")


def markdown(result: dict) -> str:
    lines = [
        "| gallery | method | groups | pairs | precision | recall | pairs / 1,000 images (not real) | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, gallery in result["galleries"].items():
        for method, row in gallery["methods"].items():
            pr = (f"{100 * row['precision']:.1f}", f"{100 * row['recall']:.1f}") if "recall" in row else ("-", "-")
            clean = (
                f"{row['pairs_per_1000']:.1f} ({row['false_pairs_per_1000']:.1f})" if "pairs_per_1000" in row else "-"
            )
            lines.append(
                f"| {name} | {method} | {row['groups']} | {row['pairs']} | {pr[0]} | {pr[1]} | {clean} | {row['seconds']:.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Is "no good match" honest? The calibrated match probability measured open-set (issue 41, item 5).

A dataset's test classes (the folder's default split: its second half) are halved with the seed:
the indexed classes lose 30% of their images, held out as queries that have a match; the other
classes' images are queries that have none. The gallery (the rest of the indexed classes) is
indexed with the model given (default: the untrained backbone at 160 px, what `build-index`
serves before any training), which fits the calibration on the gallery alone. Reported: the
calibration's own held-out error (from the build), the open-set calibration error over every
query's top 8 (the two kinds of query weighing half each, as the fit assumes), and at each cut-off the share of no-match queries answered "no good match" and
the share of match queries that keep a true hit.

    .venv/bin/python bench/match_probability.py --data ../shared/datasets/cub100 --model models/efficientnet_lite0-160-floor.onnx
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import numpy as np

from metrix.datasets.folder import load_image_folder
from metrix.index.build import build_index
from metrix.index.match_probability import calibration_error
from metrix.index.python_api import Index
from metrix.machine import cpu_name

TOP = 8
CUTOFFS = (0.3, 0.5, 0.7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "match-probability.json")
    args = parser.parse_args()
    by_class: dict[str, list[Path]] = {}
    for sample in load_image_folder(args.data).test.samples:
        by_class.setdefault(sample.path.parent.name, []).append(sample.path)
    names = sorted(by_class)
    random.Random(args.seed).shuffle(names)
    indexed, other = names[: len(names) // 2], names[len(names) // 2 :]
    with tempfile.TemporaryDirectory() as work:
        gallery, match_queries = Path(work) / "gallery", []
        for name in indexed:
            paths = sorted(by_class[name])
            random.Random(f"{args.seed}:{name}").shuffle(paths)
            held = round(0.3 * len(paths))
            match_queries += paths[:held]
            (gallery / name).mkdir(parents=True)
            for path in paths[held:]:
                (gallery / name / path.name).symlink_to(path.resolve())
        no_match_queries = [path for name in other for path in sorted(by_class[name])]
        build_index(gallery, args.model, Path(work) / "index", progress=False)
        with Index.open(Path(work) / "index") as index:
            calibration = index.index.manifest["match_calibration"]
            answers = {
                kind: [(path.parent.name, index.search(path, k=TOP)) for path in queries]
                for kind, queries in (("match", match_queries), ("no match", no_match_queries))
            }
    probability = np.array([h.match_probability for kind in answers.values() for _, hits in kind for h in hits])
    same = np.array([h.label == label for kind in answers.values() for label, hits in kind for h in hits], float)
    # the two kinds of query weigh half each, as the fit assumes (NO_MATCH_SHARE)
    counts = {kind: sum(len(hits) for _, hits in queries) for kind, queries in answers.items()}
    weights = np.concatenate([np.full(counts[kind], 0.5 / counts[kind]) for kind in answers])
    row = {
        "data": args.data.name,
        "model": args.model.name,
        "seed": args.seed,
        "cpu": cpu_name(),
        "indexed_classes": len(indexed),
        "gallery_images": sum(len(by_class[n]) for n in indexed) - len(match_queries),
        "match_queries": len(match_queries),
        "no_match_queries": len(no_match_queries),
        "build_calibration_error": calibration["calibration_error"],
        "open_set_calibration_error": calibration_error(probability, same, weights),
        "cutoffs": {},
    }
    for cutoff in CUTOFFS:
        no_good = np.mean([all(h.match_probability < cutoff for h in hits) for _, hits in answers["no match"]])
        kept = np.mean(
            [any(h.label == label and h.match_probability >= cutoff for h in hits) for label, hits in answers["match"]]
        )
        found = np.mean([any(h.label == label for h in hits) for label, hits in answers["match"]])
        row["cutoffs"][str(cutoff)] = {
            "no_match_answered_no_good_match": float(no_good),
            "match_keeping_a_true_hit": float(kept),
            "match_with_a_true_hit_uncut": float(found),
        }
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[f"{args.data.name}-{args.model.stem}-s{args.seed}"] = row
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()

"""Can a check on pixels tell two people's drawings of one simple stroke from a copy? (issue 29)

For the omniglot characters behind the pairs the calibrated `metrix duplicates` reported on the
clean omniglot gallery (docs/duplicates.md), the copy check's NCC (index/copy_check.py) of every
two different drawings of a character, beside the NCC of each drawing with its own edited copies
(index/calibration.py's edits, seeded). When different drawings reach what copies reach, no
threshold on this check separates them.

    .venv/bin/python bench/copy_check_strokes.py     # -> bench/results/copy_check_strokes.json
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from index.calibration import EDITS, edited_copy  # noqa: E402
from index.copy_check import CopyCheck  # noqa: E402

#: The characters of the clean-omniglot pairs (bench/results/duplicates_calibrated.json).
CHARACTERS = ("Latin__character12", "Latin__character09", "Korean__character19", "Japanese_(katakana)__character24")
QUANTILES = (0.5, 0.9, 0.99, 1.0)


def measure(folder: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    drawings = {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}
    files = dict(drawings)
    copies = []
    for name, data in drawings.items():
        picture = Image.open(io.BytesIO(data)).convert("RGB")
        for edit in EDITS:
            files[f"{name}#{edit}"] = edited_copy(picture, edit, rng)
            copies.append((name, f"{name}#{edit}", edit))
    check = CopyCheck(read=files.__getitem__)
    different = np.array([check.similarity(a, b) for a, b in itertools.combinations(drawings, 2)])
    by_edit = {edit: np.array([check.similarity(a, c) for a, c, e in copies if e == edit]) for edit in EDITS}
    return {
        "drawings": len(drawings),
        "different_pairs": len(different),
        "different_ncc_quantiles": dict(
            zip(map(str, QUANTILES), np.round(np.quantile(different, QUANTILES), 4).tolist())
        ),
        "different_share_at": {str(t): round(float((different >= t).mean()), 4) for t in (0.9, 0.95, 0.99)},
        "copy_ncc_median_by_edit": {e: round(float(np.median(v)), 4) for e, v in by_edit.items()},
        "copy_share_at_0.95_by_edit": {e: round(float((v >= 0.95).mean()), 4) for e, v in by_edit.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "omniglot_small")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "copy_check_strokes.json")
    args = parser.parse_args()
    results = {c: measure(args.data / c) for c in CHARACTERS}
    args.out.write_text(json.dumps({"command": "bench/copy_check_strokes.py", "characters": results}, indent=1) + "\n")
    for character, r in results.items():
        print(
            f"{character}: {r['drawings']} drawings, different pairs NCC {r['different_ncc_quantiles']}, "
            f"share >= 0.95 {r['different_share_at']['0.95']}; copies' median {r['copy_ncc_median_by_edit']}"
        )


if __name__ == "__main__":
    main()

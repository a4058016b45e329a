"""The flip check (metrix.training.flip_check) on real sets: what `metrix train` would decide, with
its figures, at each recipe's input size.

Sets: each folder of --data as `metrix train --data` splits it (the first half of the classes
trains, a fifth of those held out for validation: the check measures those training and
validation classes, never the test half), and for each a "mirror twins" variant, where mirror
images *are* other classes by construction: each class split in two, one half mirrored into a
twin class.

    .venv/bin/python bench/flip_check.py                 # ../shared/datasets/{omniglot_small,cub100}
    .venv/bin/python bench/flip_check.py --data DIR ...  # other folders of class sub-folders
    .venv/bin/python bench/flip_check.py --sklearn-digits # and scikit-learn's 8 x 8 digits

Writes --out (default bench/results/flip_check.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageOps

from metrix.backbones import create_backbone
from metrix.datasets.base import Sample
from metrix.datasets.folder import load_image_folder
from metrix.model import EmbeddingModel
from metrix.training.flip_check import check_mirrors

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
#: (recipe, input size): full-cpu trains at 96 px, cpu at 160 px.
SIZES = (("full-cpu", 96), ("cpu", 160))


def mirror_twins(samples: list[Sample], folder: Path) -> list[Sample]:
    """Each class split in two: every other image stays, the rest are mirrored into a twin class
    (so no image's own mirror is in the set)."""
    twin = 1 + max(s.label for s in samples)
    out, seen = [], {}
    for index, sample in enumerate(samples):
        seen[sample.label] = seen.get(sample.label, -1) + 1
        if seen[sample.label] % 2 == 0:
            out.append(sample)
            continue
        path = folder / f"{sample.label}" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        ImageOps.mirror(Image.open(sample.path).convert("RGB")).save(path)
        out.append(Sample(path, twin + sample.label))
    return out


def sklearn_digits(folder: Path) -> Path:
    """scikit-learn's bundled handwritten digits (1,797 images, 8 x 8, 10 classes) as a folder of
    class sub-folders, scaled to 64 px: a second set of handwriting, installed with scikit-learn."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        path = folder / f"digit_{label}" / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grey = (255 - pixels * 255 / 16).clip(0, 255).astype("uint8")
        Image.fromarray(grey).resize((64, 64), Image.Resampling.BILINEAR).save(path)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="*", default=[SHARED / "omniglot_small", SHARED / "cub100"])
    parser.add_argument("--sklearn-digits", action="store_true", help="also scikit-learn's handwritten digits")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "flip_check.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.sklearn_digits:
            args.data.append(sklearn_digits(Path(tmp) / "sklearn_digits"))
        for root in args.data:
            data = load_image_folder(root)
            samples = list(data.train.samples) + list(data.val.samples)
            variants = {"as is": samples, "mirror twins": mirror_twins(samples, Path(tmp) / root.name)}
            for recipe, size in SIZES:
                model = EmbeddingModel(create_backbone("efficientnet_lite0", True, size), 32)
                for variant, chosen in variants.items():
                    start = time.perf_counter()
                    check = check_mirrors(model, chosen, torch.device("cpu"))
                    row = {"set": root.name, "variant": variant, "recipe": recipe, "image_size": size}
                    rows.append({**row, **check.to_dict(), "seconds": time.perf_counter() - start})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    args.out.write_text(
        json.dumps({"command": " ".join(["bench/flip_check.py", *sys.argv[1:]]), "cpu": cpu, "rows": rows}, indent=1)
    )
    print(
        "| set | variant | recipe (px) | images / classes | image's nearest is another class | mirror's | excess | sign test p | flips | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['set']} | {r['variant']} | {r['recipe']} ({r['image_size']}) | {r['images']} / {r['classes']} | "
            f"{r['image_errors']:.1%} | {r['mirror_errors']:.1%} | {r['excess']:+.1%} | {r['p_value']:.2g} | "
            f"{'on' if r['flip'] else 'off'} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()

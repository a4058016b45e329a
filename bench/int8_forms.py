"""int8 forms x CPU kernels: which static quantisation gives the fp32 model's answers on every x86
CPU, and at what speed (docs/export.md, "int8").

    .venv/bin/python bench/int8_forms.py --data ../shared/datasets/cub100 --work /tmp/int8 \
        --out bench/results/int8_forms.json                  # quantise + measure on this CPU
    .venv/bin/python bench/int8_forms.py ... --timing          # speed only (run it on a quiet machine)
    .venv/bin/python bench/int8_forms.py ... --emulate Haswell # the same models on an emulated CPU

The model is the untrained EfficientNet-Lite0 floor (`metrix export --backbone`), calibrated on
128 images of the training classes (the first half of the class folders) as `metrix export
--quantize int8` does. On this CPU every form embeds the whole test half: R@1 change against fp32
and the agreement check (export/quantize.py `agreement`, the one `metrix export` and the tests
apply). `--emulate CPU` re-runs this script under `qemu-x86_64 -cpu CPU` (Debian's qemu-user),
where onnxruntime picks that CPU's kernels: about 200 times slower, so it embeds only `--emulated`
images (a few classes, whole), and compares them with this CPU's fp32 embeddings of the same
images. Its speed means nothing; `--timing` times the forms here, in turns, median of rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from metrix.export.cpu_kernels import int8_kernels
from metrix.export.onnx_export import verification_images
from metrix.export.quantize import (
    CALIBRATION_IMAGES,
    MIN_FIDELITY,
    UNSAFE_FORM,
    Int8Form,
    agreement,
    quantize_int8,
    recall_at_1,
)
from metrix.export.runtime import embed_files, load_embedder, read_metadata
from metrix.machine import cpu_name

FORMS = [
    Int8Form(a, w, per_channel, reduce_range)
    for per_channel in (True, False)
    for a, w, reduce_range in (("u8", "s8", False), ("u8", "s8", True), ("u8", "u8", False), ("s8", "s8", False))
]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def split(root: Path) -> tuple[list[Path], list[Path], list[int]]:
    """(training-class paths, test-class paths, test labels): the first half of the class folders
    trains, the second half is the test split (the CUB protocol)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    half = len(classes) // 2

    def files(folder):
        return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    train = [p for c in classes[:half] for p in files(c)]
    test, labels = [], []
    for label, folder in enumerate(classes[half:]):
        test += files(folder)
        labels += [label] * len(files(folder))
    return train, test, labels


def emulated_subset(labels: list[int], count: int, classes: int = 8) -> np.ndarray:
    """Indices of `count` test images: the first count // classes of `classes` classes spread
    over the test split."""
    names = sorted(set(labels))
    chosen = names[:: max(1, len(names) // classes)][:classes]
    per_class = max(2, count // classes)
    return np.array([i for c in chosen for i in [j for j, label in enumerate(labels) if label == c][:per_class]])


def prepare(args, train: list[Path]) -> dict[str, Path]:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "fp32.onnx"
    if not fp32.exists():
        subprocess.run(
            [sys.executable, "-m", "metrix", "export", "--backbone", args.backbone, "--image-size", str(args.size)]
            + ["--output", str(fp32)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    models = {"fp32": fp32, **{form.name: work / f"{form.name}.onnx" for form in FORMS}}
    missing = [form for form in FORMS if not models[form.name].exists()]
    if missing:
        calibration = verification_images(train, read_metadata(fp32), CALIBRATION_IMAGES)
        for form in missing:
            quantize_int8(fp32, models[form.name], calibration, form)
    return models


def references(models: dict[str, Path], paths: list[Path]) -> dict[str, np.ndarray]:
    """fp32's embeddings of `paths`, and each int8 model's definition (export/runtime.py
    `reference`: its QDQ graph in float), which no CPU's integer kernels change."""
    out = {"fp32": embed_files(load_embedder(models["fp32"]), paths)}
    for name, path in models.items():
        if name != "fp32":
            out[name] = embed_files(load_embedder(path, reference=True), paths)
    return out


def embed_all(models: dict[str, Path], paths: list[Path]) -> dict[str, np.ndarray]:
    """Each model's embeddings of `paths` with this CPU's kernels."""
    out = {}
    for name, path in models.items():
        out[name] = embed_files(load_embedder(path), paths)
        print(f"{int8_kernels()}: {name} embedded", flush=True)
    return out


def scores(embedded: dict[str, np.ndarray], labels: list[int], refs: dict[str, np.ndarray]) -> dict:
    """Each model's R@1 from its embeddings, its agreement with fp32 and, for int8, with its own
    definition (the check: export/quantize.py MIN_FIDELITY). Computed here, whichever CPU embedded."""
    fp32_r1 = recall_at_1(refs["fp32"], np.array(labels))
    rows = {}
    for name, vectors in embedded.items():
        to_fp32 = agreement(refs["fp32"], vectors)
        rows[name] = {
            "recall_at_1": recall_at_1(vectors, np.array(labels)),
            "mean_cosine": to_fp32.mean_cosine,
            "min_cosine": to_fp32.min_cosine,
            "neighbours_kept": to_fp32.neighbours,
        }
        rows[name]["recall_at_1_change"] = rows[name]["recall_at_1"] - fp32_r1
        if name != "fp32":
            fidelity = agreement(refs[name], vectors)
            rows[name]["fidelity"] = fidelity.mean_cosine
            rows[name]["min_fidelity"] = fidelity.min_cosine
            rows[name]["check"] = "pass" if fidelity.mean_cosine >= MIN_FIDELITY else "FAIL"
    return rows


def timing(models: dict[str, Path], paths: list[Path], rounds: int = 7, batch: int = 32) -> dict:
    images = verification_images(paths, read_metadata(models["fp32"]), batch)
    embedders = {name: load_embedder(path, threads=2) for name, path in models.items()}
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, embedder in embedders.items():
            embedder.embed(images[:4])
            start = time.perf_counter()
            embedder.embed(images)
            times[name].append(1000 * (time.perf_counter() - start) / batch)
    fp32 = float(np.median(times["fp32"]))
    return {
        name: {"ms_per_image": float(np.median(t)), "speedup": fp32 / float(np.median(t))} for name, t in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="an ImageFolder whose first half of classes trains")
    parser.add_argument("--work", type=Path, required=True, help="where the models are written (and reused)")
    parser.add_argument("--out", type=Path, required=True, help="the results JSON (updated, not replaced)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--timing", action="store_true", help="time the forms on this CPU")
    parser.add_argument("--emulate", metavar="CPU", help="measure under qemu-x86_64 -cpu CPU (e.g. Haswell)")
    parser.add_argument("--emulated", type=int, default=32, help="test images embedded under emulation")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)  # the emulated process
    args = parser.parse_args()

    train, test, labels = split(args.data)
    models = prepare(args, train)
    subset = emulated_subset(labels, args.emulated)
    paths, sub_labels = [test[i] for i in subset], [labels[i] for i in subset]
    emulated_file = args.work / "emulated.npz"
    if args.inside:  # embedding only: faiss under TCG does not search as it does natively, so R@1 is computed outside
        per_channel = {name: path for name, path in models.items() if not name.endswith("per-tensor")}
        np.savez(emulated_file, **embed_all(per_channel, paths))
        print(f"KERNELS {int8_kernels()}")
        return
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["command"] = "bench/int8_forms.py " + " ".join(sys.argv[1:])
    results["model"] = f"{args.backbone} floor at {args.size} px, calibrated on {CALIBRATION_IMAGES} training images"
    results["unsafe_form"] = UNSAFE_FORM.name
    if args.timing:
        results.setdefault("timing", {})[int8_kernels()] = {
            "cpu": cpu_name(),
            "threads": 2,
            "rows": timing(models, test),
        }
    elif args.emulate:
        # per-tensor scales already lose 3+ R@1 on this CPU's exact kernels: emulate the others
        command = ["qemu-x86_64", "-cpu", args.emulate, sys.executable, *sys.argv, "--inside"]
        inside = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        kernels = next(line for line in inside.splitlines() if line.startswith("KERNELS "))[8:]
        results.setdefault("accuracy", {})[f"{kernels} (qemu -cpu {args.emulate})"] = {
            "cpu": f"emulated {args.emulate} on {cpu_name()}",
            "images": f"{len(paths)} test images of {len(set(sub_labels))} classes",
            "rows": scores(dict(np.load(emulated_file)), sub_labels, references(models, paths)),
        }
    else:
        for key, chosen, chosen_labels in (
            (int8_kernels(), test, labels),
            (f"{int8_kernels()} subset", paths, sub_labels),
        ):
            results.setdefault("accuracy", {})[key] = {
                "cpu": cpu_name(),
                "images": f"{len(chosen)} test images of {len(set(chosen_labels))} classes",
                "rows": scores(embed_all(models, chosen), chosen_labels, references(models, chosen)),
            }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

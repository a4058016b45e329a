"""Metrix as the paper measured it, on a GPU (issue 25): ResNet-50 at 224 px, 512-d embeddings,
batches of 100, on cub100 (classes 00-49 train, a fifth of them held out for validation, 50-99
test), with the paper recipe's optimisation (Adam with L2 decay, value clipping, StepLR, random
batches, 5 head-only warm-up epochs, 60 epochs). The images are decoded once into GPU memory; the
backbone runs under bf16 autocast in channels_last. Runs none vs feature mixing for MS and
contrastive over seeds, and records validation and test retrieval at every epoch, so the table
shows both protocols: the epoch chosen on validation (ours) and the best epoch on test (the
official code's, reported only).

Torch only (the GPU machine has no faiss): retrieval metrics are computed on the GPU here and
tested against metrix.evaluation.metrics on the CPU (tests/test_gpu_paper.py).

The GPU machine lent to this project reaches no network and carries at most 64 MiB per call, the
working tree included, so ResNet-50's weights (98 MB) and the cub100 pack (57 MB) travel in two
calls on one warm machine (docs/benchmarks.md, "The GPU run"):

    # here, once: ResNet-50's ImageNet weights in fp16 without fc (49 MB), and cub100 in one file
    .venv/bin/python bench/gpu_paper.py weights --pth resnet50-0676ba61.pth --out gpu_weights/resnet50-fp16.pt
    .venv/bin/python bench/gpu_paper.py pack --data ../shared/datasets/cub100 --out gpu_data/cub100.pt
    .venv/bin/python bench/gpu_paper.py plan     # checks each call's carry and prints both calls
    # call 1 (carry gpu_weights): keeps the weights in gpu_state/, which no call carries
    # call 2 (carry gpu_data), as often as needed: each call stops before --minutes and resumes
    python3 bench/gpu_paper.py run --pack gpu_data/cub100.pt --weights gpu_state/resnet50-fp16.pt \
        --out gpu_state/protocols-gpu-paper-cub100 --copy-to "$OUT" --set epochs=20
    # here, with the results.json that came back from $OUT
    .venv/bin/python bench/protocols_summary.py bench/results/protocols-gpu-paper-cub100

--variant metrix-code (the default) adds the official code's mixing (every negative, the
non-zero contrastive reduction, its MS values and miner: config.OFFICIAL_MIXING); --variant
paper keeps the project's Metrix. Without --weights, torchvision downloads ResNet-50's ImageNet
weights (offline that fails with one line saying so).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the GPU machine runs from a bare copy of the tree

from recipe_grid import CURVE_KEYS, best_on_test  # noqa: E402

from metrix.backbones import create_backbone  # noqa: E402
from metrix.datasets.base import Sample, Split, carve_validation  # noqa: E402
from metrix.model import BFloat16Features, EmbeddingModel, freeze_batchnorm  # noqa: E402
from metrix.training.config import OFFICIAL_MIXING, TrainConfig, resolve_config  # noqa: E402
from metrix.training.objective import build_objective, clip_gradients, make_optimizer  # noqa: E402
from metrix.training.sampler import build_sampler  # noqa: E402

RUNS = ("contrastive:none", "contrastive:feature", "ms:none", "ms:feature")
SEEDS = (0, 1, 2, 3, 4)
#: What one call to the GPU machine carries at most, the working tree included.
CARRY_LIMIT = 64 * 2**20
RECALL_KS = (1, 2, 4, 8)


# ---- data -------------------------------------------------------------------------------------


def pack(data: Path, out: Path, quality: int | None) -> None:
    """Every image of an ImageFolder as JPEG bytes, with labels and class names, in one torch file:
    JPEG files as they are, other files (or all, with a quality) encoded as RGB JPEG. cub100 as it
    is: 54 MB; at quality 60: smaller, for a carry limit."""
    from PIL import Image

    classes = sorted(p.name for p in data.iterdir() if p.is_dir())
    jpegs, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((data / name).iterdir()):
            if quality is None and path.suffix.lower() in (".jpg", ".jpeg"):
                content = path.read_bytes()
            else:
                buffer = io.BytesIO()
                with Image.open(path) as image:
                    image.convert("RGB").save(buffer, "JPEG", quality=quality or 90)
                content = buffer.getvalue()
            jpegs.append(torch.frombuffer(bytearray(content), dtype=torch.uint8))
            labels.append(label)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"jpegs": jpegs, "labels": labels, "classes": classes, "source": str(data), "quality": quality}, out)
    print(f"packed {len(jpegs)} images of {len(classes)} classes into {out} ({out.stat().st_size / 1e6:.1f} MB)")


class GpuImages:
    """Decoded images kept on the device: the training images at their own size (a fresh random
    resized crop and flip each epoch), the evaluation images resized and centre-cropped once."""

    def __init__(self, jpegs: list[torch.Tensor], device: torch.device):
        self.images = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)

    def train_batch(self, indices: list[int], size: int, generator: torch.Generator) -> torch.Tensor:
        crops = []
        for i in indices:
            image = self.images[i]
            top, left, height, width = random_resized_crop(image.shape[-2:], generator)
            crop = v2.functional.resized_crop(image, top, left, height, width, [size, size], antialias=True)
            if torch.rand((), generator=generator) < 0.5:
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.stack(crops)

    def eval_tensor(self, indices: list[int], size: int, resize: int) -> torch.Tensor:
        return torch.stack(
            [
                v2.functional.center_crop(v2.functional.resize(self.images[i], [resize], antialias=True), [size, size])
                for i in indices
            ]
        )


def random_resized_crop(shape, generator: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop parameters (10 tries, then the centre crop), drawn from
    `generator` so that an epoch's crops depend on (seed, epoch) alone."""
    height, width = int(shape[0]), int(shape[1])
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=generator).item())
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand((), generator=generator).item())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def split_classes(labels: list[int], val_fraction: float) -> dict[str, list[int]]:
    """Indices of the train / val / test images: the first half of the classes train (a fifth of
    them held out for validation, as `metrix train` holds them out), the second half test."""
    classes = sorted(set(labels))
    train_classes = set(classes[: len(classes) // 2])
    train = Split([Sample(i, label) for i, label in enumerate(labels) if label in train_classes])
    train, val = carve_validation(train, val_fraction)
    test = [i for i, label in enumerate(labels) if label not in train_classes]
    return {"train": [s.path for s in train.samples], "val": [s.path for s in val.samples], "test": test}


# ---- evaluation -------------------------------------------------------------------------------


@torch.no_grad()
def retrieval_metrics(embeddings: torch.Tensor, labels: torch.Tensor, ks=RECALL_KS) -> dict:
    """Each embedding a query against all the others: Recall@K and MAP@R (R = the query's class
    size - 1), exact, as metrix.evaluation.metrics computes them with faiss."""
    e = F.normalize(embeddings.float(), dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(-math.inf)
    same = labels[:, None] == labels[None, :]
    relevant_count = same.sum(dim=1) - 1
    depth = int(max(max(ks), relevant_count.max()))
    order = sim.topk(depth, dim=1).indices
    hits = same.gather(1, order).double()
    recall = {k: 100 * hits[:, :k].amax(dim=1).mean().item() for k in ks}
    rank = torch.arange(1, depth + 1, device=e.device)
    within_r = rank[None, :] <= relevant_count[:, None]
    precision_at = hits.cumsum(dim=1) / rank
    ap_at_r = (precision_at * hits * within_r).sum(dim=1) / relevant_count.clamp_min(1)
    queried = relevant_count > 0
    return {**{f"recall_at_{k}": v for k, v in recall.items()}, "map_at_r": 100 * ap_at_r[queried].mean().item()}


@torch.no_grad()
def embed(model, inputs: torch.Tensor, normalise, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    out = []
    for start in range(0, len(inputs), batch_size):
        x = normalise(inputs[start : start + batch_size]).contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            out.append(model(x).float())
    return torch.cat(out)


# ---- training ---------------------------------------------------------------------------------


def run_config(loss: str, mixup: str, seed: int, variant: str, backbone: str, settings: dict) -> TrainConfig:
    """The paper recipe (with the official code's mixing for variant metrix-code) and `settings`."""
    mixing = OFFICIAL_MIXING if variant == "metrix-code" else {}
    return resolve_config(
        recipe="paper", loss=loss, mixup=mixup, seed=seed, backbone=backbone, **{**mixing, **settings}
    )


def build_model(config: TrainConfig, weights: Path | None, device: torch.device) -> EmbeddingModel:
    pretrained = weights is None and config.pretrained
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        backbone = create_backbone(config.backbone, pretrained, config.image_size)
        model = EmbeddingModel(backbone, config.embedding_size)
    if weights is not None:
        load_torchvision_resnet(model, weights)
    freeze_batchnorm(model)
    return model.to(device, memory_format=torch.channels_last)


def half_weights(pth: Path, out: Path) -> None:
    """torchvision's resnet50 state dict without the classifier (`fc`, unused here), floating
    tensors in fp16: 49 MB instead of 98, small enough to carry in one call."""
    state = torch.load(pth, map_location="cpu", weights_only=True)
    kept = {k: v.half() if v.is_floating_point() else v for k, v in state.items() if not k.startswith("fc.")}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(kept, out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(kept)} tensors, fc dropped)")


def load_torchvision_resnet(model: EmbeddingModel, path: Path) -> None:
    """torchvision's resnet50 state dict (a .pth file, fp32 or the fp16 of `half_weights`) into
    metrix's ResNet50 (conv1 + bn1 are its stem; the classifier is dropped; load_state_dict
    copies fp16 values into the fp32 parameters)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    stem = {"conv1.": "stem.0.", "bn1.": "stem.1."}
    renamed = {}
    for key, value in state.items():
        prefix = next((p for p in stem if key.startswith(p)), None)
        if not key.startswith("fc."):
            renamed[stem[prefix] + key[len(prefix) :] if prefix else key] = value
    model.backbone.load_state_dict(renamed, strict=True)


def train_run(
    name: str,
    config: TrainConfig,
    images: GpuImages,
    split: dict,
    labels: torch.Tensor,
    weights: Path | None,
    state_file: Path,
    deadline: float,
    min_epochs: int,
    log,
) -> dict | None:
    """Train (or resume) one run epoch by epoch until it ends (returns its row) or until the next
    epoch would pass the deadline (saves and returns None); at least `min_epochs` epochs train."""
    device = labels.device
    model = build_model(config, weights, device)
    train_labels = labels[split["train"]]
    label_map = {c: i for i, c in enumerate(sorted(set(train_labels.tolist())))}
    objective = build_objective(config, len(label_map)).to(device)
    head = list(model.embedding_head.parameters())
    backbone_params = [p for p in model.backbone.parameters()]
    optimizer = make_optimizer(
        config, [{"params": backbone_params}, {"params": head}, *objective.loss.parameter_groups(config.lr)]
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step_epochs, config.lr_gamma)
    sampler = build_sampler(
        config.sampler,
        [label_map[c] for c in train_labels.tolist()],
        config.batch_size,
        config.samples_per_class,
        seed=config.seed,
    )
    pre = model.preprocessing
    mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1) * 255

    def normalise(x):
        return (x.float() - mean) / std

    evaluated = {part: images.eval_tensor(split[part], pre.image_size, pre.resize_size) for part in ("val", "test")}
    records, start_epoch, seconds = [], 0, 0.0
    if state_file.is_file():
        state = torch.load(state_file, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        records, start_epoch, seconds = state["records"], state["epoch"], state["seconds"]
        log(f"{name}: resuming after epoch {start_epoch}")
    split_model = BFloat16Features(model) if device.type == "cuda" else model
    epoch_seconds = records[-1]["seconds"] if records else 0.0
    for epoch in range(start_epoch, config.epochs):
        if epoch - start_epoch >= min_epochs and time.monotonic() + 1.2 * epoch_seconds > deadline:
            _save_state(state_file, model, optimizer, scheduler, records, epoch, seconds)
            log(f"{name}: stopping after epoch {epoch} to stay within the time limit; run again to resume")
            return None
        start = time.monotonic()
        epoch_seed = (config.seed * 1_000_003 + epoch * 7919) % (2**31)
        generator = torch.Generator().manual_seed(epoch_seed)
        objective.reseed(epoch_seed)
        sampler.set_epoch(epoch)
        warm_up = epoch < config.warmup_epochs
        for p in backbone_params:
            p.requires_grad_(not warm_up)
        model.train()
        freeze_batchnorm(model)
        totals = {"loss": 0.0, "clean": 0.0, "mixed": 0.0}
        steps = 0
        for batch in sampler:
            x = normalise(images.train_batch([split["train"][i] for i in batch], pre.image_size, generator))
            x = x.contiguous(memory_format=torch.channels_last)
            y = torch.tensor([label_map[int(c)] for c in train_labels[batch].tolist()], device=device)
            out = objective(split_model, x, y)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            params = [p for group in optimizer.param_groups for p in group["params"]]
            clip_gradients(params, config)
            optimizer.step()
            steps += 1
            for key in totals:
                totals[key] += float(getattr(out, key).detach())
        scheduler.step()
        record = {"epoch": epoch + 1, **{k: v / max(steps, 1) for k, v in totals.items()}}
        for part in ("val", "test"):
            metrics = retrieval_metrics(embed(model, evaluated[part], normalise), labels[split[part]])
            record.update({f"{part}_{k}": v for k, v in metrics.items()})
        epoch_seconds = time.monotonic() - start
        seconds += epoch_seconds
        record["seconds"] = epoch_seconds
        records.append(record)
        log(
            f"{name} epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f}, val MAP@R {record['val_map_at_r']:.2f}, "
            f"test R@1 {record['test_recall_at_1']:.2f} (reported only), {epoch_seconds:.1f} s"
        )
    state_file.unlink(missing_ok=True)
    return summary_row(records, config, seconds)


def _save_state(path: Path, model, optimizer, scheduler, records, epoch: int, seconds: float) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "records": records,
            "epoch": epoch,
            "seconds": seconds,
        },
        tmp,
    )
    tmp.replace(path)


def summary_row(records: list[dict], config: TrainConfig, seconds: float) -> dict:
    """A results.json row in bench/recipe_grid.py's shape: the test metrics of the epoch chosen on
    validation MAP@R (ours), and of the epoch with the best test R@1 (the official code's)."""
    chosen = max(records, key=lambda r: (r["val_map_at_r"], -r["epoch"]))
    on_test = best_on_test(records)
    return {
        "tag": "",
        "recipe": "gpu-paper",
        "loss": config.loss,
        "mixup": config.mixup,
        "seed": config.seed,
        "train_seconds": seconds,
        "machine": _device_name(),
        "best_epoch": chosen["epoch"],
        "val_recall_at_1": chosen["val_recall_at_1"],
        "val_map_at_r": chosen["val_map_at_r"],
        **{k: chosen[f"test_{k}"] for k in (*(f"recall_at_{k}" for k in RECALL_KS), "map_at_r")},
        "best_test_epoch": on_test["epoch"],
        "best_test_recall_at_1": on_test["test_recall_at_1"],
        "best_test_map_at_r": on_test["test_map_at_r"],
        "curve": [{k: r[k] for k in CURVE_KEYS if k in r} for r in records],
    }


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def run(args) -> None:
    deadline = time.monotonic() + 60 * args.minutes
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    packed = torch.load(args.pack, weights_only=False)
    labels = torch.tensor(packed["labels"], device=device)
    split = split_classes(packed["labels"], args.val_fraction)
    start = time.monotonic()
    images = GpuImages(packed["jpegs"], device)
    print(
        f"decoded {len(packed['jpegs'])} images on {device} in {time.monotonic() - start:.1f} s; "
        f"{len(split['train'])} train / {len(split['val'])} val / {len(split['test'])} test",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    settings = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    min_epochs = 1  # every call moves the grid on by at least one epoch
    for seed in args.seeds:
        for spec in args.runs:
            loss, mixup = spec.split(":")
            name = f"{loss}-{mixup}-s{seed}"
            if name in results:
                continue
            config = run_config(loss, mixup, seed, args.variant, args.backbone, settings)
            row = train_run(
                name,
                config,
                images,
                split,
                labels,
                args.weights,
                args.out / f"{name}.state.pt",
                deadline,
                min_epochs,
                log=lambda text: print(text, flush=True),
            )
            if row is None:
                return
            min_epochs = 0
            results[name] = {**row, "variant": args.variant, "settings": settings, "pack": str(args.pack)}
            results_file.write_text(json.dumps(results, indent=1))
            if args.copy_to:  # the GPU machine sends back only what lies under $OUT
                args.copy_to.mkdir(parents=True, exist_ok=True)
                shutil.copy2(results_file, args.copy_to / results_file.name)
            print(
                f"{name}: test R@1 {row['recall_at_1']:.2f} at the validation epoch {row['best_epoch']}, "
                f"{row['best_test_recall_at_1']:.2f} at the best test epoch {row['best_test_epoch']}",
                flush=True,
            )
    print("all runs done")


# ---- the two calls ----------------------------------------------------------------------------


def tree_bytes(root: Path) -> int:
    """What every call carries: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    return sum((root / name).stat().st_size for name in listed.decode().split("\0") if name and (root / name).is_file())


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def plan(weights: Path, pack_path: Path, root: Path = Path(__file__).resolve().parents[1]) -> int:
    """Print the two calls with what each carries; 1 (and why) when either is missing or too big.
    `root`: the checkout whose tree travels with every call."""
    tree = tree_bytes(root)
    calls = [
        (weights, "mkdir -p gpu_state && cp gpu_weights/*.pt gpu_state/ && nvidia-smi -L && ls -l gpu_state"),
        (
            pack_path,
            "python3 bench/gpu_paper.py run --pack gpu_data/cub100.pt --weights gpu_state/resnet50-fp16.pt "
            "--out gpu_state/protocols-gpu-paper-cub100 --copy-to $OUT --set epochs=20 --runs contrastive:none "
            "contrastive:feature",
        ),
    ]
    failed = 0
    for number, (path, command) in enumerate(calls, 1):
        if not (root / path).exists():
            print(f"call {number}: {path} is missing; make it first (see this script's docstring)")
            failed = 1
            continue
        total = tree + folder_bytes(root / path)
        verdict = "fits" if total <= CARRY_LIMIT else "TOO BIG"
        failed |= total > CARRY_LIMIT
        print(
            f"call {number}: carry {path}: {folder_bytes(root / path) / 2**20:.1f} MiB + tree {tree / 2**20:.1f} MiB "
            f"= {total / 2**20:.1f} of {CARRY_LIMIT / 2**20:.0f} MiB: {verdict}\n    {command}"
        )
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="re-encode an ImageFolder into one file")
    packing.add_argument("--data", type=Path, required=True)
    packing.add_argument("--out", type=Path, required=True)
    packing.add_argument("--quality", type=int, help="re-encode every image at this JPEG quality [default: keep JPEGs]")
    running = commands.add_parser("run", help="train and evaluate the grid, resuming where it stopped")
    running.add_argument("--pack", type=Path, required=True)
    running.add_argument("--out", type=Path, default=Path("bench/results/protocols-gpu-paper-cub100"))
    running.add_argument("--runs", nargs="+", default=list(RUNS), help="loss:mixup pairs")
    running.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    running.add_argument("--variant", choices=("metrix-code", "paper"), default="metrix-code")
    running.add_argument("--backbone", default="resnet50")
    running.add_argument("--weights", type=Path, help="torchvision's resnet50 ImageNet state dict (.pth)")
    running.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="paper-recipe settings to change (JSON values), e.g. epochs=30 (a smoke test: image_size=32)",
    )
    running.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction)
    running.add_argument("--minutes", type=float, default=8.5, help="stop (to resume later) before this many minutes")
    running.add_argument(
        "--copy-to", type=Path, help="copy results.json here after every finished run (the GPU machine's $OUT)"
    )
    halving = commands.add_parser("weights", help="torchvision's resnet50 .pth -> fp16 without fc")
    halving.add_argument("--pth", type=Path, required=True)
    halving.add_argument("--out", type=Path, default=Path("gpu_weights/resnet50-fp16.pt"))
    planning = commands.add_parser("plan", help="check each call's carry against the limit and print the calls")
    planning.add_argument("--weights", type=Path, default=Path("gpu_weights"))
    planning.add_argument("--pack", type=Path, default=Path("gpu_data"))
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.data, args.out, args.quality)
    elif args.command == "weights":
        half_weights(args.pth, args.out)
    elif args.command == "plan":
        sys.exit(plan(args.weights, args.pack))
    else:
        run(args)


if __name__ == "__main__":
    main()

"""Micro-benchmark: forward + backward of each loss on a 100 x 512 batch (20 classes x 5),
ours clean and with Metrix (embedding-level mixing: the loss-side cost of Metrix) against
pytorch-metric-learning's clean losses, all measured interleaved in one run.

    .venv/bin/python bench/losses.py [--repeats 30] [--threads 2] [--json out.json]

Prints a markdown table; ratios are taken within the run (the machines are shared and noisy).
Needs the dev extra (pytorch-metric-learning).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from metrix.losses import ContrastiveLoss, MultiSimilarityLoss, ProxyAnchorLoss
from metrix.losses.multi_similarity import PRESETS
from metrix.mixup import EmbeddingOnly, Metrix
from metrix.pairs import choose_pairs

BATCH, DIM, CLASSES_IN_BATCH, PROXY_CLASSES = 100, 512, 20, 100


def cases():
    """name -> (loss family, implementation, a function computing the loss from (x, y))."""
    pa_ours = ProxyAnchorLoss(PROXY_CLASSES, DIM)
    pa_pml = pml_losses.ProxyAnchorLoss(PROXY_CLASSES, DIM)
    with torch.no_grad():
        pa_pml.proxies.copy_(pa_ours.proxies)
    p = PRESETS["metrix-code"]
    ms_pml_mined = pml_losses.MultiSimilarityLoss(alpha=p["beta"], beta=p["gamma"], base=p["margin"])
    miner = pml_miners.MultiSimilarityMiner(epsilon=p["miner_epsilon"])
    families = {
        "contrastive": (ContrastiveLoss(), pml_losses.ContrastiveLoss(pos_margin=0, neg_margin=0.5)),
        "multi-similarity": (MultiSimilarityLoss(), pml_losses.MultiSimilarityLoss()),
        "multi-similarity + miner": (MultiSimilarityLoss.from_preset("metrix-code"), None),
        "proxy anchor": (pa_ours, pa_pml),
    }
    out = {}
    for family, (ours, pml) in families.items():
        if pml is not None:
            out[(family, "PML clean")] = lambda x, y, pml=pml: pml(x, y)
        else:
            out[(family, "PML clean")] = lambda x, y: ms_pml_mined(x, y, miner(x, y))
        out[(family, "ours clean")] = lambda x, y, ours=ours: ours(x, y)
        for k in (3, None):
            metrix = Metrix(ours, mode="embed", negatives_per_anchor=k, seed=0)
            label = f"ours + Metrix embed, k={'all' if k is None else k}"
            out[(family, label)] = lambda x, y, m=metrix: m(EmbeddingOnly(), x, y).loss
        out[(family, "ours + Metrix loss side of feature/input, k=3")] = _loss_side_of_feature_mixing(ours, k=3)
    return out


def _loss_side_of_feature_mixing(loss, k):
    """What feature or input mixing costs in the loss: the clean loss, the pair choice, and the
    loss on the T mixed embeddings (given: the head produces them in a real step)."""
    head_output = {}

    def run(x, y):
        sims = loss.similarities(x, y)
        plan = choose_pairs(None, y, 0.5, k, loss.mix_anchor_positives, similarity=sims.within_batch())
        if "mixed" not in head_output:  # x is the same tensor at every call
            head_output["mixed"] = torch.nn.functional.normalize(plan.apply(x.detach()), dim=1)
        mixed = head_output["mixed"].clone().requires_grad_(True)
        return loss.clean(sims) + 0.4 * loss.mixed(sims, mixed, plan)

    return run


def time_once(fn, x, y, inner):
    start = time.perf_counter()
    for _ in range(inner):
        leaf = x.clone().requires_grad_(True)
        fn(leaf, y).backward()
    return (time.perf_counter() - start) / inner


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--inner", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(BATCH, DIM), dim=1)
    y = torch.arange(CLASSES_IN_BATCH).repeat_interleave(BATCH // CLASSES_IN_BATCH)
    fns = cases()
    for fn in fns.values():  # warm-up
        time_once(fn, x, y, 3)
    samples = {key: [] for key in fns}
    for _ in range(args.repeats):  # interleaved, so drift hits every case alike
        for key, fn in fns.items():
            samples[key].append(time_once(fn, x, y, args.inner))
    median = {key: statistics.median(v) for key, v in samples.items()}

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.machine(),
    )
    print(
        f"# {BATCH} x {DIM}, {CLASSES_IN_BATCH} classes x {BATCH // CLASSES_IN_BATCH}; torch {torch.__version__}, "
        f"{args.threads} threads, {cpu}; median of {args.repeats} x {args.inner} forward+backward\n"
    )
    print("| loss | implementation | ms / step | vs PML clean | vs ours clean |")
    print("|---|---|---|---|---|")
    rows = []
    for (family, impl), t in median.items():
        pml, ours = median[(family, "PML clean")], median[(family, "ours clean")]
        rows.append(dict(loss=family, implementation=impl, ms=t * 1e3, vs_pml=t / pml, vs_ours_clean=t / ours))
        print(f"| {family} | {impl} | {t * 1e3:.2f} | {t / pml:.2f}x | {t / ours:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu, threads=args.threads, torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()

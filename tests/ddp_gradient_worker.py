"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2 -m tests.ddp_gradient_worker
OUT LOSS`: one Metrix step on this rank's half of a fixed batch; rank 0 saves loss and gradients."""

import sys

import torch

from metrix.training.distributed import Distributed, GlobalBatch

from .test_distributed import LOSSES, gradients, setup


def main(out_file: str, loss_name: str) -> None:
    distributed = Distributed.from_environment("cpu")
    torch.set_num_threads(1)
    model, metrix, images, labels = setup(LOSSES[loss_name])
    local = slice(distributed.rank, None, distributed.world_size)  # the sampler's rank slice
    out = metrix(GlobalBatch(model, distributed), images[local], distributed.gather_labels(labels[local]), lam=0.35)
    out.loss.backward()
    distributed.average_gradients([*model.parameters(), *metrix.loss.parameters()])
    if distributed.is_main:
        torch.save(
            {"loss": out.loss.detach(), "grads": gradients(model, metrix), "world_size": distributed.world_size},
            out_file,
        )
    distributed.close()


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Several training processes (`torchrun --nproc_per_node N -m metrix train ...`).

Each process embeds its slice of the global P x K batch; feature maps and labels are gathered,
so every process computes the same Metrix loss over the whole global batch: pairs and mixes
span all processes. all_gather's backward sums each slice's gradient over the processes, so
after averaging all gradients every parameter holds exactly the single-process gradient.
Only rank 0 writes the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_environment(cls, device: str = "auto") -> "Distributed":
        """Single-process unless torchrun's WORLD_SIZE says otherwise; gloo on CPU, nccl on GPU."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
        if world_size == 1:
            return cls(0, 1, torch.device(device if device != "auto" else ("cuda" if use_cuda else "cpu")))
        import torch.distributed as dist

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            if local_rank >= torch.cuda.device_count():
                from .config import ConfigError

                raise ConfigError(
                    f"torchrun started process {local_rank} on a machine with {torch.cuda.device_count()} GPU(s): "
                    'start at most one process per GPU (nccl refuses two on one GPU), or set "device": "cpu" in --config'
                )
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        if not use_cuda:  # share the cores instead of every process using all of them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        return cls(dist.get_rank(), world_size, torch.device(f"cuda:{local_rank}" if use_cuda else "cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, x: Tensor) -> Tensor:
        """Concatenate every process's x along dim 0, in rank order; gradients flow back."""
        if self.world_size == 1:
            return x
        return _GatherWithGradient.apply(x, self.rank, self.world_size)

    def gather_labels(self, labels: Tensor) -> Tensor:
        if self.world_size == 1:
            return labels
        import torch.distributed as dist

        parts = [torch.empty_like(labels) for _ in range(self.world_size)]
        dist.all_gather(parts, labels)
        return torch.cat(parts)

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        if self.world_size == 1:
            return
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            flat = torch.cat([g.flatten() for g in grads])
            dist.all_reduce(flat)
            flat /= self.world_size
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def broadcast(self, value):
        """Rank 0's value on every process (a picklable object)."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()  # tearing gloo down while a peer is still finishing aborts that peer
            dist.destroy_process_group()


class _GatherWithGradient(torch.autograd.Function):
    """all_gather whose backward sums the gradient of the whole gathered tensor over processes
    (every process's loss uses every slice) and returns this process's slice. Plain collectives
    only: torch.distributed.nn's version is deprecated and, under gloo, sometimes aborted a
    process at teardown."""

    @staticmethod
    def forward(ctx, x: Tensor, rank: int, world_size: int) -> Tensor:
        import torch.distributed as dist

        parts = [torch.empty_like(x) for _ in range(world_size)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        import torch.distributed as dist

        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None


class GlobalBatch(nn.Module):
    """A SplitModel whose features are those of the whole global batch (gathered)."""

    def __init__(self, model, distributed: Distributed):
        super().__init__()
        self.model, self.distributed = model, distributed

    def features(self, images: Tensor) -> Tensor:
        return self.distributed.gather(self.model.features(images))

    def head(self, features: Tensor) -> Tensor:
        return self.model.head(features)

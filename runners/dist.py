"""Data parallelism over samples, the way lmms-eval runs it: one process per GPU under `torchrun` /
`accelerate launch` (RANK, WORLD_SIZE, LOCAL_RANK in the environment), lmms-eval sharding each task's
requests by rank and gathering the results on rank 0. These helpers let the sweep agree across ranks
(rank 0 decides what runs, every rank runs it, rank 0 writes) and gather the plugin's per-sample
records. In a single process each is the identity.
"""
from __future__ import annotations

import os
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def init() -> None:
    """Join the launcher's process group (NCCL on CUDA, gloo on CPU) if there is more than one rank."""
    if world_size() <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)


def shutdown() -> None:
    """Leave the process group (each rank, when its work is done). A gloo group left for the
    interpreter's exit to tear down can abort the rank ("terminate called without an active
    exception", exit -6; pytorch/pytorch#190489), turning a finished sweep into a failed launch."""
    if world_size() <= 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if world_size() <= 1:
        return obj
    import torch.distributed as dist

    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if world_size() <= 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        import torch.distributed as dist

        dist.barrier()

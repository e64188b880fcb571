"""torchrun integration: one process per GPU (or CPU process), gloo on CPU, nccl on GPU.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them the
trainer or the evaluation runs as a single process. The same code runs one GPU, one node or
many nodes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from flexip_model.errors import FlexIPError

DEVICES = ("auto", "cuda", "cpu")  # what `setup` accepts: the configs' device keys


@dataclass(frozen=True)
class Topology:
    """This process's place among the ranks, and the device it computes on."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes checkpoints, logs and sample grids."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one rank: collectives are real."""
        return self.world_size > 1


def setup(device: str, timeout_minutes: int) -> Topology:
    """Pick the device (LOCAL_RANK's GPU under torchrun) and join the process group if there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda" and not torch.cuda.is_available():
        raise FlexIPError(
            "device is 'cuda' but PyTorch sees no CUDA GPU: install a CUDA build of PyTorch or set device = 'cpu'."
        )
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)  # before ComfyUI is imported: it uses the current device
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(minutes=timeout_minutes),
            **({"device_id": target} if use_cuda else {}),
        )
    return Topology(rank, local_rank, world_size, target)


def teardown() -> None:
    """Leave the process group, if `setup` joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(topology: Topology) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if topology.distributed:
        dist.barrier()


def all_sum(topology: Topology, tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the input is left alone)."""
    tensor = tensor.detach().clone()
    if topology.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_strings(topology: Topology, value: str) -> list[str]:
    """`value` from every rank, in rank order."""
    if not topology.distributed:
        return [value]
    out: list = [None] * topology.world_size
    dist.all_gather_object(out, value)
    return out


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 of every tensor's float32 bytes in key order: equal digests mean equal weights."""
    digest = hashlib.sha256()
    for name, tensor in weights.items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()

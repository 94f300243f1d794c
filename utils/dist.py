"""Distributed helpers: one process per device, started by ``torchrun`` (or a single plain process).

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them everything
runs in one process and the helpers below are no-ops. The backend is nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


class DeviceError(RuntimeError):
    """A --device this machine cannot use (one line naming it)."""


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """The torch device a --device value names; every script picks its device here.

    'auto': the GPU when CUDA is available, else the CPU. A CUDA device on a machine without CUDA, a GPU
    index it does not have, or a name torch does not know: DeviceError, before any tensor is moved there.
    ``local_rank`` (a process of a torchrun job): a bare 'cuda' means this process's GPU, cuda:<local_rank>,
    which also becomes the current device; without it, a bare 'cuda' stays torch's current device.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise DeviceError(f"--device {name!r}: {str(e).splitlines()[0]}") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {name} but no CUDA device is available")
    this_process = device.index is None and local_rank is not None
    if this_process:
        device = torch.device("cuda", local_rank)
    if (device.index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if this_process:
        torch.cuda.set_device(device)
    return device


def init(device: str = "auto", timeout_minutes: float = 60) -> DistInfo:
    """Join the process group when launched by torchrun; returns this process's rank and device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        # Long timeout: rank 0 may write a checkpoint while the others wait.
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=timedelta(minutes=timeout_minutes))
    return DistInfo(rank, world_size, local_rank, dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: object) -> list:
    """Every rank's ``obj`` (picklable), in rank order; [obj] without a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, src: int = 0) -> object:
    """``src``'s ``obj`` (picklable) on every rank; ``obj`` itself without a process group.

    For decisions one rank takes alone (e.g. whether the output folder may be used), so that every rank
    acts on the same answer.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average a dict of floats over ranks (for logging)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy ``src``'s buffers (BatchNorm running statistics) to every rank, in place.

    DDP keeps parameters equal but each rank's running statistics come from its own batches; before a
    model is evaluated on shards of the validation set and saved, every rank must hold the same one.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    for b in module.buffers():
        dist.broadcast(b.data, src=src)


def average_buffers(module: torch.nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm statistics) over the ranks, in place."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b.data)
            b.data /= dist.get_world_size()

"""Data-parallel training: N processes, one per GPU (or gloo processes on the CPU).

Every process trains the same networks on its own batches (its own sampler, framework and
dropout streams, seeded from the run seed and its rank). The two gradient sources g_L and g_U
are averaged across processes apart, by a bucketed all-reduce that the optimizers call before
each step (a :class:`~hco_cli.optim.sync.GradientSync` per optimizer, which the training loop
opens when a phase builds its optimizers and closes when it ends); DDP's reducer, which
expects one backward per forward, is not used. Flat-mode optimizers (the CUDA default) take
the reducer's bucket size and start each bucket's all-reduce during the backward pass instead,
as the frameworks compute a source inside ``opt.collecting(source=...)``
(:mod:`hco_cli.optim.overlap`).
Identical averaged gradients keep the weights identical, so teachers that follow the students
by EMA stay identical too. Rank 0 alone validates and writes the run folder; the decisions
that change the weights (a new best, restored at a phase's end) are broadcast, and weights are
broadcast from rank 0 at the start of every phase.

``hco train --gpus N`` spawns the workers itself (:mod:`hco_cli.training.launch`); under
``torchrun`` the ranks come from the environment (:func:`join`).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from hco_cli.config import TrainConfig, validate_config
from hco_cli.errors import CheckpointError, ConfigError, TrainingDivergedError

# Rank r draws its random streams from seed + r * STREAM_STRIDE (rank 0: the one-process run).
STREAM_STRIDE = 1_000_003
# Diagnostic: every rank draws rank 0's streams, so N processes must train exactly like one.
SAME_STREAMS_ENV = "HCO_DISTRIBUTED_SAME_STREAMS"
# Rank 0 validates while the others wait in a collective; a long validation must not time out.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)

class BucketedAllReduce:
    """Averages gradient tensors over all processes in place, in buckets of ``bucket_mb``.

    Tensors are flattened into buckets (grouped by device and dtype), every bucket is
    all-reduced asynchronously, then all are awaited, divided by the world size and copied
    back. A list of one contiguous tensor (a flat-buffer optimizer's gradient) is reduced in
    place, in bucket-sized chunks of itself.
    """

    def __init__(self, world_size: int, *, bucket_mb: float = 6.0) -> None:
        if world_size < 1 or bucket_mb <= 0:
            raise ValueError("world_size must be >= 1 and bucket_mb > 0")
        self.world_size = world_size
        self.bucket_bytes = max(1, int(bucket_mb * 2**20))

    def __call__(self, tensors: list[Tensor]) -> None:
        if self.world_size == 1 or not tensors:
            return
        if len(tensors) == 1 and tensors[0].is_contiguous():
            flat = tensors[0].view(-1)
            chunk = max(1, self.bucket_bytes // flat.element_size())
            handles = [dist.all_reduce(part, async_op=True) for part in flat.split(chunk)]
            for handle in handles:
                handle.wait()
            flat.div_(self.world_size)
            return
        buckets = self.buckets(tensors)
        flats = [torch.cat([t.reshape(-1) for t in bucket]) for bucket in buckets]
        handles = [dist.all_reduce(flat, async_op=True) for flat in flats]
        for handle in handles:
            handle.wait()
        for bucket, flat in zip(buckets, flats, strict=True):
            flat.div_(self.world_size)
            _copy_back(bucket, flat)

    def buckets(self, tensors: list[Tensor]) -> list[list[Tensor]]:
        """Consecutive tensors of one device and dtype, at most ``bucket_bytes`` per bucket
        (a larger tensor forms a bucket of its own)."""
        out: list[list[Tensor]] = []
        open_: dict[tuple[Any, ...], tuple[list[Tensor], int]] = {}
        for t in tensors:
            key = (t.device, t.dtype)
            size = t.numel() * t.element_size()
            bucket, used = open_.get(key, ([], 0))
            if bucket and used + size > self.bucket_bytes:
                bucket, used = [], 0
            if not bucket:
                out.append(bucket)
            bucket.append(t)
            open_[key] = (bucket, used + size)
        return out


def _copy_back(tensors: list[Tensor], flat: Tensor) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view(t.shape))
        offset += t.numel()


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    same_streams: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: validates and writes metrics, checkpoints and run.json."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's GPU (cuda:LOCAL_RANK) for a CUDA device; other devices unchanged."""
        if device.type == "cuda" and self.active:
            return torch.device("cuda", self.local_rank)
        return device

    def stream_seed(self, seed: int) -> int:
        """The seed of this rank's random streams (``seed`` itself on rank 0)."""
        return seed if self.same_streams else seed + self.rank * STREAM_STRIDE

    def reducer(self, *, bucket_mb: float) -> BucketedAllReduce | None:
        return BucketedAllReduce(self.world_size, bucket_mb=bucket_mb) if self.active else None

    def broadcast_modules(self, modules: Iterable[nn.Module]) -> None:
        """Copy rank 0's parameters and buffers into every rank's modules."""
        if not self.active:
            return
        tensors = list({id(t): t for m in modules for t in (*m.parameters(), *m.buffers())}
                       .values())
        groups: dict[tuple[Any, ...], list[Tensor]] = {}
        for t in tensors:
            groups.setdefault((t.device, t.dtype), []).append(t)
        with torch.no_grad():
            for group in groups.values():
                flat = torch.cat([t.detach().reshape(-1) for t in group])
                dist.broadcast(flat, src=0)
                _copy_back([t.detach() for t in group], flat)

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (picklable objects)."""
        if not self.active:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out


SINGLE_PROCESS = DistributedContext()


def fingerprint(modules: Iterable[nn.Module]) -> list[float]:
    """Per parameter tensor, the float64 sum of its values and of their squares."""
    params = list({id(p): p for m in modules for p in m.parameters()}.values())
    if not params:
        return []
    with torch.no_grad():
        sums = torch.stack([torch.stack([p.double().sum(), p.double().square().sum()])
                            for p in params])
    return [float(v) for v in sums.flatten().tolist()]


def check_replicas(replicas: list[dict[str, Any]], *, iteration: int) -> None:
    """Every rank must hold rank 0's weights; the gradient averaging keeps them identical."""
    reference = replicas[0]["fingerprint"]
    for rank, replica in enumerate(replicas[1:], start=1):
        if replica["fingerprint"] != reference:
            raise TrainingDivergedError(f"the weights of training process {rank} differ from "
                                        f"those of process 0 at iteration {iteration}")


# ------------------------------------------------------------------- joining a group
def environment_world_size() -> int:
    """WORLD_SIZE from the environment (torchrun, or a worker of :func:`launch`); 1 if unset."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def environment_rank() -> int:
    """RANK from the environment; 0 if unset."""
    return int(os.environ.get("RANK", "0") or 0)


def needs_launch(processes: int) -> bool:
    """True when ``processes`` > 1 and this process is not already one of them."""
    return processes > 1 and environment_world_size() == 1


def check_devices(processes: int, *, device: str, sync_batchnorm: bool) -> None:
    """One-line ConfigErrors for process counts the machine cannot run."""
    cuda = device != "cpu"
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda and processes > 1 and available < processes:
        raise ConfigError(f"--gpus {processes}: only {available} CUDA device(s) are available "
                          "(with --device cpu the processes train on the CPU)")
    if sync_batchnorm and (not cuda or available == 0):
        raise ConfigError("distributed.sync_batchnorm needs CUDA devices; this run trains on "
                          "the CPU")


def join(device: torch.device) -> DistributedContext:
    """This process's context: one process, or a rank of the environment's process group.

    The group (NCCL on CUDA, gloo otherwise) is created here when the environment names more
    than one process and none exists yet; :func:`leave` ends it.
    """
    world = environment_world_size()
    if world == 1:
        return SINGLE_PROCESS
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        if device.type == "cuda":
            if local >= torch.cuda.device_count():
                raise ConfigError(f"rank {rank}: LOCAL_RANK {local} but only "
                                  f"{torch.cuda.device_count()} CUDA device(s)")
            torch.cuda.set_device(local)
        elif "OMP_NUM_THREADS" not in os.environ:  # CPU processes share the cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=COLLECTIVE_TIMEOUT)
    return DistributedContext(rank=rank, world_size=world, local_rank=local,
                              same_streams=os.environ.get(SAME_STREAMS_ENV) == "1")


def with_processes(config: TrainConfig, ctx: DistributedContext) -> TrainConfig:
    """``config`` recording the process count it runs with (torchrun may start it)."""
    asked = config.distributed.processes
    if ctx.active and asked not in (1, ctx.world_size):
        raise ConfigError(f"distributed.processes is {asked} but {ctx.world_size} processes "
                          "were started")
    if asked == ctx.world_size:
        return config
    data = config.model_dump(mode="json")
    data["distributed"]["processes"] = ctx.world_size
    return validate_config(data)


def leave(ctx: DistributedContext) -> None:
    """End the process group after a run that finished on every rank."""
    if ctx.active and dist.is_initialized():
        # Free unreachable optimizers and their gloo work handles while the group exists:
        # left to interpreter exit, such a handle can abort the process (seen in the tests).
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def check_resume_processes(saved: int, *, requested: int | None) -> None:
    """A run resumes only with the number of processes its checkpoint was saved with."""
    world = environment_world_size()
    given = requested if requested is not None else (world if world > 1 else None)
    if given is not None and given != saved:
        raise CheckpointError(f"last.pt was saved by {saved} process(es); resume it with "
                              f"--gpus {saved} (not {given})")


__all__ = ["SINGLE_PROCESS", "BucketedAllReduce", "DistributedContext", "check_devices",
           "check_replicas", "check_resume_processes", "environment_rank", "fingerprint", "join",
           "leave", "needs_launch", "with_processes"]

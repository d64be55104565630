"""Data-parallel runs under ``torchrun`` / ``accelerate launch``: rank facts, one process group, sharding.

Both launchers start one process per device and set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``.
Without them (or with ``WORLD_SIZE=1``) every function here is a no-op, so the single-process path
never touches ``torch.distributed``.

Evaluation shards each strategy's pending examples *after* the length sort, round-robin
(``sorted[rank::world]``): every rank gets the same mix of short and long prompts (balanced work),
and each rank's batches stay length-homogeneous (little padding). Greedy answers do not depend on
the batch a prompt lands in, so the gathered predictions equal a single-process pass;
``harness.batching.restore_order`` then puts them back in example order on disk.

Only rank 0 writes into the run folder; caches that several ranks could fill are guarded by the
cross-process build locks (``harness.locks``), and adapter training runs on every rank together
(DDP), with rank 0 publishing the adapter.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, TypeVar

log = logging.getLogger("adaptbench")

T = TypeVar("T")

_initialised_here = False


def world_size() -> int:
    """Number of processes in the job (1 when not launched by torchrun / accelerate)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0) if world_size() > 1 else 0


def local_rank() -> int:
    """This process's index on its machine: its GPU under CUDA."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0) if world_size() > 1 else 0


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    """Rank 0 writes the run folder, the caches' records, the report, and prints."""
    return rank() == 0


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def active() -> bool:
    """A multi-process job whose process group is up (collectives are meaningful)."""
    if not is_distributed():
        return False
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def init(timeout_s: float = 1800.0) -> None:
    """Initialise ``torch.distributed`` once (idempotent): nccl with one GPU per rank, else gloo.

    Under CUDA the rank's device becomes ``cuda:LOCAL_RANK`` (``torch.cuda.set_device``), so a bare
    ``"cuda"`` in the model loader and in the backend means this rank's GPU.
    """
    global _initialised_here
    if not is_distributed() or active():
        return
    import torch

    dist = _dist()
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() > local_rank()
    if use_cuda:
        torch.cuda.set_device(local_rank())
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    _initialised_here = True
    log.info("distributed: rank %d of %d (%s)", rank(), world_size(), backend)
    if not is_main():  # progress messages once (rank 0's), warnings and errors from every rank
        logging.getLogger("adaptbench").setLevel(max(logging.WARNING, log.getEffectiveLevel()))


def finish(poll_s: float = 0.2) -> None:
    """Tear down the process group this module started, all ranks together (a no-op otherwise).

    PyTorch wants ``destroy_process_group`` called by every rank at the end (for NCCL it is
    collective), and a gloo rank that destroyed its group while rank 0 still held its own once died
    at exit in CI (SIGABRT). Rank 0 works on alone (latency probe, scoring, report: minutes on a big
    set), so the others wait for its word in the rendezvous store, polling: no collective timeout
    however long rank 0 takes, and a signal is handled between polls (``signals.immediate``). The
    barrier keeps rank 0, and the store its process may host, until every rank has the word.
    """
    global _initialised_here, _finishes
    if _initialised_here and active():
        dist = _dist()
        store, key = _store(), f"adaptbench/finished/{_finishes}"  # a key per init/finish cycle
        if store is not None and is_main():
            store.set(key, "1")
        elif store is not None:
            while not store.check([key]):
                time.sleep(poll_s)
        dist.barrier()
        dist.destroy_process_group()
        _finishes += 1
    _initialised_here = False


_finishes = 0


def _store() -> Any:
    """The default group's key-value store (torchrun's rendezvous store), or None if unreachable."""
    getter = getattr(_dist().distributed_c10d, "_get_default_store", None)
    try:
        return getter() if getter else None
    except (RuntimeError, ValueError):
        return None


def barrier() -> None:
    if active():
        _dist().barrier()


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    _dist().broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def gather_objects(obj: T) -> list[T] | None:
    """Every rank's ``obj`` in rank order on rank 0 (``None`` elsewhere); ``[obj]`` single-process."""
    if not active():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    _dist().gather_object(obj, out, dst=0)
    return out


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's ``obj`` in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


# -- sharding (pure: unit-tested without processes) -----------------------------------------------


def shard(items: list[T], rank_: int, world: int) -> list[T]:
    """This rank's share of ``items``: every ``world``-th item from ``rank_`` (round-robin)."""
    return items[rank_::world]


def unshard(shards: list[list[T]]) -> list[T]:
    """Inverse of ``shard`` over all ranks: the items back in their original order."""
    out: list[T] = []
    for i in range(max((len(s) for s in shards), default=0)):
        out.extend(s[i] for s in shards if i < len(s))
    return out


def shard_batches(items: list[T], size: int, rank_: int, world: int) -> Iterator[list[T]]:
    """This rank's batches of its shard, padded with empty batches to the same count on every rank.

    Every rank then runs the same number of rounds, so a gather per round (predictions written per
    batch, as single-process) never waits for a rank that has already finished.
    """
    mine = shard(items, rank_, world)
    rounds = -(-len(shard(items, 0, world)) // size)  # rank 0's shard is the longest
    for i in range(rounds):
        yield mine[i * size : (i + 1) * size]


def flatten(groups: list[list[T]] | None) -> list[T]:
    return [item for group in groups or [] for item in group]

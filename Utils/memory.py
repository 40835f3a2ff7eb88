"""Memory: what a process holds (Linux /proc), what the machine has free, and what a job will need.

The estimate is a model of where a job's memory goes, calibrated on this project's measurements
(benchmarks/bench_memory.py prints it beside the measured total):
- torch and the project, imported once by the forkserver and shared by every rank (spawn: once per rank);
- per rank, what the fork writes to (allocator arenas, gloo, the interpreter's own objects);
- the training samples as float32, each in exactly one client's shard, so the total is the training set's
  whatever the number of clients; text corpora are tokenised by every rank;
- a few copies of the model per rank (model, gradients, flat vectors, messages), and on the server the
  snapshots waiting for evaluation and, with the client merge, the last round's uploads for the checkpoint;
  with --compress two more per rank (error feedback's residual or the server's replica, a decoded difference);
  the server's upload buffers, one per upload it receives at once (--receive_window);
- with several clients per rank (--num_clients), each further client a round trains on a rank holds its
  trained model and its upload until they leave (merging, also its next start), and with --compress each
  hosted client keeps its own residual (hosted_client_copies).
With --gpus, device memory is estimated per device (device_memory_bytes) and checked against what it has free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

MB = 2**20
SHARED_IMPORT_BYTES = 420 * MB     # torch + torch._dynamo + the project, resident after import
RANK_PRIVATE_BYTES = 60 * MB       # what each forked rank adds on its own before any data
MODEL_COPIES_PER_RANK = 8          # model, gradients, flat copies, upload and download buffers
COMPRESSION_COPIES_PER_RANK = 2    # --compress: a residual or replica, and a decoded difference
TOKEN_BYTES_WHILE_LOADING = 40     # a token while a rank tokenises: a Python int in a list, then int64


def resident_mb(field: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident set size in MB; NaN where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def reset_peak_resident() -> None:
    """Restart the VmHWM high-water mark (Linux), so the reported peak covers the rounds, not data loading."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), or None off Linux."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class JobShape:
    """What a job's memory depends on, known before any rank starts."""
    world_size: int
    model_bytes: int            # one float32 copy of the model's parameters and buffers
    train_bytes: int            # the training samples the clients hold together (float32), or 0 for text
    test_bytes: int             # the test set as the server holds it (uint8 images, int64 tokens)
    corpus_tokens: int = 0      # text: tokens every rank reads (train + valid + test)
    snapshot_bytes: int = 0     # models that may wait for evaluation on the server
    merge_state_bytes: int = 0  # the client merge: the clients' last uploads the server keeps (merge_state_copies)
    compressed: bool = False    # --compress other than none (COMPRESSION_COPIES_PER_RANK)
    receive_buffers: int = 1    # the server's upload buffers (--receive_window; one is among the rank's copies)
    hosted_client_bytes: int = 0  # per client rank: the state of its clients beyond the first (hosted_client_copies)
    forked: bool = True         # ranks are forks of one preloaded process (CPU) rather than spawned


# Checkpoint states alive at once: one being written, one waiting for the writer, one arriving, since a
# checkpoint never holds the rounds up.
CHECKPOINT_GENERATIONS = 3


def merge_generation_copies(num_clients: int) -> int:
    """Model copies one client merge checkpoint keeps: the uploads of a round's `num_clients` clients (K, the
    sampled ones) and the model under them."""
    return num_clients + 1


def merge_state_copies(num_clients: int) -> int:
    """Model copies the server holds for the client merge's checkpoints: CHECKPOINT_GENERATIONS of them."""
    return CHECKPOINT_GENERATIONS * merge_generation_copies(num_clients)


def hosted_client_copies(num_clients: int, per_round: int, client_ranks: int, *, merge: bool,
                         compressed: bool) -> int:
    """Model copies a client rank holds for its clients beyond the one a rank with one client holds: per further
    client trained in a round, its trained model and its packed upload (merging, also its next start); with
    --compress, per further hosted client, its residual."""
    hosted = math.ceil(num_clients / client_ranks)
    trained = min(hosted, math.ceil(per_round / client_ranks))
    return (trained - 1) * (3 if merge else 2) + ((hosted - 1) if compressed else 0)


def job_memory_bytes(shape: JobShape) -> int:
    """Estimated peak resident memory of all of a job's processes together (see the module docstring)."""
    shared = SHARED_IMPORT_BYTES * (2 if shape.forked else shape.world_size + 1)   # + the launcher's import
    copies = MODEL_COPIES_PER_RANK + (COMPRESSION_COPIES_PER_RANK if shape.compressed else 0)
    per_rank = RANK_PRIVATE_BYTES + copies * shape.model_bytes \
        + shape.corpus_tokens * TOKEN_BYTES_WHILE_LOADING
    client_ranks = (shape.world_size - 1) * shape.hosted_client_bytes
    return shared + shape.world_size * per_rank + client_ranks + shape.train_bytes + shape.test_bytes \
        + shape.snapshot_bytes + shape.merge_state_bytes + (shape.receive_buffers - 1) * shape.model_bytes


CUDA_CONTEXT_BYTES = 600 * MB     # a process's CUDA context and allocator reserve on its device
DEVICE_MODEL_COPIES = 6            # model, gradients, activations at the project's batch sizes, staged messages


def device_memory_bytes(shape: JobShape, devices: list[int]) -> dict[int, int]:
    """Estimated device memory per CUDA device, devices[r] being rank r's: each rank's context and model
    copies, a client rank's share of the training set (its clients' shards, float32, staged once), and on the
    server's device the test set (staged once) and the evaluator's copy of the model."""
    per_device: dict[int, int] = {}
    num_clients = shape.world_size - 1
    for rank, device in enumerate(devices):
        own = CUDA_CONTEXT_BYTES + DEVICE_MODEL_COPIES * shape.model_bytes
        own += shape.test_bytes + shape.model_bytes if rank == 0 else shape.train_bytes // max(num_clients, 1)
        per_device[device] = per_device.get(device, 0) + own
    return per_device


def device_memory_refusal(needed: dict[int, int], free: dict[int, int]) -> str | None:
    """The one-line reason to refuse a job whose ranks would not fit a device's free memory, else None."""
    for device, bytes_needed in sorted(needed.items()):
        if bytes_needed > free.get(device, bytes_needed):
            return (f"GPU {device} would need about {bytes_needed / 2**30:.1f} GB for its ranks but "
                    f"{free[device] / 2**30:.1f} GB are free; spread the ranks over more devices (--gpus), use "
                    f"fewer clients (--world_size) or --max_train_samples")
    return None


def memory_refusal(needed: int, available: int | None) -> str | None:
    """The one-line reason to refuse a job that cannot fit the machine's available memory, else None."""
    if available is None or needed <= available:
        return None
    return (f"this job needs about {needed / 2**30:.1f} GB of memory but {available / 2**30:.1f} GB are "
            f"available; use fewer clients (--world_size), --max_train_samples, or several machines "
            f"(docs/several-machines.md)")

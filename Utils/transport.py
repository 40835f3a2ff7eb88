"""Everything that crosses the network, and the only module that imports torch.distributed.

Star topology (README, "The algorithm"): rank 0 is the server, ranks 1..world_size - 1 are the client ranks (each
hosting one FL client, or several with --num_clients), and every message is one flat float32 tensor sent point to
point. The message format lives here and nowhere else:

    upload    a payload: the client's model (client merge: G_{r-1} + its progress of round r), or with --compress
              that model less the global model the client holds; then its RoundReport
              (REPORT_FIELDS)                                                 upload_size(payload words)
    start     the model the first round trains from (float32, never compressed), then the rounds already
              done (0, or the round a resumed run continues after); always the first download; a resumed
              client merge sends each client its own start                    download_size(numel)
    download  a payload: the global model, or with --compress the global model less what the clients
              hold; then one flag: CONTINUE or STOP                           download_size(payload words)
    report    a client rank's last job (a RoundReport), then its peak resident memory in MB, after the
              final download                                                  FINAL_REPORT_SIZE
    hello     a client rank's fingerprint (HELLO_SIZE numbers), first of all: the server refuses a rank whose
              options or model differ from its own, before any model of another size is sent

A payload is the fields of Utils.compression's format (part_specs) laid end to end as bytes, padded with
zeros to whole float32 words (pack_payload): with --compress none just the float32 model. Nothing is ever
unpickled from the network.

Link emulation (--bandwidth, --latency): on loopback a transfer takes microseconds, which hides
what Overlap-FedAvg is about. A client rank's link of `bandwidth_mbit` and `latency_ms` delays each message by
latency + 8 * bytes / bandwidth on the client rank's side: an upload leaves only after that delay, a
download is handed over only after it. FedAvg and Overlap-FedAvg go through the same code, so their
round times compare.
"""
from __future__ import annotations

import logging
import math
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

SERVER_RANK = 0


# nccl moves only CUDA tensors: messages are staged on this rank's device (None: gloo, CPU tensors).
_nccl_device: torch.device | None = None


class PeerFailure(RuntimeError):
    """A peer crashed, hung past the timeout, or closed its connection."""


# ----------------------------------------------------------------------------------------------------
# Process group


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (checked before rank 0 tries to bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS considers free right now (for single-machine jobs and tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def init_process_group(rank: int, world_size: int, *, master_addr: str | None, master_port: int | None,
                       backend: str, timeout_s: float, device: torch.device | None = None) -> None:
    """Join the job's process group; no later collective or point-to-point wait outlasts timeout_s (each takes
    a shorter one from its HangDeadline).

    With master_addr/master_port None the rendezvous comes from the environment (torchrun, or RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT set by hand on each machine).
    """
    global _nccl_device
    _nccl_device = device if backend == "nccl" else None
    init_method = "env://" if master_addr is None else f"tcp://{master_addr}:{master_port}"
    try:
        dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
    except Exception as error:  # noqa: BLE001 - re-raised with the cause the user can act on
        text = str(error)
        if "address already in use" in text.lower() or "EADDRINUSE" in text:
            raise PeerFailure(f"rank {rank}: master port {master_port} on {master_addr} is already in use; "
                              f"pass a free --master_port") from error
        raise PeerFailure(f"rank {rank}: could not join the process group at {init_method} "
                          f"within {timeout_s:.0f} s: {text.splitlines()[0] if text else error!r}") from error


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------
# Messages

CONTINUE, STOP = 1.0, 0.0   # the flag that ends every download


@dataclass(frozen=True)
class RoundReport:
    """The numbers a client appends to an upload: its last round's training and its previous
    communication job (NaN where there is none yet)."""
    train_loss: float = math.nan
    train_s: float = math.nan
    comm_wait_s: float = math.nan   # how long the trainer was blocked on that job
    comm_s: float = math.nan        # how long the job (upload + download) ran

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(astuple(self), dtype=torch.float32)

    @classmethod
    def from_tensor(cls, numbers: torch.Tensor) -> RoundReport:
        return cls(*numbers.tolist())


REPORT_FIELDS = tuple(f.name for f in fields(RoundReport))
FINAL_REPORT_SIZE = len(REPORT_FIELDS) + 1


def pack_final_report(report: RoundReport, peak_resident_mb: float) -> torch.Tensor:
    """A client rank's last message: its last communication job and its peak resident memory (MB)."""
    return torch.cat([report.to_tensor(), torch.tensor([peak_resident_mb], dtype=torch.float32)])


def unpack_final_report(message: torch.Tensor) -> tuple[RoundReport, float]:
    return RoundReport.from_tensor(message[:-1]), float(message[-1])


HELLO_SIZE = 5   # protocol version, then a 64-bit fingerprint as four 16-bit numbers (exact in float32)
PROTOCOL_VERSION = 3.0   # 2: payloads may be compressed (--compress); 3: a rank may host several clients


def hello_message(fingerprint: bytes) -> torch.Tensor:
    """What a client sends first: the protocol version and 8 bytes that identify its options and model."""
    halves = [int.from_bytes(fingerprint[i:i + 2], "big") for i in range(0, 8, 2)]
    return torch.tensor([PROTOCOL_VERSION, *halves], dtype=torch.float32)


def check_client_ranks(fingerprint: bytes, ranks: list[int], timeout_s: float) -> None:
    """The server: every client rank's hello must match its own; a clear error naming the first that does not."""
    expected, message = hello_message(fingerprint), torch.empty(HELLO_SIZE)
    for rank in ranks:
        recv(message, rank, timeout_s=timeout_s, waiting_for=f" (the server was waiting for client rank {rank} "
                                                             f"to join)")
        if message[0].item() != PROTOCOL_VERSION:
            raise PeerFailure(f"client rank {rank} speaks protocol {message[0].item():g}, the server "
                              f"{PROTOCOL_VERSION:g}: run the same version of this project on every machine")
        if not torch.equal(message, expected):
            raise PeerFailure(f"client rank {rank} runs with other options or another model than the server: "
                              f"give every rank the same options (and the same data)")


def upload_size(payload_words: int) -> int:
    return payload_words + len(REPORT_FIELDS)


def download_size(payload_words: int) -> int:
    return payload_words + 1


def pack_upload(model_flat: torch.Tensor, report: RoundReport) -> torch.Tensor:
    return torch.cat([model_flat, report.to_tensor()])


def unpack_upload(message: torch.Tensor, payload_words: int) -> tuple[torch.Tensor, RoundReport]:
    """An upload's payload (a view: the model, or with --compress its packed difference) and its report."""
    return message[:payload_words], RoundReport.from_tensor(message[payload_words:])


def pack_download(model_flat: torch.Tensor, stop: bool) -> torch.Tensor:
    return torch.cat([model_flat, torch.tensor([STOP if stop else CONTINUE])])


def unpack_download(message: torch.Tensor, payload_words: int) -> tuple[torch.Tensor, bool]:
    """A download's payload (a view) and whether the run stops; PeerFailure for a malformed one. The model
    the payload stands for is checked with finite_global_model."""
    flag = message[payload_words].item()
    if flag not in (CONTINUE, STOP):
        raise PeerFailure(f"the server sent a malformed download (flag {flag!r}, expected {CONTINUE} or {STOP})")
    return message[:payload_words], flag == STOP


def finite_global_model(model_flat: torch.Tensor) -> torch.Tensor:
    """The global model a client received; PeerFailure when it is not finite."""
    if not torch.isfinite(model_flat).all():
        raise PeerFailure("the server sent a global model that is not finite")
    return model_flat



# Every field starts at a multiple of its own size (the formats order them so), so each is a view.
def payload_words(specs: list[tuple[torch.dtype, int]]) -> int:
    """How many float32 words a payload of these fields (dtype, count) takes."""
    return math.ceil(sum(dtype.itemsize * count for dtype, count in specs) / 4)


def pack_payload(parts: list[torch.Tensor]) -> torch.Tensor:
    """The fields end to end as bytes, zero-padded to whole float32 words (a lone float32 field as it is)."""
    if len(parts) == 1 and parts[0].dtype == torch.float32:
        return parts[0]
    raw = torch.cat([part.contiguous().view(torch.uint8) for part in parts])
    words = torch.zeros(math.ceil(raw.numel() / 4) * 4, dtype=torch.uint8)
    words[:raw.numel()] = raw
    return words.view(torch.float32)


def unpack_payload(payload: torch.Tensor, specs: list[tuple[torch.dtype, int]]) -> list[torch.Tensor]:
    """The fields of a payload (views into it), as pack_payload laid them out."""
    if len(specs) == 1 and specs[0][0] == torch.float32:
        return [payload[:specs[0][1]]]
    raw, parts, offset = payload.contiguous().view(torch.uint8), [], 0
    for dtype, count in specs:
        size = dtype.itemsize * count
        parts.append(raw[offset:offset + size].view(dtype))
        offset += size
    return parts


def pack_start(model_flat: torch.Tensor, rounds_done: int) -> torch.Tensor:
    return torch.cat([model_flat, torch.tensor([float(rounds_done)])])   # exact in float32 below 2**24


def unpack_start(message: torch.Tensor, model_numel: int) -> tuple[torch.Tensor, int]:
    """The start message's model part (a view) and the rounds already done (the first round to train is the next)."""
    rounds_done = message[model_numel].item()
    if rounds_done != int(rounds_done) or rounds_done < 0:
        raise PeerFailure(f"the server sent a malformed start (round {rounds_done!r})")
    return finite_global_model(message[:model_numel]), int(rounds_done)


# ----------------------------------------------------------------------------------------------------
# Emulated client link


@dataclass(frozen=True)
class Link:
    """A client rank's emulated link, which its clients share; None bandwidth and zero latency mean the real
    (loopback) network."""
    bandwidth_mbit: float | None = None
    latency_ms: float = 0.0

    def delay_s(self, num_bytes: int) -> float:
        """latency + 8 * bytes / bandwidth: the least time one message of num_bytes takes on this link."""
        seconds = self.latency_ms / 1000.0
        if self.bandwidth_mbit:
            seconds += 8.0 * num_bytes / (self.bandwidth_mbit * 1e6)
        return seconds


@dataclass
class HangDeadline:
    """How long to wait for a peer before declaring it hung: --timeout until a round has been seen (start-up
    and a first round can be long), then `factor` times the longest round so far, at least `floor_s`, at
    most --timeout. A peer stopped without dying is then noticed in minutes, not after --timeout."""
    timeout_s: float
    factor: float = 5.0
    floor_s: float = 300.0
    longest_round_s: float | None = None

    def observe(self, round_s: float) -> None:
        self.longest_round_s = max(self.longest_round_s or 0.0, round_s)

    @property
    def seconds(self) -> float:
        if self.longest_round_s is None:
            return self.timeout_s
        return min(self.timeout_s, max(self.floor_s, self.factor * self.longest_round_s))


def _peer_call(what: str, peer: int, call: Callable[[], Any], waiting_for: str = "",
               timeout_s: float | None = None) -> Any:
    try:
        return call()
    except Exception as error:  # noqa: BLE001 - gloo raises plain RuntimeErrors; name the peer
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        if timeout_s is not None and "timed out" in first_line.lower():
            raise PeerFailure(f"rank {peer} did not answer for {timeout_s:.0f} s{waiting_for}: it hung, stopped or "
                              f"lost its network") from error
        raise PeerFailure(f"{what} rank {peer} failed (crashed, hung or timed out?){waiting_for}: "
                          f"{first_line}") from error


def _wait(work, timeout_s: float | None) -> None:
    """Wait for a point-to-point operation: timeout_s, or the process group's timeout when None."""
    if timeout_s is None:
        work.wait()
    else:
        work.wait(timeout=timedelta(seconds=timeout_s))


def send(tensor: torch.Tensor, dst: int, link: Link = Link()) -> int:
    """Blocking send; with an emulated link the message leaves only after the link's delay. Returns bytes."""
    num_bytes = tensor.numel() * tensor.element_size()
    delay = link.delay_s(num_bytes)
    if delay > 0:
        time.sleep(delay)
    staged = tensor if _nccl_device is None else tensor.to(_nccl_device)
    _peer_call("sending to", dst, lambda: dist.send(staged, dst))
    return num_bytes


class PostedReceive:
    """A receive in flight (post_recv): several can be in flight at once, from different peers, so that on a
    real network their transfers run side by side instead of one after another."""

    def __init__(self, buffer: torch.Tensor, src: int):
        self.buffer, self.src = buffer, src
        self._staged = buffer if _nccl_device is None else torch.empty_like(buffer, device=_nccl_device)
        self._work = _peer_call("receiving from", src, lambda: dist.irecv(self._staged, src))

    def wait(self, timeout_s: float | None = None, waiting_for: str = "") -> torch.Tensor:
        """The filled buffer; PeerFailure naming the peer when it fails or does not answer within timeout_s."""
        _peer_call("receiving from", self.src, lambda: _wait(self._work, timeout_s), waiting_for, timeout_s)
        if self._staged is not self.buffer:
            self.buffer.copy_(self._staged)
        return self.buffer


def post_recv(buffer: torch.Tensor, src: int) -> PostedReceive:
    """Start receiving into buffer from src; PostedReceive.wait() finishes it."""
    return PostedReceive(buffer, src)


def recv(buffer: torch.Tensor, src: int, link: Link = Link(), timeout_s: float | None = None,
         waiting_for: str = "") -> int:
    """Blocking receive into buffer; with an emulated link it is handed over after the link's delay.
    timeout_s: give up sooner than the process group's timeout; waiting_for: what for, for the error."""
    post_recv(buffer, src).wait(timeout_s, waiting_for)
    num_bytes = buffer.numel() * buffer.element_size()
    delay = link.delay_s(num_bytes)
    if delay > 0:
        time.sleep(delay)
    return num_bytes


def send_to_all(tensor: torch.Tensor, destinations: list[int], timeout_s: float | None = None) -> int:
    """The server's broadcast over the star: one point-to-point send per client rank, all in flight at once."""
    staged = tensor if _nccl_device is None else tensor.to(_nccl_device)
    works = [(dst, dist.isend(staged, dst)) for dst in destinations]
    for dst, work in works:
        _peer_call("sending to", dst, lambda work=work: _wait(work, timeout_s),
                   " (the server was sending it the global model)", timeout_s)
    return len(destinations) * tensor.numel() * tensor.element_size()


# ----------------------------------------------------------------------------------------------------
# The communication thread


class Job:
    """One piece of work handed to the communication thread; wait() returns its result or re-raises."""

    def __init__(self, work: Callable[[], Any]):
        self.work = work
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.seconds = 0.0  # how long the work itself ran

    def wait(self, timeout_s: float, waiting_for: str = "") -> Any:
        if not self.done.wait(timeout_s):
            raise PeerFailure(f"no answer for {timeout_s:.0f} s{waiting_for}: the server, or a client it waits "
                              f"for, hung, stopped or lost its network")
        if self.error is not None:
            raise self.error
        return self.result


class CommThread:
    """A daemon thread that runs communication jobs in submission order (the client's second level).

    The trainer submits a job and carries on; the thread stores any exception in the job, and the
    trainer re-raises it when it waits. Jobs only touch tensors handed to them, never the live model.
    """

    def __init__(self, name: str = "comm"):
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], Any]) -> Job:
        job = Job(work)
        self._jobs.put(job)
        return job

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            start = time.perf_counter()
            try:
                job.result = job.work()
            except BaseException as error:  # noqa: BLE001 - handed to the trainer, which re-raises
                job.error = error
            job.seconds = time.perf_counter() - start
            job.done.set()

    def close(self, timeout_s: float = 5.0) -> None:
        self._jobs.put(None)
        self._thread.join(timeout_s)


def environment_rank() -> tuple[int, int] | None:
    """(rank, world_size) when this process was started as one rank of a job (torchrun or env vars)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        try:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        except ValueError:
            raise ValueError(f"RANK={os.environ['RANK']} WORLD_SIZE={os.environ['WORLD_SIZE']}: both must be whole "
                             f"numbers (RANK 0 is the server)") from None
    return None

"""A client (ranks 1..N): a training thread and a communication thread (DESIGN §3).

Overlap-FedAvg: round r+1 trains from G_r while the upload of round r and the download of G_{r+1} run in
the background, so every update is exactly one version stale and round 1 starts from G_0 again.
FedAvg: the same loop, but the trainer waits for each exchange right after handing it over. The schedule
is fixed, so timing changes only how long the trainer waits, never which model it trains from.
"""
from __future__ import annotations

import logging
import math
import os
import signal
import time

import torch

from Utils import transport
from Utils.config import RunConfig
from Utils.training import LocalTrainer

log = logging.getLogger(__name__)

STOP = 0.0   # the server's flag at the end of a download: the run ends (early stop)


def inject_fault(rank: int, round_index: int) -> None:
    """Fault injection for the failure tests: OVERLAP_FEDAVG_FAULT="RANK:ROUND:raise|kill" makes that
    client raise, or die by SIGKILL, when it starts training that (1-based) round."""
    spec = os.environ.get("OVERLAP_FEDAVG_FAULT")
    if not spec:
        return
    fault_rank, fault_round, action = spec.split(":")
    if int(fault_rank) == rank and int(fault_round) == round_index + 1:
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault in round {round_index + 1}")


def run_client(cfg: RunConfig, rank: int, trainer: LocalTrainer, model_numel: int) -> None:
    link = transport.Link(cfg.bandwidth, cfg.latency)
    comm = transport.CommThread(name=f"comm-{rank}")

    def download() -> torch.Tensor:
        buffer = torch.empty(model_numel + 1)   # the global model + the continue/stop flag
        transport.recv(buffer, transport.SERVER_RANK, link)
        return buffer

    def exchange(message: torch.Tensor) -> torch.Tensor:
        transport.send(message, transport.SERVER_RANK, link)
        return download()

    def finish(job: transport.Job) -> tuple[torch.Tensor, tuple[float, float]]:
        """Wait for an exchange; return the new global message and (trainer's wait, job duration)."""
        waited_from = time.perf_counter()
        message = job.wait(cfg.timeout)
        return message, (time.perf_counter() - waited_from, job.seconds)

    def is_stop(message: torch.Tensor) -> bool:
        return message[-1].item() == STOP

    global_message = download()   # G_0
    last_job_stats = (math.nan, math.nan)
    pending: transport.Job | None = None
    try:
        for round_index in range(cfg.max_epoch):
            inject_fault(rank, round_index)
            started = time.perf_counter()
            local, train_loss = trainer.train_round(global_message[:model_numel], round_index)
            train_s = time.perf_counter() - started
            if pending is not None:   # Overlap: G_r arrives while (or after) round r+1 trains
                global_message, last_job_stats = finish(pending)
                pending = None
                if is_stop(global_message):
                    return
            upload = torch.cat([local, torch.tensor([train_loss, train_s, *last_job_stats])])
            pending = comm.submit(lambda upload=upload: exchange(upload))
            if not cfg.overlap:       # FedAvg: block on the exchange
                global_message, last_job_stats = finish(pending)
                pending = None
                if is_stop(global_message):
                    return
        if pending is not None:
            global_message, last_job_stats = finish(pending)
            if is_stop(global_message):
                return
        # The last job's figures, for the server's last metrics row.
        transport.send(torch.tensor([math.nan, math.nan, *last_job_stats]), transport.SERVER_RANK)
    finally:
        comm.close()

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
from Utils.transport import RoundReport

log = logging.getLogger(__name__)


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
        buffer = torch.empty(transport.download_size(model_numel))
        transport.recv(buffer, transport.SERVER_RANK, link)
        return buffer

    def exchange(upload: torch.Tensor) -> torch.Tensor:
        transport.send(upload, transport.SERVER_RANK, link)
        return download()

    global_model, _ = transport.unpack_download(download(), model_numel)   # G_0
    last_wait_s = last_comm_s = math.nan   # the previous exchange: trainer blocked, job duration

    def receive_next_global(job: transport.Job) -> bool:
        """Wait for an exchange and keep the global model it brought; True when the server says stop."""
        nonlocal global_model, last_wait_s, last_comm_s
        waited_from = time.perf_counter()
        message = job.wait(cfg.timeout)
        last_wait_s, last_comm_s = time.perf_counter() - waited_from, job.seconds
        global_model, stop = transport.unpack_download(message, model_numel)
        return stop

    pending: transport.Job | None = None
    try:
        for round_index in range(cfg.max_epoch):
            inject_fault(rank, round_index)
            started = time.perf_counter()
            local, train_loss = trainer.train_round(global_model, round_index)
            train_s = time.perf_counter() - started
            # Overlap: G_r arrives while (or after) round r+1 trains.
            if pending is not None and receive_next_global(pending):
                return
            report = RoundReport(train_loss, train_s, last_wait_s, last_comm_s)
            upload = transport.pack_upload(local, report)
            pending = comm.submit(lambda upload=upload: exchange(upload))
            if not cfg.overlap:   # FedAvg: block on the exchange
                stop, pending = receive_next_global(pending), None
                if stop:
                    return
        if pending is not None and receive_next_global(pending):
            return
        # The last job's figures, for the server's last metrics row.
        transport.send(RoundReport(comm_wait_s=last_wait_s, comm_s=last_comm_s).to_tensor(), transport.SERVER_RANK)
    finally:
        comm.close()

"""A client rank (ranks 1..world_size - 1): a training thread and a communication thread (README, "The
algorithm"). A rank hosts one FL client, or with --num_clients several (Utils.federation): each round it trains
those of them the round samples, one after another, then sends their uploads in client order in one job.

Rounds are numbered 1..R, and round r's uploads make G_r. Overlap-FedAvg: round r+1 trains from G_{r-1} while
the upload of round r and the download of G_r run in the background, so every update is exactly one version
stale and round 2 starts from G_0 again. With the client merge (--compensation local) round r+1 trains instead
from G_{r-1} plus (b times) what this client's round r added to its own start, and round r's upload is that
progress on top of G_{r-1} (Utils.aggregation).
FedAvg: the same loop, but the trainer waits for each exchange right after handing it over. The schedule
is fixed, so timing changes only how long the trainer waits, never which model it trains from.
With --compress a download adds to the global model the client holds, and an upload is the model to send
less that one, with what earlier uploads lost added (Utils.compression.ErrorFeedback, one per client).
A client that was not sampled in the round before trains from the newest global model the rank holds: its last
progress is in that model already (docs/many-clients.md).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from Characters.faults import act_out, injected_fault
from Utils import transport
from Utils.aggregation import merged_start, merged_upload
from Utils.checkpoint import read_client_state, write_client_state
from Utils.compression import ErrorFeedback, decode, part_specs
from Utils.config import RunConfig
from Utils.federation import last_sampled_round
from Utils.memory import resident_mb
from Utils.training import LocalTrainer
from Utils.transport import RoundReport

log = logging.getLogger(__name__)


def run_client(cfg: RunConfig, rank: int, trainers: dict[int, LocalTrainer], model_numel: int) -> None:
    """Rank `rank`'s part of the job; `trainers` maps each client it hosts (ascending) to its trainer."""
    link = transport.Link(*cfg.client_link(rank))
    slowdown = cfg.client_slowdown(rank)
    comm = transport.CommThread(name=f"comm-{rank}")
    specs = part_specs(cfg.compress, model_numel, cfg.topk_ratio)
    words = transport.payload_words(specs)
    feedback = {client: ErrorFeedback(model_numel, cfg.compress, cfg.topk_ratio) for client in trainers}
    run_dir = Path(cfg.out_dir)

    def download(size: int = transport.download_size(words)) -> torch.Tensor:
        buffer = torch.empty(size)
        transport.recv(buffer, transport.SERVER_RANK, link)
        return buffer

    def exchange(uploads: list[torch.Tensor], fault: str | None) -> torch.Tensor:
        act_out(fault, "upload")
        for upload in uploads:   # in client order, as the server receives them
            transport.send(upload, transport.SERVER_RANK, link)
        act_out(fault, "download")
        return download()

    # G_0, or where a resumed run continues: FedAvg trains round r+1 from G_r; Overlap from G_{r-1} (merging: the
    # clients of the last round from their own starts, which follow), and G_r follows as an ordinary download,
    # as it would have after round r's upload.
    shared_start, rounds_done = transport.unpack_start(download(transport.download_size(model_numel)), model_numel)
    global_model = shared_start   # the newest global model held (until a resumed run's download replaces it)
    # The client merge: the clients of the last round start the next from their own merged start.
    carried: dict[int, torch.Tensor] = {}
    if rounds_done > 0:
        carried = restore_clients(cfg, rounds_done, feedback, download)
    last_wait_s = last_comm_s = math.nan   # the previous exchange: trainer blocked, job duration
    deadline = transport.HangDeadline(cfg.timeout)

    def receive_next_global(job: transport.Job) -> bool:
        """Wait for an exchange and keep the global model it brought; True when the server says stop."""
        nonlocal global_model, last_wait_s, last_comm_s
        waited_from = time.perf_counter()
        message = job.wait(deadline.seconds, f" (client rank {rank}, in its round {round_number}, was waiting "
                                             f"for a global model)")
        last_wait_s, last_comm_s = time.perf_counter() - waited_from, job.seconds
        payload, stop = transport.unpack_download(message, words)
        if cfg.compress == "none":
            global_model = payload
        else:   # the server's replica of this model adds the same numbers
            global_model = global_model + decode(transport.unpack_payload(payload, specs), cfg.compress, model_numel)
        transport.finite_global_model(global_model)
        return stop

    pending: transport.Job | None = comm.submit(download) if cfg.overlap and rounds_done > 0 else None
    try:
        round_number = rounds_done
        for round_number in range(rounds_done + 1, cfg.max_epoch + 1):   # round r's uploads make G_r
            fault = injected_fault(rank, round_number)
            act_out(fault, "train")
            started = time.perf_counter()
            trained = []   # (client, its start, its trained model, report) for the round's sampled clients
            for client in sampled_here(cfg, trainers, round_number):
                client_started = time.perf_counter()
                start = carried.get(client, shared_start)
                local, train_loss = trainers[client].train_round(start, round_number)
                if slowdown > 1:   # --slowdown: a client k times slower, emulated by waiting
                    time.sleep((slowdown - 1) * (time.perf_counter() - client_started))
                trained.append((client, start, local, train_loss, time.perf_counter() - client_started))
            # Overlap: G_{r-1} arrives while (or after) round r trains.
            if pending is not None and receive_next_global(pending):
                return
            uploads, carried = [], {}
            for client, start, local, train_loss, train_s in trained:
                sent = local
                if cfg.client_merge:   # this round's progress on top of G_{r-1}, and the next start from both
                    sent = merged_upload(global_model, local, start)
                    carried[client] = merged_start(global_model, sent, cfg.merge_weight)
                if cfg.compress != "none":
                    sent = transport.pack_payload(feedback[client].compress(sent - global_model)[0])
                    # on disk before the upload leaves: a checkpoint that counts this upload always finds it
                    write_client_state(run_dir, client, round_number,
                                       {"residual": feedback[client].residual,
                                        **({"start": carried[client]} if cfg.client_merge else {})})
                uploads.append(transport.pack_upload(sent, RoundReport(train_loss, train_s, last_wait_s,
                                                                       last_comm_s)))
            del trained
            pending = comm.submit(lambda uploads=uploads, fault=fault: exchange(uploads, fault))
            if not cfg.overlap:   # FedAvg: block on the exchange
                stop, pending = receive_next_global(pending), None
                if stop:
                    return
            shared_start = global_model
            deadline.observe(time.perf_counter() - started)
        if pending is not None and receive_next_global(pending):
            return
        # The last job's figures, for the server's last metrics row.
        transport.send(transport.pack_final_report(RoundReport(comm_wait_s=last_wait_s, comm_s=last_comm_s),
                                                   resident_mb()), transport.SERVER_RANK)
    finally:
        comm.close()


def sampled_here(cfg: RunConfig, trainers: dict[int, LocalTrainer], round_number: int) -> list[int]:
    """The clients of this rank that train in round `round_number`, in client order."""
    return [client for client in cfg.round_clients(round_number) if client in trainers]


def restore_clients(cfg: RunConfig, rounds_done: int, feedback: dict[int, ErrorFeedback],
                    download) -> dict[int, torch.Tensor]:
    """A resumed run: each hosted client's own state as of its last upload that the server's checkpoint counts,
    and the merged starts of those that trained in round `rounds_done` (the server sends them, uncompressed;
    compressed, each client saved its own)."""
    last_round = cfg.round_clients(rounds_done)
    carried = {}
    for client in feedback:
        if cfg.compress != "none":
            sampled = last_sampled_round(client, rounds_done, cfg.round_clients)
            if sampled is not None:
                saved = read_client_state(Path(cfg.out_dir), client, sampled)
                feedback[client].residual = saved["residual"]
                if cfg.client_merge and client in last_round:
                    carried[client] = saved["start"]
        elif cfg.client_merge and client in last_round:
            carried[client] = transport.unpack_start(download(transport.download_size(feedback[client].numel)),
                                                     feedback[client].numel)[0]
    return carried

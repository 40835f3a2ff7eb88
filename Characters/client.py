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
from typing import NamedTuple

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


class TrainedClient(NamedTuple):
    """One client's round, before its upload is built."""
    client: int
    start: torch.Tensor        # the model it trained from
    local: torch.Tensor        # the model it trained
    train_loss: float
    train_s: float


def run_client(cfg: RunConfig, rank: int, trainers: dict[int, LocalTrainer], model_numel: int) -> None:
    """Rank `rank`'s part of the job; `trainers` maps each client it hosts (ascending) to its trainer."""
    ClientRank(cfg, rank, trainers, model_numel).run()


class ClientRank:
    """One client rank across the rounds. Its state: the newest global model it holds, where each hosted client
    trains from next, each client's compression residual, and the figures of the last exchange (which the next
    upload reports)."""

    def __init__(self, cfg: RunConfig, rank: int, trainers: dict[int, LocalTrainer], model_numel: int):
        self.cfg, self.rank, self.trainers, self.model_numel = cfg, rank, trainers, model_numel
        self.link = transport.Link(*cfg.client_link(rank))
        self.slowdown = cfg.client_slowdown(rank)
        self.specs = part_specs(cfg.compress, model_numel, cfg.topk_ratio)
        self.words = transport.payload_words(self.specs)
        self.feedback = {client: ErrorFeedback(model_numel, cfg.compress, cfg.topk_ratio) for client in trainers}
        self.run_dir = Path(cfg.out_dir)
        self.deadline = transport.HangDeadline(cfg.timeout)
        self.last_wait_s = self.last_comm_s = math.nan   # the previous exchange: trainer blocked, job duration
        self.round_number = 0   # the round being trained (named in a hang's error)
        self.global_model = torch.empty(0)   # the newest global model held
        self.shared_start = self.global_model   # what a client trains from when it carries no start of its own
        self.carried: dict[int, torch.Tensor] = {}   # the client merge: the next start of last round's clients

    def run(self) -> None:
        cfg = self.cfg
        # G_0, or where a resumed run continues: FedAvg trains round r+1 from G_r; Overlap from G_{r-1} (merging:
        # the clients of the last round from their own starts, which follow), and G_r follows as an ordinary
        # download, as it would have after round r's upload.
        self.shared_start, rounds_done = transport.unpack_start(
            self.download(transport.download_size(self.model_numel)), self.model_numel)
        self.global_model = self.shared_start   # until a resumed run's download replaces it
        if rounds_done > 0:
            self.carried = restore_clients(cfg, rounds_done, self.feedback, self.download)
        comm = transport.CommThread(name=f"comm-{self.rank}")
        pending: transport.Job | None = comm.submit(self.download) if cfg.overlap and rounds_done > 0 else None
        self.round_number = rounds_done
        try:
            for round_number in range(rounds_done + 1, cfg.max_epoch + 1):   # round r's uploads make G_r
                self.round_number = round_number
                fault = injected_fault(self.rank, round_number)
                act_out(fault, "train")
                started = time.perf_counter()
                trained = self.train_round()
                # Overlap: G_{r-1} arrives while (or after) round r trains.
                if pending is not None and self.receive_next_global(pending):
                    return
                uploads = self.build_uploads(trained)
                del trained
                pending = comm.submit(lambda uploads=uploads, fault=fault: self.exchange(uploads, fault))
                if not cfg.overlap:   # FedAvg: block on the exchange
                    stop, pending = self.receive_next_global(pending), None
                    if stop:
                        return
                self.shared_start = self.global_model
                self.deadline.observe(time.perf_counter() - started)
            if pending is not None and self.receive_next_global(pending):
                return
            # The last job's figures, for the server's last metrics row.
            transport.send(transport.pack_final_report(RoundReport(comm_wait_s=self.last_wait_s,
                                                                   comm_s=self.last_comm_s), resident_mb()),
                           transport.SERVER_RANK)
        finally:
            comm.close()

    def train_round(self) -> list[TrainedClient]:
        """Train this rank's clients that the round samples, one after another."""
        trained = []
        for client in sampled_here(self.cfg, self.trainers, self.round_number):
            client_started = time.perf_counter()
            start = self.carried.get(client, self.shared_start)
            local, train_loss = self.trainers[client].train_round(start, self.round_number)
            if self.slowdown > 1:   # --slowdown: a client k times slower, emulated by waiting
                time.sleep((self.slowdown - 1) * (time.perf_counter() - client_started))
            trained.append(TrainedClient(client, start, local, train_loss, time.perf_counter() - client_started))
        return trained

    def build_uploads(self, trained: list[TrainedClient]) -> list[torch.Tensor]:
        """The round's upload messages, built on the newest global model held; merging, each client's next start
        too (self.carried)."""
        cfg = self.cfg
        uploads, self.carried = [], {}
        for client, start, local, train_loss, train_s in trained:
            sent = local
            if cfg.client_merge:   # this round's progress on top of G_{r-1}, and the next start from both
                sent = merged_upload(self.global_model, local, start)
                self.carried[client] = merged_start(self.global_model, sent, cfg.merge_weight)
            if cfg.compress != "none":
                sent = transport.pack_payload(self.feedback[client].compress(sent - self.global_model)[0])
                # on disk before the upload leaves: a checkpoint that counts this upload always finds it
                write_client_state(self.run_dir, client, self.round_number,
                                   {"residual": self.feedback[client].residual,
                                    **({"start": self.carried[client]} if cfg.client_merge else {})})
            uploads.append(transport.pack_upload(sent, RoundReport(train_loss, train_s, self.last_wait_s,
                                                                   self.last_comm_s)))
        return uploads

    def download(self, size: int | None = None) -> torch.Tensor:
        """One message from the server over this rank's link (by default a global model download)."""
        buffer = torch.empty(transport.download_size(self.words) if size is None else size)
        transport.recv(buffer, transport.SERVER_RANK, self.link)
        return buffer

    def exchange(self, uploads: list[torch.Tensor], fault: str | None) -> torch.Tensor:
        """A round's job on the communication thread: the uploads, then the next global model's download."""
        act_out(fault, "upload")
        for upload in uploads:   # in client order, as the server receives them
            transport.send(upload, transport.SERVER_RANK, self.link)
        act_out(fault, "download")
        return self.download()

    def receive_next_global(self, job: transport.Job) -> bool:
        """Wait for an exchange and keep the global model it brought; True when the server says stop."""
        waited_from = time.perf_counter()
        message = job.wait(self.deadline.seconds, f" (client rank {self.rank}, in its round {self.round_number}, "
                                                  f"was waiting for a global model)")
        self.last_wait_s, self.last_comm_s = time.perf_counter() - waited_from, job.seconds
        payload, stop = transport.unpack_download(message, self.words)
        if self.cfg.compress == "none":
            self.global_model = payload
        else:   # the server's replica of this model adds the same numbers
            self.global_model = self.global_model + decode(transport.unpack_payload(payload, self.specs),
                                                           self.cfg.compress, self.model_numel)
        transport.finite_global_model(self.global_model)
        return stop


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

"""A job's schedule replayed in one process (README, "The algorithm"): the same data, partition, seeds and local
training as FedAvg.py / AsyncFedAvg.py, without processes or a network.

The tests use it to pin the distributed runs bit for bit; benchmarks/compensation_limits.py uses it to try
server updates that a real server cannot run (ones that know what training from w would have given).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from Networks import build_model
from Utils import federation
from Utils.aggregation import (
    ServerUpdate,
    StreamingMoments,
    client_weights,
    merged_start,
    merged_upload,
    uploads_are_stale,
)
from Utils.compression import ErrorFeedback, decode, encode
from Utils.data.datasets import load_dataset
from Utils.data.partition import client_shards, limit_test_set, limit_training_set, shard_size
from Utils.flat import flatten_model, load_flat_into_model
from Utils.training import LocalTrainer

# Every client's upload of a round with its weight: [(L_k, p_k), ...]
Uploads = list[tuple[Tensor, float]]
# (update number u = 1..R, prev: the model the uploads started from, the uploads, w: the current global
#  model) -> the next global model
ServerStep = Callable[[int, Tensor, Uploads, Tensor], Tensor]


class ReplayWire:
    """The messages of a job with --compress, computed as its clients and server compute them: what the clients
    hold (the broadcasts added up), and each upload as the server reconstructs it. With "none" both are the
    models themselves."""

    def __init__(self, initial: Tensor, num_clients: int, compression: str = "none", topk_ratio: float = 0.05):
        self.compression, self.topk_ratio = compression, topk_ratio
        self.held = initial
        self.feedback = [ErrorFeedback(initial.numel(), compression, topk_ratio) for _ in range(num_clients)]

    def upload(self, client: int, sent: Tensor, server_current: Tensor) -> Tensor:
        """Client `client` + 1 (`client` is a 0-based index) sends `sent` while it holds self.held; what the server
        adds up."""
        if self.compression == "none":
            return sent
        parts, _ = self.feedback[client].compress(sent - self.held)
        return server_current + decode(parts, self.compression, sent.numel())

    def broadcast(self, current: Tensor) -> Tensor:
        """The server sends `current`; what every client holds afterwards."""
        if self.compression == "none":
            self.held = current
        else:
            parts = encode(current - self.held, self.compression, self.topk_ratio)
            self.held = self.held + decode(parts, self.compression, current.numel())
        return self.held


class ScheduleReplay:
    """N clients (images or text) on a partition, trained and evaluated exactly as a job with these options trains
    and evaluates them (test_samples: the job's --test_samples)."""

    def __init__(self, data_root: str | Path, *, dataset: str = "mnist", model: str = "mlp", num_clients: int = 2,
                 epochs: int = 1, max_train_samples: int | None = None, seed: int = 2020, lr: float = 0.01,
                 batch_size: int = 32, compression: str = "none", topk_ratio: float = 0.05,
                 clients_per_round: float | None = None, sampling: str = "uniform", client_ranks: int = 1,
                 partition: str = "noniid", alpha: float = 0.5, shards_per_client: int = 2,
                 test_samples: int | None = None):
        torch.set_num_threads(1)   # as every rank does: the figures must not depend on the core count
        self.data = limit_training_set(load_dataset(dataset, data_root), max_train_samples, seed)
        torch.manual_seed(seed)
        self.model = build_model(model, self.data.output_size, **self.data.model_shape)
        self.initial = flatten_model(self.model).clone()
        shards = client_shards(self.data, num_clients, partition, seed, alpha=alpha,
                               shards_per_client=shards_per_client)
        # How many clients train does not depend on which rank hosts them: one model serves them all
        trainer_model = build_model(model, self.data.output_size, **self.data.model_shape)
        self.trainers = [LocalTrainer(trainer_model, self.data, shard, batch_size=batch_size, lr=lr, epochs=epochs,
                                      seed=seed, client=k + 1)
                         for k, shard in enumerate(shards)]
        self.num_samples = [shard_size(shard) for shard in shards]   # tokens for text, as the server weighs them
        self.per_round, self.seed = federation.clients_per_round(clients_per_round, num_clients), seed
        self.sampling, self.client_ranks = sampling, client_ranks   # the job's --sampling and world_size - 1
        self.compression, self.topk_ratio = compression, topk_ratio
        self.test = limit_test_set(self.data, test_samples, seed)

    def sampled(self, round_number: int) -> tuple[list[int], list[float]]:
        """The 0-based indices of the clients round `round_number` (1..R) samples, and their weights p_k."""
        clients = federation.round_sample(len(self.trainers), self.per_round, self.seed, round_number,
                                          sampling=self.sampling, client_ranks=self.client_ranks)
        return [c - 1 for c in clients], client_weights([self.num_samples[c - 1] for c in clients])

    def trained(self, start: Tensor, round_number: int) -> list[tuple[int, Tensor, float]]:
        """(client index, its model, p_k) of every client round `round_number` samples, trained from `start`."""
        clients, weights = self.sampled(round_number)
        return [(k, self.trainers[k].train_round(start, round_number)[0], weight)
                for k, weight in zip(clients, weights, strict=True)]

    def uploads(self, start: Tensor, round_number: int) -> Uploads:
        """Round `round_number`'s uploads trained from `start`, with their weights p_k."""
        return [(local, weight) for _, local, weight in self.trained(start, round_number)]

    def run_client_merge(self, step: ServerStep, rounds: int, *, merge_weight: float = 1.0) -> list[float]:
        """The test metric (accuracy; perplexity for text) of G_1..G_rounds with the client merge (--compensation
        local): client k's round r (1..R) trains from its own start x_k, uploads U_k = G_{r-1} + (L_k - x_k) and
        starts round r + 1 from G_{r-1} + b (U_k - G_{r-1}); update r averages the uploads relative to w = G_{r-1}
        itself. A client the round before did not sample starts from G_{r-2} (G_0 in rounds 1 and 2), which holds
        its last progress."""
        versions, scores = [self.initial.clone()], []
        wire = ReplayWire(versions[0], len(self.trainers), self.compression, self.topk_ratio)
        carried: dict[int, Tensor] = {}
        shared = wire.held   # what a client the last round did not sample trains from: G_{r-1} as held
        for r in range(1, rounds + 1):
            latest, held = versions[-1], wire.held   # G_{r-1}, and what every client holds when it uploads round r
            clients, weights = self.sampled(r)
            starts = [carried.get(k, shared) for k in clients]
            sent = [merged_upload(held, self.trainers[k].train_round(start, r)[0], start)
                    for k, start in zip(clients, starts, strict=True)]
            carried = {k: merged_start(held, upload, merge_weight) for k, upload in zip(clients, sent, strict=True)}
            uploads = [(wire.upload(k, upload, latest), weight)
                       for k, upload, weight in zip(clients, sent, weights, strict=True)]
            versions.append(step(r, latest, uploads, latest).clone())
            shared = held
            wire.broadcast(versions[-1])
            scores.append(self.evaluate(versions[-1]))
        return scores

    def evaluate(self, flat: Tensor) -> float:
        """The dataset's test metric of the model `flat`, on the job's test set."""
        load_flat_into_model(flat, self.model)
        return self.test.evaluate(self.model)[self.data.metric]

    def run(self, step: ServerStep, rounds: int, *, overlap: bool) -> list[float]:
        """The test metric of G_1..G_rounds. FedAvg's round r (1..R) trains from G_{r-1}; Overlap's from G_{r-2}
        (rounds 1 and 2 from G_0), so update r's uploads started from G_{max(r-2, 0)} while w is G_{r-1}."""
        versions, scores = [self.initial.clone()], []
        wire = ReplayWire(versions[0], len(self.trainers), self.compression, self.topk_ratio)
        held = [wire.held]   # what the clients hold of each version (with --compress none: the versions)
        for r in range(1, rounds + 1):
            before = max(r - 2, 0) if overlap else r - 1
            uploads = [(wire.upload(k, local, versions[r - 1]), weight)
                       for k, local, weight in self.trained(held[before], r)]
            versions.append(step(r, versions[before], uploads, versions[-1]).clone())
            held.append(wire.broadcast(versions[-1]))
            scores.append(self.evaluate(versions[-1]))
        return scores


def uploads_average(start: Tensor, uploads: Uploads) -> Tensor:
    """avg = sum_k p_k L_k of uploads that started from `start`, summed as the server sums them."""
    moments = StreamingMoments(start, with_spread=False)
    for local, weight in uploads:
        moments.add(local, weight)
    return moments.result()[0]


def server_update_step(initial: Tensor, *, overlap: bool, **server_options) -> ServerStep:
    """The ServerUpdate a job runs (Utils.aggregation), as a ServerStep."""
    stale = uploads_are_stale(overlap, server_options.get("compensation", "none"))
    update = ServerUpdate(initial, stale=stale, **server_options)

    def step(_u: int, prev: Tensor, uploads: Uploads, _w: Tensor) -> Tensor:
        moments = update.new_round()
        if not torch.equal(moments.start, prev):
            raise RuntimeError("the replay and the server update disagree on where the uploads started")
        for local, weight in uploads:
            moments.add(local, weight)
        return update.apply(moments)

    return step

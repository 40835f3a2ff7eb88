"""Many clients on few ranks (--num_clients) and client sampling (--clients_per_round): who hosts whom, the seeded
sample, what a client trains from after rounds it sat out, and the real jobs pinned to the one-process replay."""
from __future__ import annotations

import pytest
import torch
from helpers_e2e import QUICK_MNIST, TIMING_COLUMNS, read_metrics, replay_schedule, run_job

from Networks import build_model
from Utils import transport
from Utils.federation import clients_per_round, host_rank, hosted_clients, last_sampled_round, round_sample
from Utils.flat import model_size
from Utils.memory import hosted_client_copies
from Utils.tools.replay import ScheduleReplay, server_update_step

MANY = ("--num_clients", "6", "--clients_per_round", "3")


def result_columns(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def test_every_client_has_exactly_one_host_and_one_client_per_rank_is_the_identity():
    for num_clients, ranks in [(4, 4), (10, 4), (1000, 4), (7, 3)]:
        hosted = [hosted_clients(rank, ranks, num_clients) for rank in range(1, ranks + 1)]
        assert sorted(c for group in hosted for c in group) == list(range(1, num_clients + 1))
        assert all(host_rank(c, ranks) == rank for rank, group in enumerate(hosted, 1) for c in group)
        assert max(map(len, hosted)) - min(map(len, hosted)) <= 1   # balanced
    assert [hosted_clients(rank, 4, 4) for rank in range(1, 5)] == [[1], [2], [3], [4]]


def test_the_sample_is_seeded_by_seed_and_round_alone():
    sample = round_sample(100, 10, 2020, 3)
    assert sample == sorted(set(sample)) and len(sample) == 10 and all(1 <= c <= 100 for c in sample)
    assert round_sample(100, 10, 2020, 3) == sample                 # every rank derives the same one
    assert round_sample(100, 10, 2020, 4) != sample                 # a new one each round
    assert round_sample(100, 10, 2021, 3) != sample                 # and each seed
    assert round_sample(6, 6, 2020, 3) == [1, 2, 3, 4, 5, 6]        # K = N: everyone, no draw
    counts = torch.zeros(100)
    for r in range(1, 501):
        counts[torch.tensor(round_sample(100, 10, 0, r)) - 1] += 1
    assert counts.min() > 25 and counts.max() < 80                  # about 50 each: uniform


def test_clients_per_round_takes_a_count_or_a_fraction():
    assert clients_per_round(None, 100) == 100
    assert clients_per_round(10, 100) == 10 and clients_per_round(0.1, 100) == 10
    assert clients_per_round(0.001, 100) == 1                       # at least one client
    for bad in (2.5, 101):
        with pytest.raises(ValueError, match="--clients_per_round"):
            clients_per_round(bad, 100)
    client = round_sample(20, 5, 1, 2)[0]
    sampled = [r for r in range(1, 11) if client in round_sample(20, 5, 1, r)]
    sample = lambda r: round_sample(20, 5, 1, r)  # noqa: E731
    assert last_sampled_round(client, 10, sample) == sampled[-1]
    assert last_sampled_round(client, sampled[0], sample) == sampled[0]
    assert last_sampled_round(client, sampled[0] - 1, sample) is None


@pytest.mark.parametrize("num_clients, per_round, ranks", [(100, 10, 4), (10, 3, 4), (7, 5, 3), (1000, 100, 4)])
def test_a_balanced_sample_gives_each_rank_its_share_and_each_client_the_same_chance(num_clients, per_round, ranks):
    """--sampling balanced: every rank trains its share of K rounded down or up (a uniform sample of 10 from 100
    clients on 4 ranks often puts 4 or 5 on one), and every client is still sampled K / N of the rounds."""
    rounds = 2000
    counts, uniform_busiest = torch.zeros(num_clients), 0
    for r in range(1, rounds + 1):
        sample = round_sample(num_clients, per_round, 2020, r, sampling="balanced", client_ranks=ranks)
        assert sample == sorted(set(sample)) and len(sample) == per_round
        assert sample == round_sample(num_clients, per_round, 2020, r, sampling="balanced", client_ranks=ranks)
        counts[torch.tensor(sample) - 1] += 1
        for rank in range(1, ranks + 1):
            group = hosted_clients(rank, ranks, num_clients)
            share = per_round * len(group) / num_clients
            assert int(share) <= sum(host_rank(c, ranks) == rank for c in sample) <= -int(-share // 1)
        uniform = round_sample(num_clients, per_round, 2020, r)
        uniform_busiest = max(uniform_busiest, max(sum(host_rank(c, ranks) == rank for c in uniform)
                                                   for rank in range(1, ranks + 1)))
    expected = rounds * per_round / num_clients
    assert (counts - expected).abs().max() < 5 * expected ** 0.5   # binomial spread: the same chance for all
    if (num_clients, per_round, ranks) == (100, 10, 4):
        assert uniform_busiest >= 5                                  # what balancing removes
    assert round_sample(6, 6, 2020, 3, sampling="balanced", client_ranks=2) == [1, 2, 3, 4, 5, 6]


def test_the_memory_estimate_counts_the_further_clients_of_a_rank():
    assert hosted_client_copies(4, 4, 4, merge=True, compressed=True) == 0   # one client per rank: as before
    # 1,000 clients on 4 ranks, 100 per round: 25 trained per rank (24 more), 250 residuals (249 more)
    assert hosted_client_copies(1000, 100, 4, merge=False, compressed=False) == 24 * 2
    assert hosted_client_copies(1000, 100, 4, merge=True, compressed=True) == 24 * 3 + 249


class _RecordingTrainer:
    """Stands in for a client's LocalTrainer: records what it trains from and adds its own fixed step."""

    def __init__(self, client: int, numel: int, log: list):
        self.client, self.step, self.log = client, torch.full((numel,), float(client)), log

    def train_round(self, start, round_index):
        self.log.append((round_index, self.client, start.clone()))
        return start + self.step, 0.0


def test_the_replay_takes_the_jobs_sampling_fraction_and_dirichlet_alpha(mnist_root):
    """--clients_per_round as a fraction and --partition dirichlet --alpha mean in the replay what they mean in a
    job (RunConfig.sampled_per_round, client_shards), so such a job can be replayed too."""
    from Utils.data.datasets import load_dataset
    from Utils.data.partition import client_shards, limit_training_set, shard_size
    replay = ScheduleReplay(mnist_root, num_clients=6, max_train_samples=600, clients_per_round=0.5,
                            partition="dirichlet", alpha=0.3)
    assert replay.per_round == 3 and len(replay.sampled(1)[0]) == 3
    data = limit_training_set(load_dataset("mnist", mnist_root), 600, 2020)
    expected = [shard_size(s) for s in client_shards(data, 6, "dirichlet", 2020, alpha=0.3)]
    assert replay.num_samples == expected
    assert expected != [shard_size(s) for s in client_shards(data, 6, "dirichlet", 2020, alpha=0.5)]


def test_a_client_that_sat_out_a_round_starts_from_the_global_model_that_holds_its_progress(mnist_root):
    """The client merge with sampling (docs/many-clients.md): a client sampled in rounds r - 1 and r trains round
    r from G_{r-2} + b * its round r - 1 progress; any other sampled client from G_{r-2} itself, which already
    holds everything it uploaded before (its last progress went into G_{r'}, r' <= r - 2)."""
    replay = ScheduleReplay(mnist_root, num_clients=6, max_train_samples=600, clients_per_round=3)
    numel, log, b = replay.initial.numel(), [], 0.5
    replay.trainers = [_RecordingTrainer(k + 1, numel, log) for k in range(6)]
    versions = []

    def step(u, prev, uploads, w):   # FedAvg's average, recording every global model
        new = sum(weight * local for local, weight in uploads)
        versions.append(new)
        return new

    rounds = 6
    replay.run_client_merge(step, rounds, merge_weight=b)
    models = [replay.initial, *versions]                      # G_0 .. G_6
    for round_number, client, start in log:
        before = max(round_number - 2, 0)                      # the newest G round r trains beside: G_{r-2}
        expected = models[before]
        if round_number > 1 and client in round_sample(6, 3, 2020, round_number - 1):
            expected = models[round_number - 2] + b * replay.trainers[client - 1].step
        torch.testing.assert_close(start, expected, rtol=0, atol=1e-5)
    assert any(r > 1 and c not in round_sample(6, 3, 2020, r - 1) for r, c, _ in log)   # both cases were seen
    assert any(r > 1 and c in round_sample(6, 3, 2020, r - 1) for r, c, _ in log)


@pytest.mark.slow
@pytest.mark.parametrize("script, method", [("FedAvg.py", ()), ("AsyncFedAvg.py", ()),
                                            ("AsyncFedAvg.py", ("--compensation", "secant", "--comp_coef", "0.3"))],
                         ids=["fedavg", "overlap-merge", "overlap-secant"])
def test_a_sampled_job_is_the_replayed_schedule_bit_for_bit_whoever_hosts_the_clients(script, method, mnist_root,
                                                                                       tmp_path):
    """6 clients, 3 sampled per round, on 2 client ranks: the replay's accuracy per round exactly; on 3 ranks
    (another hosting) the same metrics."""
    done = run_job(script, *QUICK_MNIST, *MANY, *method, "--max_epoch", "3", out_dir=tmp_path / "two",
                   data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "6 clients on 2 client ranks, 3 sampled per round (uniform)" in done.stderr
    rows = read_metrics(tmp_path / "two")
    overlap = script == "AsyncFedAvg.py"
    server = {"compensation": "secant", "comp_coef": 0.3} if method else \
        {"compensation": "local"} if overlap else {}
    replayed = replay_schedule(mnist_root, 3, overlap=overlap, num_clients=6, clients_per_round=3, **server)
    assert [f"{a:.6g}" for a in replayed] == [r["accuracy"] for r in rows]
    numel = model_size(build_model("mlp", 10))
    # three uploads a round (the sampled clients), each broadcast to the two client ranks
    assert {(int(r["bytes_up"]), int(r["bytes_down"])) for r in rows} == \
        {(3 * 4 * transport.upload_size(numel), 2 * 4 * transport.download_size(numel))}
    three = run_job(script, *QUICK_MNIST[:4], "--world_size", "4", *QUICK_MNIST[6:], *MANY, *method,
                    "--max_epoch", "3", out_dir=tmp_path / "three", data_dir=mnist_root)
    assert three.returncode == 0, three.stderr[-3000:]
    assert [r["accuracy"] for r in read_metrics(tmp_path / "three")] == [r["accuracy"] for r in rows]


@pytest.mark.slow
def test_a_balanced_sampled_job_is_the_replayed_schedule_bit_for_bit(mnist_root, tmp_path):
    """--sampling balanced on 2 client ranks: the replay, drawing the same balanced sample, gives the accuracy
    per round exactly; the last round's 3 clients (shares of 1.5 per rank) are two from one rank, one from the
    other."""
    done = run_job("AsyncFedAvg.py", *QUICK_MNIST, *MANY, "--sampling", "balanced", "--max_epoch", "3",
                   out_dir=tmp_path, data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    replayed = replay_schedule(mnist_root, 3, overlap=True, num_clients=6, clients_per_round=3, sampling="balanced",
                               client_ranks=2, compensation="local")
    assert [f"{a:.6g}" for a in replayed] == [r["accuracy"] for r in read_metrics(tmp_path)]
    sampled = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["sampled"]
    assert sorted(sum(host_rank(c, 2) == rank for c in sampled) for rank in (1, 2)) == [1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("compress", [(), ("--compress", "topk", "--topk_ratio", "0.1")], ids=["plain", "topk"])
def test_a_sampled_client_merge_run_resumes_to_the_uninterrupted_one(compress, mnist_root, tmp_path):
    """--resume restores what sampling adds: the carried starts of the last round's clients (from the server's
    checkpoint; compressed, from each client's own state file) and every client's residual, however many rounds
    ago it last trained."""
    options = (*QUICK_MNIST, *MANY, *compress)
    reference = run_job("AsyncFedAvg.py", *options, "--max_epoch", "5", out_dir=tmp_path / "five",
                        data_dir=mnist_root)
    assert reference.returncode == 0, reference.stderr[-3000:]
    first = run_job("AsyncFedAvg.py", *options, "--max_epoch", "2", out_dir=tmp_path / "run", data_dir=mnist_root)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["sampled"] == round_sample(6, 3, 2020, 2)   # which clients the last round sampled
    extended = run_job("AsyncFedAvg.py", "--resume", str(tmp_path / "run"), "--max_epoch", "5", "--master_port",
                       "0", out_dir=tmp_path / "run", data_dir=mnist_root)
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert result_columns(read_metrics(tmp_path / "run")) == result_columns(read_metrics(tmp_path / "five"))


def test_a_sampled_fp16_replay_stays_within_fp16s_error_of_the_plain_one(mnist_root):
    """fp16 with sampling stays within fp16's error of the uncompressed schedule (per-client residuals)."""
    accuracy = {}
    for compression in ("none", "fp16"):
        replay = ScheduleReplay(mnist_root, num_clients=6, max_train_samples=1200, clients_per_round=2,
                                compression=compression)
        step = server_update_step(replay.initial, overlap=True, compensation="local")
        accuracy[compression] = replay.run_client_merge(step, 3)
    assert max(abs(a - b) for a, b in zip(accuracy["none"], accuracy["fp16"], strict=True)) <= 0.01, accuracy

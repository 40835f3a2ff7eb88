"""Who is in a federation's round: which client rank hosts which FL client, and which clients a round samples.

Clients are numbered 1..N. With R client ranks (world_size - 1), client c lives on rank 1 + (c - 1) mod R, so
with N = R (the default) client k is rank k, and with more clients each rank hosts every R-th one. A round
samples K of the N clients (--clients_per_round) from (seed, round) alone, so that the server and every rank
derive the same sample without a message (docs/many-clients.md). The sample is uniform (any K of the N, as
McMahan et al.) or, with --sampling balanced, drawn rank group by rank group so that every rank trains its
share of K: a round waits for its busiest rank, and a uniform sample loads the fixed groups unevenly.
"""
from __future__ import annotations

import random
from collections.abc import Callable


def host_rank(client: int, client_ranks: int) -> int:
    """The rank (1..R) that hosts client `client` (1..N)."""
    return 1 + (client - 1) % client_ranks


def hosted_clients(rank: int, client_ranks: int, num_clients: int) -> list[int]:
    """The clients rank `rank` hosts, in client order (the order it trains and sends them)."""
    return list(range(rank, num_clients + 1, client_ranks))


def clients_per_round(spec: float | None, num_clients: int) -> int:
    """K from --clients_per_round: a count (1..N), a fraction in (0, 1) of N (at least 1), or None: all N."""
    if spec is None:
        return num_clients
    if spec < 1:
        return max(1, round(spec * num_clients))
    if spec != int(spec) or spec > num_clients:
        raise ValueError(f"--clients_per_round {spec:g} must be a whole number of clients up to --num_clients "
                         f"({num_clients}), or a fraction below 1")
    return int(spec)


SAMPLINGS = ("uniform", "balanced")


def round_sample(num_clients: int, per_round: int, seed: int, round_number: int, *, sampling: str = "uniform",
                 client_ranks: int = 1) -> list[int]:
    """The clients (ascending) that train in round `round_number` (1..R), whose uploads make G_round: all of them
    when K = N, else K drawn without replacement by a generator seeded with (seed, round) alone: uniformly, or
    (balanced) balanced_quotas of them from each rank's group."""
    if per_round >= num_clients:
        return list(range(1, num_clients + 1))
    draws = random.Random(f"clients_per_round:{seed}:{round_number}")
    if sampling == "uniform":
        return sorted(draws.sample(range(1, num_clients + 1), per_round))
    groups = [hosted_clients(rank, client_ranks, num_clients) for rank in range(1, client_ranks + 1)]
    quotas = balanced_quotas([len(group) for group in groups], per_round, draws)
    return sorted(client for group, quota in zip(groups, quotas, strict=True) for client in draws.sample(group, quota))


def balanced_quotas(group_sizes: list[int], per_round: int, draws: random.Random) -> list[int]:
    """How many of K clients each group gives, so that every client is still sampled with probability K / N:
    group g's share K n_g / N rounded down, plus one for the groups a systematic draw picks with probability
    equal to the share's fractional part (exact in integers). No group gives more than its share rounded up."""
    total = sum(group_sizes)
    quotas = [per_round * size // total for size in group_sizes]
    remainders = [per_round * size % total for size in group_sizes]   # fractional parts, in units of 1 / N
    order = list(range(len(group_sizes)))
    draws.shuffle(order)   # which groups sit next to each other in the systematic draw changes every round
    point, start = draws.randrange(total), 0
    for group in order:
        end = start + remainders[group]
        # one more when one of the points point, point + N, ... (one per extra client) falls in [start, end):
        # probability r_g / N, and at most one point, as r_g < N
        first_point_from_start = point + total * -((point - start) // total)
        if first_point_from_start < end:
            quotas[group] += 1
        start = end
    return quotas


def last_sampled_round(client: int, up_to: int, sample: Callable[[int], list[int]]) -> int | None:
    """The last round (1..up_to) in which `client` trained, or None (its state is then the initial one);
    `sample(r)` is round r's sample."""
    for round_number in range(up_to, 0, -1):
        if client in sample(round_number):
            return round_number
    return None

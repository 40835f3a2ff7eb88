"""Who is in a federation's round: which client rank hosts which FL client, and which clients a round samples.

Clients are numbered 1..N. With R client ranks (world_size - 1), client c lives on rank 1 + (c - 1) mod R, so
with N = R (the default) client k is rank k, and with more clients each rank hosts every R-th one. A round
samples K of the N clients (--clients_per_round) from (seed, round) alone, so that the server and every rank
derive the same sample without a message (docs/many-clients.md).
"""
from __future__ import annotations

import random


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


def round_sample(num_clients: int, per_round: int, seed: int, round_number: int) -> list[int]:
    """The clients (ascending) that train in round `round_number` (1..R), whose uploads make G_round: all of them
    when K = N, else K drawn without replacement by a generator seeded with (seed, round) alone."""
    if per_round >= num_clients:
        return list(range(1, num_clients + 1))
    draws = random.Random(f"clients_per_round:{seed}:{round_number}")
    return sorted(draws.sample(range(1, num_clients + 1), per_round))


def last_sampled_round(client: int, up_to: int, num_clients: int, per_round: int, seed: int) -> int | None:
    """The last round (1..up_to) in which `client` trained, or None (its state is then the initial one)."""
    for round_number in range(up_to, 0, -1):
        if client in round_sample(num_clients, per_round, seed, round_number):
            return round_number
    return None

"""Split a training set among N clients: iid, the official non-IID shards, McMahan's pathological shards,
or Dirichlet label skew; client_shards and limit_training_set apply them to a loaded data set.

Every function is a pure function of its arguments: it draws from its own generator seeded with
`seed` and never touches the global numpy, torch or `random` state (README, "The algorithm", its paragraph on
determinism; docs/decisions.md, "11. Partitions"). Entry i of a returned list is client i + 1.
"""
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from Utils.data.datasets import DatasetSize, load_dataset
from Utils.data.text import TextData

PARTITION_SCHEMES = ("iid", "noniid", "pathological", "dirichlet")
TEXT_SCHEMES = ("iid", "noniid", "dirichlet")   # pathological needs labels
SHARD_SIZE = 100  # samples per shard of the official non-IID scheme (600 shards for MNIST)
_SEED_LIMIT = 2**32  # numpy's RandomState accepts seeds in [0, 2**32)


def _check_scheme(scheme: str, valid: tuple[str, ...] = PARTITION_SCHEMES) -> None:
    if scheme not in valid:
        raise ValueError(f"unknown partition scheme {scheme!r}; valid: {', '.join(valid)}")


def _check_seed(seed: int) -> None:
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")


def _check_clients(num_clients: int, num_items: int, what: str) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be at least 1, got {num_clients}")
    if num_clients > num_items:
        raise ValueError(f"{num_clients} clients need at least one of the {num_items} {what} each")


def _as_label_array(labels) -> np.ndarray:
    if hasattr(labels, "detach"):  # torch tensor, possibly on a GPU
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    return labels


def iid_partition(num_samples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """A random permutation cut into num_clients parts whose sizes differ by at most one; covers all."""
    _check_seed(seed)
    _check_clients(num_clients, num_samples, "samples")
    order = np.random.RandomState(seed).permutation(num_samples).astype(np.int64)
    return np.array_split(order, num_clients)


def shard_counts(num_shards: int, num_clients: int, seed: int) -> list[int]:
    """Shards per client, as the official gen_partition (Utils/Sample.py) draws them.

    Every client starts with one shard. While shards remain: reseed with s (seed, then +2 per draw),
    pick a client a = randint(0, N); reseed with s, give it delta = randint(1, remaining // 4 + 4)
    shards, clipped to what remains. Picking a client that already holds mean + num_shards / 2 or
    more is void: the official code then redraws with the same s, forever; we advance s and draw
    again, which changes nothing for every seed on which the official loop ends (s wraps at 2**32,
    where the official code would crash). The counts sum to num_shards.
    """
    _check_seed(seed)
    _check_clients(num_clients, num_shards, "shards")
    cap = num_shards / num_clients + num_shards / 2  # at most one client can reach it when N >= 2
    counts = [1] * num_clients
    remaining = num_shards - num_clients
    draw_seed = seed
    while remaining > 0:
        client = np.random.RandomState(draw_seed).randint(0, num_clients)
        if counts[client] < cap:
            delta = int(np.random.RandomState(draw_seed).randint(1, remaining // 4 + 4))
            delta = min(delta, remaining)
            counts[client] += delta
            remaining -= delta
        draw_seed = (draw_seed + 2) % _SEED_LIMIT
    return counts


def noniid_shard_partition(
    labels, num_clients: int, seed: int, shard_size: int = SHARD_SIZE
) -> list[np.ndarray]:
    """The official non-IID scheme: sort by label, cut into shards, deal each client shard_counts() shards.

    Samples are sorted stably by label (the official argsort is unstable, so which samples of a
    label share a shard was up to numpy) and cut into len(labels) // shard_size shards. Client by
    client, a RandomState reseeded with `seed` picks that client's count of the remaining shards
    without replacement, as the official noniid_part does. The remainder of fewer than shard_size
    samples at the end of the sorted order goes to the owner of the last shard (same label as its
    tail), so every sample is used; MNIST, EMNIST and CIFAR have no remainder.
    """
    labels = _as_label_array(labels)
    if shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    num_shards = len(labels) // shard_size
    _check_clients(num_clients, num_shards, f"shards of {shard_size} samples")
    counts = shard_counts(num_shards, num_clients, seed)
    sorted_idx = np.argsort(labels, kind="stable").astype(np.int64)

    # The official code keeps the free shards as list(set(free) - chosen). CPython iterates a set of
    # small ints in hash-table order, which is not always ascending, and choice() picks by position:
    # the same container is what reproduces the official shard choice.
    free = list(range(num_shards))
    client_shards = []
    for count in counts:
        chosen = np.random.RandomState(seed).choice(free, count, replace=False)
        client_shards.append(np.sort(chosen))
        free = list(set(free) - set(chosen.tolist()))
    assert not free, "shard counts must sum to the number of shards"

    return [_cut_shards(sorted_idx, shards, shard_size, num_shards) for shards in client_shards]


def pathological_partition(labels, num_clients: int, seed: int, shards_per_client: int = 2) -> list[np.ndarray]:
    """McMahan et al. 2017's pathological non-IID split: sort by label, cut into num_clients x
    shards_per_client shards of equal size, and give each client shards_per_client of them at random (MNIST,
    100 clients, 2 shards: 200 shards of 300 samples, most clients with two labels).

    Samples are sorted stably by label; a client's shards are consecutive entries of one seeded permutation
    of the shards. The remainder of fewer than num_shards samples at the end of the sorted order goes to the
    owner of the last shard (same label as its tail), so every sample is used.
    """
    labels = _as_label_array(labels)
    if shards_per_client < 1:
        raise ValueError(f"shards_per_client must be at least 1, got {shards_per_client}")
    _check_seed(seed)
    num_shards = num_clients * shards_per_client
    _check_clients(num_shards, len(labels), f"samples ({num_clients} clients x {shards_per_client} shards)")
    sorted_idx = np.argsort(labels, kind="stable").astype(np.int64)
    size = len(labels) // num_shards
    order = np.random.default_rng(seed).permutation(num_shards)
    return [_cut_shards(sorted_idx, np.sort(order[client * shards_per_client:(client + 1) * shards_per_client]),
                        size, num_shards)
            for client in range(num_clients)]


def _cut_shards(sorted_idx: np.ndarray, shards: np.ndarray, shard_size: int, num_shards: int) -> np.ndarray:
    """The samples of the given shards (ascending) of the label-sorted order, one client's part; the owner of
    the last shard also takes the remainder after it."""
    pieces = [sorted_idx[s * shard_size:(s + 1) * shard_size] for s in shards]
    if shards[-1] == num_shards - 1:
        pieces.append(sorted_idx[num_shards * shard_size:])
    return np.concatenate(pieces)


def _split_by_proportions(total: int, proportions: np.ndarray) -> np.ndarray:
    """Integer sizes summing to total, cut at the rounded-down cumulative proportions."""
    cuts = (np.cumsum(proportions)[:-1] * total).astype(np.int64)
    return np.diff(np.concatenate(([0], np.minimum(cuts, total), [total])))


def dirichlet_partition(labels, num_clients: int, seed: int, alpha: float) -> list[np.ndarray]:
    """Per class, client shares drawn from Dirichlet(alpha, ..., alpha): small alpha, strong label skew.

    Covers every sample. A client left empty takes the last sample of the currently largest client,
    one at a time, so every client gets at least one sample without redrawing.
    """
    labels = _as_label_array(labels)
    if not alpha > 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    _check_seed(seed)
    _check_clients(num_clients, len(labels), "samples")
    rng = np.random.default_rng(seed)
    pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
        class_idx = rng.permutation(np.flatnonzero(labels == label)).astype(np.int64)
        sizes = _split_by_proportions(len(class_idx), rng.dirichlet(np.full(num_clients, alpha)))
        for client, chunk in enumerate(np.split(class_idx, np.cumsum(sizes)[:-1])):
            pieces[client].append(chunk)
    parts = [np.concatenate(p) for p in pieces]
    for client in range(num_clients):
        if len(parts[client]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            parts[client], parts[donor] = parts[donor][-1:], parts[donor][:-1]
    return parts


def partition_samples(
    labels, num_clients: int, scheme: str, seed: int, alpha: float = 0.5, shards_per_client: int = 2
) -> list[np.ndarray]:
    """One int64 index array per client (entry i: client i + 1), pairwise disjoint, together covering every
    sample (noniid and pathological: a remainder smaller than a shard joins the owner of the last shard).
    alpha is used by dirichlet only, shards_per_client by pathological only.
    """
    _check_scheme(scheme)
    labels = _as_label_array(labels)
    if scheme == "iid":
        return iid_partition(len(labels), num_clients, seed)
    if scheme == "noniid":
        return noniid_shard_partition(labels, num_clients, seed)
    if scheme == "pathological":
        return pathological_partition(labels, num_clients, seed, shards_per_client)
    return dirichlet_partition(labels, num_clients, seed, alpha)


def partition_tokens(
    num_tokens: int, num_clients: int, scheme: str, seed: int, alpha: float = 0.5
) -> list[tuple[int, int]]:
    """Disjoint contiguous [start, stop) slices of a token stream that together cover it, in client order.

    iid: sizes differ by at most one token. noniid: every client first gets a floor of a quarter of
    the equal share (WikiText-2 with 100 clients: 5,221 tokens, a few bptt batches), the rest is
    dealt as shard_counts() deals shards, one token per shard. dirichlet: the same floor, the rest
    split by Dirichlet(alpha) proportions. Every client gets at least one token. (pathological needs labels.)
    """
    _check_scheme(scheme, TEXT_SCHEMES)
    _check_seed(seed)
    _check_clients(num_clients, num_tokens, "tokens")
    if scheme == "iid":
        bounds = [num_tokens * k // num_clients for k in range(num_clients + 1)]
        return list(zip(bounds[:-1], bounds[1:], strict=True))
    floor = max(1, num_tokens // (4 * num_clients))
    rest = num_tokens - floor * num_clients
    if scheme == "noniid":
        # shard_counts hands every client one unit before dealing; take that unit back
        extra = np.array(shard_counts(rest + num_clients, num_clients, seed)) - 1
    else:
        if not alpha > 0:
            raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
        proportions = np.random.default_rng(seed).dirichlet(np.full(num_clients, alpha))
        extra = _split_by_proportions(rest, proportions)
    bounds = np.concatenate(([0], np.cumsum(floor + extra))).tolist()
    assert bounds[-1] == num_tokens, "token slices must cover the stream"
    return list(zip(bounds[:-1], bounds[1:], strict=True))


# ------------------------------------------------------------------ subsets and shards of a loaded dataset

def limit_training_set(data, max_samples: int | None, seed: int):
    """Keep a seeded random subset of max_samples training samples (tokens: a leading slice), for quick runs."""
    if max_samples is None:
        return data
    if isinstance(data, TextData):
        return replace(data, train_tokens=data.train_tokens[:max_samples])
    if max_samples >= len(data.train_labels):
        return data
    keep = _seeded_sorted_subset(len(data.train_labels), max_samples, seed)
    return replace(data, train_images=data.train_images[keep], train_labels=data.train_labels[keep])


def limit_test_set(data, max_samples: int | None, seed: int):
    """Evaluate on a seeded random subset of max_samples test samples (tokens: a seeded contiguous span)."""
    if max_samples is None:
        return data
    if isinstance(data, TextData):
        if max_samples >= len(data.test_tokens):
            return data
        generator = torch.Generator().manual_seed(seed)
        start = int(torch.randint(0, len(data.test_tokens) - max_samples + 1, (), generator=generator))
        return replace(data, test_tokens=data.test_tokens[start:start + max_samples])
    if max_samples >= len(data.test_labels):
        return data
    keep = _seeded_sorted_subset(len(data.test_labels), max_samples, seed)
    return replace(data, test_images=data.test_images[keep], test_labels=data.test_labels[keep])


def _seeded_sorted_subset(count: int, keep: int, seed: int) -> torch.Tensor:
    """`keep` of the indices 0..count-1, drawn with their own generator seeded by `seed`, in ascending order."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:keep].sort().values


def client_shards(data, num_clients: int, scheme: str, seed: int, alpha: float = 0.5,
                  shards_per_client: int = 2) -> list:
    """Each client's share of a loaded training set (entry i: client i + 1): sample indices for images,
    a (start, stop) token slice for text."""
    if isinstance(data, TextData):
        return partition_tokens(len(data.train_tokens), num_clients, scheme, seed, alpha=alpha)
    return partition_samples(data.train_labels, num_clients, scheme, seed, alpha=alpha,
                             shards_per_client=shards_per_client)


def check_partition(name: str, data_dir: str | Path, size: DatasetSize, max_train_samples: int | None,
                    num_clients: int, scheme: str, seed: int, alpha: float = 0.5, shards_per_client: int = 2) -> None:
    """ValueError when the partition cannot serve every client, found before any rank starts: for images the real
    partition of the (limited) labels, which costs milliseconds; for a token stream only its length."""
    if size.stream:
        partition_tokens(min(size.train, max_train_samples or size.train), num_clients, scheme, seed, alpha=alpha)
        return
    data = limit_training_set(load_dataset(name, data_dir), max_train_samples, seed)
    client_shards(data, num_clients, scheme, seed, alpha, shards_per_client)


def shard_size(shard) -> int:
    """Samples (or tokens) in one client's share."""
    return shard[1] - shard[0] if isinstance(shard, tuple) else len(shard)

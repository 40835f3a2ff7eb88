"""Partitions: disjoint, complete, deterministic, skewed as intended, and faithful to the official shards."""
import gzip
import random
import signal

import numpy as np
import pytest
import torch

from tests.conftest import require_shared
from Utils.data.partition import (
    PARTITION_SCHEMES,
    SHARD_SIZE,
    TEXT_SCHEMES,
    dirichlet_partition,
    iid_partition,
    noniid_shard_partition,
    partition_samples,
    partition_tokens,
    shard_counts,
)

# 10 classes, 60 shards of 100 plus a remainder of 37 samples (generated with a local RNG)
LABELS = np.random.default_rng(0).integers(0, 10, 6037)


@pytest.fixture
def no_hang():
    """Fail a test that runs longer than 10 s instead of hanging the suite."""
    def on_alarm(signum, frame):
        raise TimeoutError("partition did not finish within 10 s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def mnist_train_labels() -> np.ndarray:
    path = require_shared("mnist") / "train-labels-idx1-ubyte.gz"
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read()[8:], dtype=np.uint8)  # idx1: 8-byte header, then uint8 labels


def assert_disjoint_cover(parts, num_samples):
    every = np.concatenate(parts)
    assert all(p.dtype == np.int64 for p in parts)
    assert len(every) == len(np.unique(every)) == num_samples
    assert every.min() == 0 and every.max() == num_samples - 1


def max_class_share(parts, labels) -> float:
    """Mean over clients of the share of a client's samples in its most common class (1/C: no skew)."""
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


# --- official shard scheme ---------------------------------------------------------------------

def test_official_shard_counts_and_choice_on_mnist():
    labels = mnist_train_labels()
    assert len(labels) == 600 * SHARD_SIZE
    assert shard_counts(600, 4, 2020) == [216, 235, 54, 95]

    parts = partition_samples(labels, 4, "noniid", 2020)
    assert [len(p) for p in parts] == [21600, 23500, 5400, 9500]
    assert_disjoint_cover(parts, len(labels))

    # shard ids picked by the official noniid_part for this seed (computed once from the official code)
    position = np.empty(len(labels), dtype=np.int64)
    position[np.argsort(labels, kind="stable")] = np.arange(len(labels))
    official_first_shards = [[1, 2, 3, 8, 9, 12], [0, 4, 5, 6, 7, 10], [19, 21, 57, 78, 83, 85],
                             [11, 13, 17, 33, 37, 38]]
    official_shard_id_sums = [65560, 69059, 16031, 29050]
    for part, first, id_sum in zip(parts, official_first_shards, official_shard_id_sums, strict=True):
        shards = np.unique(position[part] // SHARD_SIZE)
        assert shards[:6].tolist() == first
        assert int(shards.sum()) == id_sum
        assert np.all(np.bincount(position[part] // SHARD_SIZE)[shards] == SHARD_SIZE)  # whole shards


@pytest.mark.parametrize("num_shards,num_clients,seed", [
    (600, 3, 605), (600, 4, 1594), (500, 4, 2696),  # the official loop never ends on these
    (600, 100, 2020), (600, 600, 2020), (600, 1, 2020), (1128, 47, 7),
    (600, 4, 0), (600, 4, 2**32 - 1), (600, 100, 2**32 - 1),  # edge seeds
])
def test_shard_counts_terminate_and_sum(no_hang, num_shards, num_clients, seed):
    counts = shard_counts(num_shards, num_clients, seed)
    assert len(counts) == num_clients
    assert sum(counts) == num_shards
    assert min(counts) >= 1


def test_noniid_remainder_joins_owner_of_last_shard():
    parts = noniid_shard_partition(LABELS, 5, seed=3)
    assert_disjoint_cover(parts, len(LABELS))
    sorted_idx = np.argsort(LABELS, kind="stable")
    tail = sorted_idx[60 * SHARD_SIZE:]
    owners = [k for k, p in enumerate(parts) if np.isin(tail, p).any()]
    assert len(owners) == 1 and np.isin(tail, parts[owners[0]]).all()
    assert np.isin(sorted_idx[59 * SHARD_SIZE:60 * SHARD_SIZE], parts[owners[0]]).all()
    sizes = sorted(len(p) for p in parts)
    assert sum(s % SHARD_SIZE for s in sizes) == 37


def test_noniid_clients_with_few_shards_see_few_classes(no_hang):
    labels = np.sort(np.random.default_rng(1).integers(0, 10, 60000))
    parts = partition_samples(labels, 100, "noniid", seed=5)
    counts = shard_counts(600, 100, 5)
    assert_disjoint_cover(parts, len(labels))
    assert [len(p) for p in parts] == [c * SHARD_SIZE for c in counts]
    classes = [len(np.unique(labels[p])) for p in parts]
    # every class has more than 100 samples, so a shard spans at most two classes
    assert all(n <= 2 * c for n, c in zip(classes, counts, strict=True))
    few = [n for n, c in zip(classes, counts, strict=True) if c <= 2]
    assert few and max(few) <= 4
    iid = partition_samples(labels, 100, "iid", seed=5)
    assert max_class_share(parts, labels) > 2 * max_class_share(iid, labels)


# --- generic properties of every scheme -------------------------------------------------------

@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_disjoint_complete_deterministic(scheme):
    parts = partition_samples(LABELS, 7, scheme, seed=11)
    assert len(parts) == 7 and all(len(p) > 0 for p in parts)
    assert_disjoint_cover(parts, len(LABELS))
    again = partition_samples(LABELS, 7, scheme, seed=11)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_samples(LABELS, 7, scheme, seed=12)
    assert not all(np.array_equal(np.sort(a), np.sort(b)) for a, b in zip(parts, other, strict=True))


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_torch_labels_match_numpy_labels(scheme):
    from_numpy = partition_samples(LABELS, 4, scheme, seed=2)
    from_torch = partition_samples(torch.from_numpy(LABELS), 4, scheme, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(from_numpy, from_torch, strict=True))


def test_iid_sizes_equal_within_one():
    parts = iid_partition(6037, 10, seed=4)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 6037
    assert_disjoint_cover(parts, 6037)


def test_dirichlet_skew_grows_as_alpha_shrinks():
    skewed = max_class_share(dirichlet_partition(LABELS, 10, seed=1, alpha=0.1), LABELS)
    uniform = max_class_share(dirichlet_partition(LABELS, 10, seed=1, alpha=100.0), LABELS)
    assert skewed > 0.4 and uniform < 0.2  # 10 classes: 0.1 means no skew at all


def test_dirichlet_gives_every_client_a_sample(no_hang):
    labels = LABELS[:60]
    parts = dirichlet_partition(labels, 50, seed=3, alpha=0.001)
    assert min(len(p) for p in parts) >= 1
    assert_disjoint_cover(parts, 60)
    one_each = dirichlet_partition(labels, 60, seed=3, alpha=0.01)
    assert [len(p) for p in one_each] == [1] * 60


def test_global_rng_states_untouched():
    np_state, torch_state, py_state = np.random.get_state(), torch.get_rng_state(), random.getstate()
    for scheme in PARTITION_SCHEMES:
        partition_samples(LABELS, 6, scheme, seed=9)
    for scheme in TEXT_SCHEMES:
        partition_tokens(10_000, 6, scheme, seed=9)
    shard_counts(600, 4, 1594)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert random.getstate() == py_state


@pytest.mark.parametrize("call,message", [
    (lambda: partition_samples(LABELS, 4, "shards", 0), "valid: iid, noniid, pathological, dirichlet"),
    (lambda: partition_tokens(1000, 4, "pathological", 0), "valid: iid, noniid, dirichlet"),
    (lambda: partition_samples(LABELS, 4, "pathological", 0, shards_per_client=0), "at least 1"),
    (lambda: partition_samples(LABELS, 0, "iid", 0), "at least 1"),
    (lambda: partition_samples(LABELS, 61, "noniid", 0), "61 clients need at least one of the 60 shards"),
    (lambda: partition_samples(LABELS, 6038, "iid", 0), "6038 clients"),
    (lambda: partition_samples(LABELS, 6038, "dirichlet", 0), "6038 clients"),
    (lambda: partition_samples(LABELS, 4, "dirichlet", 0, alpha=0.0), "alpha must be > 0"),
    (lambda: partition_samples(LABELS, 4, "dirichlet", 0, alpha=-1.0), "alpha must be > 0"),
    (lambda: partition_samples(LABELS, 4, "noniid", -1), "seed must be in"),
    (lambda: partition_samples(LABELS, 4, "iid", 2**32), "seed must be in"),
    (lambda: partition_samples(LABELS.reshape(-1, 1), 4, "iid", 0), "1-D integer"),
    (lambda: partition_samples(LABELS.astype(float), 4, "iid", 0), "1-D integer"),
    (lambda: noniid_shard_partition(LABELS, 4, 0, shard_size=0), "shard_size"),
    (lambda: partition_tokens(1000, 4, "random", 0), "valid: iid, noniid, dirichlet"),
    (lambda: partition_tokens(3, 4, "noniid", 0), "4 clients need at least one of the 3 tokens"),
    (lambda: partition_tokens(1000, 4, "dirichlet", 0, alpha=0.0), "alpha must be > 0"),
])
def test_bad_inputs_raise_one_line_value_error(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


# --- text --------------------------------------------------------------------------------------

def assert_contiguous_cover(slices, num_tokens):
    assert slices[0][0] == 0 and slices[-1][1] == num_tokens
    assert all(stop == next_start for (_, stop), (next_start, _) in zip(slices[:-1], slices[1:], strict=True))
    assert all(stop > start for start, stop in slices)


@pytest.mark.parametrize("scheme", TEXT_SCHEMES)
def test_token_slices_disjoint_contiguous_cover(no_hang, scheme):
    for num_tokens, num_clients in [(2_088_628, 4), (2_088_628, 100), (929_589, 7), (5, 5), (9, 4)]:
        slices = partition_tokens(num_tokens, num_clients, scheme, seed=2020)
        assert len(slices) == num_clients
        assert_contiguous_cover(slices, num_tokens)
        assert slices == partition_tokens(num_tokens, num_clients, scheme, seed=2020)


def test_token_sizes_iid_equal_noniid_random_with_floor():
    iid_sizes = [b - a for a, b in partition_tokens(2_088_628, 4, "iid", 2020)]
    assert max(iid_sizes) - min(iid_sizes) <= 1
    for scheme in ("noniid", "dirichlet"):
        sizes = [b - a for a, b in partition_tokens(2_088_628, 4, scheme, 2020)]
        assert max(sizes) > 1.5 * min(sizes)
        assert min(sizes) >= 2_088_628 // 16  # floor: a quarter of the equal share
        other = [b - a for a, b in partition_tokens(2_088_628, 4, scheme, 2021)]
        assert other != sizes
    many = [b - a for a, b in partition_tokens(2_088_628, 100, "noniid", 0)]
    assert min(many) >= 5221


def _image_data(num_train: int, num_test: int):
    from Utils.data.datasets import ImageData
    pixels = torch.arange(num_train + num_test, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    labels = torch.arange(num_train + num_test) % 10
    return ImageData("mnist", pixels[:num_train], labels[:num_train], pixels[num_train:], labels[num_train:],
                     10, False, (0.5,), (0.25,))


def test_test_subset_is_seeded_sorted_and_keeps_images_with_labels():
    from Utils.data.partition import limit_test_set
    data = _image_data(20, 100)
    subset = limit_test_set(data, 30, seed=7)
    again, other = limit_test_set(data, 30, seed=7), limit_test_set(data, 30, seed=8)
    assert subset.test_images.shape == (30, 1, 2, 2) and torch.equal(subset.test_labels, again.test_labels)
    assert not torch.equal(subset.test_images, other.test_images)
    kept = subset.test_images[:, 0, 0, 0].long() - 20   # each image's index in the test set
    assert torch.equal(kept, kept.sort().values) and len(kept.unique()) == 30
    assert torch.equal(subset.test_labels, data.test_labels[kept])
    assert subset.train_images is data.train_images   # training data untouched
    assert limit_test_set(data, None, 7) is data and limit_test_set(data, 100, 7) is data


def test_test_subset_of_text_is_a_seeded_contiguous_span():
    from Utils.data.partition import limit_test_set
    from Utils.data.text import TextData
    data = TextData("ptb", torch.arange(50), torch.arange(5), torch.arange(1000), ["w"] * 1000)
    span = limit_test_set(data, 100, seed=3).test_tokens
    assert len(span) == 100 and torch.equal(span, torch.arange(span[0], span[0] + 100))
    assert torch.equal(span, limit_test_set(data, 100, seed=3).test_tokens)
    assert limit_test_set(data, 5000, 3) is data


def test_a_trainer_holds_exactly_its_shard_normalised():
    from Networks import build_model
    from Utils.training import LocalTrainer
    data = _image_data(60, 10)
    shard = np.array([3, 17, 42, 5])
    trainer = LocalTrainer(build_model("mlp", 10, in_channels=1, image_size=2), data, shard, batch_size=2,
                           lr=0.1, epochs=1, seed=1, client=1)
    assert torch.equal(trainer.shard.labels, data.train_labels[shard])
    expected = (data.train_images[shard].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(trainer.shard.images, expected, rtol=0, atol=1e-6)


def test_the_pathological_split_gives_each_client_its_shards_of_sorted_labels():
    """McMahan et al. 2017 on MNIST's size: 100 clients x 2 shards of 300 label-sorted samples."""
    labels = np.repeat(np.arange(10), 6000)[np.random.RandomState(0).permutation(60000)]
    parts = partition_samples(labels, 100, "pathological", seed=2020)
    assert_disjoint_cover(parts, 60000)
    assert {len(p) for p in parts} == {600}
    labels_per_client = [len(np.unique(labels[p])) for p in parts]
    assert max(labels_per_client) <= 2 and np.mean(labels_per_client) > 1.5   # a shard never spans 2 labels here
    again = partition_samples(labels, 100, "pathological", seed=2020)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    three = partition_samples(labels[:6037], 7, "pathological", seed=1, shards_per_client=3)
    assert_disjoint_cover(three, 6037)   # 21 shards of 287, the 10 left over with the last shard's owner
    assert sorted(len(p) for p in three)[:6] == [861] * 6 and max(len(p) for p in three) == 871

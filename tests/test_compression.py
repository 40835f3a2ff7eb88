"""Compressed messages: each format within its stated error bound, top-k exact where it keeps, error feedback
losing nothing over rounds, payloads laid out and read back bit for bit; and real jobs with --compress pinned
to the one-process replay, counting the bytes they really send."""
import math

import pytest
import torch
from helpers_e2e import QUICK_MNIST, read_metrics, replay_schedule, run_job

from Utils import transport
from Utils.compression import (
    COMPRESSIONS,
    INT8_BLOCK,
    ErrorFeedback,
    decode,
    encode,
    error_bound,
    part_specs,
    topk_count,
)


def sample(numel: int = 3 * INT8_BLOCK + 17, seed: int = 0) -> torch.Tensor:
    """Numbers of very different sizes, as a model's difference has: a block of zeros, tiny and large values."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(numel, generator=g) * torch.logspace(-6, 2, numel)[torch.randperm(numel, generator=g)]
    values[INT8_BLOCK:2 * INT8_BLOCK] = 0.0
    return values


def roundtrip(values: torch.Tensor, compression: str, ratio: float = 0.05) -> torch.Tensor:
    """Encode, lay out as a payload, read back, decode: what a receiver gets."""
    specs = part_specs(compression, values.numel(), ratio)
    payload = transport.pack_payload(encode(values, compression, ratio))
    assert payload.dtype == torch.float32 and payload.numel() == transport.payload_words(specs)
    parts = transport.unpack_payload(payload.clone(), specs)
    assert [(p.dtype, p.numel()) for p in parts] == specs
    return decode(parts, compression, values.numel())


@pytest.mark.parametrize("compression", ["none", "fp16", "int8"])
def test_each_format_is_within_its_error_bound(compression):
    values = sample()
    received = roundtrip(values, compression)
    assert torch.all((received - values).abs() <= error_bound(values, compression))
    assert torch.equal(received[INT8_BLOCK:2 * INT8_BLOCK], torch.zeros(INT8_BLOCK))   # zeros stay zeros
    if compression == "none":
        assert torch.equal(received, values)


def test_int8_error_is_half_a_step_of_its_block_and_fp16_saturates_instead_of_overflowing():
    values = torch.tensor([1.0, -0.5, 0.25] + [0.0] * (INT8_BLOCK - 3) + [1e-3, 3e-4])
    received = roundtrip(values, "int8")
    assert received[0] == 1.0 and received[1] == pytest.approx(-64 / 127) and received[2] == pytest.approx(32 / 127)
    assert (received[INT8_BLOCK:] - values[INT8_BLOCK:]).abs().max() <= 1e-3 / 127 / 2 * (1 + 1e-6)
    huge = roundtrip(torch.tensor([1e6, -1e6, 1.0]), "fp16")
    assert huge.tolist() == [65504.0, -65504.0, 1.0]


def test_topk_keeps_the_largest_numbers_exactly_and_sends_zeros_elsewhere():
    values = sample()
    k = topk_count(values.numel(), 0.05)
    assert k == math.ceil(0.05 * values.numel())
    received = roundtrip(values, "topk")
    kept = received != 0
    assert int(kept.sum()) == k and torch.equal(received[kept], values[kept])
    assert values[kept].abs().min() >= values[~kept].abs().max()
    assert topk_count(10, 1e-9) == 1 and topk_count(10, 1.0) == 10


@pytest.mark.parametrize("compression", ["fp16", "int8", "topk"])
def test_error_feedback_loses_nothing_over_rounds(compression):
    """Over R messages the receiver gets the sum of the deltas less the last residual, and that residual is
    what one message of the format may lose (top-k: it shrinks as it is sent)."""
    feedback = ErrorFeedback(sample().numel(), compression, 0.05)
    sent_total = received_total = torch.zeros(sample().numel(), dtype=torch.float64)
    for r in range(30):
        delta = sample(seed=r) * 1e-2
        parts, arrives = feedback.compress(delta)
        assert torch.equal(arrives, decode(parts, compression, delta.numel()))   # the sender knows what arrives
        sent_total, received_total = sent_total + delta.double(), received_total + arrives.double()
    gap = sent_total - received_total - feedback.residual.double()
    assert gap.abs().max() < 1e-5 * sent_total.abs().max()
    assert feedback.residual.abs().max() < sent_total.abs().max()


def test_without_compression_the_payload_is_the_model_itself():
    model = torch.arange(5.0)
    assert transport.pack_payload(encode(model, "none", 0.05)) is model
    feedback = ErrorFeedback(5, "none", 0.05)
    assert feedback.compress(model)[1] is model and feedback.residual is None


def test_payload_sizes_per_format():
    numel = 1000
    words = {c: transport.payload_words(part_specs(c, numel, 0.05)) for c in COMPRESSIONS}
    assert words == {"none": 1000, "fp16": 500, "int8": 4 + 250, "topk": 2 * 50}


def test_payload_bits_survive_whatever_they_look_like_as_float32():
    """top-k indices viewed as float32 words can look like NaNs: the payload moves bits, never values."""
    indices = torch.tensor([0x7FC00001, 0x7F800000, 3], dtype=torch.int32)   # a NaN and an inf as float32
    parts = [indices, torch.tensor([1.0, -2.0, 3.0])]
    back = transport.unpack_payload(transport.pack_payload(parts).clone(), [(torch.int32, 3), (torch.float32, 3)])
    assert torch.equal(back[0], indices) and torch.equal(back[1], parts[1])


JOBS = {
    "fedavg-int8": ("FedAvg.py", ("--compress", "int8"), dict(overlap=False, compression="int8")),
    "merge-topk": ("AsyncFedAvg.py", ("--compress", "topk", "--topk_ratio", "0.1"),
                   dict(overlap=True, compensation="local", compression="topk", topk_ratio=0.1)),
    "secant-fp16-mom": ("AsyncFedAvg.py", ("--compress", "fp16", "--compensation", "secant", "--mom", "0.5",
                                           "--server_lr", "0.7"),
                        dict(overlap=True, compensation="secant", compression="fp16", momentum=0.5, server_lr=0.7)),
}


@pytest.mark.slow
@pytest.mark.parametrize("job", sorted(JOBS))
def test_a_compressed_job_trains_the_replayed_schedule_and_counts_the_bytes_it_sends(job, mnist_root, tmp_path):
    script, options, replay = JOBS[job]
    done = run_job(script, *QUICK_MNIST, "--max_epoch", "3", *options, out_dir=tmp_path / job, data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(tmp_path / job)
    replayed = replay_schedule(mnist_root, 3, **replay)
    assert [f"{a:.6g}" for a in replayed] == [r["accuracy"] for r in rows]
    assert float(rows[-1]["accuracy"]) > 0.6
    numel = 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10   # the MLP
    words = transport.payload_words(part_specs(replay["compression"], numel, replay.get("topk_ratio", 0.05)))
    clients = 2
    assert {int(r["bytes_up"]) for r in rows} == {clients * 4 * transport.upload_size(words)}
    assert {int(r["bytes_down"]) for r in rows} == {clients * 4 * transport.download_size(words)}
    assert words < numel // 1.9

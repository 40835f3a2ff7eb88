"""The transport module's pieces that need no process group: flat messages, link delay, the comm thread."""
import math
import socket
import threading
import time

import pytest
import torch

from Networks import build_model
from Utils import transport
from Utils.flat import buffer_size, flatten_model, load_flat_into_model, model_size


def test_flat_model_round_trip_leaves_constant_tables_home():
    torch.manual_seed(0)
    source = build_model("transformer", 50)
    flat = flatten_model(source)
    assert flat.dtype == torch.float32
    assert flat.numel() == model_size(source) == sum(p.numel() for p in source.parameters())   # no positional table
    torch.manual_seed(1)
    target = build_model("transformer", 50)
    load_flat_into_model(flat, target)
    for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_batchnorm_statistics_travel_last_and_integer_buffers_stay_home():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    model.train()
    model(torch.randn(8, 3))   # moves the running statistics and num_batches_tracked
    flat = flatten_model(model)
    num_params = sum(p.numel() for p in model.parameters())
    assert buffer_size(model) == 8 and flat.numel() == num_params + 8   # mean and var, no counter
    assert torch.equal(flat[num_params:], torch.cat([model[1].running_mean, model[1].running_var]))
    target = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    load_flat_into_model(flat, target)
    assert torch.equal(target[1].running_var, model[1].running_var)
    assert target[1].num_batches_tracked.item() == 0   # never sent


def test_flatten_copies_so_training_cannot_change_a_message():
    model = build_model("mlp", 10)
    flat = flatten_model(model)
    before = flat.clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(flat, before)


def test_messages_pack_and_unpack_by_name():
    model = torch.arange(5, dtype=torch.float32)
    report = transport.RoundReport(train_loss=0.5, train_s=1.0, comm_wait_s=2.0, comm_s=3.0)
    upload = transport.pack_upload(model, report)
    assert upload.numel() == transport.upload_size(5)
    model_part, unpacked = transport.unpack_upload(upload, 5)
    assert torch.equal(model_part, model) and unpacked == report
    for stop in (False, True):
        download = transport.pack_download(model, stop)
        assert download.numel() == transport.download_size(5)
        model_part, stopped = transport.unpack_download(download, 5)
        assert torch.equal(model_part, model) and stopped is stop
    assert math.isnan(transport.RoundReport.from_tensor(transport.RoundReport(comm_s=1.0).to_tensor()).train_loss)


def test_link_delay_is_latency_plus_bits_over_bandwidth():
    assert transport.Link().delay_s(10**9) == 0.0
    assert transport.Link(bandwidth_mbit=8.0, latency_ms=50).delay_s(1_000_000) == pytest.approx(0.05 + 1.0)
    assert transport.Link(latency_ms=20).delay_s(123) == pytest.approx(0.02)


def test_comm_thread_runs_jobs_in_order_in_the_background():
    comm = transport.CommThread()
    order = []
    release = threading.Event()
    first = comm.submit(lambda: (release.wait(5), order.append(1), "a")[-1])
    second = comm.submit(lambda: (order.append(2), "b")[-1])
    assert not first.done.is_set()          # the submitter was not blocked
    release.set()
    assert first.wait(5) == "a" and second.wait(5) == "b" and order == [1, 2]
    assert first.seconds > 0
    comm.close()


def test_comm_thread_exception_is_reraised_in_the_waiter():
    comm = transport.CommThread()
    job = comm.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        job.wait(5)
    assert comm.submit(lambda: "still alive").wait(5) == "still alive"
    comm.close()


def test_a_job_that_never_finishes_times_out():
    comm = transport.CommThread()
    job = comm.submit(lambda: time.sleep(2))
    with pytest.raises(transport.PeerFailure, match="no answer for 0 s"):
        job.wait(0.1)
    comm.close()


def test_port_checks():
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        assert not transport.port_is_free("", busy.getsockname()[1])
    assert transport.port_is_free("", transport.free_port())


def test_a_malformed_or_non_finite_download_is_refused():
    model = torch.ones(3)
    assert transport.unpack_download(transport.pack_download(model, stop=True), 3)[1] is True
    bad_flag = torch.cat([model, torch.tensor([0.5])])
    with pytest.raises(transport.PeerFailure, match="malformed download"):
        transport.unpack_download(bad_flag, 3)
    with pytest.raises(transport.PeerFailure, match="not finite"):
        transport.finite_global_model(transport.unpack_download(
            transport.pack_download(torch.tensor([1.0, float("nan"), 1.0]), False), 3)[0])
    assert transport.unpack_start(transport.pack_start(model, 7), 3)[1] == 7
    with pytest.raises(transport.PeerFailure, match="malformed start"):
        transport.unpack_start(torch.cat([model, torch.tensor([1.5])]), 3)


def test_the_hang_deadline_is_timeout_then_several_rounds_with_a_floor():
    deadline = transport.HangDeadline(timeout_s=1800.0)
    assert deadline.seconds == 1800.0            # no round seen: start-up and a first round can be long
    deadline.observe(10.0)
    assert deadline.seconds == 300.0             # 5 x 10 s is below the floor
    deadline.observe(100.0)
    deadline.observe(20.0)
    assert deadline.seconds == 500.0             # 5 x the longest round
    assert transport.HangDeadline(timeout_s=60.0, longest_round_s=100.0).seconds == 60.0   # never past --timeout


def test_the_hello_tells_fingerprints_apart():
    one, other = transport.hello_message(b"\x00\x01\x02\x03\x04\x05\x06\x07"), transport.hello_message(b"\xff" * 8)
    assert one.tolist() == [3.0, 1.0, 515.0, 1029.0, 1543.0] and not torch.equal(one, other)

"""Clients that differ: a per-client link and a per-client training slowdown, and metrics.csv naming the
client each round waited for; the numbers stay those of equal clients (only the timing changes)."""
import pytest
from helpers_e2e import QUICK_MNIST, TIMING_COLUMNS, read_metrics, run_job

from Characters.server import waited_for


def test_the_round_waited_for_the_last_client_whose_receive_blocked():
    assert waited_for([1, 2, 3], [0.5, 0.001, 0.001]) == 1      # client 1 was the last: the others were in
    assert waited_for([1, 2, 3], [0.2, 0.001, 0.3]) == 3
    assert waited_for([1, 2, 3], [0.002, 0.001, 0.001]) is None  # every upload was already in
    assert waited_for([1], [0.2]) == 1 and waited_for([1], [0.001]) is None


@pytest.mark.slow
@pytest.mark.parametrize("script", ["FedAvg.py", "AsyncFedAvg.py"])
def test_a_slow_client_is_the_one_waited_for_and_changes_no_number(script, mnist_root, tmp_path):
    options = (*QUICK_MNIST, "--max_epoch", "3")
    even = run_job(script, *options, out_dir=tmp_path / "even", data_dir=mnist_root)
    slow = run_job(script, *options, "--slowdown", "1,4", out_dir=tmp_path / "slow-training", data_dir=mnist_root)
    # 0.8 MB each way: about 0.03 s on 200 Mbit/s, 0.3 s on 20 Mbit/s
    link = run_job(script, *options, "--bandwidth", "20,200", out_dir=tmp_path / "slow-link", data_dir=mnist_root)
    for done in (even, slow, link):
        assert done.returncode == 0, done.stderr[-3000:]
    rows = {name: read_metrics(tmp_path / name) for name in ("even", "slow-training", "slow-link")}
    strip = lambda run: [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in run]  # noqa: E731
    assert strip(rows["slow-training"]) == strip(rows["even"]) == strip(rows["slow-link"])
    assert [r["waited_for"] for r in rows["slow-training"]][1:] == ["2", "2"], rows["slow-training"]
    assert [r["waited_for"] for r in rows["slow-link"]][1:] == ["1", "1"], rows["slow-link"]
    train_s = [float(r["train_s"]) for r in rows["slow-training"]]
    even_train_s = [float(r["train_s"]) for r in rows["even"]]
    assert sum(train_s) > 1.8 * sum(even_train_s)   # the mean of 1x and 4x is 2.5x

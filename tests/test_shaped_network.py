"""benchmarks/bench_shaped_network.py: one line and exit 2 without root; nothing left behind when interrupted."""
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_shaped_network as shaped  # noqa: E402


def test_without_root_it_says_so_in_one_line_and_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sys, "argv", ["bench_shaped_network.py"])
    with pytest.raises(SystemExit) as stop:
        shaped.main()
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bench_shaped_network.py needs root (network namespaces, veth pairs, tc): run it as root"]


@pytest.mark.slow
@pytest.mark.skipif(shaped.missing_privileges() is not None, reason="needs root and iproute2 (ip, tc)")
def test_an_interrupted_run_leaves_no_namespace_behind(mnist_root, tmp_path):
    benchmark = subprocess.Popen([sys.executable, "benchmarks/bench_shaped_network.py", "--data_dir",
                                  str(mnist_root), "--max_train_samples", "2000", "--rounds", "50",
                                  "--work_dir", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("FedAvg-shaped.rank*.out")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert shaped.our_namespaces(), "the shaped network was not built"
    time.sleep(3)   # the ranks are starting inside their namespaces
    benchmark.send_signal(signal.SIGTERM)
    _, err = benchmark.communicate(timeout=60)
    assert benchmark.returncode != 0 and "interrupted: the namespaces are deleted" in err
    assert shaped.our_namespaces() == []
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftover == [], leftover

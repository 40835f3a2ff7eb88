"""Utils/tools/plot.py: runs drawn against round and wall-clock into a small PNG, labelled by method."""
import csv
import json
import os
import sys

import pytest

from Utils.tools import plot


def make_run(path, overlap: bool, metric: str = "accuracy", **config):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"overlap": overlap, "mom": 0.0, "server_lr": 1.0,
                                                  "compensation": "secant" if overlap else "none", **config}))
    with (path / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["round", metric, "wall_s"])
        writer.writeheader()
        for r in range(1, 6):
            writer.writerow({"round": r, metric: "" if r == 2 else 0.5 + 0.08 * r, "wall_s": 2 + r})
    return path


def test_method_labels():
    assert plot.method_label({"overlap": False, "mom": 0.0, "server_lr": 1.0}) == "FedAvg"
    assert plot.method_label({"overlap": False, "mom": 0.9, "server_lr": 0.4}) == "FedAvgM (mu 0.9, server lr 0.4)"
    assert plot.method_label({"overlap": True, "mom": 0.0, "server_lr": 1.0, "compensation": "secant"}) == \
        "Overlap-FedAvg (secant)"
    assert plot.method_label({"overlap": True, "mom": 0.5, "server_lr": 0.5, "compensation": "local",
                              "merge_weight": 0.5}) == "Overlap-FedAvg (client merge b 0.5, mu 0.5, server lr 0.5)"


def test_read_run_keeps_evaluated_rounds_in_percent(tmp_path):
    curve = plot.read_run(make_run(tmp_path / "a", overlap=True))
    assert curve.rounds == [1, 3, 4, 5] and curve.wall_s == [3.0, 5.0, 6.0, 7.0]
    assert curve.values == pytest.approx([58.0, 74.0, 82.0, 90.0]) and curve.label == "Overlap-FedAvg (secant)"


def test_runs_of_one_method_are_told_apart_by_their_directory(tmp_path):
    dirs = [make_run(tmp_path / "seed2020", overlap=True), make_run(tmp_path / "seed2021", overlap=True),
            make_run(tmp_path / "fedavg", overlap=False)]
    labels = [curve.label for curve in plot.named_apart([plot.read_run(d) for d in dirs], dirs)]
    assert labels == ["Overlap-FedAvg (secant): seed2020", "Overlap-FedAvg (secant): seed2021", "FedAvg"]


def test_plot_writes_a_small_png(tmp_path, capsys):
    try:
        import matplotlib  # noqa: F401
    except ImportError:   # requirements-plot.txt; CI installs it with the dev requirements
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("matplotlib is missing; CI requires it (requirements-dev.txt includes requirements-plot.txt)")
        pytest.skip("matplotlib is not installed: pip install -r requirements-plot.txt")
    runs = [make_run(tmp_path / "fedavg", overlap=False), make_run(tmp_path / "overlap", overlap=True)]
    out = tmp_path / "plots" / "mnist-mlp.png"
    assert plot.main([str(r) for r in runs] + ["--out", str(out), "--title", "MNIST, MLP"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size < 200_000


def test_one_line_errors(tmp_path, capsys, monkeypatch):
    assert plot.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")]) == 2
    assert "not a run directory: config.json is missing" in capsys.readouterr().err
    text = make_run(tmp_path / "text", overlap=False, metric="perplexity")
    image = make_run(tmp_path / "image", overlap=True)
    assert plot.main([str(text), str(image), "--out", str(tmp_path / "x.png")]) == 2
    assert "mix accuracy and perplexity" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # as if it were not installed
    assert plot.main([str(image), "--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err == "plotting needs matplotlib: pip install -r requirements-plot.txt\n"

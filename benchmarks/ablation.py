"""Ablation behind AsyncFedAvg.py's defaults: every --compensation x (mu, server_lr), plus neighbours of
the best stable pair, beside FedAvg.

Each cell is a real job (AsyncFedAvg.py / FedAvg.py, 4 clients, non-IID, seed 2020); accuracy after
every round goes into a markdown table. Finished runs are reused, so an interrupted sweep resumes.

    python benchmarks/ablation.py --data_dir ./data                      # all four settings
    python benchmarks/ablation.py --jobs mnist --epochs 1 --out docs/ablation-mnist-e1.md
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPENSATIONS = ("official", "dcasgd", "full", "none")
MOMENTUM_AND_SERVER_LR = ((0.0, 1.0), (0.5, 0.3), (0.9, 1.0), (0.9, 0.3), (0.9, 0.1))
# Neighbours of the best stable pair (0.9, 0.3) with a larger steady-state step server_lr / (1 - mu). They run
# with `full` and `none` only: `official` and `dcasgd` equal `none` to 3-4 decimals in every cell above.
NEIGHBOUR_PAIRS = ((0.9, 0.4), (0.8, 0.5), (0.7, 0.6))
NEIGHBOUR_COMPENSATIONS = ("full", "none")
# (dataset, model, {local epochs: (rounds, training-set size)}): the conv net costs ~50x the MLP on a CPU,
# so the Fashion-MNIST job trains on a subset, smaller and for fewer rounds at 5 local epochs.
JOBS = {"mnist": ("mnist", "mlp", {1: (8, None), 5: (6, None)}),
        "fmnist": ("fmnist", "mnistnet", {1: (8, 3000), 5: (4, 2000)})}


def run(script: str, tag: str, extra: list[str], job: str, epochs: int, args) -> list[float]:
    dataset, model, settings = JOBS[job]
    rounds, subset = settings[epochs]
    out_dir = Path(args.work_dir) / f"{job}-e{epochs}" / tag
    metrics = out_dir / "metrics.csv"
    if not (metrics.exists() and len(_accuracy(metrics)) == rounds):
        command = [sys.executable, script, "--dataset", dataset, "--model", model, "--world_size", "5",
                   "--client_epoch", str(epochs), "--max_epoch", str(rounds), "--master_port", "0",
                   "--data_dir", args.data_dir, "--out_dir", str(out_dir), *extra]
        if subset:
            command += ["--max_train_samples", str(subset)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{tag} failed:\n{done.stderr[-2000:]}")
    accuracy = _accuracy(metrics)
    print(f"{job} E={epochs} {tag:32s} " + " ".join(f"{a:.4f}" for a in accuracy), flush=True)
    return accuracy


def _accuracy(metrics: Path) -> list[float]:
    with metrics.open() as f:
        return [float(row["accuracy"]) for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="mnist,fmnist")
    parser.add_argument("--epochs", default="1,5", help="local epochs per round settings")
    parser.add_argument("--data_dir", default="./data")
    parser.add_argument("--work_dir", default="runs/ablation")
    parser.add_argument("--out", default="docs/ablation.md", help="markdown table to write")
    args = parser.parse_args()

    sections = []
    for job in args.jobs.split(","):
        for epochs in (int(e) for e in args.epochs.split(",")):
            dataset, model, settings = JOBS[job]
            rounds, subset = settings[epochs]
            size = f"{subset:,}-sample subset" if subset else "full training set"
            lines = [f"### {dataset} / {model}, {epochs} local epoch(s) x {rounds} rounds ({size})", "",
                     "| algorithm | compensation | mu | server_lr | " +
                     " | ".join(f"r{r}" for r in range(1, rounds + 1)) + " | final | min drop |",
                     "|---|---|---|---|" + "---|" * rounds + "---|---|"]
            results = [("FedAvg", "-", "-", "-", run("FedAvg.py", "fedavg", [], job, epochs, args))]
            cells = [(c, pair) for c in COMPENSATIONS for pair in MOMENTUM_AND_SERVER_LR]
            cells += [(c, pair) for c in NEIGHBOUR_COMPENSATIONS for pair in NEIGHBOUR_PAIRS]
            for compensation, (mom, server_lr) in cells:
                tag = f"{compensation}-mom{mom:g}-slr{server_lr:g}"
                extra = ["--compensation", compensation, "--mom", str(mom), "--server_lr", str(server_lr)]
                results.append(("Overlap", compensation, f"{mom:g}", f"{server_lr:g}",
                                run("AsyncFedAvg.py", tag, extra, job, epochs, args)))
            for name, compensation, mom, server_lr, accuracy in results:
                drops = [b - a for a, b in zip(accuracy, accuracy[1:], strict=False)]
                lines.append(f"| {name} | {compensation} | {mom} | {server_lr} | " +
                             " | ".join(f"{a:.4f}" for a in accuracy) +
                             f" | **{accuracy[-1]:.4f}** | {min(drops) if drops else 0:+.4f} |")
            sections.append("\n".join(lines))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text("\n\n".join(sections) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

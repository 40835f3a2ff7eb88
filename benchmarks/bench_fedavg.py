"""FedAvg.py end to end: accuracy, and the cost of the FL machinery over bare training.

Every figure comes from real FedAvg.py jobs (subprocesses; metrics.csv and summary.json of their --out_dir):

- accuracy: 4 clients, MNIST, MLP, non-IID, lr 0.01, 10 rounds of 5 local epochs must end at >= 95 %.
- overhead: 4 clients, 1 local epoch per round, no emulated link, no server evaluation (--eval_every 0, so
  nothing competes with the clients for the cores). The mean steady-state round time (round_s, rounds
  2..R) must be at most 1.05x the time the same 4 shards take as 4 bare training loops in 4 concurrent
  processes (one thread each, plain SGD over shuffled batches of in-memory tensors, no communication),
  each round started together by a barrier and timed by its slowest process. Bare and FL runs alternate;
  the bare loops' shards must be the job's (summary.json's client_samples).

Start-up and shutdown: bench_startup.py.

    python benchmarks/bench_fedavg.py --data_dir ./data
    python benchmarks/bench_fedavg.py --data_dir ./data --only overhead --overhead_repeats 3

Time: about 4 minutes on 2 cores.
Figures: docs/benchmarks.md (FedAvg accuracy, and FedAvg round vs bare training loops).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from jobs import JobResult, add_job_options, report_and_exit, run_job, steady_mean, work_directory  # noqa: E402

from Networks import build_model  # noqa: E402
from Utils.data.datasets import load_dataset  # noqa: E402
from Utils.data.partition import limit_training_set, partition_samples  # noqa: E402

SECTIONS = ("accuracy", "overhead")
SEED, LR, BATCH_SIZE, PARTITION = 2020, 0.01, 32, "noniid"


# ---------------------------------------------------------------------------------------------- jobs

def shard_sizes(job: JobResult) -> list[int]:
    """Each client's training samples, client 1 first: summary.json's client_samples ([] when absent)."""
    return [int(size) for size in job.summary.get("client_samples") or []]


def mnist_mlp_options(args, world_size: int, rounds: int, epochs: int, *, evaluate: bool) -> list[str]:
    options = ["--world_size", str(world_size), "--dataset", "mnist", "--model", "mlp", "--lr", str(LR),
               "--batch_size", str(BATCH_SIZE), "--seed", str(SEED), "--partition", PARTITION,
               "--max_epoch", str(rounds), "--client_epoch", str(epochs), "--data_dir", args.data_dir]
    if not evaluate:
        options += ["--eval_every", "0"]
    if args.max_train_samples:
        options += ["--max_train_samples", str(args.max_train_samples)]
    return options


# ---------------------------------------------------------------------------------------- bare loops

def bare_client(index: int, num_clients: int, rounds: int, epochs: int, data_dir: str,
                max_train_samples: int | None, barrier, results) -> None:
    """One bare training process: the FL client's shard and model, plain SGD, no communication."""
    torch.set_num_threads(1)
    data = limit_training_set(load_dataset("mnist", data_dir), max_train_samples, SEED)
    shard = torch.as_tensor(partition_samples(data.train_labels, num_clients, PARTITION, SEED)[index])
    images, labels = data.normalise(data.train_images[shard]), data.train_labels[shard].contiguous()
    torch.manual_seed(SEED)
    model = build_model("mlp", data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED + index)
    round_s = []
    for _ in range(rounds):
        barrier.wait()
        began = time.perf_counter()
        for _ in range(epochs):
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(labels), BATCH_SIZE):
                batch = order[start:start + BATCH_SIZE]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model(images[batch]), labels[batch]).backward()
                optimizer.step()
        round_s.append(time.perf_counter() - began)
    results.put((index, len(labels), round_s))


def run_bare(args, num_clients: int, rounds: int, epochs: int) -> tuple[list[float], list[int]]:
    """Per round, the slowest process's time; and each process's shard size."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(num_clients), context.Queue()
    workers = [context.Process(target=bare_client, args=(i, num_clients, rounds, epochs, args.data_dir,
                                                         args.max_train_samples, barrier, results))
               for i in range(num_clients)]
    for worker in workers:
        worker.start()
    try:
        collected = sorted(results.get(timeout=args.job_timeout) for _ in workers)
    finally:
        for worker in workers:
            worker.join(5)
            if worker.is_alive():
                worker.kill()
    per_round = [max(times[r] for _, _, times in collected) for r in range(rounds)]
    return per_round, [size for _, size, _ in collected]


# ------------------------------------------------------------------------------------------ sections

def section_accuracy(args, work: Path, verdicts: list) -> None:
    options = mnist_mlp_options(args, 5, args.accuracy_rounds, args.accuracy_epochs, evaluate=True)
    job = run_job("FedAvg.py", options, work / "accuracy", args.job_timeout)
    print(f"\n## Accuracy: FedAvg, 4 clients, MNIST MLP, non-IID, lr {LR}, "
          f"{args.accuracy_rounds} rounds x {args.accuracy_epochs} local epochs")
    print("| round | accuracy | test_loss | round_s |\n|---|---|---|---|")
    for row in job.rows:
        print(f"| {row['round']:.0f} | {row['accuracy']:.4f} | {row['test_loss']:.4f} | {row['round_s']:.2f} |")
    final = job.rows[-1]["accuracy"]
    best = max(job.rows, key=lambda row: row["accuracy"])
    print(f"best {best['accuracy']:.4f} (round {best['round']:.0f}), final {final:.4f}; the target is on the final")
    verdicts.append((f"FedAvg final accuracy {final:.4f} >= {args.target_accuracy}", final >= args.target_accuracy))


def section_overhead(args, work: Path, verdicts: list) -> None:
    rounds, clients = args.overhead_rounds, 4
    bare_means, fl_means, shards = [], [], []
    for repeat in range(args.overhead_repeats):   # alternate bare and FL: both see the same machine drift
        per_round, shards = run_bare(args, clients, rounds, 1)
        bare_means.append(statistics.fmean(per_round[1:] or per_round))
        options = mnist_mlp_options(args, clients + 1, rounds, 1, evaluate=False)
        job = run_job("FedAvg.py", options, work / f"overhead-{repeat + 1}", args.job_timeout)
        fl_means.append(steady_mean(job.rows, "round_s"))
        fl_shards = shard_sizes(job)
        if fl_shards != shards:
            sys.exit(f"the bare loops' shards {shards} differ from the FL job's {fl_shards}")
    bare, fl = statistics.fmean(bare_means), statistics.fmean(fl_means)
    print(f"\n## Overhead: FedAvg vs bare loops, {clients} clients (shards {', '.join(f'{s:,}' for s in shards)}), "
          f"MNIST MLP, batch {BATCH_SIZE}, 1 local epoch x {rounds} rounds, rounds 2..{rounds} averaged")
    print("FL jobs run with --eval_every 0 (no server evaluation competing for the cores), no emulated link.")
    print(f"bare: {clients} spawned processes, 1 thread each, barrier at each round start, round = slowest "
          f"process. FL: {clients} client processes + the server.")
    print("| repeat | bare round s | FedAvg round_s | ratio |\n|---|---|---|---|")
    for repeat, (b, f) in enumerate(zip(bare_means, fl_means, strict=True), 1):
        print(f"| {repeat} | {b:.3f} | {f:.3f} | {f / b:.3f} |")
    print(f"| mean | {bare:.3f} | {fl:.3f} | **{fl / bare:.3f}** |")
    ratio = fl / bare
    verdicts.append((f"FedAvg round / bare round {ratio:.3f} <= {args.max_overhead}", ratio <= args.max_overhead))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_options(parser, SECTIONS)
    add = parser.add_argument
    add("--accuracy_rounds", type=int, default=10)
    add("--accuracy_epochs", type=int, default=5)
    add("--target_accuracy", type=float, default=0.95)
    add("--overhead_rounds", type=int, default=6)
    add("--overhead_repeats", type=int, default=2, help="bare/FL pairs, run alternately")
    add("--max_overhead", type=float, default=1.05, help="target: FL round / bare round")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())

    verdicts: list[tuple[str, bool | None]] = []
    with work_directory(args, prefix="bench-fedavg-") as work:
        sections = {"accuracy": section_accuracy, "overhead": section_overhead}
        for name, section in sections.items():
            if name in args.only:
                section(args, work, verdicts)
    report_and_exit(verdicts)


if __name__ == "__main__":
    main()

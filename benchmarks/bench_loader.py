"""Does the project's data path cost anything? Its loader and trainer against a bare loop, one epoch.

One local epoch of the MLP over a 15,000-sample MNIST client shard (iid, 4 clients) through the project's
loader and trainer (load_dataset -> LocalTrainer: shard gathered once, a fresh seeded permutation every
epoch, batches by indexing), against a bare loop over contiguous slices of the same in-memory tensors. Same
model start, batch 32, plain SGD lr 0.01, one thread; the two loops' runs are interleaved and their medians
compared (target: ratio <= 1.2).

    python benchmarks/bench_loader.py [--data_dir ./data] [--source ../shared/data/mnist] [--runs 7]

MNIST comes from --data_dir; when it is not prepared there, it is imported from --source into a
temporary data root (nothing is downloaded).

Time: under a minute on 2 cores (7 runs of each loop, about 0.2 s an epoch, after loading MNIST).
Figures: docs/benchmarks.md (the loader row).
"""
import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from Networks import build_model  # noqa: E402
from Utils.data.datasets import load_dataset  # noqa: E402
from Utils.data.partition import iid_partition  # noqa: E402
from Utils.data.prepare import import_dataset, is_prepared  # noqa: E402
from Utils.flat import flatten_model, load_flat_into_model  # noqa: E402
from Utils.training import LocalTrainer  # noqa: E402

BATCH_SIZE, LR, SEED, NUM_CLIENTS = 32, 0.01, 2020, 4


def bare_epoch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """The floor: SGD over contiguous slices, no shuffling, no indexing, no bookkeeping."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    for begin in range(0, len(images), BATCH_SIZE):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images[begin:begin + BATCH_SIZE]), labels[begin:begin + BATCH_SIZE]).backward()
        optimizer.step()


def main() -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="./data")
    parser.add_argument("--source", type=Path, default=repo.parent / "shared" / "data" / "mnist",
                        help="MNIST idx files to import when --data_dir lacks MNIST")
    parser.add_argument("--runs", type=int, default=7, help="timed epochs per loop (at least 5)")
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5 (the figure is a median)")
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as scratch:
        data_dir = args.data_dir
        if not is_prepared("mnist", data_dir):
            import_dataset("mnist", args.source, scratch)
            data_dir = scratch
        data = load_dataset("mnist", data_dir)

    shard = iid_partition(len(data.train_labels), NUM_CLIENTS, SEED)[0]
    torch.manual_seed(SEED)
    model = build_model("mlp", data.num_classes, in_channels=data.in_channels, image_size=data.image_size)
    start = flatten_model(model).clone()
    trainer = LocalTrainer(model, data, shard, batch_size=BATCH_SIZE, lr=LR, epochs=1, seed=SEED, client=1)
    bare_images = data.normalise(data.train_images[torch.as_tensor(shard)])
    bare_labels = data.train_labels[torch.as_tensor(shard)].contiguous()

    def time_project(run: int) -> float:
        began = time.perf_counter()
        trainer.train_round(start, run + 1)
        return time.perf_counter() - began

    def time_bare(run: int) -> float:
        load_flat_into_model(start, model)
        began = time.perf_counter()
        bare_epoch(model, bare_images, bare_labels)
        return time.perf_counter() - began

    time_project(args.runs), time_bare(args.runs)   # warm-up (allocator, first-call overheads), not counted
    project_s, bare_s = [], []
    for run in range(args.runs):   # interleaved, alternating which goes first
        order = ((project_s, time_project), (bare_s, time_bare))
        for times, timed in order if run % 2 == 0 else reversed(order):
            times.append(timed(run))

    project, bare = statistics.median(project_s), statistics.median(bare_s)
    print("command: " + shlex.join([sys.executable] + sys.argv))
    print(f"data: MNIST from {args.data_dir if data_dir == args.data_dir else f'{args.source} (imported)'}")
    print(f"MNIST shard: {len(shard):,} samples, batch {BATCH_SIZE}, MLP, SGD lr {LR}, 1 thread, "
          f"{args.runs} interleaved runs each")
    print(f"project loader (LocalTrainer): median {project:.3f} s per epoch "
          f"(runs: {', '.join(f'{t:.3f}' for t in project_s)})")
    print(f"bare loop:                     median {bare:.3f} s per epoch "
          f"(runs: {', '.join(f'{t:.3f}' for t in bare_s)})")
    print(f"ratio project / bare: {project / bare:.3f} (target <= 1.2): {'OK' if project / bare <= 1.2 else 'SLOW'}")


if __name__ == "__main__":
    main()

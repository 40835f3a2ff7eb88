"""Does the server's memory stay O(model) as clients are added (streaming aggregation, README "The algorithm")?

Tiny real jobs (FedAvg.py and AsyncFedAvg.py, 2 rounds of 1 batch per client, no evaluation) with 2, 4, 8
and 16 clients (world sizes 3, 5, 9, 17) on a model of at least 10 M parameters; each reads the server's
peak from summary.json (peak_resident_mb[0]: VmHWM, MB = 2**20 bytes). Targets, from each world size to the
next: the server's peak grows by the upload buffers added (one per upload received at once:
min(--receive_window, clients), 8 by default, so none past 8 clients), by the checkpoint state the server
keeps alive while the checkpoint thread writes, plus less than one copy. Up to three generations of that
state are alive at once: a job whose writes keep up with its rounds holds one, a job whose writes lag
three, so the allowance is three of the larger job's against one of the smaller's. A generation is one
copy for FedAvg, four for Overlap-FedAvg's server-side compensation (`secant`: the models it keeps for its
next update), and for the client merge (AsyncFedAvg.py's default) the K uploads it keeps for --resume by
design and the model under them (Utils.memory.merge_generation_copies), plus the global model: the merge's
server memory grows with the clients a round samples, the others' does not past --receive_window.

The server restarts its high-water mark just before the first round (after loading the data set), so
the figure is the rounds' own peak: the global model, momentum, the running sums and the upload buffers.
The default job is the Transformer on WikiText-2 (13.8 M parameters); ResNet on CIFAR-10 (11.2 M) works
too.

    python benchmarks/bench_server_memory.py --data_dir ./data
    python benchmarks/bench_server_memory.py --data_dir ./data --dataset cifar10 --model resnet

Time: about 3 minutes on 2 cores (12 jobs, the largest of 17 processes).
Figures: docs/benchmarks.md (the server peak memory; docs/processes.md cites them).
"""
from __future__ import annotations

import argparse
import itertools
import math
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from jobs import JobResult, report_and_exit, run_job  # noqa: E402

# name -> (script, options): FedAvg, Overlap-FedAvg with a server-side compensation, and with the client merge.
METHODS = {"fedavg": ("FedAvg.py", []), "secant": ("AsyncFedAvg.py", ["--compensation", "secant"]),
           "merge": ("AsyncFedAvg.py", ["--compensation", "local"])}

from Networks import MODEL_NAMES, build_model  # noqa: E402
from Utils.config import RunConfig  # noqa: E402
from Utils.data.datasets import DATASET_NAMES, dataset_is_text, load_dataset  # noqa: E402
from Utils.data.text import BPTT  # noqa: E402
from Utils.flat import model_size  # noqa: E402
from Utils.memory import CHECKPOINT_GENERATIONS, merge_generation_copies  # noqa: E402

SEED = 2020
MB = 2**20   # as summary.json's peak_resident_mb (VmHWM kB / 1024)


def server_peak_mb(job: JobResult) -> float:
    """The server's peak resident memory during the rounds: summary.json's peak_resident_mb[0]."""
    peaks = job.summary.get("peak_resident_mb") or [None]
    if peaks[0] is None or math.isnan(peaks[0]):
        sys.exit(f"the job's summary.json has no server peak (peak_resident_mb: {peaks}): {job.command}")
    return float(peaks[0])


def checkpoint_generation_copies(method: str, clients: int) -> int:
    """Model copies one checkpoint's state keeps alive until the checkpoint thread has written it: the copy of the
    global model; `secant`, also the model the uploads started from and its last pseudo-gradient and start
    (replaced by the next update, not modified); the client merge, the uploads and the model under them."""
    return {"fedavg": 1, "secant": 4, "merge": merge_generation_copies(clients) + 1}[method]


def allowed_growth_copies(method: str, fewer: int, more: int) -> int:
    """Model copies the server's peak may grow by from `fewer` to `more` clients: the upload buffers added (one per
    upload received at once, min(--receive_window, clients); the client merge's uploads are each in a buffer of
    their own, counted as checkpoint state), CHECKPOINT_GENERATIONS of the larger job against one of the
    smaller's (how many are alive depends on how fast the disk writes them), plus less than one copy."""
    window = RunConfig.__dataclass_fields__["receive_window"].default
    buffers = 0 if method == "merge" else min(window, more) - min(window, fewer)
    return (buffers + CHECKPOINT_GENERATIONS * checkpoint_generation_copies(method, more)
            - checkpoint_generation_copies(method, fewer) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--data_dir", default="./data", help="data root (see prepare_data.py)")
    add("--work_dir", default=None, help="keep the run directories here (default: a temporary directory)")
    add("--dataset", default="wikitext2", choices=DATASET_NAMES)
    add("--model", default="transformer", choices=MODEL_NAMES)
    add("--world_sizes", type=int, nargs="+", default=[3, 5, 9, 17], help="server + clients")
    add("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    add("--batch_size", type=int, default=8)
    add("--rounds", type=int, default=2)
    add("--job_timeout", type=float, default=1800.0, help="seconds before a job is declared hung")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    if len(args.world_sizes) < 2 or min(args.world_sizes) < 2:
        parser.error("--world_sizes needs at least two sizes, each >= 2")
    world_sizes = sorted(args.world_sizes)

    def train_size(world_size: int) -> int:
        """One batch per client per epoch: samples, or for text enough tokens for one bptt batch."""
        per_client = args.batch_size * (BPTT + 1) if dataset_is_text(args.dataset) else args.batch_size
        return per_client * (world_size - 1)

    verdicts: list[tuple[str, bool]] = []
    print(f"benchmark: {shlex.join([sys.executable] + sys.argv)}")
    data = load_dataset(args.dataset, args.data_dir)
    numel = model_size(build_model(args.model, data.output_size, **data.model_shape))
    del data
    copy_mb = numel * 4 / MB
    print(f"\nmodel {args.model} on {args.dataset}: {numel:,} parameters = {copy_mb:.1f} MB per float32 copy")
    with tempfile.TemporaryDirectory(prefix="bench-server-memory-") as scratch:
        work = Path(args.work_dir).resolve() if args.work_dir else Path(scratch)
        print(f"run directories: {work}{' (deleted at exit)' if not args.work_dir else ''}")
        for method in args.methods:
            script, extra = METHODS[method]
            peaks = {}
            for world_size in world_sizes:
                options = ["--world_size", str(world_size), "--dataset", args.dataset, "--model", args.model,
                           "--partition", "iid", "--batch_size", str(args.batch_size), "--max_epoch", str(args.rounds),
                           "--client_epoch", "1", "--eval_every", "0", "--seed", str(SEED),
                           "--max_train_samples", str(train_size(world_size)), "--data_dir", args.data_dir, *extra]
                job = run_job(script, options, work / f"{method}-ws{world_size}", args.job_timeout)
                peaks[world_size] = server_peak_mb(job)
            print(f"\n## {method} ({shlex.join([script, *extra])}): server peak resident memory, {args.rounds} "
                  f"rounds, batch {args.batch_size}, 1 batch per client per round, --eval_every 0")
            print("| world size | clients | server peak MB (rounds) | growth from the size before, MB | "
                  "in model copies |\n|---|---|---|---|---|")
            previous = peaks[world_sizes[0]]
            for world_size, peak in peaks.items():
                growth, previous = peak - previous, peak
                print(f"| {world_size} | {world_size - 1} | {peak:.1f} | {growth:+.1f} | {growth / copy_mb:+.2f} |")
            for fewer, more in itertools.pairwise(world_sizes):
                copies = allowed_growth_copies(method, fewer - 1, more - 1)
                growth = peaks[more] - peaks[fewer]
                verdicts.append((f"{method}: growth from {fewer - 1} to {more - 1} clients {growth:.1f} MB < "
                                 f"{copies} model copies {copies * copy_mb:.1f} MB", growth < copies * copy_mb))
    report_and_exit(verdicts)


if __name__ == "__main__":
    main()

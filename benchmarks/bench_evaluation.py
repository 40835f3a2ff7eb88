"""Is evaluation off the critical path? The same job with evaluation every round and with --eval_every 0.

The server evaluates each global model on a background thread at the lowest CPU priority (Characters/
evaluation.py), so a round should cost training and communication only. Jobs (AsyncFedAvg.py, 2 clients,
2,000 training samples or tokens, 1 local epoch per round, no emulated link): CIFAR-10/CNNCifar,
CIFAR-10/ResNet and WikiText-2/Transformer, each run with --eval_every 1 and --eval_every 0, interleaved.
Prints the steady round time (rounds 2..R) of both, their ratio (target: <= 1.2x), the mean time one
evaluation took on its thread, and the evaluation tail (summary.json's evaluation_tail_s): how long after
the last round the job waited for the evaluations still queued (on 2 busy cores the thread gets little CPU
until the clients finish; that wait is the evaluation's real cost here, and --test_samples shrinks it).
wall_s of every round still says when G_r existed, so time to a target accuracy counts only training and
communication.

    python benchmarks/bench_evaluation.py --data_dir ./data
    python benchmarks/bench_evaluation.py --data_dir ./data --jobs cnncifar

Time: about 11 minutes on 2 cores (an estimate from its figures: ResNet's and the Transformer's
evaluations, 99 s and 76 s each, 3 of each, take most of it).
Figures: docs/benchmarks.md (evaluation every round against --eval_every 0).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jobs import JobResult, report_and_exit, run_job, steady_mean, work_directory  # noqa: E402

JOBS = {   # name -> (dataset, model, rounds)
    "cnncifar": ("cifar10", "cnncifar", 4),
    "resnet": ("cifar10", "resnet", 3),
    "transformer": ("wikitext2", "transformer", 3),
}
TARGET_RATIO = 1.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", nargs="+", choices=JOBS, default=list(JOBS), help="jobs to run")
    parser.add_argument("--data_dir", default="./data", help="data root holding CIFAR-10 and WikiText-2")
    parser.add_argument("--work_dir", default=None, help="keep the run directories here")
    parser.add_argument("--max_train_samples", type=int, default=2000, help="training samples (text: tokens)")
    parser.add_argument("--test_samples", type=int, default=None, help="evaluate on this test subset")
    parser.add_argument("--job_timeout", type=float, default=3600.0, help="seconds before a job is declared hung")
    args = parser.parse_args()
    verdicts = []
    # work_directory's smoke note is about MNIST subsets; here the subset is the job itself
    with work_directory(argparse.Namespace(work_dir=args.work_dir, max_train_samples=None), "bench-eval-") as work:
        print("\n| job | round, eval every round | round, --eval_every 0 | ratio | one evaluation | "
              "evaluation tail after the last round |\n|---|---|---|---|---|---|")
        for name in args.jobs:
            dataset, model, rounds = JOBS[name]
            options = ["--dataset", dataset, "--model", model, "--world_size", "3", "--client_epoch", "1",
                       "--max_epoch", str(rounds), "--max_train_samples", str(args.max_train_samples),
                       "--data_dir", args.data_dir]
            if args.test_samples:
                options += ["--test_samples", str(args.test_samples)]
            evaluated = run_job("AsyncFedAvg.py", options + ["--eval_every", "1"], work / f"{name}-eval",
                                args.job_timeout)
            plain = run_job("AsyncFedAvg.py", options + ["--eval_every", "0"], work / f"{name}-plain",
                            args.job_timeout)
            with_eval, without = steady_mean(evaluated.rows, "round_s"), steady_mean(plain.rows, "round_s")
            ratio = with_eval / without
            eval_s = statistics.fmean(r["eval_s"] for r in evaluated.rows if not math.isnan(r["eval_s"]))
            tail = evaluation_tail_s(evaluated)
            print(f"| {dataset}/{model} | {with_eval:.2f} s | {without:.2f} s | {ratio:.2f}x | {eval_s:.1f} s | "
                  f"{tail:.1f} s |")
            verdicts.append((f"{dataset}/{model}: a round with evaluation every round costs {ratio:.2f}x one "
                             f"without (target <= {TARGET_RATIO}x)", ratio <= TARGET_RATIO))
    report_and_exit(verdicts)


def evaluation_tail_s(job: JobResult) -> float:
    """How long evaluation ran on after the job's last round: summary.json's evaluation_tail_s (NaN: none)."""
    tail = job.summary.get("evaluation_tail_s")
    return math.nan if tail is None else float(tail)


if __name__ == "__main__":
    main()

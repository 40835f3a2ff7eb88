"""One slow client: what a 4x slower link, and separately 4x slower training, does to FedAvg and Overlap-FedAvg.

MNIST/MLP, 4 non-IID clients, 1 local epoch per round, seed 2020, evaluated every round. A pilot FedAvg job
without a link measures one round's training T; every client's link is then set so that one upload + one
download take T (jobs.calibrated_link; the regime the method is for). Three cases, each run with FedAvg.py
and AsyncFedAvg.py (its defaults), side by side in one run:

- even: every client on that link, training at the machine's speed;
- slow link: client 1's bandwidth a quarter of the others' (--bandwidth B/4,B,B,B);
- slow training: client 1 trains 4x slower (--slowdown 4,1,1,1: it waits 3x its training time).

Each case prints the mean round time (rounds 2..R), the time to 95 % after start-up (summary.json's
startup_s) and its round, the final accuracy, and how often the server waited for each client (metrics.csv's
waited_for). With communication C = T, the rounds should come out near these (one client's work bounds a
synchronous round): FedAvg T + C = 2T even, T + 4C = 5T with the slow link, 4T + C = 5T with the slow
training; Overlap max(T, C) = T even, max(T, 4C) = 4T and max(4T, C) = 4T. The numbers of a run do not change
(the same seed gives the same accuracy per round whoever is slow): only time does, which FedAvg's
accuracy per round in each case is checked against the even case's (PASS or FAIL); the times have no target
and are reported (INFO).

    python benchmarks/bench_stragglers.py --data_dir ./data

Time: about 8 minutes on 2 cores.
Figures: docs/network.md ("Clients that differ").
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from jobs import (  # noqa: E402
    JobResult,
    calibrated_link,
    report_and_exit,
    run_job,
    smoke_budget_s,
    startup_s,
    steady_mean,
    work_directory,
)

from Utils.run_log import first_reaching  # noqa: E402

NUM_CLIENTS = 4
TARGET = 0.95
SLOW = 4
# case -> (modelled FedAvg round, modelled Overlap round) in units of T, with C = T
MODELLED = {"even": (2, 1), "slow link": (1 + SLOW, SLOW), "slow training": (SLOW + 1, SLOW)}


def time_to_target(job: JobResult) -> str:
    reached = first_reaching(job.rows, "accuracy", TARGET)
    if reached is None:
        return "not reached"
    return f"{reached['wall_s'] - startup_s(job):.1f} s (round {int(reached['round'])})"


def waited_for(job: JobResult) -> str:
    counts = collections.Counter(int(r["waited_for"]) for r in job.rows[1:] if r["waited_for"] == r["waited_for"])
    return ", ".join(f"client {k}: {n}" for k, n in sorted(counts.items())) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--data_dir", default="./data", help="data root holding MNIST (see prepare_data.py)")
    add("--work_dir", default=None, help="keep the run directories here (default: a temporary directory)")
    add("--rounds", type=int, default=12)
    add("--seed", type=int, default=2020)
    add("--latency", type=float, default=10.0, help="link latency per message, ms")
    add("--max_train_samples", type=int, default=None, help="smoke tests only: a seeded subset of MNIST")
    add("--job_timeout", type=float, default=1800.0, help="seconds before a job is declared hung")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    base = ["--world_size", str(NUM_CLIENTS + 1), "--dataset", "mnist", "--model", "mlp", "--client_epoch", "1",
            "--seed", str(args.seed), "--data_dir", args.data_dir]
    if args.max_train_samples:
        base += ["--max_train_samples", str(args.max_train_samples)]
    verdicts: list = []
    with work_directory(args, prefix="bench-stragglers-") as work:
        pilot = run_job("FedAvg.py", [*base, "--max_epoch", "3", "--eval_every", "0"], work / "pilot",
                        args.job_timeout)
        training_s = steady_mean(pilot.rows, "round_s")
        link = calibrated_link(pilot, NUM_CLIENTS, 1.0, args.latency, min_budget_s=smoke_budget_s(args))
        bandwidth = f"{link.bandwidth_mbit:.6g}"
        print(f"training T = {training_s:.2f} s a round (pilot); link {bandwidth} Mbit/s + {args.latency:g} ms: "
              f"upload + download take T")
        cases = {"even": ["--bandwidth", bandwidth],
                 "slow link": ["--bandwidth", ",".join([f"{link.bandwidth_mbit / SLOW:.6g}"]
                                                       + [bandwidth] * (NUM_CLIENTS - 1))],
                 "slow training": ["--bandwidth", bandwidth,
                                   "--slowdown", ",".join([str(SLOW)] + ["1"] * (NUM_CLIENTS - 1))]}
        runs: dict[tuple[str, str], JobResult] = {}
        for case, extra in cases.items():
            for algorithm, script in (("FedAvg", "FedAvg.py"), ("Overlap", "AsyncFedAvg.py")):
                options = [*base, "--max_epoch", str(args.rounds), "--latency", f"{args.latency:g}", *extra]
                runs[case, algorithm] = run_job(script, options, work / f"{case.replace(' ', '-')}-{algorithm}",
                                                args.job_timeout)
        print(f"\n## {NUM_CLIENTS} clients, MNIST/MLP, 1 epoch/round, {args.rounds} rounds; T = {training_s:.2f} s\n")
        print(f"| case | algorithm | mean round s | modelled | to {100 * TARGET:g} % | final | server waited for |")
        print("|---|---|---|---|---|---|---|")
        for (case, algorithm), job in runs.items():
            modelled = MODELLED[case][algorithm == "Overlap"] * training_s
            print(f"| {case} | {algorithm} | {steady_mean(job.rows, 'round_s'):.2f} | {modelled:.2f} | "
                  f"{time_to_target(job)} | {job.rows[-1]['accuracy']:.4f} | {waited_for(job)} |")
        for case in cases:
            fedavg, overlap = runs[case, "FedAvg"], runs[case, "Overlap"]
            ratio = steady_mean(overlap.rows, "round_s") / steady_mean(fedavg.rows, "round_s")
            verdicts.append((f"{case}: Overlap's round {ratio:.2f}x FedAvg's (modelled "
                             f"{MODELLED[case][1] / MODELLED[case][0]:.2f}x)", None))
            same = [r["accuracy"] for r in fedavg.rows] == [r["accuracy"] for r in runs["even", "FedAvg"].rows]
            verdicts.append((f"{case}: FedAvg's accuracy per round equals the even case's: {same}", same))
    report_and_exit(verdicts)


if __name__ == "__main__":
    main()

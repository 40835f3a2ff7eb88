"""FedAvg and Overlap-FedAvg side by side in one run: same seed, data, model and emulated link.

Every figure comes from real FedAvg.py / AsyncFedAvg.py jobs (subprocesses; the metrics.csv of their
--out_dir). 4 clients, MNIST, MLP, non-IID, seed 2020; AsyncFedAvg.py with its defaults.

- overlap: one round's training is what a FedAvg round adds to its upload + download on the link:
  FedAvg round_s - link time (the slowest client's concurrent training, the server's update and the
  hand-overs). A pilot FedAvg job without a link gives a first estimate; a FedAvg job on a link that
  long measures the training under the conditions of the runs, and the link is set so that one upload
  + one download take that long: 2 * (latency + 8 * bytes / bandwidth) = training (jobs.calibrated_link,
  the benchmarks' one calibration, given that training). On that link
  (--bandwidth, --latency on both scripts, --eval_every 0), FedAvg and Overlap-FedAvg run
  --overlap_repeats times, alternating, and the training in max(training, communication) comes from
  those same FedAvg runs: this shared 2-core machine drifts by 10-40 % between jobs a few minutes apart,
  so a figure from another job would measure the drift. Overlap-FedAvg's mean round time must be at
  most 1.10x max(training, communication) and at most 0.6x FedAvg's.
- accuracy: 10 rounds of 5 local epochs, evaluated every round. Overlap-FedAvg's final accuracy must be
  within 0.5 points of FedAvg's or better, and no Overlap round may fall more than 2 points below the
  round before it.
- time to a target accuracy: benchmarks/bench_time_to_accuracy.py.

    python benchmarks/bench_overlap.py --data_dir ./data
    python benchmarks/bench_overlap.py --data_dir ./data --only overlap --bandwidth 10 --latency 10

Time: about 5 minutes on 2 cores.
Figures: docs/benchmarks.md (the Overlap round and the Overlap accuracy).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from jobs import (  # noqa: E402
    JobResult,
    Link,
    add_job_options,
    calibrated_link,
    exchange_s,
    link_options,
    message_bytes,
    report_and_exit,
    run_job,
    smoke_budget_s,
    steady_mean,
    work_directory,
)

SECTIONS = ("overlap", "accuracy")
NUM_CLIENTS = 4


# ---------------------------------------------------------------------------------------------- jobs

def training_on_link_s(fedavg: JobResult, link: Link, sizes: tuple[float, float]) -> float:
    """One round's training in a FedAvg job on `link`: its mean round time less the link's upload + download
    of messages of `sizes` (one upload, one download)."""
    return steady_mean(fedavg.rows, "round_s") - exchange_s(link, *sizes)


class Bench:
    """The shared job settings and the link once it is known."""

    def __init__(self, args, work: Path):
        self.args, self.work = args, work
        self.link: Link | None = None
        self.message_bytes = (math.nan, math.nan)             # one upload, one download
        self.verdicts: list[tuple[str, bool | None]] = []

    def options(self, rounds: int, epochs: int, *, evaluate: bool, link: Link | None) -> list[str]:
        args = self.args
        options = ["--world_size", str(NUM_CLIENTS + 1), "--dataset", "mnist", "--model", "mlp",
                   "--partition", "noniid", "--seed", str(args.seed), "--max_epoch", str(rounds),
                   "--client_epoch", str(epochs), "--data_dir", args.data_dir]
        if not evaluate:
            options += ["--eval_every", "0"]
        if link is not None:
            options += link_options(link)
        if args.max_train_samples:
            options += ["--max_train_samples", str(args.max_train_samples)]
        return options

    def pair(self, tag: str, rounds: int, epochs: int, *, evaluate: bool, link: Link | None) -> dict:
        """FedAvg.py and AsyncFedAvg.py (its defaults) on the same settings, one after the other."""
        options = self.options(rounds, epochs, evaluate=evaluate, link=link)
        return {name: run_job(script, options, self.work / f"{tag}-{name}", self.args.job_timeout)
                for name, script in (("FedAvg", "FedAvg.py"), ("Overlap", "AsyncFedAvg.py"))}

    def ensure_link(self) -> Link:
        """The emulated link: --bandwidth if given, else calibrated so that comm ~= training on the link."""
        if self.link is not None:
            return self.link
        args = self.args
        print(f"\n## Link: pilots of 1 local epoch x {args.pilot_rounds} rounds, --eval_every 0 "
              "(means over rounds 2..R)")
        pilot = run_job("FedAvg.py", self.options(args.pilot_rounds, 1, evaluate=False, link=None),
                        self.work / "pilot-FedAvg", args.job_timeout)
        self.message_bytes = message_bytes(pilot, NUM_CLIENTS)
        print(f"messages: upload {self.message_bytes[0]:,.0f} B, download {self.message_bytes[1]:,.0f} B")
        if args.bandwidth:
            self.link = Link(args.bandwidth, args.latency)
            print(f"link (given): {args.bandwidth:g} Mbit/s, {args.latency:g} ms")
            return self.link
        first_estimate = steady_mean(pilot.rows, "round_s")
        guess = calibrated_link(pilot, NUM_CLIENTS, args.comm_over_train, args.latency,
                                min_budget_s=smoke_budget_s(args))
        on_link = run_job("FedAvg.py", self.options(args.pilot_rounds, 1, evaluate=False, link=guess),
                          self.work / "pilot-on-link-FedAvg", args.job_timeout)
        training_s = training_on_link_s(on_link, guess, self.message_bytes)
        self.link = calibrated_link(pilot, NUM_CLIENTS, args.comm_over_train, args.latency, training_s=training_s,
                                    min_budget_s=smoke_budget_s(args))
        print(f"without a link: round {first_estimate:.3f} s; on a {guess.bandwidth_mbit:.3f} Mbit/s link: round "
              f"{steady_mean(on_link.rows, 'round_s'):.3f} s, of which training {training_s:.3f} s")
        print(f"link {self.link.bandwidth_mbit:.3f} Mbit/s, {self.link.latency_ms:g} ms: upload + download "
              f"{exchange_s(self.link, *self.message_bytes):.3f} s")
        return self.link


# ------------------------------------------------------------------------------------------ sections

def section_overlap(bench: Bench) -> None:
    args = bench.args
    link = bench.ensure_link()
    comm_s = exchange_s(link, *bench.message_bytes)
    print(f"\n## Overlap: 1 local epoch x {args.overlap_rounds} rounds on the link, --eval_every 0, "
          f"means over rounds 2..R, {args.overlap_repeats} alternating repeat(s)")
    print("| repeat | algorithm | round_s | train_s (mean client) | comm_s (mean upload+download job) | comm_wait_s |")
    print("|---|---|---|---|---|---|")
    fedavg_rounds, overlap_rounds, trainings = [], [], []
    for repeat in range(1, args.overlap_repeats + 1):
        runs = bench.pair(f"overlap{repeat}", args.overlap_rounds, 1, evaluate=False, link=link)
        for name, job in runs.items():
            print(f"| {repeat} | {name} | {steady_mean(job.rows, 'round_s'):.3f} | "
                  f"{steady_mean(job.rows, 'train_s'):.3f} | {steady_mean(job.rows, 'comm_s'):.3f} | "
                  f"{steady_mean(job.rows, 'comm_wait_s'):.3f} |")
        fedavg_rounds.append(steady_mean(runs["FedAvg"].rows, "round_s"))
        overlap_rounds.append(steady_mean(runs["Overlap"].rows, "round_s"))
        trainings.append(training_on_link_s(runs["FedAvg"], link, bench.message_bytes))
    fedavg, overlap, training_s = (statistics.fmean(v) for v in (fedavg_rounds, overlap_rounds, trainings))
    ideal = max(training_s, comm_s)
    print(f"training per round (FedAvg round - link time) {training_s:.3f} s, communication per round (link: "
          f"upload + download) {comm_s:.3f} s (comm / training {comm_s / training_s:.2f}), max {ideal:.3f} s; "
          f"Overlap / max {overlap / ideal:.3f}, Overlap / FedAvg {overlap / fedavg:.3f}")
    bench.verdicts.append((f"Overlap round {overlap:.3f} s <= {args.max_over_ideal} x max(train, comm) "
                           f"= {args.max_over_ideal * ideal:.3f} s", overlap <= args.max_over_ideal * ideal))
    bench.verdicts.append((f"Overlap round {overlap:.3f} s <= {args.max_over_fedavg} x FedAvg round "
                           f"= {args.max_over_fedavg * fedavg:.3f} s", overlap <= args.max_over_fedavg * fedavg))


def section_accuracy(bench: Bench) -> None:
    args = bench.args
    runs = bench.pair("accuracy", args.accuracy_rounds, args.accuracy_epochs, evaluate=True, link=None)
    curves = {name: [row["accuracy"] for row in job.rows] for name, job in runs.items()}
    print(f"\n## Accuracy: {args.accuracy_rounds} rounds x {args.accuracy_epochs} local epochs, evaluated every round")
    print("| round | FedAvg | Overlap-FedAvg |\n|---|---|---|")
    for index, (fedavg, overlap) in enumerate(zip(curves["FedAvg"], curves["Overlap"], strict=True), 1):
        print(f"| {index} | {fedavg:.4f} | {overlap:.4f} |")
    final_gap = curves["Overlap"][-1] - curves["FedAvg"][-1]
    worst_drop = max([0.0] + [a - b for a, b in zip(curves["Overlap"], curves["Overlap"][1:], strict=False)])
    bench.verdicts.append((f"Overlap final {curves['Overlap'][-1]:.4f} vs FedAvg {curves['FedAvg'][-1]:.4f}: "
                           f"{100 * final_gap:+.2f} points >= -{100 * args.max_final_gap:g}",
                           final_gap >= -args.max_final_gap))
    bench.verdicts.append((f"Overlap's largest drop from one round to the next {100 * worst_drop:.2f} points <= "
                           f"{100 * args.max_drop:g}", worst_drop <= args.max_drop))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_options(parser, SECTIONS)
    add = parser.add_argument
    add("--seed", type=int, default=2020)
    add("--bandwidth", type=float, default=None, help="link Mbit/s (default: calibrated on the pilot)")
    add("--latency", type=float, default=10.0, help="link latency per message, ms")
    add("--comm_over_train", type=float, default=1.0,
        help="calibration: upload + download time as a multiple of one round's training")
    add("--pilot_rounds", type=int, default=4)
    add("--overlap_rounds", type=int, default=8)
    add("--overlap_repeats", type=int, default=2, help="FedAvg/Overlap pairs on the link, alternating")
    add("--max_over_ideal", type=float, default=1.10, help="target: Overlap round / max(train, comm)")
    add("--max_over_fedavg", type=float, default=0.6, help="target: Overlap round / FedAvg round")
    add("--accuracy_rounds", type=int, default=10)
    add("--accuracy_epochs", type=int, default=5)
    add("--max_final_gap", type=float, default=0.005, help="target: Overlap may end this far below FedAvg")
    add("--max_drop", type=float, default=0.02, help="target: largest round-to-round accuracy drop")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())

    with work_directory(args, prefix="bench-overlap-") as work:
        bench = Bench(args, work)
        sections = {"overlap": section_overlap, "accuracy": section_accuracy}
        for name, section in sections.items():
            if name in args.only:
                section(bench)
    report_and_exit(bench.verdicts)


if __name__ == "__main__":
    main()

"""Time to a target accuracy: FedAvg, FedAvgM and Overlap-FedAvg on the same emulated link, in one run.

What a user pays for is wall-clock to a target accuracy, so that is the figure of merit. Every figure
comes from real FedAvg.py / AsyncFedAvg.py jobs (4 non-IID clients, seed 2020), evaluated every round:

- settings (--settings): mnist-e1 (MNIST/MLP, 1 local epoch per round, 15 rounds, targets 93/95/97 %),
  mnist-e5 (5 local epochs, 8 rounds), fmnist-e1 and fmnist-e5 (Fashion-MNIST/MnistNet on a 3,000-sample
  subset, which costs about 50x the MLP per sample on a CPU; 12 and 6 rounds; targets 65/70/75 %).
- link: a pilot FedAvg job without a link (--eval_every 0) measures one round's training T (mean round_s,
  rounds 2..R); the link is then set so that one upload + one download take comm_over_train x T
  (jobs.calibrated_link), for each value of --regimes: 1 (communication as long as training, the regime
  the method is for) and 0.2.
- algorithms on that link (--algorithms): FedAvg; FedAvgM (FedAvg.py --mom 0.9 --server_lr 0.4: the
  Nesterov server step Overlap-FedAvg can use, as a reference for a server optimizer without the overlap);
  Overlap-FedAvg with AsyncFedAvg.py's defaults (plus --overlap_options), the one the targets judge; and
  variants beside it: the server-side secant compensation, and the client merge with another merge weight
  and with server momentum.
- time to target: wall_s of the first round whose accuracy reaches the target, less the start-up
  (summary.json's startup_s: launch to G_0 sent), so that it counts only training and communication. The
  server evaluates on a background thread at the lowest CPU priority, so evaluation takes only the cycles
  the clients leave.

Targets (regime 1, Overlap with the defaults): it reaches 95 % on mnist-e1 in at most 0.62x FedAvg's time
and 97 % on mnist-e5 in at most 0.65x; on MNIST its accuracy at every round from round 3 on is within 0.5
point of FedAvg's at the same round and its final within 0.3 point; in no setting does one of its rounds
fall more than FedAvg's own largest fall there plus 1 point. Other rows are reported (INFO).

    python benchmarks/bench_time_to_accuracy.py --data_dir ./data
    python benchmarks/bench_time_to_accuracy.py --data_dir ./data --settings mnist-e1 --regimes 1

Time: about 4 minutes per algorithm and regime on 2 cores for the four settings (the defaults, 6 algorithms x
2 regimes: about 50 minutes).
Figures: docs/benchmarks.md (the time-to-accuracy rows; docs/defaults.md cites them).
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from jobs import (  # noqa: E402
    JobResult,
    Link,
    calibrated_link,
    link_options,
    report_and_exit,
    run_job,
    startup_s,
    steady_mean,
    work_directory,
)

from Utils.run_log import first_reaching  # noqa: E402

NUM_CLIENTS = 4


@dataclass(frozen=True)
class Setting:
    dataset: str
    model: str
    epochs: int
    rounds: int
    targets: tuple[float, ...]
    subset: int | None = None


SETTINGS = {
    "mnist-e1": Setting("mnist", "mlp", 1, 15, (0.93, 0.95, 0.97)),
    "mnist-e5": Setting("mnist", "mlp", 5, 8, (0.93, 0.95, 0.97)),
    "fmnist-e1": Setting("fmnist", "mnistnet", 1, 12, (0.65, 0.70, 0.75), subset=3000),
    "fmnist-e5": Setting("fmnist", "mnistnet", 5, 6, (0.65, 0.70, 0.75), subset=3000),
}
# (setting, regime) -> (the accuracy to reach, the most time it may take over FedAvg's)
TIME_TARGETS = {("mnist-e1", 1.0): (0.95, 0.62), ("mnist-e5", 1.0): (0.97, 0.65)}
# The settings where Overlap's accuracy must follow FedAvg's round by round (--max_round_gap, --max_final_gap).
FOLLOWS_FEDAVG = ("mnist-e1", "mnist-e5")
DEFAULTS = "Overlap"   # the row of AsyncFedAvg.py's defaults, the one the targets judge
# name -> (script, options): the rows beside FedAvg, FedAvgM and the defaults.
VARIANTS = {
    "Overlap, secant": ("AsyncFedAvg.py", ["--compensation", "secant", "--mom", "0", "--server_lr", "1"]),
    "Overlap, merge b 0.5": ("AsyncFedAvg.py", ["--compensation", "local", "--merge_weight", "0.5", "--mom", "0",
                                                "--server_lr", "1"]),
    "Overlap, merge, mu 0.5": ("AsyncFedAvg.py", ["--compensation", "local", "--merge_weight", "1", "--mom", "0.5",
                                                  "--server_lr", "0.5"]),
}


def job_options(args, setting: Setting, *, evaluate: bool, link: Link | None) -> list[str]:
    options = ["--world_size", str(NUM_CLIENTS + 1), "--dataset", setting.dataset, "--model", setting.model,
               "--seed", str(args.seed), "--max_epoch", str(setting.rounds), "--client_epoch", str(setting.epochs),
               "--data_dir", args.data_dir]
    if setting.subset:
        options += ["--max_train_samples", str(setting.subset)]
    if not evaluate:
        options += ["--eval_every", "0"]
    return options + (link_options(link) if link else [])


def time_to(job: JobResult, target: float) -> tuple[float, int] | None:
    """(seconds after start-up, round) at which the job first reached `target`, or None."""
    reached = first_reaching(job.rows, "accuracy", target)
    return None if reached is None else (reached["wall_s"] - startup_s(job), int(reached["round"]))


def run_setting(args, name: str, work: Path, verdicts: list) -> None:
    setting = SETTINGS[name]
    pilot_setting = Setting(setting.dataset, setting.model, setting.epochs, args.pilot_rounds, (), setting.subset)
    pilot = run_job("FedAvg.py", job_options(args, pilot_setting, evaluate=False, link=None),
                    work / f"{name}-pilot", args.job_timeout)
    training_s = steady_mean(pilot.rows, "round_s")
    for regime in args.regimes:
        link = calibrated_link(pilot, NUM_CLIENTS, regime, args.latency)
        print(f"\n## {name}: {setting.dataset}/{setting.model}, {setting.epochs} local epoch(s) x {setting.rounds} "
              f"rounds{f', {setting.subset:,}-sample subset' if setting.subset else ''}; training {training_s:.2f} s "
              f"a round (pilot), link {link.bandwidth_mbit:.3f} Mbit/s + {link.latency_ms:g} ms: upload + "
              f"download {regime:g} x training")
        options = job_options(args, setting, evaluate=True, link=link)
        tag = f"{name}-comm{regime:g}"
        algorithms = {"FedAvg": ("FedAvg.py", []),
                      "FedAvgM": ("FedAvg.py", ["--mom", str(args.fedavgm_mom), "--server_lr",
                                                str(args.fedavgm_server_lr)]),
                      DEFAULTS: ("AsyncFedAvg.py", shlex.split(args.overlap_options)), **VARIANTS}
        runs = {}
        for algorithm in ["FedAvg", *(a for a in algorithms if a in args.algorithms and a != "FedAvg")]:
            script, extra = algorithms[algorithm]
            slug = algorithm.lower().replace(",", "").replace(" ", "-")
            runs[algorithm] = run_job(script, options + extra, work / f"{tag}-{slug}", args.job_timeout)
        report(name, regime, setting, runs, verdicts, args)


def report(name: str, regime: float, setting: Setting, runs: dict[str, JobResult], verdicts: list, args) -> None:
    print("| algorithm | mean round s | final | " + " | ".join(f"to {100 * t:g} %" for t in setting.targets) +
          " |\n|---|---|---|" + "---|" * len(setting.targets))
    for algorithm, job in runs.items():
        cells = []
        for target in setting.targets:
            reached = time_to(job, target)
            cells.append("not reached" if reached is None else f"{reached[0]:.1f} s (round {reached[1]})")
        print(f"| {algorithm} | {steady_mean(job.rows, 'round_s'):.2f} | {job.rows[-1]['accuracy']:.4f} | "
              + " | ".join(cells) + " |")
    print("accuracy per round:")
    for algorithm, job in runs.items():
        print(f"  {algorithm:24s} " + " ".join(f"{row['accuracy']:.4f}" for row in job.rows))
    fedavg = runs["FedAvg"]
    required_target, max_ratio = TIME_TARGETS.get((name, regime), (None, None))
    for algorithm, job in runs.items():
        if algorithm == "FedAvg":
            continue
        for target in setting.targets:
            ours, theirs = time_to(job, target), time_to(fedavg, target)
            ratio = ours[0] / theirs[0] if ours and theirs else math.nan
            required = algorithm == DEFAULTS and target == required_target
            text = (f"{name}, comm {regime:g} x training: {algorithm} to {100 * target:g} % in "
                    f"{'never' if ours is None else f'{ours[0]:.1f} s'} vs FedAvg "
                    f"{'never' if theirs is None else f'{theirs[0]:.1f} s'}"
                    + (f": {ratio:.2f}x" if math.isfinite(ratio) else ""))
            verdicts.append((text + (f" <= {max_ratio}" if required else ""),
                             (ratio <= max_ratio) if required else None))
    if regime == 1.0 and DEFAULTS in runs:
        follow_checks(name, [row["accuracy"] for row in runs[DEFAULTS].rows],
                      [row["accuracy"] for row in fedavg.rows], verdicts, args)


def largest_fall(curve: list[float]) -> float:
    """The most accuracy one round lost against the one before (0 when none fell)."""
    return max([0.0] + [a - b for a, b in zip(curve, curve[1:], strict=False)])


def follow_checks(name: str, ours: list[float], fedavg: list[float], verdicts: list, args) -> None:
    """The defaults against FedAvg: round by round and at the end (MNIST), and their largest fall (every setting)."""
    judged = name in FOLLOWS_FEDAVG
    gaps = [a - b for a, b in zip(ours, fedavg, strict=True)][2:]   # rounds 3..R
    worst = min(gaps) if gaps else 0.0
    verdicts.append((f"{name}: Overlap's accuracy from round 3 on at least {100 * worst:+.2f} points from FedAvg's "
                     f"at the same round" + (f" >= -{100 * args.max_round_gap:g}" if judged else ""),
                     worst >= -args.max_round_gap if judged else None))
    final_gap = ours[-1] - fedavg[-1]
    verdicts.append((f"{name}: Overlap final {ours[-1]:.4f} vs FedAvg {fedavg[-1]:.4f}: {100 * final_gap:+.2f} points"
                     + (f" >= -{100 * args.max_final_gap:g}" if judged else ""),
                     final_gap >= -args.max_final_gap if judged else None))
    allowed = largest_fall(fedavg) + args.max_extra_fall
    verdicts.append((f"{name}: Overlap's largest fall {100 * largest_fall(ours):.2f} points <= FedAvg's "
                     f"{100 * largest_fall(fedavg):.2f} + {100 * args.max_extra_fall:g}",
                     largest_fall(ours) <= allowed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    add("--regimes", nargs="+", type=float, default=[1.0, 0.2],
        help="upload + download time as multiples of one round's training")
    add("--data_dir", default="./data", help="data root holding MNIST and Fashion-MNIST (see prepare_data.py)")
    add("--work_dir", default=None, help="keep the run directories here (default: a temporary directory)")
    add("--seed", type=int, default=2020)
    add("--latency", type=float, default=10.0, help="link latency per message, ms")
    add("--pilot_rounds", type=int, default=3)
    add("--overlap_options", default="", help="extra options of the defaults' row, e.g. '--merge_weight 0.75'")
    add("--algorithms", nargs="+", default=["FedAvg", "FedAvgM", DEFAULTS, *VARIANTS],
        choices=["FedAvg", "FedAvgM", DEFAULTS, *VARIANTS], help="the rows to run (FedAvg always runs)")
    add("--fedavgm_mom", type=float, default=0.9, help="FedAvgM's server momentum")
    add("--fedavgm_server_lr", type=float, default=0.4, help="FedAvgM's server lr")
    add("--max_round_gap", type=float, default=0.005, help="target: Overlap may be this far below FedAvg from round 3")
    add("--max_final_gap", type=float, default=0.003, help="target: Overlap may end this far below FedAvg")
    add("--max_extra_fall", type=float, default=0.01, help="target: Overlap's largest fall over FedAvg's")
    add("--job_timeout", type=float, default=3600.0, help="seconds before a job is declared hung")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    args.max_train_samples = None   # work_directory's smoke-settings note: the settings fix their own subsets
    verdicts: list = []
    with work_directory(args, prefix="bench-tta-") as work:
        for name in args.settings:
            run_setting(args, name, work, verdicts)
    report_and_exit(verdicts)


if __name__ == "__main__":
    main()

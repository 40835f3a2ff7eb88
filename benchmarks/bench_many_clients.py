"""Many clients on few ranks: McMahan et al.'s MNIST setting, the cost of hosting, Flower beside it, 1,000 clients.

Sections (--only), side by side in one run:

- rounds: MNIST/MLP, 100 clients on McMahan's pathological split (two label shards each), 10 sampled per
  round, on 4 client ranks (--world_size 5 --num_clients 100 --clients_per_round 10), 1 local epoch, lr 0.05,
  FedAvg.py and AsyncFedAvg.py (its defaults) on the calibrated link (a pilot FedAvg job without a link
  measures one round's training T; one rank's uploads + download then take T: jobs.calibrated_link).
  Rounds to 97 % against McMahan et al. 2017, Table 1 (2NN, E = 1, B = 10, C = 0.1, pathological non-IID):
  664 rounds, with their batch of 10 and a tuned learning rate; here batch 32 as Flower's job, so more
  rounds are expected.
- hosting: the round time of that job without a link and without evaluation, at 1 and 5 local epochs,
  with a uniform and with a balanced sample (--sampling), against 4 clients (one per rank) training the
  same number of samples a round (10 x 600 = 6,000: --max_train_samples 6000, IID). Target: <= 1.2x. A
  round waits for its busiest rank, and a uniform sample of 10 puts 3 to 8 clients on it (4.1 on
  average; balanced, 3).
- flower: ../shared/peers/flower_many.py (the same job in Flower's simulation engine, 100 clients, 10 per
  round, lr 0.05), with the peers' environment (--peers_python; ../shared/peers/setup.sh makes it): launch
  to end of round 1 and the rounds after, beside this project's FedAvg.py on the same job.
- thousand: 1,000 clients, 100 per round, 3 rounds of FedAvg.py and of AsyncFedAvg.py on 4 client ranks: the
  job fits, and the launcher's memory estimate is within 25 % of the measured total (peak summed PSS of every
  process, sampled every 0.2 s as benchmarks/bench_memory.py does).

    python benchmarks/bench_many_clients.py --data_dir ./data --peers_python /tmp/peers/venv/bin/python

Time: about 35 minutes on 2 cores with --rounds 200: the rounds section's 2 x 200 rounds about 12 (beside
another benchmark), the hosting section's 3 repeats of 12 jobs 14, Flower about 3, the thousand section about 2.
Figures: docs/benchmarks.md ("Many clients"), summed up in docs/many-clients.md ("Measured").
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from bench_memory import MB, check, launcher_estimate_mb, run_sampled  # noqa: E402
from jobs import (  # noqa: E402
    COMMANDS,
    JobResult,
    add_job_options,
    calibrated_link,
    link_options,
    read_metrics,
    report_and_exit,
    run_job,
    smoke_budget_s,
    steady_mean,
    work_directory,
)

from Utils.federation import host_rank, round_sample  # noqa: E402
from Utils.run_log import first_reaching  # noqa: E402

SECTIONS = ("rounds", "hosting", "flower", "thousand")
RANKS = 4
TARGET = 0.97
MCMAHAN_ROUNDS = 664   # McMahan et al. 2017, Table 1: 2NN, E = 1, B = 10, C = 0.1, pathological non-IID, to 97 %
HOSTING_TARGET = 1.2
ESTIMATE_TOLERANCE = 0.25
PEERS = ROOT.parent / "shared" / "peers"


def federation(num_clients: int, per_round: int) -> list[str]:
    return ["--world_size", str(RANKS + 1), "--num_clients", str(num_clients), "--clients_per_round",
            str(per_round), "--partition", "pathological", "--shards_per_client", "2"]


def mnist(args, epochs: int = 1) -> list[str]:
    options = ["--dataset", "mnist", "--model", "mlp", "--client_epoch", str(epochs), "--lr", "0.05",
               "--seed", str(args.seed), "--data_dir", args.data_dir]
    return options + (["--max_train_samples", str(args.max_train_samples)] if args.max_train_samples else [])


def rounds_to_target(job: JobResult) -> str:
    reached = first_reaching(job.rows, "accuracy", TARGET)
    if reached is None:
        return f"not within {len(job.rows)} (best {max(r['accuracy'] for r in job.rows):.4f})"
    return f"{int(reached['round'])}"


def section_rounds(args, work: Path, verdicts: list) -> None:
    base = [*mnist(args), *federation(100, 10)]
    pilot = run_job("FedAvg.py", [*base, "--max_epoch", "4", "--eval_every", "0"], work / "pilot", args.job_timeout)
    link = calibrated_link(pilot, RANKS, 1.0, args.latency, min_budget_s=smoke_budget_s(args))
    print(f"\n## rounds: 100 clients, 10 per round, {RANKS} client ranks, calibrated link "
          f"{link.bandwidth_mbit:.3g} Mbit/s + {args.latency:g} ms (T = {steady_mean(pilot.rows, 'round_s'):.2f} s)\n")
    print(f"| algorithm | rounds to {100 * TARGET:g} % (McMahan: {MCMAHAN_ROUNDS}) | accuracy at 5, 20, last | "
          f"mean round s |")
    print("|---|---|---|---|")
    for name, script in (("FedAvg", "FedAvg.py"), ("Overlap-FedAvg", "AsyncFedAvg.py")):
        job = run_job(script, [*base, "--max_epoch", str(args.rounds), *link_options(link)], work / f"rounds-{name}",
                      args.job_timeout)
        at = [job.rows[min(r, len(job.rows)) - 1]["accuracy"] for r in (5, 20, len(job.rows))]
        print(f"| {name} | {rounds_to_target(job)} | {' / '.join(f'{a:.4f}' for a in at)} | "
              f"{steady_mean(job.rows, 'round_s'):.2f} |")
        verdicts.append((f"{name}: rounds to {100 * TARGET:g} % {rounds_to_target(job)} against McMahan's "
                         f"{MCMAHAN_ROUNDS} (B = 10, tuned lr)", None))


def median(values: list[float]) -> float:
    """The middle value (the upper middle of an even count), as every figure of this benchmark reports it."""
    return sorted(values)[len(values) // 2]


def busiest_rank_load(sampling: str, rounds: int, seed: int) -> float:
    """Mean over the rounds of the most sampled clients one rank trains (a round waits for that rank)."""
    loads = []
    for round_number in range(1, rounds + 1):
        hosts = [host_rank(c, RANKS) for c in round_sample(100, 10, seed, round_number, sampling=sampling,
                                                             client_ranks=RANKS)]
        loads.append(max(hosts.count(rank) for rank in range(1, RANKS + 1)))
    return sum(loads) / rounds


def section_hosting(args, work: Path, verdicts: list) -> None:
    timing = ["--max_epoch", str(args.timing_rounds), "--eval_every", "0"]
    print("\n## hosting: round time of 10 sampled clients out of 100 on 4 ranks, against 4 clients with the "
          f"same 6,000 samples a round (no link, no evaluation, {args.timing_rounds} rounds; median of "
          f"{args.repeats} side-by-side repeats, range in brackets)\n")
    print("| algorithm | local epochs | --sampling | busiest rank, clients a round (mean) | 100 clients, 10 per round "
          "| 4 clients | ratio |")
    print("|---|---|---|---|---|---|---|")
    busiest = {sampling: busiest_rank_load(sampling, args.timing_rounds, args.seed)
               for sampling in ("uniform", "balanced")}
    for epochs in args.hosting_epochs:
        for name, script in (("FedAvg", "FedAvg.py"), ("Overlap-FedAvg", "AsyncFedAvg.py")):
            # the same samples a round: 6,000 (the pathological split gives each of the 100 clients 600)
            four_options = [*mnist(args, epochs), "--world_size", str(RANKS + 1), "--partition", "iid", *timing]
            if not args.max_train_samples:
                four_options += ["--max_train_samples", "6000"]
            rounds: dict[str, list[float]] = {"four": [], "uniform": [], "balanced": []}
            for repeat in range(args.repeats):   # interleaved, so that a busy spell of the machine hits all three
                four = run_job(script, four_options, work / f"four-{name}-e{epochs}-{repeat}", args.job_timeout)
                rounds["four"].append(steady_mean(four.rows, "round_s"))
                for sampling in ("uniform", "balanced"):
                    job = run_job(script, [*mnist(args, epochs), *federation(100, 10), "--sampling", sampling,
                                           *timing], work / f"many-{name}-{sampling}-e{epochs}-{repeat}",
                                  args.job_timeout)
                    rounds[sampling].append(steady_mean(job.rows, "round_s"))
            for sampling in ("uniform", "balanced"):
                ratios = [many / four for many, four in zip(rounds[sampling], rounds["four"], strict=True)]
                ratio = median(ratios)
                print(f"| {name} | {epochs} | {sampling} | "
                      f"{busiest[sampling]:.2f} | "
                      f"{median(rounds[sampling]):.3f} s | {median(rounds['four']):.3f} s | "
                      f"{ratio:.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] |")
                verdicts.append((f"{name}, {epochs} local epoch(s), --sampling {sampling}: a round of 10 of 100 "
                                 f"hosted clients {ratio:.2f}x one of 4 clients with the same samples (median of "
                                 f"{args.repeats}; target <= {HOSTING_TARGET}x)", ratio <= HOSTING_TARGET))


def section_flower(args, work: Path, verdicts: list) -> None:
    python = args.peers_python
    if not python or not Path(python).is_file():
        verdicts.append(("flower: not run; make the peers' environment (../shared/peers/setup.sh) and give "
                         "--peers_python", None))
        return
    rounds = args.flower_rounds
    launch = time.time()
    command = [python, "-W", "ignore", str(PEERS / "flower_many.py")]
    COMMANDS.append(f"NUM=100 PER=10 ROUNDS={rounds} {' '.join(command)}")
    done = subprocess.run(command, cwd=PEERS, capture_output=True, text=True, timeout=args.job_timeout,
                          env={**os.environ, "NUM": "100", "PER": "10", "ROUNDS": str(rounds),
                               "LAUNCH_T": f"{launch:.3f}"})
    found = re.search(r"round1_from_launch=([\d.]+)s .*round_times=\[([^\]]*)\] acc=\[([^\]]*)\]", done.stdout)
    if done.returncode != 0 or not found:
        verdicts.append((f"flower: failed (exit {done.returncode}): {(done.stdout + done.stderr)[-300:]}", False))
        return
    flower_first = float(found.group(1))
    flower_rounds = [float(v) for v in found.group(2).split(",")]
    flower_acc = [float(v) for v in found.group(3).split(",")]
    ours = run_job("FedAvg.py", [*mnist(args), *federation(100, 10), "--max_epoch", str(rounds)],
                   work / "flower-ours", args.job_timeout)
    our_rounds = [b["wall_s"] - a["wall_s"] for a, b in zip(ours.rows, ours.rows[1:], strict=False)]
    print(f"\n## flower: the same job (100 clients, 10 per round, lr 0.05), {rounds} rounds, no link\n")
    print("| system | launch to end of round 1 | rounds after the first, s (median) | accuracy after 5 rounds |")
    print("|---|---|---|---|")
    print(f"| Flower 1.41 simulation | {flower_first:.1f} s | {median(flower_rounds):.2f} | "
          f"{flower_acc[min(4, len(flower_acc) - 1)]:.4f} |")
    print(f"| this project, FedAvg.py | {ours.rows[0]['wall_s']:.1f} s | {median(our_rounds):.2f} | "
          f"{ours.rows[min(4, len(ours.rows) - 1)]['accuracy']:.4f} |")
    verdicts.append((f"flower: launch to end of round 1 {ours.rows[0]['wall_s']:.1f} s here, {flower_first:.1f} s "
                     f"in Flower; median round {median(our_rounds):.2f} s against {median(flower_rounds):.2f} s",
                     None))


def section_thousand(args, work: Path, verdicts: list) -> None:
    print("\n## thousand: 1,000 clients, 100 per round, 4 client ranks, 3 rounds\n")
    print("| algorithm | launcher estimate | measured (peak summed PSS) | estimate / measured | mean round s |")
    print("|---|---|---|---|---|")
    for name, script in (("FedAvg", "FedAvg.py"), ("Overlap-FedAvg", "AsyncFedAvg.py")):
        out_dir = work / f"thousand-{name}"
        command = [sys.executable, script, *mnist(args), *federation(1000, 100), "--max_epoch", "3",
                   "--master_port", "0", "--out_dir", str(out_dir)]
        COMMANDS.append(" ".join(command))
        run = run_sampled(command, ROOT, args.job_timeout)
        check(run, ROOT)
        estimate, measured = launcher_estimate_mb(run), run.sampler.peak_total_pss_kb / MB
        ratio = estimate / measured
        print(f"| {name} | {estimate:.0f} MB | {measured:.0f} MB | {ratio:.2f} | "
              f"{steady_mean(read_metrics(out_dir), 'round_s'):.2f} |")
        verdicts.append((f"thousand, {name}: the launcher's estimate {ratio:.2f}x the measured total (target "
                         f"within {ESTIMATE_TOLERANCE:.0%})", abs(ratio - 1) <= ESTIMATE_TOLERANCE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_options(parser, SECTIONS)
    add = parser.add_argument
    add("--rounds", type=int, default=100, help="rounds of the rounds section")
    add("--timing_rounds", type=int, default=30, help="rounds of each hosting job")
    add("--hosting_epochs", type=int, nargs="+", default=[1, 5], help="local epochs of the hosting jobs")
    add("--repeats", type=int, default=3, help="side-by-side repeats of each hosting comparison (rounds of 0.2 s "
        "on 2 shared cores vary by a third from run to run)")
    add("--flower_rounds", type=int, default=10, help="rounds of the flower section (both systems)")
    add("--latency", type=float, default=10.0, help="the calibrated link's latency per message, ms")
    add("--seed", type=int, default=2020)
    add("--peers_python", default=None, help="the Python of the peers' environment (../shared/peers/setup.sh)")
    args = parser.parse_args()
    if "thousand" in args.only and args.max_train_samples is not None and args.max_train_samples < 2000:
        parser.error(f"--max_train_samples {args.max_train_samples}: the thousand section gives 1,000 clients 2 "
                     f"label shards each and needs 2,000 or more (or leave it out: --only rounds hosting flower)")
    args.data_dir = str(Path(args.data_dir).resolve())
    verdicts: list = []
    with work_directory(args, prefix="bench-many-clients-") as work:
        for section in SECTIONS:
            if section in args.only:
                globals()[f"section_{section}"](args, work, verdicts)
    report_and_exit(verdicts)


if __name__ == "__main__":
    main()

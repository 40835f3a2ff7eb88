"""Start-up and shutdown of a FedAvg.py job by world size, and side by side with FedLab 1.3 on the same job.

The job is the peers' (../shared/peers/README.md): FedAvg.py on MNIST, MLP, 5 rounds of 1 local epoch, lr 0.01,
batch 32, run from --repo as a subprocess. Seconds from launch (time.time() just before Popen) to:

- G_0 sent: the arrival of the server's "start-up" line;
- end of round 1: wall_s of round 1 in metrics.csv (when G_1 was sent), moved onto this clock by the start-up
  line: the job counts from its entry script's first import (summary.json's startup_s), this benchmark from
  before Popen;
- exit: the launcher's exit.

Shutdown: from the arrival of the server's last line ("done: ...") to the exit, and to when the last rank was
last seen alive (process tree sampled every 0.2 s, which also gives the sum of each process's peak VmHWM).

FedLab (../shared/peers/fedlab_mnist.py with the venv of ../shared/peers/setup.sh; skipped without it) runs
the same job with 4 clients, alternating with the world-size-5 job: ours, FedLab, ours, FedLab. The ratios
ours / FedLab are of launch to end of round 1 (FedLab's includes that round's evaluation) and of last round
to exit (FedLab: from its "[fedlab] round 5" line; ours: from the "done:" line, after the last evaluation).

    python benchmarks/bench_startup.py --data_dir ./data
    python benchmarks/bench_startup.py --data_dir ./data --repo /tmp/before --world_sizes 5 9

Time: about 5 minutes on 2 cores.
Figures: docs/benchmarks.md (start-up and shutdown by world size, and against FedLab).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from bench_memory import MB, SampledRun, check, run_sampled  # noqa: E402
from jobs import read_metrics, read_summary  # noqa: E402

from Utils.transport import free_port  # noqa: E402

FEDLAB_WORLD_SIZE = 5   # fedlab_mnist.py: the server and 4 clients


def arrival(run: SampledRun, pattern: str) -> float:
    """Seconds from launch to the arrival of the last output line matching pattern (NaN: none)."""
    times = [t for t, text in run.lines if re.search(pattern, text)]
    return times[-1] - run.launch if times else math.nan


def figures(run: SampledRun, last_line: str, round1: float, g0: float = math.nan) -> dict:
    last = arrival(run, last_line)
    ranks = [p.last_seen for role, p in run.sampler.roles() if role == "rank"]
    return {"g0": g0, "round1": round1, "last_to_exit": run.exit - run.launch - last,
            "last_to_ranks_gone": max(ranks, default=math.nan) - run.launch - last,
            "exit": run.exit - run.launch, "rss_mb": sum(p.hwm_kb for p in run.sampler.processes.values()) / MB}


def run_ours(args, repo: Path, work: Path, world_size: int, name: str, commands: list) -> dict:
    out_dir = work / name
    command = [sys.executable, "FedAvg.py", "--world_size", str(world_size), "--dataset", "mnist", "--model", "mlp",
               "--max_epoch", str(args.rounds), "--client_epoch", "1", "--lr", "0.01", "--batch_size", "32",
               "--data_dir", args.data_dir, "--out_dir", str(out_dir), "--master_port", "0"]
    commands.append(f"(cd {repo} && {shlex.join(command)})")
    run = run_sampled(command, repo, args.job_timeout, pss=False)
    check(run, repo)
    rows = read_metrics(out_dir)
    if not rows:
        sys.exit(f"{out_dir}/metrics.csv has no rounds:\n{run.tail()}")
    g0 = arrival(run, r"\bstart-up [\d.]+ s")
    job_startup_s = read_summary(out_dir).get("startup_s")   # None: a checkout that writes none (--repo)
    offset = 0.0 if job_startup_s is None else g0 - float(job_startup_s)   # the job's clock onto this one
    return figures(run, r"\] INFO done: ", rows[0]["wall_s"] + offset, g0)


def run_fedlab(args, commands: list) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(args.peers_python).parents[2] / "tv_stub"), PORT=str(free_port()),
               LAUNCH_T=repr(time.time()), MNIST_DIR=str(Path(args.mnist_dir).resolve()))
    command = [args.peers_python, "-W", "ignore", str(Path(args.peers) / "fedlab_mnist.py")]
    commands.append(shlex.join(["env"] + [f"{k}={env[k]}" for k in ("PYTHONPATH", "PORT", "MNIST_DIR")] + command))
    run = run_sampled(command, Path(args.peers), args.job_timeout, env=env, pss=False)
    check(run, Path(args.peers))
    found = re.search(r"\[fedlab\] round1_from_launch=([\d.]+)s", "".join(text for _, text in run.lines))
    if not found:
        sys.exit(f"FedLab printed no round1_from_launch line:\n{run.tail()}")
    return figures(run, r"^\[fedlab\] round \d+ ", float(found.group(1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--data_dir", default="./data", help="data root holding MNIST (see prepare_data.py)")
    add("--repo", default=str(ROOT), help="checkout whose FedAvg.py to measure (default: this one)")
    add("--world_sizes", type=int, nargs="+", default=[5, 9, 17], help="server + clients")
    add("--rounds", type=int, default=5, help="--max_epoch of our job (FedLab's job has 5)")
    add("--repeats", type=int, default=2, help="passes over the world sizes, each with one FedLab run")
    add("--pause", type=float, default=5.0, help="seconds between runs, so that one's teardown ends first")
    add("--peers", default=str(ROOT.parent / "shared" / "peers"), help="directory of fedlab_mnist.py")
    add("--peers_python", default="/tmp/peers/venv/bin/python", help="the peers' venv (peers/setup.sh)")
    add("--mnist_dir", default=None, help="MNIST .gz files for FedLab (default: PEERS/../data/mnist)")
    add("--job_timeout", type=float, default=900.0, help="seconds before a job is declared hung")
    args = parser.parse_args()
    repo, args.data_dir = Path(args.repo).resolve(), str(Path(args.data_dir).resolve())
    if not (repo / "FedAvg.py").is_file():
        parser.error(f"--repo {repo} has no FedAvg.py")
    if min(args.world_sizes) < 2 or args.repeats < 1:
        parser.error("--world_sizes: each at least 2; --repeats: at least 1")
    args.mnist_dir = args.mnist_dir or str(Path(args.peers) / ".." / "data" / "mnist")
    with_fedlab = Path(args.peers_python).is_file()

    print(f"benchmark: {shlex.join([sys.executable] + sys.argv)}\nrepo: {repo}")
    if not with_fedlab:
        print(f"no FedLab comparison: {args.peers_python} is missing (run {Path(args.peers) / 'setup.sh'})")
    elif not (Path(args.peers) / "fedlab_mnist.py").is_file():
        parser.error(f"--peers {args.peers} has no fedlab_mnist.py")
    world_sizes = sorted(set(args.world_sizes) | ({FEDLAB_WORLD_SIZE} if with_fedlab else set()))
    print(f"\n## Runs: FedAvg.py MNIST MLP, {args.rounds} rounds x 1 local epoch (seconds from launch)\n"
          "| # | system | world size | G_0 sent | end of round 1 | last line to exit | last line to ranks gone "
          "| launch to exit | sum of peak RSS MB | load avg |\n|---|---|---|---|---|---|---|---|---|---|", flush=True)
    ours: dict[int, list[dict]] = {w: [] for w in world_sizes}
    fedlab: list[dict] = []
    commands: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as scratch:
        number = 0
        for repeat in range(args.repeats):
            for world_size in world_sizes:
                queue = [("ours", world_size)] + ([("FedLab", FEDLAB_WORLD_SIZE)]
                                                  if with_fedlab and world_size == FEDLAB_WORLD_SIZE else [])
                for system, size in queue:
                    number += 1
                    time.sleep(args.pause)
                    load = os.getloadavg()[0]
                    if system == "ours":
                        result = run_ours(args, repo, Path(scratch), size, f"ws{size}-{repeat + 1}", commands)
                        ours[size].append(result)
                    else:
                        result = run_fedlab(args, commands)
                        fedlab.append(result)
                    cells = [f"{result[k]:.2f}" if not math.isnan(result[k]) else "-"
                             for k in ("g0", "round1", "last_to_exit", "last_to_ranks_gone", "exit")]
                    print(f"| {number} | {system} | {size} | {' | '.join(cells)} | {result['rss_mb']:,.0f} | "
                          f"{load:.2f} |", flush=True)

    def mean(results: list[dict], key: str) -> float:
        return statistics.fmean(r[key] for r in results)

    print(f"\n## Means over {args.repeats} repeat(s), ours\n| world size | G_0 sent | end of round 1 | "
          "last line to exit | launch to exit | sum of peak RSS MB |\n|---|---|---|---|---|---|")
    for world_size, results in ours.items():
        print(f"| {world_size} | {mean(results, 'g0'):.2f} | {mean(results, 'round1'):.2f} | "
              f"{mean(results, 'last_to_exit'):.2f} | {mean(results, 'exit'):.2f} | {mean(results, 'rss_mb'):,.0f} |")
    if with_fedlab:
        print(f"\n## Ours / FedLab, world size {FEDLAB_WORLD_SIZE}, run in alternation\n| repeat | "
              "end of round 1: ours, FedLab, ratio | last round to exit: ours, FedLab, ratio |\n|---|---|---|")
        pairs = list(zip(ours[FEDLAB_WORLD_SIZE], fedlab, strict=True))
        for repeat, (a, b) in enumerate(pairs, 1):
            print(f"| {repeat} | {a['round1']:.2f}, {b['round1']:.2f}, {a['round1'] / b['round1']:.2f} | "
                  f"{a['last_to_exit']:.2f}, {b['last_to_exit']:.2f}, {a['last_to_exit'] / b['last_to_exit']:.2f} |")
        first = [a["round1"] / b["round1"] for a, b in pairs]
        last = [a["last_to_exit"] / b["last_to_exit"] for a, b in pairs]
        print(f"| mean ratio | {statistics.fmean(first):.2f} | {statistics.fmean(last):.2f} |")
    print("\n## Commands\n" + "\n".join(commands))


if __name__ == "__main__":
    main()

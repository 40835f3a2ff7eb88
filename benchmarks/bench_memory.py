"""Resident memory of every process of a job, per process and in total, from the fewest to the most clients.

Runs AsyncFedAvg.py (default: CIFAR-10, CNNCifar, 1 round of 1 local epoch) from --repo at each world size,
and every 0.2 s reads the launcher and all its descendants: per process the peak of VmHWM (/proc/PID/status;
the highest value read, since the server restarts its own mark after loading) and of PSS (smaps_rollup: a
page shared by k processes counts 1/k in each, so PSS adds up). Totals: the sum of the RSS peaks (counting
the shared torch libraries and memory-mapped data once per process) and the peak over time of the summed PSS.
Where the loader memory-maps the images, --max_train_samples reads only the subset's rows, so by default the
clients train on the whole set, for a single round.

    python benchmarks/bench_memory.py --data_dir ./data
    python benchmarks/bench_memory.py --data_dir ./data --repo /tmp/before --world_sizes 3 9 17

The launcher's own estimate (its "memory: about X GB" line, timestamped on arrival like every output line)
is printed beside the measurement. Target: the largest job's total (peak summed PSS) at most 3x the
smallest's. A job is stopped when MemAvailable falls below --min_available_mb (before ranks loaded only
their own rows, a 17-process CIFAR-10 job peaked at about 20 GB).

Time: about 3.5 minutes on 2 cores.
Figures: docs/benchmarks.md (memory of all processes; docs/processes.md cites them).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from Utils.memory import available_bytes  # noqa: E402   (no torch: this process stays light)

MB = 1024   # kB per MB: /proc reports kB
TARGET_RATIO = 3.0   # total memory of the largest world size over the smallest's (16 clients vs 2 by default)


def _kb(text: str, key: str) -> int | None:
    line = next((line for line in text.splitlines() if line.startswith(key)), None)
    return None if line is None else int(line.split()[1])


def descendants(root: int) -> list[int]:
    """root and every process below it, from each process's parent in /proc/PID/stat (this kernel, like many,
    lacks /proc/PID/task/TID/children)."""
    by_parent: dict[int, list[int]] = {}
    for entry in (e for e in Path("/proc").iterdir() if e.name.isdigit()):
        try:   # the fields after the last ")" (the command name may hold one): state, ppid, ...
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):   # exited meanwhile
            continue
        by_parent.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        found.append(stack.pop())
        stack.extend(by_parent.get(found[-1], []))
    return found


@dataclass
class ProcessPeaks:
    pid: int
    ppid: int = 0
    cmdline: str = ""
    hwm_kb: int = 0          # highest VmHWM read
    pss_kb: int = 0          # highest Pss read
    last_seen: float = 0.0   # time.time() of the last read that found it running (not a zombie)


class TreeSampler(threading.Thread):
    """Every interval_s, the peaks of each process below root_pid (PSS only when pss: it walks page tables).
    Kills the process group when MemAvailable falls below min_available_mb, before the OOM killer picks."""

    def __init__(self, root_pid: int, interval_s: float = 0.2, pss: bool = True, min_available_mb: float = 0):
        super().__init__(daemon=True)
        self.root_pid, self.interval_s, self.pss, self.min_available_mb = root_pid, interval_s, pss, min_available_mb
        self.processes: dict[int, ProcessPeaks] = {}
        self.peak_total_pss_kb, self.killed_low_memory = 0, False
        self._halt = threading.Event()   # not _stop: threading.Thread has a method of that name

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            if self.min_available_mb and mem_available_mb() < self.min_available_mb and not self.killed_low_memory:
                self.killed_low_memory = True
                with contextlib.suppress(ProcessLookupError):   # the job may just have ended
                    os.killpg(self.root_pid, signal.SIGKILL)
            self._halt.wait(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def sample(self) -> None:
        total_pss = 0
        for pid in descendants(self.root_pid):
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                hwm = _kb(status, "VmHWM:")
                if hwm is None:   # a zombie: exited, not yet reaped
                    continue
                peaks = self.processes.setdefault(pid, ProcessPeaks(pid, _kb(status, "PPid:") or 0))
                # re-read: until it execs, a new child shows its parent's command line
                peaks.cmdline = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
                peaks.hwm_kb, peaks.last_seen = max(peaks.hwm_kb, hwm), time.time()
                if self.pss:
                    pss = _kb(Path(f"/proc/{pid}/smaps_rollup").read_text(), "Pss:") or 0
                    peaks.pss_kb, total_pss = max(peaks.pss_kb, pss), total_pss + pss
            except (OSError, ValueError):   # exited between the listing and the read
                continue
        self.peak_total_pss_kb = max(self.peak_total_pss_kb, total_pss)

    def roles(self) -> list[tuple[str, ProcessPeaks]]:
        """(role, peaks) in pid order. Ranks are the launcher's children (spawn) or a forkserver's (which share
        its command line); anything else below them, e.g. a short-lived fork before an exec, is "other"."""
        processes = sorted(self.processes.values(), key=lambda p: p.pid)
        servers = {p.pid for p in processes if p.ppid == self.root_pid and "forkserver" in p.cmdline}

        def role(p: ProcessPeaks) -> str:
            return ("launcher" if p.pid == self.root_pid else "resource tracker" if "resource_tracker" in p.cmdline
                    else "forkserver" if p.pid in servers else "rank" if p.ppid in servers | {self.root_pid}
                    else "other")
        return [(role(p), p) for p in processes]


@dataclass
class SampledRun:
    command: list[str]
    launch: float                  # time.time() just before Popen
    sampler: TreeSampler
    status: int = 0
    exit: float = 0.0              # time.time() when the launcher's exit was seen
    lines: list[tuple[float, str]] = field(default_factory=list)   # (arrival time, line of stdout + stderr)

    def tail(self, count: int = 40) -> str:
        return "".join(text for _, text in self.lines[-count:])


def run_sampled(command: list[str], cwd: Path, timeout_s: float, env: dict | None = None, pss: bool = True,
                min_available_mb: float = 0) -> SampledRun:
    """Run a job, timestamping each output line on arrival and sampling its process tree's memory."""
    launch = time.time()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)   # its own group: one kill stops every process
    run = SampledRun(command, launch, TreeSampler(process.pid, pss=pss, min_available_mb=min_available_mb))
    run.sampler.start()

    def read() -> None:
        for raw in iter(process.stdout.readline, b""):
            run.lines.append((time.time(), raw.decode(errors="replace")))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        run.status = process.wait(timeout_s)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        os.killpg(process.pid, signal.SIGKILL)
        run.status = process.wait()
        run.lines.append((time.time(), f"[benchmark] stopped after {time.time() - launch:.0f} s\n"))
    run.exit = time.time()
    run.sampler.stop()
    reader.join(10)   # a grandchild could hold the pipe open past the launcher's exit
    if run.sampler.killed_low_memory:
        run.lines.append((run.exit, f"[benchmark] stopped: MemAvailable fell below {min_available_mb:.0f} MB\n"))
    return run


def check(run: SampledRun, cwd: Path) -> None:
    """Exit the benchmark, with the tail of the job's output, when the job failed."""
    if run.status != 0:
        sys.exit(f"job failed with exit status {run.status} after {run.exit - run.launch:.0f} s (in {cwd}): "
                 f"{shlex.join(run.command)}\n{run.tail()}")


def mem_available_mb() -> float:
    return (available_bytes() or 0) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--data_dir", default="./data", help="data root (see prepare_data.py)")
    add("--repo", default=str(ROOT), help="checkout whose job to measure (default: this one)")
    add("--script", default="AsyncFedAvg.py", choices=("FedAvg.py", "AsyncFedAvg.py"))
    add("--dataset", default="cifar10")
    add("--model", default="cnncifar")
    add("--world_sizes", type=int, nargs="+", default=[3, 17], help="server + clients")
    add("--rounds", type=int, default=1, help="--max_epoch of the job (1 local epoch per round)")
    add("--max_train_samples", type=int, default=None, help="passed to the job (default: the whole set)")
    add("--min_available_mb", type=float, default=1000.0, help="stop a job when MemAvailable falls below")
    add("--job_timeout", type=float, default=1800.0, help="seconds before a job is declared hung")
    args = parser.parse_args()
    repo, data_dir = Path(args.repo).resolve(), str(Path(args.data_dir).resolve())
    if not (repo / args.script).is_file():
        parser.error(f"--repo {repo} has no {args.script}")
    if min(args.world_sizes) < 2:
        parser.error("--world_sizes: each at least 2 (the server and a client)")
    world_sizes = sorted(set(args.world_sizes))

    print(f"benchmark: {shlex.join([sys.executable] + sys.argv)}\nrepo: {repo}\n"
          f"MemAvailable at start: {mem_available_mb():,.0f} MB; {os.cpu_count()} cores")
    totals, commands = {}, []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as work:
        for world_size in world_sizes:
            command = [sys.executable, args.script, "--dataset", args.dataset, "--model", args.model,
                       "--max_epoch", str(args.rounds), "--client_epoch", "1", "--data_dir", data_dir,
                       "--out_dir", str(Path(work) / f"ws{world_size}"), "--world_size", str(world_size),
                       "--master_port", "0"]
            command += ["--max_train_samples", str(args.max_train_samples)] if args.max_train_samples else []
            commands.append(shlex.join(command))
            run = run_sampled(command, repo, args.job_timeout, min_available_mb=args.min_available_mb)
            check(run, repo)
            roles = run.sampler.roles()
            ranks = [p.pid for role, p in roles if role == "rank"]
            print(f"\n## world size {world_size} ({world_size - 1} clients): job {run.exit - run.launch:.1f} s, "
                  f"{len(roles)} processes\n| process | pid | peak RSS (VmHWM) MB | peak PSS MB |\n|---|---|---|---|")
            for role, peaks in roles:
                if role == "rank" and len(ranks) == world_size:   # started in rank order
                    role = f"rank {ranks.index(peaks.pid)}" + (" (server)" if peaks.pid == ranks[0] else "")
                print(f"| {role} | {peaks.pid} | {peaks.hwm_kb / MB:,.1f} | {peaks.pss_kb / MB:,.1f} |")
            rss, pss = sum(p.hwm_kb for _, p in roles) / MB, run.sampler.peak_total_pss_kb / MB
            estimate = launcher_estimate_mb(run)
            totals[world_size] = (rss, pss, run.exit - run.launch, estimate)
            print(f"total: sum of peak RSS {rss:,.1f} MB; peak of summed PSS {pss:,.1f} MB; the launcher's "
                  f"estimate {estimate:,.0f} MB")
    print(f"\n## Totals: {args.script} {args.dataset} {args.model}, {args.rounds} round(s) x 1 local epoch"
          "\n| world size | clients | sum of peak RSS MB | peak summed PSS MB | launcher's estimate MB | job s |"
          "\n|---|---|---|---|---|---|")
    for world_size, (rss, pss, seconds, estimate) in totals.items():
        print(f"| {world_size} | {world_size - 1} | {rss:,.1f} | {pss:,.1f} | {estimate:,.0f} | {seconds:.1f} |")
    (small_rss, small_pss, *_), (large_rss, large_pss, *_) = totals[world_sizes[0]], totals[world_sizes[-1]]
    ratio = large_pss / small_pss
    print(f"world size {world_sizes[-1]} / {world_sizes[0]}: sum of peak RSS x{large_rss / small_rss:.2f}, "
          f"peak summed PSS x{ratio:.2f}")
    print(f"\n## Commands (run from {repo})\n" + "\n".join(commands))
    passed = ratio <= TARGET_RATIO
    print(f"\n## Targets\n{'PASS' if passed else 'FAIL'}  total memory (peak summed PSS) of world size "
          f"{world_sizes[-1]} / {world_sizes[0]} x{ratio:.2f} <= {TARGET_RATIO}")
    sys.exit(0 if passed else 1)


def launcher_estimate_mb(run: SampledRun) -> float:
    """The launcher's "memory: about X GB" line (NaN for a checkout that does not print it)."""
    for _, text in run.lines:
        if "memory: about " in text:
            return float(text.split("memory: about ")[1].split(" GB")[0]) * 1024
    return math.nan


if __name__ == "__main__":
    main()

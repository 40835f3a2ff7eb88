"""Running real FedAvg.py / AsyncFedAvg.py jobs from the benchmarks and reading what they leave behind.

Every benchmark runs real jobs as subprocesses, each with its own --out_dir and --master_port 0, prints
its figures as markdown tables with the exact command lines it ran and one PASS / FAIL line per target
(INFO where there is none), and exits 1 when a target is missed. Run directories go to a temporary
directory deleted at exit, unless --work_dir keeps them. Timing needs a quiet machine: every job shares
the cores with whatever else runs.

What a job leaves behind is read through two files only (docs/outputs.md): metrics.csv (read_metrics) and
summary.json (read_summary); no benchmark reads train.log. The emulated link is Utils.transport.Link, and
calibrated_link is the one calibration of "a link on which upload + download take one round's training".
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from Utils.transport import Link  # noqa: E402

COMMANDS: list[str] = []   # every job command line, printed at the end of a benchmark


@dataclass
class JobResult:
    command: str
    rows: list[dict]    # metrics.csv, numbers as floats (NaN where empty)
    summary: dict       # summary.json ({} when the job wrote none)
    elapsed_s: float    # the whole subprocess, interpreter start to exit
    status: int = 0     # the job's exit status (non-zero only with run_job(check=False))


def link_options(link: Link) -> list[str]:
    """The --bandwidth / --latency options of both scripts that put every client on `link`."""
    options = [] if link.bandwidth_mbit is None else ["--bandwidth", f"{link.bandwidth_mbit:.6g}"]
    return options + ["--latency", f"{link.latency_ms:g}"]


def exchange_s(link: Link, upload_bytes: float, download_bytes: float) -> float:
    """One upload + one download on `link`: the transport's latency + 8 * bytes / bandwidth, twice."""
    return link.delay_s(upload_bytes) + link.delay_s(download_bytes)


def message_bytes(job: JobResult, num_clients: int) -> tuple[float, float]:
    """One client's upload and download in bytes, from round 1 of a job with num_clients clients a round."""
    first = job.rows[0]
    return first["bytes_up"] / num_clients, first["bytes_down"] / num_clients


def calibrated_link(pilot: JobResult, num_clients: int, comm_over_train: float, latency_ms: float, *,
                    training_s: float | None = None, min_budget_s: float | None = None) -> Link:
    """The link on which one upload + one download take comm_over_train x one round's training T: the one
    calibration of the benchmarks. The pilot is a FedAvg job without evaluation; T is its mean round_s over
    rounds 2..R (a job without a link: its round is training), unless training_s gives T; message sizes
    come from its round 1. When the latency alone exceeds the budget the benchmark exits, unless
    min_budget_s is given: then the transfers get that much time (smoke sizes, whose figures mean nothing)."""
    training_s = steady_mean(pilot.rows, "round_s") if training_s is None else training_s
    budget_s = comm_over_train * training_s - 2 * latency_ms / 1000
    if budget_s <= 0 and min_budget_s is None:
        sys.exit(f"--latency {latency_ms} ms alone exceeds {comm_over_train} x {training_s:.3f} s of training")
    budget_s = budget_s if min_budget_s is None else max(budget_s, min_budget_s)
    return Link(8 * sum(message_bytes(pilot, num_clients)) / budget_s / 1e6, latency_ms)


def run_job(script: str, options: list[str], out_dir: Path, timeout_s: float, check: bool = True) -> JobResult:
    """Run one FedAvg.py / AsyncFedAvg.py job to completion; exit the benchmark if it fails, unless check is
    False and the job left its metrics.csv (a diverged run, say: its good rounds are a result)."""
    command = [sys.executable, script, *options, "--master_port", "0", "--out_dir", str(out_dir)]
    COMMANDS.append(shlex.join(command))
    job_output = job_output_path(out_dir)
    job_output.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with job_output.open("w") as output:
        process = subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)   # its own group: a timeout stops every rank
        previous_term = signal.signal(signal.SIGTERM, _interrupt)   # `kill` too stops the job, not just Ctrl-C
        try:
            status = process.wait(timeout_s)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            sys.exit(f"job timed out or interrupted after {time.perf_counter() - began:.0f} s: {COMMANDS[-1]}")
        finally:
            signal.signal(signal.SIGTERM, previous_term)
    elapsed = time.perf_counter() - began
    if status != 0 and (check or not (out_dir / "metrics.csv").is_file()):
        tail = job_output.read_text()[-3000:]
        sys.exit(f"job failed with exit status {status}: {COMMANDS[-1]}\n{tail}")
    return JobResult(COMMANDS[-1], read_metrics(out_dir), read_summary(out_dir), elapsed, status)


def finished_or_run(script: str, options: list[str], out_dir: Path, rounds: int, timeout_s: float) -> list[dict]:
    """The metrics.csv rows of a finished run of `rounds` rounds in out_dir, or else of a job run there now: how
    a sweep resumes after an interruption without running a finished job again."""
    rows = read_metrics(out_dir) if (out_dir / "metrics.csv").is_file() else []
    return rows if len(rows) == rounds else run_job(script, options, out_dir, timeout_s).rows


def read_metrics(out_dir: Path) -> list[dict]:
    """A run directory's metrics.csv, numbers as floats (NaN where empty): the one metrics reader."""
    with (out_dir / "metrics.csv").open() as f:
        return [{k: float(v) if v else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def read_summary(out_dir: Path) -> dict:
    """A run directory's summary.json (docs/outputs.md), or {} when the job wrote none."""
    path = out_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def startup_s(job: JobResult) -> float:
    """summary.json's startup_s: seconds from launch to G_0 sent (NaN when the job did not say)."""
    value = job.summary.get("startup_s")
    return math.nan if value is None else float(value)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def job_output_path(out_dir: Path) -> Path:
    """Where run_job keeps a job's stdout and stderr: beside its run directory, which stays the job's own."""
    return out_dir.with_name(out_dir.name + ".out")


# calibrated_link's floor at smoke sizes: a round trains in less than the latency, and the transfers get 1 ms
# (figures that mean nothing).
SMOKE_BUDGET_S = 1e-3


def smoke_budget_s(args: argparse.Namespace) -> float | None:
    """calibrated_link's min_budget_s for these options: SMOKE_BUDGET_S with --max_train_samples; at the
    benchmark's sizes, none."""
    return SMOKE_BUDGET_S if args.max_train_samples else None


def add_job_options(parser: argparse.ArgumentParser, sections: tuple[str, ...]) -> None:
    """The options every MNIST job benchmark takes: sections, data root, run directories, smoke subset."""
    add = parser.add_argument
    add("--only", nargs="+", choices=sections, default=list(sections), help="sections to run")
    add("--data_dir", default="./data", help="data root holding MNIST (see prepare_data.py)")
    add("--work_dir", default=None, help="keep the run directories here (default: a temporary directory)")
    add("--max_train_samples", type=int, default=None, help="smoke tests only: a seeded subset of MNIST")
    add("--job_timeout", type=float, default=1800.0, help="seconds before a job is declared hung")


@contextlib.contextmanager
def work_directory(args: argparse.Namespace, prefix: str) -> Iterator[Path]:
    """--work_dir, or a temporary directory deleted at exit; prints the benchmark's command line first."""
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch:
        work = Path(args.work_dir).resolve() if args.work_dir else Path(scratch)
        print(f"benchmark: {shlex.join([sys.executable] + sys.argv)}\nrun directories: {work}"
              f"{' (deleted at exit)' if not args.work_dir else ''}")
        if args.max_train_samples:
            print(f"SMOKE SETTINGS: --max_train_samples {args.max_train_samples}; the figures are not the benchmark's")
        yield work


def steady_mean(rows: list[dict], column: str) -> float:
    """Mean of a column over rounds 2..R (round 1 is warm-up); round 1 alone when that is all there is."""
    values = [r[column] for r in (rows[1:] or rows) if not math.isnan(r[column])]
    return statistics.fmean(values) if values else math.nan


def report_and_exit(verdicts: list[tuple[str, bool | None]]) -> None:
    """Print every job's command line and each target's verdict (None: reported, no target); exit 1 on a FAIL."""
    print("\n## Commands (run from " + str(ROOT) + ")")
    for command in COMMANDS:
        print(command)
    print("\n## Targets")
    for text, passed in verdicts:
        print(f"{'INFO' if passed is None else 'PASS' if passed else 'FAIL'}  {text}")
    sys.exit(0 if all(passed is not False for _, passed in verdicts) else 1)

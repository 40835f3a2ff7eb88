"""The paper's workloads end to end: FedAvg and Overlap-FedAvg on every model, on two emulated links.

    python benchmarks/reproduce.py --scale quick --data_dir ./data     # about 1.5 hours on 2 CPU cores
    python benchmarks/reproduce.py --scale paper --data_dir ./data     # full data, 10 rounds x 5 epochs: GPUs
    python benchmarks/reproduce.py --scale quick --data_dir ./data --rows cifar10-resnet   # one row

Rows: mnist/mlp, mnist/mnistnet, fmnist/mnistnet, cifar10/cnncifar, cifar10/vgg, cifar10/resnet,
wikitext2/transformer, ptb/transformer, and emnist/mnistnet, cifar100/cnncifar when their data is prepared.
Each row runs FedAvg.py and AsyncFedAvg.py (its defaults: the client merge) on the same seed, 4 non-IID
clients, on two client links (--bandwidth, --latency), and on the calibrated link also AsyncFedAvg.py with
the server-side secant compensation (--compensation secant: the previous defaults), for comparison:

- calibrated: one upload + one download take as long as one round's training of that model. A pilot
  FedAvg job without a link (--eval_every 0, 3 rounds) measures that training T; the link follows from
  the model's message sizes (jobs.calibrated_link, recorded in manifest.json). This is the regime the
  method is for.
- realistic: 20 Mbit/s and 30 ms per message, a typical LTE uplink. The emulated link is symmetric, so
  downloads are as slow as uploads, as on a client whose uplink and downlink are both that fast.

On the 20 Mbit/s link the rows bound by communication (VGG, ResNet, both Transformers) also run FedAvg.py
and AsyncFedAvg.py with compressed messages: --compress int8, and --compress topk --topk_ratio 0.05.

The Transformer rows train with --lr 1 (at 0.01 they learn nothing within the quick scale's rounds).
The MNIST rows also run AsyncFedAvg.py with the official server settings (--compensation official
--mom 0.9 --lambd 0.04 --server_lr 1). Each run keeps its run directory (metrics.csv, summary.json, ...)
under --work_dir/ROW/LINK/METHOD; a run whose summary.json exists is complete and is skipped, so an
interrupted matrix resumes where it stopped; an incomplete one is run again from scratch. At the end,
benchmarks/results_report.py writes the report (--report) and its plots from the run directories.

Time: --scale quick on 2 cores: the 60 runs of both links, the compressed ones included, took 91 minutes,
pilots aside (docs/RESULTS.md; the calibrated link alone about 30). --scale paper: GPUs (docs/gpu.md).
Figures: docs/RESULTS.md (through benchmarks/results_report.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from jobs import (  # noqa: E402
    SMOKE_BUDGET_S,
    JobResult,
    Link,
    calibrated_link,
    job_output_path,
    link_options,
    message_bytes,
    run_job,
    steady_mean,
)

from Utils.data.prepare import is_prepared  # noqa: E402

NUM_CLIENTS = 4
PILOT_ROUNDS = 3
REALISTIC_LINK = Link(20.0, 30.0)
CALIBRATION_LATENCY_MS = 10.0
OFFICIAL_OPTIONS = ["--compensation", "official", "--mom", "0.9", "--lambd", "0.04", "--server_lr", "1"]
SECANT_OPTIONS = ["--compensation", "secant", "--mom", "0", "--server_lr", "1"]
# Compression's rows: top-k keeps 5 % of the numbers (10 % of the float32 bytes), which brings the largest
# models' communication on the 20 Mbit/s link below one round of their training (docs/network.md).
INT8_OPTIONS, TOPK_OPTIONS = ["--compress", "int8"], ["--compress", "topk", "--topk_ratio", "0.05"]
METHODS = {"fedavg": ("FedAvg.py", []), "overlap": ("AsyncFedAvg.py", []),
           "secant": ("AsyncFedAvg.py", SECANT_OPTIONS), "official": ("AsyncFedAvg.py", OFFICIAL_OPTIONS),
           "fedavg-int8": ("FedAvg.py", INT8_OPTIONS), "overlap-int8": ("AsyncFedAvg.py", INT8_OPTIONS),
           "fedavg-topk": ("FedAvg.py", TOPK_OPTIONS), "overlap-topk": ("AsyncFedAvg.py", TOPK_OPTIONS)}
# The secant form is a comparison, judged where the method is meant to win: the calibrated link only.
CALIBRATED_ONLY = frozenset({"secant"})
# Compression is for the models bound by communication: the 20 Mbit/s link, rows marked compressed.
COMPRESSED_METHODS = frozenset({"fedavg-int8", "overlap-int8", "fedavg-topk", "overlap-topk"})


@dataclass(frozen=True)
class Scale:
    """How much of a row runs: training samples (text: tokens; None: all), test samples (text: a span of
    tokens; None: all), local epochs per round, rounds."""
    train: int | None
    test: int | None
    epochs: int
    rounds: int


PAPER = Scale(None, None, 5, 10)   # the official defaults
SMOKE = Scale(400, 200, 1, 2)      # --smoke: the whole path in seconds; its figures mean nothing


@dataclass(frozen=True)
class Row:
    dataset: str
    model: str
    quick: Scale
    official: bool = False    # also run the official server settings
    optional: bool = False    # run only when the data is prepared (not in ../shared/data)
    options: tuple[str, ...] = ()   # the row's own client settings, for both methods
    compressed: bool = False  # also run FedAvg and Overlap-FedAvg with int8 and top-k on the 20 Mbit/s link

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.model}"


# At the default client lr 0.01 the Transformer stays worse than a uniform guess after 6 quick rounds
# (WikiText-2 perplexity 42,500 for 33,278 words); at lr 1 it is at 3,450 after 3 (5 gives 3,230).
TRANSFORMER_LR = ("--lr", "1")
# Quick sizes: each row's FedAvg round on the calibrated link takes 2-20 s on 2 cores, so that the whole
# matrix stays near an hour; MNIST/MLP is cheap enough to run at paper scale.
ROWS = (
    Row("mnist", "mlp", PAPER, official=True),
    Row("mnist", "mnistnet", Scale(6000, 2000, 1, 10), official=True),
    Row("fmnist", "mnistnet", Scale(6000, 2000, 1, 10)),
    Row("cifar10", "cnncifar", Scale(10000, 2000, 1, 10)),
    Row("cifar10", "vgg", Scale(4000, 1000, 1, 8), compressed=True),
    Row("cifar10", "resnet", Scale(1000, 500, 1, 6), compressed=True),
    Row("wikitext2", "transformer", Scale(24000, 10000, 1, 6), options=TRANSFORMER_LR, compressed=True),
    # PTB on 96,000 tokens: on 24,000 two of its four non-IID shards held 2-3 batches, and its gap between
    # methods over seeds (sd 2.6 %, benchmarks/text_seeds.py) was wider than the 1.02x level that judges it.
    Row("ptb", "transformer", Scale(96000, 10000, 1, 6), options=TRANSFORMER_LR, compressed=True),
    Row("emnist", "mnistnet", Scale(6000, 2000, 1, 10), optional=True),
    Row("cifar100", "cnncifar", Scale(10000, 2000, 1, 10), optional=True),
)


def row_scale(row: Row, scale: str, rounds: int | None = None) -> Scale:
    """The row's scale; `rounds` (--rounds) cuts it to a slice of that many rounds."""
    chosen = {"quick": row.quick, "paper": PAPER, "smoke": SMOKE}[scale]
    return chosen if rounds is None else Scale(chosen.train, chosen.test, chosen.epochs, rounds)


def job_options(args, row: Row, scale: Scale, *, evaluate: bool, rounds: int | None = None,
                partition: str = "noniid") -> list[str]:
    options = ["--world_size", str(NUM_CLIENTS + 1), "--dataset", row.dataset, "--model", row.model,
               "--partition", partition, "--seed", str(args.seed), "--max_epoch", str(rounds or scale.rounds),
               "--client_epoch", str(scale.epochs), "--data_dir", args.data_dir]
    if scale.train:
        options += ["--max_train_samples", str(scale.train)]
    if scale.test and evaluate:
        options += ["--test_samples", str(scale.test)]
    if args.gpus:
        options += ["--gpus", args.gpus]
    return options + list(row.options) + ([] if evaluate else ["--eval_every", "0"])


class Matrix:
    """The runs of the matrix, with progress, skipping the complete ones; manifest.json records them all."""

    def __init__(self, args, rows: list[Row]):
        self.args, self.rows, self.work = args, rows, Path(args.work_dir)
        self.began = time.perf_counter()
        self.total = sum(len(self.methods(row, link)) for row in rows for link in args.links)
        self.done = 0
        manifest_path = self.work / "manifest.json"
        self.manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"runs": {}}
        if self.manifest.get("scale", args.scale) != args.scale or self.manifest.get("seed", args.seed) != args.seed:
            sys.exit(f"error: {self.work} holds a matrix of --scale {self.manifest['scale']} --seed "
                     f"{self.manifest['seed']}; give another --work_dir or the same options")
        self.manifest.update(scale=args.scale, seed=args.seed, hardware=hardware())
        # --rows adds to the rows of the work directory: the report covers them all
        self.manifest.setdefault("rows", {}).update(
            {row.name: {**asdict(row), "scale": asdict(row_scale(row, args.scale))} for row in rows})
        self.save_manifest()

    def methods(self, row: Row, link: str) -> list[str]:
        return [method for method in METHODS if (method != "official" or row.official)
                and (method not in CALIBRATED_ONLY or link == "calibrated")
                and (method not in COMPRESSED_METHODS or (row.compressed and link == "realistic"))
                and (self.args.methods is None or method in self.args.methods)]

    def save_manifest(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        staging = self.work / "manifest.json.tmp"
        staging.write_text(json.dumps(self.manifest, indent=2) + "\n")
        staging.replace(self.work / "manifest.json")

    def progress(self, text: str) -> None:
        elapsed = time.perf_counter() - self.began
        print(f"[{self.done}/{self.total} done, {elapsed / 60:.1f} min] {text}", flush=True)

    def run_row(self, row: Row) -> None:
        scale = row_scale(row, self.args.scale, self.args.rounds)
        links = {}
        for link_name in self.args.links:
            links[link_name] = REALISTIC_LINK if link_name == "realistic" else self.calibration(row, scale)
        for link_name, link in links.items():
            for method in self.methods(row, link_name):
                self.run(row, scale, link_name, link, method)

    def calibration(self, row: Row, scale: Scale) -> Link:
        """The link on which upload + download take one round's training (jobs.calibrated_link), from a pilot
        FedAvg job run once per row and recorded in the manifest."""
        record = self.manifest.setdefault("calibration", {}).get(row.name)
        if record is None:
            self.progress(f"{row.name}: pilot FedAvg job, {PILOT_ROUNDS} rounds without a link")
            out_dir = self.work / row.name / "pilot"
            shutil.rmtree(out_dir, ignore_errors=True)
            pilot = run_job("FedAvg.py", job_options(self.args, row, scale, evaluate=False, rounds=PILOT_ROUNDS),
                            out_dir, self.args.job_timeout)
            # the smoke scale trains in less than the latency (SMOKE_BUDGET_S); at the others the floor never binds
            link = calibrated_link(pilot, NUM_CLIENTS, 1.0, CALIBRATION_LATENCY_MS, min_budget_s=SMOKE_BUDGET_S)
            record = {"training_s": steady_mean(pilot.rows, "round_s"),
                      "message_bytes": sum(message_bytes(pilot, NUM_CLIENTS)), "bandwidth_mbit": link.bandwidth_mbit,
                      "latency_ms": link.latency_ms, "command": pilot.command}
            self.manifest["calibration"][row.name] = record
            self.save_manifest()
        return Link(record["bandwidth_mbit"], record["latency_ms"])

    def run(self, row: Row, scale: Scale, link_name: str, link: Link, method: str) -> None:
        run_id = f"{row.name}/{link_name}/{method}"
        out_dir = self.work / run_id
        if (out_dir / "summary.json").is_file():
            self.done += 1
            self.progress(f"{run_id}: complete, skipped")
            return
        shutil.rmtree(out_dir, ignore_errors=True)   # an interrupted run starts again
        script, extra = METHODS[method]
        self.progress(f"{run_id}: {script} {scale.rounds} rounds x {scale.epochs} epoch(s) on "
                      f"{link.bandwidth_mbit:.3g} Mbit/s + {link.latency_ms:g} ms")
        job = run_job(script, job_options(self.args, row, scale, evaluate=True) + extra + link_options(link),
                      out_dir, self.args.job_timeout, check=False)
        if job.status != 0:
            record_divergence(job, out_dir)
        self.manifest["runs"][run_id] = {"row": row.name, "link": link_name, "method": method,
                                         "command": job.command, "elapsed_s": job.elapsed_s,
                                         "output": str(job_output_path(out_dir).relative_to(self.work))}
        self.save_manifest()
        self.done += 1


def record_divergence(job: JobResult, out_dir: Path) -> None:
    """A run that diverged is a result, not a failure: the server's summary.json (from its good rounds) says
    why. Any other failure stops the matrix (rerunning it resumes), with the end of the job's output."""
    reason = job.summary.get("diverged")
    if reason is None:
        tail = job_output_path(out_dir).read_text()[-3000:]
        sys.exit(f"job failed with exit status {job.status}: {job.command}\n{tail}")
    print(f"  diverged: {reason}")


def hardware() -> dict:
    """What the figures were measured on."""
    import torch
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(), "system": platform.platform()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--scale", choices=("quick", "paper", "smoke"), default="quick",
        help="quick: this 2-core CPU; paper: full data; smoke: tests only, 2 tiny rounds")
    add("--data_dir", default="./data", help="data root (see prepare_data.py)")
    add("--work_dir", default=None, help="run directories (default: runs/reproduce-SCALE)")
    add("--rows", nargs="+", choices=[row.name for row in ROWS], default=None, help="rows to run (default: all)")
    add("--links", nargs="+", choices=("calibrated", "realistic"), default=["calibrated", "realistic"])
    add("--seed", type=int, default=2020)
    add("--job_timeout", type=float, default=7200.0, help="seconds before a job is declared hung")
    add("--report", default=None, help="the report to write at the end (default: WORK_DIR/RESULTS.md)")
    add("--methods", nargs="+", choices=tuple(METHODS), default=None, help="methods to run (default: all)")
    add("--rounds", type=int, default=None, help="a slice: this many rounds instead of the scale's")
    add("--gpus", default=None, help="pass --gpus to every job (on a GPU machine: 0 puts every rank on GPU 0)")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    args.work_dir = str(Path(args.work_dir or ROOT / "runs" / f"reproduce-{args.scale}").resolve())
    rows = [row for row in ROWS if args.rows is None or row.name in args.rows]
    for row in [row for row in rows if row.optional and not is_prepared(row.dataset, args.data_dir)]:
        print(f"{row.name}: skipped, {row.dataset} is not prepared in {args.data_dir} (see prepare_data.py)")
        rows.remove(row)
    matrix = Matrix(args, rows)
    print(f"reproduce: --scale {args.scale}, {len(rows)} rows, {matrix.total} runs; run directories in "
          f"{args.work_dir}", flush=True)
    for row in rows:
        matrix.run_row(row)
    matrix.progress("matrix complete")

    from results_report import write_report
    report = Path(args.report or Path(args.work_dir) / "RESULTS.md")
    write_report(Path(args.work_dir), report)
    print(f"wrote {report}")


if __name__ == "__main__":
    main()

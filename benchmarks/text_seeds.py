"""The client merge against FedAvg on non-IID text over several seeds: PTB's and WikiText-2's Transformers.

The reproduction matrix judges each row on one seed; on these two rows the gap between the merge and
FedAvg is smaller than the spread between seeds, so this runs them on several. Every cell is a real job
(FedAvg.py, or AsyncFedAvg.py with the client merge at weight b) of the matrix's quick text row, with
its settings as reproduce.py's ROWS gives them (the report names them), and no emulated link: the
schedule, and so every perplexity, does not depend on it. The report gives each cell's perplexity
after the last round and its gap to FedAvg's, per seed; over the seeds, the mean gap and its standard
deviation, the seeds on which the cell reaches the matrix's level (1.02x FedAvg's best) and those on
which it ends below FedAvg; and over rounds 2..R how often and by how much the cell is above FedAvg. A
control runs PTB's first seed with --partition iid. --max_train_samples runs every job on another number
of training tokens than the row's, to see how the gap depends on the shards' size. Finished runs are
reused (a run directory's path holds its size), so an interrupted sweep resumes.

    python benchmarks/text_seeds.py --data_dir ./data                     # writes docs/text-seeds.md
    python benchmarks/text_seeds.py --data_dir ./data --datasets ptb --seeds 2020 2021 --out /tmp/t.md
    python benchmarks/text_seeds.py --data_dir ./data --datasets ptb --max_train_samples 24000   # -ptb-24k.md

Time: about 75 s a PTB job (96,000 tokens) and 80 s a WikiText-2 job on 2 cores, about an hour and a half
for the 66 jobs of the default report; finished runs are not run again.
Figures: docs/text-seeds.md, and PTB on its former 24,000 tokens docs/text-seeds-ptb-24k.md (docs/defaults.md
sums them up).
"""
from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from ablation import CELLS  # noqa: E402
from jobs import finished_or_run  # noqa: E402
from reproduce import NUM_CLIENTS, ROWS, Row, Scale, job_options, row_scale  # noqa: E402

DATASETS = ("ptb", "wikitext2")
# FedAvg first: every gap is to it. The defaults' merge (b = 1), and two smaller merge weights.
DEFAULT_CELLS = ("FedAvg", "local b1 mu0 slr1", "local b0.75 mu0 slr1", "local b0.5 mu0 slr1")
CONTROL_CELLS = ("FedAvg", "local b1 mu0 slr1")
LEVEL = 1.02   # the matrix's level for perplexity: within 1.02x FedAvg's best


@dataclass(frozen=True)
class Job:
    dataset: str
    seed: int
    cell: str
    partition: str = "noniid"


def text_row(dataset: str) -> Row:
    """The reproduction matrix's row of this dataset's Transformer: the settings every job here runs."""
    return next(row for row in ROWS if row.dataset == dataset and row.model == "transformer")


def text_scale(dataset: str, train_tokens: int | None) -> Scale:
    """The row's quick scale, with train_tokens (--max_train_samples) training tokens when given."""
    scale = row_scale(text_row(dataset), "quick")
    return scale if train_tokens is None else replace(scale, train=train_tokens)


def perplexities(job: Job, args) -> list[float]:
    """Perplexity after every round of one job, running it unless a finished run is there."""
    row = text_row(job.dataset)
    scale = text_scale(job.dataset, args.max_train_samples)
    # the size is part of the path: a run of another size is never taken for this one
    out_dir = (Path(args.work_dir) / f"{job.dataset}-{job.partition}-{scale.train}" / f"seed{job.seed}"
               / job.cell.replace(" ", "_"))
    script, cell_options = CELLS[job.cell]
    options = job_options(argparse.Namespace(seed=job.seed, data_dir=args.data_dir, gpus=None), row, scale,
                          evaluate=True, partition=job.partition)
    rows = finished_or_run(script, options + cell_options, out_dir, scale.rounds, args.job_timeout)
    curve = [row["perplexity"] for row in rows]
    if any(math.isnan(value) for value in curve):
        sys.exit(f"{out_dir}/metrics.csv lacks a round's perplexity: delete that run directory and run again")
    print(f"{job.dataset:9s} {job.partition:6s} seed {job.seed} {job.cell:22s} "
          + " ".join(f"{p:.1f}" for p in curve), flush=True)
    return curve


def gap(ours: float, fedavg: float) -> float:
    """How far a perplexity is above FedAvg's, in per cent (negative: below, better)."""
    return 100.0 * (ours / fedavg - 1.0)


def reaches_level(curve: list[float], fedavg: list[float]) -> bool:
    """The matrix's test: the cell's best perplexity within LEVEL x FedAvg's best."""
    return min(curve) <= LEVEL * min(fedavg)


def summary_table(curves: dict[tuple[int, str], list[float]], seeds: list[int], cells: list[str]) -> str:
    """One line per merge cell: the gap after the last round over the seeds, the level, and the rounds."""
    lines = ["| cell | gap after the last round, mean (sd) | from ... to | seeds reaching 1.02x | seeds below FedAvg "
             "| rounds 2..R above FedAvg | gap in rounds 2..R, mean |", "|---|---|---|---|---|---|---|"]
    for cell in cells[1:]:
        finals = [gap(curves[seed, cell][-1], curves[seed, "FedAvg"][-1]) for seed in seeds]
        per_round = [gap(ours, theirs) for seed in seeds
                     for ours, theirs in zip(curves[seed, cell][1:], curves[seed, "FedAvg"][1:], strict=True)]
        spread = f"{statistics.stdev(finals):.1f} %" if len(finals) > 1 else "-"
        level = sum(reaches_level(curves[seed, cell], curves[seed, "FedAvg"]) for seed in seeds)
        below = sum(value < 0 for value in finals)
        above = sum(value > 0 for value in per_round)
        lines.append(f"| {cell} | {statistics.fmean(finals):+.1f} % ({spread}) | {min(finals):+.1f} to "
                     f"{max(finals):+.1f} % | {level} of {len(seeds)} | {below} of {len(seeds)} | {above} of "
                     f"{len(per_round)} | {statistics.fmean(per_round):+.1f} % |")
    return "\n".join(lines)


def by_round_table(curves: dict[tuple[int, str], list[float]], seeds: list[int], cells: list[str]) -> str:
    """The mean gap to FedAvg at every round, over the seeds."""
    rounds = len(curves[seeds[0], "FedAvg"])
    lines = ["| cell | " + " | ".join(f"round {r}" for r in range(1, rounds + 1)) + " |",
             "|---|" + "---|" * rounds]
    for cell in cells[1:]:
        means = [statistics.fmean(gap(curves[seed, cell][r], curves[seed, "FedAvg"][r]) for seed in seeds)
                 for r in range(rounds)]
        lines.append(f"| {cell} | " + " | ".join(f"{m:+.1f} %" for m in means) + " |")
    return "\n".join(lines)


def per_seed_table(curves: dict[tuple[int, str], list[float]], seeds: list[int], cells: list[str]) -> str:
    """Every seed's perplexity after the last round, and each merge cell's gap (✓: it reaches the level)."""
    lines = ["| seed | " + " | ".join(cells) + " |", "|---|" + "---|" * len(cells)]
    for seed in seeds:
        fedavg = curves[seed, "FedAvg"]
        shown = [f"{fedavg[-1]:.1f}"] + [
            f"{curves[seed, cell][-1]:.1f} ({gap(curves[seed, cell][-1], fedavg[-1]):+.1f} %"
            f"{', ✓' if reaches_level(curves[seed, cell], fedavg) else ''})" for cell in cells[1:]]
        lines.append(f"| {seed} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def curves_table(curves: dict[tuple[int, str], list[float]], seed: int, cells: list[str]) -> str:
    lines = ["| cell | perplexity per round |", "|---|---|"]
    lines += [f"| {cell} | " + " ".join(f"{p:.1f}" for p in curves[seed, cell]) + " |" for cell in cells]
    return "\n".join(lines)


def row_settings(dataset: str, train_tokens: int | None) -> str:
    """What a dataset's text row runs, in words, from its quick scale and options."""
    row = text_row(dataset)
    scale = text_scale(dataset, train_tokens)
    resized = "" if scale.train == row.quick.train else f" (the matrix's row: {row.quick.train:,})"
    return (f"{scale.rounds} rounds of {scale.epochs} local epoch{'s' if scale.epochs > 1 else ''} on "
            f"{scale.train:,} training tokens{resized}, {scale.test:,} test tokens, `{' '.join(row.options)}`")


def header(command: str, seeds: list[int], datasets: list[str], train_tokens: int | None = None) -> str:
    """The report's title and how to read it, with each row's settings as the matrix defines them."""
    settings = {dataset: row_settings(dataset, train_tokens) for dataset in datasets}
    if len(set(settings.values())) == 1:   # the rows agree: say it once
        settings = {"both": settings[datasets[0]]} if len(datasets) > 1 else settings
    shown = "; ".join(f"{dataset}: {text}" for dataset, text in settings.items())
    return (f"# The client merge on non-IID text, over {len(seeds)} seed{'s' if len(seeds) > 1 else ''}\n\n"
            f"Generated by `{command}` from real jobs: the reproduction matrix's quick Transformer rows "
            f"({NUM_CLIENTS} non-IID clients; {shown}), run on every seed. A cell's gap is its "
            "perplexity over FedAvg's at the same round, minus 1 (negative: below FedAvg, better); it reaches "
            f"the level when its best perplexity is within {LEVEL}x FedAvg's best, as in the matrix. Cells: "
            "`local bB mu0 slr1` is AsyncFedAvg.py with `--compensation local --merge_weight B --mom 0 "
            "--server_lr 1` (b = 1: the defaults). Which way the gap goes, and why: "
            "[defaults.md](defaults.md#where-the-merge-trails-fedavg-non-iid-text).")


def control_section(seed: int, args) -> list[str]:
    """PTB with --partition iid: the same pipeline where every client's slice holds the same words."""
    control = {(seed, cell): perplexities(Job("ptb", seed, cell, "iid"), args) for cell in CONTROL_CELLS}
    final_gap = gap(control[seed, CONTROL_CELLS[1]][-1], control[seed, "FedAvg"][-1])
    return [f"## Control: ptb, IID, seed {seed}",
            "The same job with `--partition iid`: every client's slice holds the same words.",
            curves_table(control, seed, list(CONTROL_CELLS)), f"Gap after the last round: {final_gap:+.1f} %."]


def default_report(datasets: list[str], train_tokens: int | None) -> str:
    """Where the report goes without --out: a resized sweep gets a file of its own, named by its size."""
    resized = "" if train_tokens is None else f"-{'-'.join(datasets)}-{train_tokens / 1000:g}k"
    return f"docs/text-seeds{resized}.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    add("--seeds", nargs="+", type=int, default=list(range(2020, 2028)))
    add("--cells", nargs="+", choices=DEFAULT_CELLS[1:], default=list(DEFAULT_CELLS[1:]),
        help="the merge cells to run (FedAvg always runs: every gap is to it)")
    add("--no_control", action="store_true", help="skip the --partition iid control on PTB's first seed")
    add("--max_train_samples", type=int, default=None,
        help="training tokens of every job (default: the matrix row's); the report says which")
    add("--data_dir", default="./data", help="data root holding ptb/ and wikitext-2/ (see prepare_data.py)")
    add("--work_dir", default="runs/text-seeds", help="run directories; finished runs are reused")
    add("--out", default=None, help="markdown report to write (default: docs/text-seeds.md, and with "
        "--max_train_samples N docs/text-seeds-DATASETS-Nk.md)")
    add("--job_timeout", type=float, default=1800.0, help="seconds before a job is declared hung")
    args = parser.parse_args()
    if args.max_train_samples is not None and args.max_train_samples < 1:
        sys.exit(f"error: --max_train_samples {args.max_train_samples}: give a positive number of tokens")
    args.out = args.out or default_report(args.datasets, args.max_train_samples)
    args.data_dir = str(Path(args.data_dir).resolve())
    args.work_dir = str(Path(args.work_dir).resolve())
    cells = ["FedAvg", *(cell for cell in DEFAULT_CELLS[1:] if cell in args.cells)]
    seeds = sorted(set(args.seeds))

    command = ["python benchmarks/text_seeds.py", "--datasets", *args.datasets, "--seeds", *map(str, seeds)]
    if cells != list(DEFAULT_CELLS):
        command += ["--cells", *map(shlex.quote, cells[1:])]
    if args.no_control:
        command.append("--no_control")
    if args.max_train_samples is not None:
        command += ["--max_train_samples", str(args.max_train_samples)]
    sections = [header(" ".join(command), seeds, args.datasets, args.max_train_samples)]
    for dataset in args.datasets:
        curves = {(seed, cell): perplexities(Job(dataset, seed, cell), args) for seed in seeds for cell in cells}
        sections += [f"## {dataset}, non-IID", summary_table(curves, seeds, cells),
                     "Mean gap at every round:", by_round_table(curves, seeds, cells),
                     "Perplexity after the last round, per seed:", per_seed_table(curves, seeds, cells)]
    if "ptb" in args.datasets and not args.no_control:
        sections += control_section(seeds[0], args)
    report = "\n\n".join(sections) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

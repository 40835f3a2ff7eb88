"""Ablation behind AsyncFedAvg.py's defaults, judged by time to a target accuracy.

Every cell is a real job (FedAvg.py / AsyncFedAvg.py, 4 non-IID clients, no emulated link, evaluated
every round) in the four settings of bench_time_to_accuracy.py (MNIST/MLP and Fashion-MNIST/MnistNet at
1 and 5 local epochs per round). Finished runs are reused, so an interrupted sweep resumes.

The schedule is fixed, so accuracy per round does not depend on the link; wall-clock does. The tables
model it for a link on which upload + download take one round's training T (the regime the method is
for), with modelled_time, the one time model of the benchmarks: FedAvg's G_n exists after n (T + T) = 2nT;
Overlap's after (n + 1) T, since its trainings run back to back and G_n comes one exchange after the n-th.
bench_time_to_accuracy.py measures the wall-clock instead (Overlap round 0.52x FedAvg's on that link).
The ratio of the time to a target to FedAvg's is the criterion; final accuracy after the same rounds
comes second; stability third (no round more than 2 points below the one before). Defaults are chosen on
seeds other than the one the README reports (--seeds).

    python benchmarks/ablation.py --data_dir ./data --seeds 2021 --out docs/ablation-2021.md
    python benchmarks/ablation.py --data_dir ./data --settings mnist-e1 --seeds 2020
    python benchmarks/ablation.py --data_dir ./data --cells FedAvg "local b1 mu0 slr1"   # some cells only

Time: about an hour per seed on 2 cores for the 17 cells x 4 settings (an estimate from the settings' round
times: about 3.5 minutes a cell); finished runs are not run again.
Figures: docs/ablation.md (docs/defaults.md sums it up).
"""
from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from bench_time_to_accuracy import NUM_CLIENTS, SETTINGS, Setting  # noqa: E402
from jobs import finished_or_run  # noqa: E402

# name -> (script, options). FedAvgM uses the Nesterov server step Overlap uses with mu 0.9.
CELLS = {
    "FedAvg": ("FedAvg.py", []),
    "FedAvgM mu0.9 slr0.4": ("FedAvg.py", ["--mom", "0.9", "--server_lr", "0.4"]),
    "full mu0.9 slr0.4": ("AsyncFedAvg.py", ["--compensation", "full", "--mom", "0.9", "--server_lr", "0.4"]),
    "full mu0 slr1": ("AsyncFedAvg.py", ["--compensation", "full", "--mom", "0", "--server_lr", "1"]),
    **{f"C={c} mu0 slr1": ("AsyncFedAvg.py", ["--compensation", "constant", "--comp_coef", c, "--mom", "0",
                                              "--server_lr", "1"]) for c in ("0.25", "0.5", "0.75")},
    "C=0.5 mu0.5 slr0.5": ("AsyncFedAvg.py", ["--compensation", "constant", "--comp_coef", "0.5", "--mom", "0.5",
                                              "--server_lr", "0.5"]),
    "C=0.5 mu0.9 slr0.4": ("AsyncFedAvg.py", ["--compensation", "constant", "--comp_coef", "0.5", "--mom", "0.9",
                                              "--server_lr", "0.4"]),
    "secant mu0 slr1": ("AsyncFedAvg.py", ["--compensation", "secant", "--mom", "0", "--server_lr", "1"]),
    "secant mu0.5 slr0.5": ("AsyncFedAvg.py", ["--compensation", "secant", "--mom", "0.5", "--server_lr", "0.5"]),
    "secant mu0.9 slr0.4": ("AsyncFedAvg.py", ["--compensation", "secant", "--mom", "0.9", "--server_lr", "0.4"]),
    # The client merge: b = 1 keeps all of a client's progress, b < 1 mixes in the late global model.
    **{f"local b{b} mu0 slr1": ("AsyncFedAvg.py", ["--compensation", "local", "--merge_weight", b, "--mom", "0",
                                                   "--server_lr", "1"]) for b in ("1", "0.75", "0.5")},
    "local b1 mu0.5 slr0.5": ("AsyncFedAvg.py", ["--compensation", "local", "--merge_weight", "1", "--mom", "0.5",
                                                 "--server_lr", "0.5"]),
    "local b1 mu0.9 slr0.4": ("AsyncFedAvg.py", ["--compensation", "local", "--merge_weight", "1", "--mom", "0.9",
                                                 "--server_lr", "0.4"]),
}
MAX_DROP = 0.02


def modelled_time(rounds: int, script: str) -> float:
    """Time, in units of one round's training T, until G_rounds exists on a link where upload + download take
    T: FedAvg alternates, 2T a round; Overlap trains back to back and G_n arrives one exchange after its
    n-th training, (n + 1) T."""
    return 2.0 * rounds if script == "FedAvg.py" else rounds + 1.0


def round_time(script: str) -> float:
    """What one more round adds to modelled_time once the rounds run, in units of T: FedAvg 2, Overlap 1."""
    return modelled_time(1, script) - modelled_time(0, script)


def modelled_ratio(rounds: int | None, fedavg_rounds: int | None, script: str = "AsyncFedAvg.py") -> float | None:
    """A cell's modelled time to a target over FedAvg's; inf when only FedAvg got there, None when FedAvg did not."""
    if fedavg_rounds is None:
        return None
    return math.inf if rounds is None else modelled_time(rounds, script) / modelled_time(fedavg_rounds, "FedAvg.py")


def run(cell: str, setting_name: str, seed: int, args) -> list[float]:
    """Accuracy after every round of one cell, running the job unless a finished run is there."""
    setting: Setting = SETTINGS[setting_name]
    script, options = CELLS[cell]
    out_dir = Path(args.work_dir) / f"seed{seed}" / setting_name / cell.replace(" ", "_").replace("=", "")
    options = ["--dataset", setting.dataset, "--model", setting.model, "--world_size", str(NUM_CLIENTS + 1),
               "--client_epoch", str(setting.epochs), "--max_epoch", str(setting.rounds), "--seed", str(seed),
               "--data_dir", args.data_dir, *options]
    if setting.subset:
        options += ["--max_train_samples", str(setting.subset)]
    rows = finished_or_run(script, options, out_dir, setting.rounds, args.job_timeout)
    accuracy = [row["accuracy"] for row in rows]
    print(f"seed {seed} {setting_name:9s} {cell:22s} " + " ".join(f"{a:.4f}" for a in accuracy), flush=True)
    return accuracy


def rounds_to(curve: list[float], target: float) -> int | None:
    return next((index for index, accuracy in enumerate(curve, 1) if accuracy >= target), None)


def time_ratios(curves: dict[str, list[float]], setting: Setting) -> dict[str, list[float]]:
    """Per cell, its modelled time to each target FedAvg reaches, over FedAvg's (never reached: inf)."""
    ratios = {}
    for cell, curve in curves.items():
        values = []
        for target in setting.targets:
            ratio = modelled_ratio(rounds_to(curve, target), rounds_to(curves["FedAvg"], target), CELLS[cell][0])
            if ratio is not None:
                values.append(ratio)
        ratios[cell] = values
    return ratios


def table(setting_name: str, seed: int, curves: dict[str, list[float]]) -> str:
    setting = SETTINGS[setting_name]
    ratios = time_ratios(curves, setting)
    size = f"{setting.subset:,}-sample subset" if setting.subset else "full training set"
    lines = [f"### {setting_name}: {setting.dataset}/{setting.model}, {setting.epochs} local epoch(s) x "
             f"{setting.rounds} rounds, {size}, seed {seed}", "",
             "| cell | " + " | ".join(f"to {100 * t:g} %: rounds, time / FedAvg" for t in setting.targets) +
             " | final | min drop | accuracy per round |",
             "|---|" + "---|" * len(setting.targets) + "---|---|---|"]
    for cell, curve in curves.items():
        cells, ratio_iter = [], iter(ratios[cell])
        for target in setting.targets:
            ours = rounds_to(curve, target)
            ratio = next(ratio_iter) if rounds_to(curves["FedAvg"], target) is not None else None
            shown = "-" if ours is None else str(ours)
            cells.append(shown + ("" if ratio is None else f", {ratio:.2f}x" if math.isfinite(ratio) else ", never"))
        drops = [b - a for a, b in zip(curve, curve[1:], strict=False)]
        min_drop = min(drops) if drops else 0.0
        mark = " ↓" if min_drop < -MAX_DROP else ""
        lines.append(f"| {cell} | " + " | ".join(cells) + f" | **{curve[-1]:.4f}** | {min_drop:+.4f}{mark} | "
                     + " ".join(f"{a:.4f}" for a in curve) + " |")
    return "\n".join(lines)


def ranking(all_curves: dict[tuple[str, int], dict[str, list[float]]]) -> str:
    """Overlap cells ranked by the geometric mean of their time ratios over every (setting, seed, target),
    then by final accuracy, then by stability (the issue's order)."""
    scores = []
    for cell in next(iter(all_curves.values())):
        if CELLS[cell][0] != "AsyncFedAvg.py":
            continue
        ratios, finals, worst_drop = [], [], 0.0
        for (setting_name, _), curves in all_curves.items():
            ratios += time_ratios(curves, SETTINGS[setting_name])[cell]
            curve = curves[cell]
            finals.append(curve[-1] - curves["FedAvg"][-1])
            worst_drop = min([worst_drop] + [b - a for a, b in zip(curve, curve[1:], strict=False)])
        if not ratios:   # FedAvg reached none of the targets: nothing to compare
            geo = math.nan
        elif all(map(math.isfinite, ratios)):
            geo = math.exp(statistics.fmean(math.log(r) for r in ratios))
        else:
            geo = math.inf
        scores.append((geo, -statistics.fmean(finals), worst_drop < -MAX_DROP, cell,
                       max(ratios) if ratios else math.nan, worst_drop))
    lines = ["| rank | cell | time / FedAvg (geometric mean) | worst | final - FedAvg's (mean, points) | "
             "worst drop (points) |", "|---|---|---|---|---|---|"]
    for rank, (geo, neg_final, unstable, cell, worst, drop) in enumerate(sorted(scores), 1):
        mean_shown = "misses a target" if math.isinf(geo) else f"{geo:.3f}"
        worst_shown = "-" if math.isinf(worst) else f"{worst:.2f}"
        lines.append(f"| {rank} | {cell} | {mean_shown} | {worst_shown} | {-100 * neg_final:+.2f} | "
                     f"{100 * drop:+.2f}{' ↓' if unstable else ''} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=tuple(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[2021])
    parser.add_argument("--cells", nargs="+", choices=tuple(CELLS), default=list(CELLS),
                        help="the cells to run (FedAvg always runs: every ratio is to it)")
    parser.add_argument("--data_dir", default="./data")
    parser.add_argument("--work_dir", default="runs/ablation")
    parser.add_argument("--out", default="docs/ablation.md", help="markdown report to write")
    parser.add_argument("--job_timeout", type=float, default=3600.0, help="seconds before a job is declared hung")
    args = parser.parse_args()
    args.data_dir = str(Path(args.data_dir).resolve())
    args.work_dir = str(Path(args.work_dir).resolve())

    all_curves, sections = {}, []
    for seed in args.seeds:
        for setting_name in args.settings:
            cells = ["FedAvg"] + [cell for cell in CELLS if cell in args.cells and cell != "FedAvg"]
            curves = {cell: run(cell, setting_name, seed, args) for cell in cells}
            all_curves[(setting_name, seed)] = curves
            sections.append(table(setting_name, seed, curves))
    command = " ".join(["python benchmarks/ablation.py", "--settings", *args.settings,
                        "--seeds", *map(str, args.seeds)]
                       + (["--cells", *(shlex.quote(c) for c in args.cells)] if set(args.cells) != set(CELLS) else []))
    header = (f"# Ablation: time to target accuracy\n\nGenerated by `{command}` from real jobs. Time is modelled "
              "for a link on which upload + download take one round's training T: FedAvg's G_n exists after 2nT, "
              "Overlap's after (n + 1) T (see the script's docstring). `never`: FedAvg reached the target, the "
              "cell did not. ↓: some round fell more than 2 points below the one before.")
    report = "\n\n".join([header, "## Ranking of the Overlap cells", ranking(all_curves), *sections]) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Plot runs against each other: test metric per round and per second of wall-clock, into one PNG.

    python -m Utils.tools.plot RUN_DIR [RUN_DIR ...] --out FILE.png [--title TEXT]

Each RUN_DIR is a run directory (config.json and metrics.csv). The left panel shows the metric against the
round, the right one against seconds since launch (wall_s: when each global model existed, so evaluation
time is not in it). The legend names each run by its method: FedAvg, FedAvgM or Overlap-FedAvg, with the
server settings that tell runs of the same method apart. matplotlib is optional:
`pip install -r requirements-plot.txt`.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

METRIC_LABELS = {"accuracy": "test accuracy (%)", "perplexity": "test perplexity"}


@dataclass(frozen=True)
class RunCurve:
    label: str
    metric: str
    rounds: list[int]
    wall_s: list[float]
    values: list[float]   # accuracy in %, or perplexity
    style: str = "-"      # matplotlib line style
    color: str | None = None   # None: the next colour of the cycle


def read_run(run_dir: Path) -> RunCurve:
    """A run's evaluated rounds and its method label; ValueError naming what is missing."""
    config_path, metrics_path = run_dir / "config.json", run_dir / "metrics.csv"
    for path in (config_path, metrics_path):
        if not path.is_file():
            raise ValueError(f"{run_dir} is not a run directory: {path.name} is missing")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error})") from None
    with metrics_path.open() as f:
        rows = list(csv.DictReader(f))
    metric = "perplexity" if rows and "perplexity" in rows[0] else "accuracy"
    missing = {"round", "wall_s", metric} - set(rows[0] if rows else ())
    if rows and missing:
        raise ValueError(f"{metrics_path} has no {', '.join(sorted(missing))} column: is it a metrics.csv of this "
                         f"project?")
    scale = 100.0 if metric == "accuracy" else 1.0
    evaluated = [r for r in rows if r.get(metric)]
    if not evaluated:
        raise ValueError(f"{metrics_path}: no evaluated round to plot (was it run with --eval_every 0?)")
    return RunCurve(method_label(config), metric, [int(r["round"]) for r in evaluated],
                    [float(r["wall_s"]) for r in evaluated], [float(r[metric]) * scale for r in evaluated])


def method_label(config: dict) -> str:
    """FedAvg, FedAvgM (a server step other than plain averaging) or Overlap-FedAvg with its compensation."""
    plain_step = config.get("mom", 0) == 0 and config.get("server_lr", 1) == 1
    if not config.get("overlap"):
        return "FedAvg" if plain_step else f"FedAvgM (mu {config['mom']:g}, server lr {config['server_lr']:g})"
    step = "" if plain_step else f", mu {config['mom']:g}, server lr {config['server_lr']:g}"
    compensation = config.get("compensation", "?")
    if compensation == "local":
        compensation = f"client merge b {config.get('merge_weight', 1.0):g}"
    return f"Overlap-FedAvg ({compensation}{step})"


def named_apart(curves: list[RunCurve], run_dirs: list[Path]) -> list[RunCurve]:
    """The curves, those whose method label another shares labelled with their run directory's name too."""
    labels = [curve.label for curve in curves]
    return [curve if labels.count(curve.label) == 1 else replace(curve, label=f"{curve.label}: {run_dir.name}")
            for curve, run_dir in zip(curves, run_dirs, strict=True)]


def plot_runs(curves: list[RunCurve], out_file: Path, title: str | None = None) -> None:
    """Two panels (metric against round, against wall-clock), one line per run, saved as a PNG."""
    plot_panels(curves, curves, out_file, title)


def plot_panels(by_round_curves: list[RunCurve], by_time_curves: list[RunCurve], out_file: Path,
                title: str | None = None, targets: tuple[float, ...] = ()) -> None:
    """The metric against round (left) and against wall-clock (right, with the legend), saved as a PNG;
    `targets` (accuracy as a fraction, or perplexity) are drawn as grey lines."""
    import matplotlib
    matplotlib.use("Agg")   # files only: no display needed
    import matplotlib.pyplot as plt

    figure, (by_round, by_time) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for axes, curves, x in ((by_round, by_round_curves, "rounds"), (by_time, by_time_curves, "wall_s")):
        for curve in curves:
            axes.plot(getattr(curve, x), curve.values, curve.style, marker="o", markersize=3, label=curve.label,
                      color=curve.color)
    by_round.set_xlabel("round")
    by_time.set_xlabel("wall-clock since launch (s)")
    curves = by_round_curves + by_time_curves
    by_round.set_ylabel(METRIC_LABELS[curves[0].metric])
    if curves[0].metric == "perplexity" and max(v for c in curves for v in c.values) > 10 * min(
            v for c in curves for v in c.values):
        by_round.set_yscale("log")
    for axes in (by_round, by_time):
        axes.grid(alpha=0.3)
        for index, target in enumerate(targets or ()):
            axes.axhline(target * (100.0 if curves[0].metric == "accuracy" else 1.0), color="grey",
                         linestyle=":", linewidth=1, label="targets" if axes is by_time and index == 0 else None)
    by_time.legend(loc="best", fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_file, dpi=90)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m Utils.tools.plot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories to compare")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--title", default=None, help="figure title (default: none)")
    args = parser.parse_args(argv)
    if args.out.suffix.lower() != ".png":
        parser.error(f"--out {args.out}: the plot is written as PNG; give a file name ending in .png")
    try:
        curves = named_apart([read_run(run_dir) for run_dir in args.run_dirs], args.run_dirs)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len({curve.metric for curve in curves}) > 1:
        print("error: the runs mix accuracy and perplexity; plot image and text runs separately", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("plotting needs matplotlib: pip install -r requirements-plot.txt", file=sys.stderr)
        return 2
    plot_runs(curves, args.out, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

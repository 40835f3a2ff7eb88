"""Logging with the rank in every line, and the run directory's metrics.csv (docs/outputs.md, "The run directory")."""
from __future__ import annotations

import csv
import logging
import math
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

# Columns other tools read by name (docs/outputs.md, "The run directory"); the metric column is accuracy or perplexity.
METRIC_COLUMNS = ("round", "{metric}", "test_loss", "train_loss", "round_s", "train_s", "comm_wait_s",
                  "comm_s", "bytes_up", "bytes_down", "wall_s", "comp_coef", "eval_s", "waited_for")


class _BarSafeHandler(logging.StreamHandler):
    """Writes each line through tqdm.write, which lifts a progress bar drawn on the same stream out of
    the way and redraws it below, so that log lines and the bar never tear each other."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # noqa: BLE001 - logging's own policy: report and carry on
            self.handleError(record)


def setup_logging(rank: int | None, log_file: Path | None = None, level: int = logging.INFO) -> None:
    """Log to stderr (and optionally a file) with the rank in the format; replaces earlier handlers."""
    # tqdm's default lock holds a multiprocessing semaphore, which a rank stopped by SIGTERM (Ctrl-C, a failed
    # peer) never releases: the resource tracker then warns of a leak. One process draws the bar, so a
    # thread lock is all it needs.
    tqdm.set_lock(threading.RLock())
    who = "launcher" if rank is None else f"rank {rank}"
    formatter = logging.Formatter(f"%(asctime)s [{who}] %(levelname)s %(message)s", datefmt="%H:%M:%S")
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [_BarSafeHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)


def higher_is_better(metric: str) -> bool:
    return metric == "accuracy"


class MetricsWriter:
    """Appends one row per round to metrics.csv and flushes it, so a crashed run keeps its rows.
    `rows`: the rows a resumed run keeps; the file is rewritten with exactly those first (atomically)."""

    def __init__(self, path: Path, metric: str, rows: Sequence[dict] = ()):
        self.columns = [c.format(metric=metric) for c in METRIC_COLUMNS]
        staging = path.with_name(path.name + ".tmp")
        with staging.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows({c: _format(row.get(c)) for c in self.columns} for row in rows)
        staging.replace(path)
        self._file = path.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)
        self.rows: list[dict] = list(rows)

    def write(self, row: dict) -> None:
        self._writer.writerow({c: _format(row.get(c)) for c in self.columns})
        self._file.flush()
        self.rows.append(row)

    def close(self) -> None:
        self._file.close()


class TensorBoardLog:
    """--tensorboard: the rows of metrics.csv as TensorBoard scalars (RUN_DIR/tensorboard), step = round, so
    that a run can be watched live with `tensorboard --logdir runs`."""

    COLUMNS = ("{metric}", "test_loss", "train_loss", "round_s", "train_s", "comm_s", "comm_wait_s", "bytes_up",
               "bytes_down", "comp_coef")

    def __init__(self, folder: Path, metric: str):
        from torch.utils.tensorboard import SummaryWriter  # optional: requirements-tensorboard.txt
        self._writer = SummaryWriter(log_dir=str(folder))
        self._columns = [c.format(metric=metric) for c in self.COLUMNS]

    def write(self, row: dict) -> None:
        for column in self._columns:
            if _is_number(row.get(column)):
                self._writer.add_scalar(column, row[column], global_step=row["round"])
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


# Targets whose time summary.json reports (accuracy up, perplexity down). The MNIST ones are the
# time-to-accuracy benchmark's; the others mark early, middle and late progress of a full-data run.
SUMMARY_TARGETS = {
    "mnist": (0.93, 0.95, 0.97), "fmnist": (0.70, 0.80, 0.85), "emnist": (0.70, 0.80, 0.85),
    "cifar10": (0.40, 0.50, 0.60), "cifar100": (0.20, 0.30, 0.40),
    "wikitext2": (500.0, 300.0, 200.0), "ptb": (500.0, 300.0, 200.0),
}


def best_row(rows: list[dict], metric: str) -> dict | None:
    """The evaluated row with the best metric (accuracy highest, perplexity lowest; the first of equals)."""
    scored = [row for row in rows if _is_number(row.get(metric))]
    if not scored:
        return None
    return (max if higher_is_better(metric) else min)(scored, key=lambda row: row[metric])


def first_reaching(rows: list[dict], metric: str, target: float) -> dict | None:
    """The first row whose metric reaches `target` (accuracy at least, perplexity at most), or None."""
    return next((row for row in rows if _is_number(row.get(metric))
                 and (row[metric] >= target if higher_is_better(metric) else row[metric] <= target)), None)


def time_to_target_s(rows: list[dict], metric: str, target: float, startup_s: float) -> float | None:
    """Seconds after start-up until the first row whose metric reaches `target` (wall_s - startup_s: training
    and communication only), or None when no row does."""
    reached = first_reaching(rows, metric, target)
    return None if reached is None else reached["wall_s"] - startup_s


def summarise_rows(rows: list[dict], metric: str, targets: tuple[float, ...], startup_s: float) -> dict:
    """What summary.json holds about the rounds: metrics, mean round figures (rounds 2..R, the first being
    warm-up; round 1 alone when that is all), bytes moved, the share of communication that training hid,
    and the time to each target."""
    def mean(column: str) -> float | None:
        values = [r[column] for r in (rows[1:] or rows) if _is_number(r.get(column))]
        return sum(values) / len(values) if values else None

    scored = [(r[metric], r["round"]) for r in rows if _is_number(r.get(metric))]
    best = best_row(rows, metric)
    best = (best[metric], best["round"]) if best else None
    comm = sum(r["comm_s"] for r in rows if _is_number(r.get("comm_s")))
    waited = sum(r["comm_wait_s"] for r in rows if _is_number(r.get("comm_wait_s")))
    return {
        "rounds": len(rows), "final": scored[-1][0] if scored else None, "best": best[0] if best else None,
        "best_round": best[1] if best else None, "startup_s": startup_s,
        "rounds_wall_s": rows[-1]["wall_s"] if rows else None,
        "mean_round_s": mean("round_s"), "mean_train_s": mean("train_s"), "mean_comm_s": mean("comm_s"),
        "mean_comm_wait_s": mean("comm_wait_s"),
        "hidden_comm_share": min(max(1 - waited / comm, 0.0), 1.0) if comm > 0 else None,
        "bytes_up": sum(r.get("bytes_up") or 0 for r in rows),
        "bytes_down": sum(r.get("bytes_down") or 0 for r in rows),
        "time_to_target_s": {f"{t:g}": time_to_target_s(rows, metric, t, startup_s) for t in targets},
    }


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _format(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)

"""Logging with the rank in every line, and the run directory's metrics.csv (DESIGN §5)."""
from __future__ import annotations

import csv
import logging
import math
import sys
from pathlib import Path

from tqdm import tqdm

# Columns other tools read by name (DESIGN §5); the metric column is accuracy or perplexity.
METRIC_COLUMNS = ("round", "{metric}", "test_loss", "train_loss", "round_s", "train_s", "comm_wait_s",
                  "comm_s", "bytes_up", "bytes_down", "wall_s", "comp_coef", "eval_s")


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
    """Appends one row per round to metrics.csv and flushes it, so a crashed run keeps its rows."""

    def __init__(self, path: Path, metric: str):
        self.metric = metric
        self.columns = [c.format(metric=metric) for c in METRIC_COLUMNS]
        self._file = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)
        self._writer.writeheader()
        self._file.flush()
        self.rows: list[dict] = []

    def write(self, row: dict) -> None:
        self._writer.writerow({c: _format(row.get(c)) for c in self.columns})
        self._file.flush()
        self.rows.append(row)

    def close(self) -> None:
        self._file.close()

    def best(self) -> tuple[float, int] | None:
        """(best metric, its round) over the evaluated rounds."""
        scored = [(r[self.metric], r["round"]) for r in self.rows if _is_number(r.get(self.metric))]
        if not scored:
            return None
        pick = max if higher_is_better(self.metric) else min
        return pick(scored, key=lambda pair: pair[0])


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _format(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)

"""Several runs of one job (AsyncFedAvg.py, options in Utils.config.SearchConfig): a grid, or an optuna search.

Each run is a whole job with its own run directory; runs go one after another.
"""
from __future__ import annotations

import itertools
import logging
import math
import sys
from dataclasses import replace
from pathlib import Path

from Characters.launch import EXIT_INTERRUPTED, exit_process, launch
from Utils.config import RunConfig, SearchConfig
from Utils.data.datasets import dataset_metric
from Utils.run_log import higher_is_better

log = logging.getLogger(__name__)


def prune_reason(metric: str) -> str:
    """Why an early-stopped trial was pruned: its metric on the wrong side of the bar (perplexity: above)."""
    return f"{metric} {'below' if higher_is_better(metric) else 'above'} the --optuna_early_stop bar"


def _run_dir(base: RunConfig, tag: str) -> str | None:
    """Grid members go below --out_dir when it is given, else each gets its own runs/ folder."""
    return str(Path(base.out_dir) / tag) if base.out_dir else None


def run_grid(base: RunConfig, grid: dict[str, tuple]) -> None:
    """Run every combination of the grid's values (RunConfig field -> values); end with a summary table.
    Exits non-zero if any run failed."""
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    if len(combos) == 1:
        status, _ = launch(replace(base, **combos[0]))
        exit_process(status)
    results = []
    for combo in combos:
        tag = "-".join(f"{name}{value:g}" for name, value in combo.items())
        cfg = replace(base, **combo, out_dir=_run_dir(base, tag))
        log.info("grid run %d/%d: %s", len(results) + 1, len(combos), tag)
        status, summary = launch(cfg)
        results.append((combo, status, summary))
        if status == EXIT_INTERRUPTED:   # Ctrl-C stops the whole grid
            break
    log.info("grid summary:\n%s", format_table(results))
    exit_process(max(status for _, status, _ in results))


def format_table(results: list[tuple[dict, int, dict | None]]) -> str:
    """One line per run: its grid values, final and best metric, wall time and run directory."""
    lines = [" ".join(f"{name:>10}" for name in results[0][0]) + f" {'final':>9} {'best':>9} {'wall_s':>8}"
             "  run directory"]
    for combo, status, summary in results:
        values = " ".join(f"{value:>10g}" for value in combo.values())
        if summary is None:
            lines.append(f"{values} {'failed':>9} {'':>9} {'':>8}  (exit {status})")
            continue
        lines.append(f"{values} {summary['final']:>9.4f} {summary['best']:>9.4f} {summary['wall_s']:>8.1f}  "
                     f"{summary['out_dir']}")
    return "\n".join(lines)


def study_direction(dataset: str) -> tuple[str, str]:
    """The metric a search optimises and its direction: accuracy up, perplexity down."""
    metric = dataset_metric(dataset)
    return metric, "maximize" if higher_is_better(metric) else "minimize"


def run_optuna(base: RunConfig, search: SearchConfig) -> None:
    """Search with optuna; maximise accuracy, minimise perplexity. Early-stopped trials count as pruned."""
    try:
        import optuna  # optional: only this path needs it
    except ImportError:
        log.error("--optuna needs the optuna package: pip install optuna")
        sys.exit(2)
    metric, direction = study_direction(base.dataset)
    optuna.logging.set_verbosity(optuna.logging.WARNING)   # one line per trial, ours
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=base.seed))
    for _ in range(search.optuna_trials):
        trial = study.ask()
        # The learning rate on a log scale; a parameter without a search range keeps the run's value.
        suggested = {name: trial.suggest_float(name, low, high, log=name == "lr")
                     for name, (low, high) in search.optuna_ranges.items()}
        shown = _params_text(suggested)
        status, summary = launch(replace(base, **suggested, out_dir=_run_dir(base, f"trial{trial.number}")))
        if status == EXIT_INTERRUPTED:   # Ctrl-C stops the whole search
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.error("optuna: interrupted in trial %d", trial.number)
            exit_process(EXIT_INTERRUPTED)
        if status != 0 or summary is None:   # the launcher said why; the search goes on
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.warning("optuna: trial %d (%s) failed with exit %d", trial.number, shown, status)
        elif summary["stopped_early"]:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            log.info("optuna: trial %d (%s) pruned: %s", trial.number, shown, prune_reason(metric))
        else:
            value = summary["final"]
            study.tell(trial, value if math.isfinite(value) else (-math.inf if direction == "maximize" else math.inf))
            log.info("optuna: trial %d (%s): %s %.4f", trial.number, shown, metric, value)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    log.info("optuna: %d trials, %d complete, %d pruned (%s %s)", len(study.trials), len(done), len(pruned),
             direction, metric)
    if not done:
        log.error("optuna: no trial completed")
        sys.exit(1)
    best = study.best_trial
    log.info("best trial %d: %s %.4f with %s", best.number, metric, best.value, _params_text(best.params))


def _params_text(params: dict[str, float]) -> str:
    return ", ".join(f"{name}={value:.6g}" for name, value in params.items())

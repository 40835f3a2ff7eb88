"""docs/RESULTS.md from the run directories of benchmarks/reproduce.py: never typed by hand.

    python benchmarks/results_report.py runs/reproduce-quick --out docs/RESULTS.md --readme README.md

Reads WORK_DIR/manifest.json (rows, scale, hardware, commands, calibrated links) and every run's
summary.json and metrics.csv; writes the report and one plot per row (RESULTS_DIR/results/ROW.png).

Time to target: each row's target is the level FedAvg reaches on that row, relaxed by 2 % (its best
accuracy x 0.98, or its best perplexity x 1.02, on the calibrated link), because the quick scale's
subsets end far from the full-data figures. Its time is wall_s of the first round that reaches it, less
the run's start-up (launch to G_0 sent): training and communication only.

Time: under a minute (no jobs: it reads the run directories and draws one plot per row).
Figures: docs/RESULTS.md (and docs/results/ROW.png; --readme updates README.md's results table).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from ablation import modelled_ratio  # noqa: E402
from jobs import exchange_s, read_metrics, read_summary  # noqa: E402
from reproduce import NUM_CLIENTS, REALISTIC_LINK, ROWS  # noqa: E402

from Utils.run_log import first_reaching, higher_is_better, time_to_target_s  # noqa: E402
from Utils.tools.plot import plot_panels, read_run  # noqa: E402

TARGET_LEVELS = (0.90, 0.98)   # of FedAvg's best accuracy (perplexity: 2 - level times its best)
# What a model that learned nothing scores: accuracy 1 / classes; perplexity the vocabulary size (uniform).
CHANCE = {"mnist": 0.1, "fmnist": 0.1, "emnist": 1 / 47, "cifar10": 0.1, "cifar100": 0.01,
          "wikitext2": 33278.0, "ptb": 10000.0}
METHOD_COLOURS = {"fedavg": "C0", "overlap": "C1", "secant": "C3", "official": "C2", "fedavg-int8": "C4",
                  "overlap-int8": "C5", "fedavg-topk": "C6", "overlap-topk": "C7"}
METHOD_NAMES = {"fedavg": "FedAvg", "overlap": "Overlap-FedAvg", "secant": "Overlap, server-side secant",
                "official": "Overlap, official settings", "fedavg-int8": "FedAvg, int8",
                "overlap-int8": "Overlap-FedAvg, int8", "fedavg-topk": "FedAvg, top-k 5 %",
                "overlap-topk": "Overlap-FedAvg, top-k 5 %"}
# compressed method -> the same method uncompressed, and the compression targets (issue text in the report)
COMPRESSED = {"fedavg-int8": "fedavg", "overlap-int8": "overlap", "fedavg-topk": "fedavg", "overlap-topk": "overlap"}
ROUND_OVER_BOUND = 1.15      # Overlap compressed: round <= 1.15 x max(training, compressed communication)
TIME_OVER_FEDAVG = 0.35      # Overlap compressed: time to 98 % <= 0.35 x uncompressed FedAvg's
MERGE_TIME_TARGET = 0.65     # Overlap-FedAvg on the calibrated link: time to 98 % <= 0.65 x FedAvg's
ACCURACY_GAP, PERPLEXITY_GAP = 0.01, 0.03   # per round, against the same method uncompressed
DEFAULTS_TEXT = "`--compensation local --merge_weight 1 --mom 0 --server_lr 1`: the client merge"
LINK_NAMES = {"calibrated": "calibrated", "realistic": "20 Mbit/s, 30 ms"}


def link_s(summary: dict) -> float:
    """One client's upload + download of a 20 Mbit/s run, emulated: from the bytes it sent per round (the
    downloads of the 4 client ranks, the uploads of the 4 clients)."""
    rounds = summary["rounds"]
    return exchange_s(REALISTIC_LINK, summary["bytes_up"] / rounds / NUM_CLIENTS,
                      summary["bytes_down"] / rounds / NUM_CLIENTS)


def verdict_text(round_over_bound: float, time_ratio: float | None, gap_ok: bool | None) -> str:
    """Overlap-FedAvg compressed against the three targets, in words."""
    def word(ok: bool | None) -> str:
        return "n/a" if ok is None else "met" if ok else "missed"
    round_ok = None if math.isnan(round_over_bound) else round_over_bound <= ROUND_OVER_BOUND
    time_ok = False if time_ratio is None else time_ratio <= TIME_OVER_FEDAVG
    time_word = "never reached" if time_ratio is None else word(time_ok)
    return f"round {word(round_ok)}, time {time_word}, per round {word(gap_ok)}"


def row_targets(fedavg_summary: dict) -> tuple[float, ...]:
    """The row's targets from FedAvg's best: accuracy x 0.90 and x 0.98; perplexity x 1.10 and x 1.02."""
    best, up = fedavg_summary["best"], higher_is_better(fedavg_summary["metric"])
    return tuple(best * level if up else best * (2 - level) for level in TARGET_LEVELS)


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def ratio(fedavg_s: float | None, ours_s: float | None) -> str:
    """FedAvg's time over ours: above 1, ours is faster."""
    if fedavg_s is None or ours_s is None:
        return "n/a"
    return f"{fedavg_s / ours_s:.2f}x" if ours_s > 0 else "n/a"


def final_text(summary: dict) -> str:
    """The final metric, or where the run diverged (its good rounds are still in the table and the plot)."""
    if summary.get("diverged"):
        return f"diverged in {summary['diverged'].split(':')[0]}"
    return metric_text(summary["metric"], summary["final"])


def learned_nothing(dataset: str, fedavg_summary: dict) -> bool:
    """FedAvg's best is within reach of chance (under twice its accuracy, or a perplexity above half the
    vocabulary): at this scale the row measures round times, not learning."""
    chance, best = CHANCE.get(dataset), fedavg_summary["best"]
    if chance is None or best is None:
        return False
    return best < 2 * chance if higher_is_better(fedavg_summary["metric"]) else best > chance / 2


def metric_text(metric: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f} %" if metric == "accuracy" else f"{value:.1f}"


class Report:
    def __init__(self, work: Path, out: Path):
        self.work, self.out = work, out
        self.manifest = json.loads((work / "manifest.json").read_text())
        # the matrix's own row order, however the passes that filled the work directory were ordered
        order = {row.name: index for index, row in enumerate(ROWS)}
        self.manifest["rows"] = dict(sorted(self.manifest["rows"].items(), key=lambda item: order.get(item[0], 99)))
        self.plot_dir = out.parent / "results"
        self.lines: list[str] = []

    def run_dir(self, row: str, link: str, method: str) -> Path | None:
        path = self.work / row / link / method
        return path if (path / "summary.json").is_file() else None

    def summary(self, row: str, link: str, method: str) -> dict | None:
        path = self.run_dir(row, link, method)
        return read_summary(path) if path else None

    def any_fedavg_summary(self, row: str) -> dict | None:
        """The row's FedAvg run on either link (its metric and level do not depend on the link)."""
        return self.summary(row, "calibrated", "fedavg") or self.summary(row, "realistic", "fedavg")

    def time_to(self, row: str, link: str, method: str, target: float) -> float | None:
        path, summary = self.run_dir(row, link, method), self.summary(row, link, method)
        if path is None:
            return None
        return time_to_target_s(_metrics(path), summary["metric"], target, summary["startup_s"])

    def targets(self, row: str) -> tuple[float, ...] | None:
        fedavg = self.summary(row, "calibrated", "fedavg") or self.summary(row, "realistic", "fedavg")
        return row_targets(fedavg) if fedavg and fedavg["best"] is not None else None

    def links(self) -> list[str]:
        return [link for link in LINK_NAMES if any(run["link"] == link for run in self.manifest["runs"].values())]

    def write(self) -> None:
        manifest, add = self.manifest, self.lines.append
        hardware = manifest["hardware"]
        add("# Results: FedAvg and Overlap-FedAvg on the paper's workloads\n")
        add(f"Generated by `benchmarks/results_report.py` from the run directories of `python "
            f"benchmarks/reproduce.py --scale {manifest['scale']}`: do not edit by hand. Scale "
            f"**{manifest['scale']}**, seed {manifest['seed']}, 4 non-IID clients, AsyncFedAvg.py's defaults "
            f"({DEFAULTS_TEXT}); on the calibrated link also the server-side `secant` compensation "
            f"(`--compensation secant --mom 0 --server_lr 1`, the previous defaults).\n")
        elapsed = sum(run["elapsed_s"] for run in manifest["runs"].values())
        add(f"Hardware: {hardware['cpu']}, {hardware['cores']} cores, "
            f"{hardware['gpu'] or 'no GPU'}; torch {hardware['torch']}, Python {hardware['python']}. "
            f"The {len(manifest['runs'])} runs took {elapsed / 60:.0f} minutes (pilots aside).\n")
        add(self.how_to_read())
        self.headline()
        self.pipeline_section()
        for name, row in manifest["rows"].items():
            self.row_section(name, row)
        self.compression_section()
        add(CAVEATS)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text("\n".join(self.lines) + "\n")

    def how_to_read(self) -> str:
        links = self.links()
        described = {
            "calibrated": "- **calibrated**: one upload + one download take as long as one round's training of that "
                          "model, measured by a pilot FedAvg job in the same run. The regime the method is for: "
                          "Overlap-FedAvg can at best halve the round.\n",
            "realistic": "- **20 Mbit/s, 30 ms** per message, a typical LTE uplink, the same for downloads.\n"}
        count = {1: "One client link", 2: "Two client links"}[len(links)]
        missing = "" if len(links) == 2 else (
            f"\nThis pass ran the {LINK_NAMES[links[0]]} link only (`--links {links[0]}`).\n")
        return (
            f"{count} per row, emulated (`--bandwidth`, `--latency`; every client has its own):\n\n"
            + "".join(described[link] for link in links) + missing + "\n"
            "**Targets** are relative to the level FedAvg reaches on the row: 90 % and 98 % of its best "
            "accuracy (perplexity: 1.10 and 1.02 times its best). The first says how soon a method makes most "
            "of the progress, the second whether it gets where FedAvg gets. **Time to target** counts training "
            "and communication after start-up. **Speed-up** is FedAvg's time to a target over the other "
            "method's: above 1, faster than FedAvg. **Hidden** is the share of the clients' communication that "
            "training hid (1 - waited / communication). Accuracy per round does not depend on the link: only "
            "time does.\n")

    def headline(self) -> None:
        self.lines.append("## Headline: time to target, Overlap-FedAvg against FedAvg\n")
        self.lines.extend(self.headline_table())

    def headline_table(self) -> list[str]:
        """Overlap-FedAvg's speed-up over FedAvg to each target, per row and link, and the final metrics."""
        lines, links = [], self.links()
        add = lines.append
        add("Speed-up of Overlap-FedAvg over FedAvg to each target (FedAvg's time / Overlap's; never: Overlap "
            "did not reach it in the rounds run).\n")
        header = [f"{LINK_NAMES[link]}, to {100 * level:g} %" for link in links for level in TARGET_LEVELS]
        add("| row | " + " | ".join(header) + " | final, FedAvg / Overlap | secant, calibrated, to 98 % |")
        add("|---|" + "---|" * (len(header) + 2))
        for name in self.manifest["rows"]:
            targets = self.targets(name)
            if targets is None:
                continue
            cells = []
            for link in links:
                for target in targets:
                    fedavg, overlap = (self.time_to(name, link, m, target) for m in ("fedavg", "overlap"))
                    cells.append("never" if overlap is None and fedavg is not None else ratio(fedavg, overlap))
            finals = [final_text(self.summary(name, links[0], m)) if self.summary(name, links[0], m) else "n/a"
                      for m in ("fedavg", "overlap")]
            fedavg, secant = (self.time_to(name, "calibrated", m, targets[-1]) for m in ("fedavg", "secant"))
            secant_cell = ("n/a" if self.summary(name, "calibrated", "secant") is None else
                           "never" if secant is None and fedavg is not None else ratio(fedavg, secant))
            flag = " (FedAvg learned nothing)" if self.learned_nothing(name) else ""
            add(f"| {name}{flag} | " + " | ".join(cells) + f" | {' / '.join(finals)} | {secant_cell} |")
        add("")
        return lines

    def pipeline_section(self) -> None:
        """Overlap-FedAvg's time to 98 % on the calibrated link against the target and against what the
        pipeline allows, with the rounds that make the difference."""
        if "calibrated" not in self.links():
            return
        add = self.lines.append
        add("## Time to 98 % on the calibrated link, against what the pipeline allows\n")
        add(f"Target: Overlap-FedAvg reaches 98 % of FedAvg's level in at most {MERGE_TIME_TARGET}x FedAvg's time "
            "(after start-up), on every row where FedAvg learns. **Floor** is the least the pipeline allows when "
            "one upload + one download take exactly one round's training T (benchmarks/ablation.py's time model): "
            "FedAvg's G_n exists after n rounds of 2T, Overlap-FedAvg's G_m after m + 1 rounds of T (its first "
            "round trains and then sends, later rounds hide the exchange), so (m + 1) / 2n, with n and m the rounds "
            "in which each reaches the level. "
            "The measured time differs from the floor by Overlap-FedAvg's **first round** (its training shares "
            "the cores with clients that already train the next round) and its **later rounds** (ideally half "
            "FedAvg's; on these 2 cores no shorter than the 4 clients' training, and never shorter than the "
            "link), both as a fraction of FedAvg's.\n")
        add("| row | rounds to 98 %, FedAvg / Overlap | FedAvg | Overlap-FedAvg | x FedAvg's time | floor "
            "| first round, x FedAvg's | later rounds, x FedAvg's | verdict |")
        add("|---|---|---|---|---|---|---|---|---|")
        for name in self.manifest["rows"]:
            targets = self.targets(name)
            runs = {m: self.run_dir(name, "calibrated", m) for m in ("fedavg", "overlap")}
            if targets is None or None in runs.values() or self.learned_nothing(name):
                continue
            rows = {m: _metrics(path) for m, path in runs.items()}
            metric = self.any_fedavg_summary(name)["metric"]
            reached = {m: first_reaching(rows[m], metric, targets[-1]) for m in runs}
            times = {m: self.time_to(name, "calibrated", m, targets[-1]) for m in runs}
            if reached["fedavg"] is None:
                continue
            n = int(reached["fedavg"]["round"])
            if reached["overlap"] is None:
                add(f"| {name} | {n} / never | {seconds(times['fedavg'])} | never | n/a | n/a | n/a | n/a | "
                    f"missed |")
                continue
            m = int(reached["overlap"]["round"])
            fraction = times["overlap"] / times["fedavg"]
            fedavg_round = statistics.fmean(row["round_s"] for row in rows["fedavg"][:n])
            later = [row["round_s"] for row in rows["overlap"][1:m]]
            later_cell = f"{statistics.fmean(later) / fedavg_round:.2f}x" if later else "n/a"
            add(f"| {name} | {n} / {m} | {seconds(times['fedavg'])} | {seconds(times['overlap'])} | "
                f"{fraction:.3f}x | {modelled_ratio(m, n):.2f}x | "
                f"{rows['overlap'][0]['round_s'] / rows['fedavg'][0]['round_s']:.2f}x | {later_cell} | "
                f"{'met' if fraction <= MERGE_TIME_TARGET else 'missed'} |")
        add("")

    def compression_section(self) -> None:
        """The compressed runs on the 20 Mbit/s link against the same methods uncompressed, with the targets."""
        rows = [name for name in self.manifest["rows"]
                if any(self.summary(name, "realistic", method) for method in COMPRESSED)]
        if not rows:
            return
        add = self.lines.append
        add("## Compression on the 20 Mbit/s link\n")
        add(f"Targets for Overlap-FedAvg with compression: its round at most {ROUND_OVER_BOUND}x max(training, "
            f"its compressed communication); its time to 98 % of uncompressed FedAvg's level at most "
            f"{TIME_OVER_FEDAVG}x uncompressed FedAvg's; its metric at every round within {100 * ACCURACY_GAP:g} "
            f"point of the same method uncompressed (perplexity within {100 * PERPLEXITY_GAP:g} %).\n")
        add("Two readings of the round's bound. **max(train, comm)** takes the runs' own means: `train_s` is one "
            "client's training, averaged over the clients, and `comm_s` a client's upload + download job, which "
            "also waits for the other clients' uploads and the server's work. **max(sync, link)** separates what "
            "the overlap can hide from what it cannot: *link* is the emulated transfer time of one upload and one "
            "download of the bytes the run sent (latency + 8 x bytes / bandwidth, each way), and *sync* is the "
            "same compression's FedAvg round less that link time: the slowest client's training plus the "
            "server's decoding, averaging and encoding, which a synchronous round waits for whoever overlaps. "
            "With non-IID clients of unequal size the slowest client's training, not the mean, gates every "
            "round.\n")
        add("**Modelled** is the time to 98 % that the round alone predicts: FedAvg's G_n exists after n of its "
            "uncompressed rounds, Overlap-FedAvg's after n + 1 rounds of max(sync, link), so "
            "(n + 1) max(sync, link) / (n x FedAvg's mean round), with n the round in which uncompressed FedAvg "
            "reaches the level. **Verdict** (Overlap-FedAvg only): the round against max(sync, link), the time "
            "against 0.35x, the gap per round.\n")
        add("| row | method | mean round | max(train, comm) | round / it | link | sync | round / max(sync, link) "
            "| to 98 % (x uncompressed FedAvg) | modelled | worst gap per round vs uncompressed | final | verdict |")
        add("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name in rows:
            targets = self.targets(name)
            fedavg_time = self.time_to(name, "realistic", "fedavg", targets[-1]) if targets else None
            fedavg_dir, fedavg_summary = self.run_dir(name, "realistic", "fedavg"), self.summary(name, "realistic",
                                                                                                 "fedavg")
            reached = first_reaching(_metrics(fedavg_dir), fedavg_summary["metric"], targets[-1]) \
                if targets and fedavg_dir else None
            for method, plain in COMPRESSED.items():
                summary = self.summary(name, "realistic", method)
                if summary is None:
                    continue
                bound = max(summary["mean_train_s"] or 0.0, summary["mean_comm_s"] or 0.0)
                link = link_s(summary)
                synchronous = self.summary(name, "realistic", method.replace("overlap", "fedavg"))
                sync = synchronous["mean_round_s"] - link_s(synchronous) if synchronous else math.nan
                own = self.time_to(name, "realistic", method, targets[-1]) if targets else None
                gap, gap_ok = self.worst_gap(name, method, plain, summary["metric"])
                flag = " (FedAvg learned nothing)" if self.learned_nothing(name) else ""
                over_sync = math.nan if math.isnan(sync) else summary["mean_round_s"] / max(sync, link)
                modelled = math.nan
                if reached is not None and not math.isnan(sync):
                    n = int(reached["round"])
                    modelled = (n + 1) * max(sync, link) / (n * fedavg_summary["mean_round_s"])
                time_ratio = None if own is None or not fedavg_time else own / fedavg_time
                verdict = "" if method.startswith("fedavg") else verdict_text(over_sync, time_ratio, gap_ok)
                add(f"| {name}{flag} | {METHOD_NAMES[method]} | {summary['mean_round_s']:.2f} s | {bound:.2f} s | "
                    f"{summary['mean_round_s'] / bound:.2f}x | {link:.2f} s | "
                    f"{'n/a' if math.isnan(sync) else f'{sync:.2f} s'} | "
                    f"{'n/a' if math.isnan(over_sync) else f'{over_sync:.2f}x'} | "
                    f"{seconds(own)} ({'n/a' if time_ratio is None else f'{time_ratio:.2f}x'}) | "
                    f"{'n/a' if math.isnan(modelled) else f'{modelled:.2f}x'} | "
                    f"{gap} | {final_text(summary)} | {verdict} |")
        add("")

    def worst_gap(self, name: str, method: str, plain: str, metric: str) -> tuple[str, bool | None]:
        """The largest per-round shortfall of `method` against `plain` (points of accuracy, or % of perplexity),
        and whether it is within the target (None: nothing to compare)."""
        ours, theirs = self.run_dir(name, "realistic", method), self.run_dir(name, "realistic", plain)
        if ours is None or theirs is None:
            return "n/a", None
        pairs = [(a[metric], b[metric]) for a, b in zip(_metrics(ours), _metrics(theirs), strict=False)
                 if math.isfinite(a.get(metric, math.nan)) and math.isfinite(b.get(metric, math.nan))]
        if not pairs:
            return "n/a", None
        if metric == "accuracy":
            worst = max(b - a for a, b in pairs)
            return f"{100 * worst:+.2f} points", worst <= ACCURACY_GAP + 1e-9
        worst = max(a / b - 1 for a, b in pairs)
        return f"{100 * worst:+.1f} %", worst <= PERPLEXITY_GAP

    def learned_nothing(self, name: str) -> bool:
        fedavg = self.any_fedavg_summary(name)
        return fedavg is not None and learned_nothing(self.manifest["rows"][name]["dataset"], fedavg)

    def row_section(self, name: str, row: dict) -> None:
        add, scale = self.lines.append, row["scale"]
        add(f"## {row['dataset']} / {row['model']}\n")
        data = "all training samples" if scale["train"] is None else (
            f"{scale['train']:,} training {'tokens' if row['dataset'] in ('wikitext2', 'ptb') else 'samples'}")
        test = "the whole test set" if scale["test"] is None else f"{scale['test']:,} test samples/tokens"
        add(f"{scale['rounds']} rounds x {scale['epochs']} local epoch(s), {data}, evaluated on {test}.")
        calibration = self.manifest.get("calibration", {}).get(name)
        if calibration:
            add(f"Calibrated link: one round's training {calibration['training_s']:.2f} s (pilot), messages "
                f"{calibration['message_bytes'] / 2e6:.2f} MB each way, so {calibration['bandwidth_mbit']:.2f} "
                f"Mbit/s + {calibration['latency_ms']:g} ms.")
        targets = self.targets(name)
        if targets is None:
            add("\nNo complete FedAvg run yet.\n")
            return
        metric = self.any_fedavg_summary(name)["metric"]
        add(f"Targets: {metric} {' and '.join(metric_text(metric, t) for t in targets)}.\n")
        if self.learned_nothing(name):
            chance = CHANCE[row["dataset"]]
            add(f"**At this scale FedAvg learned nothing** (chance: {metric_text(metric, chance)}): the targets "
                f"are met by noise, so this row measures round times and the share of communication hidden, "
                f"not time to accuracy. `--scale paper` trains it properly.\n")
        add("| link | method | final | best (round) | rounds wall-clock | mean round | hidden | "
            + " | ".join(f"to {metric_text(metric, t)} (speed-up)" for t in targets) + " |")
        add("|---|---|---|---|---|---|---|" + "---|" * len(targets))
        for link in self.links():
            for method in METHOD_NAMES:
                summary = self.summary(name, link, method)
                if summary is None:
                    continue
                cells = []
                for target in targets:
                    own, fedavg = self.time_to(name, link, method, target), self.time_to(name, link, "fedavg", target)
                    cells.append(f"{seconds(own)}" + ("" if method == "fedavg" else f" ({ratio(fedavg, own)})"))
                hidden = summary["hidden_comm_share"]
                add(f"| {LINK_NAMES[link]} | {METHOD_NAMES[method]} | {final_text(summary)} | "
                    f"{metric_text(metric, summary['best'])} ({summary['best_round']:.0f}) | "
                    f"{summary['rounds_wall_s'] - summary['startup_s']:.1f} s | {summary['mean_round_s']:.2f} s | "
                    f"{'n/a' if hidden is None else f'{100 * hidden:.0f} %'} | " + " | ".join(cells) + " |")
        plot = self.plot_row(name, row)
        if plot:
            add(f"\n![{name}]({plot.relative_to(self.out.parent).as_posix()})\n")
        add("<details><summary>Commands</summary>\n\n```")
        for run in self.manifest["runs"].values():
            if run["row"] == name:
                add(_relative_command(run["command"], self.work, self.manifest["scale"]))
        add(f"```\n\nThis row alone: `python benchmarks/reproduce.py --scale {self.manifest['scale']} "
            f"--data_dir DATA --rows {name}`.\n</details>\n")

    def plot_row(self, name: str, row: dict) -> Path | None:
        """Metric against round (calibrated link) and against wall-clock (both links): one PNG."""
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("plots skipped: matplotlib is missing (pip install -r requirements-plot.txt)", file=sys.stderr)
            return None
        by_round, by_time = [], []
        for link in self.links():
            for method in METHOD_NAMES:
                path = self.run_dir(name, link, method)
                if path is None:
                    continue
                curve = read_run(path)
                label = f"{METHOD_NAMES[method]}, {LINK_NAMES[link]}"
                style = "-" if link == "calibrated" else "--"
                if link == self.links()[0]:
                    by_round.append(replace(curve, label=METHOD_NAMES[method], color=METHOD_COLOURS[method]))
                by_time.append(replace(curve, label=label, style=style, color=METHOD_COLOURS[method]))
        out = self.plot_dir / f"{name}.png"
        plot_panels(by_round, by_time, out, f"{row['dataset']} / {row['model']}", targets=self.targets(name))
        return out


@functools.cache
def _metrics(run_dir: Path) -> list[dict]:
    """Each run's rows, read once however many targets, tables and links ask for them."""
    return read_metrics(run_dir)


def _relative_command(command: str, work: Path, scale: str) -> str:
    """The job's command line as a user would type it from the repository root, with the default data root
    and reproduce.py's default run directories."""
    words = command.split()
    words[0] = "python"
    for flag, replace_with in (("--data_dir", lambda _: "./data"),
                               ("--out_dir", lambda path: f"runs/reproduce-{scale}/{Path(path).relative_to(work)}")):
        if flag in words:
            index = words.index(flag) + 1
            words[index] = replace_with(words[index])
    return " ".join(words)


CAVEATS = """## Caveats

- The data here: CIFAR-10 comes from `../shared/data` re-encoded as JPEG (quality 75), so its pixels are
  close to, not equal to, the original; WikiText-2's training text is complete but in 615 shuffled chunks,
  so its non-IID slices differ from the original file's. Accuracies are not the paper's.
- Quick scale: subsets, few rounds and test subsets (see each row) so that the matrix fits a 2-core CPU
  in an afternoon; the models are far from converged, which is why the targets are relative to FedAvg.
  VGG and ResNet cost 1.7 and 17 ms a sample to train on one core here, so their rows get 4,000 and 1,000
  samples, and neither leaves chance level in that budget: those rows measure round times and hidden
  communication only (flagged above). The Transformer rows train with `--lr 1`: at the default 0.01 they
  stay worse than a uniform guess. `--scale paper` runs the official 10 rounds x 5 local epochs on full
  data.
- One seed. Overlap-FedAvg's accuracy per round differs from FedAvg's by about the seed-to-seed spread on
  MNIST (docs/defaults.md); a single row's speed-up near 1 is a tie.
- Timing on a shared 2-core machine: the 4 clients share 2 cores, so a round's training is twice a
  client's. Runs of a row follow each other within minutes.
- Differences from the official code that change the comparison (README, "Differences from the official
  code"): both algorithms sync every E local epochs on a fixed schedule (the official Overlap syncs after
  every epoch, on a timing-dependent schedule), our defaults are not the official server settings (the
  MNIST rows also run those), and communication is measured, not taken as zero.
"""


README_BEGIN, README_END = "<!-- results table: begin -->", "<!-- results table: end -->"


def write_report(work: Path, out: Path, readme: Path | None = None) -> None:
    """The report and its plots; with `readme`, its headline table also replaces the README's between the
    README_BEGIN and README_END markers."""
    report = Report(work, out)
    report.write()
    if readme is not None:
        text = readme.read_text()
        if README_BEGIN not in text or README_END not in text:
            sys.exit(f"error: {readme} has no {README_BEGIN} ... {README_END} block to fill")
        head, rest = text.split(README_BEGIN, 1)
        _, tail = rest.split(README_END, 1)
        table = "\n".join(report.headline_table()).strip()
        readme.write_text(f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir", type=Path, help="the --work_dir of benchmarks/reproduce.py")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "RESULTS.md", help="the report to write")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also put the headline table into this README, between its marker comments")
    args = parser.parse_args()
    if not (args.work_dir / "manifest.json").is_file():
        sys.exit(f"error: {args.work_dir} holds no manifest.json; give the --work_dir of benchmarks/reproduce.py")
    write_report(args.work_dir, args.out, args.readme)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

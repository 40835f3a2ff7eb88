"""benchmarks/text_seeds.py's summary over seeds, on curves made up here (no job runs), the README's quote
of it, how a sweep reuses a finished run, and a sweep on another number of tokens than the row's."""
import argparse
import re
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import jobs  # noqa: E402
import text_seeds  # noqa: E402

MERGE = "local b1 mu0 slr1"


def test_the_summary_counts_the_level_the_seeds_below_and_the_rounds_above():
    curves = {(1, "FedAvg"): [300.0, 200.0, 100.0], (1, MERGE): [300.0, 210.0, 102.0],
              (2, "FedAvg"): [300.0, 200.0, 100.0], (2, MERGE): [300.0, 192.0, 103.0]}
    row = text_seeds.summary_table(curves, [1, 2], ["FedAvg", MERGE]).splitlines()[-1]
    # gaps after the last round +2.0 and +3.0 %: mean +2.5, sd 0.7; only seed 1 is within 1.02x
    assert row == f"| {MERGE} | +2.5 % (0.7 %) | +2.0 to +3.0 % | 1 of 2 | 0 of 2 | 3 of 4 | +1.5 % |"
    by_round = text_seeds.by_round_table(curves, [1, 2], ["FedAvg", MERGE]).splitlines()[-1]
    assert by_round == f"| {MERGE} | +0.0 % | +0.5 % | +2.5 % |"
    assert "102.0 (+2.0 %, ✓)" in text_seeds.per_seed_table(curves, [1, 2], ["FedAvg", MERGE])


def test_the_readme_quotes_the_generated_report():
    report = (ROOT / "docs" / "text-seeds.md").read_text()
    seeds = re.search(r"over (\d+) seeds", report).group(1)
    gaps, levels = {}, {}
    for dataset in text_seeds.DATASETS:
        section = report[report.index(f"## {dataset}, non-IID"):]
        found = re.search(rf"\| {MERGE} \| ([+-][\d.]+ %) \([^)]*\) \| [^|]* \| (\d+) of \d+ \|", section)
        gaps[dataset], levels[dataset] = found.groups()
    words = {"8": "eight"}
    quote = (f"over {words.get(seeds, seeds)} seeds its mean gap to FedAvg after the last round is {gaps['ptb']} "
             f"on PTB and {gaps['wikitext2']} on WikiText-2 (it meets the level on {levels['ptb']} and "
             f"{levels['wikitext2']} of them")
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert quote in readme, quote


def test_a_finished_run_is_read_not_run_again(tmp_path):
    (tmp_path / "metrics.csv").write_text("round,perplexity\n1,300.5\n2,200.25\n")
    rows = jobs.finished_or_run("no_such_script.py", [], tmp_path, rounds=2, timeout_s=1)
    assert [row["perplexity"] for row in rows] == [300.5, 200.25]


def test_another_size_is_named_in_the_report_and_never_read_from_a_run_of_the_rows_size(tmp_path, monkeypatch):
    row_tokens = text_seeds.text_row("ptb").quick.train
    other = 4 * row_tokens
    assert text_seeds.text_scale("ptb", None).train == row_tokens
    assert text_seeds.text_scale("ptb", other).train == other
    resized = text_seeds.header("cmd", [1], ["ptb"], other)
    assert f"{other:,} training tokens (the matrix's row: {row_tokens:,})" in resized
    assert "the matrix's row:" not in text_seeds.header("cmd", [1], ["ptb"], row_tokens)
    assert text_seeds.default_report(["ptb"], 96000) == "docs/text-seeds-ptb-96k.md"
    assert text_seeds.default_report(["ptb", "wikitext2"], None) == "docs/text-seeds.md"

    rounds = text_seeds.text_scale("ptb", None).rounds
    made_up = "round,perplexity\n" + "".join(f"{r},{1000 - r}\n" for r in range(1, rounds + 1))
    (tmp_path / f"ptb-noniid-{row_tokens}" / "seed7" / "FedAvg").mkdir(parents=True)
    (tmp_path / f"ptb-noniid-{row_tokens}" / "seed7" / "FedAvg" / "metrics.csv").write_text(made_up)
    args = argparse.Namespace(work_dir=str(tmp_path), data_dir=str(tmp_path), max_train_samples=None, job_timeout=1)
    job = text_seeds.Job("ptb", 7, "FedAvg")
    assert text_seeds.perplexities(job, args) == [1000.0 - r for r in range(1, rounds + 1)]

    def no_job(*_args, **_kwargs):
        raise AssertionError("a job ran")
    monkeypatch.setattr(jobs, "run_job", no_job)
    with pytest.raises(AssertionError, match="a job ran"):   # the run of the row's size is not this size's
        text_seeds.perplexities(job, argparse.Namespace(**{**vars(args), "max_train_samples": other}))


def test_a_size_of_no_tokens_is_refused(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["text_seeds.py", "--max_train_samples", "0"])
    with pytest.raises(SystemExit, match=r"--max_train_samples 0: give a positive number of tokens"):
        text_seeds.main()

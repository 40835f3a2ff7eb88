"""The README's example output is the code's: its tiny run line by line and the main job's final line, rerun."""
import re

import pytest
from conftest import ROOT
from helpers_e2e import run_job

pytestmark = pytest.mark.slow
README = (ROOT / "README.md").read_text()
# The figures of a log line that depend on the seed, not on timing or paths.
FIGURES = re.compile(r"(accuracy \d\.\d{4}|test_loss \d\.\d{4}|train_loss \d\.\d{4}|\(round \d+\)|"
                     r"\d[\d,]* samples each|[\d,]+ parameters|done: \d+ rounds)")


def readme_block(after: str) -> list[str]:
    """The lines of the first code block after the text `after`."""
    start = README.index("```", README.index(after))
    return README[README.index("\n", start) + 1:README.index("```", start + 3)].strip().splitlines()


# PyTorch picks its CPU kernels by instruction set (AVX2, AVX-512, ...), so another CPU rounds differently
# and the last digit of a metric can move (the main job: 0.9780 with AVX-512 kernels, 0.9782 with AVX2).
# Counts, labels and rounds must match exactly; a metric within 0.001 (10 of MNIST's 10,000 test images).
METRIC_TOLERANCE = 0.001


def figures(lines: list[str]) -> list[str]:
    return [f for line in lines for f in FIGURES.findall(line)]


def assert_figures_match(got: list[str], shown: list[str]) -> None:
    assert shown and len(got) == len(shown), (got, shown)
    for mine, theirs in zip(got, shown, strict=True):
        if re.fullmatch(r"\w+ \d\.\d{4}", theirs):   # a metric: its label exact, its value within the tolerance
            (my_label, my_value), (label, value) = mine.split(), theirs.split()
            assert my_label == label and abs(float(my_value) - float(value)) <= METRIC_TOLERANCE, (got, shown)
        else:
            assert mine == theirs, (got, shown)


def test_the_tiny_run_prints_what_the_readme_shows(mnist_root, tmp_path):
    command = README[README.index("A tiny run, `") + len("A tiny run, `"):]
    command = command[:command.index("`")].replace("\n", " ").split()
    assert command[:2] == ["python", "AsyncFedAvg.py"]
    options = [a for a in command[2:] if a != "/tmp/readme-run"]
    options.remove("--out_dir")
    done = run_job("AsyncFedAvg.py", *options, out_dir=tmp_path / "run", data_dir=mnist_root)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = readme_block("A tiny run")
    assert_figures_match(figures(done.stderr.splitlines()), figures(shown))


def test_the_main_job_ends_with_the_readme_figures(mnist_root, tmp_path):
    shown = readme_block("and ends with")
    assert len(shown) == 1 and "done: 10 rounds" in shown[0]
    done = run_job("AsyncFedAvg.py", "--model", "mlp", "--master_port", "0", out_dir=tmp_path / "run",
                   data_dir=mnist_root, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    last = [line for line in done.stderr.splitlines() if "done: " in line]
    assert_figures_match(figures(last), figures(shown))

"""docs/benchmarks.md's index of the benchmarks is the one benchmarks/index.py generates from the scripts'
docstrings now, and lists every script that runs (no job is started: it reads files only)."""
import re
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import index  # noqa: E402


def test_the_index_in_the_doc_is_the_generated_one():
    block = index.current_block((ROOT / "docs" / "benchmarks.md").read_text())
    assert block == index.render(index.entries()), "the index is out of date: run python benchmarks/index.py"


def test_every_benchmark_script_with_a_main_is_in_the_index():
    block = index.current_block((ROOT / "docs" / "benchmarks.md").read_text())
    with_main = [path.name for path in sorted((ROOT / "benchmarks").glob("*.py"))
                 if '__name__ == "__main__"' in path.read_text()]
    assert "reproduce.py" in with_main and "jobs.py" not in with_main
    for name in with_main:
        assert f"| [`{name}`](../benchmarks/{name}) |" in block, name


@pytest.mark.parametrize("entry", index.entries(), ids=lambda entry: entry.script)
def test_every_script_says_how_long_it_takes_and_where_its_figures_go(entry):
    assert re.search(r"\b(about|under)\b", entry.time, re.IGNORECASE), entry.time
    assert re.search(r"\bdocs/[\w./-]+\.md\b", entry.figures), entry.figures


def test_the_fields_run_over_their_continuation_lines():
    text = "What it measures.\n\nTime: about 4 minutes\non 2 cores.\nFigures: docs/x.md.\n\nmore prose"
    assert index.fields(text) == {"Time": "about 4 minutes on 2 cores.", "Figures": "docs/x.md."}
    assert index._cell("a | b, docs/x.md") == "a \\| b, [x.md](x.md)"

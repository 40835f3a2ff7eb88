"""Bad command lines stop at the parser: exit status 2 and one line naming what was wrong."""
import runpy
import sys

import pytest
from conftest import ROOT


def run_entry(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run an entry script in this process (torch is already imported: fast); returns (status, out, err)."""
    script, *args = argv
    old_argv = sys.argv
    sys.argv = [script, *args]
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
        status = 0
    except SystemExit as stop:
        status = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = old_argv
    captured = capsys.readouterr()
    return status, captured.out, captured.err

CASES = [
    (["FedAvg.py", "--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["FedAvg.py", "--model", "lenet"], "invalid choice: 'lenet'"),
    (["FedAvg.py", "--world_size", "1"], "need the server and at least one client"),
    (["FedAvg.py", "--lr", "-0.1"], "must be a positive number"),
    (["FedAvg.py", "--max_epoch", "0"], "must be a positive integer"),
    (["FedAvg.py", "--dataset", "cifar10", "--model", "mnistnet"], "--model mnistnet with --dataset cifar10"),
    (["FedAvg.py", "--dataset", "wikitext2", "--model", "mlp"], "cannot train on text data"),
    (["FedAvg.py", "--gpus", "0,x"], "comma list of CUDA device numbers"),
    (["FedAvg.py", "--partition", "skewed"], "invalid choice: 'skewed'"),
    (["FedAvg.py", "--master_port", "70000"], "must be a port between"),
    (["AsyncFedAvg.py", "--compensation", "taylor"], "invalid choice: 'taylor'"),
    (["AsyncFedAvg.py", "--mom", "1.2"], "--mom must be below 1"),
    (["AsyncFedAvg.py", "--optuna", "--optuna_lr", "0.1", "0.01"], "needs LOW < HIGH"),
    (["AsyncFedAvg.py", "--optuna_early_stop", "x", "0.9"], "ROUND (an integer)"),
    (["AsyncFedAvg.py", "--optuna"], "--optuna needs a search range"),
    (["AsyncFedAvg.py", "--optuna_lr", "0.01", "0.1"], "take effect only with --optuna"),
    (["FedAvg.py", "--seed", "-1"], "must be between 0 and 2**32 - 1"),
    (["AsyncFedAvg.py", "--max_epoch", "3", "--optuna_early_stop", "5", "0.9"], "between 1 and --max_epoch 3"),
]


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(c[0][1:]) for c in CASES])
def test_bad_input_is_a_one_line_usage_error(argv, message, capsys):
    status, _, err = run_entry(argv, capsys)
    assert status == 2, err
    last = err.strip().splitlines()[-1]
    assert "error:" in last and message in last, last


def test_help_lists_the_official_flags(capsys):
    status, out, _ = run_entry(["AsyncFedAvg.py", "--help"], capsys)
    assert status == 0
    for flag in ("--world_size", "--dataset", "--batch_size", "--max_epoch", "--client_epoch", "--lr", "--mom",
                 "--lambd", "--gpus", "--master_addr", "--master_port", "--seed", "--optuna", "--optuna_trials",
                 "--optuna_early_stop", "--bandwidth", "--latency", "--compensation", "--server_lr"):
        assert flag in out

"""Utils/run_log.py: what summary.json says about a run, computed from its metrics rows."""
import math

from Utils.run_log import summarise_rows, time_to_target_s


def rows(metric: str, values: list[float | None]) -> list[dict]:
    return [{"round": r, metric: math.nan if v is None else v, "wall_s": 10.0 + 2 * r, "round_s": 2.0 + r,
             "train_s": 1.0, "comm_s": 1.0, "comm_wait_s": 0.25, "bytes_up": 100, "bytes_down": 90}
            for r, v in enumerate(values, start=1)]


def test_time_to_target_counts_from_start_up_and_takes_the_first_round_that_reaches_it():
    accuracy = rows("accuracy", [0.5, None, 0.8, 0.7, 0.9])
    assert time_to_target_s(accuracy, "accuracy", 0.8, startup_s=10.0) == 6.0   # round 3: wall 16
    assert time_to_target_s(accuracy, "accuracy", 0.95, startup_s=10.0) is None
    perplexity = rows("perplexity", [900.0, 450.0, 300.0])
    assert time_to_target_s(perplexity, "perplexity", 500.0, startup_s=10.0) == 4.0   # lower is better


def test_summary_of_the_rounds():
    summary = summarise_rows(rows("accuracy", [0.5, None, 0.8, 0.7]), "accuracy", (0.6, 0.99), startup_s=10.0)
    assert (summary["rounds"], summary["final"], summary["best"], summary["best_round"]) == (4, 0.7, 0.8, 3)
    assert summary["mean_round_s"] == (4 + 5 + 6) / 3   # rounds 2..R: round 1 is warm-up
    assert summary["hidden_comm_share"] == 0.75 and (summary["bytes_up"], summary["bytes_down"]) == (400, 360)
    assert summary["time_to_target_s"] == {"0.6": 6.0, "0.99": None}
    assert summary["rounds_wall_s"] == 18.0


def test_a_run_without_evaluation_or_communication_figures():
    bare = [{"round": 1, "wall_s": 3.0, "round_s": 1.0}]
    summary = summarise_rows(bare, "accuracy", (0.9,), startup_s=2.0)
    assert summary["final"] is None and summary["best"] is None and summary["hidden_comm_share"] is None
    assert summary["mean_round_s"] == 1.0 and summary["time_to_target_s"] == {"0.9": None}


def test_start_up_counts_from_the_entry_script_not_from_a_shell_that_exec_ed_it():
    """Under `bash -c '... && python FedAvg.py'` (a Dockerfile RUN, a CI step) the shell execs python, and the
    process's kernel start time is the shell's: start-up would count the commands before. It counts from the
    entry script's first import instead."""
    import subprocess
    import sys
    import time

    from conftest import ROOT
    before = time.time()
    script = "from Characters.forkserver import ENTERED; print(repr(ENTERED))"
    done = subprocess.run(["bash", "-c", f"sleep 2 && exec {sys.executable} -c '{script}'"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) >= before + 2

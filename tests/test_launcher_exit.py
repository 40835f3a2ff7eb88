"""When the launcher's exit status is in, every process it started has ended: its ranks, the forkserver and
multiprocessing's resource tracker (Characters/forkserver.py stop_forkserver). A script that runs jobs back
to back then never finds the last job's processes beside the next one. Checked at once, not after a wait:
after a run, a failed run, a usage error and Ctrl-C."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from helpers_e2e import job_env, processes_with_tag, wait_until_gone

pytestmark = pytest.mark.slow

TINY = ("--model", "mlp", "--world_size", "3", "--max_epoch", "1", "--client_epoch", "1",
        "--max_train_samples", "600", "--master_port", "0")


def _session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of the session the job was started in."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:   # state, session id
            found.append(int(entry.name))
    return found


def _describe(pids) -> list[str]:
    described = []
    for pid in sorted(set(pids)):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
        except OSError:
            command = "(gone)"
        described.append(f"{pid}: {command}")
    return described


def _start(script: str, *args: str, out_dir: Path, data_dir: Path, env: dict) -> tuple[subprocess.Popen, Path]:
    """The job in a session of its own, its output in files: the test waits for the exit status alone, as a
    shell running jobs one after another does (a pipe would wait for every holder of it)."""
    log = out_dir.parent / f"{out_dir.name}.stderr"
    job = subprocess.Popen([sys.executable, script, *args, "--out_dir", str(out_dir), "--data_dir", str(data_dir)],
                           cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=log.open("w"), start_new_session=True)
    return job, log


def _wait_for_rounds(job: subprocess.Popen, run: Path, poll_s: float, timeout: float = 180) -> None:
    """Until the job has written its first round (metrics.csv exists), it ended, or `timeout` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (run / "metrics.csv").exists() and job.poll() is None:
        time.sleep(poll_s)


def _finish(job: subprocess.Popen, tag: str, timeout: float = 240) -> tuple[int, list[int]]:
    """The exit status, and what was still running of the job right when it came in."""
    try:
        status = job.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        raise
    left = _session_members(job.pid) + processes_with_tag(tag)   # checked first thing, no grace period
    described = _describe(left)
    wait_until_gone(tag)   # a failure leaves nothing behind for the next test
    return status, described


@pytest.mark.parametrize(("case", "script", "options", "fault", "status", "last_line"), [
    ("run", "FedAvg.py", (), None, 0, "done: 1 rounds"),
    ("failed rank", "FedAvg.py", (), "1:1:raise", 1, "rank 1 failed: RuntimeError: injected fault; the job was"),
    ("usage error", "AsyncFedAvg.py", ("--world_size", "1"), None, 2, "need the server and at least one client"),
])
def test_nothing_the_launcher_started_outlives_it(case, script, options, fault, status, last_line, mnist_root,
                                                   tmp_path):
    env = job_env(**({"OVERLAP_FEDAVG_FAULT": fault} if fault else {}))
    job, log = _start(script, *TINY, *options, out_dir=tmp_path / "run", data_dir=mnist_root, env=env)
    returncode, left = _finish(job, env["OVERLAP_FEDAVG_TEST_TAG"])
    stderr = log.read_text()
    assert returncode == status, stderr[-2000:]
    assert last_line in stderr.strip().splitlines()[-1], stderr[-2000:]   # the same status and last line as ever
    assert left == [], f"{case}: still running when the exit status was in: {left}"
    assert "leaked" not in stderr and "Traceback" not in stderr, stderr[-2000:]


def test_nothing_outlives_a_launcher_stopped_by_ctrl_c(mnist_root, tmp_path):
    env = job_env()
    run = tmp_path / "run"
    job, log = _start("FedAvg.py", *TINY, "--max_epoch", "50", out_dir=run, data_dir=mnist_root, env=env)
    _wait_for_rounds(job, run, poll_s=0.2)
    assert (run / "metrics.csv").exists(), log.read_text()[-2000:]   # the rounds are running
    os.killpg(job.pid, signal.SIGINT)   # what Ctrl-C in a terminal does: the whole group
    returncode, left = _finish(job, env["OVERLAP_FEDAVG_TEST_TAG"])
    stderr = log.read_text()
    assert returncode == 130 and "interrupted: stopping every rank" in stderr, stderr[-2000:]
    assert left == [], f"still running when the exit status was in: {left}"
    assert "leaked" not in stderr and "Traceback" not in stderr, stderr[-2000:]


@pytest.mark.parametrize("after_s", [0.05, 0.5])
def test_ctrl_c_while_the_job_starts_is_one_line(after_s, mnist_root, tmp_path):
    """Ctrl-C before any rank runs: while the entry script imports, and while the forkserver imports torch
    (which ignores it: the launcher stops it). One line, status 130, nothing left behind."""
    env = job_env()
    job, log = _start("AsyncFedAvg.py", *TINY, out_dir=tmp_path / "run", data_dir=mnist_root, env=env)
    time.sleep(after_s)
    os.killpg(job.pid, signal.SIGINT)
    returncode, left = _finish(job, env["OVERLAP_FEDAVG_TEST_TAG"])
    stderr = log.read_text()
    assert returncode == 130 and "interrupted" in stderr.strip().splitlines()[-1], stderr[-2000:]
    assert left == [] and "Traceback" not in stderr, stderr[-2000:]


def test_a_server_that_hangs_after_its_clients_ended_is_stopped_after_timeout(mnist_root, tmp_path):
    """After the clients' last report nobody waits for the server with a deadline but the launcher: a disk that
    never finishes a write (a FIFO no one reads, in place of final_model.pt) must not hang the job."""
    env = job_env()
    run = tmp_path / "run"
    job, log = _start("FedAvg.py", *TINY, "--max_epoch", "40", "--slowdown", "5", "--timeout", "8", out_dir=run,
                      data_dir=mnist_root, env=env)
    _wait_for_rounds(job, run, poll_s=0.05, timeout=120)
    os.mkfifo(run / "final_model.pt")
    returncode, left = _finish(job, env["OVERLAP_FEDAVG_TEST_TAG"])
    stderr = log.read_text()
    assert returncode == 1, stderr[-2000:]
    assert "rank 0 has written nothing for 8 s (--timeout) since its clients ended" in stderr.strip().splitlines()[-1]
    assert left == [] and "Traceback" not in stderr, stderr[-2000:]

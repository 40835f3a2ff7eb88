"""Errors a user can cause end with one line that says what went wrong, the exit status docs/errors.md gives,
and no traceback. Each case runs the real command in a fresh interpreter, as a user would.

The cases other tests already run end to end are not repeated (docs/errors.md names the tests of each
group): a crashed or killed rank, a diverged run, a busy port, a partition too small, --out_dir a file and
Ctrl-C (test_failures.py); the parser's messages (test_cli.py), prepare_data.py's and Utils.tools.plot's other
errors (test_prepare_data.py, test_plot.py) run in process there.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from helpers_e2e import job_env, wait_until_gone

from Utils.transport import free_port

pytestmark = pytest.mark.slow   # seconds per case: each starts an interpreter that imports torch

TINY = ("--model", "mlp", "--max_train_samples", "200", "--max_epoch", "1", "--client_epoch", "1",
        "--world_size", "3", "--master_port", "0", "--timeout", "60")


def _garbage_caches(tmp: Path) -> None:
    (tmp / "data" / "MNIST").mkdir(parents=True)
    for split in ("train", "test"):
        (tmp / "data" / "MNIST" / f"cache-{split}.pt").write_bytes(b"not a cache")


def _unevaluated_run(tmp: Path) -> None:
    (tmp / "run").mkdir()
    (tmp / "run" / "config.json").write_text('{"script": "FedAvg", "overlap": false}')
    (tmp / "run" / "metrics.csv").write_text("round,accuracy,test_loss,wall_s\n1,,,1.5\n")


def _offline(tmp: Path) -> dict:
    """No network (every download host is reached through a proxy nobody listens on) and no local copy."""
    (tmp / "no-copy").mkdir()
    proxy = f"http://127.0.0.1:{free_port()}"
    return {"http_proxy": proxy, "https_proxy": proxy, "OVERLAP_FEDAVG_DATA_SOURCE": str(tmp / "no-copy")}


def _latin1_ptb(tmp: Path) -> None:
    (tmp / "data" / "ptb").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (tmp / "data" / "ptb" / f"ptb.{split}.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))


def _file(tmp: Path) -> None:
    (tmp / "a-file").write_text("not a directory")


# (id, command, exit status, stream, what its last line holds (a text, or several), setup(tmp) -> extra env or
# None, whether it needs MNIST)
# In commands, {tmp} is the case's folder and {mnist} a data root holding MNIST (conftest.mnist_root).
CASES = [
    # The parser (Utils/cli.py, Utils/config.py): status 2 before anything starts; test_cli.py checks the
    # messages in process, this one the whole script (its forkserver started first adds nothing to stderr).
    ("option of the other script", ["FedAvg.py", "--lambd", "0.1"], 2, "stderr",
     "FedAvg.py: error: unrecognized arguments: --lambd 0.1", None, False),
    # The launcher (Characters/launch.py): status 2 before any rank starts.
    ("nccl without CUDA", ["FedAvg.py", *TINY, "--backend", "nccl", "--gpus", "0,1,2", "--out_dir", "{tmp}/run"], 2,
     "stderr", "[launcher] ERROR --backend nccl needs CUDA on every rank; use --backend gloo", None, False),
    ("WORLD_SIZE 1", ["FedAvg.py", *TINY, "--out_dir", "{tmp}/run"], 2, "stderr",
     "[rank 0] ERROR WORLD_SIZE=1: a job needs the server and at least one client",
     lambda tmp: {"RANK": "0", "WORLD_SIZE": "1"}, False),
    ("RANK without MASTER_ADDR", ["FedAvg.py", *TINY, "--out_dir", "{tmp}/run"], 2, "stderr",
     "[rank 0] ERROR RANK and WORLD_SIZE are set but MASTER_ADDR is not",
     lambda tmp: {"RANK": "0", "WORLD_SIZE": "3"}, False),
    ("data root a file", ["FedAvg.py", *TINY, "--data_dir", "{tmp}/a-file", "--out_dir", "{tmp}/run"], 2, "stderr",
     "a-file is a file; give the data root directory", _file, False),
    ("RANK not a number", ["FedAvg.py", *TINY, "--out_dir", "{tmp}/run"], 2, "stderr",
     "RANK=a WORLD_SIZE=3: both must be whole numbers", lambda tmp: {"RANK": "a", "WORLD_SIZE": "3"}, False),
    ("job too big for memory", ["FedAvg.py", "--model", "mlp", "--world_size", "20000", "--partition", "iid",
                                "--master_port", "0", "--data_dir", "{mnist}", "--out_dir", "{tmp}/run"], 2,
     "stderr", "GB are available; use fewer clients (--world_size), --max_train_samples, or several machines",
     None, True),
    # Data: status 1.
    ("dataset missing offline", ["FedAvg.py", *TINY, "--data_dir", "{tmp}/data", "--out_dir", "{tmp}/run"], 1,
     "stderr", "it could not be downloaded (no network); run `python prepare_data.py --dataset mnist --data_dir ",
     _offline, False),
    ("text file not UTF-8", ["FedAvg.py", *TINY, "--dataset", "ptb", "--model", "transformer", "--data_dir",
                             "{tmp}/data", "--out_dir", "{tmp}/run"], 1, "stderr", "not UTF-8 text", _latin1_ptb,
     False),
    ("corrupt cache", ["FedAvg.py", *TINY, "--data_dir", "{tmp}/data", "--out_dir", "{tmp}/run"], 1, "stderr",
     "cache-train.pt: unreadable cache file", _garbage_caches, False),
    ("data root below a file", ["FedAvg.py", *TINY, "--data_dir", "{tmp}/a-file/data", "--out_dir", "{tmp}/run"], 1,
     "stderr", "cannot write to the data directory", _file, False),
    # Inside a rank: status 1, the launcher's line names the rank and its error.
    ("run directory below a file", ["FedAvg.py", *TINY, "--data_dir", "{mnist}", "--out_dir", "{tmp}/a-file/run"],
     1, "stderr", ("[launcher] ERROR rank 0 failed", "NotADirectoryError", "the job was stopped"), _file, True),
    # Tools.
    ("plot to a PDF", ["-m", "Utils.tools.plot", "{tmp}", "--out", "{tmp}/plot.pdf"], 2, "stderr",
     "the plot is written as PNG; give a file name ending in .png", None, False),
    ("plot of an unevaluated run", ["-m", "Utils.tools.plot", "{tmp}/run", "--out", "{tmp}/plot.png"], 2, "stderr",
     "metrics.csv: no evaluated round to plot (was it run with --eval_every 0?)", _unevaluated_run, False),
    ("prepare from a folder without it", ["prepare_data.py", "--dataset", "mnist", "--source", "{tmp}",
                                          "--data_dir", "{tmp}/data"], 1, "stdout",
     "mnist: unavailable: not found in", None, False),
    ("prepare into a file", ["prepare_data.py", "--dataset", "mnist", "--data_dir", "{tmp}/a-file"], 1, "stdout",
     "mnist: unavailable: cannot write to the data directory", _file, False),
]


@pytest.mark.parametrize(("command", "status", "stream", "message", "setup", "needs_mnist"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_user_error_ends_with_one_line_and_its_status(command, status, stream, message, setup, needs_mnist,
                                                        tmp_path, request):
    if "--backend" in command and "--gpus" in command and torch.cuda.is_available():
        pytest.skip("CUDA is available: nccl would run")
    mnist = request.getfixturevalue("mnist_root") if needs_mnist else None
    env = job_env(**((setup(tmp_path) if setup else None) or {}))
    argv = [arg.format(tmp=tmp_path, mnist=mnist) for arg in command]
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    lines = [line for line in getattr(done, stream).splitlines() if line.strip()]
    assert done.returncode == status, done.stderr[-2000:]
    assert lines and all(part in lines[-1] for part in ((message,) if isinstance(message, str) else message)), \
        done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert wait_until_gone(env["OVERLAP_FEDAVG_TEST_TAG"]) == []

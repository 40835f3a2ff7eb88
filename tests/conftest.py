"""Shared test fixtures: where the real data lives, and one intra-op thread per test process."""
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
# The raw datasets the tests import (as a user without network would); another folder of the same layout
# with OVERLAP_FEDAVG_SOURCE_DATA (benchmarks/gpu_check.sh passes its SOURCE).
SHARED_DATA = Path(os.environ.get("OVERLAP_FEDAVG_SOURCE_DATA", ROOT.parent / "shared" / "data"))


def require_shared(subdir: str) -> Path:
    """Path of a real dataset in ../shared/data; skip when absent, but fail in CI (CI=true)."""
    path = SHARED_DATA / subdir
    if not path.is_dir():
        message = f"real data {path} is absent (see ../shared/data/README.md)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI requires it")
        pytest.skip(message)
    return path


def run_script(*args: str, timeout: float = 240, env: dict | None = None):
    """Run one of the project's scripts in a fresh interpreter; returns the CompletedProcess."""
    import subprocess
    import sys
    full_env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def _prepared_root(tmp_path_factory, dataset: str, source_subdir: str) -> Path:
    source = require_shared(source_subdir)
    root = tmp_path_factory.mktemp(f"data-{dataset}")
    done = run_script("prepare_data.py", "--dataset", dataset, "--source", str(source.parent),
                      "--data_dir", str(root))
    assert done.returncode == 0, done.stderr + done.stdout
    return root


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A data root with MNIST imported from ../shared/data (as a user without network would)."""
    return _prepared_root(tmp_path_factory, "mnist", "mnist")


@pytest.fixture(scope="session")
def ptb_root(tmp_path_factory) -> Path:
    return _prepared_root(tmp_path_factory, "ptb", "ptb")

"""The process every CPU rank is forked from, started before the launcher imports torch.

CPU jobs start their ranks as forks of one server process that has imported torch, torch._dynamo (what the
first optimizer would import, about 1 s) and the project once, so a rank starts in milliseconds and shares
those pages with the others. The entry scripts start it first thing: its imports then run on another core
while the launcher imports torch for itself and parses the options (about 1 s less to G_0 on 2 cores).
Jobs that spawn their ranks instead (CUDA) leave it idle, and it exits with the launcher. Nothing here
imports torch.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os

RANK_MODULES = ["Characters.launch", "torch._dynamo"]   # Characters.launch imports the ranks' whole code


def start_forkserver() -> None:
    """Start the forkserver with the ranks' modules preloaded, unless this process is itself one rank of a
    job started by torchrun or RANK/WORLD_SIZE (it then runs that rank and forks nothing). Idempotent.

    Also quiets torch's C++ log before torch is imported: a failed rendezvous otherwise prints a hundred
    lines of C++ frames before our one line (OVERLAP_FEDAVG_DEBUG, or TORCH_CPP_LOG_LEVEL set, keeps them)."""
    if not os.environ.get("OVERLAP_FEDAVG_DEBUG"):
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    multiprocessing.set_forkserver_preload(RANK_MODULES)
    multiprocessing.forkserver.ensure_running()

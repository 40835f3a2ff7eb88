"""Fault injection for the failure tests (tests/test_failures.py): a rank crashes, dies or hangs on cue."""
from __future__ import annotations

import os
import signal


def injected_fault(rank: int, round_number: int) -> str | None:
    """Fault injection for the failure tests: OVERLAP_FEDAVG_FAULT="RANK:ROUND:ACTION" names what rank RANK
    does in its round ROUND (1..R): raise, kill (SIGKILL) or stop (SIGSTOP: hung, not dead) when it
    starts training; kill-upload or kill-download in its communication job. None: nothing."""
    spec = os.environ.get("OVERLAP_FEDAVG_FAULT")
    if not spec:
        return None
    fault_rank, fault_round, action = spec.split(":")
    return action if int(fault_rank) == rank and int(fault_round) == round_number else None


def act_out(fault: str | None, when: str) -> None:
    """Carry out an injected fault meant for this moment (when: train, upload or download)."""
    if fault is None or (fault.partition("-")[2] or "train") != when:
        return
    if fault == "raise":
        raise RuntimeError("injected fault")
    os.kill(os.getpid(), signal.SIGSTOP if fault == "stop" else signal.SIGKILL)

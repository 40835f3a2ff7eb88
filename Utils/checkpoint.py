"""The run directory's checkpoint: what the server needs to continue a run exactly (--resume RUN_DIR).

checkpoint.pt holds the server update's state (Utils.aggregation.ServerUpdate.state_dict: the global model,
the model the next uploads start from, the momentum buffer, the secant form's last update), the round it
was taken after, the metrics rows up to that round, the start-up time, and the options that decide the
result, to refuse a checkpoint of another run, and the clients that round sampled ("sampled"); with the client
merge also the last round's uploads and the global model they were built on ("last_uploads", "merge_base"), from
which each of those clients' next start follows.
Clients need nothing saved: every random choice of a round derives from (seed, client, round, epoch), and the
server sends them the models they train from. Except with --compress: then the server keeps what the clients
hold ("replica", "previous_replica"), and each client writes its own error-feedback residual (and, merging,
its next start) after every upload, in RUN_DIR/client-state (write_client_state).

It is written atomically (a temporary file, flushed to disk, then renamed over the previous one), so a
crash at any moment leaves the last complete checkpoint, and it loads with torch.load(weights_only=True):
only tensors, numbers and strings, nothing unpickled that could run code.
"""
from __future__ import annotations

import os
import textwrap
import threading
from dataclasses import fields
from pathlib import Path

import torch

from Utils.config import RunConfig

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1

# Options that may differ when a run is resumed: where and how the processes run, how long they wait (these
# come from the new command line, as for any job), and, kept from the run unless given: the emulated link and
# the clients' speeds (time only), where the data is, and how many rounds there are (a finished run can be
# extended).
PROCESS_OPTIONS = frozenset({"gpus", "backend", "master_addr", "master_port", "timeout", "threads"})
RESUMABLE_CHANGES = PROCESS_OPTIONS | {"max_epoch", "data_dir", "bandwidth", "latency", "slowdown",
                                       "receive_window", "tensorboard", "resume", "out_dir", "launch_time"}


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or of another run: one line saying which and why."""


def result_options(config: dict) -> dict:
    """The options of a config (RunConfig as a dict) that decide the numbers a run produces."""
    return {name: value for name, value in sorted(config.items()) if name not in RESUMABLE_CHANGES}


def write_checkpoint(run_dir: Path, state: dict) -> None:
    """Write checkpoint.pt atomically: the previous one stays until the new one is complete on disk."""
    _save_atomically(run_dir / CHECKPOINT_NAME, {"format": FORMAT, **state})


def _save_atomically(path: Path, content: dict) -> None:
    """torch.save to a temporary name, flushed to disk, then renamed over `path`: a reader never sees half."""
    staging = path.with_name(path.name + ".tmp")
    with staging.open("wb") as f:
        torch.save(content, f)
        f.flush()
        os.fsync(f.fileno())
    staging.replace(path)


class CheckpointWriter:
    """Writes checkpoints on a thread of its own, so that the disk stays off the server's critical path.
    The latest state wins: when a write is still running, a newer state replaces the one waiting, so the
    server does not wait for the disk and the file is at most one write behind.

    Except where clients keep state files (--compress): each keeps only its last CLIENT_STATES_KEPT, and the
    clients run ahead of the server, so the checkpoint on disk must stay within CHECKPOINT_LAG_BOUND rounds
    of the newest, or a resume would find its clients' states deleted. Given bounded=True, submit() waits
    for the disk when the writes have fallen that far behind. No wait outlasts timeout_s (a hung disk)."""

    def __init__(self, run_dir: Path, *, written_round: int = 0, bounded: bool = False, timeout_s: float = 1800.0):
        self.run_dir = run_dir
        self.written_round = written_round   # the round of the checkpoint on disk (0: none)
        self._bounded, self._timeout_s = bounded, timeout_s
        self._changed = threading.Condition()
        self._waiting: dict | None = None
        self._writing = False
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name="checkpoint", daemon=True).start()

    def submit(self, state: dict) -> None:
        """Write `state` (not to be modified afterwards) as soon as the thread is free; bounded, first wait
        until the checkpoint on disk is within CHECKPOINT_LAG_BOUND rounds of this one."""
        self._raise_if_failed()
        with self._changed:
            self._waiting = state
            self._changed.notify_all()
            if self._bounded and not self._changed.wait_for(
                    lambda: state["round"] - self.written_round <= CHECKPOINT_LAG_BOUND or self._error is not None,
                    timeout=self._timeout_s):
                raise OSError(self._hung(f"the checkpoint of round {self.written_round} is on disk, round "
                                         f"{state['round']} is done"))
        self._raise_if_failed()

    def wait(self) -> None:
        """Wait until the last submitted state is on disk; raise what a write raised (a full disk, say)."""
        with self._changed:
            if not self._changed.wait_for(lambda: (self._waiting is None and not self._writing)
                                          or self._error is not None, timeout=self._timeout_s):
                raise OSError(self._hung("the last round's checkpoint is not written"))
        self._raise_if_failed()

    def _hung(self, where: str) -> str:
        return (f"writing {self.run_dir / CHECKPOINT_NAME}: {where}, and no write has ended in "
                f"{self._timeout_s:.0f} s (--timeout): the disk is not keeping up or hangs")

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise OSError(f"writing {self.run_dir / CHECKPOINT_NAME} failed: {self._error}") from self._error

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._waiting is not None)
                state, self._waiting, self._writing = self._waiting, None, True
            try:
                write_checkpoint(self.run_dir, state)
            except BaseException as error:  # noqa: BLE001 - handed to the server thread by wait() and submit()
                self._error = error
            with self._changed:
                self._writing = False
                if self._error is None:
                    self.written_round = state.get("round", self.written_round)
                self._changed.notify_all()


def read_checkpoint(run_dir: Path, config: dict) -> dict:
    """The checkpoint of the run in run_dir, checked against its config (RunConfig as a dict)."""
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: the run stopped before its first round was complete; "
                              f"start it again in a new --out_dir")
    try:
        # Memory-mapped: the launcher's check reads the header, not the tensors (hundreds of MB for a big model)
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        reason = textwrap.shorten(str(error).strip().splitlines()[0], width=120, placeholder=" ...")
        raise CheckpointError(f"{path} cannot be read ({reason}); it is damaged or not a checkpoint of this "
                              f"project") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project's format {FORMAT}")
    expected = checkpoint_options(config)
    saved = _with_added_options(state.get("options"), expected)
    if saved != expected:
        differing = sorted(k for k in set(saved or {}) | set(expected) if (saved or {}).get(k) != expected.get(k))
        raise CheckpointError(f"{path} belongs to another run: {', '.join(differing[:5])} differ from "
                              f"{run_dir / 'config.json'}")
    return state


CLIENT_STATE_DIR = "client-state"
CLIENT_STATES_KEPT = 5   # a client may be a few rounds ahead of the server's last checkpoint on disk
# A client writes its state of round k once it holds G_{k-1}. The server submits round r's checkpoint after
# sending G_r and sends G_{r+1} before the next, so meanwhile a client may write round r + 2's state, and its
# kept states then reach back to r + 3 - CLIENT_STATES_KEPT: the checkpoint on disk must not be older.
CHECKPOINT_LAG_BOUND = CLIENT_STATES_KEPT - 3


def _client_state_path(run_dir: Path, client: int, round_number: int) -> Path:
    return run_dir / CLIENT_STATE_DIR / f"client{client}-round{round_number}.pt"


def write_client_state(run_dir: Path, client: int, round_number: int, state: dict) -> None:
    """A client's own state after its upload of round `round_number` (1..R), atomically; its states older than
    its last CLIENT_STATES_KEPT are removed (a sampled client uploads in some rounds only)."""
    path = _client_state_path(run_dir, client, round_number)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_atomically(path, {"format": FORMAT, "round": round_number, **state})
    saved = sorted(int(p.stem.rsplit("round", 1)[1]) for p in path.parent.glob(f"client{client}-round*.pt"))
    for old in saved[:-CLIENT_STATES_KEPT]:
        _client_state_path(run_dir, client, old).unlink(missing_ok=True)


def read_client_state(run_dir: Path, client: int, round_number: int) -> dict:
    """The state write_client_state saved after round `round_number`; CheckpointError when it is not there. A run
    of an earlier version (one client per rank) named the file by rank and 0-based round."""
    path = _client_state_path(run_dir, client, round_number)
    if not path.is_file():
        path = run_dir / CLIENT_STATE_DIR / f"rank{client}-round{round_number - 1}.pt"
    if not path.is_file():
        raise CheckpointError(f"client {client} has no saved state for round {round_number} in {path.parent}: a "
                              f"compressed run resumes with its clients' error-feedback state, which they write "
                              f"in the run directory (on several machines give every rank the same --out_dir)")
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_options(config: dict) -> dict:
    """What a checkpoint stores to recognise its run (compared by read_checkpoint)."""
    return _comparable(result_options(config))


def _with_added_options(saved: dict | None, expected: dict) -> dict | None:
    """A checkpoint written before an option existed ran with that option's default (say, --merge_weight)."""
    if not isinstance(saved, dict):
        return saved
    defaults = {f.name: f.default for f in fields(RunConfig) if f.name in _LATER_OPTIONS and f.name in expected}
    return {**_comparable(defaults), **saved}


# Options added to RunConfig after checkpoints of FORMAT 1 were first written, with defaults that keep the
# older runs' numbers.
_LATER_OPTIONS = frozenset({"merge_weight", "compress", "topk_ratio", "shards_per_client", "num_clients",
                            "clients_per_round", "sampling"})


def _comparable(options: dict) -> dict:
    """JSON and torch.save round trips turn tuples into lists: compare lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}

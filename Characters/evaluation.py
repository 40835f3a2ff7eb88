"""The server's test-set evaluation, off the critical path: a background thread works from snapshots.

The server hands over a copy of G_r as soon as it has sent it and goes straight back to receiving
uploads, so a round costs training and communication only. The thread evaluates the snapshots in round
order at the lowest CPU priority: on a machine whose cores the ranks keep busy it takes only the cycles
they leave idle (and catches up when the clients finish), on a machine with a spare core it keeps pace.
Each round's metrics row still says when G_r existed (wall_s) and, once evaluated, its test metrics.
"""
from __future__ import annotations

import copy
import logging
import os
import queue
import threading
import time
from pathlib import Path

import torch

from Utils.data.datasets import ImageData
from Utils.data.text import TextData
from Utils.flat import cpu_state_dict, load_flat_into_model, model_size
from Utils.run_log import higher_is_better

log = logging.getLogger(__name__)

SNAPSHOT_BUDGET_BYTES = 512 * 2**20   # models waiting for evaluation; beyond it the server waits


def max_pending_snapshots(model_bytes: int) -> int:
    """How many global models (model_bytes each, as flat float32) may wait for evaluation before the server
    waits for the evaluator."""
    return max(2, SNAPSHOT_BUDGET_BYTES // max(model_bytes, 1))


def _lower_this_threads_priority() -> None:
    """Linux: nice 19 for the calling thread only (a thread is a task with its own id)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):
        pass   # not Linux, or not permitted: evaluation then competes at normal priority


class BackgroundEvaluator:
    """Evaluates snapshots of the global model in round order; keeps best_model.pt up to date."""

    def __init__(self, model: torch.nn.Module, data: ImageData | TextData, metric: str, best_path: Path,
                 timeout_s: float):
        self._model = copy.deepcopy(model)   # its own copy: the server keeps loading into the live one
        self._data = data.test_on(next(model.parameters()).device)   # staged once on a GPU
        self._metric, self._best_path, self._timeout_s = metric, best_path, timeout_s
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending_snapshots(4 * model_size(model)))
        self._results: dict[int, dict] = {}
        self._done = threading.Condition()
        self._error: BaseException | None = None
        self._told_behind = False
        self.best: float | None = None
        self._thread = threading.Thread(target=self._run, name="evaluator", daemon=True)
        self._thread.start()

    def submit(self, round_number: int, flat_model: torch.Tensor) -> torch.Tensor:
        """Queue a copy of G_r and return it (not to be modified); waits only when the evaluator is a full
        snapshot budget behind."""
        self._raise_if_failed()
        item = (round_number, flat_model.detach().clone())
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            if not self._told_behind:
                self._told_behind = True
                log.info("evaluation is %d models behind the rounds: the server now waits for it (--test_samples "
                         "or --eval_every makes it cheaper)", self._queue.maxsize)
            self._put_waiting(item)
        return item[1]

    def _put_waiting(self, item) -> None:
        deadline = time.monotonic() + self._timeout_s
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=1.0)
                return
            except queue.Full:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the evaluator made no progress in {self._timeout_s:.0f} s") from None

    def result(self, round_number: int, wait: bool = False) -> dict | None:
        """G_r's test metrics (plus eval_s, the evaluation's duration), or None while not yet evaluated."""
        with self._done:
            if wait:
                finished = self._done.wait_for(lambda: round_number in self._results or self._error is not None,
                                               timeout=self._timeout_s)
                if not finished:
                    raise TimeoutError(f"evaluating round {round_number} took over {self._timeout_s:.0f} s")
            self._raise_if_failed()
            return self._results.pop(round_number, None)

    def close(self) -> None:
        """Stop the thread once the queued snapshots are done (callers wait for the results they need)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(self._timeout_s)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"evaluation failed: {self._error}") from self._error

    def _run(self) -> None:
        _lower_this_threads_priority()
        while (item := self._queue.get()) is not None:
            round_number, flat_model = item
            started = time.perf_counter()
            try:
                load_flat_into_model(flat_model, self._model)
                metrics = self._data.evaluate(self._model)
                self._keep_if_best(metrics[self._metric])
            except BaseException as error:   # re-raised in the server's thread
                with self._done:
                    self._error = error
                    self._done.notify_all()
                return
            metrics["eval_s"] = time.perf_counter() - started
            with self._done:
                self._results[round_number] = metrics
                self._done.notify_all()

    def _keep_if_best(self, value: float) -> None:
        if self.best is None or (value > self.best if higher_is_better(self._metric) else value < self.best):
            self.best = value
            torch.save(cpu_state_dict(self._model), self._best_path)

"""The server (rank 0): receive uploads, update the global model, send it, log; evaluation runs beside.

One loop serves FedAvg and Overlap-FedAvg; the difference lives in Utils.aggregation.ServerUpdate
(staleness, compensation, momentum) and in the clients' pipeline. A round's uploads come from the clients it
samples (--clients_per_round; all by default), each from the rank that hosts it (Utils.federation); they are
received in fixed client order and folded into running sums, so the sums take O(model) memory (the client
merge also keeps the round's uploads for the checkpoint) and the arithmetic does not depend on which client
happens to finish first (same seed, same numbers, whatever the network).
With --compress an upload's decoded difference is added to the current global model (the client took it
against its own copy of that model, which the broadcasts keep within their residual of it),
and a broadcast sends the global model less its replica of what the clients hold, then adds to the
replica what the clients will decode: what a broadcast loses stays in the difference and goes out next time.
"""
from __future__ import annotations

import collections
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from Characters.evaluation import BackgroundEvaluator
from Characters.faults import act_out, injected_fault
from Utils import transport
from Utils.aggregation import (
    ADAPTIVE_COMPENSATIONS,
    ServerUpdate,
    StreamingMoments,
    client_weights,
    merged_start,
    uploads_are_stale,
)
from Utils.checkpoint import CheckpointError, CheckpointWriter, checkpoint_options, read_checkpoint
from Utils.compression import decode, encode, part_specs
from Utils.config import RunConfig
from Utils.data.datasets import ImageData
from Utils.data.text import TextData
from Utils.federation import host_rank
from Utils.flat import buffer_size, cpu_state_dict, flatten_model, load_flat_into_model, model_size
from Utils.memory import reset_peak_resident, resident_mb
from Utils.run_log import (
    SUMMARY_TARGETS,
    MetricsWriter,
    TensorBoardLog,
    best_row,
    higher_is_better,
    summarise_rows,
)
from Utils.transport import RoundReport

log = logging.getLogger(__name__)


def job_start_time(cfg: RunConfig) -> float:
    """When the job was launched (set by the launcher), else when this process started its run."""
    return cfg.launch_time if cfg.launch_time is not None else time.time()


def _mean(values: list[float], weights: list[float] | None = None) -> float:
    if weights is None:
        weights = [1.0 / len(values)] * len(values)
    return float(sum(w * v for w, v in zip(weights, values, strict=True)))


# A receive that takes this much longer than the round's quickest one waited for its client's upload.
STRAGGLER_WAIT_S = 0.01


def waited_for(clients: list[int], waits: list[float]) -> int | None:
    """The client the round waited for: uploads are received in client order, so it is the last one whose
    receive blocked (took STRAGGLER_WAIT_S more than the quickest, or than nothing with one client); None when
    every upload was already in."""
    quickest = min(waits) if len(waits) > 1 else 0.0
    blocked = [client for client, wait in zip(clients, waits, strict=True) if wait > quickest + STRAGGLER_WAIT_S]
    return blocked[-1] if blocked else None


class Diverged(RuntimeError):
    """A non-finite upload or global model: the run cannot recover, so it stops with the round and the cause."""


@dataclass
class _PendingRow:
    """A round's metrics row until it is complete."""
    row: dict
    snapshot: torch.Tensor | None = None   # G_r while the evaluator works on it; None once its metrics are in
    reports: list[RoundReport] | None = None   # the round's communication figures (None: lost)
    reports_in: bool = False   # they come with the next round's uploads, or with the final reports


class DelayedRows:
    """The rows not written yet, oldest first. A round's row waits for its communication figures (the clients
    send them with their next uploads) and for its evaluation (which runs beside the rounds); complete rows are
    written in round order by `write_row`."""

    def __init__(self, evaluator: BackgroundEvaluator | None, write_row):
        self.evaluator, self.write_row = evaluator, write_row
        self.pending: list[_PendingRow] = []

    def add(self, row: dict, model: torch.Tensor | None = None) -> None:
        """A new round's row; `model` (G_r) when the round is evaluated."""
        snapshot = self.evaluator.submit(row["round"], model) if model is not None else None
        self.pending.append(_PendingRow(row, snapshot))

    def attach_reports(self, reports: list[RoundReport] | None) -> None:
        """The communication figures of the newest row's round (None: lost, as after an early stop)."""
        if self.pending:
            self.pending[-1].reports, self.pending[-1].reports_in = reports, True

    def flush(self, wait: bool = False) -> None:
        """Write the complete rows, in round order (wait=True: wait for the evaluations still running)."""
        while self.pending and self.pending[0].reports_in and self._take_metrics(self.pending[0], wait):
            entry = self.pending.pop(0)
            self.write_row(entry.row, entry.reports)

    def metric(self, round_number: int, metric: str) -> float | None:
        """G_round's test metric, waiting for its evaluation (its row is not written yet)."""
        entry = next(e for e in self.pending if e.row["round"] == round_number)
        self._take_metrics(entry, wait=True)
        return entry.row.get(metric)

    def _take_metrics(self, entry: _PendingRow, wait: bool) -> bool:
        """Move G_r's test metrics into its row once evaluated; False while the evaluator is still at it."""
        if entry.snapshot is not None:
            metrics = self.evaluator.result(entry.row["round"], wait=wait)
            if metrics is None:
                return False
            entry.row.update(metrics)
            entry.snapshot = None
        return True

    def saved(self) -> list[dict]:
        """For the checkpoint: each row (a copy: the checkpoint thread pickles it while this one adds the row's
        metrics) with the model it waits to evaluate."""
        return [{"row": dict(entry.row), "model": entry.snapshot} for entry in self.pending]

    def restore(self, saved: list[dict]) -> None:
        """A resumed run's rows that were not written: their evaluations start again from the saved models; their
        communication figures are lost (blank)."""
        for item in saved:
            self.add(item["row"], item["model"])
            self.pending[-1].reports_in = True


class _Server:
    """The server's state across rounds; run() is the round loop, each step a method. A resumed run's state is
    restored when the server is built, so the loop is the same for a new run and a resumed one."""

    def __init__(self, cfg: RunConfig, data: ImageData | TextData, model: torch.nn.Module,
                 num_samples: list[int]):
        self.cfg, self.data, self.model = cfg, data, model
        self.launched = job_start_time(cfg)
        self.out_dir = Path(cfg.out_dir)
        self.metric = data.metric
        saved = read_checkpoint(self.out_dir, asdict(cfg)) if cfg.resume else None
        self.writer = MetricsWriter(self.out_dir / "metrics.csv", self.metric, saved["rows"] if saved else ())
        self.tensorboard = TensorBoardLog(self.out_dir / "tensorboard", self.metric) if cfg.tensorboard else None
        self.num_samples = num_samples   # client c's training samples at index c - 1
        self.ranks = list(range(1, cfg.world_size))   # the client ranks: every broadcast goes to all of them
        self.clients, self.weights = self.round_clients(1)   # the round being received, and their p_k
        self.model_numel = model_size(model)
        self.update = ServerUpdate(flatten_model(model), stale=uploads_are_stale(cfg.overlap, cfg.compensation),
                                   momentum=cfg.mom,
                                   server_lr=cfg.server_lr, compensation=cfg.compensation, lambd=cfg.lambd,
                                   comp_coef=cfg.comp_coef, num_buffers=buffer_size(model))
        self.specs = part_specs(cfg.compress, self.model_numel, cfg.topk_ratio)
        self.payload_words = transport.payload_words(self.specs)
        self.window = min(cfg.receive_window, cfg.sampled_per_round)
        # The client merge keeps every client's last upload for --resume (compressed, the clients keep their own
        # state instead); otherwise the upload buffers are reused round after round (receive).
        self.keeps_uploads = cfg.server_keeps_uploads
        self.upload_buffers = [] if self.keeps_uploads else [torch.empty(transport.upload_size(self.payload_words))
                                                           for _ in range(self.window)]
        # --compress: the global model as the clients hold it (what the broadcasts have added up to), and as they
        # held it one broadcast before (what an Overlap client's next round trains from, for --resume)
        self.replica = self.update.current.clone() if cfg.compress != "none" else None
        self.previous_replica = self.replica
        # The client merge: each client's next start depends on its last upload and the global model that upload
        # was built on, so a checkpoint keeps both (K + 1 models), to send every client its start on --resume.
        self.merge_base: torch.Tensor | None = None
        self.last_uploads: list[torch.Tensor] = []
        self.last_sent = 0.0
        self.waited_for: int | None = None   # the round's straggler (waited_for)
        self.client_peaks_mb: list[float | None] = [None] * cfg.client_ranks   # from their final reports
        self.evaluation_tail_s: float | None = None   # evaluation still running after the last round
        self.deadline = transport.HangDeadline(cfg.timeout)
        evaluates = cfg.eval_every > 0 or cfg.early_stop is not None
        self.evaluator = BackgroundEvaluator(model, data, self.metric, self.out_dir / "best_model.pt",
                                             cfg.timeout) if evaluates else None
        self.rows = DelayedRows(self.evaluator, self.write_row)
        self.checkpoints = CheckpointWriter(self.out_dir, written_round=saved["round"] if saved else 0,
                                            bounded=cfg.compress != "none", timeout_s=cfg.timeout)
        self.checkpoint_options = checkpoint_options(asdict(cfg))   # the same every round
        self.rounds_done = 0
        self.startup_s: float | None = None   # launch to G_0 sent (a resumed run keeps its first one)
        if saved is not None:
            self.restore(saved)

    def restore(self, saved: dict) -> None:
        """Continue a run from its checkpoint (Utils/checkpoint.py): the server update, the merge or compression
        state, the rows not yet written, and the clock, so that wall_s goes on from the last saved round."""
        self.update.load_state_dict(saved["update"])
        if self.keeps_uploads:
            self.merge_base, self.last_uploads = saved["merge_base"], list(saved["last_uploads"])
        if self.cfg.compress != "none":
            self.replica, self.previous_replica = saved["replica"], saved["previous_replica"]
        self.rounds_done = saved["round"]
        if saved.get("sampled", self.cfg.round_clients(self.rounds_done)) != self.cfg.round_clients(self.rounds_done):
            raise CheckpointError(f"{self.out_dir}: the checkpoint's round {self.rounds_done} sampled other clients "
                                  f"than this version of the project samples; resume it with the version that made it")
        if self.evaluator is not None:
            best = best_row(saved["rows"], self.metric)
            self.evaluator.best = best[self.metric] if best else None
        self.rows.restore(saved["pending"])
        self.startup_s = saved["startup_s"]
        log.info("resumed after round %d in %.1f s", self.rounds_done, time.time() - self.launched)
        last_row = (saved["rows"] + [pending["row"] for pending in saved["pending"]])[-1]
        self.launched = time.time() - last_row["wall_s"]

    def round_clients(self, round_number: int) -> tuple[list[int], list[float]]:
        """The clients whose uploads make G_round, and their FedAvg weights (by sample count)."""
        clients = self.cfg.round_clients(round_number)
        return clients, client_weights([self.num_samples[client - 1] for client in clients])

    def run(self) -> dict:
        cfg = self.cfg
        self.send_start()
        self.mark_started()
        stopping = False
        progress = tqdm(total=cfg.max_epoch, initial=self.rounds_done, desc="rounds", unit="round",
                        disable=None, leave=False)
        round_number = self.rounds_done
        for round_number in range(self.rounds_done + 1, cfg.max_epoch + 1):
            act_out(injected_fault(transport.SERVER_RANK, round_number), "train")
            moments, reports, diverged = self.receive(round_number)
            self.rows.attach_reports(reports)   # the uploads carry the communication figures of the last round
            diverged = diverged or self.apply(moments)
            if diverged is not None:
                self.stop_diverged(f"round {round_number}: {diverged}")
            # Decided on G_{r-1}, announced with G_r: the clients are already training the next round.
            stopping = self.early_stop_decided(round_number - 1)
            bytes_down = self.broadcast(stop=stopping)
            row = self.round_row(round_number, reports, bytes_down, round_s=self.tick())
            self.rows.add(row, self.update.current if self.evaluation_due(round_number, stopping) else None)
            self.rows.flush()
            self.checkpoint(round_number, stopped_early=stopping)
            progress.update(1)
            if stopping:
                break
        progress.close()
        self.rows.attach_reports(None if stopping else self.receive_final_reports())
        return self.finish(round_number, stopped=stopping)

    def send_start(self) -> None:
        """G_0; or, resuming after round r, what the clients' next round trains from (G_r, Overlap G_{r-1}
        then G_r; with the client merge each client's own start, then G_r), so that the pipeline continues
        exactly."""
        done = self.rounds_done
        if self.replica is not None and done > 0:   # --compress: what the clients held (their own state is theirs)
            self.send_compressed_start(done)
        elif self.cfg.client_merge and done > 0:
            # G_{r-1} for the clients the last round did not sample, then each sampled one's own start (to its rank)
            transport.send_to_all(transport.pack_start(self.merge_base, done), self.ranks)
            for client, upload in zip(self.cfg.round_clients(done), self.last_uploads, strict=True):
                start = merged_start(self.merge_base, upload, self.cfg.merge_weight)
                transport.send_to_all(transport.pack_start(start, done), [host_rank(client, self.cfg.client_ranks)])
        else:
            start = self.update.upload_start if self.cfg.overlap and done > 0 else self.update.current
            transport.send_to_all(transport.pack_start(start, done), self.ranks)
        if self.cfg.overlap and done > 0 and self.replica is None:
            transport.send_to_all(transport.pack_download(self.update.current, stop=False), self.ranks)
        self.last_sent = time.perf_counter()

    def send_compressed_start(self, done: int) -> None:
        """Resuming a compressed run: FedAvg's clients train from the replica B_r; Overlap's from B_{r-1} (or,
        merging, from their own saved start), then receive broadcast r again (G_r - B_{r-1}, encoded as it
        was), which brings them to B_r. Each client reads its residual from its state file."""
        if not self.cfg.overlap:
            transport.send_to_all(transport.pack_start(self.replica, done), self.ranks)
            return
        transport.send_to_all(transport.pack_start(self.previous_replica, done), self.ranks)
        parts = encode(self.update.current - self.previous_replica, self.cfg.compress, self.cfg.topk_ratio)
        transport.send_to_all(transport.pack_download(transport.pack_payload(parts), stop=False), self.ranks)

    def mark_started(self) -> None:
        """Start-up is measured once, at a run's first G_0 (a resumed run keeps it)."""
        if self.startup_s is None:
            self.startup_s = time.time() - self.launched
            log.info("start-up %.1f s (launch to G_0 sent)", self.startup_s)

    def receive(self, round_number: int) -> tuple[StreamingMoments, list[RoundReport], str | None]:
        """Every sampled client's upload, in fixed client order, folded into the update's running sums; and what
        diverged, if an upload is not finite (all are received even then, so that no client is left sending)."""
        self.clients, self.weights = self.round_clients(round_number)
        moments, reports, diverged = self.update.new_round(), [], None
        uploads, waits = [], []
        # Up to --receive_window uploads in flight at once (on a real network, one receive at a time would make
        # the clients' transfers queue behind each other), each added in client order when it is in.
        in_flight: collections.deque[transport.PostedReceive] = collections.deque()
        free = list(self.upload_buffers)

        def post(index: int) -> None:
            # The client merge keeps every upload for the checkpoint: each in a buffer of its own.
            buffer = torch.empty(transport.upload_size(self.payload_words)) if self.keeps_uploads else free.pop()
            in_flight.append(transport.post_recv(buffer, host_rank(self.clients[index], self.cfg.client_ranks)))

        for index in range(min(self.window, len(self.clients))):
            post(index)
        for index, (client, weight) in enumerate(zip(self.clients, self.weights, strict=True)):
            began = time.perf_counter()
            buffer = in_flight.popleft().wait(self.deadline.seconds, f" (the server was waiting for client {client}'s "
                                                                     f"upload of round {round_number})")
            waits.append(time.perf_counter() - began)
            local, report = transport.unpack_upload(buffer, self.payload_words)
            if self.cfg.compress != "none":
                local = self.update.current + decode(transport.unpack_payload(local, self.specs), self.cfg.compress,
                                                     self.model_numel)
            if self.keeps_uploads:
                uploads.append(local)
            if diverged is None and not (math.isfinite(report.train_loss) and torch.isfinite(local).all()):
                diverged = (f"client {client}'s model is not finite (its training loss: {report.train_loss:.4g}); "
                            f"the run diverged: try a smaller --lr")
            moments.add(local, weight)
            reports.append(report)
            if not self.keeps_uploads:
                free.append(buffer)   # added up: the next receive may fill it
            if index + self.window < len(self.clients):
                post(index + self.window)
        if self.keeps_uploads:
            self.last_uploads = uploads
        self.waited_for = waited_for(self.clients, waits)
        return moments, reports, diverged

    def apply(self, moments: StreamingMoments) -> str | None:
        """The server update from the round's uploads; what diverged if the new global model is not finite."""
        if self.keeps_uploads:   # the model these uploads were built on (replaced, never modified)
            self.merge_base = self.update.current.clone()
        self.update.apply(moments)
        if not torch.isfinite(self.update.current).all():
            return ("the server update made the global model non-finite; the run diverged: try a smaller --server_lr "
                    "or --mom")
        return None

    def stop_diverged(self, reason: str) -> None:
        """End a diverged run: the clients end cleanly, the good rounds keep their rows, the last good round its
        checkpoint, and summary.json says why; then raise, so that the server's line names the cause."""
        self.broadcast(stop=True)
        self.rows.flush(wait=True)
        self.checkpoints.wait()
        self.write_summary(stopped=False, diverged=reason)
        raise Diverged(reason)

    def broadcast(self, *, stop: bool) -> int:
        """Send the current global model and the continue/stop flag to every client rank; the bytes sent."""
        return transport.send_to_all(transport.pack_download(self.global_payload(), stop), self.ranks,
                                     self.deadline.seconds)

    def tick(self) -> float:
        """Seconds since the last global model was sent: a round's round_s, which the hang deadline learns."""
        now = time.perf_counter()
        round_s, self.last_sent = now - self.last_sent, now
        self.deadline.observe(round_s)
        return round_s

    def round_row(self, round_number: int, reports: list[RoundReport], bytes_down: int, round_s: float) -> dict:
        """The round's metrics row as far as it is known when G_r is sent (docs/outputs.md)."""
        return {"round": round_number, "round_s": round_s, "wall_s": time.time() - self.launched,
                "train_loss": _mean([r.train_loss for r in reports], self.weights),
                "train_s": _mean([r.train_s for r in reports]),
                "bytes_up": len(reports) * 4 * transport.upload_size(self.payload_words),
                "bytes_down": bytes_down,
                # the scalar C of the compensation (adaptive forms: this update's estimate); FedAvg has none
                "comp_coef": self.update.last_comp_coef if self.update.stale else None,
                "waited_for": self.waited_for}

    def global_payload(self) -> torch.Tensor:
        """What a download carries: the global model, or with --compress its difference from the replica, which
        then adds what the clients will decode."""
        if self.replica is None:
            return self.update.current
        parts = encode(self.update.current - self.replica, self.cfg.compress, self.cfg.topk_ratio)
        self.previous_replica = self.replica
        self.replica = self.replica + decode(parts, self.cfg.compress, self.model_numel)
        return transport.pack_payload(parts)

    def evaluation_due(self, round_number: int, stopping: bool) -> bool:
        cfg = self.cfg
        every = cfg.eval_every > 0 and (round_number % cfg.eval_every == 0 or round_number == cfg.max_epoch)
        return every or stopping or (cfg.early_stop is not None and round_number == cfg.early_stop[0])

    def early_stop_decided(self, round_number: int) -> bool:
        """--optuna_early_stop ROUND METRIC: True when G_ROUND's metric is worse than METRIC (waits for it)."""
        cfg = self.cfg
        if cfg.early_stop is None or round_number != cfg.early_stop[0]:
            return False
        value, limit = self.rows.metric(round_number, self.metric), cfg.early_stop[1]
        if value is None:
            return False
        return value < limit if higher_is_better(self.metric) else value > limit

    def checkpoint(self, round_number: int, stopped_early: bool = False) -> None:
        """checkpoint.pt after this round: the server update, the rows, and the rows still waiting with the
        models they wait to evaluate (Utils/checkpoint.py); stopped_early marks a run that --optuna_early_stop
        ended, which --resume must not continue."""
        merge = {"merge_base": self.merge_base, "last_uploads": self.last_uploads} if self.keeps_uploads else {}
        if self.replica is not None:   # the clients' merge state is in their own files then (client_state)
            merge = {"replica": self.replica, "previous_replica": self.previous_replica}
        self.checkpoints.submit({"round": round_number, "sampled": self.clients, "update": self.update.state_dict(),
                                 "rows": list(self.writer.rows), "pending": self.rows.saved(),
                                 "startup_s": self.startup_s, "options": self.checkpoint_options,
                                 "stopped_early": stopped_early, **merge})

    def receive_final_reports(self) -> list[RoundReport]:
        """After the final download each client rank reports its last communication job and its peak memory."""
        message = torch.empty(transport.FINAL_REPORT_SIZE)
        reports = []
        for rank in self.ranks:
            transport.recv(message, rank, timeout_s=self.deadline.seconds,
                           waiting_for=f" (the server was waiting for client rank {rank}'s last report)")
            report, self.client_peaks_mb[rank - 1] = transport.unpack_final_report(message)
            reports.append(report)
        return reports

    def finish(self, round_number: int, *, stopped: bool) -> dict:
        """After the last round: every row written, the final checkpoint, the models and summary.json."""
        rounds_ended = time.time()
        self.rows.flush(wait=True)
        self.checkpoint(round_number, stopped_early=stopped)   # every row written: nothing pending
        self.checkpoints.wait()
        if self.evaluator is not None:
            self.evaluator.close()
            self.evaluation_tail_s = time.time() - rounds_ended
            if self.evaluation_tail_s > 1.0:
                log.info("evaluation finished %.1f s after the last round", self.evaluation_tail_s)
        self.writer.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
        load_flat_into_model(self.update.current, self.model)
        torch.save(cpu_state_dict(self.model), self.out_dir / "final_model.pt")
        log.info("server peak resident memory during the rounds %.1f MB", resident_mb())
        summary = self.write_summary(stopped=stopped)
        log.info(summary["line"])
        return summary

    def write_summary(self, *, stopped: bool, diverged: str | None = None) -> dict:
        """The run's summary from its written rows, and summary.json for tools, so that none has to read
        train.log (docs/outputs.md); a diverged run's too, from its good rounds, with the reason."""
        cfg = self.cfg
        figures = summarise_rows(self.writer.rows, self.metric, SUMMARY_TARGETS.get(cfg.dataset, ()), self.startup_s)
        summary = _summary(cfg, figures, self.metric, time.time() - self.launched, stopped)
        content = {"script": cfg.script, "dataset": cfg.dataset, "model": cfg.model, "world_size": cfg.world_size,
                   "seed": cfg.seed, "metric": self.metric, "wall_s": summary["wall_s"],
                   "stopped_early": summary["stopped_early"], **figures,
                   "client_samples": self.num_samples, "evaluation_tail_s": self.evaluation_tail_s,
                   # peak resident memory (VmHWM, MB) by rank: the server's over the rounds, each client rank's
                   # over its life (null: not reported, as after an early stop)
                   "peak_resident_mb": [resident_mb(), *self.client_peaks_mb],
                   **({"diverged": diverged} if diverged else {})}
        staging = self.out_dir / "summary.json.tmp"
        staging.write_text(json.dumps(content, indent=2) + "\n")
        staging.replace(self.out_dir / "summary.json")   # a reader never sees half a file
        return summary

    def write_row(self, row: dict, reports: list[RoundReport] | None) -> None:
        """Add the communication figures of the round's job, write the row and log its line."""
        if reports is not None:
            row["comm_wait_s"] = _mean([r.comm_wait_s for r in reports])
            row["comm_s"] = _mean([r.comm_s for r in reports])
        self.writer.write(row)
        if self.tensorboard is not None:
            self.tensorboard.write(row)
        metric = self.metric
        shown = f"{metric} {row[metric]:.4f} test_loss {row['test_loss']:.4f} | " if metric in row else ""
        adaptive = f" | C {row['comp_coef']:.3f}" if self.cfg.compensation in ADAPTIVE_COMPENSATIONS else ""
        log.info("round %d/%d | %strain_loss %.4f | round %.2fs train %.2fs comm %.2fs waited %.2fs%s",
                 row["round"], self.cfg.max_epoch, shown, row["train_loss"], row["round_s"], row["train_s"],
                 row.get("comm_s", math.nan), row.get("comm_wait_s", math.nan), adaptive)


def run_server(cfg: RunConfig, data: ImageData | TextData, model: torch.nn.Module,
               num_samples: list[int]) -> dict:
    """Run R rounds; return the summary (also logged, and written to the run directory)."""
    server = _Server(cfg, data, model, num_samples)
    hosting = "" if cfg.federation_size == cfg.client_ranks else f" on {cfg.client_ranks} client ranks"
    if cfg.sampled_per_round < cfg.federation_size:
        hosting += f", {cfg.sampled_per_round} sampled per round ({cfg.sampling})"
    shown = num_samples if len(num_samples) <= 16 else [min(num_samples), max(num_samples)]
    log.info("%d clients%s, %s samples each; %s", cfg.federation_size, hosting,
             (", " if len(num_samples) <= 16 else " to ").join(f"{n:,}" for n in shown),
             "FedAvg (blocking)" if not cfg.overlap else
             f"Overlap-FedAvg, client merge b = {cfg.merge_weight:g}" if cfg.client_merge else
             f"Overlap-FedAvg (one-version-stale pipeline, {cfg.compensation} compensation)")
    log.info("server resident memory %.1f MB after loading (peak %.1f MB)", resident_mb("VmRSS"), resident_mb())
    reset_peak_resident()
    return server.run()


def _summary(cfg: RunConfig, figures: dict, metric: str, wall_s: float, stopped: bool) -> dict:
    """What the launcher and a grid or search get back: the run's figures (summarise_rows) and its last line."""
    rounds, best, best_round, final = figures["rounds"], figures["best"], figures["best_round"], figures["final"]
    line = (f"done: {rounds} rounds{' (stopped early)' if stopped else ''}, "
            f"best {metric} {best:.4f} (round {best_round}), final {metric} {final:.4f}, "
            f"wall {wall_s:.1f} s, run directory {cfg.out_dir}" if best is not None else
            f"done: {rounds} rounds, no evaluation, wall {wall_s:.1f} s, run directory {cfg.out_dir}")
    return {"metric": metric, "best": math.nan if best is None else best, "best_round": best_round or 0,
            "final": math.nan if final is None else final, "rounds": rounds, "wall_s": wall_s,
            "stopped_early": stopped, "out_dir": cfg.out_dir, "line": line}

"""The server (rank 0): receive uploads, update the global model, send it, evaluate, log.

One loop serves FedAvg and Overlap-FedAvg; the difference lives in Utils.aggregation.ServerUpdate
(staleness, compensation, momentum) and in the clients' pipeline. Uploads are received in fixed client
order and folded into running sums, so the server holds O(model) memory and its arithmetic does not
depend on which client happens to finish first (same seed, same numbers, whatever the network).
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from Utils import transport
from Utils.aggregation import ServerUpdate, client_weights
from Utils.config import RunConfig
from Utils.datasets import ImageData, TextData
from Utils.run_log import MetricsWriter, higher_is_better
from Utils.training import evaluate
from Utils.transport import STATS_FIELDS

log = logging.getLogger(__name__)

CONTINUE, STOP = 1.0, 0.0   # the flag that ends every download


def job_start_time() -> float:
    """When the job was launched (set by the launcher), else when this process started its run."""
    return float(os.environ.get("OVERLAP_FEDAVG_LAUNCH_TIME", time.time()))


def reset_peak_resident() -> None:
    """Restart the VmHWM high-water mark (Linux), so the reported peak covers the rounds, not data loading."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def resident_mb(field: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident set size in MB; NaN where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def _mean(values: list[float], weights: list[float] | None = None) -> float:
    if weights is None:
        weights = [1.0 / len(values)] * len(values)
    return float(sum(w * v for w, v in zip(weights, values, strict=True)))


def run_server(cfg: RunConfig, data: ImageData | TextData, model: torch.nn.Module,
               num_samples: list[int]) -> dict:
    """Run R rounds; return the summary (also logged, and written to the run directory)."""
    launched = job_start_time()
    out_dir = Path(cfg.out_dir)
    metric = "perplexity" if isinstance(data, TextData) else "accuracy"
    writer = MetricsWriter(out_dir / "metrics.csv", metric)
    weights = client_weights(num_samples)
    clients = list(range(1, cfg.world_size))
    numel = transport.model_size(model)
    update = ServerUpdate(transport.flatten_model(model), stale=cfg.overlap, momentum=cfg.mom,
                          server_lr=cfg.server_lr, compensation=cfg.compensation, lambd=cfg.lambd)
    upload = torch.empty(numel + len(STATS_FIELDS))
    upload_bytes = upload.numel() * upload.element_size()

    def broadcast(flag: float) -> int:
        return transport.send_to_all(torch.cat([update.current, torch.tensor([flag])]), clients)

    log.info("%d clients, %s samples each; %s", len(clients), ", ".join(f"{n:,}" for n in num_samples),
             "Overlap-FedAvg (one-version-stale pipeline)" if cfg.overlap else "FedAvg (blocking)")
    log.info("server resident memory %.1f MB after loading (peak %.1f MB)", resident_mb("VmRSS"), resident_mb())
    reset_peak_resident()
    broadcast(CONTINUE)
    log.info("start-up %.1f s (launch to G_0 sent)", time.time() - launched)
    last_sent, pending_row, stop_requested, stopping = time.perf_counter(), None, False, False
    best_so_far = None

    progress = tqdm(total=cfg.max_epoch, desc="rounds", unit="round", disable=None, leave=False)
    for round_index in range(1, cfg.max_epoch + 1):
        moments = update.new_round()
        stats = []
        for client, weight in zip(clients, weights, strict=True):
            transport.recv(upload, client)
            local, client_stats = transport.split_upload(upload, numel)
            moments.add(local, weight)
            stats.append(client_stats)
        if pending_row is not None:   # these uploads carry the communication figures of the last round
            _finish_row(pending_row, stats, writer, cfg)
        update.apply(moments)
        stopping = stop_requested
        bytes_down = broadcast(STOP if stopping else CONTINUE)   # clients go on before we evaluate
        now = time.perf_counter()
        row = {"round": round_index, "round_s": now - last_sent, "wall_s": time.time() - launched,
               "train_loss": _mean([s["train_loss"] for s in stats], weights),
               "train_s": _mean([s["train_s"] for s in stats]),
               "bytes_up": len(clients) * upload_bytes, "bytes_down": bytes_down}
        last_sent = now
        due = cfg.eval_every > 0 and (round_index % cfg.eval_every == 0 or round_index == cfg.max_epoch)
        if due or stopping or (cfg.early_stop is not None and round_index == cfg.early_stop[0]):
            transport.load_flat_into_model(update.current, model)
            row.update(evaluate(model, data))
            if best_so_far is None or (row[metric] > best_so_far if higher_is_better(metric)
                                       else row[metric] < best_so_far):
                best_so_far = row[metric]
                torch.save(model.state_dict(), out_dir / "best_model.pt")
        pending_row = row
        progress.update(1)
        if stopping:
            break
        # Decided on G_r, announced with G_{r+1}: the clients are already training the next round.
        stop_requested = _should_stop_early(cfg, round_index, row, writer)
    progress.close()

    if not stopping:   # each client reports its last job after the final download
        final_stats = torch.empty(len(STATS_FIELDS))
        collected = []
        for client in clients:
            transport.recv(final_stats, client)
            collected.append(dict(zip(STATS_FIELDS, final_stats.tolist(), strict=True)))
        _finish_row(pending_row, collected, writer, cfg)
    else:
        _finish_row(pending_row, None, writer, cfg)
    writer.close()

    transport.load_flat_into_model(update.current, model)
    torch.save(model.state_dict(), out_dir / "final_model.pt")
    summary = _summary(cfg, writer, metric, time.time() - launched, stopping)
    log.info("server peak resident memory during the rounds %.1f MB", resident_mb())
    log.info(summary["line"])
    return summary


def _finish_row(row: dict, stats: list[dict] | None, writer: MetricsWriter, cfg: RunConfig) -> None:
    """Add the communication figures of the round's job, write the row and log its line."""
    if stats is not None:
        row["comm_wait_s"] = _mean([s["comm_wait_s"] for s in stats])
        row["comm_s"] = _mean([s["comm_s"] for s in stats])
    writer.write(row)
    metric = writer.metric
    shown = f"{metric} {row[metric]:.4f} test_loss {row['test_loss']:.4f} | " if metric in row else ""
    log.info("round %d/%d | %strain_loss %.4f | round %.2fs train %.2fs comm %.2fs waited %.2fs",
             row["round"], cfg.max_epoch, shown, row["train_loss"], row["round_s"], row["train_s"],
             row.get("comm_s", math.nan), row.get("comm_wait_s", math.nan))


def _should_stop_early(cfg: RunConfig, round_index: int, row: dict, writer: MetricsWriter) -> bool:
    """--optuna_early_stop ROUND METRIC: stop a run whose metric at ROUND is worse than METRIC."""
    if cfg.early_stop is None or round_index != cfg.early_stop[0]:
        return False
    value = row.get(writer.metric)
    if value is None:
        return False
    limit = cfg.early_stop[1]
    return value < limit if higher_is_better(writer.metric) else value > limit


def _summary(cfg: RunConfig, writer: MetricsWriter, metric: str, wall_s: float, stopped: bool) -> dict:
    best = writer.best()
    final = next((r[metric] for r in reversed(writer.rows) if metric in r), math.nan)
    rounds = len(writer.rows)
    line = (f"done: {rounds} rounds{' (stopped early)' if stopped else ''}, "
            f"best {metric} {best[0]:.4f} (round {best[1]}), final {metric} {final:.4f}, "
            f"wall {wall_s:.1f} s, run directory {cfg.out_dir}" if best else
            f"done: {rounds} rounds, no evaluation, wall {wall_s:.1f} s, run directory {cfg.out_dir}")
    return {"metric": metric, "best": best[0] if best else math.nan, "best_round": best[1] if best else 0,
            "final": final, "rounds": rounds, "wall_s": wall_s, "stopped_early": stopped, "line": line}

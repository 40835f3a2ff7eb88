"""The options of one run, as a frozen dataclass that travels to every rank (only entry scripts read args)."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path


@dataclass(frozen=True)
class RunConfig:
    script: str                      # "FedAvg" or "AsyncFedAvg"
    overlap: bool                    # Overlap-FedAvg's pipeline (one-version-stale) or blocking FedAvg
    world_size: int = 5              # server + clients
    dataset: str = "mnist"
    model: str = "mnistnet"
    batch_size: int = 32
    max_epoch: int = 10              # rounds R
    client_epoch: int = 5            # local epochs E per round
    lr: float = 0.01
    seed: int = 2020
    partition: str = "noniid"
    alpha: float = 0.5
    data_dir: str = "./data"
    out_dir: str | None = None
    gpus: tuple[int, ...] | None = None
    backend: str = "gloo"
    master_addr: str = "localhost"
    master_port: int = 29500
    bandwidth: float | None = None   # Mbit/s of each client's emulated link
    latency: float = 0.0             # ms per message on each client's emulated link
    eval_every: int = 1
    max_train_samples: int | None = None  # train on a seeded subset (quick trials and tests)
    timeout: float = 1800.0          # seconds any rank waits for a peer before declaring it dead
    threads: int = 1                 # intra-op threads per process on CPU
    # Server update (AsyncFedAvg); FedAvg keeps these at plain averaging.
    mom: float = 0.0
    server_lr: float = 1.0
    lambd: float = 0.0
    compensation: str = "none"
    early_stop: tuple[int, float] | None = field(default=None)  # (round, metric): stop a poor run early

    @property
    def num_clients(self) -> int:
        return self.world_size - 1

    def with_run_dir(self) -> RunConfig:
        """The same config with out_dir resolved to a fresh runs/<script>-<dataset>-<model>-<time> folder."""
        if self.out_dir:
            return self
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path("runs") / f"{self.script}-{self.dataset}-{self.model}-{stamp}"
        path, suffix = base, 1
        while path.exists():
            suffix += 1
            path = base.with_name(f"{base.name}-{suffix}")
        return replace(self, out_dir=str(path))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

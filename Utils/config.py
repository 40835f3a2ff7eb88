"""The options of a job, as frozen dataclasses that travel to every rank (Utils.cli builds the parsers).

Each option's default and help live here once: a field with `option(...)` metadata is a command-line option
of the scripts it names, and Utils.cli builds the parsers of FedAvg.py and AsyncFedAvg.py from these fields.
Adding an option is one field here plus its use.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from Networks import MODEL_NAMES
from Utils import federation
from Utils.aggregation import CLIENT_MERGE, COMPENSATIONS
from Utils.compression import COMPRESSIONS
from Utils.data.datasets import DATASET_NAMES
from Utils.data.partition import PARTITION_SCHEMES

FEDAVG, ASYNC = "FedAvg", "AsyncFedAvg"   # the entry scripts, as RunConfig.script names them


def option(default, help: str, *, scripts: tuple[str, ...] = (FEDAVG, ASYNC),
           cli_default: dict[str, object] | None = None, grid: tuple[str, ...] = (), flag: str | None = None,
           **add_argument):
    """A dataclass field that is a command-line option (Utils.cli reads the metadata).

    default: the field's default. help: what the option means (the parser appends the default).
    scripts: the entry scripts that take it. cli_default: {script: default} where a script's command line
    starts from another value than the field's (which holds for the other scripts and programmatic use).
    grid: the scripts that take several values and run each. flag: the option's name when not --<field>.
    add_argument: type, choices, nargs, metavar, action.
    """
    return field(default=default, metadata={"help": help, "scripts": scripts, "cli_default": cli_default or {},
                                            "grid": grid, "flag": flag, "add_argument": add_argument})


# Value types: argparse turns an ArgumentTypeError into "argument --x: <message>" and exit status 2.

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or a positive integer, got {text}")
    return value


def seed_value(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**32 - 1, got {text}")
    return value


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _checked_float(text: str, accept: Callable[[float], bool], wanted: str) -> float:
    value = finite_float(text)
    if not accept(value):
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
    return value


def positive_float(text: str) -> float:
    return _checked_float(text, lambda v: v > 0, "a positive number")


def non_negative_float(text: str) -> float:
    return _checked_float(text, lambda v: v >= 0, "zero or positive")


def positive_fraction(text: str) -> float:
    return _checked_float(text, lambda v: 0.0 < v <= 1.0, "above 0 and at most 1")


def at_least_one(text: str) -> float:
    return _checked_float(text, lambda v: v >= 1.0, "1 or more")


SPREAD = "lognormal"   # --bandwidth lognormal:MEDIAN:SIGMA and the like (client_rank_value)
PER_CLIENT_RANK_OPTIONS = ("bandwidth", "latency", "slowdown")


def per_client_rank(number: Callable[[str], float]) -> Callable[[str], float | tuple[float, ...] | str]:
    """An option with a value per client rank: NUMBER (every one), a comma list (one per client rank, in rank
    order) or lognormal:MEDIAN:SIGMA (a seeded spread, client_rank_value); each number checked by `number`."""
    def parse(text: str) -> float | tuple[float, ...] | str:
        if text.startswith(SPREAD + ":"):
            parts = text.split(":")
            if len(parts) != 3:
                raise argparse.ArgumentTypeError(f"a spread is {SPREAD}:MEDIAN:SIGMA, got {text}")
            return f"{SPREAD}:{number(parts[1]):g}:{non_negative_float(parts[2]):g}"
        if "," in text:
            return tuple(number(part) for part in text.split(","))
        return number(text)
    parse.__name__ = number.__name__   # argparse names it in "invalid ... value"
    return parse


def client_rank_value(spec: float | tuple[float, ...] | str | None, rank: int, client_ranks: int, seed: int,
                      name: str) -> float | None:
    """Client rank `rank`'s (1..N, N = world_size - 1) value of a per-client-rank option. A spread
    lognormal:MEDIAN:SIGMA gives rank k MEDIAN * exp(SIGMA * z_k), with z_1..z_N standard normal draws seeded by
    the option's name and --seed, so every rank derives the same values without a message."""
    if spec is None or isinstance(spec, int | float):
        return spec
    if isinstance(spec, tuple | list):
        if len(spec) != client_ranks:
            raise ValueError(f"--{name} lists {len(spec)} values for {client_ranks} client ranks; give one per "
                             f"client rank (in rank order), one for all, or a spread {SPREAD}:MEDIAN:SIGMA")
        return float(spec[rank - 1])
    _, median, sigma = spec.split(":")
    draws = random.Random(f"{name}:{seed}")
    z = [draws.gauss(0.0, 1.0) for _ in range(client_ranks)]
    return float(median) * math.exp(float(sigma) * z[rank - 1])


def unit_interval(text: str) -> float:
    return _checked_float(text, lambda v: 0.0 <= v <= 1.0, "between 0 and 1")


def port_number(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port between 1 and 65535 (0 picks a free one), got {text}")
    return value


def device_list(text: str) -> tuple[int, ...]:
    try:
        devices = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a comma list of CUDA device numbers such as 0,0,1, "
                                         f"got {text!r}") from None
    if any(d < 0 for d in devices):
        raise argparse.ArgumentTypeError(f"device numbers cannot be negative, got {text!r}")
    return devices


def device_for(gpus: tuple[int, ...] | None, local_rank: int, cuda_available: bool) -> torch.device:
    """--gpus lists the CUDA devices of one machine's ranks in local-rank order, cycled when shorter, so that
    `--gpus 0` puts every rank on GPU 0; without --gpus or without CUDA every rank uses the CPU."""
    if gpus is None or not cuda_available:
        return torch.device("cpu")
    return torch.device(f"cuda:{gpus[local_rank % len(gpus)]}")


def nccl_sharing_refusal(gpus: tuple[int, ...], local_ranks: range) -> str | None:
    """nccl cannot put two ranks of a job on one GPU: the line that says so, before anything starts."""
    shared = shared_device(gpus, local_ranks)
    if shared is None:
        return None
    a, b, device = shared
    return (f"--backend nccl cannot run two ranks on one GPU (ranks {a} and {b} on GPU {device}): give one "
            f"device per rank, or share GPUs with --backend gloo")


def shared_device(gpus: tuple[int, ...], local_ranks: range) -> tuple[int, int, int] | None:
    """(rank a, rank b, device) for the first two of these local ranks that --gpus puts on one device."""
    owner: dict[int, int] = {}
    for rank in local_ranks:
        device = gpus[rank % len(gpus)]
        if device in owner:
            return owner[device], rank, device
        owner[device] = rank
    return None


@dataclass(frozen=True)
class RunConfig:
    """One run of FedAvg.py or AsyncFedAvg.py; the server saves it as config.json in the run directory."""
    script: str                      # FEDAVG or ASYNC: the entry script that started the run
    overlap: bool                    # Overlap-FedAvg's pipeline (one-version-stale) or blocking FedAvg
    world_size: int = option(5,
        "processes in the job: the server plus the client ranks (world_size - 1, each hosting one client unless "
        "--num_clients says more)", type=int)
    num_clients: int | None = option(None,
        "FL clients, hosted by the world_size - 1 client ranks: client c on rank 1 + (c - 1) mod (world_size - 1), "
        "each rank training its sampled clients one after another (default: one client per rank)",
        type=positive_int)
    clients_per_round: float | None = option(None,
        "clients that train in a round: a count K, or a fraction below 1 of --num_clients, sampled anew each "
        "round from --seed and the round (default: all of them)", type=positive_float)
    sampling: str = option("uniform",
        "how a round's sample is drawn: uniform (any K of the N, as McMahan et al.) or balanced (each client "
        "rank's group gives its share of K, so no rank trains more than its share rounded up; every client is "
        "still sampled with probability K / N)", choices=federation.SAMPLINGS)
    dataset: str = option("mnist",
        "training and test data (prepare_data.py fetches it into --data_dir)", choices=DATASET_NAMES)
    model: str = option("mnistnet",
        "the network; it must fit the dataset (transformer for text, the others for images)", choices=MODEL_NAMES)
    batch_size: int = option(32, "client batch size", type=positive_int)
    max_epoch: int = option(10, "rounds R (global model versions after G_0)", type=positive_int)
    client_epoch: int = option(5, "local epochs E per round", type=positive_int)
    lr: float = option(0.01, "client learning rate", type=positive_float, grid=(ASYNC,))
    seed: int = option(2020, "seeds the model, partitions and every client's RNG", type=seed_value)
    partition: str = option("noniid",
        "how the training set is split across clients (noniid: the official label shards; pathological: "
        "McMahan's, --shards_per_client equal label-sorted shards each; images only)",
        choices=PARTITION_SCHEMES)
    alpha: float = option(0.5, "Dirichlet concentration for --partition dirichlet", type=positive_float)
    shards_per_client: int = option(2,
        "--partition pathological (McMahan et al. 2017): label-sorted shards per client", type=positive_int)
    data_dir: str = option("./data", "data root (torchvision layout; see prepare_data.py)")
    out_dir: str | None = option(None, "run directory (default: runs/<script>-<dataset>-<model>-<time>)")
    gpus: tuple[int, ...] | None = option(None,
        "comma list of CUDA devices, one per rank (default: CPU); ignored when CUDA is absent", type=device_list)
    backend: str = option("gloo",
        "torch.distributed backend (nccl: CUDA devices only, needs --gpus)", choices=("gloo", "nccl"))
    master_addr: str = option("localhost", "the server's address (single machine: localhost)")
    master_port: int = option(29500, "the server's port (0: pick a free one)", type=port_number)
    # Per-client-rank options: one value, a comma list (one per client rank) or lognormal:MEDIAN:SIGMA
    # (client_rank_value).
    bandwidth: float | tuple[float, ...] | str | None = option(None,
        "emulate each client rank's link at this many Mbit/s: one value, one per client rank (20,5,20,20) or a "
        "seeded spread lognormal:MEDIAN:SIGMA (default: the real network)", type=per_client_rank(positive_float))
    latency: float | tuple[float, ...] | str = option(0.0,
        "emulated link latency per message, ms (one value, one per client rank, or a spread)",
        type=per_client_rank(non_negative_float))
    slowdown: float | tuple[float, ...] | str = option(1.0,
        "a client rank trains this many times slower: after each client's round it waits (k - 1) times its "
        "training time (one value, one per client rank, or a spread, floored at 1), to study stragglers",
        type=per_client_rank(at_least_one))
    compress: str = option("none",
        "message format: uploads carry the client's model less the global model it holds, downloads the "
        "global model less what the clients hold, as float32 (none), fp16, int8 (per-block scales) or topk "
        "(the --topk_ratio largest numbers); lossy formats keep what a message loses for the next (error "
        "feedback; docs/network.md)", choices=COMPRESSIONS)
    topk_ratio: float = option(0.05,
        "--compress topk: the share of a message's numbers it keeps (8 bytes each: 0.05 sends 10 % of the "
        "float32 bytes)", type=positive_fraction)
    receive_window: int = option(8,
        "the server receives up to this many clients' uploads at once, each into a buffer of its own, so that "
        "on a real network their transfers run side by side (it still adds them in client order)",
        type=positive_int)
    tensorboard: bool = option(False,
        "also write each round's metrics, times and bytes as TensorBoard scalars in RUN_DIR/tensorboard "
        "(needs requirements-tensorboard.txt)", action="store_true")
    eval_every: int = option(1,
        "evaluate the global model every N rounds and after the last (0: never, for timing runs)",
        type=non_negative_int)
    max_train_samples: int | None = option(None,
        "train on a seeded random subset of this many samples (text: the first N tokens) for quick trials "
        "(default: the whole training set)", type=positive_int)
    test_samples: int | None = option(None,
        "evaluate on a fixed subset of this many test samples (text: a span of N tokens), drawn once with "
        "--seed, for quick runs (default: the whole test set)", type=positive_int)
    resume: str | None = option(None,
        "continue the run in RUN_DIR from its last complete round, with its saved options (only --max_epoch "
        "to extend it, options of time or place such as the link, and where or how the processes run may "
        "change; see docs/resume.md)", metavar="RUN_DIR")
    timeout: float = option(1800.0, "the longest any rank waits for a peer before declaring it dead; once a round "
                            "has been seen, 5 times the longest round, at least 300 s", type=positive_float)
    threads: int = option(1, "intra-op threads per process on the CPU", type=positive_int)
    # The server update. The defaults are a plain step (mu 0, server_lr 1): FedAvg's average, and for
    # AsyncFedAvg the client merge with b = 1, chosen by time to target accuracy (docs/defaults.md). With --mom
    # or --server_lr, FedAvg.py runs FedAvgM with the same server step as Overlap.
    mom: float = option(0.0, "server Nesterov momentum mu, below 1", type=non_negative_float, grid=(ASYNC,))
    server_lr: float = option(1.0, "server learning rate of the Nesterov step", type=positive_float)
    lambd: float = option(0.0,
        "compensation strength lambda (official and dcasgd forms)", type=non_negative_float, scripts=(ASYNC,),
        cli_default={ASYNC: 0.04}, grid=(ASYNC,))
    compensation: str = option("none",
        "how the one-version staleness is corrected. local: by the clients, each starting its next round from "
        "the late global model plus --merge_weight times its own last round's progress (the server then "
        "averages as FedAvg does). On the server, C of g_c = g + C (w - prev): official lambda*v*v, dcasgd "
        "lambda*v, full 1, none 0, constant --comp_coef, secant: estimated every update from the last two, "
        "starting at --comp_coef", choices=COMPENSATIONS, scripts=(ASYNC,), cli_default={ASYNC: CLIENT_MERGE})
    merge_weight: float = option(1.0,
        "--compensation local: the share b of its own progress a client keeps when the late global model "
        "arrives (x = G + b * delta; 1: all of it, 0: none, as --compensation none)", type=unit_interval,
        scripts=(ASYNC,))
    comp_coef: float = option(0.5,
        "the compensation coefficient C in [0, 1] of --compensation constant, and the secant estimate's "
        "value until it has two different starts to compare", type=unit_interval, scripts=(ASYNC,))
    early_stop: tuple[int, float] | None = option(None,
        "stop a run whose accuracy at ROUND is below METRIC (perplexity: above); a search counts it as pruned "
        "(default: never)", flag="--optuna_early_stop", nargs=2, metavar=("ROUND", "METRIC"), scripts=(ASYNC,))
    # Not an option: the launcher sets it to when its entry script started (time.time() clock), so start-up
    # and wall_s include the torch import; None: when the server's run started.
    launch_time: float | None = None

    @property
    def client_ranks(self) -> int:
        """The processes that host clients (ranks 1..world_size - 1)."""
        return self.world_size - 1

    @property
    def federation_size(self) -> int:
        """N, the FL clients (--num_clients; by default one per client rank)."""
        return self.num_clients or self.client_ranks

    @property
    def sampled_per_round(self) -> int:
        """K, the clients that train in each round (Utils.federation.clients_per_round)."""
        return federation.clients_per_round(self.clients_per_round, self.federation_size)

    def round_clients(self, round_number: int) -> list[int]:
        """The clients that train in round `round_number` (1..R), ascending."""
        return federation.round_sample(self.federation_size, self.sampled_per_round, self.seed, round_number,
                                       sampling=self.sampling, client_ranks=self.client_ranks)

    def hosted_clients(self, rank: int) -> list[int]:
        return federation.hosted_clients(rank, self.client_ranks, self.federation_size)

    def client_link(self, rank: int) -> tuple[float | None, float]:
        """(bandwidth Mbit/s or None, latency ms) of client rank `rank` (1..world_size - 1): the link belongs to
        the process, which all its clients share."""
        return (client_rank_value(self.bandwidth, rank, self.client_ranks, self.seed, "bandwidth"),
                client_rank_value(self.latency, rank, self.client_ranks, self.seed, "latency"))

    def client_slowdown(self, rank: int) -> float:
        """How many times slower client rank `rank` trains (each of its clients)."""
        return max(1.0, client_rank_value(self.slowdown, rank, self.client_ranks, self.seed, "slowdown"))

    @property
    def client_merge(self) -> bool:
        """The clients correct the staleness (--compensation local), not the server."""
        return self.overlap and self.compensation == CLIENT_MERGE

    @property
    def server_keeps_uploads(self) -> bool:
        """The server keeps the round's uploads for its checkpoint (the client merge, uncompressed: compressed,
        each client saves its own start)."""
        return self.client_merge and self.compress == "none"

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


@dataclass(frozen=True)
class SearchConfig:
    """How AsyncFedAvg.py runs several jobs: every combination of the grid's values, or an optuna search."""
    # RunConfig field -> the values to run, from the options that take several (option(grid=...)).
    grid: dict[str, tuple] = field(default_factory=dict)
    optuna: bool = option(False,
        "search with optuna (ranges below) instead of running the grid", scripts=(ASYNC,), action="store_true")
    optuna_lr: tuple[float, float] | None = option(None,
        "search the client learning rate between LOW and HIGH, log scale (default: keep --lr)",
        type=positive_float, nargs=2, metavar=("LOW", "HIGH"), scripts=(ASYNC,))
    optuna_mom: tuple[float, float] | None = option(None,
        "search the server momentum between LOW and HIGH, HIGH below 1 (default: keep --mom)",
        type=non_negative_float, nargs=2, metavar=("LOW", "HIGH"), scripts=(ASYNC,))
    optuna_lambd: tuple[float, float] | None = option(None,
        "search lambda between LOW and HIGH (default: keep --lambd)",
        type=non_negative_float, nargs=2, metavar=("LOW", "HIGH"), scripts=(ASYNC,))
    optuna_trials: int = option(10, "trials: the runs the search makes", type=positive_int, scripts=(ASYNC,))

    @property
    def optuna_ranges(self) -> dict[str, tuple[float, float]]:
        """RunConfig field -> (low, high) for the parameters the search varies."""
        ranges = {"lr": self.optuna_lr, "mom": self.optuna_mom, "lambd": self.optuna_lambd}
        return {name: bounds for name, bounds in ranges.items() if bounds is not None}

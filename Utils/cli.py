"""The command-line options both entry scripts share (the official flags plus ours), with validation.

Bad values stop at the parser with a one-line message and exit status 2.
"""
from __future__ import annotations

import argparse

from Networks import MODEL_NAMES, check_model_fits
from Utils.datasets import DATASET_NAMES, dataset_is_text, image_shape
from Utils.partition import PARTITION_SCHEMES


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


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text}")
    return value


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


def common_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--world_size", type=int, default=5,
        help="processes in the job: the server plus the clients (so clients = world_size - 1)")
    add("--dataset", default="mnist", choices=DATASET_NAMES)
    add("--model", default="mnistnet", choices=MODEL_NAMES)
    add("--batch_size", type=positive_int, default=32, help="client batch size")
    add("--max_epoch", type=positive_int, default=10, help="rounds R (global model versions after G_0)")
    add("--client_epoch", type=positive_int, default=5, help="local epochs E per round")
    add("--seed", type=seed_value, default=2020, help="seeds the model, partitions and every client's RNG")
    add("--partition", default="noniid", choices=PARTITION_SCHEMES,
        help="how the training set is split across clients (noniid: the official label shards)")
    add("--alpha", type=positive_float, default=0.5, help="Dirichlet concentration for --partition dirichlet")
    add("--data_dir", default="./data", help="data root (torchvision layout; see prepare_data.py)")
    add("--out_dir", default=None, help="run directory (default runs/<script>-<dataset>-<model>-<time>)")
    add("--gpus", type=device_list, default=None,
        help="comma list of CUDA devices, one per rank (default: CPU); ignored when CUDA is absent")
    add("--backend", default="gloo", choices=("gloo", "nccl"))
    add("--master_addr", default="localhost", help="the server's address (single machine: localhost)")
    add("--master_port", type=port_number, default=29500, help="the server's port (0: pick a free one)")
    add("--bandwidth", type=positive_float, default=None,
        help="emulate each client's link at this many Mbit/s (default: the real network)")
    add("--latency", type=non_negative_float, default=0.0, help="emulated link latency per message, ms")
    add("--max_train_samples", type=positive_int, default=None,
        help="train on a seeded random subset of this many samples (text: the first N tokens) for quick trials")
    add("--eval_every", type=non_negative_int, default=1,
        help="evaluate the global model every N rounds and after the last (0: never, for timing runs)")
    add("--timeout", type=positive_float, default=1800.0,
        help="seconds any rank waits for a peer before declaring it dead")
    add("--threads", type=positive_int, default=1, help="intra-op threads per process on the CPU")
    return parser


def check_common(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-option checks; parser.error exits with status 2 and a one-line message."""
    if args.world_size < 2:
        parser.error(f"--world_size {args.world_size}: need the server and at least one client (>= 2)")
    text = dataset_is_text(args.dataset)
    channels, size, _ = (1, 28, 28) if text else image_shape(args.dataset)   # text: the shape is unused
    try:
        check_model_fits(args.model, text=text, in_channels=channels, image_size=size)
    except ValueError as error:
        parser.error(f"--model {args.model} with --dataset {args.dataset}: {error}")
    if args.backend == "nccl" and args.gpus is None:
        parser.error("--backend nccl needs --gpus (one CUDA device per rank)")


def common_options(args: argparse.Namespace) -> dict:
    """The RunConfig fields both scripts take straight from the command line."""
    names = ("world_size", "dataset", "model", "batch_size", "max_epoch", "client_epoch", "seed", "partition",
             "alpha", "data_dir", "out_dir", "gpus", "backend", "master_addr", "master_port", "bandwidth",
             "latency", "max_train_samples", "eval_every", "timeout", "threads")
    return {name: getattr(args, name) for name in names}

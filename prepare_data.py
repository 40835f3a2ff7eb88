"""Fetch or import datasets once into the data root, so that training later needs no network.

    python prepare_data.py                                   # download everything (torchvision, requests)
    python prepare_data.py --dataset mnist --data_dir ./data
    python prepare_data.py --source ../shared/data           # import local copies, no network
    python prepare_data.py --dataset cifar10 --source ../shared/data/cifar10-jpeg

Prints one line per dataset; exits 0 when every requested dataset is in place, 1 otherwise.
"""
import argparse
import logging
import sys
from pathlib import Path

from Utils.data.datasets import DATASET_NAMES
from Utils.data.errors import DatasetCorruptError, DatasetUnavailableError
from Utils.data.prepare import prepare_dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fetch or import datasets into the data root.")
    parser.add_argument("--dataset", default="all", choices=("all",) + DATASET_NAMES,
                        help="one dataset, or all (default)")
    parser.add_argument("--data_dir", default="./data", help="data root (default ./data)")
    parser.add_argument("--source", type=Path, default=None,
                        help="import from this folder instead of downloading: laid out as ../shared/data "
                             "(mnist/, fashion-mnist/, cifar10-jpeg/, wikitext-2/, ptb/, emnist/, cifar100/), "
                             "or, with --dataset, that dataset's own folder")
    args = parser.parse_args(argv)
    if args.source is not None and not args.source.is_dir():
        parser.error(f"--source {args.source}: not a directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = DATASET_NAMES if args.dataset == "all" else (args.dataset,)
    all_ready = True
    for name in names:
        try:
            line = prepare_dataset(name, args.data_dir, args.source, dataset_folder_ok=len(names) == 1)
        except (DatasetUnavailableError, DatasetCorruptError) as error:
            kind = "unavailable" if isinstance(error, DatasetUnavailableError) else "corrupt"
            line = f"{name}: {kind}: {str(error).removeprefix(f'{name}: ')}"
            all_ready = False
        print(line, flush=True)
    return 0 if all_ready else 1


if __name__ == "__main__":
    sys.exit(main())

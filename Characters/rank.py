"""What every process of a job runs: join the group, load data and model, then act as server or client."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

from Characters.client import run_client
from Characters.server import run_server
from Networks import build_model, describe_model
from Utils import transport
from Utils.checkpoint import result_options
from Utils.config import RunConfig, device_for
from Utils.data.datasets import load_dataset, unverified_note
from Utils.data.partition import client_shards, limit_test_set, limit_training_set, shard_size
from Utils.flat import model_size
from Utils.run_log import setup_logging
from Utils.training import LocalTrainer

log = logging.getLogger(__name__)


def pick_device(cfg: RunConfig, rank: int) -> torch.device:
    """This rank's device (device_for): its index on this machine is LOCAL_RANK under torchrun, else its rank."""
    return device_for(cfg.gpus, int(os.environ.get("LOCAL_RANK", rank)), torch.cuda.is_available())


def job_fingerprint(cfg: RunConfig, model_numel: int) -> bytes:
    """8 bytes that differ when two ranks would not compute the same run: the options that decide the result
    (Utils.checkpoint.result_options) and the model size."""
    options = result_options({**asdict(cfg), "model_numel": model_numel})
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).digest()[:8]


def run_rank(rank: int, cfg: RunConfig, rendezvous_from_env: bool = False) -> dict | None:
    """One participant from start to finish; the server returns the run's summary."""
    torch.set_num_threads(cfg.threads)
    log_file = None
    if rank == transport.SERVER_RANK:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        cfg.save(Path(cfg.out_dir) / "config.json")
        log_file = Path(cfg.out_dir) / "train.log"
    setup_logging(rank, log_file)
    device = pick_device(cfg, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        transport.init_process_group(rank, cfg.world_size,
                                     master_addr=None if rendezvous_from_env else cfg.master_addr,
                                     master_port=None if rendezvous_from_env else cfg.master_port,
                                     backend=cfg.backend, timeout_s=cfg.timeout, device=device)
        data = limit_training_set(load_dataset(cfg.dataset, cfg.data_dir), cfg.max_train_samples, cfg.seed)
        torch.manual_seed(cfg.seed)   # G_0 is the seeded initial model; clients receive it from the server
        model = build_model(cfg.model, data.output_size, **data.model_shape).to(device)
        shards = client_shards(data, cfg.federation_size, cfg.partition, cfg.seed, cfg.alpha, cfg.shards_per_client)
        fingerprint = job_fingerprint(cfg, model_size(model))
        if rank == transport.SERVER_RANK:
            transport.check_client_ranks(fingerprint, list(range(1, cfg.world_size)), cfg.timeout)
            note = unverified_note(cfg.dataset, cfg.data_dir)   # here: once per job, not once per rank
            if note:
                log.info("%s", note)
            log.info("%s", describe_model(model))
            return run_server(cfg, limit_test_set(data, cfg.test_samples, cfg.seed), model,
                              [shard_size(s) for s in shards])
        # One model for the rank; each hosted client has its own trainer and shard (they train one after another)
        trainers = {client: LocalTrainer(model, data, shards[client - 1], batch_size=cfg.batch_size, lr=cfg.lr,
                                         epochs=cfg.client_epoch, seed=cfg.seed, client=client)
                    for client in cfg.hosted_clients(rank)}
        del data, shards   # a rank keeps only its clients' shards (the trainers' copies), not the whole set
        transport.send(transport.hello_message(fingerprint), transport.SERVER_RANK)
        run_client(cfg, rank, trainers, model_size(model))
        return None
    except Exception as error:
        log.error("rank %d failed: %s", rank, error)
        raise
    finally:
        transport.shutdown()

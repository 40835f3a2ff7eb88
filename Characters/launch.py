"""Start a job: spawn every rank on this machine, or run the one rank that torchrun / env vars name.

A failed rank brings the whole job down: once one exits abnormally the others get FAILURE_GRACE_S to end on
their own, then are terminated, and the launcher names the rank that failed. Ctrl-C stops every process.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.multiprocessing as mp

from Characters.evaluation import max_pending_snapshots
from Characters.forkserver import ENTERED, start_forkserver, stop_forkserver
from Characters.rank import run_rank
from Networks import build_model
from Utils import transport
from Utils.checkpoint import CheckpointError, read_checkpoint
from Utils.config import RunConfig, device_for, nccl_sharing_refusal
from Utils.data.datasets import DatasetSize, dataset_size
from Utils.data.errors import DatasetCorruptError, DatasetUnavailableError
from Utils.data.partition import check_partition
from Utils.data.prepare import ensure_dataset
from Utils.flat import model_size
from Utils.memory import (
    JobShape,
    available_bytes,
    device_memory_bytes,
    device_memory_refusal,
    hosted_client_copies,
    job_memory_bytes,
    memory_refusal,
    merge_state_copies,
)
from Utils.run_log import setup_logging

log = logging.getLogger(__name__)

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
FAILURE_GRACE_S = 2.0
OWN_EXCEPTION_PREFIX = r"^(Utils|Characters)\.[\w.]+: "   # the project's own errors say enough without their class


class LaunchError(ValueError):
    """A problem with the job's set-up that the user can fix (busy port, world size, missing data)."""


def _die_with_parent() -> None:
    """Linux: have the kernel kill this rank if its parent dies, even by SIGKILL (no orphans).

    A forkserver rank's parent is the forkserver, which stays up while any process holds the write end of
    its "alive" pipe, and multiprocessing hands that end to every rank. Closed here, the launcher alone
    holds it: when the launcher dies, however it dies, the forkserver sees end of file and exits, and the
    kernel then kills the ranks."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)   # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return   # not Linux: the launcher's own handlers still stop the ranks
    from multiprocessing import forkserver
    alive_fd = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)
    if alive_fd is not None:   # set in forkserver children only
        os.close(alive_fd)
        forkserver._forkserver._forkserver_alive_fd = None


class _Terminated(Exception):
    """SIGTERM reached the launcher."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def _spawned_rank(rank: int, cfg: RunConfig, summaries) -> None:
    _die_with_parent()
    # Ctrl-C reaches the whole process group; the launcher alone acts on it and stops the ranks. A rank
    # that took it itself would end quietly (torch.multiprocessing treats KeyboardInterrupt as a clean
    # exit), and the job could then look finished.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    summary = run_rank(rank, cfg)
    if summary is not None:
        summaries.put(summary)


def launch(cfg: RunConfig) -> tuple[int, dict | None]:
    """Run the job; return (exit status, the server's summary when this process ran or spawned it)."""
    setup_logging(None)
    try:
        if cfg.backend == "nccl" and not torch.cuda.is_available():
            raise LaunchError("--backend nccl needs CUDA on every rank; use --backend gloo on this machine")
        if Path(cfg.data_dir).exists() and not Path(cfg.data_dir).is_dir():
            raise LaunchError(f"--data_dir {cfg.data_dir} is a file; give the data root directory (prepare_data.py)")
        try:
            from_env = transport.environment_rank()
        except ValueError as error:
            raise LaunchError(str(error)) from error
        if from_env is not None:
            return _one_rank_status(cfg, *from_env)
        return _spawn_all(cfg)
    except LaunchError as error:
        log.error("%s", error)
        return EXIT_USAGE, None
    except (DatasetUnavailableError, DatasetCorruptError) as error:
        log.error("%s", error)
        return EXIT_FAILED, None
    except KeyboardInterrupt:   # Ctrl-C before the ranks started
        log.error("interrupted")
        return EXIT_INTERRUPTED, None


def _one_rank_status(cfg: RunConfig, rank: int, world_size: int) -> tuple[int, dict | None]:
    """Several machines: run this rank. A failure inside it is the one line the rank logged ("rank N failed:
    ..."), with the traceback under OVERLAP_FEDAVG_DEBUG; no launcher is there to add one."""
    try:
        return 0, _run_one_rank(cfg, rank, world_size)
    except (LaunchError, DatasetUnavailableError, DatasetCorruptError):
        raise
    except Exception:  # noqa: BLE001 - run_rank has logged it in one line
        if os.environ.get("OVERLAP_FEDAVG_DEBUG"):
            log.exception("rank %d failed", rank)
        return EXIT_FAILED, None


def _run_one_rank(cfg: RunConfig, rank: int, world_size: int) -> dict | None:
    """Several machines: this process is one rank; MASTER_ADDR/MASTER_PORT come from the environment."""
    setup_logging(rank)   # this process is that rank from its first line on
    if world_size != cfg.world_size and rank == transport.SERVER_RANK:   # said once, not by every rank
        log.info("world size %d from the environment (WORLD_SIZE) overrides --world_size %d",
                 world_size, cfg.world_size)
    if world_size < 2:
        raise LaunchError(f"WORLD_SIZE={world_size}: a job needs the server and at least one client")
    if cfg.backend == "nccl" and cfg.gpus and "LOCAL_WORLD_SIZE" in os.environ:   # torchrun: this machine's ranks
        refusal = nccl_sharing_refusal(cfg.gpus, range(int(os.environ["LOCAL_WORLD_SIZE"])))
        if refusal:
            raise LaunchError(refusal.replace("(ranks", "(local ranks", 1))
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise LaunchError(f"RANK and WORLD_SIZE are set but {name} is not; set it to the server's "
                              f"{'address' if name == 'MASTER_ADDR' else 'port'} on every machine")
    cfg = replace(cfg, world_size=world_size, launch_time=_launch_time()).with_run_dir()
    log.info("rank %d of %d: %s", rank, world_size, device_note(cfg))
    if rank == transport.SERVER_RANK:
        _check_out_dir(cfg)
    ensure_dataset(cfg.dataset, cfg.data_dir, lock_wait_s=cfg.timeout)   # ranks of a machine take turns (a lock)
    return run_rank(rank, cfg, rendezvous_from_env=True)


_launched_before = False   # a grid or search launches several jobs from one process


def _launch_time() -> float:
    """When this job started: the first job of a process counts from the entry script's start
    (forkserver.ENTERED), so start-up includes the torch import; a later job of a grid or search from its own
    launch."""
    global _launched_before
    first, _launched_before = not _launched_before, True
    return ENTERED if first else time.time()


def _spawn_all(cfg: RunConfig) -> tuple[int, dict | None]:
    cfg = replace(cfg, launch_time=_launch_time())
    if cfg.master_port == 0:
        cfg = replace(cfg, master_port=transport.free_port())
    elif not transport.port_is_free("", cfg.master_port):
        raise LaunchError(f"port {cfg.master_port} is already in use on this machine; pass another "
                          f"--master_port (or 0 to pick a free one)")
    start_method = _start_method(cfg)
    log.info("%s", device_note(cfg))
    ensure_dataset(cfg.dataset, cfg.data_dir, lock_wait_s=cfg.timeout)   # once here, not N+1 times in parallel
    size = dataset_size(cfg.dataset, cfg.data_dir)
    _check_partition(cfg, size)
    _check_memory(cfg, size, forked=start_method == "forkserver")
    cfg = cfg.with_run_dir()
    _check_out_dir(cfg)
    hosting = "" if cfg.federation_size == cfg.client_ranks else f" hosting {cfg.federation_size} clients"
    log.info("%s: %d processes (server + %d client ranks%s), run directory %s", cfg.script, cfg.world_size,
             cfg.client_ranks, hosting, cfg.out_dir)
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)   # we say what failed, once
    summaries = mp.get_context(start_method).SimpleQueue()
    context = mp.start_processes(_spawned_rank, args=(cfg, summaries), nprocs=cfg.world_size,
                                 join=False, start_method=start_method)
    previous_term = signal.signal(signal.SIGTERM, _raise_terminated)
    # A shell starts a background job with SIGINT ignored, and Python then keeps it ignored: say explicitly
    # that Ctrl-C (or kill -INT) stops the job.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # On a failure, the others get 2 s to end on their own (the server then names the client it lost),
        # then SIGTERM, then SIGKILL 2 s later: a stopped (SIGSTOP) rank ends too.
        written, quiet_since = -1, time.monotonic()
        while not context.join(timeout=1.0, grace_period=FAILURE_GRACE_S):
            # Once its clients have ended no peer waits for the server with a deadline: the launcher does. The
            # server may still evaluate and write rows for a while; a server that writes nothing for --timeout
            # is stuck (on a disk that hangs, say).
            if not all(p.exitcode == 0 for p in context.processes[1:]):
                continue
            if (now_written := _server_output_bytes(cfg)) != written:
                written, quiet_since = now_written, time.monotonic()
            elif time.monotonic() - quiet_since > cfg.timeout:
                log.error("rank 0 has written nothing for %.0f s (--timeout) since its clients ended (a disk that "
                          "hangs?); the job was stopped", cfg.timeout)
                _terminate(context.processes)
                return EXIT_FAILED, None
    except (mp.ProcessRaisedException, mp.ProcessExitedException):
        log.error("%s; the job was stopped", _root_failure(context))
        return EXIT_FAILED, None
    except (KeyboardInterrupt, _Terminated) as stop:
        log.error("%s: stopping every rank", "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated")
        _terminate(context.processes)
        return EXIT_INTERRUPTED, None
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
        _remove_error_files(context)
    return 0, summaries.get() if not summaries.empty() else None


def _server_output_bytes(cfg: RunConfig) -> int:
    """How much the server has written to its rows and its log: it grows while the server makes progress."""
    return sum(path.stat().st_size for path in (Path(cfg.out_dir) / "metrics.csv", Path(cfg.out_dir) / "train.log")
               if path.is_file())


def _remove_error_files(context) -> None:
    """torch.multiprocessing leaves the traceback file of every rank that raised in the system's temporary
    directory; once the job has ended and its failure is told, nothing reads them."""
    if any(process.is_alive() for process in context.processes):
        return   # a rank still running may yet write its file: leave them rather than race it
    for path in context.error_files:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _root_failure(context) -> str:
    """One line on the failure that explains the others, once every rank has ended. A rank that lost its peer
    raises too, so the cause is, in order: an error a rank raised that is not a lost peer; the server's hang
    diagnosis (it names the client it waited for, and for what); a rank that died by a signal; the server's
    error. The traceback's last line, or the whole traceback with OVERLAP_FEDAVG_DEBUG set."""
    raised = {rank: _raised_error(path) for rank, path in enumerate(context.error_files)}
    raised = {rank: text for rank, text in raised.items() if text is not None}
    died = {rank: process.exitcode for rank, process in enumerate(context.processes)
            if process.exitcode is not None and process.exitcode < 0 and rank not in raised
            and process.exitcode != -signal.SIGTERM}

    def raised_line(rank: int) -> str:
        if os.environ.get("OVERLAP_FEDAVG_DEBUG"):
            return f"rank {rank} failed: {raised[rank]}"
        last = raised[rank].strip().splitlines()[-1]
        return f"rank {rank} failed: {re.sub(OWN_EXCEPTION_PREFIX, '', last)}"

    own = [rank for rank, text in raised.items() if not _lost_peer(text.strip().splitlines()[-1])]
    if own:
        return raised_line(own[0])
    server = transport.SERVER_RANK
    if server in raised and "did not answer" in raised[server]:
        return raised_line(server)
    if died:
        rank = min(died)
        return f"rank {rank} died (signal {signal.Signals(-died[rank]).name})"
    if raised:
        return raised_line(server if server in raised else min(raised))
    failed = [rank for rank, process in enumerate(context.processes) if process.exitcode]
    return f"rank {failed[0]} exited with status {context.processes[failed[0]].exitcode}" if failed else "a rank failed"


def _lost_peer(line: str) -> bool:
    """An error that only says a peer went away (ours, or gloo's own when it noticed first)."""
    return "PeerFailure" in line or "gloo" in line or "Connection closed by peer" in line


def _raised_error(path: str) -> str | None:
    """The traceback text torch.multiprocessing saved for a rank that raised, or None."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f)   # written by torch.multiprocessing; removed when the job ends
    except (OSError, pickle.UnpicklingError, EOFError):
        return None


def _check_out_dir(cfg: RunConfig) -> None:
    """A new run needs a new or empty directory (nothing already written is overwritten); a resumed run, a
    checkpoint of its own with rounds left to run."""
    out_dir = Path(cfg.out_dir)
    if cfg.resume is not None:
        try:
            state = read_checkpoint(out_dir, asdict(cfg))
        except CheckpointError as error:
            raise LaunchError(f"--resume {out_dir}: {error}") from error
        if state.get("stopped_early"):   # the uninterrupted run trains no further
            raise LaunchError(f"--resume {out_dir}: the run was stopped early by --optuna_early_stop after round "
                              f"{state['round']}; it is finished, and further rounds would not be that run's")
        if state["round"] >= cfg.max_epoch:
            raise LaunchError(f"--resume {out_dir}: the run has completed {state['round']} rounds; give --max_epoch "
                              f"above {state['round']} to extend it")
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise LaunchError(f"--out_dir {out_dir} is a file; give a directory (it is created when missing)")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise LaunchError(f"--out_dir {out_dir} is not empty; give a new directory, or --resume {out_dir} to "
                          f"continue the run in it")


def _check_partition(cfg: RunConfig, size: DatasetSize) -> None:
    """A partition that cannot serve every client would fail every rank alike: refuse the job here, once.
    Utils.data.partition.check_partition says how."""
    try:
        check_partition(cfg.dataset, cfg.data_dir, size, cfg.max_train_samples, cfg.federation_size, cfg.partition,
                        cfg.seed, cfg.alpha, cfg.shards_per_client)
    except ValueError as error:
        raise LaunchError(f"--partition {cfg.partition}: {error}; use fewer clients (--world_size, --num_clients) "
                          f"or more training data (--max_train_samples)") from error


def _check_memory(cfg: RunConfig, size: DatasetSize, forked: bool) -> None:
    """Refuse, before any rank starts, a job whose estimated memory exceeds what the machine has free."""
    with torch.device("meta"):   # parameter count only: nothing allocated
        model_bytes = 4 * model_size(build_model(cfg.model, size.num_classes, **size.model_shape))
    train = min(size.train, cfg.max_train_samples or size.train)
    test = min(size.test, cfg.test_samples or size.test)
    evaluations = cfg.max_epoch if cfg.eval_every > 0 else 0
    shape = JobShape(cfg.world_size, model_bytes, **size.memory(train, test),
                     snapshot_bytes=min(evaluations, max_pending_snapshots(model_bytes)) * model_bytes,
                     merge_state_bytes=merge_state_copies(cfg.sampled_per_round) * model_bytes
                     if cfg.server_keeps_uploads else 0,
                     compressed=cfg.compress != "none",
                     receive_buffers=1 if cfg.server_keeps_uploads
                     else min(cfg.receive_window, cfg.sampled_per_round),
                     hosted_client_bytes=model_bytes * hosted_client_copies(
                         cfg.federation_size, cfg.sampled_per_round, cfg.client_ranks, merge=cfg.client_merge,
                         compressed=cfg.compress != "none"),
                     forked=forked)
    needed, available = job_memory_bytes(shape), available_bytes()
    log.info("memory: about %.1f GB for the job's %d processes%s", needed / 2**30, cfg.world_size,
             f", {available / 2**30:.1f} GB available" if available is not None else "")
    refusal = memory_refusal(needed, available)
    if refusal:
        raise LaunchError(refusal)
    if cfg.gpus is not None and torch.cuda.is_available():
        devices = [device_for(cfg.gpus, rank, True).index for rank in range(cfg.world_size)]
        per_device = device_memory_bytes(shape, devices)
        free = {device: torch.cuda.mem_get_info(device)[0] for device in per_device}
        log.info("device memory: about %s", ", ".join(f"{b / 2**30:.1f} GB on GPU {d} ({free[d] / 2**30:.1f} GB "
                                                       f"free)" for d, b in sorted(per_device.items())))
        refusal = device_memory_refusal(per_device, free)
        if refusal:
            raise LaunchError(refusal)


def _start_method(cfg: RunConfig) -> str:
    """CPU jobs: "forkserver" (Characters/forkserver.py), every rank a fork of one process that imported
    torch and the project once. CUDA jobs: "spawn", since CUDA cannot be used in a forked child."""
    if cfg.gpus is not None and torch.cuda.is_available():
        return "spawn"
    start_forkserver()   # already running when an entry script started it
    return "forkserver"


def device_note(cfg: RunConfig) -> str:
    """The one line that says where the ranks compute."""
    if not torch.cuda.is_available():
        return "CUDA is not available: every rank runs on the CPU" + (" (--gpus ignored)" if cfg.gpus else "")
    if cfg.gpus is None:
        return "every rank runs on the CPU (pass --gpus to use CUDA)"
    return f"ranks use CUDA devices {','.join(map(str, cfg.gpus))} (cycled over the ranks)"


def _terminate(processes, grace_s: float = 5.0) -> None:
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def exit_process(status: int) -> None:
    """End the launcher once the job (or the grid, or the search) is over, skipping the interpreter's teardown
    of torch (about 1 s here): the ranks have exited and every file is written. The forkserver and the
    resource tracker are stopped and reaped first, so that the exit status comes after every process the
    launcher started has ended (a script that runs jobs back to back finds none of them beside the next)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    stop_forkserver()   # the resource tracker may report leaked semaphores on stderr: before the exit
    sys.stderr.flush()
    os._exit(status)


def main(cfg: RunConfig) -> None:
    status, _ = launch(cfg)
    exit_process(status)

"""The process every CPU rank is forked from, started before the launcher imports torch.

CPU jobs start their ranks as forks of one server process that has imported torch, torch._dynamo (what the
first optimizer would import, about 1 s) and the project once, so a rank starts in milliseconds and shares
those pages with the others. The entry scripts start it first thing: its imports then run on another core
while the launcher imports torch for itself and parses the options (about 1 s less to G_0 on 2 cores).
Jobs that spawn their ranks instead (CUDA) leave it idle.

The launcher stops it, and multiprocessing's resource tracker, before it exits (stop_forkserver): left to
themselves they would notice the launcher's end only afterwards and outlive it by a second or more (the
forkserver tearing torch down, or still importing it after a usage error). Nothing here imports torch.
"""
from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import multiprocessing.util
import os
import signal
import threading
import time

# When the job's process began, as near as Python code can tell: the entry scripts import this module first.
# Start-up counts from here (the interpreter's own start, tens of ms, aside), not from the process's kernel start
# time, which under `bash -c '... && python ...'` (a Dockerfile RUN, a CI step) is the shell's, commands before.
ENTERED = time.time()
RANK_MODULES = ["Characters.launch", "torch._dynamo"]   # Characters.launch imports the ranks' whole code
STOP_WAIT_S = 2.0   # each helper process gets this long to end before SIGKILL

_stop_registered = False


def start_forkserver() -> None:
    """Start the forkserver with the ranks' modules preloaded, unless this process is itself one rank of a
    job started by torchrun or RANK/WORLD_SIZE (it then runs that rank and forks nothing). Idempotent.
    An interpreter exit (a usage error, the end of a search) stops it (stop_forkserver); the launcher's
    os._exit calls stop_forkserver itself.

    Also quiets torch's C++ log before torch is imported: a failed rendezvous otherwise prints a hundred
    lines of C++ frames before our one line (OVERLAP_FEDAVG_DEBUG, or TORCH_CPP_LOG_LEVEL set, keeps them)."""
    global _stop_registered
    if not os.environ.get("OVERLAP_FEDAVG_DEBUG"):
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    multiprocessing.set_forkserver_preload(RANK_MODULES)
    # Ctrl-C reaches the whole process group, and the launcher alone acts on it: it stops the forkserver, whose
    # ranks ignore it too (launch._spawned_rank). Started while SIGINT is ignored (which survives exec), the
    # forkserver never takes it, so a Ctrl-C while it imports torch prints no traceback. Meanwhile SIGINT is
    # blocked here (Linux keeps a blocked signal pending even when ignored): this process gets it afterwards.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if not _stop_registered:
        atexit.register(stop_forkserver)
        _stop_registered = True


@contextlib.contextmanager
def interrupts_held():
    """Ctrl-C held back until the block ends, then raised as KeyboardInterrupt: a KeyboardInterrupt raised while
    torch's C++ code calls back into Python (its import) aborts the process (pybind11 cannot carry it) instead
    of ending it in one line. A background job's ignored SIGINT stays ignored."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


def stop_forkserver(wait_s: float = STOP_WAIT_S) -> None:
    """Stop and reap every process this one started through multiprocessing, as the last step before it
    exits (never between the jobs of a grid: the next job needs the forkserver):

    - ranks still running (none once launch() has returned; an exception could leave some): SIGKILL;
    - the forkserver: SIGTERM ends it at once. On the end of its "alive" pipe it would exit by itself, but
      only after tearing torch down (a second or more), or after finishing its imports;
    - multiprocessing's own exit step (its finalizers: semaphores unregistered, its temporary directory
      removed), which os._exit would skip and which must run while the resource tracker still listens;
    - the resource tracker: it exits on the end of its pipe, once it has unlinked anything leaked.

    The forkserver and the tracker end side by side (the kernel frees the forkserver's memory in about
    0.2 s). Each gets at most wait_s, then SIGKILL; Ctrl-C is ignored meanwhile. Idempotent. A rank of a
    torchrun job started neither: only multiprocessing's exit step runs there."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        _kill_ranks(wait_s)
        server = _signal_forkserver()
        if multiprocessing.active_children() and server is not None:
            _reap(server, wait_s)   # a rank that outlived SIGKILL: its join returns once the forkserver is gone
        if not multiprocessing.active_children():   # its joins cannot wait
            multiprocessing.util._exit_function()
        tracker = _close_resource_tracker()
        for pid in (server, tracker):
            if pid is not None:
                _reap(pid, wait_s)
    finally:
        if main_thread and previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


def _kill_ranks(wait_s: float) -> None:
    children = multiprocessing.active_children()   # started by this process (forkserver or spawn); reaps ended ones
    for child in children:
        child.kill()
    deadline = time.monotonic() + wait_s
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))


def _signal_forkserver() -> int | None:
    """Close the forkserver's alive pipe and SIGTERM it; its pid, or None when this process has none running
    (a rank, torchrun, or stopped already)."""
    server = multiprocessing.forkserver._forkserver
    if server._forkserver_pid is None:
        return None
    pid, address = server._forkserver_pid, server._forkserver_address
    os.close(server._forkserver_alive_fd)
    server._forkserver_alive_fd = server._forkserver_pid = server._forkserver_address = None
    _signal(pid, signal.SIGTERM)
    if address and not multiprocessing.util.is_abstract_socket_namespace(address):
        try:
            os.unlink(address)
        except OSError:
            pass
    return pid


def _close_resource_tracker() -> int | None:
    """Close this process's end of the resource tracker's pipe (it ignores SIGTERM and SIGINT, and exits on the
    pipe's end once every rank has closed it too); its pid, or None when this process did not start one."""
    tracker = multiprocessing.resource_tracker._resource_tracker
    if tracker._pid is None:
        return None
    pid, fd = tracker._pid, tracker._fd
    tracker._pid = tracker._fd = None
    if fd is not None:
        os.close(fd)
    return pid


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _reap(pid: int, wait_s: float) -> None:
    """Wait for a child of this process to exit, at most wait_s, then SIGKILL it and wait as long again."""
    for last_try in (False, True):
        deadline, pause = time.monotonic() + wait_s, 0.001
        while True:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:   # reaped already
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(pause)
            pause = min(2 * pause, 0.02)
        if last_try:
            return   # unkillable (stuck in the kernel): give up rather than hang the exit
        _signal(pid, signal.SIGKILL)

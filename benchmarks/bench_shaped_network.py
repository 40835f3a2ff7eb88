"""The emulated link (--bandwidth) against a network whose rate the kernel enforces, on the same job.

The shaped run puts the server and each client in a network namespace of its own. Each client's namespace
is joined to the server's by a veth pair on a bridge, and both ends are shaped with `tc qdisc ... tbf` at
--bandwidth: the client's end shapes its uploads, the server's end its downloads. This machine's kernel has
tbf but no netem, so the per-message latency comes from the project's emulation (--latency, no
--bandwidth). Every rank is started by hand (RANK, WORLD_SIZE, MASTER_ADDR, as on several machines). The
emulated run is the same job on loopback with --bandwidth and --latency.

For FedAvg and Overlap-FedAvg (its defaults) it prints the mean round time and the clients' mean
communication time (rounds 2..R) of both runs and their ratio. Target: round times within 10 %.

It needs root (namespaces, veth, tc) and iproute2; without them it says so in one line and exits 2. It
deletes its namespaces, which takes their veths, bridge and qdiscs with them, when it ends, fails or is
interrupted (Ctrl-C, SIGTERM, SIGHUP), and deletes stale ones of an earlier run that was killed outright.

    sudo python benchmarks/bench_shaped_network.py --data_dir ./data

Time: about 4 minutes on 2 cores (as root).
Figures: docs/benchmarks.md and docs/network.md ("The shaped-network check").
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from jobs import (  # noqa: E402
    COMMANDS,
    JobResult,
    read_metrics,
    read_summary,
    report_and_exit,
    run_job,
    steady_mean,
    work_directory,
)

NAMESPACE_PREFIX = "ofa-shaped-"
SUBNET = "10.77.0"
SERVER_IP = f"{SUBNET}.1"
TARGET_RATIO = 0.10


def missing_privileges() -> str | None:
    """Why this machine cannot build the shaped network, or None."""
    if os.geteuid() != 0:
        return "bench_shaped_network.py needs root (network namespaces, veth pairs, tc): run it as root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"bench_shaped_network.py needs iproute2 ({' and '.join(missing)} not found): install it"
    return None


def _ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", "netns", "exec", namespace, *args] if namespace else list(args)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")


def our_namespaces() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.startswith(NAMESPACE_PREFIX)]


def delete_namespaces() -> None:
    for namespace in our_namespaces():
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


class ShapedStar:
    """A server namespace with a bridge, and one namespace per client on a veth pair shaped both ways."""

    def __init__(self, num_clients: int, rate_mbit: float):
        self.num_clients, self.rate_mbit = num_clients, rate_mbit
        self.server_ns = NAMESPACE_PREFIX + "server"

    def client_ns(self, client: int) -> str:
        return f"{NAMESPACE_PREFIX}c{client}"

    @staticmethod
    def client_interface(client: int) -> str:
        return f"ofa{client}c"

    def __enter__(self) -> ShapedStar:
        delete_namespaces()   # left by a run that was killed outright
        self._previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _build(self) -> None:
        # tbf: rate, a burst of 32 kB, and a queue of up to 5 s at the rate, so that TCP is slowed, not dropped
        shape = ["tc", "qdisc", "add", "dev", None, "root", "tbf", "rate", f"{self.rate_mbit:g}mbit",
                 "burst", "32kb", "latency", "5s"]
        _ip("ip", "netns", "add", self.server_ns)
        _ip("ip", "link", "set", "lo", "up", namespace=self.server_ns)
        _ip("ip", "link", "add", "br0", "type", "bridge", namespace=self.server_ns)
        _ip("ip", "addr", "add", f"{SERVER_IP}/24", "dev", "br0", namespace=self.server_ns)
        _ip("ip", "link", "set", "br0", "up", namespace=self.server_ns)
        for client in range(1, self.num_clients + 1):
            namespace, inside, outside = self.client_ns(client), self.client_interface(client), f"ofa{client}s"
            _ip("ip", "netns", "add", namespace)
            _ip("ip", "link", "set", "lo", "up", namespace=namespace)
            _ip("ip", "link", "add", inside, "netns", namespace, "type", "veth", "peer", "name", outside,
                "netns", self.server_ns)
            _ip("ip", "addr", "add", f"{SUBNET}.{client + 1}/24", "dev", inside, namespace=namespace)
            _ip("ip", "link", "set", inside, "up", namespace=namespace)
            _ip("ip", "link", "set", outside, "master", "br0", namespace=self.server_ns)
            _ip("ip", "link", "set", outside, "up", namespace=self.server_ns)
            _ip(*[inside if part is None else part for part in shape], namespace=namespace)          # uploads
            _ip(*[outside if part is None else part for part in shape], namespace=self.server_ns)    # downloads

    def __exit__(self, *exc) -> None:
        delete_namespaces()
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler)

    def run_job(self, script: str, options: list[str], out_dir: Path, timeout_s: float) -> JobResult:
        """The job with every rank started by hand in its namespace; the benchmark exits if it fails."""
        world_size = self.num_clients + 1
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, script, *options, "--out_dir", str(out_dir)]
        COMMANDS.append(f"(shaped, every rank in its namespace) {' '.join(command)}")
        processes = []
        began = time.perf_counter()
        try:
            for rank in range(world_size):
                namespace = self.server_ns if rank == 0 else self.client_ns(rank)
                interface = "br0" if rank == 0 else self.client_interface(rank)
                env = ["env", f"RANK={rank}", f"WORLD_SIZE={world_size}", f"MASTER_ADDR={SERVER_IP}",
                       "MASTER_PORT=29500", f"GLOO_SOCKET_IFNAME={interface}"]
                log = (out_dir.parent / f"{out_dir.name}.rank{rank}.out").open("w")
                processes.append(subprocess.Popen(["ip", "netns", "exec", namespace, *env, *command], cwd=ROOT,
                                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            deadline = time.monotonic() + timeout_s
            for rank, process in enumerate(processes):
                status = process.wait(max(1.0, deadline - time.monotonic()))
                if status != 0:
                    tail = (out_dir.parent / f"{out_dir.name}.rank{rank}.out").read_text()[-2000:]
                    sys.exit(f"shaped job: rank {rank} failed with exit status {status}\n{tail}")
        except subprocess.TimeoutExpired:
            sys.exit(f"shaped job timed out after {timeout_s:.0f} s: {COMMANDS[-1]}")
        finally:
            for process in processes:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        return JobResult(COMMANDS[-1], read_metrics(out_dir), read_summary(out_dir), time.perf_counter() - began)


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--data_dir", default="./data", help="data root holding MNIST (see prepare_data.py)")
    add("--work_dir", default=None, help="keep the run directories here (default: a temporary directory)")
    add("--bandwidth", type=float, default=5.0, help="each client's rate, Mbit/s, both ways")
    add("--latency", type=float, default=10.0, help="per-message latency, ms (emulated in both runs)")
    add("--rounds", type=int, default=8)
    add("--max_train_samples", type=int, default=None, help="smoke tests only: a seeded subset of MNIST")
    add("--job_timeout", type=float, default=900.0, help="seconds before a job is declared hung")
    args = parser.parse_args()
    reason = missing_privileges()
    if reason:
        print(reason, file=sys.stderr)
        sys.exit(2)
    args.data_dir = str(Path(args.data_dir).resolve())
    num_clients = 4
    base = ["--world_size", str(num_clients + 1), "--dataset", "mnist", "--model", "mlp", "--client_epoch", "1",
            "--max_epoch", str(args.rounds), "--eval_every", "0", "--data_dir", args.data_dir,
            "--latency", f"{args.latency:g}", "--timeout", "300"]
    if args.max_train_samples:
        base += ["--max_train_samples", str(args.max_train_samples)]
    verdicts: list = []
    runs: dict[tuple[str, str], JobResult] = {}
    with work_directory(args, prefix="bench-shaped-") as work:
        try:
            with ShapedStar(num_clients, args.bandwidth) as star:
                for algorithm, script in (("FedAvg", "FedAvg.py"), ("Overlap", "AsyncFedAvg.py")):
                    runs[algorithm, "shaped"] = star.run_job(script, base, work / f"{algorithm}-shaped",
                                                             args.job_timeout)
                    runs[algorithm, "emulated"] = run_job(script, [*base, "--bandwidth", f"{args.bandwidth:g}"],
                                                          work / f"{algorithm}-emulated", args.job_timeout)
        except KeyboardInterrupt:
            sys.exit("interrupted: the namespaces are deleted")
        print(f"\n## MNIST/MLP, {num_clients} clients, {args.rounds} rounds x 1 epoch, {args.bandwidth:g} Mbit/s "
              f"each way per client, {args.latency:g} ms per message (emulated)\n")
        print("| algorithm | link | mean round s | mean comm s | bytes up per round |\n|---|---|---|---|---|")
        for (algorithm, link), job in runs.items():
            print(f"| {algorithm} | {link} | {steady_mean(job.rows, 'round_s'):.3f} | "
                  f"{steady_mean(job.rows, 'comm_s'):.3f} | {job.rows[-1]['bytes_up']:.0f} |")
        for algorithm in ("FedAvg", "Overlap"):
            shaped, emulated = runs[algorithm, "shaped"], runs[algorithm, "emulated"]
            ratio = steady_mean(shaped.rows, "round_s") / steady_mean(emulated.rows, "round_s")
            verdicts.append((f"{algorithm}: shaped round {ratio:.3f}x the emulated one (within "
                             f"{100 * TARGET_RATIO:g} %)", abs(ratio - 1) <= TARGET_RATIO))
            comm = steady_mean(shaped.rows, "comm_s") / steady_mean(emulated.rows, "comm_s")
            verdicts.append((f"{algorithm}: shaped communication {comm:.3f}x the emulated one", None))
    report_and_exit(verdicts)


if __name__ == "__main__":
    main()

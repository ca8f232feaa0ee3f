"""KVSvr beside etcd: the same load on a 3-member etcd cluster and a 3-node group.

    python bench/etcd_compare.py                 # 20 s per workload, a table
    python bench/etcd_compare.py --seconds 5 --json
    python bench/etcd_compare.py --concurrency 1 --workloads put,get

Theory. Both systems run on loopback, one after the other and never at the
same time: a 3-member etcd cluster (Debian's `etcd-server`, member i on
127.0.0.i, data in a temporary directory) is started, measured and
stopped, then a 3-node KVSvr group (`jepsen_tests.nodes.GroupProcesses`,
node i on 127.0.0.i) the same way. Each start waits for health by polling
with a deadline; everything started is killed in a `finally`.

The load shape is the same for both, driven from this process: `keys`
keys preloaded with `value-size`-byte values, then for each workload a
closed loop of `concurrency` tasks (each sends a request, waits for its
answer, sends the next) for `seconds`, every task stopping by itself once
the time is up. Task i picks keys uniformly with `random.Random(i)` and
uses the connection to member i % 3, so every member takes requests:

- `put`: a durable write (etcd syncs its WAL, KVSvr syncs before a reply);
- `get`: a linearizable read (etcd's default Range, serializable=False;
  KVSvr's default get, a quorum read);
- `mixed`: each operation a get or a put, half and half.

`--concurrency 1` measures one request at a time (latency, not throughput).
After each KVSvr workload the nodes' own counters (status: peer messages
and envelopes sent, syncs, storage records and batches written) are given
per operation, summed over the group.

etcd is driven through its asyncio client `aetcd` under asyncio; KVSvr
through `kvsvr.client.Client` under trio, with the loop of `cli/bench.py`.

Server CPU per operation is the sum of utime + stime over the server
processes (every thread, from /proc/PID/stat) across the measured loop,
divided by the operations answered. Client CPU (this process) is given
beside it: on a small machine the client shares the cores with the
servers. Ratios are KVSvr / etcd.

Exit codes: 0 done, 1 a run failed, 2 something to install is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPOSITORY))

import trio  # noqa: E402

from cli import bench as kvctl_bench  # noqa: E402
from jepsen_tests.nodes import GroupProcesses  # noqa: E402
from kvsvr.client import Client  # noqa: E402

WORKLOADS = ("put", "get", "mixed")
# mixed: each operation a get with this chance, else a put (kvctl bench's default).
MIXED_READ_FRACTION = 0.5
MEMBERS = 3
HOSTS = tuple(f"127.0.0.{index}" for index in range(1, MEMBERS + 1))
EXIT_FAILED = 1
EXIT_MISSING = 2
# How long a cluster may take to report healthy, and how often to ask.
HEALTH_TIMEOUT_SECONDS = 60.0
HEALTH_POLL_SECONDS = 0.05
# One request's deadline: a load that hangs fails instead of waiting forever.
REQUEST_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 10.0
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
INSTALL_ETCD = "apt-get install -y etcd-server"
INSTALL_AETCD = "pip install -e '.[bench]'   (or: pip install aetcd)"


# -- measuring ---------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / CLOCK_TICKS_PER_SECOND


def cpu_seconds(pids: Sequence[int]) -> float:
    return sum(process_cpu_seconds(pid) for pid in pids)


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Measurement:
    """One workload's samples on one system, and the CPU spent around them."""

    def __init__(self) -> None:
        self.latencies_seconds: list[float] = []
        self.errors: Counter = Counter()
        self.elapsed_seconds = 0.0
        self.server_cpu_seconds = 0.0
        self.client_cpu_seconds = 0.0

    def to_json(self) -> dict:
        samples = sorted(self.latencies_seconds)
        operations = len(samples)
        per_op = (lambda seconds: round(seconds / operations * 1e6, 1)) if operations else (
            lambda seconds: None)
        return {
            "operations": operations,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "ops_per_second": round(operations / self.elapsed_seconds, 1)
            if self.elapsed_seconds > 0 else 0.0,
            "p50_ms": _rounded(kvctl_bench.percentile(samples, 0.50)),
            "p99_ms": _rounded(kvctl_bench.percentile(samples, 0.99)),
            "max_ms": _rounded(samples[-1] * 1000 if samples else None),
            "errors": dict(self.errors),
            "server_cpu_seconds": round(self.server_cpu_seconds, 2),
            "server_cpu_us_per_op": per_op(self.server_cpu_seconds),
            "client_cpu_us_per_op": per_op(self.client_cpu_seconds),
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class CpuWindow:
    """Server and client CPU from entering to leaving, into a Measurement."""

    def __init__(self, server_pids: Sequence[int], measurement: Measurement):
        self.server_pids = server_pids
        self.measurement = measurement

    def __enter__(self) -> CpuWindow:
        self._server = cpu_seconds(self.server_pids)
        self._client = own_cpu_seconds()
        return self

    def __exit__(self, *exc_info) -> None:
        self.measurement.server_cpu_seconds = cpu_seconds(self.server_pids) - self._server
        self.measurement.client_cpu_seconds = own_cpu_seconds() - self._client


# -- processes ---------------------------------------------------------------------


def free_port_on_every_host() -> int:
    """A TCP port free on 127.0.0.1, .2 and .3 alike."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((HOSTS[0], 0))
            port = probe.getsockname()[1]
        try:
            for host in HOSTS[1:]:
                with socket.socket() as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every loopback host")


def wait_until(condition: Callable[[], bool], timeout_seconds: float, what: str,
               check_alive: Callable[[], None] = lambda: None) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        check_alive()
        if condition():
            return
        time.sleep(HEALTH_POLL_SECONDS)
    raise TimeoutError(f"{what} not ready after {timeout_seconds:.0f} s")


class EtcdCluster:
    """Three etcd members on 127.0.0.1-3, each in its own process group."""

    def __init__(self, root: Path, etcd_path: str):
        self.root = root
        self.etcd_path = etcd_path
        self.peer_port = free_port_on_every_host()
        self.client_port = free_port_on_every_host()
        while self.client_port == self.peer_port:
            self.client_port = free_port_on_every_host()
        self.processes: list[subprocess.Popen] = []

    @property
    def client_addresses(self) -> list[tuple[str, int]]:
        return [(host, self.client_port) for host in HOSTS]

    def command(self, index: int) -> list[str]:
        host = HOSTS[index]
        peer_url = f"http://{host}:{self.peer_port}"
        client_url = f"http://{host}:{self.client_port}"
        initial_cluster = ",".join(
            f"m{number + 1}=http://{member}:{self.peer_port}" for number, member in enumerate(HOSTS)
        )
        return [
            self.etcd_path,
            "--name", f"m{index + 1}",
            "--data-dir", str(self.root / f"m{index + 1}.etcd"),
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "kvsvr-bench",
            "--logger", "zap",
            "--log-level", "warn",
        ]

    def start(self) -> EtcdCluster:
        for index in range(MEMBERS):
            log = open(self.root / f"m{index + 1}.log", "wb")
            self.processes.append(subprocess.Popen(
                self.command(index), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            ))
            log.close()
        wait_until(self.healthy, HEALTH_TIMEOUT_SECONDS, "etcd cluster", self._check_alive)
        return self

    def healthy(self) -> bool:
        for host, port in self.client_addresses:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=1) as answer:
                    if json.loads(answer.read()).get("health") != "true":
                        return False
            except (OSError, ValueError):
                return False
        return True

    def _check_alive(self) -> None:
        for index, process in enumerate(self.processes):
            if process.poll() is not None:
                log = (self.root / f"m{index + 1}.log").read_text(errors="replace")
                raise RuntimeError(f"etcd member m{index + 1} exited with {process.returncode}:\n"
                                   + "\n".join(log.splitlines()[-20:]))

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def stop(self) -> None:
        """SIGKILL every member's process group and reap it."""
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT_SECONDS)


# -- etcd under asyncio ------------------------------------------------------------


async def _etcd_closed_loop(operation, concurrency: int, seconds: float,
                            measurement: Measurement) -> None:
    """The loop of cli/bench.py's drive_closed_loop, for asyncio."""
    import aetcd.exceptions

    started = time.perf_counter()
    stop_at = started + seconds
    latencies = measurement.latencies_seconds

    async def loop(task_index: int) -> None:
        rng = random.Random(task_index)
        clock = time.perf_counter
        now = clock()
        while now < stop_at:
            try:
                await operation(task_index, rng)
            except aetcd.exceptions.ClientError as error:
                measurement.errors[type(error).__name__] += 1
                now = clock()
                continue
            finished = clock()
            latencies.append(finished - now)
            now = finished

    await asyncio.gather(*(loop(task_index) for task_index in range(concurrency)))
    measurement.elapsed_seconds = time.perf_counter() - started


async def run_etcd(cluster: EtcdCluster, options: argparse.Namespace) -> dict:
    import aetcd

    keys = kvctl_bench.bench_keys(options.keys)
    value = kvctl_bench.bench_value(options.value_size)
    clients = [aetcd.Client(host, port, timeout=REQUEST_TIMEOUT_SECONDS)
               for host, port in cluster.client_addresses]
    results = {}
    try:
        for client in clients:
            await client.connect()
            await client.get(b"bench/connect")  # the channel is up before timing
        remaining = iter(keys)

        async def preload(task_index: int) -> None:
            client = clients[task_index % len(clients)]
            for key in remaining:
                await client.put(key, value)

        started = time.perf_counter()
        await asyncio.gather(*(preload(index) for index in range(options.concurrency)))
        preload_seconds = time.perf_counter() - started

        for workload in options.workloads:
            async def operation(task_index: int, rng: random.Random, workload=workload) -> None:
                client = clients[task_index % len(clients)]
                key = keys[rng.randrange(len(keys))]
                if workload == "put" or (
                    workload == "mixed" and rng.random() >= MIXED_READ_FRACTION
                ):
                    await client.put(key, value)
                elif await client.get(key) is None:  # linearizable: serializable=False
                    raise AssertionError(f"preloaded key {key!r} has no value")

            measurement = Measurement()
            with CpuWindow(cluster.pids, measurement):
                await _etcd_closed_loop(operation, options.concurrency, options.seconds,
                                        measurement)
            results[workload] = measurement.to_json()
        results["preload_seconds"] = round(preload_seconds, 2)
    finally:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()
    return results


# -- KVSvr under trio --------------------------------------------------------------


# Counters every node reports in its status, summed over the group and
# divided by the operations of a workload: the work one operation costs.
NODE_COUNTERS = ("peer_messages_sent", "peer_envelopes_sent", "syncs",
                 "storage_records_written", "storage_batches_written")


async def group_counters(group: GroupProcesses) -> Counter:
    total: Counter = Counter()
    for node in group.nodes.values():
        async with Client(node.address, timeout_seconds=REQUEST_TIMEOUT_SECONDS) as client:
            status = await client.status()
        total.update({name: status.get(name, 0) for name in NODE_COUNTERS})
    return total


async def run_kvsvr(group: GroupProcesses, options: argparse.Namespace) -> dict:
    keys = kvctl_bench.bench_keys(options.keys)
    value = kvctl_bench.bench_value(options.value_size)
    pids = [node.process.pid for node in group.nodes.values()]
    results = {}
    async with Client(group.addresses, timeout_seconds=REQUEST_TIMEOUT_SECONDS) as client:
        # The preload connects to every node (keys route to all three) before timing.
        preload_seconds = await kvctl_bench.preload([client], keys, value, options.concurrency)
        for workload in options.workloads:
            plan = kvctl_bench.Workload(
                name=workload, concurrency=options.concurrency,
                value_size_bytes=options.value_size, key_count=options.keys,
                duration_seconds=options.seconds, read_fraction=MIXED_READ_FRACTION,
            )
            operation = kvctl_bench.workload_operation(client, plan, keys, value)
            measurement = Measurement()
            counted_before = await group_counters(group)
            with CpuWindow(pids, measurement):
                recorder = await kvctl_bench.drive_closed_loop(
                    [operation], options.concurrency, options.seconds
                )
            counted = await group_counters(group)
            counted.subtract(counted_before)
            if recorder.misses:
                raise AssertionError(f"{recorder.misses} gets found no value after the preload")
            measurement.latencies_seconds = recorder.samples()
            measurement.errors = recorder.errors
            measurement.elapsed_seconds = recorder.elapsed_seconds
            results[workload] = measurement.to_json()
            answered = max(1, len(measurement.latencies_seconds))
            results[workload]["per_op"] = {
                name: round(counted[name] / answered, 2) for name in NODE_COUNTERS
            }
    results["preload_seconds"] = round(preload_seconds, 2)
    return results


# -- the comparison ----------------------------------------------------------------


RATIO_FIELDS = ("ops_per_second", "p50_ms", "p99_ms", "server_cpu_us_per_op",
                "client_cpu_us_per_op")


def ratios(kvsvr: dict, etcd: dict, workloads: Sequence[str]) -> dict:
    """KVSvr / etcd for each figure (above 1: KVSvr's is larger)."""
    result = {}
    for workload in workloads:
        result[workload] = {
            field: round(kvsvr[workload][field] / etcd[workload][field], 2)
            if kvsvr[workload][field] is not None and etcd[workload][field] else None
            for field in RATIO_FIELDS
        }
    return result


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "kernel": platform.release()}


def etcd_version(etcd_path: str) -> str:
    output = subprocess.run([etcd_path, "--version"], capture_output=True, text=True,
                            timeout=30).stdout
    return output.splitlines()[0].split(":", 1)[-1].strip() if output else "unknown"


def table_lines(report: dict) -> list[str]:
    parameters = report["parameters"]
    lines = [
        f"KVSvr vs etcd {report['etcd_version']}: {parameters['concurrency']} in flight, "
        f"{parameters['value_size_bytes']}-byte values, {parameters['keys']} keys, "
        f"{parameters['seconds']:g} s per workload; {report['machine']['cpus']} cores shared "
        f"by client and servers; load average {report['load_average_at_start']} at start",
        "",
        f"{'':16}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'server CPU':>12}{'client CPU':>12}"
        f"{'errors':>8}",
        f"{'':16}{'':>10}{'':>9}{'':>9}{'us/op':>12}{'us/op':>12}",
    ]
    for workload in parameters["workloads"]:
        for system in ("etcd", "kvsvr"):
            figures = report[system][workload]
            lines.append(
                f"{workload + ' ' + system:16}{figures['ops_per_second']:>10,.0f}"
                f"{_cell(figures['p50_ms'])}{_cell(figures['p99_ms'])}"
                f"{_cell(figures['server_cpu_us_per_op'], 12, '.0f')}"
                f"{_cell(figures['client_cpu_us_per_op'], 12, '.0f')}"
                f"{sum(figures['errors'].values()):>8}"
            )
        ratio = report["ratios"][workload]
        lines.append(
            f"{workload + ' KVSvr/etcd':16}{_cell(ratio['ops_per_second'], 10, '.2f')}"
            f"{_cell(ratio['p50_ms'])}{_cell(ratio['p99_ms'])}"
            f"{_cell(ratio['server_cpu_us_per_op'], 12, '.2f')}"
            f"{_cell(ratio['client_cpu_us_per_op'], 12, '.2f')}"
        )
        per_op = report["kvsvr"][workload].get("per_op")
        if per_op:
            lines.append("  kvsvr per op, all nodes: " + ", ".join(
                f"{name.replace('_', ' ')} {value:g}" for name, value in per_op.items()))
        lines.append("")
    return lines


def _cell(value: float | None, width: int = 9, form: str = ".2f") -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{form}}"


def missing_prerequisites() -> list[str]:
    missing = []
    if shutil.which("etcd") is None:
        missing.append(f"etcd is not installed: {INSTALL_ETCD}")
    if importlib.util.find_spec("aetcd") is None:
        missing.append(f"the aetcd client is not installed: {INSTALL_AETCD}")
    return missing


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Start a 3-member etcd cluster and a 3-node KVSvr group on loopback, "
                    "one after the other, drive each with the same closed-loop load, and "
                    "print throughput, p50/p99 latency and server CPU per operation, with "
                    "the KVSvr/etcd ratios.",
        epilog=f"Needs etcd ({INSTALL_ETCD}) and aetcd ({INSTALL_AETCD}); "
               "exits 2 naming what is missing.",
    )
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="how long each workload runs (default: 20)")
    parser.add_argument("--keys", type=int, default=10_000,
                        help="keys preloaded and then picked at random (default: 10000)")
    parser.add_argument("--value-size", type=int, default=100,
                        help="bytes in each value (default: 100)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="requests in flight (default: 64)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated, of put,get (default: put,get)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    options = parser.parse_args(argv)
    options.workloads = [name for name in options.workloads.split(",") if name]
    unknown = set(options.workloads) - set(WORKLOADS)
    if unknown or not options.workloads:
        parser.error(f"workloads are among {','.join(WORKLOADS)}, not {options.workloads}")
    if options.seconds <= 0 or min(options.keys, options.concurrency) < 1 or options.value_size < 0:
        parser.error("--seconds > 0, --keys and --concurrency >= 1, --value-size >= 0")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_arguments(argv)
    missing = missing_prerequisites()
    if missing:
        for line in missing:
            print(line, file=sys.stderr)
        return EXIT_MISSING
    etcd_path = shutil.which("etcd")
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "etcd_version": etcd_version(etcd_path),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "parameters": {
            "seconds": options.seconds, "keys": options.keys,
            "value_size_bytes": options.value_size, "concurrency": options.concurrency,
            "workloads": options.workloads, "members": MEMBERS,
        },
    }
    try:
        compare(options, etcd_path, report)
    except Exception as error:  # a run that failed: say why, exit 1
        print(f"etcd_compare: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_FAILED
    if options.json:
        print(json.dumps(report))
    else:
        print("\n".join(table_lines(report)))
    return 0


def compare(options: argparse.Namespace, etcd_path: str, report: dict) -> None:
    """etcd, then KVSvr: each started, measured and killed before the next starts."""
    with tempfile.TemporaryDirectory(prefix="kvsvr-etcd-compare-") as root_text:
        root = Path(root_text)
        (root / "etcd").mkdir()
        cluster = EtcdCluster(root / "etcd", etcd_path)
        try:
            cluster.start()
            report["etcd"] = asyncio.run(run_etcd(cluster, options))
        finally:
            cluster.stop()
        group = GroupProcesses(root / "kvsvr", members=MEMBERS)
        try:
            group.start()
            report["kvsvr"] = trio.run(run_kvsvr, group, options)
        finally:
            group.kill_all()
    report["load_average_at_end"] = round(os.getloadavg()[0], 2)
    report["ratios"] = ratios(report["kvsvr"], report["etcd"], options.workloads)


if __name__ == "__main__":
    sys.exit(main())

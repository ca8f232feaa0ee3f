"""Real node processes for tests and the fault suite: start, wait, kill, restart.

A `NodeProcess` runs `python -m kvsvr serve` as a subprocess with its own
data directory and address, its output going to a log file. `start()`
returns once the node accepts connections (polled with a deadline, never a
fixed sleep); `kill()` is SIGKILL, `stop()` is SIGTERM and a wait.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from kvsvr.shell.secret_file import write_secret_file

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
_POLL_INTERVAL_SECONDS = 0.02
ADDRESS_BLOCK_MAX = 255
CLIENT_HOST_NUMBER = 100  # the last byte of the clients' address, past any node's


def block_host(address_block: int, number: int) -> str:
    """Address `number` of a loopback block: 127.<block>.0.<number> (all of 127/8 is loopback)."""
    assert 0 <= address_block <= ADDRESS_BLOCK_MAX, address_block
    assert 1 <= number <= 254, number
    return f"127.{address_block}.0.{number}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class NodeProcess:
    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = tuple(extra_args)
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "kvsvr", "serve", "--data-dir", str(self.data_dir),
                "--listen", self.address, *self.extra_args]

    def start(self) -> NodeProcess:
        assert self.process is None or self.process.poll() is not None, "already running"
        log = open(self.log_path, "ab")
        repository_root = Path(__file__).resolve().parents[1]
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(repository_root), environment.get("PYTHONPATH")]))
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        env=environment)
        log.close()
        self.wait_until_serving()
        return self

    def wait_until_serving(self, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"node {self.address} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(_POLL_INTERVAL_SECONDS)
        raise TimeoutError(f"node {self.address} not serving after {timeout_seconds}s:\n"
                           f"{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye (what is synced is all that survives)."""
        self._signal_and_wait(signal.SIGKILL)

    def stop(self) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        return self._signal_and_wait(signal.SIGTERM)

    def _signal_and_wait(self, signum: int) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signum)
        try:
            return self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def restart(self) -> NodeProcess:
        self.kill()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class GroupProcesses:
    """A replica group of real node processes, node i on 127.<block>.0.i.

    Each node listens on its own loopback address and connects to its peers
    from it, so a partition between two addresses is a partition between
    two nodes. Clients connect from `client_host`, in the same block but no
    node's. Groups in different address blocks share no address, so two of
    them (two fault-injection runs) can run at once and a firewall rule
    naming one group's addresses never touches the other.

    The members share a peer secret, `root/peer.secret` (made by the
    `kvsvr make-secret` code the first time, kept for restarts), or the
    file `peer_secret_file` names.
    """

    def __init__(self, root: Path, members: int = 3, extra_args: tuple[str, ...] = (),
                 base_port: int | None = None, address_block: int = 0,
                 peer_secret_file: Path | None = None):
        assert members in (3, 5)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if peer_secret_file is None:
            peer_secret_file = self.root / "peer.secret"
            if not peer_secret_file.exists():
                write_secret_file(str(peer_secret_file))
        self.peer_secret_file = Path(peer_secret_file)
        self.address_block = address_block
        self.client_host = block_host(address_block, CLIENT_HOST_NUMBER)
        hosts = [block_host(address_block, node_id) for node_id in range(1, members + 1)]
        port = base_port or free_port(hosts[0])
        # One port for all: each node has its own address, so they never clash.
        self.group_text = ",".join(f"{index + 1}={host}:{port}" for index, host in enumerate(hosts))
        self.nodes = {
            index + 1: NodeProcess(
                self.root / f"n{index + 1}",
                host,
                port,
                ("--node-id", str(index + 1), "--group", self.group_text,
                 "--peer-secret-file", str(self.peer_secret_file), *extra_args),
            )
            for index, host in enumerate(hosts)
        }

    @property
    def addresses(self) -> str:
        """The client's address list, in node-id order."""
        return ",".join(node.address for node in self.nodes.values())

    def start(self) -> GroupProcesses:
        for node in self.nodes.values():
            node.start()
        return self

    def kill_all(self) -> None:
        for node in self.nodes.values():
            node.kill()

"""Real node processes for tests and the fault suite: start, wait, kill, restart.

A `NodeProcess` (a `processes.ServerProcess`) runs `python -m kvsvr serve`
with its own data directory and address, its output going to a log file.
`start()` returns once the node accepts connections (polled with a
deadline, never a fixed sleep); `kill()` is SIGKILL, `stop()` is SIGTERM
and a wait. `GroupProcesses` runs a replica group of them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from jepsen_tests.processes import ServerProcess, free_port
from kvsvr.shell.secret_file import write_secret_file

__all__ = ["GroupProcesses", "NodeProcess", "block_host", "free_port"]

ADDRESS_BLOCK_MAX = 255
CLIENT_HOST_NUMBER = 100  # the last byte of the clients' address, past any node's


def block_host(address_block: int, number: int) -> str:
    """Address `number` of a loopback block: 127.<block>.0.<number> (all of 127/8 is loopback)."""
    assert 0 <= address_block <= ADDRESS_BLOCK_MAX, address_block
    assert 1 <= number <= 254, number
    return f"127.{address_block}.0.{number}"


class NodeProcess(ServerProcess):
    """`python -m kvsvr serve`, serving once it accepts connections."""

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

    def describe(self) -> str:
        return f"node {self.address}"

    def serving(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=1):
            return True


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

"""Server processes for tests and the fault suite: start with a log, wait until serving, signal.

`ServerProcess` runs one command as a subprocess with its output in a log
file and this repository first on its PYTHONPATH. `start()` returns once
`serving()` says so (polled with a deadline, never a fixed sleep) and
raises, with the log's tail, if the process exits first; `kill()` is
SIGKILL (no flush, no goodbye: what is synced is all that survives),
`stop()` SIGTERM and a wait. `NodeProcess` (nodes.py) runs a kvsvr node,
`ChatServiceProcess` a chat service instance.
"""

from __future__ import annotations

import abc
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
_POLL_INTERVAL_SECONDS = 0.02


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class ServerProcess(abc.ABC):
    """One server process; a subclass says what to run and how to see it serve."""

    log_path: Path
    process: subprocess.Popen | None = None

    @abc.abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the server."""

    @abc.abstractmethod
    def serving(self) -> bool:
        """Whether it serves now (an OSError counts as not yet)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """The server, named in errors."""

    def start(self):
        assert self.process is None or self.process.poll() is not None, "already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        repository_root = Path(__file__).resolve().parents[1]
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(repository_root), environment.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            env=environment)
        self.wait_until_serving()
        return self

    def wait_until_serving(self, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.describe()} exited with {self.process.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                if self.serving():
                    return
            except OSError:
                pass
            time.sleep(_POLL_INTERVAL_SECONDS)
        raise TimeoutError(f"{self.describe()} not serving after {timeout_seconds}s:\n"
                           f"{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye (what is synced is all that survives)."""
        self._signal_and_wait(signal.SIGKILL)

    def stop(self) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        return self._signal_and_wait(signal.SIGTERM)

    def restart(self):
        self.kill()
        return self.start()

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

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class ChatServiceProcess(ServerProcess):
    """`python -m chat_service serve`, serving once `GET /health` answers 200."""

    def __init__(self, kv_addresses: str, log_path: Path, *, host: str = "127.0.0.1",
                 port: int | None = None, instance_id: str | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.kv_addresses = kv_addresses
        self.log_path = Path(log_path)
        self.host = host
        self.port = port or free_port(host)
        self.instance_id = instance_id
        self.extra_args = tuple(extra_args)
        self.process = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def describe(self) -> str:
        return f"chat service {self.url}"

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "chat_service", "serve", "--kv", self.kv_addresses,
                   "--listen", f"{self.host}:{self.port}", "--log-level", "INFO"]
        if self.instance_id:
            command += ["--instance-id", self.instance_id]
        return command + list(self.extra_args)

    def serving(self) -> bool:
        with urllib.request.urlopen(self.url + "/health", timeout=1) as answer:
            return answer.status == 200

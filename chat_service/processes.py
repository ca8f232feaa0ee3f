"""chat_service instances as real processes, for tests and fault workloads.

`ChatServiceProcess` runs `python -m chat_service serve` with its output in a
log file; `start()` returns once `GET /health` answers (polled with a
deadline, never a fixed sleep); `kill()` is SIGKILL, `stop()` SIGTERM.
"""

from __future__ import annotations

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
_POLL_INTERVAL_SECONDS = 0.05


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class ChatServiceProcess:
    def __init__(self, kv_addresses: str, log_path: Path, *, host: str = "127.0.0.1",
                 port: int | None = None, instance_id: str | None = None,
                 extra_args: tuple[str, ...] = ()):
        self.kv_addresses = kv_addresses
        self.log_path = Path(log_path)
        self.host = host
        self.port = port or free_port(host)
        self.instance_id = instance_id
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "chat_service", "serve", "--kv", self.kv_addresses,
                   "--listen", f"{self.host}:{self.port}", "--log-level", "INFO"]
        if self.instance_id:
            command += ["--instance-id", self.instance_id]
        return command + list(self.extra_args)

    def start(self) -> ChatServiceProcess:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        repository_root = Path(__file__).absolute().parents[1]
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
                raise RuntimeError(f"chat service {self.url} exited with "
                                   f"{self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(_POLL_INTERVAL_SECONDS)
        raise TimeoutError(f"chat service {self.url} not serving after {timeout_seconds}s:\n"
                           f"{self.log_tail()}")

    def kill(self) -> None:
        self._signal_and_wait(signal.SIGKILL)

    def stop(self) -> int:
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

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

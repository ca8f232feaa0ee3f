"""Real processes for the chat tests: a 3-node KVSvr group and two chat_service
instances on loopback, shared by the tests of one module."""

from __future__ import annotations

import dataclasses
import signal

import pytest
import trio

from jepsen_tests.nodes import GroupProcesses
from jepsen_tests.processes import ChatServiceProcess

WAIT_SECONDS = 60.0


@dataclasses.dataclass
class ChatCluster:
    group: GroupProcesses
    instances: list[ChatServiceProcess]

    @property
    def urls(self) -> list[str]:
        return [instance.url for instance in self.instances]

    def stop(self) -> None:
        for instance in self.instances:
            instance.kill()
        for node in self.group.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGCONT)
        self.group.kill_all()


def start_chat_cluster(root) -> ChatCluster:
    group = GroupProcesses(root / "kv").start()
    instances = []
    try:
        for index in range(2):
            instances.append(ChatServiceProcess(
                group.addresses, root / f"chat{index}.log", instance_id=f"chat{index}").start())
    except BaseException:
        ChatCluster(group, instances).stop()
        raise
    return ChatCluster(group, instances)


@pytest.fixture(scope="module")
def chat_cluster(tmp_path_factory):
    cluster = start_chat_cluster(tmp_path_factory.mktemp("chat"))
    yield cluster
    cluster.stop()


async def wait_for(condition, what: str, seconds: float = WAIT_SECONDS, interval: float = 0.05):
    """Poll an async condition until it returns something true; fail naming what
    never happened."""
    last = None
    with trio.move_on_after(seconds):
        while True:
            last = await condition()
            if last:
                return last
            await trio.sleep(interval)
    raise AssertionError(f"after {seconds}s: {what} (last: {last!r})")

"""Rotating the group's peer secret one node at a time, with no moment when the
members can't all talk (docs/security.md, "Rotating the secret").

Phase one restarts each node with the new secret and the previous one
(`--peer-secret-previous-file`); phase two restarts each with the new one
alone. After every restart every link in the group is up again and a write
is acknowledged: a node on the new secret and one still on the old always
share a secret, so the rotation never partitions the group.
"""

from __future__ import annotations

from jepsen_tests.nodes import GroupProcesses, NodeProcess
from kvsvr.client import Client
from kvsvr.shell.secret_file import write_secret_file

from .test_group_processes import wait_until


def with_secrets(node: NodeProcess, current: str, previous: str | None = None) -> None:
    """Give `node` these secret files for its next start."""
    arguments = list(node.extra_args)
    for option in ("--peer-secret-file", "--peer-secret-previous-file"):
        if option in arguments:
            at = arguments.index(option)
            del arguments[at:at + 2]
    arguments += ["--peer-secret-file", current]
    if previous is not None:
        arguments += ["--peer-secret-previous-file", previous]
    node.extra_args = tuple(arguments)


async def assert_every_link_up_and_writes_acknowledged(group: GroupProcesses, step: str) -> None:
    async def every_link_up() -> bool:
        for node in group.nodes.values():
            async with Client(node.address) as client:
                status = await client.status()
            if not all(link["connected"] for link in status["links"].values()):
                return False
        return True

    await wait_until(every_link_up, f"after {step}, some peer link stayed down")
    async with Client(group.addresses) as client:
        assert await client.put(b"rotation", step.encode()) >= 1


async def test_a_rolling_rotation_keeps_every_link_up(tmp_path):
    group = GroupProcesses(tmp_path / "group").start()
    old = str(group.peer_secret_file)
    new = str(tmp_path / "new.secret")
    write_secret_file(new)
    try:
        await assert_every_link_up_and_writes_acknowledged(group, "the start")
        for phase, previous in (("new and previous", old), ("new alone", None)):
            for node_id, node in group.nodes.items():
                with_secrets(node, new, previous)
                node.restart()
                await assert_every_link_up_and_writes_acknowledged(
                    group, f"restarting n{node_id} with the {phase} secret")
        for node in group.nodes.values():
            async with Client(node.address) as client:
                assert (await client.status())["peer_hellos_refused"] == 0
    finally:
        group.kill_all()


async def test_a_node_restarted_with_only_a_new_secret_is_cut_off(tmp_path):
    """The control: skip phase one, and the restarted node shares no secret with
    the others: its links never come up, it counts no peer reachable (so it
    refuses requests as `unavailable`), and the others count its hellos refused."""
    group = GroupProcesses(tmp_path / "group").start()
    new = str(tmp_path / "new.secret")
    write_secret_file(new)
    try:
        with_secrets(group.nodes[3], new)
        group.nodes[3].restart()

        async def cut_off() -> bool:
            async with Client(group.nodes[3].address) as client:
                status = await client.status()
            links = status["links"].values()
            return status["reachable_members"] == 1 and all(
                link["hellos_failed"] >= 1 and not link["connected"] for link in links)

        await wait_until(cut_off, "n3 kept talking to peers it shares no secret with")
        async with Client(group.nodes[1].address) as client:
            assert (await client.status())["peer_hellos_refused"] >= 1
    finally:
        group.kill_all()

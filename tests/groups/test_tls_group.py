"""A replica group serving TLS: peers dial each other with TLS, check each other's
certificate, then say the authenticated hello inside it.

Two ways to trust peers (kvsvr/shell/tls.py): a certificate shared by the whole
group and trusted as itself (no --tls-cacert), or per-node certificates
from a CA named by --tls-cacert. A group whose members can't verify each
other forms no links at all and refuses writes as `unavailable`.
"""

from __future__ import annotations

import pytest

from jepsen_tests.nodes import GroupProcesses
from kvsvr.client import Client
from kvsvr.protocol.errors import Unavailable

from .test_group_processes import wait_until


def tls_arguments(tls_files, layout: str) -> tuple[tuple[str, ...], str]:
    """The node options and the client's CA file for each way of trusting peers."""
    if layout == "shared-self-signed":
        return (("--tls-cert", str(tls_files.self_signed_cert),
                 "--tls-key", str(tls_files.self_signed_key)), str(tls_files.self_signed_cert))
    return (("--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key),
             "--tls-cacert", str(tls_files.ca_cert)), str(tls_files.ca_cert))


async def status_of(address: str, cacert: str) -> dict:
    async with Client(address, cacert=cacert) as client:
        return await client.status()


@pytest.mark.parametrize("layout", ["shared-self-signed", "ca-signed"])
async def test_a_tls_group_replicates_over_authenticated_tls_links(tmp_path, tls_files, layout):
    """Every link comes up (TLS, then the hello), and a write through one node is read,
    at its version, through every node."""
    arguments, cacert = tls_arguments(tls_files, layout)
    group = GroupProcesses(tmp_path / "group", extra_args=arguments).start()
    try:
        async with Client(group.addresses, cacert=cacert) as client:
            version = await client.put(b"k", b"over tls")

        async def every_link_up() -> bool:
            for node in group.nodes.values():
                status = await status_of(node.address, cacert)
                if not all(link["connected"] for link in status["links"].values()):
                    return False
            return True

        await wait_until(every_link_up, "some peer link never came up over TLS")
        for node in group.nodes.values():
            async with Client(node.address, cacert=cacert) as client:
                item = await client.get(b"k")
            assert (item.value, item.version) == (b"over tls", version)
            status = await status_of(node.address, cacert)
            assert status["tls"] is True and status["peer_hellos_refused"] == 0
    finally:
        group.kill_all()


async def test_members_that_cannot_verify_each_others_certificates_form_no_links(tmp_path,
                                                                                   tls_files):
    """Peers told to trust a CA that signed none of their certificates refuse each
    other in the TLS handshake: no link comes up, no hello is said, and writes are
    refused `unavailable` (definite) once the peers count as unreachable."""
    group = GroupProcesses(tmp_path / "group", extra_args=(
        "--tls-cert", str(tls_files.cert), "--tls-key", str(tls_files.key),
        "--tls-cacert", str(tls_files.other_ca_cert))).start()
    cacert = str(tls_files.ca_cert)
    try:
        async def alone() -> bool:
            status = await status_of(group.nodes[1].address, cacert)
            links = status["links"].values()
            return status["reachable_members"] == 1 and all(
                link["hellos_failed"] >= 1 and not link["connected"] for link in links)

        await wait_until(alone, "node 1 kept counting untrusted peers as reachable")
        async with Client(group.nodes[1].address, cacert=cacert) as client:
            with pytest.raises(Unavailable, match="members are reachable"):
                await client.put(b"k", b"v")
        assert "certificate verify failed" in group.nodes[1].log_tail()
        status = await status_of(group.nodes[1].address, cacert)
        assert status["peer_hellos_accepted"] == 0
    finally:
        group.kill_all()

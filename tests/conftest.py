"""Fixtures shared by the test tiers."""

from __future__ import annotations

import pytest
from tls_support import NoCertificateTool, TlsFiles, make_tls_files

from jepsen_tests.nodes import NodeProcess


@pytest.fixture
def node_process(tmp_path):
    """A real node subprocess on a free loopback port, stopped after the test."""
    node = NodeProcess(tmp_path / "node").start()
    yield node
    node.kill()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TlsFiles:
    """A CA, a node certificate it signed, a self-signed group certificate and an
    unrelated CA, all naming 127.0.0.1-5 and localhost; made for this session."""
    try:
        return make_tls_files(tmp_path_factory.mktemp("tls"))
    except NoCertificateTool as missing:
        pytest.skip(f"no way to make test certificates: {missing}")

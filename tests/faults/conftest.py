"""Fixtures of the fault suite shared by several modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3 server on 127.0.0.1 for the module (tests/faults/s3_server.py); skipped without the test extra."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    from tests.faults.s3_server import S3  # here: only the modules that use the server import moto

    server = S3(tmp_path_factory.mktemp("s3"))
    yield server
    server.server.stop()

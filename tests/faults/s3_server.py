"""A real S3 server on 127.0.0.1 for the tests (moto's ThreadedMotoServer, started by the test module that needs
it): the environment that points the AWS SDK at it, and an s3fs client to put and read objects directly."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import moto.server as moto_server
import s3fs

from tests.faults.helpers import ENV

BUCKET = "spanbert"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3:
    """The moto server of this module, the environment that points the AWS SDK at it, and an s3fs client."""

    def __init__(self, tmp: Path):
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.port = _free_port()
        self.server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        self.aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        self.env = {**ENV, **self.aws, "SPANBERT_CACHE": str(tmp / "cache")}
        self.fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=self.aws["AWS_ENDPOINT_URL"])
        if self.fs.exists(BUCKET):  # moto keeps objects per process: those of a server another module started
            self.fs.rm(BUCKET, recursive=True)
        self.fs.mkdir(BUCKET)

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under s3://BUCKET/prefix by relative name, store markers without their timing (as
        helpers.dataset_bytes reads a local dataset)."""
        self.fs.invalidate_cache()
        found = {}
        for path in self.fs.find(f"{BUCKET}/{prefix}"):
            rel = path[len(f"{BUCKET}/{prefix}/") :]
            data = self.fs.cat_file(path)
            if rel.startswith("store/") and rel.endswith(".json"):
                marker = json.loads(data)
                marker.pop("seconds", None)
                data = json.dumps(marker).encode()
            found[rel] = data
        return found

    def url(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}"

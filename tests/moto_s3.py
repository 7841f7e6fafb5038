"""pytest plugin: a real S3 HTTP endpoint (moto's server) on 127.0.0.1 for the session.

Registered in tests/conftest.py (`pytest_plugins`), so every test module can use:

- `moto_server` (session): a `moto_server` subprocess on a free loopback port.
- `s3` (function): state wiped, bucket `S3Env.bucket` created, dummy credentials and
  the endpoint set in os.environ (for in-process code) and in `s3.env` (pass it to
  `run_job(..., env=s3.env)` for CLI subprocesses).
- `start_moto()`: a context manager for a private server a test may kill (outage tests).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

# distinctive dummies, so tests can scan artifacts and logs for a leak
ACCESS_KEY_ID = "AKIAMOTOTESTKEY00042"
SECRET_ACCESS_KEY = "moto-test-secret/DO-NOT-LEAK+0123456789abcdef"
BUCKET = "mtbench-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MotoServer:
    endpoint: str
    proc: subprocess.Popen[bytes]

    def reset(self) -> None:
        req = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def start_moto(timeout: float = 30.0) -> Iterator[MotoServer]:
    """Start `python -m moto.server` on 127.0.0.1:<free port>; stop it on exit."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = MotoServer(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode} before answering")
            try:
                urllib.request.urlopen(server.endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {server.endpoint}") from None
                time.sleep(0.05)
        yield server
    finally:
        server.stop()


def s3_env_vars(endpoint: str, tmp_dir: str = "/nonexistent") -> dict[str, str]:
    """AWS_* for a client of `endpoint`: dummy credentials, no config files, no IMDS."""
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
        # never read the host's ~/.aws, never ask 169.254.169.254 for a role
        "AWS_CONFIG_FILE": f"{tmp_dir}/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": f"{tmp_dir}/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
        "JOB_S3_MAX_ATTEMPTS": "3",
    }


@dataclass
class S3Env:
    server: MotoServer
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def uri(self, prefix: str = "") -> str:
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def client(self) -> Any:
        import boto3

        return boto3.session.Session(
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name="us-east-1",
        ).client("s3", endpoint_url=self.endpoint)

    def list_keys(self, prefix: str = "", bucket: str | None = None) -> list[str]:
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket or self.bucket, Prefix=prefix)
        )
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

    def get(self, key: str, bucket: str | None = None) -> bytes:
        data: bytes = self.client().get_object(Bucket=bucket or self.bucket, Key=key)["Body"].read()
        return data


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with start_moto() as server:
        yield server


@pytest.fixture
def s3(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> S3Env:
    """A wiped moto with bucket `mtbench-test`; AWS_* dummies set for this test."""
    moto_server.reset()
    env = s3_env_vars(moto_server.endpoint, str(tmp_path))
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "JOB_S3_ENDPOINT_URL"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s3env = S3Env(moto_server, BUCKET, env)
    s3env.client().create_bucket(Bucket=BUCKET)
    return s3env


__all__ = ["S3Env", "MotoServer", "start_moto", "s3_env_vars", "free_port", "ACCESS_KEY_ID"]

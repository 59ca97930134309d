"""A real S3-compatible server process (moto's standalone server) on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import httpx
import pytest
from pydantic import SecretStr

from app.core.config import Settings
from tests.e2e.server import free_port

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
CREDENTIALS = {"s3_access_key_id": "testing", "s3_secret_access_key": SecretStr("testing"), "s3_region": "us-east-1"}


@contextmanager
def moto_server(log: Path, port: int | None = None) -> Iterator[str]:
    """Start `moto_server` and yield its endpoint URL; stop it afterwards."""
    port = port or free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "AWS_ACCESS_KEY_ID": "testing",
                                                              "AWS_SECRET_ACCESS_KEY": "testing"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            try:
                httpx.get(f"{url}/moto-api/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    name = f"whetstone-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


def bucket_keys(endpoint: str, bucket: str) -> list[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


@pytest.fixture
def s3_settings(settings: Settings, s3_endpoint: str, s3_bucket: str) -> Settings:
    """The test's Postgres/Redis settings with storage in a fresh bucket of the moto server."""
    return settings.model_copy(update={"storage_backend": "s3", "s3_bucket": s3_bucket, "s3_prefix": "wh/",
                                       "s3_endpoint_url": s3_endpoint, **CREDENTIALS})

"""S3-compatible object storage (AWS S3, MinIO, Ceph RGW, ...) through boto3.

Atomicity comes from S3 itself: an object becomes visible only when its PUT (or its multipart
upload) completes, and s3transfer aborts a failed multipart upload. A directory is a set of
objects under `<key>/` plus a `<key>/.complete` marker written last; readers ignore a directory
without it. Downloads for local use (training data, adapters to load) land in a cache folder,
through a temporary name and a rename, so a reader never sees half a file there either.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.services.storage import CHUNK

MARKER = ".complete"
SPOOL_BYTES = 8 << 20  # a writer keeps this much in memory before spilling to a temporary file


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}


class S3Storage:
    def __init__(self, bucket: str, prefix: str, cache_dir: Path, *, endpoint_url: str | None = None,
                 region: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None, timeout: float = 10.0) -> None:
        if not bucket:
            raise ValueError("WHETSTONE_S3_BUCKET must be set when WHETSTONE_STORAGE_BACKEND=s3")
        self.bucket = bucket
        self.prefix = prefix
        self.cache_dir = cache_dir
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=region or "us-east-1",
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
            config=Config(connect_timeout=timeout, read_timeout=timeout * 6,
                          retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"}))

    def _key(self, key: str) -> str:
        parts = key.strip("/").split("/")
        if not key or key.startswith("/") or any(p in {"", ".", ".."} for p in parts):
            raise ValueError(f"invalid storage key: {key!r}")
        return self.prefix + key

    # files
    def writer(self, key: str) -> "S3Writer":
        return S3Writer(self, self._key(key))

    def open(self, key: str) -> BinaryIO:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            raise

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        body = self.open(key)
        try:
            while chunk := body.read(CHUNK):
                yield chunk
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _missing(exc):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        (self.cache_dir / key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self.prefix + prefix):
            keys += [obj["Key"][len(self.prefix):] for obj in page.get("Contents", [])]
        return sorted(keys)

    def local_path(self, key: str) -> Path:
        """A local copy of the object (downloaded once; keys are never overwritten)."""
        target = self.cache_dir / key
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                self.client.download_fileobj(self.bucket, self._key(key), fh)
            os.replace(tmp, target)
        except ClientError as exc:
            if _missing(exc):
                raise FileNotFoundError(key) from None
            raise
        finally:
            Path(tmp).unlink(missing_ok=True)
        return target

    # directories
    def publish_dir(self, key: str, source: Path) -> str:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(f"{key}/{MARKER}"))
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            self.client.upload_file(str(path), self.bucket, self._key(f"{key}/{path.relative_to(source).as_posix()}"))
        self.client.put_object(Bucket=self.bucket, Key=self._key(f"{key}/{MARKER}"), Body=b"")
        return key

    def local_dir(self, ref: str) -> Path:
        target = self.cache_dir / ref
        if target.is_dir():
            return target
        if not self.exists(f"{ref}/{MARKER}"):
            raise FileNotFoundError(ref)  # absent, or still being uploaded
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for key in self.list(f"{ref}/"):
                rel = key[len(ref) + 1:]
                if rel == MARKER:
                    continue
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, self.prefix + key, str(staging / rel))
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def delete_dir(self, ref: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(f"{ref}/{MARKER}"))  # invisible first
        for key in self.list(f"{ref}/"):
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        shutil.rmtree(self.cache_dir / ref, ignore_errors=True)

    def check(self) -> None:
        """Raise unless the bucket is reachable with these credentials."""
        self.client.head_bucket(Bucket=self.bucket)


class S3Writer:
    """Buffers the object (memory, then a temporary file) and uploads it on commit()."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self.storage = storage
        self.key = key
        self.bytes = 0
        self._fh = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)

    def __enter__(self) -> "S3Writer":
        return self

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self.bytes += len(data)

    def commit(self) -> None:
        self._fh.seek(0)
        self.storage.client.upload_fileobj(self._fh, self.storage.bucket, self.key)

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

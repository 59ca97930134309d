"""The S3 backend against a real S3-compatible server process (moto_server): what a user of the
storage layer observes, including the failure modes."""

from __future__ import annotations

import os

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from app.services.storage import storage_for
from tests.deploy.conftest import bucket_keys, moto_server, s3_client
from tests.e2e.server import free_port


@pytest.fixture
def files(s3_settings):
    return storage_for(s3_settings, "files")


def test_write_read_list_delete(files, s3_settings):
    with files.writer("p1/file-a.jsonl") as w:
        w.write(b'{"a": 1}\n')
        w.write(b'{"a": 2}\n')
        w.commit()
    assert w.bytes == 18
    assert bucket_keys(s3_settings.s3_endpoint_url, s3_settings.s3_bucket) == ["wh/files/p1/file-a.jsonl"]
    assert files.exists("p1/file-a.jsonl") and files.list("p1/") == ["p1/file-a.jsonl"]
    assert b"".join(files.iter_bytes("p1/file-a.jsonl")) == b'{"a": 1}\n{"a": 2}\n'
    local = files.local_path("p1/file-a.jsonl")
    assert local.read_bytes() == b'{"a": 1}\n{"a": 2}\n' and s3_settings.resolved_data_dir in local.parents

    files.delete("p1/file-a.jsonl")
    assert not files.exists("p1/file-a.jsonl") and files.list() == [] and not local.exists()
    with pytest.raises(FileNotFoundError):
        files.open("p1/file-a.jsonl")
    with pytest.raises(FileNotFoundError):
        files.local_path("p1/file-a.jsonl")


def test_nothing_half_written_is_visible(files, s3_settings):
    with files.writer("p1/never.jsonl") as w:  # no commit
        w.write(b"x" * 1000)
    with pytest.raises(RuntimeError):
        with files.writer("p1/broken.jsonl") as w:
            w.write(b"y" * 1000)
            raise RuntimeError("client went away")
    assert files.list() == []
    assert bucket_keys(s3_settings.s3_endpoint_url, s3_settings.s3_bucket) == []


def test_large_object_goes_through_multipart(files):
    blob = os.urandom(1 << 20) * 10  # 10 MiB: past the spool and s3transfer's multipart threshold
    with files.writer("p1/big.bin") as w:
        for i in range(0, len(blob), 1 << 20):
            w.write(blob[i:i + (1 << 20)])
        w.commit()
    assert b"".join(files.iter_bytes("p1/big.bin")) == blob


def test_directory_is_visible_only_once_complete(s3_settings, tmp_path):
    jobs = storage_for(s3_settings, "jobs")
    src = tmp_path / "adapter"
    (src / "sub").mkdir(parents=True)
    (src / "adapter_config.json").write_text('{"r": 8}')
    (src / "sub" / "state.bin").write_bytes(b"\x00\x01")
    ref = jobs.publish_dir("ftjob-1/adapter", src)
    local = jobs.local_dir(ref)
    assert (local / "adapter_config.json").read_text() == '{"r": 8}'
    assert (local / "sub" / "state.bin").read_bytes() == b"\x00\x01"
    assert not (local / ".complete").exists()

    # An upload cut short (files, no marker) is invisible to readers.
    client = s3_client(s3_settings.s3_endpoint_url)
    client.put_object(Bucket=s3_settings.s3_bucket, Key="wh/jobs/ftjob-2/adapter/adapter_config.json", Body=b"{}")
    with pytest.raises(FileNotFoundError):
        jobs.local_dir("ftjob-2/adapter")

    jobs.delete_dir(ref)
    assert jobs.list("ftjob-1/") == []
    with pytest.raises(FileNotFoundError):
        storage_for(s3_settings.model_copy(update={"data_dir": tmp_path / "other"}), "jobs").local_dir(ref)


def test_keys_cannot_escape(files):
    for key in ("../x", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(ValueError):
            files.writer(key)


def test_failures_are_reported(s3_settings, tmp_path):
    storage_for(s3_settings, "files").check()
    missing = s3_settings.model_copy(update={"s3_bucket": "no-such-bucket"})
    with pytest.raises(ClientError):
        storage_for(missing, "files").check()
    with pytest.raises(ClientError):
        with storage_for(missing, "files").writer("p/f") as w:
            w.write(b"data")
            w.commit()

    port = free_port()
    with moto_server(tmp_path / "moto.log", port) as url:
        s3_client(url).create_bucket(Bucket="restarted")
        settings = s3_settings.model_copy(update={"s3_endpoint_url": url, "s3_bucket": "restarted"})
        storage = storage_for(settings, "files")
        storage.check()
    with pytest.raises(EndpointConnectionError):  # the server is gone
        storage.check()

"""The local-directory backend behind the same interface as the S3 one."""

from __future__ import annotations

import pytest

from app.core.config import Settings
from app.services.storage import LocalStorage, storage_for


def test_files_and_listing(tmp_path):
    files = storage_for(Settings(data_dir=tmp_path), "files")
    assert isinstance(files, LocalStorage) and files.root == tmp_path.resolve() / "files"
    with files.writer("p/a.jsonl") as w:
        w.write(b"abc")
        w.commit()
    with files.writer("p/b.jsonl") as w:
        w.write(b"half")  # never committed
        assert files.list() == ["p/a.jsonl"]  # the partial file is not listed
    assert files.list() == ["p/a.jsonl"] and files.exists("p/a.jsonl") and not files.exists("p/b.jsonl")
    assert files.local_path("p/a.jsonl").read_bytes() == b"abc"
    files.delete("p/a.jsonl")
    with pytest.raises(FileNotFoundError):
        files.local_path("p/a.jsonl")
    with pytest.raises(ValueError):
        files.writer("../escape")


def test_directories(tmp_path):
    jobs = storage_for(Settings(data_dir=tmp_path / "data"), "jobs")
    src = tmp_path / "scratch" / "adapter"
    src.mkdir(parents=True)
    (src / "adapter_config.json").write_text("{}")
    ref = jobs.publish_dir("ftjob-1/adapter", src)
    assert (jobs.local_dir(ref) / "adapter_config.json").read_text() == "{}"
    assert jobs.local_dir("ftjob-1/adapter") == jobs.local_dir(ref)
    assert [p.name for p in jobs.local_dir(ref).parent.iterdir()] == ["adapter"]  # no staging left
    in_place = jobs.root / "ftjob-2" / "adapter"
    in_place.mkdir(parents=True)
    assert jobs.publish_dir("ftjob-2/adapter", in_place) == str(in_place)  # trained there: nothing to move
    jobs.delete_dir(ref)
    with pytest.raises(FileNotFoundError):
        jobs.local_dir(ref)


def test_check_fails_when_the_root_is_not_a_writable_directory(tmp_path):
    (tmp_path / "files").write_text("not a directory")
    with pytest.raises(OSError):
        LocalStorage(tmp_path / "files").check()
    LocalStorage(tmp_path / "ok").check()

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


def test_publishing_again_replaces_a_non_empty_directory(tmp_path):
    """A checkpoint published a second time (a run retried after its worker died) replaces the first."""
    jobs = storage_for(Settings(data_dir=tmp_path / "data"), "jobs")
    first, second = tmp_path / "run1", tmp_path / "run2"
    for folder, weights in ((first, "old"), (second, "new")):
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_text(weights)
    (first / "only-in-the-old-one").write_text("x")
    ref = jobs.publish_dir("ftjob-1/checkpoints/step-2", first)
    assert jobs.publish_dir("ftjob-1/checkpoints/step-2", second) == ref
    published = jobs.local_dir(ref)
    assert sorted(p.name for p in published.iterdir()) == ["adapter_model.safetensors"]
    assert (published / "adapter_model.safetensors").read_text() == "new"
    assert [p.name for p in published.parent.iterdir()] == ["step-2"]  # no staging or old copy left

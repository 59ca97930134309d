"""The local-directory backend behind the same interface as the S3 one."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import random
import subprocess

import pytest

from app.core.config import Settings
from app.services import storage
from app.services.storage import DIRECT_BLOCK, LocalStorage, storage_for


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


SIZES = [0, 1, DIRECT_BLOCK - 1, DIRECT_BLOCK, DIRECT_BLOCK + 1, 3 * DIRECT_BLOCK + 7]


def aligned(data: bytes) -> mmap.mmap:
    """A page-aligned block, as an upload's blocks come (upload_blocks.Blocks)."""
    block = mmap.mmap(-1, len(data))
    block[:] = data
    return block


def write_in_pieces(writer, data: bytes, seed: int) -> None:
    """Cut at random, some pieces a page-aligned block of DIRECT_BLOCK bytes (written as it is when
    it starts a block of the file, copied when it does not)."""
    rng, i = random.Random(seed), 0
    while i < len(data):
        n = rng.choice([1, 100, 65536, DIRECT_BLOCK - 3, 2 * DIRECT_BLOCK + 5, DIRECT_BLOCK])
        piece = data[i:i + n]
        writer.write(aligned(piece) if len(piece) == DIRECT_BLOCK and rng.random() < 0.8 else piece)
        i += n


@pytest.mark.parametrize("size", SIZES)
def test_a_stored_file_is_byte_for_byte_what_was_written_however_it_was_cut(tmp_path, size):
    data = random.Random(size).randbytes(size)
    files = LocalStorage(tmp_path)
    with files.writer("p/f.jsonl") as writer:
        write_in_pieces(writer, data, size)
        assert writer.bytes == size
        writer.commit()
    assert files.local_path("p/f.jsonl").read_bytes() == data
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["f.jsonl"]


@pytest.mark.parametrize("blocks", ["bytes", "aligned"])
@pytest.mark.parametrize("direct_io", [True, False])
def test_a_large_file_is_written_past_the_page_cache_unless_told_not_to(tmp_path, direct_io, blocks):
    """Only the tail (under one block) goes through the page cache: a big upload does not push out
    what the cache holds. WHETSTONE_STORAGE_DIRECT_IO=false writes it all through the cache.
    (`fincore` reads how much of the file is in memory.)"""
    files = storage_for(Settings(data_dir=tmp_path, storage_direct_io=direct_io), "files")
    with files.writer("big") as writer:
        for _ in range(8):
            writer.write(b"x" * DIRECT_BLOCK if blocks == "bytes" else aligned(b"x" * DIRECT_BLOCK))
        writer.write(b"tail")
        writer.commit()
    resident = int(subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES",
                                   str(files.local_path("big"))], check=True, capture_output=True, text=True).stdout)
    if direct_io:
        assert resident <= 64 << 10  # 32 MiB written, the 4-byte tail's page (and a little readahead) cached
    else:
        assert resident > 8 * DIRECT_BLOCK


@pytest.mark.parametrize("refused", ["open", "write"])
def test_a_file_system_that_refuses_direct_io_gets_every_byte_through_the_page_cache(tmp_path, monkeypatch, refused):
    """Some file systems refuse O_DIRECT when the file is opened (tmpfs on older kernels), others at
    the first write (an alignment larger than 4 KiB). This machine's disk allows it, so the refusal
    is a stand-in: os.open or os.write raising EINVAL for direct I/O, as such a kernel does."""
    real_open, real_write, refusals = os.open, os.write, []

    def open_(path, flags, mode=0o777):
        if refused == "open" and flags & storage.O_DIRECT:
            refusals.append(path)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    def write(fd, data):
        if refused == "write" and fcntl.fcntl(fd, fcntl.F_GETFL) & storage.O_DIRECT:
            refusals.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "write", write)
    data = random.Random(1).randbytes(3 * DIRECT_BLOCK + 7)
    files = LocalStorage(tmp_path)
    with files.writer("f") as writer:
        write_in_pieces(writer, data, 1)
        writer.commit()
    assert len(refusals) == 1  # refused once, then not asked again
    assert files.local_path("f").read_bytes() == data

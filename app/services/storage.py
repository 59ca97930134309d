"""Stored files: uploads and results ("files" area), adapters and checkpoints ("jobs" area).

Two backends with one interface: a local directory (the default; one machine or a shared
volume) and an S3-compatible object store (`storage_s3.py`; many worker hosts). Keys are
server-made (never the client's filename). Nothing half-written is ever visible: a file
appears under its key only once complete, a directory (an adapter, a checkpoint) only once
every file in it is.

`publish_dir` returns the reference stored in the database for a directory; `local_dir`
turns such a reference back into a local directory (downloading it on an object store).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from app.core.config import Settings

CHUNK = 1 << 20
DIRECT_BLOCK = 4 << 20  # bytes per direct write (a multiple of any disk's block size)
O_DIRECT = getattr(os, "O_DIRECT", 0)  # 0: not on this OS (macOS), writes go through the page cache
Area = Literal["files", "jobs"]


class Writer(Protocol):
    bytes: int

    def __enter__(self) -> "Writer": ...
    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def __exit__(self, *exc: object) -> None: ...


class Storage(Protocol):
    def writer(self, key: str) -> Writer: ...
    def open(self, key: str) -> BinaryIO: ...
    def iter_bytes(self, key: str) -> Iterator[bytes]: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def local_path(self, key: str) -> Path: ...
    def publish_dir(self, key: str, source: Path) -> str: ...
    def local_dir(self, ref: str) -> Path: ...
    def delete_dir(self, ref: str) -> None: ...
    def check(self) -> None: ...


class LocalStorage:
    def __init__(self, root: Path, direct_io: bool = True) -> None:
        self.root, self.direct_io = root, direct_io

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def writer(self, key: str) -> "AtomicWriter":
        return AtomicWriter(self.path(key), direct_io=self.direct_io)

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        with self.open(key) as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        root = self.root.resolve()
        if not root.is_dir():
            return []
        keys = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not k.endswith(".partial"))

    def local_path(self, key: str) -> Path:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return path

    def publish_dir(self, key: str, source: Path) -> str:
        """The directory under `key` (moved there atomically unless it is already there)."""
        target = self.path(key)
        if target.is_relative_to(source.resolve()) and source.resolve() != target:
            raise ValueError(f"cannot publish {source} into itself ({key!r})")
        if source.resolve() != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
            try:
                shutil.copytree(source, staging, dirs_exist_ok=True)
                _swap_in(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return str(target)

    def local_dir(self, ref: str) -> Path:
        # What publish_dir returned (an absolute path, read from the database: trusted) or a key.
        path = Path(ref) if Path(ref).is_absolute() else self.path(ref)
        if not path.is_dir():
            raise FileNotFoundError(ref)
        return path

    def delete_dir(self, ref: str) -> None:
        # `ref` as publish_dir returned it (an absolute path under the root) or a key; never the root.
        path = self.path(str(Path(ref).resolve().relative_to(self.root.resolve())) if Path(ref).is_absolute() else ref)
        shutil.rmtree(path, ignore_errors=True)

    def check(self) -> None:
        """Raise unless the root is a writable directory."""
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".ready-"):
            pass


def _swap_in(staging: Path, target: Path) -> None:
    """Put the directory `staging` at `target`. os.replace cannot replace a non-empty directory, so
    an existing one (a checkpoint published again after a retried run) is first renamed aside and
    removed once the new one is in place; if the swap fails the old one is put back."""
    if not target.exists():
        os.replace(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, aside / "d")
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(aside / "d", target)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


class AtomicWriter:
    """Write to `<path>.partial`, rename on commit(); discard on any error or without commit.

    Where the file system allows it (Linux, O_DIRECT), the bytes go to the disk as they come, in
    aligned blocks of DIRECT_BLOCK, past the page cache: a 1 GB upload neither evicts 1 GB of what
    the cache holds (a base model's weights) nor leaves it all for commit's fsync to write at the
    end. Its CPU cost is one copy into the aligned buffer, or none for a block that comes aligned
    (an upload's, from multipart_stream.py). The tail, under one block, is written
    through the cache at commit. Where O_DIRECT is refused (tmpfs, some network or overlay file
    systems), or with `direct_io=False`, every write goes through the page cache."""

    def __init__(self, path: Path, direct_io: bool = True) -> None:
        self.path, self.direct_io = path, direct_io
        self.partial = path.with_name(path.name + ".partial")
        self._fd: int | None = None
        self._block: mmap.mmap | None = None  # page-aligned; None: writes go through the page cache
        self._fill = 0
        self.bytes = 0

    def __enter__(self) -> "AtomicWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        if O_DIRECT and self.direct_io:
            try:
                self._fd = os.open(self.partial, flags | O_DIRECT, 0o644)
            except OSError:  # EINVAL: this file system does not do direct I/O
                pass
            else:
                self._block = mmap.mmap(-1, DIRECT_BLOCK)
        if self._fd is None:
            self._fd = os.open(self.partial, flags, 0o644)
        return self

    def write(self, data: bytes | mmap.mmap) -> None:
        """`data` is written before this returns (nothing of it is kept). A page-aligned block of
        exactly DIRECT_BLOCK bytes (an `mmap`) that starts a block of the file goes to the disk as
        it is, without the copy into the aligned buffer."""
        assert self._fd is not None
        self.bytes += len(data)
        if self._block is not None and not self._fill and isinstance(data, mmap.mmap) and len(data) == DIRECT_BLOCK:
            self._write_direct(data)
            return
        view = memoryview(data)
        while view and self._block is not None:
            n = min(len(view), DIRECT_BLOCK - self._fill)
            self._block[self._fill:self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == DIRECT_BLOCK:
                self._fill = 0
                self._write_direct(self._block)
        if view:  # through the page cache (from the start, or since a direct write was refused)
            _write_all(self._fd, view)

    def _write_direct(self, block: mmap.mmap) -> None:
        """One aligned block of DIRECT_BLOCK bytes, past the page cache."""
        try:
            written = os.write(self._fd, block)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            written = 0  # it opened but will not write direct (it wants a larger alignment)
        if written != DIRECT_BLOCK:  # refused, or short (the disk filled up): the page cache from here on
            self._through_cache(block[written:])

    def _through_cache(self, rest: bytes) -> None:
        """Stop writing direct: `rest` (what the aligned buffer still holds) and all later writes go
        through the page cache."""
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~O_DIRECT)
        _write_all(self._fd, rest)
        self._block.close()
        self._block = None

    def commit(self) -> None:
        assert self._fd is not None
        if self._block is not None:  # the tail, under one block: O_DIRECT cannot write it
            self._through_cache(self._block[:self._fill])
        os.fsync(self._fd)
        self._close()
        os.replace(self.partial, self.path)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._block is not None:
            self._block.close()
            self._block = None

    def __exit__(self, *exc: object) -> None:
        self._close()
        self.partial.unlink(missing_ok=True)


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def storage_for(settings: Settings, area: Area) -> Storage:
    """The configured backend for one area (WHETSTONE_STORAGE_BACKEND: local | s3)."""
    if settings.storage_backend == "s3":
        s = settings
        return _s3(s.s3_bucket, f"{s.s3_prefix}{area}/", s.s3_endpoint_url, s.s3_region,
                   s.s3_access_key_id, s.s3_secret_access_key.get_secret_value(),
                   str(s.resolved_data_dir / "cache" / area))
    return LocalStorage(settings.storage_dir if area == "files" else settings.jobs_dir, settings.storage_direct_io)


@lru_cache(maxsize=16)
def _s3(bucket: str, prefix: str, endpoint: str, region: str, key_id: str, secret: str, cache: str) -> Storage:
    from app.services.storage_s3 import S3Storage

    return S3Storage(bucket, prefix, Path(cache), endpoint_url=endpoint or None, region=region or None,
                     access_key_id=key_id or None, secret_access_key=secret or None)

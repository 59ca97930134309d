"""Local file storage. Keys are server-made (never the client's filename); writes are atomic:
a file appears under its key only once complete."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    def writer(self, key: str) -> "AtomicWriter":
        return AtomicWriter(self.path(key))

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        with self.open(key) as fh:
            while chunk := fh.read(CHUNK):
                yield chunk

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


class AtomicWriter:
    """Write to `<path>.partial`, rename on commit(); discard on any error or without commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self._fh: BinaryIO | None = None
        self.bytes = 0

    def __enter__(self) -> "AtomicWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.partial.open("wb")
        return self

    def write(self, data: bytes) -> None:
        assert self._fh is not None
        self._fh.write(data)
        self.bytes += len(data)

    def commit(self) -> None:
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.partial, self.path)

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()
        self.partial.unlink(missing_ok=True)


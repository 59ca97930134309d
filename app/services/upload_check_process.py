"""A large upload's line check in a process of its own, so it runs on a core of its own.

The API process parses the request body, stores the bytes and keeps the byte limits; checking
the lines (split, count, decode each example) costs as much again and, done in a thread of the
API process, would share its interpreter lock. Here a long-lived child process (`python -m
app.services.upload_check_process`, which imports only `upload_check.py`) gets the blocks through
a pipe, in order, and runs the same `LineCheck` on them. A block's verdict comes back later than
the block: the first error is raised by a later `feed`, by `settle` or by `finish`, never missed
and never out of order (the child checks the blocks in the order they were sent). The pipe's
capacity bounds what is in flight: a writer ahead of the child waits.

Wire (parent to child): a header (kind, payload length) and the payload. START carries the line
limits, FEED a block, SYNC asks for the verdict so far, END for the summary. The child answers
each SYNC and END with one JSON line, and sends one more, unasked, at the first error it finds;
after that it drops the upload's blocks until its END.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

from app.services.upload_check import LineCheck, LineLimits, UploadCheckError
from worker.training.validation import DataSummary

HEADER = struct.Struct("<BQ")
START, FEED, SYNC, END = range(4)
LIMITS = struct.Struct("<QQ")
PIPE_BYTES = 1 << 20  # the pipe's capacity asked for (Linux allows up to /proc/sys/fs/pipe-max-size)


class CheckProcessBroken(RuntimeError):
    """The child exited or its pipe broke; the upload it was checking cannot be finished."""


# --- the child ---
def serve(inp: BinaryIO, out: BinaryIO) -> None:
    check: LineCheck | None = None
    failed = False

    def say(message: dict) -> None:
        out.write(json.dumps(message).encode() + b"\n")
        out.flush()

    while len(header := inp.read(HEADER.size)) == HEADER.size:
        kind, size = HEADER.unpack(header)
        payload = inp.read(size)
        if len(payload) < size:
            return
        try:
            if kind == START:
                check, failed = LineCheck(LineLimits(*LIMITS.unpack(payload))), False
            elif kind == FEED and not failed:
                check.feed(payload)
            elif kind == SYNC:
                say({"synced": True})
            elif kind == END:
                summary = None if failed else check.finish()
                say({"done": None if summary is None else [summary.format, summary.n_examples]})
                check = None
        except UploadCheckError as exc:
            failed = True
            say({"failed": [exc.code, exc.message]})
            if kind == END:
                say({"done": None})
                check = None


def main() -> None:
    # The parent's signals are not ours: a Ctrl-C or a SIGTERM to the process group must not cut an
    # upload short while the API drains its requests. The child ends when its stdin closes, which
    # the parent's exit (of any kind) does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(sys.stdin.buffer, sys.stdout.buffer)


# --- the parent ---
class CheckProcess:
    """One child, driven by one upload at a time (the pool hands it out)."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])  # the directory holding `app` and `worker`
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-m", "app.services.upload_check_process"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, bufsize=0)
        self._inp = self.proc.stdin
        self._out = self.proc.stdout.fileno()
        try:
            import fcntl

            fcntl.fcntl(self._inp.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except (ImportError, AttributeError, OSError):  # not Linux, or over the system's cap: the default
            pass
        self._pending = b""

    def send(self, kind: int, payload: bytes = b"") -> None:
        try:
            _write_all(self._inp, HEADER.pack(kind, len(payload)))
            _write_all(self._inp, payload)
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise CheckProcessBroken(f"the upload check process is gone ({exc})") from None

    def message(self, wait: bool) -> dict | None:
        """The child's next message: None when `wait` is False and none has come yet."""
        while b"\n" not in self._pending:
            if not wait and not select.select([self._out], [], [], 0)[0]:
                return None
            data = os.read(self._out, 1 << 16)
            if not data:
                raise CheckProcessBroken(f"the upload check process exited ({self.proc.poll()})")
            self._pending += data
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def stop(self) -> None:
        try:
            self._inp.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


def _write_all(pipe: BinaryIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[pipe.write(view):]


class CheckPool:
    """Up to `size` children, started when first needed and kept for the next upload."""

    def __init__(self) -> None:
        self._idle: list[CheckProcess] = []
        self._count = 0
        self._lock = threading.Lock()

    def lease(self, size: int) -> CheckProcess | None:
        """An idle child, or a new one while fewer than `size` exist; None when all are busy."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
            if self._count >= size:
                return None
            self._count += 1
        try:
            return CheckProcess()
        except OSError:
            with self._lock:
                self._count -= 1
            return None

    def release(self, process: CheckProcess, healthy: bool) -> None:
        if healthy:
            with self._lock:
                self._idle.append(process)
            return
        process.proc.kill()
        process.stop()
        with self._lock:
            self._count -= 1

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for process in idle:
            process.stop()


POOL = CheckPool()


class RemoteLineCheck:
    """`LineCheck`'s interface, run by a leased child. `settle` raises the first error of what was
    fed so far (waiting for the child to get there); `close` hands the child back, always."""

    def __init__(self, process: CheckProcess, limits: LineLimits, pool: CheckPool) -> None:
        self.process, self.pool = process, pool
        self.error: UploadCheckError | None = None
        self.ended = False
        self.healthy = True
        self._call(lambda: process.send(START, LIMITS.pack(limits.max_line_bytes, limits.max_lines)))

    def feed(self, block: bytes) -> None:
        self._raise()
        self._call(lambda: self.process.send(FEED, block))
        self._call(self._take_unasked)
        self._raise()

    def settle(self) -> None:
        self._call(lambda: (self.process.send(SYNC), self._until("synced")))
        self._raise()

    def finish(self) -> DataSummary:
        self._raise()
        self._call(lambda: self.process.send(END))
        self.ended = True
        done = self._call(lambda: self._until("done"))
        self._raise()
        return DataSummary(format=done[0], n_examples=done[1])

    def close(self) -> None:
        if self.healthy and not self.ended:
            try:
                self.process.send(END)
                self._until("done")
            except CheckProcessBroken:
                self.healthy = False
        self.ended = True
        self.pool.release(self.process, self.healthy)

    def _take_unasked(self) -> None:
        while (message := self.process.message(wait=False)) is not None:
            self._note(message)

    def _until(self, kind: str):
        while True:
            message = self.process.message(wait=True)
            self._note(message)
            if kind in message:
                return message[kind]

    def _note(self, message: dict) -> None:
        if "failed" in message and self.error is None:
            self.error = UploadCheckError(*message["failed"])

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _call(self, step):
        try:
            return step()
        except CheckProcessBroken:
            self.healthy = False
            raise


if __name__ == "__main__":
    main()

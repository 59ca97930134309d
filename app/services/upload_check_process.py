"""A large upload's line check in processes of their own, so it runs on cores of its own.

For the msgspec path (where the compiled line scanner is not built; the scanner itself needs none
of this, it runs without the interpreter lock). The API process parses the request body, stores
the bytes and keeps the byte limits; checking the lines with msgspec (a Python call per line)
costs as much again and, done in a thread of the API process, would share its interpreter lock.
Here long-lived children (`python -m app.services.upload_check_process`, which imports only
`upload_check.py`) do it: the API process cuts the upload into blocks of whole lines (finding a
block's last newline is all it does with its bytes) and deals them out in turn to the upload's
children, at most PER_UPLOAD of them. Each block is checked on its own (`check_block`), so the
children need no state and work at once; their verdicts are merged in the file's order
(`Verdicts`). A block's verdict comes back later than the block: the first error is raised by a
later `feed`, by `settle` or by `finish`, never missed and never out of order. Each child's pipe
bounds what is in flight: a writer ahead of its child waits.

Wire (parent to child): a header (payload length, the line limit) and the payload, the block's
lines. The child answers each block with one JSON line, its verdict: [lines, format, first
example's line, examples, error], the lines numbered from the block's start.
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
from collections import deque
from pathlib import Path
from typing import BinaryIO

from app.services.upload_check import BlockVerdict, LineLimits, UploadCheckError, Verdicts, check_block
from worker.training.validation import DataSummary

HEADER = struct.Struct("<QQ")
PIPE_BYTES = 1 << 20  # the pipe's capacity asked for (Linux allows up to /proc/sys/fs/pipe-max-size)
# Children one upload uses at most: two check faster than one API process receives, and leave the
# rest of the pool to the next concurrent upload.
PER_UPLOAD = 2


class CheckProcessBroken(RuntimeError):
    """The child exited or its pipe broke; the upload it was checking cannot be finished."""


# --- the child ---
def serve(inp: BinaryIO, out: BinaryIO) -> None:
    while len(header := inp.read(HEADER.size)) == HEADER.size:
        size, max_line_bytes = HEADER.unpack(header)
        data = inp.read(size)
        if len(data) < size:
            return
        verdict = check_block(data, max_line_bytes)
        out.write(json.dumps([verdict.lines, verdict.format, verdict.first, verdict.count, verdict.error]).encode()
                  + b"\n")
        out.flush()


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

    def send(self, max_line_bytes: int, *parts: bytes | memoryview) -> None:
        """One block, its lines given in `parts` (written one after another, not joined)."""
        try:
            _write_all(self._inp, HEADER.pack(sum(map(len, parts)), max_line_bytes))
            for part in parts:
                _write_all(self._inp, part)
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise CheckProcessBroken(f"the upload check process is gone ({exc})") from None

    def message(self, wait: bool) -> list | None:
        """The child's next verdict: None when `wait` is False and none has come yet."""
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

    def lease_some(self, size: int, most: int = PER_UPLOAD) -> list[CheckProcess]:
        """Up to `most` children (idle ones, or new ones while fewer than `size` exist); [] when all are busy."""
        leased: list[CheckProcess] = []
        while len(leased) < most and (process := self.lease(size)) is not None:
            leased.append(process)
        return leased

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
    """`LineCheck`'s interface, run by leased children: the blocks' whole lines are dealt out to
    them in turn and their verdicts merged in order. `settle` raises the first error of what was fed
    so far (waiting for the children to get there); `close` hands the children back, always."""

    def __init__(self, processes: list[CheckProcess], limits: LineLimits, pool: CheckPool) -> None:
        self.processes, self.limits, self.pool = processes, limits, pool
        self.verdicts = Verdicts(limits)
        self.pending: deque[CheckProcess] = deque()  # who checks each block not yet merged, in file order
        self.error: UploadCheckError | None = None
        self.healthy = True
        self._rest = b""
        self._sent = 0

    def feed(self, block: bytes) -> None:
        self._raise()
        cut = block.rfind(b"\n") + 1
        if cut:
            self._send(self._rest, memoryview(block)[:cut])
            self._rest = block[cut:]
        else:
            self._rest += block
        self._merge(wait=False)
        if len(self._rest) > self.limits.max_line_bytes:  # its number: once the lines before it are all counted
            self.settle()
            self._note(lambda: self.verdicts.unfinished(len(self._rest)))

    def settle(self) -> None:
        self._merge(wait=True)

    def finish(self) -> DataSummary:
        self._raise()
        if self._rest:
            self._send(self._rest)
            self._rest = b""
        self.settle()
        return self._note(self.verdicts.summary)

    def close(self) -> None:
        """Wait for the verdicts still to come (so each child is ready for its next upload), and hand
        the children back."""
        try:
            while self.healthy and self.pending:
                self._call(lambda: self.pending.popleft().message(wait=True))
        except CheckProcessBroken:
            pass
        for process in self.processes:
            self.pool.release(process, self.healthy)
        self.processes = []

    def _send(self, *parts: bytes | memoryview) -> None:
        process = self.processes[self._sent % len(self.processes)]
        self._call(lambda: process.send(self.limits.max_line_bytes, *parts))
        self._sent += 1
        self.pending.append(process)

    def _merge(self, wait: bool) -> None:
        """Merge the verdicts that have come, in order (all of them, with `wait`); raise the first error."""
        self._raise()
        while self.pending:
            reply = self._call(lambda: self.pending[0].message(wait))
            if reply is None:
                return
            self.pending.popleft()
            self._note(lambda: self.verdicts.add(BlockVerdict(*reply)))

    def _note(self, step):
        try:
            return step()
        except UploadCheckError as exc:
            self.error = exc
            raise

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

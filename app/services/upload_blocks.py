"""An upload's file bytes in blocks: copied once into reused page-aligned buffers, and handed to
lanes that work on them beside each other.

`Blocks` copies the bytes, as they arrive, into buffers of `size` bytes (`mmap`: page-aligned, so
storage writes a full one to the disk as it is, past the page cache), or has them read straight
into those buffers (`space`, then `landed`). `Lanes` hands each block, in
order, to every lane (an upload's line check, its write), each lane in a worker thread of its own,
up to AHEAD blocks apart; a block's buffer is reused once every lane is done with it. So the check
and the write of different blocks overlap, and the slower of the two sets the pace rather than
their sum, while memory stays bounded: AHEAD blocks handed on, one full waiting for room, and
one filling (for network chunks no larger than a block).
"""

from __future__ import annotations

import asyncio
import contextvars
import mmap
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence

AHEAD = 3  # blocks handed on and not yet done by every lane

Block = mmap.mmap | bytes
Lane = Callable[[Block], None]


class Blocks:
    """Bytes copied (`add`) or read in place (`space`, `landed`) into buffers of `size` bytes:
    `take` gives the next full one (None: none is);
    a buffer comes back for reuse through `reuse`; `rest` gives what the last, partly filled one holds."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._full: deque[mmap.mmap] = deque()
        self._free: list[mmap.mmap] = []
        self._current: mmap.mmap | None = None
        self._fill = 0

    def add(self, data: bytes, start: int, end: int) -> None:
        view = memoryview(data)[start:end]
        while view:
            if self._current is None:
                self._current = self._free.pop() if self._free else mmap.mmap(-1, self.size)
            n = min(len(view), self.size - self._fill)
            self._current[self._fill:self._fill + n] = view[:n]
            self._fill += n
            view = view[n:]
            if self._fill == self.size:
                self._full.append(self._current)
                self._current, self._fill = None, 0

    def space(self) -> memoryview:
        """The room left in the buffer being filled (never empty), for bytes to land in place."""
        if self._current is None:
            self._current = self._free.pop() if self._free else mmap.mmap(-1, self.size)
        return memoryview(self._current)[self._fill:]

    def landed(self, n: int, cut: Callable[[mmap.mmap, int, int], int]) -> bytes:
        """`n` bytes landed at the start of `space()`: those before `cut(buffer, start, end)` (an
        index of theirs in the buffer, or `end`) are kept, as `add` would have copied them; the
        rest are taken out and returned."""
        start, current = self._fill, self._current
        at = cut(current, start, start + n)
        rest = current[at:start + n] if at < start + n else b""
        self._fill = at
        if self._fill == self.size:
            self._full.append(current)
            self._current, self._fill = None, 0
        return rest

    def has_full(self) -> bool:
        return bool(self._full)

    def take(self) -> mmap.mmap | None:
        return self._full.popleft() if self._full else None

    def reuse(self, buffer: mmap.mmap) -> None:
        self._free.append(buffer)

    def rest(self) -> bytes:
        """The bytes of the buffer being filled (b"" if none), taken out of it."""
        if self._current is None:
            return b""
        rest = self._current[:self._fill]
        self.reuse(self._current)
        self._current, self._fill = None, 0
        return rest


class Lanes:
    """Each block handed on goes to every lane, in order, each lane in a thread of its own. The
    first error a lane raises goes to `report` and stops every lane (the blocks after it are
    dropped). A lane must keep nothing of a block once it returns: its buffer is then reused."""

    def __init__(self, lanes: Sequence[Lane], blocks: Blocks, report: Callable[[BaseException], None],
                 ahead: int = AHEAD) -> None:
        self.blocks, self.report = blocks, report
        self.failed = False
        self._first = threading.Lock()  # for the first error's check-and-set, across the lanes' threads
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Semaphore(ahead)
        self._left: dict[int, int] = {}  # id(block) -> lanes not done with it yet
        self._inboxes: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in lanes]
        self._exited = [self._loop.create_future() for _ in lanes]
        context = contextvars.copy_context()
        for lane, inbox, exited in zip(lanes, self._inboxes, self._exited):
            threading.Thread(target=context.copy().run, args=(self._run, lane, inbox, exited), daemon=True,
                             name="upload-lane").start()

    async def hand_on(self, block: Block) -> None:
        """Waits while AHEAD blocks are still being worked on."""
        await self._room.acquire()
        self._left[id(block)] = len(self._inboxes)
        for inbox in self._inboxes:
            inbox.put(block)

    async def hand_on_full(self) -> None:
        """Every full block `blocks` holds, in order."""
        while (full := self.blocks.take()) is not None:
            await self.hand_on(full)

    async def close(self, drop: bool = False) -> None:
        """Wait until the lanes are done with what was handed on (`drop`: skip what no lane has
        begun; for a body given up on). Shielded: a cancelled request still waits for its threads."""
        self.failed = self.failed or drop
        for inbox in self._inboxes:
            inbox.put(None)
        await asyncio.shield(asyncio.gather(*self._exited))

    def _run(self, lane: Lane, inbox: queue.SimpleQueue, exited: asyncio.Future) -> None:
        """A lane's thread: its blocks in order, each one's end told to the loop."""
        try:
            while (block := inbox.get()) is not None:
                error = None
                if not self.failed:
                    try:
                        lane(block)
                    except Exception as exc:  # noqa: BLE001 - the first error wins; later blocks are dropped
                        with self._first:
                            if not self.failed:  # at once, so that no lane starts another block
                                self.failed, error = True, exc
                self._loop.call_soon_threadsafe(self._done, block, error)
        finally:
            self._loop.call_soon_threadsafe(exited.set_result, None)

    def _done(self, block: Block, error: BaseException | None) -> None:
        if error is not None:  # (the first error: only one lane gets one to pass on)
            self.report(error)
        key = id(block)
        self._left[key] -= 1
        if not self._left[key]:
            del self._left[key]
            if isinstance(block, mmap.mmap):
                self.blocks.reuse(block)
            self._room.release()

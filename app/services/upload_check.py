"""The line check of an uploaded file: its bytes in order, in blocks of any size, split into lines
and each line checked as an example (`worker.training.validation`).

The lines are checked in blocks of whole lines, each block on its own (`check_block`): its verdict
is its number of lines, the format and line of its first example, its count of examples and its
first error, its lines numbered from its own start. Merged in the file's order (`Verdicts`), the
blocks' verdicts give the file's: the first error in the file, with the file's line number; the
format of its first example (a later block whose first example has another format is refused at
that line); the number of examples; the limit on the number of lines. So blocks can be checked
anywhere and several at once, by processes that know nothing of the blocks before
(`upload_check_process.py`); `LineCheck` checks each here, as it comes.

Light on purpose (the standard library, msgspec and the validation rules): it runs in the API
process for small uploads and in processes of their own for large ones, which must start fast
and stay small.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

from worker.training.validation import NO_EXAMPLES, DataSummary, InvalidExample, LineTooLong, LineValidator

BAD_FORMAT = "Invalid file format for fine-tuning: "


class UploadCheckError(ValueError):
    """A line-level reason to refuse the file: `code` is the OpenAI-shaped error's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class LineLimits:
    max_line_bytes: int
    max_lines: int


@dataclass(frozen=True)
class BlockVerdict:
    """A block checked on its own; its line numbers count from its own first line (1)."""
    lines: int
    format: str | None  # the format of the block's first example; None: it has none
    first: int  # that example's line
    count: int  # examples in the block (up to its error)
    error: tuple[str, int, str] | None  # the block's first error: (code, line, reason)


def check_block(data: bytes | mmap.mmap, max_line_bytes: int, start: int = 0, end: int | None = None) -> BlockVerdict:
    """A block of whole lines, `data[start:end]` (the last newline may be missing), checked on its own."""
    end = len(data) if end is None else end
    validator = LineValidator()
    error = None
    try:
        validator.feed_block(data, max_line_bytes, start, end)
    except LineTooLong as exc:
        error = ("line_too_long", exc.line, exc.reason)
    except InvalidExample as exc:
        error = ("invalid_file_format", exc.line, exc.reason)
    if error is None:
        lines = validator.line
    else:  # the validator stopped at the error: the block's lines are counted here
        lines = data[start:end].count(b"\n") + (end > start and data[end - 1:end] != b"\n")
    return BlockVerdict(lines, validator.format, validator.first_line, validator.n_examples, error)


class Verdicts:
    """Block verdicts, added in the file's order, merged into the file's: `add` raises
    UploadCheckError at the file's first error (a line limit included), `summary` gives the format
    and the count. `lines` is the number of lines merged so far."""

    def __init__(self, limits: LineLimits) -> None:
        self.limits = limits
        self.format: str | None = None
        self.n_examples = 0
        self.lines = 0

    def add(self, verdict: BlockVerdict) -> None:
        errors = []  # (line in the block, code, reason): the first one in the file wins
        if verdict.format is not None and self.format is not None and verdict.format != self.format:
            errors.append((verdict.first, "invalid_file_format",
                           f"{verdict.format} format, but the file started in {self.format} format"))
        if verdict.error is not None:
            code, line, reason = verdict.error
            errors.append((line, code, reason))
        if self.lines + verdict.lines > self.limits.max_lines:
            errors.append((self.limits.max_lines + 1 - self.lines, "too_many_lines", None))
        if errors:
            line, code, reason = min(errors)
            if code == "too_many_lines":
                raise UploadCheckError(code, f"{BAD_FORMAT}more than the limit of {self.limits.max_lines} lines.")
            raise UploadCheckError(code, f"{BAD_FORMAT}line {self.lines + line}: {reason}")
        self.format = self.format or verdict.format
        self.n_examples += verdict.count
        self.lines += verdict.lines

    def unfinished(self, size: int) -> None:
        """The last line, not ended yet, has `size` bytes so far: refused as soon as it outgrows the
        limit, so a huge line is never held whole."""
        if size > self.limits.max_line_bytes:
            too_long = LineTooLong(self.lines + 1, self.limits.max_line_bytes)
            raise UploadCheckError("line_too_long", f"{BAD_FORMAT}line {too_long.line}: {too_long.reason}")

    def summary(self) -> DataSummary:
        if self.format is None:
            raise UploadCheckError("invalid_file_format", BAD_FORMAT + NO_EXAMPLES)
        return DataSummary(format=self.format, n_examples=self.n_examples)


class LineCheck:
    """The check done here, a block at a time: each block's whole lines checked as it comes, the
    unfinished last line kept for the next. Raises UploadCheckError at the first error; `finish`
    gives the summary. (`settle` and `close` are there for `RemoteLineCheck`, which has this interface.)"""

    def __init__(self, limits: LineLimits) -> None:
        self.limits = limits
        self.verdicts = Verdicts(limits)
        self._rest = b""

    def feed(self, block: bytes | mmap.mmap) -> None:
        """`block`: bytes, or a buffer that may be reused once this returns (nothing of it is kept)."""
        cut = block.rfind(b"\n") + 1  # the block's whole lines end there
        if not cut:
            self._rest += block
        else:  # checked where they lie (no copy), but for the line begun in an earlier block
            start = block.find(b"\n") + 1 if self._rest else 0
            if start:
                self.verdicts.add(check_block(self._rest + block[:start], self.limits.max_line_bytes))
            if start < cut:
                self.verdicts.add(check_block(block, self.limits.max_line_bytes, start, cut))
            self._rest = block[cut:]
        self.verdicts.unfinished(len(self._rest))

    def settle(self) -> None:
        """Raise the first error of what was fed so far: here, `feed` already has."""

    def close(self) -> None:
        """Let go of what the check holds: nothing, here."""

    def finish(self) -> DataSummary:
        if self._rest:
            self.verdicts.add(check_block(self._rest, self.limits.max_line_bytes))
            self._rest = b""
        return self.verdicts.summary()

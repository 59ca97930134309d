"""The line check of an uploaded file: its bytes in order, in blocks of any size, split into lines
and each line checked as an example (`worker.training.validation`).

Light on purpose (the standard library, msgspec and the validation rules): it runs in the API
process for small uploads and in a process of its own for large ones
(`upload_check_process.py`), which must start fast and stay small.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.training.validation import DataSummary, InvalidExample, LineValidator


class UploadCheckError(ValueError):
    """A line-level reason to refuse the file: `code` is the OpenAI-shaped error's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class LineLimits:
    max_line_bytes: int
    max_lines: int


class LineCheck:
    """Each block's complete lines checked as it comes; the last, unfinished line waits for the next
    block and is refused as soon as it outgrows the line limit, so a huge line is never held whole.
    Raises UploadCheckError for a bad example, a line too long or too many lines; `finish` gives
    the summary. (`settle` and `close` are there for `RemoteLineCheck`, which has this interface.)"""

    def __init__(self, limits: LineLimits) -> None:
        self.limits = limits
        self.validator = LineValidator()
        self._rest = b""
        self._lines = 0

    def feed(self, block: bytes) -> None:
        lines = block.split(b"\n")
        lines[0] = self._rest + lines[0]
        self._rest = lines.pop()
        self._count(lines)
        if len(self._rest) > self.limits.max_line_bytes:
            self._line_too_long(self._lines + 1)
        self._check(lines)

    def settle(self) -> None:
        """Raise the first error of what was fed so far: here, `feed` already has."""

    def close(self) -> None:
        """Let go of what the check holds: nothing, here."""

    def finish(self) -> DataSummary:
        if self._rest:
            self._count([self._rest])
            self._check([self._rest])
            self._rest = b""
        return self._check(None)

    def _count(self, lines: list[bytes]) -> None:
        limit = self.limits.max_line_bytes
        if lines and max(map(len, lines)) > limit:  # (at C speed; the loop only finds which line)
            self._line_too_long(self._lines + next(i for i, line in enumerate(lines, 1) if len(line) > limit))
        self._lines += len(lines)
        if self._lines > self.limits.max_lines:
            raise UploadCheckError("too_many_lines", "Invalid file format for fine-tuning: more than the limit of "
                                   f"{self.limits.max_lines} lines.")

    def _line_too_long(self, number: int) -> None:
        raise UploadCheckError("line_too_long", f"Invalid file format for fine-tuning: line {number}: longer than "
                               f"the limit of {self.limits.max_line_bytes} bytes.")

    def _check(self, lines: list[bytes] | None) -> DataSummary | None:
        try:
            if lines is None:
                return self.validator.finish()
            self.validator.feed(lines)
        except InvalidExample as exc:
            where = f"line {exc.line}: " if exc.line else ""
            raise UploadCheckError("invalid_file_format",
                                   f"Invalid file format for fine-tuning: {where}{exc.reason}") from None
        return None

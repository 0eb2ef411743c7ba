"""Reading a CRI log file back into the bytes the container wrote.

The shim writes one record per line, `<RFC3339Nano> <stdout|stderr> <F|P>
<content>`: F ends a line (its newline was stripped), P is a piece of a
longer line that continues in the next record. Here records become
`LogRecord`s whose `data` is the original output (F gets its newline back),
`tail_offset` finds where the last N lines start without reading the whole
file, and `LogReader` reads from an offset on, keeping a record that is
still being written for the next read (what `logs --follow` needs).
"""

from __future__ import annotations

import calendar
import os
from dataclasses import dataclass

CHUNK = 64 * 1024
_HEAD = 96  # enough bytes of a record for its timestamp, stream and tag


@dataclass(frozen=True)
class LogRecord:
    timestamp: int  # ns since the epoch
    stream: str  # "stdout" or "stderr"
    data: bytes


_seconds_cache: dict[bytes, int] = {}


def parse_timestamp(text: bytes) -> int:
    """RFC 3339 with an optional fraction and a Z or ±hh:mm zone → ns; ValueError if not."""
    if len(text) < 20 or text[4:5] != b"-" or text[10:11] not in (b"T", b"t"):
        raise ValueError(f"not an RFC 3339 time: {text[:40]!r}")
    head = text[:19]
    seconds = _seconds_cache.get(head)
    if seconds is None:
        fields = (head[0:4], head[5:7], head[8:10], head[11:13], head[14:16], head[17:19])
        y, mo, d, h, mi, s = (int(f) for f in fields)
        seconds = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
        if len(_seconds_cache) > 4096:
            _seconds_cache.clear()
        _seconds_cache[head] = seconds
    rest = text[19:]
    frac = 0
    if rest[:1] == b".":
        digits = rest[1:].split(b"Z")[0].split(b"z")[0].split(b"+")[0].split(b"-")[0]
        if not digits.isdigit():
            raise ValueError(f"bad fraction in {text[:40]!r}")
        frac = int(digits[:9].ljust(9, b"0"))
        rest = rest[1 + len(digits) :]
    if rest in (b"Z", b"z"):
        offset = 0
    elif len(rest) == 6 and rest[:1] in (b"+", b"-") and rest[3:4] == b":":
        offset = (int(rest[1:3]) * 60 + int(rest[4:6])) * 60
        offset = -offset if rest[:1] == b"-" else offset
    else:
        raise ValueError(f"bad zone in {text[:40]!r}")
    return (seconds - offset) * 1_000_000_000 + frac


def parse_record(line: bytes) -> LogRecord | None:
    """One log line (without its newline) → LogRecord; None if it is not a record."""
    parts = line.split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"F", b"P"):
        return None
    try:
        ts = parse_timestamp(parts[0])
    except ValueError:
        return None
    content = parts[3] if len(parts) == 4 else b""
    if parts[2] == b"F":
        content += b"\n"
    return LogRecord(ts, parts[1].decode(), content)


def _is_full(head: bytes) -> bool:
    """Does the record starting with `head` end a line? Garbage counts as a line."""
    parts = head.split(b" ", 3)
    return len(parts) < 3 or parts[2] != b"P"


def tail_offset(fd: int, lines: int) -> int:
    """Offset where the last `lines` lines start (0 for the whole file).

    Scans back from the end a block at a time; P records belong to the line
    their following F record ends, so they are never cut off from it.
    """
    size = os.fstat(fd).st_size
    if lines < 0 or size == 0:
        return 0
    block_start, block = size, b""

    def rfind_newline(before: int) -> int:
        nonlocal block_start, block
        while True:
            if before > block_start:
                i = block.rfind(b"\n", 0, before - block_start)
                if i >= 0:
                    return block_start + i
            if block_start == 0:
                return -1
            # Read the block that ends where the one in hand starts.
            new_start = max(0, block_start - CHUNK)
            block = os.pread(fd, block_start - new_start, new_start) + block[:CHUNK]
            block_start = new_start

    full = 0
    rec_end = size
    hi = size - 1 if os.pread(fd, 1, size - 1) == b"\n" else size
    while True:
        nl = rfind_newline(hi)
        rec_start = nl + 1
        if _is_full(os.pread(fd, _HEAD, rec_start)):
            full += 1
            if full > lines:
                return rec_end
        if nl < 0:
            return 0
        rec_end, hi = rec_start, nl


class LogReader:
    """Records from an open log file, from its current offset on."""

    def __init__(self, fd: int, offset: int = 0, since: int = 0) -> None:
        self.fd = fd
        self.offset = offset
        self.since = since
        self._pending = b""

    def read(self, limit: int = CHUNK) -> list[LogRecord] | None:
        """The complete records that are there now; None at end of file."""
        size = os.fstat(self.fd).st_size
        if size < self.offset:  # truncated (rotated in place): start over
            self.offset, self._pending = 0, b""
        data = os.pread(self.fd, limit, self.offset)
        if not data:
            return None
        self.offset += len(data)
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > 4 * CHUNK:  # not a log this runtime wrote: cut it
            lines.append(self._pending)
            self._pending = b""
        out = []
        for line in lines:
            record = parse_record(line)
            if record is not None and record.timestamp >= self.since:
                out.append(record)
        return out

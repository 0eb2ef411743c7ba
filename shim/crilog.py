"""The CRI log writer: container output bytes in, kubelet log records out.

Each record is one line: `<RFC3339Nano> <stdout|stderr> <F|P> <content>\\n`.
A line longer than MAX_LINE is cut into P (partial) records of MAX_LINE bytes
followed by an F record with the rest; content without a newline waits for
one (or for end of stream) so lines written in pieces stay whole.

The writer never raises on I/O: a full disk or a vanished directory must not
take the shim (and with it the container's stdio) down. Records that cannot be
written are counted in `dropped` and the line is cut short cleanly, so the
next record still starts on a line of its own.
"""

from __future__ import annotations

import os
import time

MAX_LINE = 16 * 1024
STREAMS = ("stdout", "stderr")


def rfc3339nano(ns: int) -> bytes:
    """UTC timestamp with nine fraction digits, e.g. 2026-11-22T01:02:03.000000001Z."""
    sec, frac = divmod(ns, 1_000_000_000)
    t = time.gmtime(sec)
    return b"%04d-%02d-%02dT%02d:%02d:%02d.%09dZ" % (
        t.tm_year,
        t.tm_mon,
        t.tm_mday,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
        frac,
    )


def split_records(
    pending: bytearray, data: bytes, max_line: int = MAX_LINE
) -> list[tuple[bytes, bytes]]:
    """Append data to pending and take out every complete record.

    Returns (tag, content) pairs, tag b"F" for a full line (newline stripped)
    and b"P" for a MAX_LINE chunk of a longer line; what is left in pending is
    an unfinished line shorter than max_line.
    """
    pending += data
    out: list[tuple[bytes, bytes]] = []
    start = 0
    end = len(pending)
    while start < end:
        nl = pending.find(b"\n", start, start + max_line + 1)
        if nl >= 0:
            out.append((b"F", bytes(pending[start:nl])))
            start = nl + 1
        elif end - start >= max_line:
            out.append((b"P", bytes(pending[start : start + max_line])))
            start += max_line
        else:
            break
    del pending[:start]
    return out


class CriLogWriter:
    """Appends CRI records for both streams to one file; reopen() follows rotation."""

    def __init__(self, path: str | None, max_line: int = MAX_LINE) -> None:
        self.path = path
        self.max_line = max_line
        self.fd = -1
        self.dropped = 0  # records lost to write errors (disk full, EIO, ...)
        self.last_error = ""
        self._pending = {b"stdout": bytearray(), b"stderr": bytearray()}
        # After a short write the file holds half a record: start the next one
        # with a newline so the damage stays on one line.
        self._broken_line = False
        self.reopen()

    def reopen(self) -> bool:
        """Close and open the path again (kubelet renamed it). False if it cannot be opened."""
        if self.path is None:
            return True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            self.fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
            )
        except OSError as exc:
            self.last_error = f"open {self.path}: {exc.strerror}"
            return False
        self._broken_line = False
        return True

    def write(self, stream: bytes, data: bytes, now_ns: int | None = None) -> None:
        """Record output of one stream (b"stdout" or b"stderr")."""
        records = split_records(self._pending[stream], data, self.max_line)
        if records:
            self._emit(stream, records, now_ns)

    def flush(self, stream: bytes, now_ns: int | None = None) -> None:
        """End of stream: an unfinished last line is written as a full record."""
        pending = self._pending[stream]
        if pending:
            records = [(b"F", bytes(pending))]
            pending.clear()
            self._emit(stream, records, now_ns)

    def close(self) -> None:
        for stream in self._pending:
            self.flush(stream)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _emit(self, stream: bytes, records: list[tuple[bytes, bytes]], now_ns: int | None) -> None:
        if self.path is None:
            return
        if self.fd < 0 and not self.reopen():
            self.dropped += len(records)
            return
        ts = rfc3339nano(time.time_ns() if now_ns is None else now_ns)
        head = b"%s %s " % (ts, stream)
        blob = b"".join(b"%s%s %s\n" % (head, tag, content) for tag, content in records)
        if self._broken_line:
            blob = b"\n" + blob
        self._write_all(blob, len(records))

    def _write_all(self, blob: bytes, count: int) -> None:
        view = memoryview(blob)
        while view:
            try:
                n = os.write(self.fd, view)
            except InterruptedError:
                continue
            except OSError as exc:
                self.last_error = f"write {self.path}: {exc.strerror}"
                # Count the records not yet (fully) written, by newlines left.
                self.dropped += min(count, max(1, bytes(view).count(b"\n")))
                self._broken_line = len(view) != len(blob) or self._broken_line
                return
            if n == 0:
                self.dropped += 1
                self._broken_line = True
                return
            view = view[n:]
        self._broken_line = False

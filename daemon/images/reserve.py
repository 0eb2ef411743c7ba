"""Room kept on the root's filesystem for cleaning up after it fills.

When a pull fills the disk, undoing it needs a little room too: SQLite
writes to its WAL even to delete the rows of the extraction snapshots and
leases the pull left. So the daemon keeps a small file allocated under its
root; a pull that fails for a full disk frees it for its cleanup and takes
it back afterwards where there is room (else at the next pull).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

RESERVE_BYTES = 256 << 10  # a few hundred SQLite pages: dozens of row deletes


class DiskReserve:
    def __init__(self, root: Path, size: int = RESERVE_BYTES) -> None:
        self.path = root / "reserve"
        self.size = size

    def hold(self) -> bool:
        """Allocate the reserve if it is missing; False when there is no room."""
        with contextlib.suppress(OSError):
            if self.path.stat().st_size == self.size:
                return True
        tmp = self.path.with_name("reserve.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)  # real blocks, not a sparse file
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            return True
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.debug("no room for the disk reserve: %s", e)
            return False

    def release(self) -> None:
        """Give the reserved room back to the filesystem (for a cleanup)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
